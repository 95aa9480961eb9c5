package integration

import (
	"context"
	"math/big"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc/codes"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

func byKey(t *testing.T, tbl stack.Table) map[string][]map[string]bigquery.Value {
	t.Helper()
	out := map[string][]map[string]bigquery.Value{}
	for _, r := range tbl.Rows {
		ean, _ := r["ean"].(string)
		ts, _ := r["timestamp"].(int64)
		out[itest.Key(ean, ts)] = append(out[itest.Key(ean, ts)], r)
	}
	return out
}

// Records of v1 and v2 interleave in every partition; each lands as one row
// with exactly the values produced, v1 rows leaving v2's columns NULL, and
// the table's schema is v1's columns plus v2's new ones as NULLABLE.
func TestPipelineWritesEveryRecordOfBothVersions(t *testing.T) {
	ctx := t.Context()
	e := itest.NewEnv(t)
	updates := stack.StockUpdates(1500, 1)
	e.Produce(ctx, updates)
	r := e.Start(ctx, "g-both")
	o := e.WaitCommitted(ctx, "g-both")
	if o.Lag() != 0 {
		t.Fatalf("lag %d", o.Lag())
	}
	if err := r.Stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	tbl := e.Read(ctx)
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
		got := rows[itest.Key(u.EAN, u.Timestamp)]
		if len(got) != 1 {
			t.Fatalf("record %s: %d rows", itest.Key(u.EAN, u.Timestamp), len(got))
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
func slowStream(ctx context.Context, e *itest.Env, seed uint64) ([]stack.StockUpdate, func(*sink.Config)) {
	e.T.Helper()
	e.St.BigQuery.SetAppendLatency(100 * time.Millisecond)
	updates := stack.StockUpdates(3000, seed)
	e.Produce(ctx, updates)
	return updates, func(c *sink.Config) { c.Batch.MaxRecords, c.Batch.MaxInflight = 20, 1 }
}

// Stopping the sink mid-stream and starting it again loses nothing: every
// record is present at least once and the group ends with no lag.
func TestRestartMidStreamLosesNothing(t *testing.T) {
	ctx := t.Context()
	e := itest.NewEnv(t)
	updates, small := slowStream(ctx, e, 2)

	first := e.Start(ctx, "g-restart", small)
	e.WaitSomeCommitted(ctx, "g-restart")
	if err := first.Stop(); err != nil {
		t.Fatalf("first Run: %v", err)
	}
	mid, err := e.St.GroupOffsets(ctx, "g-restart", stack.StockTopic)
	if err != nil {
		t.Fatal(err)
	}
	if mid.Lag() == 0 {
		t.Fatal("the first run finished everything; the test did not stop it mid-stream")
	}
	t.Logf("stopped with lag %d of %d", mid.Lag(), len(updates))

	e.Start(ctx, "g-restart", small)
	e.WaitCommitted(ctx, "g-restart")
	rows := byKey(t, e.Read(ctx))
	missing := 0
	for _, u := range updates {
		if len(rows[itest.Key(u.EAN, u.Timestamp)]) == 0 {
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
	e := itest.NewEnv(t)
	good := stack.StockUpdates(600, 3)
	valid, err := e.Schemas.Record(good[0])
	if err != nil {
		t.Fatal(err)
	}
	bad := []*kgo.Record{
		{Topic: stack.StockTopic, Key: []byte("k"), Value: []byte("plain text, no magic byte")},
		{Topic: stack.StockTopic, Key: []byte("k"), Value: stack.WireFormat(9999, valid.Value[5:])}, // unknown schema ID
		{Topic: stack.StockTopic, Key: []byte("k"), Value: valid.Value[:len(valid.Value)-3]},        // truncated body
		{Topic: stack.StockTopic, Key: []byte("k"), Value: nil},                                     // tombstone
	}
	e.Produce(ctx, good[:300], bad...)
	e.Produce(ctx, good[300:])
	r := e.Start(ctx, "g-bad")
	e.WaitCommitted(ctx, "g-bad")

	rows := byKey(t, e.Read(ctx))
	for _, u := range good {
		if len(rows[itest.Key(u.EAN, u.Timestamp)]) == 0 {
			t.Fatalf("good record %s missing", u.EAN)
		}
	}
	for reason, want := range map[string]float64{"wire_format": 1, "schema_not_found": 1, "decode": 1} {
		if got := counter(t, r.Metrics, "bqsink_records_rejected_total", "reason", reason); got != want {
			t.Errorf("rejected %s = %v, want %v", reason, got, want)
		}
	}
	if got := sum(t, r.Metrics, "bqsink_tombstones_total"); got != 1 {
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
	e := itest.NewEnv(t)
	updates := stack.StockUpdates(800, 4)
	e.Produce(ctx, updates)
	e.St.BigQuery.FailAppends(2, codes.ResourceExhausted)
	r := e.Start(ctx, "g-retry")
	e.WaitCommitted(ctx, "g-retry")
	tbl := e.Read(ctx)
	if len(tbl.Rows) != len(updates) {
		t.Fatalf("%d rows for %d records", len(tbl.Rows), len(updates))
	}
	if got := counter(t, r.Metrics, "bqsink_retries_total", "stage", "append"); got < 1 {
		t.Errorf("append retries = %v, want the injected failures retried", got)
	}
}

// A second member joining mid-stream takes partitions from the first: the
// first finishes its in-flight appends and commits before letting go, so
// every record lands exactly once and the group ends with no lag.
func TestRebalanceMidStreamHandsOverCleanly(t *testing.T) {
	ctx := t.Context()
	e := itest.NewEnv(t)
	updates, small := slowStream(ctx, e, 6)

	first := e.Start(ctx, "g-rebalance", small)
	e.WaitSomeCommitted(ctx, "g-rebalance")
	second := e.Start(ctx, "g-rebalance", small)
	e.WaitCommitted(ctx, "g-rebalance")

	consumed := func(r itest.Running) float64 {
		return counter(t, r.Metrics, "bqsink_records_consumed_total", "topic", stack.StockTopic)
	}
	if consumed(second) == 0 {
		t.Fatal("the second member never got a partition: no rebalance happened")
	}
	rows := byKey(t, e.Read(ctx))
	for _, u := range updates {
		if n := len(rows[itest.Key(u.EAN, u.Timestamp)]); n != 1 {
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
	e := itest.NewEnv(t)
	e.St.BigQuery.SetSchemaDelay(2 * time.Second)

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
			r, err := e.Schemas.Record(u)
			if err != nil {
				t.Fatal(err)
			}
			r.Key = []byte("one-partition")
			recs = append(recs, r)
		}
	}
	if err := e.St.Produce(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	r := e.Start(ctx, "g-evolve", func(c *sink.Config) { c.Batch.MaxRecords = 25 })
	e.WaitCommitted(ctx, "g-evolve")

	tbl := e.Read(ctx)
	if len(tbl.Schema) != 14 {
		t.Errorf("table has %d columns, want v1's 11 plus v2's 3", len(tbl.Schema))
	}
	rows := byKey(t, tbl)
	for _, group := range [][]stack.StockUpdate{v1a, v2, v1b} {
		for _, u := range group {
			got := rows[itest.Key(u.EAN, u.Timestamp)]
			if len(got) != 1 {
				t.Fatalf("record %s: %d rows", u.EAN, len(got))
			}
			checkRow(t, u, got[0])
		}
	}
	for _, reason := range []string{"wire_format", "schema_not_found", "unsupported_schema", "decode", "incompatible_schema", "bigquery_rejected"} {
		if n := counter(t, r.Metrics, "bqsink_records_rejected_total", "reason", reason); n != 0 {
			t.Errorf("%v records rejected for %s while the schema propagated", n, reason)
		}
	}
	if n := counter(t, r.Metrics, "bqsink_retries_total", "stage", "append"); n == 0 {
		t.Error("no append was retried: the propagation delay was not exercised")
	}
}

// Batches abandoned when partitions were revoked (their appends outlasted
// half the rebalance timeout) are the next owner's to write: a later clean
// stop, with everything since acknowledged and committed, is complete, and
// Run reports no error.
func TestShutdownAfterARevokeThatAbandonedBatchesIsClean(t *testing.T) {
	ctx := t.Context()
	e := itest.NewEnv(t)
	const group = "g-revoke-abandon"
	e.Produce(ctx, stack.StockUpdates(300, 21))
	e.St.BigQuery.SetAppendLatency(time.Minute)
	defer e.St.BigQuery.SetAppendLatency(0)
	tune := func(c *sink.Config) {
		c.Kafka.RebalanceTimeout = 2 * time.Second // a revoke waits 1s for in-flight appends
		c.BigQuery.AppendTimeout = 3 * time.Second
	}
	log, logs := observedLogger(t)
	first := itest.StartSink(ctx, t, e.St, func() sink.Config { c := e.St.Config(group, stack.StockTopic); tune(&c); return c }(), log)
	itest.WaitUntil(t, 30*time.Second, func() string { return "the first member's appends to be under way" }, func() bool {
		return itest.Gauge(t, first.Metrics, "bqsink_appends_inflight") > 0
	})
	second := e.Start(ctx, group, tune)
	itest.WaitUntil(t, 30*time.Second, func() string { return "a revoke that abandons batches" }, func() bool {
		return logs.FilterMessageSnippet("still unanswered after half the rebalance timeout").Len() > 0
	})
	e.St.BigQuery.SetAppendLatency(0)
	e.WaitCommitted(ctx, group)
	if err := first.Stop(); err != nil {
		t.Errorf("the first member's clean stop after a revoke: %v, want nil", err)
	}
	if err := second.Stop(); err != nil {
		t.Errorf("the second member's stop: %v", err)
	}
}
