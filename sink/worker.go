package sink

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
)

// worker owns one partition: its inbox, its open batch, its appends in
// flight and its commit watermark. Only the worker's goroutine touches the
// batch and the flights; the poll loop only pushes to the inbox.
type worker struct {
	s     *Sink
	tp    topicPartition
	table *table
	log   *zap.Logger

	ctx    context.Context // ends when the worker must drop everything
	cancel context.CancelFunc

	mu     sync.Mutex // guards queue, queued, paused
	queue  []*kgo.Record
	queued int // bytes of record values in queue
	paused bool
	wake   chan struct{} // capacity 1: "the queue has records"

	stopping chan struct{} // closed: flush, await flights, return
	stopOnce sync.Once
	done     chan struct{}

	busy     atomic.Bool  // holds records not yet acknowledged
	progress atomic.Int64 // unix nanoseconds of the last ack, or of the last idle moment

	// Owned by run.
	batch   batch
	flights []*flight
	timer   *time.Timer // batch max_wait
	retry   *time.Timer // head flight's backoff
}

// batch is the open, not yet sent, batch.
type batch struct {
	rows  []map[string]any
	recs  []*kgo.Record // recs[i] produced rows[i]
	bytes int
	last  *kgo.Record // the last record consumed into the batch, row or not
}

// flight is a batch sent to BigQuery, or waiting to be (re)sent.
type flight struct {
	rows    []map[string]any
	recs    []*kgo.Record
	last    *kgo.Record
	res     *bq.Result // nil while waiting to be (re)sent at retryAt
	sent    time.Time
	attempt int
	retryAt time.Time
}

func newWorker(s *Sink, tp topicPartition, t *table) *worker {
	ctx, cancel := context.WithCancel(s.base)
	w := &worker{
		s:        s,
		tp:       tp,
		table:    t,
		log:      s.log.With(zap.String("topic", tp.topic), zap.Int32("partition", tp.partition), zap.String("table", t.bq.Name())),
		ctx:      ctx,
		cancel:   cancel,
		wake:     make(chan struct{}, 1),
		stopping: make(chan struct{}),
		done:     make(chan struct{}),
		timer:    time.NewTimer(time.Hour),
		retry:    time.NewTimer(time.Hour),
	}
	w.timer.Stop()
	w.retry.Stop()
	w.progress.Store(time.Now().UnixNano())
	return w
}

// push hands records to the worker without blocking the poll loop.
func (w *worker) push(recs []*kgo.Record) { w.enqueue(recs, false) }

// requeue puts records the worker took but cannot handle yet back at the
// front of the inbox.
func (w *worker) requeue(recs []*kgo.Record) { w.enqueue(recs, true) }

// enqueue adds records to the inbox. Past max_records or max_bytes of
// backlog the partition's fetching pauses until the worker drains it, so a
// slow table holds back only its own partitions.
func (w *worker) enqueue(recs []*kgo.Record, front bool) {
	w.mu.Lock()
	if front {
		w.queue = append(recs[:len(recs):len(recs)], w.queue...)
	} else {
		w.queue = append(w.queue, recs...)
	}
	for _, r := range recs {
		w.queued += len(r.Value)
	}
	if !w.paused && w.full() {
		w.paused = true
		w.s.cl.PauseFetchPartitions(map[string][]int32{w.tp.topic: {w.tp.partition}})
	}
	if !w.busy.Swap(true) {
		// Idle until now: the stall clock starts with this record.
		w.progress.Store(time.Now().UnixNano())
	}
	w.mu.Unlock()
	w.signal()
}

func (w *worker) full() bool {
	return w.queued >= w.s.cfg.Batch.MaxBytes || len(w.queue) >= w.s.cfg.Batch.MaxRecords
}

func (w *worker) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// takeQueue takes up to max records from the front of the inbox, resuming
// fetching once the backlog is below the limits.
func (w *worker) takeQueue(max int) []*kgo.Record {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := min(max, len(w.queue))
	q := w.queue[:n:n]
	w.queue = w.queue[n:]
	for _, r := range q {
		w.queued -= len(r.Value)
	}
	if len(w.queue) > 0 {
		w.signal() // the rest, once the worker reads again
	} else {
		w.queue, w.queued = nil, 0
	}
	if w.paused && !w.full() {
		w.paused = false
		w.s.cl.ResumeFetchPartitions(map[string][]int32{w.tp.topic: {w.tp.partition}})
	}
	return q
}

// stop asks the worker to flush its open batch, wait for its flights and
// return. Records still in the inbox are dropped: they were never
// acknowledged, so the partition's next owner reads them again.
func (w *worker) stop() { w.stopOnce.Do(func() { close(w.stopping) }) }

func (w *worker) run() {
	defer close(w.done)
	defer w.cancel()
	defer w.timer.Stop()
	defer w.retry.Stop()
	defer func() {
		// Flights abandoned unanswered no longer count as in flight.
		for _, f := range w.flights {
			if f.res != nil {
				w.s.metrics.inflight.Dec()
			}
		}
	}()
	stopping := w.stopping
	for {
		w.settleReady()
		if stopping == nil && len(w.flights) == 0 {
			return
		}
		var headDone <-chan struct{}
		if len(w.flights) > 0 && w.flights[0].res != nil {
			headDone = w.flights[0].res.Done()
		}
		wake := w.wake
		if stopping == nil || len(w.flights) >= w.s.cfg.Batch.MaxInflight {
			wake = nil // backpressure: the inbox grows and fetching pauses
		}
		select {
		case <-w.ctx.Done():
			return
		case <-stopping:
			stopping = nil
			w.flush()
		case <-wake:
			recs := w.takeQueue((w.s.cfg.Batch.MaxInflight - len(w.flights)) * w.s.cfg.Batch.MaxRecords)
			for i, r := range recs {
				if len(w.flights) >= w.s.cfg.Batch.MaxInflight {
					// Enough in flight: the rest waits in the inbox, which
					// keeps the partition paused while it is full.
					w.requeue(recs[i:])
					break
				}
				if !w.add(r) {
					break
				}
			}
		case <-w.timer.C:
			w.flush()
		case <-headDone:
			w.settle(w.flights[0])
		case <-w.retry.C:
			if len(w.flights) > 0 {
				w.resend(w.flights[0])
			}
		}
		w.markIdle()
	}
}

// add decodes one record into the open batch, or rejects it, and flushes a
// full batch. It returns false when the worker is stopping or cancelled and
// the rest of the inbox must be left alone.
func (w *worker) add(r *kgo.Record) bool {
	row, ok := w.decode(r)
	if !ok {
		return false
	}
	b := &w.batch
	if row != nil {
		b.rows = append(b.rows, row)
		b.recs = append(b.recs, r)
		b.bytes += len(r.Value)
	}
	if b.last == nil {
		w.timer.Reset(w.s.cfg.Batch.MaxWait)
	}
	b.last = r
	if len(b.rows) >= w.s.cfg.Batch.MaxRecords || b.bytes >= w.s.cfg.Batch.MaxBytes {
		w.flush()
	}
	return true
}

// decode turns a record into a row. A record that can never be written is
// rejected (row nil, ok true); a transient failure (registry or BigQuery
// unreachable) is retried with backoff until it succeeds or the worker
// stops (ok false).
func (w *worker) decode(r *kgo.Record) (row map[string]any, ok bool) {
	for attempt := 1; ; attempt++ {
		row, reason, stage, err := w.decodeOnce(r)
		if err == nil {
			return row, true
		}
		if reason != "" {
			w.reject(r, reason, err)
			return nil, true
		}
		w.s.metrics.retries.WithLabelValues(w.table.bq.Name(), stage).Inc()
		d := backoff(attempt)
		w.log.Warn("transient failure; retrying", zap.String("stage", stage), zap.Int64("offset", r.Offset),
			zap.Int("attempt", attempt), zap.Duration("backoff", d), zap.Error(err))
		select {
		case <-time.After(d):
		case <-w.stopping:
			return nil, false
		case <-w.ctx.Done():
			return nil, false
		}
	}
}

// decodeOnce returns the row, or the reason the record is rejected for good
// (reason set), or a transient error (reason empty) with the stage it
// happened in.
func (w *worker) decodeOnce(r *kgo.Record) (row map[string]any, reason, stage string, err error) {
	defer func() {
		// One record must never take the daemon down (and, restarted, down
		// again): a bug hit by its bytes rejects that record only.
		if p := recover(); p != nil {
			row, reason, stage, err = nil, "decode", "", fmt.Errorf("panic decoding record: %v", p)
		}
	}()
	id, body, err := schema.Split(r.Value)
	if err != nil {
		return nil, "wire_format", "", err
	}
	sch, err := w.s.reg.Schema(w.ctx, id)
	switch {
	case errors.Is(err, schema.ErrNotFound) && w.s.withinUnknownGrace(id):
		return nil, "", "schema", err
	case errors.Is(err, schema.ErrNotFound):
		return nil, "schema_not_found", "", err
	case errors.Is(err, schema.ErrUnsupported):
		return nil, "unsupported_schema", "", err
	case errors.Is(err, schema.ErrIncompatible):
		return nil, "incompatible_schema", "", err
	case err != nil:
		return nil, "", "schema", err
	}
	row, err = sch.Decode(body)
	if err != nil {
		return nil, "decode", "", err
	}
	var keySchema *schema.Schema
	if col := w.s.cfg.MetadataColumn; col != "" {
		var meta map[string]any
		if meta, keySchema, err = w.metadata(w.ctx, r); err != nil {
			return nil, "", "schema", err
		}
		row[col] = meta
	}
	if err := w.table.ensure(w.ctx, sch, keySchema, w.s.cfg.MetadataColumn); err != nil {
		if errors.Is(err, bq.ErrIncompatible) || errors.Is(err, errMetadataCollides) {
			return nil, "incompatible_schema", "", err
		}
		return nil, "", "table", err
	}
	return row, "", "", nil
}

// reject accounts for a record that can never be written. Its offset still
// counts as handled, so it never blocks the commit of the records after it.
func (w *worker) reject(r *kgo.Record, reason string, err error) {
	w.s.metrics.rejected.WithLabelValues(w.tp.topic, reason).Inc()
	w.log.Error("record rejected", zap.Int64("offset", r.Offset), zap.String("reason", reason), zap.Error(err))
}

// flush sends the open batch. A batch whose records were all rejected still
// becomes a flight, so that its offsets are committed in order.
func (w *worker) flush() {
	w.timer.Stop()
	b := w.batch
	if b.last == nil {
		return
	}
	w.batch = batch{}
	f := &flight{rows: b.rows, recs: b.recs, last: b.last}
	w.flights = append(w.flights, f)
	if len(f.rows) > 0 {
		w.s.metrics.batchRows.Observe(float64(len(f.rows)))
		w.send(f)
	}
}

func (w *worker) send(f *flight) {
	f.sent = time.Now()
	res, err := w.table.bq.Append(w.ctx, f.rows)
	if err != nil {
		if w.ctx.Err() != nil {
			return
		}
		w.scheduleRetry(f, err)
		return
	}
	f.res = res
	w.s.metrics.inflight.Inc()
	if ce := w.log.Check(zap.DebugLevel, "batch sent"); ce != nil {
		ce.Write(zap.Int("rows", len(f.rows)), zap.Int64("last_offset", f.last.Offset), zap.Int("attempt", f.attempt))
	}
}

// resend sends the head flight again after its backoff.
func (w *worker) resend(f *flight) {
	if f.res == nil && len(f.rows) > 0 {
		w.send(f)
	}
}

// settleReady acknowledges, in order, every leading flight that needs no
// answer (all its records were rejected) or whose answer is already there.
func (w *worker) settleReady() {
	for len(w.flights) > 0 {
		f := w.flights[0]
		if len(f.rows) == 0 {
			w.ack(f)
			continue
		}
		if f.res == nil {
			if !w.retryArmed(f) {
				w.resend(f)
				if f.res == nil && w.ctx.Err() == nil {
					w.retryArmed(f) // the resend failed at once: wait for its backoff
				}
			}
			return
		}
		select {
		case <-f.res.Done():
			// Whether acknowledged or scheduled for a retry, look at the
			// head again: a retry needs its timer armed.
			w.settle(f)
		default:
			return
		}
	}
}

func (w *worker) retryArmed(f *flight) bool {
	d := time.Until(f.retryAt)
	if d <= 0 {
		return false
	}
	w.retry.Reset(d)
	return true
}

// settle handles the answer to the head flight: acknowledge and pop it, or
// keep the rows not written for a retry.
func (w *worker) settle(f *flight) {
	w.s.metrics.inflight.Dec()
	err := f.res.Wait(w.ctx)
	f.res = nil
	w.s.metrics.appendSeconds.WithLabelValues(w.table.bq.Name()).Observe(time.Since(f.sent).Seconds())
	if err == nil {
		w.written(len(f.rows))
		w.ack(f)
		return
	}
	if w.ctx.Err() != nil {
		return
	}
	var ae *bq.AppendError
	if !errors.As(err, &ae) {
		w.scheduleRetry(f, err)
		return
	}
	// Rows in neither list were written; only the Retry rows go again, so
	// a partial failure never duplicates the rest.
	w.written(len(f.rows) - len(ae.Rejected) - len(ae.Retry))
	for i, rerr := range ae.Rejected {
		if i >= 0 && i < len(f.recs) {
			w.reject(f.recs[i], "bigquery_rejected", rerr)
		}
	}
	if len(ae.Retry) == 0 {
		w.ack(f)
		return
	}
	rows := make([]map[string]any, 0, len(ae.Retry))
	recs := make([]*kgo.Record, 0, len(ae.Retry))
	for _, i := range ae.Retry {
		if i >= 0 && i < len(f.rows) {
			rows = append(rows, f.rows[i])
			recs = append(recs, f.recs[i])
		}
	}
	f.rows, f.recs = rows, recs
	if len(ae.Rejected) > 0 && len(rows) > 0 {
		// The others were refused only because they shared a request with
		// a bad row: send them again at once.
		w.send(f)
		return
	}
	w.scheduleRetry(f, ae.Err)
}

func (w *worker) scheduleRetry(f *flight, cause error) {
	f.attempt++
	d := backoff(f.attempt)
	f.retryAt = time.Now().Add(d)
	w.s.metrics.retries.WithLabelValues(w.table.bq.Name(), "append").Inc()
	w.log.Warn("append failed; retrying the rows not written", zap.Int("rows", len(f.rows)),
		zap.Int("attempt", f.attempt), zap.Duration("backoff", d), zap.Error(cause))
}

func (w *worker) written(n int) {
	if n > 0 {
		w.s.metrics.written.WithLabelValues(w.table.bq.Name()).Add(float64(n))
	}
}

// ack pops the head flight and moves the watermark past its last record.
// A cancelled worker's partition may be lost: it marks nothing more.
func (w *worker) ack(f *flight) {
	w.flights = w.flights[1:]
	if w.ctx.Err() != nil {
		return
	}
	w.s.commits.mark(w.tp.topic, w.tp.partition, kgo.EpochOffset{Epoch: f.last.LeaderEpoch, Offset: f.last.Offset + 1})
	w.progress.Store(time.Now().UnixNano())
}

func (w *worker) markIdle() {
	if len(w.flights) > 0 || w.batch.last != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.queue) == 0 {
		w.busy.Store(false)
		w.progress.Store(time.Now().UnixNano())
	}
}

func (w *worker) stalledFor(d time.Duration) bool {
	return w.busy.Load() && time.Since(time.Unix(0, w.progress.Load())) > d
}

// backoff is exponential from 100ms to 30s with jitter, so that many
// partitions failing together do not retry in lockstep.
func backoff(attempt int) time.Duration {
	d := 100 * time.Millisecond << min(attempt-1, 9)
	if d > 30*time.Second {
		d = 30 * time.Second
	}
	return d/2 + rand.N(d/2+1)
}
