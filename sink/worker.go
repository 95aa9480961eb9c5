package sink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
)

// worker owns one partition: its inbox, its open batch, its flights (batches
// sent and not yet acknowledged) and its commit watermark.
//
// It runs in two stages. The decode stage turns the records the poll loop
// hands over into rows, waiting, when it must, for the registry or for the
// table's schema. The write stage batches rows, sends each batch as a
// flight and acknowledges flights in offset order. Each flight is delivered
// by a goroutine of its own, which resends the rows BigQuery did not take
// and dead-letters the records it never will. So no wait in one stage stops
// another: while the registry is down, appends already answered are still
// acknowledged and committed.
type worker struct {
	tp    topicPartition
	table string // for logs and metrics
	cfg   workerConfig
	deps  workerDeps
	log   *zap.Logger
	eo    *exactlyOnce // nil in at-least-once

	ctx     context.Context // ends when the worker must drop everything
	cancel  context.CancelFunc
	stopCtx context.Context // also ends on stop: the decode stage stops reading
	stopDec context.CancelFunc
	done    chan struct{}

	mu    sync.Mutex // guards queue, and orders paused's changes with pause and resume
	queue []*kgo.Record
	// paused is whether the partition's fetching is paused; it changes
	// under mu, and metrics read it without.
	paused atomic.Bool
	wake   chan struct{} // capacity 1: "the queue has records"

	// held is what the partition holds: records pushed and not yet
	// acknowledged, and their rows. Zero means idle.
	held atomic.Int64
	// inside is the part of held that is within the partition's
	// guaranteed memory, as last accounted (see account); acct orders
	// those accountings.
	inside atomic.Int64
	acct   sync.Mutex
	// limit is how much the partition could hold at its last admission
	// (flow.limit): batches close at a quarter of it.
	limit atomic.Int64
	// offered is set by the poll loop for a partition with records in the
	// poll at hand, so that it counts as busy before it admits them.
	offered bool
	// progress is when the last flight was acknowledged, or when the
	// partition stopped being idle: stall detection counts from it.
	progress atomic.Int64
	// next is the offset after the last record pushed, -1 before the
	// first: the partition's position, for the lag watch.
	next atomic.Int64
	// unacked is the offset of the first record not yet acknowledged,
	// while the partition holds any.
	unacked atomic.Int64
	// first is the offset of the first record admitted (-1: none yet),
	// hwm the partition's high watermark as last seen (-1: not yet).
	first, hwm atomic.Int64
	inflight   atomic.Int64 // flights sent and not yet finished
	// stuckSince (unix nanoseconds, 0: not stuck) is when the lag watch
	// first saw the partition hold nothing while records from stuckAt to
	// stuckEnd waited to be fetched.
	stuckSince, stuckAt, stuckEnd atomic.Int64
	stuckReported                 atomic.Bool // reported to health as a fetch failure
	// abandoned counts flights dropped unfinished when the worker was
	// cancelled: their records stay uncommitted.
	abandoned atomic.Int64

	decoded chan []item  // decode stage → write stage
	results chan *flight // flight goroutines → write stage

	// adjusted is the change to held that the decode stage owes from rows
	// decoded and not yet handed over (see handOver).
	adjusted int64

	// Owned by the write stage.
	batch   batch
	pending []item // decoded, waiting for room among the flights
	// handed is the hand-over pending is the rest of, whose array goes
	// back to the decode stage (giveItems) once pending is taken.
	handed  []item
	flights []*flight
	timer   *time.Timer // batch max_wait
	failed  bool        // a record failed under errors.policy fail: take no more
	halted  bool        // that record's flight settled: acknowledge nothing more
	fwg     sync.WaitGroup
}

// workerConfig is what a worker needs from the sink's configuration.
type workerConfig struct {
	maxRecords  int
	maxBytes    int
	maxWait     time.Duration
	maxInflight int
	policy      string
	// maxRecordBytes is the largest record value whose row can fit one
	// request (bigquery.max_request_bytes); larger ones are rejected from
	// their length, and no row is ever built or expected for them.
	maxRecordBytes int
}

// workerDeps are the worker's links to the rest of the sink. Each is
// narrow so that tests can drive a worker with fakes.
type workerDeps struct {
	// decode turns a record into an item; a *stageError is retried.
	decode func(ctx context.Context, r *kgo.Record) (item, error)
	// append sends rows (recs[i] produced rows[i]); the result completes
	// when BigQuery answered.
	append func(ctx context.Context, rows []bq.Row, recs []*kgo.Record) (appendResult, error)
	// deadLetter writes rejected records to the dead-letter topic and
	// returns the ones that were not acknowledged.
	deadLetter func(ctx context.Context, rs []*rejection) ([]*rejection, error)
	// pause and resume stop and restart fetching the partition.
	pause, resume func()
	// mark moves the partition's commit watermark forward, with the commit
	// metadata exactly-once needs ("" for none).
	mark func(eo kgo.EpochOffset, meta string)
	// fatal reports a record that failed under errors.policy fail.
	fatal func(*rejection)
	// flow accounts memory sink-wide and says how much the partition may
	// hold before its fetching pauses.
	flow *flow

	health  *health
	rejects *rejectLog
	metrics *metrics
	stats   *stats
}

// appendResult is the answer to one append; *bq.Result is one.
type appendResult interface {
	// Wait returns nil when every row was written, else an
	// *bq.AppendError, or ctx's error.
	Wait(ctx context.Context) error
}

// batch is the open, not yet sent, batch.
type batch struct {
	rows    []bq.Row
	rowRecs []*kgo.Record // rowRecs[i] produced rows[i]
	rejects []*rejection
	first   *kgo.Record
	last    *kgo.Record         // the last record consumed into the batch, row or not
	bytes   int                 // of encoded rows
	charge  int64               // accounted bytes of every record in the batch
	byKey   map[uint64]keyedRow // upsert tables: the change of each key in rows, by the key's hash
}

// flight is a batch handed to a delivery goroutine. The goroutine owns it
// until it sends it on results; then the write stage does.
type flight struct {
	batch
	sent     chan struct{} // closed once its first append was sent: the next flight's goes after it
	finished chan struct{} // closed once delivered: in exactly-once the next flight goes after it
	meta     string        // exactly-once: commit metadata for the offset after the flight
	failed   *rejection    // errors.policy fail: the first record that could not be written
	done     bool          // delivered; set by the write stage when the flight comes back
}

func newWorker(tp topicPartition, table string, cfg workerConfig, deps workerDeps, parent context.Context, log *zap.Logger) *worker {
	ctx, cancel := context.WithCancel(parent)
	stopCtx, stopDec := context.WithCancel(ctx)
	w := &worker{
		tp: tp, table: table, cfg: cfg, deps: deps, log: log,
		ctx: ctx, cancel: cancel, stopCtx: stopCtx, stopDec: stopDec,
		done:    make(chan struct{}),
		wake:    make(chan struct{}, 1),
		decoded: make(chan []item, 1),
		results: make(chan *flight, cfg.maxInflight+1),
		timer:   time.NewTimer(time.Hour),
	}
	w.timer.Stop()
	w.next.Store(-1)
	w.first.Store(-1)
	w.hwm.Store(-1)
	w.progress.Store(time.Now().UnixNano())
	return w
}

// admit hands the worker as many of recs, a poll's records of its
// partition in offset order, as fit in the memory it may hold (flow.limit),
// at least one when it holds nothing, and returns how many it took. It never
// blocks the poll loop. Once the partition holds its limit its fetching
// pauses, so a slow table holds back only its own partitions; the records
// it did not take stay in Kafka, to be fetched again. data counts the
// records taken that are not transaction markers.
func (w *worker) admit(recs []*kgo.Record) (n, data int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	held := w.held.Load()
	limit := w.deps.flow.limit(held, w.inside.Load())
	w.limit.Store(limit)
	var bytes, raw int64
	for _, r := range recs {
		size := recordSize(r)
		c := size + w.estimatedRow(r)
		if held+bytes+c > limit && !(held == 0 && n == 0) {
			break
		}
		bytes += c
		raw += size - recordOverhead + rawRecordOverhead
		n++
		if !r.Attrs.IsControl() {
			data++
		}
	}
	if n > 0 {
		w.deps.flow.charge(bytes)
		w.deps.flow.sawRecords(raw, bytes)
		w.first.CompareAndSwap(-1, recs[0].Offset)
		if w.held.Add(bytes) == bytes {
			// Idle until now: the stall clock starts with these records.
			w.progress.Store(time.Now().UnixNano())
			w.unacked.Store(recs[0].Offset)
		}
		w.account()
		w.next.Store(recs[n-1].Offset + 1)
		w.queue = append(w.queue, recs[:n]...)
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
	if !w.paused.Load() && (n < len(recs) || w.held.Load() >= limit) {
		w.paused.Store(true)
		w.deps.pause()
	}
	return n, data
}

// rawRecordOverhead approximates what a record takes in a Kafka batch
// beyond its key, value and headers (lengths, offset and time deltas).
const rawRecordOverhead = 16

// account brings the flow's sum of what partitions hold within their
// guaranteed parts up to date with what this one holds.
func (w *worker) account() {
	w.acct.Lock()
	defer w.acct.Unlock()
	in := min(w.held.Load(), w.deps.flow.guaranteedShare())
	if old := w.inside.Swap(in); old != in {
		w.deps.flow.inside.Add(in - old)
	}
}

// busy reports whether the partition holds records or, as far as the poll
// loop has seen, has records waiting in Kafka.
func (w *worker) busy() bool {
	if w.held.Load() > 0 {
		return true
	}
	next := w.next.Load()
	return next >= 0 && w.hwm.Load() > next
}

// batchCharge is the charge at which a batch closes whatever its rows: a
// quarter of what the partition could hold at its last admission. Memory
// stops admitting records before a larger batch could fill, and waiting
// for max_wait then would idle the partition.
func (w *worker) batchCharge() int64 {
	l := w.limit.Load()
	if l <= 0 {
		l = w.deps.flow.limit(w.held.Load(), w.inside.Load())
	}
	return l / shareBatches
}

// sawEnd records the partition's high watermark from a fetch or a lag
// check; it only moves forward.
func (w *worker) sawEnd(hwm int64) {
	for {
		cur := w.hwm.Load()
		if hwm <= cur || w.hwm.CompareAndSwap(cur, hwm) {
			return
		}
	}
}

// adjust replaces a row's estimate by what it costs.
func (w *worker) adjust(delta int64) {
	switch {
	case delta > 0:
		w.held.Add(delta)
		w.deps.flow.charge(delta)
		w.account()
	case delta < 0:
		w.release(-delta)
	}
}

// release gives back accounted bytes and resumes fetching once the
// partition holds less than half of what it may hold now.
func (w *worker) release(n int64) {
	if n == 0 {
		return
	}
	w.held.Add(-n)
	w.deps.flow.release(n)
	w.account()
	w.mu.Lock()
	if w.paused.Load() {
		if held := w.held.Load(); held < w.deps.flow.limit(held, w.inside.Load())/2 {
			w.paused.Store(false)
			w.deps.resume()
		}
	}
	w.mu.Unlock()
}

// takeQueue waits for records and takes at most max of them; nil when the
// worker stops.
func (w *worker) takeQueue(max int) []*kgo.Record {
	for {
		w.mu.Lock()
		if n := min(max, len(w.queue)); n > 0 {
			q := make([]*kgo.Record, n)
			copy(q, w.queue)
			// The queue's array must not keep taken records alive after
			// they are acknowledged.
			clear(w.queue[:n])
			w.queue = w.queue[n:]
			if len(w.queue) == 0 {
				w.queue = nil
			}
			w.mu.Unlock()
			return q
		}
		w.mu.Unlock()
		select {
		case <-w.wake:
		case <-w.stopCtx.Done():
			return nil
		}
	}
}

// stop asks the worker to send what it has decoded, finish its flights and
// return. Records not yet decoded are dropped: they were never
// acknowledged, so the partition's next owner reads them again.
func (w *worker) stop() { w.stopDec() }

// run runs both stages until the worker stops or is cancelled, then gives
// back everything the partition held.
func (w *worker) run() {
	defer close(w.done)
	decDone := make(chan struct{})
	go func() {
		defer close(decDone)
		w.decodeLoop()
	}()
	w.writeLoop()
	w.stopDec()
	<-decDone
	w.cancel() // flights still running are abandoned
	w.fwg.Wait()
	if w.eo != nil {
		w.eo.close()
	}
	w.timer.Stop()
	w.abandoned.Add(int64(len(w.flights)))
	w.inflight.Store(0)
	w.release(w.held.Load())
}

// itemBufs holds the arrays of hand-overs the write stage took, for the
// decode stage to fill again: a hand-over a chunk would otherwise be
// allocated, and then left for the garbage collector.
var itemBufs sync.Pool

// takeItems returns an empty slice of items with room for n.
func takeItems(n int) []item {
	if p, ok := itemBufs.Get().(*[]item); ok && cap(*p) >= n {
		return (*p)[:0]
	}
	return make([]item, 0, n)
}

// giveItems hands the array of s, whose items were all taken and
// cleared, to takeItems.
func giveItems(s []item) {
	s = s[:0]
	itemBufs.Put(&s)
}

// decodeChunk bounds the records decoded between two hand-overs to the
// write stage; a batch smaller than that bounds it too, so that the decode
// stage runs about a batch ahead of the write stage, not more.
const decodeChunk = 512

func (w *worker) decodeLoop() {
	defer close(w.decoded)
	for {
		recs := w.takeQueue(min(decodeChunk, w.cfg.maxRecords))
		if recs == nil {
			return
		}
		out := takeItems(len(recs))
		for _, r := range recs {
			if w.stopCtx.Err() != nil {
				break // stopping: hand over what is decoded, leave the rest
			}
			it, ok := w.decodeOne(r, &out)
			if !ok {
				break
			}
			var row int64
			if sz := it.row.Size(); sz > 0 {
				row = int64(sz + rowOverhead)
			}
			w.adjusted += row - w.estimatedRow(r)
			it.charge = recordSize(r) + row
			out = append(out, it)
			if it.rej != nil && w.cfg.policy == PolicyFail {
				// Nothing after a record that stops the sink.
				w.handOver(out)
				<-w.stopCtx.Done()
				return
			}
		}
		if !w.handOver(out) {
			return
		}
	}
}

// decodeOne decodes r, retrying transient failures with backoff. Before
// waiting it hands over what it decoded so far, so that those rows are not
// held back by the wait. It returns false when the worker stops.
func (w *worker) decodeOne(r *kgo.Record, out *[]item) (item, bool) {
	if w.tooLarge(r) && !r.Attrs.IsControl() {
		// Its row could not fit a request whatever it holds: decoding it
		// would only build a row as large as the record, for nothing.
		id, _, _ := schema.Split(r.Value)
		return item{rec: r, rej: &rejection{rec: r, reason: reasonRowTooLarge, schemaID: id,
			err: fmt.Errorf("%w: the record's value of %d bytes exceeds bigquery.max_request_bytes %d, so its row cannot fit one request; not decoded",
				bq.ErrRowTooLarge, len(r.Value), w.cfg.maxRecordBytes)}}, true
	}
	var last *stageError
	for attempt := 1; ; attempt++ {
		it, err := w.deps.decode(w.stopCtx, r)
		var se *stageError
		if err == nil || !errors.As(err, &se) {
			if last != nil {
				w.deps.health.ok(last.stage, last.target)
			}
			if err != nil { // not a stageError: a bug; keep the record moving
				it = item{rec: r, rej: &rejection{rec: r, reason: reasonDecode, err: err}}
			}
			return it, true
		}
		if w.stopCtx.Err() != nil {
			return item{}, false
		}
		if last != nil && (last.stage != se.stage || last.target != se.target) {
			w.deps.health.ok(last.stage, last.target)
		}
		last = se
		w.deps.health.fail(se.stage, se.target, se.err, se.config)
		if len(*out) > 0 {
			if !w.handOver(*out) {
				return item{}, false
			}
			*out = make([]item, 0, cap(*out))
		}
		d := backoff(attempt)
		if se.config {
			d = max(d, configBackoff)
		}
		if !sleepOrHealed(w.stopCtx, d, w.deps.health.healed(se.stage, se.target)) {
			return item{}, false
		}
	}
}

// handOver sends decoded items to the write stage, which takes them even
// while stopping; false when the worker is cancelled. The estimates of
// their rows give way to their sizes first, once per hand-over rather than
// once per row, and always before the items can be acknowledged and
// released.
func (w *worker) handOver(items []item) bool {
	if d := w.adjusted; d != 0 {
		w.adjusted = 0
		w.adjust(d)
	}
	if len(items) == 0 {
		return true
	}
	select {
	case w.decoded <- items:
		return true
	case <-w.ctx.Done():
		return false
	}
}

func (w *worker) writeLoop() {
	decoded, stopping := w.decoded, w.stopCtx.Done()
	// draining: stopping, the write stage takes whatever the decode stage
	// still hands over, beyond max_inflight, and sends it.
	draining := false
	room := func() bool { return draining || len(w.flights) < w.cfg.maxInflight && !w.failed }
	for {
		w.settle()
		for len(w.pending) > 0 && room() && !w.failed {
			it := w.pending[0]
			w.pending[0] = item{}
			w.pending = w.pending[1:]
			w.add(it)
		}
		if len(w.pending) == 0 && w.handed != nil {
			giveItems(w.handed)
			w.handed = nil
		}
		if decoded == nil && len(w.flights) == 0 {
			return
		}
		var in <-chan []item
		if decoded != nil && len(w.pending) == 0 && room() {
			in = decoded
		}
		select {
		case <-w.ctx.Done():
			return
		case <-stopping:
			stopping, draining = nil, true
		case items, ok := <-in:
			switch {
			case !ok:
				// The decode stage ended, stopping: send the open batch.
				decoded = nil
				w.pending = nil
				w.flush()
			case !w.failed:
				// Nothing after a record that failed under errors.policy
				// fail is written. A hand-over is only taken once pending
				// is empty, so it becomes pending as it is.
				w.pending, w.handed = items, items
			}
		case <-w.timer.C:
			w.flush()
		case f := <-w.results:
			f.done = true
		}
	}
}

// add puts one item into the open batch and flushes a full batch.
func (w *worker) add(it item) {
	b := &w.batch
	switch {
	case it.rej != nil:
		b.rejects = append(b.rejects, it.rej)
		w.deps.metrics.rejected.WithLabelValues(w.tp.topic, it.rej.reason).Inc()
		w.deps.stats.rejected.Add(1)
		w.deps.rejects.record(w.tp, w.table, it.rej, w.cfg.policy)
	case it.tombstone:
		w.deps.metrics.tombstones.WithLabelValues(w.tp.topic).Inc()
	case it.control:
	case it.truncate:
	case it.change:
		w.addChange(it)
	default:
		b.rows = append(b.rows, it.row)
		b.rowRecs = append(b.rowRecs, it.rec)
		b.bytes += it.row.Size()
	}
	if b.first == nil {
		b.first = it.rec
		w.timer.Reset(w.cfg.maxWait)
	}
	b.last = it.rec
	b.charge += it.charge
	full := len(b.rows) >= w.cfg.maxRecords || b.bytes >= w.cfg.maxBytes || b.charge >= w.batchCharge()
	if full || it.rej != nil && w.cfg.policy == PolicyFail {
		w.flush()
	}
	if it.rej != nil && w.cfg.policy == PolicyFail {
		w.failed = true
	}
}

// addChange puts a change into the open batch, which holds one change per
// key: the latest. BigQuery applies changes by sequence number anyway, but
// a request holding a key twice was seen to keep the first; and a
// superseded change costs nothing to leave out. Its record is acknowledged
// with the batch.
func (w *worker) addChange(it item) {
	b := &w.batch
	// Keys are found by their hash, without a string per record; rows whose
	// keys collide on the hash alone are both kept, as their sequence
	// numbers still order them in BigQuery.
	h := maphash.Bytes(keySeed, it.rec.Key)
	if prev, ok := b.byKey[h]; ok && bytes.Equal(b.rowRecs[prev.idx].Key, it.rec.Key) {
		w.deps.metrics.superseded.WithLabelValues(w.tp.topic).Inc()
		if !supersede(prev.seq, it.seq) {
			return
		}
		b.bytes += it.row.Size() - b.rows[prev.idx].Size()
		b.rows[prev.idx], b.rowRecs[prev.idx] = it.row, it.rec
		b.byKey[h] = keyedRow{prev.idx, it.seq}
		return
	}
	if b.byKey == nil {
		b.byKey = make(map[uint64]keyedRow, min(w.cfg.maxRecords, 1024))
	}
	b.byKey[h] = keyedRow{len(b.rows), it.seq}
	b.rows = append(b.rows, it.row)
	b.rowRecs = append(b.rowRecs, it.rec)
	b.bytes += it.row.Size()
}

// keySeed seeds the hashes of record keys in batches.
var keySeed = maphash.MakeSeed()

// keyedRow is where a key's change sits in a batch, and its sequence.
type keyedRow struct {
	idx int
	seq bq.Sequence
}

// shareBatches is how many batches the memory a partition may hold
// holds, so that little memory still keeps several flights moving.
const shareBatches = 4

// flush sends the open batch as a flight. A batch without rows (only
// rejections or tombstones) is a flight too, so that its offsets are
// acknowledged in order.
func (w *worker) flush() {
	w.timer.Stop()
	if w.batch.first == nil {
		return
	}
	f := &flight{batch: w.batch, sent: make(chan struct{}), finished: make(chan struct{})}
	w.batch = emptyBatch()
	prev := closedChan
	if n := len(w.flights); n > 0 {
		prev = w.flights[n-1].sent
		if w.eo != nil {
			// Stream offsets follow from the rows every earlier flight
			// wrote: one flight at a time.
			prev = w.flights[n-1].finished
		}
	}
	w.flights = append(w.flights, f)
	if len(f.rows) > 0 {
		w.deps.metrics.batchRows.Observe(float64(len(f.rows)))
	}
	w.inflight.Add(1)
	w.fwg.Add(1)
	go w.deliver(f, prev)
}

// batchBufs holds the slices (and upsert's key map) of settled flights
// for the next batches to fill: a batch's would otherwise grow from
// nothing, copied at every doubling, and then be left for the garbage
// collector. Shared by the partitions, and emptied by the collector, so
// an idle partition holds none.
var batchBufs sync.Pool

// emptyBatch returns a batch with the slices of a settled flight.
func emptyBatch() batch {
	if b, ok := batchBufs.Get().(*batch); ok {
		return *b
	}
	return batch{}
}

// recycle hands the flight's slices to emptyBatch. Only a flight that is
// done with them, delivered and settled, may be recycled.
func (f *flight) recycle() {
	clear(f.rows)
	clear(f.rowRecs)
	clear(f.byKey)
	batchBufs.Put(&batch{rows: f.rows[:0], rowRecs: f.rowRecs[:0], byKey: f.byKey})
	f.batch = batch{}
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// settle acknowledges, in order, the leading flights that are finished.
func (w *worker) settle() {
	for len(w.flights) > 0 && w.flights[0].done {
		f := w.flights[0]
		// The slice's array must not keep the flight's rows and records
		// alive: their memory was released.
		w.flights[0] = nil
		w.flights = w.flights[1:]
		w.inflight.Add(-1)
		w.release(f.charge)
		switch {
		case w.ctx.Err() != nil || w.halted:
			// A cancelled worker's partition may be lost already, and
			// nothing after a record that failed under errors.policy
			// fail is committed.
		case f.failed != nil:
			// Everything before the record is written: commit up to it,
			// not past it, and stop.
			// No exactly-once metadata: the flight's rows after the record
			// are written, so the next owner cannot continue the stream.
			w.deps.mark(kgo.EpochOffset{Epoch: f.failed.rec.LeaderEpoch, Offset: f.failed.rec.Offset}, "")
			w.halted, w.failed = true, true
			w.deps.fatal(f.failed)
		default:
			w.deps.mark(kgo.EpochOffset{Epoch: f.last.LeaderEpoch, Offset: f.last.Offset + 1}, f.meta)
			now := time.Now()
			w.progress.Store(now.UnixNano())
			w.unacked.Store(f.last.Offset + 1)
			fresh := w.deps.metrics.freshness.WithLabelValues(w.table)
			for _, r := range f.rowRecs {
				fresh.Observe(now.Sub(r.Timestamp).Seconds())
			}
			f.recycle()
		}
	}
}
