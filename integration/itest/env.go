package itest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

// Env is one test's stack with the stock-update schemas registered.
type Env struct {
	T       *testing.T
	St      *stack.Stack
	Schemas stack.StockSchemas
}

// NewEnv starts a stack of its own for the test, its stock topic on three
// partitions, and registers the stock-update schemas. It is closed when the
// test ends.
func NewEnv(t *testing.T) *Env {
	t.Helper()
	return NewEnvPartitions(t, 3)
}

// NewEnvPartitions is NewEnv with the stock topic's partition count chosen.
func NewEnvPartitions(t *testing.T, partitions int32) *Env {
	t.Helper()
	st, err := stack.Start(stack.Options{Partitions: partitions, Topics: []string{stack.StockTopic}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	schemas, err := st.RegisterStock()
	if err != nil {
		t.Fatal(err)
	}
	return &Env{T: t, St: st, Schemas: schemas}
}

// Produce writes updates (encoded with their version's schema) and extra
// to the stock topic, failing the test if Kafka does not take them.
func (e *Env) Produce(ctx context.Context, updates []stack.StockUpdate, extra ...*kgo.Record) {
	e.T.Helper()
	recs := make([]*kgo.Record, 0, len(updates)+len(extra))
	for _, u := range updates {
		r, err := e.Schemas.Record(u)
		if err != nil {
			e.T.Fatal(err)
		}
		recs = append(recs, r)
	}
	recs = append(recs, extra...)
	if err := e.St.Produce(ctx, recs...); err != nil {
		e.T.Fatal(err)
	}
}

// Running is a sink started by Env.Start or StartSink; Stop ends it and
// reports Run's error.
type Running struct {
	Sink    *sink.Sink
	Metrics *prometheus.Registry
	Stop    func() error
}

// Start runs the real sink in the test's process on the stack's config for
// group on the stock topic, changed by tune, logging to the test.
func (e *Env) Start(ctx context.Context, group string, tune ...func(*sink.Config)) Running {
	e.T.Helper()
	cfg := e.St.Config(group, stack.StockTopic)
	for _, f := range tune {
		f(&cfg)
	}
	return StartSink(ctx, e.T, e.St, cfg, zaptest.NewLogger(e.T))
}

// StartSink runs the real sink, built by the constructor main uses, against
// the stack until the test ends or Stop is called.
func StartSink(ctx context.Context, t testing.TB, st *stack.Stack, cfg sink.Config, log *zap.Logger) Running {
	t.Helper()
	metrics := prometheus.NewRegistry()
	s, err := sink.New(cfg, sink.WithLogger(log), sink.WithRegisterer(metrics))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	stopped := false
	var runErr error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			runErr = <-done
		}
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return Running{Sink: s, Metrics: metrics, Stop: stop}
}

// WaitCommitted waits up to a minute until group has committed every record
// of the stock topic, and returns the offsets.
func (e *Env) WaitCommitted(ctx context.Context, group string) stack.Offsets {
	e.T.Helper()
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	o, err := e.St.WaitCommitted(wctx, group, stack.StockTopic)
	if err != nil {
		e.T.Fatal(err)
	}
	return o
}

// WaitSomeCommitted waits until group has committed at least one record.
func (e *Env) WaitSomeCommitted(ctx context.Context, group string) {
	e.T.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(30 * time.Second)
	for {
		o, err := e.St.GroupOffsets(ctx, group, stack.StockTopic)
		if err == nil {
			for _, c := range o.Committed {
				if c > 0 {
					return
				}
			}
		}
		select {
		case <-tick.C:
		case <-timeout:
			e.T.Fatalf("group %s committed nothing in 30s", group)
		}
	}
}

// Read reads the stock table back, schema and rows.
func (e *Env) Read(ctx context.Context) stack.Table {
	e.T.Helper()
	tbl, err := e.St.ReadTable(ctx, stack.StockTable)
	if err != nil {
		e.T.Fatal(err)
	}
	return tbl
}

// Key identifies a generated update: EAN and timestamp are unique enough
// within one generator run, and both survive the trip as plain values.
func Key(ean string, ts int64) string { return fmt.Sprintf("%s@%d", ean, ts) }

// WaitAllCommitted waits until group committed every record of topic.
func WaitAllCommitted(t *testing.T, st *stack.Stack, group, topic string, within time.Duration) stack.Offsets {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), within)
	defer cancel()
	o, err := st.WaitCommitted(ctx, group, topic)
	if err != nil {
		t.Fatalf("group %s on %s: %v (committed %v, end %v)", group, topic, err, o.Committed, o.End)
	}
	return o
}

// RowsAheadOfCommits is the stock table's row count minus group's committed
// offsets on the stock topic: right after a kill, the duplicates so far plus
// the rows the next owner will write again, except appends the test server
// had received but not yet answered when the process died (they land a
// little later, and are re-read too).
func RowsAheadOfCommits(t *testing.T, e *Env, group string) int64 {
	t.Helper()
	o, err := e.St.GroupOffsets(t.Context(), group, stack.StockTopic)
	if err != nil {
		t.Fatal(err)
	}
	n := int64(e.St.BigQuery.RowCount(stack.Project, stack.Dataset, stack.StockTable))
	for _, c := range o.Committed {
		n -= max(c, 0)
	}
	return n
}

// AdminClient is a kadm client on e's Kafka, closed when the test ends.
func AdminClient(t *testing.T, e *Env) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.St.Brokers()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}
