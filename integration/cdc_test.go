package integration

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/api/option"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

// A Debezium topic mirrored in upsert mode: snapshot reads, creates,
// updates, deletes with their tombstones and stale events delivered late
// end as exactly the source's rows; a second group replaying the whole
// topic into the same table changes nothing.
func TestDebeziumMirror(t *testing.T) {
	ctx := t.Context()
	const topic = "dbserver1.inventory.products"
	st, err := stack.Start(stack.Options{Partitions: 3, Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	src := itest.NewDebezium(t, st, topic, true)
	recs := src.Changes(3000, 300)
	if err := st.Produce(ctx, recs...); err != nil {
		t.Fatal(err)
	}

	cfg := func(group string) sink.Config {
		c := st.Config(group, topic)
		c.Batch.MaxRecords = 50 // many requests: BigQuery orders changes across them by sequence number
		c.Tables = map[string]sink.TableRoute{topic: {Table: "products", TableSettings: sink.TableSettings{
			Mode: sink.ModeUpsert, Envelope: sink.EnvelopeDebezium, Sequence: sink.Sequence{sink.SequenceDebezium},
		}}}
		return c
	}
	run := itest.StartSink(ctx, t, st, cfg("g-dbz"), zaptest.NewLogger(t))
	if _, err := st.WaitCommitted(ctx, "g-dbz", topic); err != nil {
		t.Fatal(err)
	}
	src.Check(ctx, st, "products", "after the first pass")
	if n := itest.MetricValue(t, run.Metrics, "bqsink_records_rejected_total"); n != 0 {
		t.Errorf("%v records rejected", n)
	}
	t.Logf("%.0f changes superseded within a batch", itest.MetricValue(t, run.Metrics, "bqsink_changes_superseded_total"))
	tbl, err := st.ReadTable(ctx, "products")
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range tbl.Schema {
		if (i == 0) != (c.Name == "id") || (i > 0 && c.Required) {
			t.Errorf("the mirror's column %d: %s, required %v; want id first and every other column NULLABLE", i, c.Name, c.Required)
		}
	}
	if err := run.Stop(); err != nil {
		t.Fatal(err)
	}

	// More changes, then a group that reads the topic from its start: every
	// change is applied again, in order, and the table must not move.
	if err := st.Produce(ctx, src.Changes(500, 300)...); err != nil {
		t.Fatal(err)
	}
	itest.StartSink(ctx, t, st, cfg("g-dbz-replay"), zaptest.NewLogger(t))
	if _, err := st.WaitCommitted(ctx, "g-dbz-replay", topic); err != nil {
		t.Fatal(err)
	}
	src.Check(ctx, st, "products", "after a replay of the whole topic")
}

// Debezium's unwrap transform (ExtractNewRecordState, delete handling
// "rewrite") flattens events to the row plus __op, __lsn and __deleted: a
// row with __deleted "true" is a DELETE, and so is a tombstone. Ordered by
// the __lsn field, a stale row delivered late changes nothing.
func TestUnwrappedDebeziumMirror(t *testing.T) {
	ctx := t.Context()
	const topic = "unwrap.inventory.products"
	st, err := stack.Start(stack.Options{Partitions: 2, Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	src := itest.NewDebezium(t, st, topic, false)
	if err := st.Produce(ctx, src.Unwrapped(2000, 150)...); err != nil {
		t.Fatal(err)
	}
	c := st.Config("g-unwrap", topic)
	c.Batch.MaxRecords = 50
	c.Tables = map[string]sink.TableRoute{topic: {Table: "products_flat", TableSettings: sink.TableSettings{
		Mode: sink.ModeUpsert, Sequence: sink.Sequence{"__lsn"},
	}}}
	run := itest.StartSink(ctx, t, st, c, zaptest.NewLogger(t))
	if _, err := st.WaitCommitted(ctx, "g-unwrap", topic); err != nil {
		t.Fatal(err)
	}
	if n := itest.MetricValue(t, run.Metrics, "bqsink_records_rejected_total"); n != 0 {
		t.Errorf("%v records rejected", n)
	}
	src.Check(ctx, st, "products_flat", "unwrapped")
}

// An existing table without the primary key an upsert table needs is
// reported at startup with the DDL that fixes it; only its topic stops
// (nothing dead-lettered, /readyz names the table), and once an operator
// runs the DDL its records flow without a restart.
func TestUpsertTableWithoutKeyStallsOnlyItsTopic(t *testing.T) {
	ctx := t.Context()
	const (
		group = "g-no-key"
		topic = "dbserver1.inventory.products"
	)
	e := itest.NewEnv(t)
	if err := e.St.CreateTopic(ctx, topic, 2); err != nil {
		t.Fatal(err)
	}
	bqc, err := bigquery.NewClient(ctx, stack.Project, option.WithEndpoint(e.St.BigQuery.RESTEndpoint()), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	defer bqc.Close()
	products := bqc.Dataset(stack.Dataset).Table("products")
	if err := products.Create(ctx, &bigquery.TableMetadata{Schema: bigquery.Schema{
		{Name: "id", Type: bigquery.IntegerFieldType, Required: true},
		{Name: "name", Type: bigquery.StringFieldType},
	}}); err != nil {
		t.Fatal(err)
	}
	src := itest.NewDebezium(t, e.St, topic, true)
	changes := src.Changes(300, 50)
	if err := e.St.Produce(ctx, changes...); err != nil {
		t.Fatal(err)
	}
	e.Produce(ctx, stack.StockUpdates(40, 3))

	cfg := itest.NewDaemonConfig(e, group).Set("kafka.topics", []string{stack.StockTopic, topic}).Set("tables", map[string]any{
		stack.StockTopic: stack.StockTable,
		topic:            map[string]any{"table": "products", "mode": "upsert", "primary_key": []string{"id"}, "envelope": "debezium", "sequence": "debezium"},
	}).Set("stall_timeout", "2s")
	d := itest.StartDaemon(t, cfg)
	l := d.WaitLog(15*time.Second, "the primary key error at startup", func(l itest.LogLine) bool {
		return l.Level == "error" && strings.Contains(l.Msg, "primary key")
	})
	ddl := "ALTER TABLE `" + stack.Project + "." + stack.Dataset + ".products` ADD PRIMARY KEY (id) NOT ENFORCED"
	if !strings.Contains(l.Str("error"), ddl) || !strings.Contains(l.Str("error"), "primary_key") {
		t.Errorf("startup error %q: %q; want the DDL %q and the key to set", l.Msg, l.Str("error"), ddl)
	}
	// The stock topic flows; the products topic holds every record.
	if _, err := e.St.WaitCommitted(ctx, group, stack.StockTopic); err != nil {
		t.Fatal(err)
	}
	itest.WaitUntil(t, 20*time.Second, func() string { return "/readyz naming the products table" }, func() bool {
		code, body := d.Get("/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, stack.Dataset+".products")
	})
	o, err := e.St.GroupOffsets(ctx, group, topic)
	if err != nil {
		t.Fatal(err)
	}
	if lag := o.Lag(); lag != int64(len(changes)) {
		t.Errorf("products lag %d while its table lacks the key; want all %d records uncommitted", lag, len(changes))
	}
	if n := d.Metric("bqsink_records_rejected_total"); n != 0 {
		t.Errorf("%v records rejected; a table problem rejects none", n)
	}

	// The operator runs the DDL: the next retry (every 10 s) writes.
	if _, err := products.Update(ctx, bigquery.TableMetadataToUpdate{
		TableConstraints: &bigquery.TableConstraints{PrimaryKey: &bigquery.PrimaryKey{Columns: []string{"id"}}},
	}, ""); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()
	if _, err := e.St.WaitCommitted(cctx, group, topic); err != nil {
		t.Fatalf("products not written after the key was added: %v", err)
	}
	src.Check(ctx, e.St, "products", "after the key was added")
	d.WaitHTTP("/readyz", http.StatusOK, 20*time.Second)
	d.Shutdown(15 * time.Second)
}

// A table an earlier bqsink created from Debezium records holds their
// Kafka Connect types as the base Avro types (a MicroTimestamp as INTEGER,
// a ZonedTimestamp as STRING). Upgrading must not reject its records: they
// are written as before, with one warning saying how to get the new types.
func TestConnectTypesIntoATableOfTheirBaseTypes(t *testing.T) {
	ctx := t.Context()
	const topic = "unwrap.inventory.products"
	st, err := stack.Start(stack.Options{Partitions: 1, Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	bqc, err := bigquery.NewClient(ctx, stack.Project, option.WithEndpoint(st.BigQuery.RESTEndpoint()), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	defer bqc.Close()
	req := func(name string, typ bigquery.FieldType) *bigquery.FieldSchema {
		return &bigquery.FieldSchema{Name: name, Type: typ, Required: true}
	}
	opt := func(name string, typ bigquery.FieldType) *bigquery.FieldSchema {
		return &bigquery.FieldSchema{Name: name, Type: typ}
	}
	old := bigquery.Schema{req("id", bigquery.IntegerFieldType), req("name", bigquery.StringFieldType), opt("description", bigquery.StringFieldType),
		opt("weight", bigquery.FloatFieldType), req("price", bigquery.NumericFieldType), req("created_at", bigquery.IntegerFieldType),
		opt("updated", bigquery.StringFieldType), opt("__op", bigquery.StringFieldType), opt("__source_ts_ms", bigquery.IntegerFieldType),
		opt("__lsn", bigquery.IntegerFieldType), opt("__deleted", bigquery.StringFieldType)}
	if err := bqc.Dataset(stack.Dataset).Table("products_old").Create(ctx, &bigquery.TableMetadata{Schema: old}); err != nil {
		t.Fatal(err)
	}
	src := itest.NewDebezium(t, st, topic, false)
	recs := src.Unwrapped(200, 1000)
	if err := st.Produce(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	c := st.Config("g-old-types", topic)
	c.Tables = map[string]sink.TableRoute{topic: sink.Route("products_old")}
	run := itest.StartSink(ctx, t, st, c, zap.New(core))
	if _, err := st.WaitCommitted(ctx, "g-old-types", topic); err != nil {
		t.Fatal(err)
	}
	if n := itest.MetricValue(t, run.Metrics, "bqsink_records_rejected_total"); n != 0 {
		t.Errorf("%v records rejected", n)
	}
	tbl, err := st.ReadTable(ctx, "products_old")
	if err != nil {
		t.Fatal(err)
	}
	if len(tbl.Rows) != len(recs)-countTombstones(recs) {
		t.Errorf("%d rows, want one per record with a value (%d)", len(tbl.Rows), len(recs)-countTombstones(recs))
	}
	for _, r := range tbl.Rows[:1] {
		if _, ok := r["created_at"].(int64); !ok {
			t.Errorf("created_at = %#v, want the INTEGER it was", r["created_at"])
		}
	}
	if n := logs.FilterMessageSnippet("Kafka Connect types").Len(); n != 1 {
		t.Errorf("%d warnings about the base types, want 1; logs: %v", n, logs.All())
	}
}

func countTombstones(recs []*kgo.Record) int {
	n := 0
	for _, r := range recs {
		if r.Value == nil {
			n++
		}
	}
	return n
}
