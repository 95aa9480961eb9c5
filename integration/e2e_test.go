// Package integration holds bqsink's end-to-end tests: the real daemon code
// against the local stack (Kafka, Schema Registry, BigQuery test server),
// every hop over real sockets.
package integration

import (
	"context"
	"fmt"
	"math/big"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"

	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

// env is one test's stack with the stock-update schemas registered.
type env struct {
	t       *testing.T
	st      *stack.Stack
	schemas stack.StockSchemas
}

func newEnv(t *testing.T) *env {
	t.Helper()
	st, err := stack.Start(stack.Options{Partitions: 3, Topics: []string{stack.StockTopic}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	schemas, err := st.RegisterStock()
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, st: st, schemas: schemas}
}

func (e *env) produce(ctx context.Context, updates []stack.StockUpdate, extra ...*kgo.Record) {
	e.t.Helper()
	recs := make([]*kgo.Record, 0, len(updates)+len(extra))
	for _, u := range updates {
		r, err := e.schemas.Record(u)
		if err != nil {
			e.t.Fatal(err)
		}
		recs = append(recs, r)
	}
	recs = append(recs, extra...)
	if err := e.st.Produce(ctx, recs...); err != nil {
		e.t.Fatal(err)
	}
}

// running is a sink started by start; stop ends it and reports Run's error.
type running struct {
	sink    *sink.Sink
	metrics *prometheus.Registry
	stop    func() error
}

func (e *env) start(ctx context.Context, group string, tune ...func(*sink.Config)) running {
	e.t.Helper()
	cfg := e.st.Config(group, stack.StockTopic)
	for _, f := range tune {
		f(&cfg)
	}
	return startSink(ctx, e.t, e.st, cfg, zaptest.NewLogger(e.t))
}

// startSink runs the real sink, built by the constructor main uses, against
// the stack until the test ends or stop is called.
func startSink(ctx context.Context, t testing.TB, st *stack.Stack, cfg sink.Config, log *zap.Logger) running {
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
	return running{sink: s, metrics: metrics, stop: stop}
}

func (e *env) waitCommitted(ctx context.Context, group string) stack.Offsets {
	e.t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	o, err := e.st.WaitCommitted(wctx, group, stack.StockTopic)
	if err != nil {
		e.t.Fatal(err)
	}
	return o
}

// waitSomeCommitted waits until group has committed at least one record.
func (e *env) waitSomeCommitted(ctx context.Context, group string) {
	e.t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(30 * time.Second)
	for {
		o, err := e.st.GroupOffsets(ctx, group, stack.StockTopic)
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
			e.t.Fatalf("group %s committed nothing in 30s", group)
		}
	}
}

func (e *env) read(ctx context.Context) stack.Table {
	e.t.Helper()
	tbl, err := e.st.ReadTable(ctx, stack.StockTable)
	if err != nil {
		e.t.Fatal(err)
	}
	return tbl
}

// key identifies a generated update: EAN and timestamp are unique enough
// within one generator run, and both survive the trip as plain values.
func key(ean string, ts int64) string { return fmt.Sprintf("%s@%d", ean, ts) }

func byKey(t *testing.T, tbl stack.Table) map[string][]map[string]bigquery.Value {
	t.Helper()
	out := map[string][]map[string]bigquery.Value{}
	for _, r := range tbl.Rows {
		ean, _ := r["ean"].(string)
		ts, _ := r["timestamp"].(int64)
		out[key(ean, ts)] = append(out[key(ean, ts)], r)
	}
	return out
}

// Records of v1 and v2 interleave in every partition; each lands as one row
// with exactly the values produced, v1 rows leaving v2's columns NULL, and
// the table's schema is v1's columns plus v2's new ones as NULLABLE.
func TestPipelineWritesEveryRecordOfBothVersions(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t)
	updates := stack.StockUpdates(1500, 1)
	e.produce(ctx, updates)
	r := e.start(ctx, "g-both")
	o := e.waitCommitted(ctx, "g-both")
	if o.Lag() != 0 {
		t.Fatalf("lag %d", o.Lag())
	}
	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	tbl := e.read(ctx)
	wantCols := map[string]struct {
		typ      bigquery.FieldType
		required bool
	}{
		"timestamp": {bigquery.IntegerFieldType, true}, "process_reference": {bigquery.StringFieldType, false},
		"variant_id": {bigquery.IntegerFieldType, true}, "warehouse_id": {bigquery.IntegerFieldType, true},
		"warehouse_name": {bigquery.StringFieldType, true}, "huubclient_id": {bigquery.IntegerFieldType, true},
		"ean": {bigquery.StringFieldType, true}, "reference": {bigquery.StringFieldType, true},
		"sales_channel_type": {bigquery.StringFieldType, true}, "delta": {bigquery.IntegerFieldType, true},
		"stock_after_adjust": {bigquery.IntegerFieldType, true},
		"adjusted_at":        {bigquery.TimestampFieldType, false}, "unit_cost": {bigquery.NumericFieldType, false},
		"reason": {bigquery.StringFieldType, false},
	}
	if len(tbl.Schema) != len(wantCols) {
		t.Errorf("table has %d columns, want %d", len(tbl.Schema), len(wantCols))
	}
	for _, f := range tbl.Schema {
		w, ok := wantCols[f.Name]
		if !ok {
			t.Errorf("unexpected column %s", f.Name)
			continue
		}
		// A v1 record may arrive first and create the table; then v2's
		// columns are added as NULLABLE. Either way v1's columns stay as
		// they are unless a later version made them optional.
		if f.Type != w.typ || (f.Required && !w.required) {
			t.Errorf("column %s: %s required=%v, want %s required=%v", f.Name, f.Type, f.Required, w.typ, w.required)
		}
	}

	rows := byKey(t, tbl)
	if len(tbl.Rows) != len(updates) {
		t.Errorf("%d rows for %d records", len(tbl.Rows), len(updates))
	}
	for _, u := range updates {
		got := rows[key(u.EAN, u.Timestamp)]
		if len(got) != 1 {
			t.Fatalf("record %s: %d rows", key(u.EAN, u.Timestamp), len(got))
		}
		checkRow(t, u, got[0])
	}
}

func checkRow(t *testing.T, u stack.StockUpdate, row map[string]bigquery.Value) {
	t.Helper()
	eq := func(col string, want bigquery.Value) {
		if got := row[col]; got != want {
			t.Errorf("%s %s = %#v, want %#v", u.EAN, col, got, want)
		}
	}
	eq("variant_id", int64(u.VariantID))
	eq("warehouse_id", int64(u.WarehouseID))
	eq("warehouse_name", u.WarehouseName)
	eq("huubclient_id", int64(u.HuubClientID))
	eq("reference", u.Reference)
	eq("sales_channel_type", u.SalesChannelType)
	eq("delta", int64(u.Delta))
	eq("stock_after_adjust", int64(u.StockAfterAdjust))
	if u.ProcessReference == nil {
		eq("process_reference", nil)
	} else {
		eq("process_reference", *u.ProcessReference)
	}
	if !u.V2 {
		eq("adjusted_at", nil)
		eq("unit_cost", nil)
		eq("reason", nil)
		return
	}
	eq("reason", u.Reason)
	if u.AdjustedAt == nil {
		eq("adjusted_at", nil)
		eq("unit_cost", nil)
		return
	}
	if at, ok := row["adjusted_at"].(time.Time); !ok || !at.Equal(u.AdjustedAt.Truncate(time.Millisecond)) {
		t.Errorf("%s adjusted_at = %v, want %v", u.EAN, row["adjusted_at"], u.AdjustedAt)
	}
	// NUMERIC must be exact: the decimal travels as a string, never a float.
	if cost, ok := row["unit_cost"].(*big.Rat); !ok || cost.Cmp(u.UnitCost) != 0 {
		t.Errorf("%s unit_cost = %v, want %s", u.EAN, row["unit_cost"], u.UnitCost.FloatString(4))
	}
}

// slowStream produces 3000 updates and slows appends, and returns a tuning
// of small batches with one append in flight per partition: a sink stopped
// or joined early is caught with work in flight and most records to do.
func (e *env) slowStream(ctx context.Context, seed uint64) ([]stack.StockUpdate, func(*sink.Config)) {
	e.t.Helper()
	e.st.BigQuery.SetAppendLatency(100 * time.Millisecond)
	updates := stack.StockUpdates(3000, seed)
	e.produce(ctx, updates)
	return updates, func(c *sink.Config) { c.Batch.MaxRecords, c.Batch.MaxInflight = 20, 1 }
}

// Stopping the sink mid-stream and starting it again loses nothing: every
// record is present at least once and the group ends with no lag.
func TestRestartMidStreamLosesNothing(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t)
	updates, small := e.slowStream(ctx, 2)

	first := e.start(ctx, "g-restart", small)
	e.waitSomeCommitted(ctx, "g-restart")
	if err := first.stop(); err != nil {
		t.Fatalf("first Run: %v", err)
	}
	mid, err := e.st.GroupOffsets(ctx, "g-restart", stack.StockTopic)
	if err != nil {
		t.Fatal(err)
	}
	if mid.Lag() == 0 {
		t.Fatal("the first run finished everything; the test did not stop it mid-stream")
	}
	t.Logf("stopped with lag %d of %d", mid.Lag(), len(updates))

	e.start(ctx, "g-restart", small)
	e.waitCommitted(ctx, "g-restart")
	rows := byKey(t, e.read(ctx))
	missing := 0
	for _, u := range updates {
		if len(rows[key(u.EAN, u.Timestamp)]) == 0 {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d records missing after restart", missing, len(updates))
	}
}

// Records that can never be written are rejected, counted and their offsets
// committed; the good records around them all land.
func TestMalformedRecordsDoNotStopTheOthers(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t)
	good := stack.StockUpdates(600, 3)
	valid, err := e.schemas.Record(good[0])
	if err != nil {
		t.Fatal(err)
	}
	bad := []*kgo.Record{
		{Topic: stack.StockTopic, Key: []byte("k"), Value: []byte("plain text, no magic byte")},
		{Topic: stack.StockTopic, Key: []byte("k"), Value: stack.WireFormat(9999, valid.Value[5:])}, // unknown schema ID
		{Topic: stack.StockTopic, Key: []byte("k"), Value: valid.Value[:len(valid.Value)-3]},        // truncated body
		{Topic: stack.StockTopic, Key: []byte("k"), Value: nil},                                     // tombstone
	}
	e.produce(ctx, good[:300], bad...)
	e.produce(ctx, good[300:])
	r := e.start(ctx, "g-bad")
	e.waitCommitted(ctx, "g-bad")

	rows := byKey(t, e.read(ctx))
	for _, u := range good {
		if len(rows[key(u.EAN, u.Timestamp)]) == 0 {
			t.Fatalf("good record %s missing", u.EAN)
		}
	}
	for reason, want := range map[string]float64{"wire_format": 1, "schema_not_found": 1, "decode": 1} {
		if got := counter(t, r.metrics, "bqsink_records_rejected_total", "reason", reason); got != want {
			t.Errorf("rejected %s = %v, want %v", reason, got, want)
		}
	}
	if got := sum(t, r.metrics, "bqsink_tombstones_total"); got != 1 {
		t.Errorf("tombstones = %v, want 1", got)
	}
}

// counter sums a counter's series whose label has the given value.
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// Transient BigQuery failures (quota, unavailable) are retried without
// duplicating rows: a failed request wrote nothing, and only it is resent.
func TestTransientAppendFailuresAreRetriedWithoutDuplicates(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t)
	updates := stack.StockUpdates(800, 4)
	e.produce(ctx, updates)
	e.st.BigQuery.FailAppends(2, codes.ResourceExhausted)
	r := e.start(ctx, "g-retry")
	e.waitCommitted(ctx, "g-retry")
	tbl := e.read(ctx)
	if len(tbl.Rows) != len(updates) {
		t.Fatalf("%d rows for %d records", len(tbl.Rows), len(updates))
	}
	if got := counter(t, r.metrics, "bqsink_retries_total", "stage", "append"); got < 1 {
		t.Errorf("append retries = %v, want the injected failures retried", got)
	}
}

// A second member joining mid-stream takes partitions from the first: the
// first finishes its in-flight appends and commits before letting go, so
// every record lands exactly once and the group ends with no lag.
func TestRebalanceMidStreamHandsOverCleanly(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t)
	updates, small := e.slowStream(ctx, 6)

	first := e.start(ctx, "g-rebalance", small)
	e.waitSomeCommitted(ctx, "g-rebalance")
	second := e.start(ctx, "g-rebalance", small)
	e.waitCommitted(ctx, "g-rebalance")

	consumed := func(r running) float64 {
		return counter(t, r.metrics, "bqsink_records_consumed_total", "topic", stack.StockTopic)
	}
	if consumed(second) == 0 {
		t.Fatal("the second member never got a partition: no rebalance happened")
	}
	rows := byKey(t, e.read(ctx))
	for _, u := range updates {
		if n := len(rows[key(u.EAN, u.Timestamp)]); n != 1 {
			t.Fatalf("record %s landed %d times", u.EAN, n)
		}
	}
	t.Logf("first consumed %.0f, second %.0f", consumed(first), consumed(second))
}

// Versions interleave in one partition (v1, then v2, then v1 again) while
// BigQuery is slow to show a new table and a patched schema to the write
// path, as it is for seconds to minutes in production. The sink rides
// through it: no rejection, nothing lost, no restart, and v2's columns are
// added once.
func TestEvolutionRidesThroughSchemaPropagationDelay(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t)
	e.st.BigQuery.SetSchemaDelay(2 * time.Second)

	all := stack.StockUpdates(300, 8)
	var v1a, v2, v1b []stack.StockUpdate
	for _, u := range all {
		switch {
		case !u.V2 && len(v1a) < 60:
			v1a = append(v1a, u)
		case u.V2 && len(v2) < 60:
			v2 = append(v2, u)
		case !u.V2 && len(v1b) < 60:
			v1b = append(v1b, u)
		}
	}
	var recs []*kgo.Record
	for _, group := range [][]stack.StockUpdate{v1a, v2, v1b} {
		for _, u := range group {
			r, err := e.schemas.Record(u)
			if err != nil {
				t.Fatal(err)
			}
			r.Key = []byte("one-partition")
			recs = append(recs, r)
		}
	}
	if err := e.st.Produce(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	r := e.start(ctx, "g-evolve", func(c *sink.Config) { c.Batch.MaxRecords = 25 })
	e.waitCommitted(ctx, "g-evolve")

	tbl := e.read(ctx)
	if len(tbl.Schema) != 14 {
		t.Errorf("table has %d columns, want v1's 11 plus v2's 3", len(tbl.Schema))
	}
	rows := byKey(t, tbl)
	for _, group := range [][]stack.StockUpdate{v1a, v2, v1b} {
		for _, u := range group {
			got := rows[key(u.EAN, u.Timestamp)]
			if len(got) != 1 {
				t.Fatalf("record %s: %d rows", u.EAN, len(got))
			}
			checkRow(t, u, got[0])
		}
	}
	for _, reason := range []string{"wire_format", "schema_not_found", "unsupported_schema", "decode", "incompatible_schema", "bigquery_rejected"} {
		if n := counter(t, r.metrics, "bqsink_records_rejected_total", "reason", reason); n != 0 {
			t.Errorf("%v records rejected for %s while the schema propagated", n, reason)
		}
	}
	if n := counter(t, r.metrics, "bqsink_retries_total", "stage", "append"); n == 0 {
		t.Error("no append was retried: the propagation delay was not exercised")
	}
}
