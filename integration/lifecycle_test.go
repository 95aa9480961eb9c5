package integration

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

// sum adds up every series of a counter or gauge.
func sum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			v += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return v
}

func committedSum(t *testing.T, e *itest.Env, group string) int64 {
	t.Helper()
	o, err := e.St.GroupOffsets(t.Context(), group, stack.StockTopic)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, c := range o.Committed {
		if c > 0 {
			n += c
		}
	}
	return n
}

// One partition's append still unanswered when shutdown_timeout runs out
// must not cost the other partitions their final commit: the commit has a
// budget of its own.
func TestShutdownCommitsAcknowledgedDespiteAStraggler(t *testing.T) {
	ctx := t.Context()
	e := itest.NewEnv(t)
	e.Produce(ctx, stack.StockUpdates(300, 11))
	r := e.Start(ctx, "g-straggler", func(c *sink.Config) {
		c.Kafka.CommitInterval = time.Hour // only the shutdown commit
		c.ShutdownTimeout = 2 * time.Second
	})
	itest.WaitFor(t, 30*time.Second, "300 rows acknowledged", func() bool {
		return sum(t, r.Metrics, "bqsink_rows_written_total") == 300
	})
	e.St.BigQuery.SetAppendLatency(5 * time.Second) // longer than shutdown_timeout
	e.Produce(ctx, stack.StockUpdates(1, 12))
	itest.WaitFor(t, 10*time.Second, "an append in flight", func() bool {
		return sum(t, r.Metrics, "bqsink_appends_inflight") == 1
	})
	// The unanswered batch makes the shutdown incomplete, and Run says so.
	if err := r.Stop(); !errors.Is(err, sink.ErrIncomplete) {
		t.Fatalf("Run = %v, want ErrIncomplete", err)
	}
	if n := committedSum(t, e, "g-straggler"); n < 300 {
		t.Errorf("BigQuery acknowledged 300 records, %d offsets committed at shutdown", n)
	}
}

// An acknowledged batch's offsets are committed at once, not at the next
// kafka.commit_interval: what a crash duplicates is only what was in
// flight or acknowledged during the commit under way
// (crash.TestCrashLoopLosesNothing counts it).
func TestCommitFollowsEachAcknowledgement(t *testing.T) {
	ctx := t.Context()
	e := itest.NewEnv(t)
	r := e.Start(ctx, "g-commit-at-once", func(c *sink.Config) {
		c.Kafka.CommitInterval = time.Hour // a commit that waited for it would never come
	})
	for round, n := range []int{300, 200} {
		e.Produce(ctx, stack.StockUpdates(n, uint64(20+round)))
		want := float64(300 + 200*round)
		itest.WaitFor(t, 30*time.Second, fmt.Sprintf("%.0f rows acknowledged", want), func() bool {
			return sum(t, r.Metrics, "bqsink_rows_written_total") == want
		})
		itest.WaitFor(t, 5*time.Second, fmt.Sprintf("%.0f offsets committed, commit_interval 1h", want), func() bool {
			return float64(committedSum(t, e, "g-commit-at-once")) == want
		})
	}
	if err := r.Stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
}

// A member shutting down keeps its partitions until their acknowledged
// offsets are committed: a member joining meanwhile must not re-read them.
func TestShutdownHoldsPartitionsUntilCommitted(t *testing.T) {
	ctx := t.Context()
	e := itest.NewEnv(t)
	e.Produce(ctx, stack.StockUpdates(300, 51))
	tune := func(c *sink.Config) {
		c.Kafka.CommitInterval = time.Hour
		c.ShutdownTimeout = 15 * time.Second
	}
	a := e.Start(ctx, "g-handover", tune)
	itest.WaitFor(t, 30*time.Second, "300 rows acknowledged", func() bool {
		return sum(t, a.Metrics, "bqsink_rows_written_total") == 300
	})
	e.St.BigQuery.SetAppendLatency(3 * time.Second)
	e.Produce(ctx, stack.StockUpdates(1, 52))
	itest.WaitFor(t, 10*time.Second, "an append in flight", func() bool {
		return sum(t, a.Metrics, "bqsink_appends_inflight") == 1
	})
	stopped := make(chan error, 1)
	go func() { stopped <- a.Stop() }() // A flushes for ~3s before committing
	b := e.Start(ctx, "g-handover", tune)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	e.WaitCommitted(ctx, "g-handover")
	itest.WaitFor(t, 30*time.Second, "B's appends answered", func() bool {
		return sum(t, b.Metrics, "bqsink_appends_inflight") == 0 &&
			sum(t, b.Metrics, "bqsink_rows_written_total") == sum(t, b.Metrics, "bqsink_records_consumed_total")
	})
	if rows := e.St.BigQuery.RowCount(stack.Project, stack.Dataset, stack.StockTable); rows != 301 {
		t.Errorf("%d rows for 301 records, all acknowledged by A before it stopped", rows)
	}
}

// Ready must not report a stall for a partition that was merely idle for
// longer than stall_timeout and has just received a record.
func TestReadyAfterIdleIsNoStall(t *testing.T) {
	ctx := t.Context()
	e := itest.NewEnv(t)
	e.Produce(ctx, stack.StockUpdates(30, 21))
	r := e.Start(ctx, "g-idle", func(c *sink.Config) {
		c.StallTimeout = 2 * time.Second
		c.Batch.MaxWait = 500 * time.Millisecond
	})
	e.WaitCommitted(ctx, "g-idle")
	if err := r.Sink.Ready(); err != nil {
		t.Fatalf("not ready after catching up: %v", err)
	}
	// The behaviour depends on wall time passing while idle.
	time.Sleep(2500 * time.Millisecond)
	e.Produce(ctx, stack.StockUpdates(1, 22))
	for i := 0; i < 50 && sum(t, r.Metrics, "bqsink_rows_written_total") < 31; i++ {
		if err := r.Sink.Ready(); err != nil {
			t.Fatalf("Ready failed right after a record reached an idle partition: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
