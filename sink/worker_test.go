package sink

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/bqsink/bqsink/bq"
)

// The worker is driven here through fakes of its dependencies: records go
// in through push, appends come out as calls whose results the test
// completes by hand, and the commit watermark is read back from marks.

type fakeResult struct {
	done chan struct{}
	err  error
}

func (r *fakeResult) Wait(ctx context.Context) error {
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// appendCall is one append the worker made: the offsets of its rows'
// records and a result to complete.
type appendCall struct {
	offsets []int64
	res     *fakeResult
}

func (c *appendCall) complete(err error) {
	c.res.err = err
	close(c.res.done)
}

type harness struct {
	t       *testing.T
	w       *worker
	calls   chan *appendCall
	dlq     chan []*rejection
	dlqErr  func() error
	m       *metrics
	mu      sync.Mutex
	marks   []int64
	fatals  []*rejection
	paused  int
	resumed int
	budget  *flow
	stats   stats

	decodeMu sync.Mutex
	// blocked makes the decoder answer a failure for these offsets until
	// unblocked; blockedConfig makes it one only an operator can fix.
	blocked       map[int64]bool
	blockedConfig bool
}

type harnessOpt func(*workerConfig)

// newHarness starts a worker whose decoder turns a record into a row, a
// rejection when the value is "bad", a tombstone when the value is nil.
func newHarness(t *testing.T, opts ...harnessOpt) *harness {
	t.Helper()
	return newHarnessWith(t, nil, opts...)
}

// newHarnessWith is newHarness with the worker's dependencies adjusted by
// deps before it starts.
func newHarnessWith(t *testing.T, deps func(*workerDeps), opts ...harnessOpt) *harness {
	t.Helper()
	cfg := workerConfig{maxRecords: 3, maxBytes: 1 << 30, maxWait: time.Hour, maxInflight: 2, policy: PolicyDLQ}
	for _, o := range opts {
		o(&cfg)
	}
	h := &harness{
		t:       t,
		calls:   make(chan *appendCall, 100),
		dlq:     make(chan []*rejection, 100),
		dlqErr:  func() error { return nil },
		m:       newMetrics(),
		budget:  newFlow(minMaxBufferedBytes),
		blocked: map[int64]bool{},
	}
	log := zaptest.NewLogger(t)
	wd := workerDeps{
		decode: func(_ context.Context, r *kgo.Record) (item, error) {
			h.decodeMu.Lock()
			blocked, config := h.blocked[r.Offset], h.blockedConfig
			h.decodeMu.Unlock()
			switch {
			case blocked:
				return item{}, &stageError{stage: stageSchema, target: "registry", config: config, err: errors.New("registry down")}
			case r.Value == nil:
				return item{rec: r, tombstone: true}, nil
			case string(r.Value) == "bad":
				return item{rec: r, rej: &rejection{rec: r, reason: reasonDecode, err: errors.New("bad body")}}, nil
			}
			return item{rec: r}, nil
		},
		append: func(_ context.Context, _ []bq.Row, recs []*kgo.Record) (appendResult, error) {
			c := &appendCall{res: &fakeResult{done: make(chan struct{})}}
			for _, r := range recs {
				c.offsets = append(c.offsets, r.Offset)
			}
			h.calls <- c
			return c.res, nil
		},
		deadLetter: func(_ context.Context, rs []*rejection) ([]*rejection, error) {
			if err := h.dlqErr(); err != nil {
				return rs, &stageError{stage: stageDeadLetter, target: "dlq", err: err}
			}
			h.dlq <- rs
			return nil, nil
		},
		pause:   func() { h.mu.Lock(); h.paused++; h.mu.Unlock() },
		resume:  func() { h.mu.Lock(); h.resumed++; h.mu.Unlock() },
		mark:    func(eo kgo.EpochOffset, _ string) { h.mu.Lock(); h.marks = append(h.marks, eo.Offset); h.mu.Unlock() },
		fatal:   func(rj *rejection) { h.mu.Lock(); h.fatals = append(h.fatals, rj); h.mu.Unlock() },
		flow:    h.budget,
		health:  newHealth(log, h.m, &h.stats.retries),
		rejects: newRejectLog(log),
		metrics: h.m,
		stats:   &h.stats,
	}
	if deps != nil {
		deps(&wd)
	}
	h.w = newWorker(topicPartition{"t", 0}, "p.d.t", cfg, wd, context.Background(), log)
	go h.w.run()
	t.Cleanup(func() {
		h.w.cancel()
		select {
		case <-h.w.done:
		case <-time.After(5 * time.Second):
			t.Error("worker did not stop after cancel")
		}
	})
	return h
}

func records(from, to int64, value string) []*kgo.Record {
	var out []*kgo.Record
	for o := from; o < to; o++ {
		r := &kgo.Record{Topic: "t", Partition: 0, Offset: o, Value: []byte(value)}
		if value == "<nil>" {
			r.Value = nil
		}
		out = append(out, r)
	}
	return out
}

func (h *harness) nextCall() *appendCall {
	h.t.Helper()
	select {
	case c := <-h.calls:
		return c
	case <-time.After(5 * time.Second):
		h.t.Fatal("no append within 5s")
		return nil
	}
}

func (h *harness) noCall(within time.Duration) {
	h.t.Helper()
	select {
	case c := <-h.calls:
		h.t.Fatalf("unexpected append of offsets %v", c.offsets)
	case <-time.After(within):
	}
}

func (h *harness) mark() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.marks) == 0 {
		return -1
	}
	return h.marks[len(h.marks)-1]
}

func (h *harness) waitMark(want int64) {
	h.t.Helper()
	eventually(h.t, fmt.Sprintf("watermark %d", want), func() bool { return h.mark() == want })
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func equalOffsets(a []int64, b ...int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A later batch answered first must not move the watermark: it moves only
// past batches that are answered together with every batch before them.
func TestWorkerAcknowledgesInOrder(t *testing.T) {
	h := newHarness(t)
	h.w.admit(records(0, 6, "v"))
	first, second := h.nextCall(), h.nextCall()
	if !equalOffsets(first.offsets, 0, 1, 2) || !equalOffsets(second.offsets, 3, 4, 5) {
		t.Fatalf("batches %v %v, want [0 1 2] [3 4 5]", first.offsets, second.offsets)
	}
	second.complete(nil)
	// The second batch's answer alone must not commit anything.
	time.Sleep(50 * time.Millisecond) // nothing to wait for: asserting an absence
	if m := h.mark(); m != -1 {
		t.Fatalf("watermark moved to %d before the first batch was answered", m)
	}
	first.complete(nil)
	h.waitMark(6)
	eventually(t, "idle", func() bool { return h.w.held.Load() == 0 })
	if got := testutil.ToFloat64(h.m.written.WithLabelValues("p.d.t")); got != 6 {
		t.Errorf("rows written = %v, want 6", got)
	}
}

// At most max_inflight batches await BigQuery; the rest waits until one is
// answered.
func TestWorkerBoundsInflight(t *testing.T) {
	h := newHarness(t)
	h.w.admit(records(0, 12, "v"))
	a, b := h.nextCall(), h.nextCall()
	h.noCall(100 * time.Millisecond)
	a.complete(nil)
	c := h.nextCall()
	if !equalOffsets(c.offsets, 6, 7, 8) {
		t.Fatalf("third batch %v, want [6 7 8]", c.offsets)
	}
	h.noCall(50 * time.Millisecond)
	b.complete(nil)
	c.complete(nil)
	h.nextCall().complete(nil)
	h.waitMark(12)
}

// Only the rows BigQuery did not write are sent again, and the watermark
// waits for them.
func TestWorkerResendsOnlyRowsNotWritten(t *testing.T) {
	h := newHarness(t, func(c *workerConfig) { c.maxRecords = 4 })
	h.w.admit(records(0, 4, "v"))
	first := h.nextCall()
	first.complete(&bq.AppendError{Retry: []int{1, 3}, Err: errors.New("unavailable")})
	retry := h.nextCall()
	if !equalOffsets(retry.offsets, 1, 3) {
		t.Fatalf("resent %v, want [1 3]", retry.offsets)
	}
	if m := h.mark(); m != -1 {
		t.Fatalf("watermark %d before the resent rows were written", m)
	}
	retry.complete(nil)
	h.waitMark(4)
	if got := testutil.ToFloat64(h.m.written.WithLabelValues("p.d.t")); got != 4 {
		t.Errorf("rows written = %v, want 4 (2 at first, 2 resent)", got)
	}
	if got := testutil.ToFloat64(h.m.retries.WithLabelValues(stageAppend)); got != 1 {
		t.Errorf("append retries = %v, want 1", got)
	}
}

// A row BigQuery refuses goes to the dead-letter topic; the others of its
// request are sent again at once; its offset is committed only once the
// dead-letter write is acknowledged.
func TestWorkerDeadLettersRefusedRowsBeforeCommitting(t *testing.T) {
	h := newHarness(t)
	fail := true
	var failMu sync.Mutex
	h.dlqErr = func() error {
		failMu.Lock()
		defer failMu.Unlock()
		if fail {
			return errors.New("dead-letter topic unreachable")
		}
		return nil
	}
	h.w.admit(records(0, 3, "v"))
	first := h.nextCall()
	first.complete(&bq.AppendError{
		Rejected: map[int]error{1: fmt.Errorf("%w: Field x: too long", bq.ErrRowRejected)},
		Retry:    []int{0, 2},
		Err:      fmt.Errorf("%w: Field x: too long", bq.ErrRowRejected),
	})
	again := h.nextCall()
	if !equalOffsets(again.offsets, 0, 2) {
		t.Fatalf("resent %v, want [0 2]", again.offsets)
	}
	again.complete(nil)
	// The dead-letter write fails: the partition waits, loudly.
	eventually(t, "dead-letter retries", func() bool {
		return testutil.ToFloat64(h.m.retries.WithLabelValues(stageDeadLetter)) >= 1
	})
	if m := h.mark(); m != -1 {
		t.Fatalf("watermark %d while the refused record is not dead-lettered", m)
	}
	failMu.Lock()
	fail = false
	failMu.Unlock()
	select {
	case rs := <-h.dlq:
		if len(rs) != 1 || rs[0].rec.Offset != 1 || rs[0].reason != reasonBigQuery {
			t.Fatalf("dead-lettered %+v, want offset 1 bigquery_rejected", rs)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("refused record never dead-lettered")
	}
	h.waitMark(3)
	if got := testutil.ToFloat64(h.m.deadLettered.WithLabelValues("t", reasonBigQuery)); got != 1 {
		t.Errorf("dead-lettered = %v, want 1", got)
	}
}

// While the decode stage waits for the registry, batches already sent are
// still acknowledged and committed.
func TestWorkerAcknowledgesWhileDecodeWaits(t *testing.T) {
	h := newHarness(t)
	h.decodeMu.Lock()
	h.blocked[3] = true
	h.decodeMu.Unlock()
	h.w.admit(records(0, 6, "v"))
	first := h.nextCall()
	if !equalOffsets(first.offsets, 0, 1, 2) {
		t.Fatalf("first batch %v", first.offsets)
	}
	first.complete(nil)
	h.waitMark(3)
	eventually(t, "schema retries", func() bool { return testutil.ToFloat64(h.m.retries.WithLabelValues(stageSchema)) >= 2 })
	h.decodeMu.Lock()
	delete(h.blocked, 3)
	h.decodeMu.Unlock()
	second := h.nextCall()
	if !equalOffsets(second.offsets, 3, 4, 5) {
		t.Fatalf("second batch %v, want [3 4 5]", second.offsets)
	}
	second.complete(nil)
	h.waitMark(6)
}

// Records that become no row (rejected, tombstones) still move the
// watermark in order; with errors.policy skip nothing is dead-lettered.
func TestWorkerSkipPolicyCommitsPastRejections(t *testing.T) {
	h := newHarness(t, func(c *workerConfig) { c.policy = PolicySkip; c.maxWait = 20 * time.Millisecond })
	h.w.admit(records(0, 2, "bad"))
	h.w.admit(records(2, 3, "<nil>"))
	h.w.admit(records(3, 4, "v"))
	c := h.nextCall()
	if !equalOffsets(c.offsets, 3) {
		t.Fatalf("appended %v, want [3]", c.offsets)
	}
	c.complete(nil)
	h.waitMark(4)
	select {
	case rs := <-h.dlq:
		t.Fatalf("skip policy dead-lettered %d records", len(rs))
	default:
	}
	if got := testutil.ToFloat64(h.m.rejected.WithLabelValues("t", reasonDecode)); got != 2 {
		t.Errorf("rejected = %v, want 2", got)
	}
	if got := testutil.ToFloat64(h.m.tombstones.WithLabelValues("t")); got != 1 {
		t.Errorf("tombstones = %v, want 1", got)
	}
}

// Under errors.policy fail the watermark stops at the failing record,
// whatever comes after it, and the sink is told.
func TestWorkerFailPolicyCommitsUpToTheRecord(t *testing.T) {
	h := newHarness(t, func(c *workerConfig) { c.policy = PolicyFail; c.maxRecords = 10 })
	h.w.admit(records(0, 2, "v"))
	h.w.admit(records(2, 3, "bad"))
	h.w.admit(records(3, 6, "v"))
	c := h.nextCall()
	if !equalOffsets(c.offsets, 0, 1) {
		t.Fatalf("appended %v, want the rows before the bad record, [0 1]", c.offsets)
	}
	c.complete(nil)
	h.waitMark(2)
	eventually(t, "fatal", func() bool { h.mu.Lock(); defer h.mu.Unlock(); return len(h.fatals) == 1 })
	if got := h.fatals[0].rec.Offset; got != 2 {
		t.Errorf("fatal record at offset %d, want 2", got)
	}
	h.noCall(50 * time.Millisecond)
	if m := h.mark(); m != 2 {
		t.Errorf("watermark %d, want it to stay at the failing record, 2", m)
	}
}

// Stopping sends the open batch and waits for every flight; the records
// not yet taken are left for the next owner and their memory given back.
func TestWorkerStopFlushesAndFinishes(t *testing.T) {
	h := newHarness(t, func(c *workerConfig) { c.maxRecords = 100 })
	h.w.admit(records(0, 5, "v"))
	eventually(t, "records taken for decoding", func() bool {
		h.w.mu.Lock()
		defer h.w.mu.Unlock()
		return len(h.w.queue) == 0
	})
	h.w.stop()
	c := h.nextCall()
	if !equalOffsets(c.offsets, 0, 1, 2, 3, 4) {
		t.Fatalf("flushed %v, want [0..4]", c.offsets)
	}
	select {
	case <-h.w.done:
		t.Fatal("worker ended with a flight unanswered")
	case <-time.After(50 * time.Millisecond):
	}
	c.complete(nil)
	select {
	case <-h.w.done:
	case <-time.After(5 * time.Second):
		t.Fatal("worker did not end after its last flight")
	}
	if m := h.mark(); m != 5 {
		t.Errorf("watermark %d, want 5", m)
	}
	if u := h.budget.used.Load(); u != 0 {
		t.Errorf("%d bytes still accounted after the worker ended", u)
	}
}

// A cancelled worker (its partition lost) marks nothing more and drops its
// flights; their records are counted as abandoned.
func TestWorkerCancelAbandons(t *testing.T) {
	h := newHarness(t)
	h.w.admit(records(0, 3, "v"))
	c := h.nextCall()
	h.w.cancel()
	<-h.w.done
	c.complete(nil)
	if m := h.mark(); m != -1 {
		t.Errorf("cancelled worker marked %d", m)
	}
	if n := h.w.abandoned.Load(); n != 1 {
		t.Errorf("abandoned %d flights, want 1", n)
	}
	if u := h.budget.used.Load(); u != 0 {
		t.Errorf("%d bytes still accounted", u)
	}
}

// A partition admits records up to its share of memory and no more: the
// rest stays in Kafka, its fetching pauses, and it resumes once BigQuery
// acknowledged enough.
func TestWorkerAdmitsUpToItsShare(t *testing.T) {
	h := newHarness(t, func(c *workerConfig) { c.maxRecords = 1000; c.maxWait = 10 * time.Millisecond })
	share := h.budget.limit(0, 0)
	one := recordSize(&kgo.Record{Value: []byte("v")}) + h.w.estimatedRow(&kgo.Record{Value: []byte("v")})
	offered := share/one + 100
	took, _ := h.w.admit(records(0, offered, "v"))
	if int64(took) != share/one {
		t.Fatalf("admitted %d of %d records, want the %d that fit a share of %d bytes", took, offered, share/one, share)
	}
	if held := h.w.held.Load(); held > share {
		t.Fatalf("holds %d bytes, over its share of %d", held, share)
	}
	h.mu.Lock()
	paused := h.paused
	h.mu.Unlock()
	if paused != 1 {
		t.Fatalf("paused %d times, want 1", paused)
	}
	// However often the poll offers, it never holds more than its share
	// (decoding may give back a row's estimate, and room with it).
	n, _ := h.w.admit(records(int64(took), offered, "v"))
	if held := h.w.held.Load(); held > share {
		t.Fatalf("holds %d bytes after a second offer took %d more, over its share of %d", held, n, share)
	}
	took += n
	deadline := time.After(5 * time.Second)
	for h.w.held.Load() > 0 {
		select {
		case c := <-h.calls:
			c.complete(nil)
		case <-time.After(10 * time.Millisecond): // the last release may still be under way
		case <-deadline:
			t.Fatalf("stuck holding %d bytes", h.w.held.Load())
		}
	}
	h.waitMark(int64(took))
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.resumed != 1 {
		t.Errorf("resumed %d times, want 1", h.resumed)
	}
}

// A record larger than the whole share is still admitted when the
// partition holds nothing, alone, so that it moves.
func TestWorkerAdmitsOneLargeRecordWhenIdle(t *testing.T) {
	h := newHarness(t)
	big := &kgo.Record{Topic: "t", Offset: 0, Value: make([]byte, h.budget.limit(0, 0)+1)}
	if n, _ := h.w.admit([]*kgo.Record{big, records(1, 2, "v")[0]}); n != 1 {
		t.Fatalf("admitted %d, want the large record alone", n)
	}
}

// Ready's stall detection: a partition that holds records and sees no
// acknowledgement for stall_timeout is stalled; an idle one never is, also
// right after a record arrives following a long idle spell.
func TestStalledOnlyWhileHoldingRecords(t *testing.T) {
	h := newHarness(t, func(c *workerConfig) { c.maxWait = 10 * time.Millisecond })
	s := &Sink{cfg: Config{StallTimeout: time.Minute}, workers: map[topicPartition]*worker{h.w.tp: h.w}, log: zap.NewNop()}
	s.publishWorkersLocked()
	h.w.progress.Store(time.Now().Add(-time.Hour).UnixNano()) // idle for an hour
	if st := s.stalled(); len(st) != 0 {
		t.Fatalf("idle partition reported stalled: %v", st)
	}
	h.w.admit(records(0, 1, "v"))
	if st := s.stalled(); len(st) != 0 {
		t.Fatalf("partition reported stalled right after its first record: %v", st)
	}
	c := h.nextCall()
	h.w.progress.Store(time.Now().Add(-2 * time.Minute).UnixNano())
	if st := s.stalled(); len(st) != 1 {
		t.Fatalf("a partition holding records without progress is not reported: %v", st)
	}
	c.complete(nil)
	h.waitMark(1)
	if st := s.stalled(); len(st) != 0 {
		t.Fatalf("stall persists after the acknowledgement: %v", st)
	}
}

// A partition whose memory share is smaller than max_records' worth still
// keeps its batches moving: a batch closes at a quarter of the share, not
// at max_wait, so that a small memory.max_buffered_bytes costs batch size,
// not throughput.
func TestWorkerClosesBatchesAtAQuarterOfItsShare(t *testing.T) {
	h := newHarness(t, func(c *workerConfig) { c.maxRecords = 1 << 30; c.maxWait = time.Hour; c.maxInflight = 8 })
	share := h.budget.limit(0, 0)
	one := recordSize(&kgo.Record{Value: []byte("v")}) + h.w.estimatedRow(&kgo.Record{Value: []byte("v")})
	took, _ := h.w.admit(records(0, share/one+100, "v"))
	var c *appendCall
	select {
	case c = <-h.calls:
	case <-time.After(5 * time.Second):
		t.Fatalf("no batch sent within 5s of admitting %d records (share %d bytes); max_wait is an hour", took, share)
	}
	// A row's estimate gives way to its size while decoding, so a quarter
	// of the share holds at least this many records.
	if min := int(share / shareBatches / one); len(c.offsets) < min || len(c.offsets) >= took {
		t.Errorf("first batch has %d records, want at least %d (a quarter of the share) and fewer than the %d admitted", len(c.offsets), min, took)
	}
	c.complete(nil)
	h.waitMark(c.offsets[len(c.offsets)-1] + 1)
}

// When a failing target recovers, every partition waiting on it retries at
// once, not each after its own backoff: here one partition's records wait
// out a failure only an operator can fix (10s between attempts), and must
// move as soon as another partition gets through to the same target.
func TestWorkersRetryTogetherWhenTheirTargetRecovers(t *testing.T) {
	attempts := new(atomic.Int64)
	shared := newHealth(zaptest.NewLogger(t), newMetrics(), attempts)
	useShared := func(d *workerDeps) { d.health = shared }
	a := newHarnessWith(t, useShared, func(c *workerConfig) { c.maxRecords = 1 })
	b := newHarnessWith(t, useShared, func(c *workerConfig) { c.maxRecords = 1 })
	for _, h := range []*harness{a, b} {
		h.decodeMu.Lock()
		h.blocked[0], h.blockedConfig = true, true
		h.decodeMu.Unlock()
		h.w.admit(records(0, 1, "v"))
	}
	// Both have failed once and are waiting out configBackoff.
	eventually(t, "both partitions to fail", func() bool { return attempts.Load() >= 2 })
	for _, h := range []*harness{a, b} {
		h.decodeMu.Lock()
		h.blocked[0] = false
		h.decodeMu.Unlock()
	}
	// Another partition's success ends the failure (as b's next attempt
	// would); a must not wait for its own, 10s after its first.
	healedAt := time.Now()
	shared.ok(stageSchema, "registry")
	a.nextCall().complete(nil)
	if d := time.Since(healedAt); d > 2*time.Second {
		t.Fatalf("a partition retried %v after its target recovered, want at once", d.Round(time.Millisecond))
	}
	a.waitMark(1)
}

// Settled flights hand their slices to the next batches of any partition
// (batchBufs), and hand-overs their arrays back to the decode stage
// (itemBufs): partitions running side by side, batch after batch, must
// still send each record once, in order, with a row for each.
func TestWorkerReusesBatchesWithoutMixingRecords(t *testing.T) {
	const partitions, n = 4, 600
	var wg sync.WaitGroup
	for p := range partitions {
		var mismatch atomic.Value
		h := newHarnessWith(t, func(d *workerDeps) {
			next := d.append
			d.append = func(ctx context.Context, rows []bq.Row, recs []*kgo.Record) (appendResult, error) {
				if len(rows) != len(recs) {
					mismatch.Store(fmt.Sprintf("%d rows for %d records", len(rows), len(recs)))
				}
				return next(ctx, rows, recs)
			}
		}, func(c *workerConfig) { c.maxRecords = 7; c.maxInflight = 3; c.maxWait = 10 * time.Millisecond })
		wg.Add(1)
		go func() {
			defer wg.Done()
			var got []int64
			for len(got) < n {
				select {
				case c := <-h.calls:
					got = append(got, c.offsets...)
					c.complete(nil)
				case <-time.After(5 * time.Second):
					t.Errorf("partition %d: %d of %d records appended, then none for 5s", p, len(got), n)
					return
				}
			}
			for i, o := range got {
				if o != int64(i) {
					t.Errorf("partition %d: append %d carries offset %d, want %d (all: %v)", p, i, o, i, got)
					return
				}
			}
			if m := mismatch.Load(); m != nil {
				t.Errorf("partition %d: an append had %s", p, m)
			}
		}()
		go func() {
			recs := records(0, n, "v")
			for len(recs) > 0 {
				k, _ := h.w.admit(recs)
				recs = recs[k:]
				if k == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
}
