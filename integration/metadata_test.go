package integration

import (
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

// With metadata_column set, every row carries where it came from: topic,
// partition, offset, timestamp, key and headers. An Avro key framed with a
// registry ID is decoded into a RECORD; other keys stay raw BYTES.
func TestMetadataColumn(t *testing.T) {
	ctx := t.Context()
	e := itest.NewEnv(t)
	const keySchema = `{"type":"record","name":"StockKey","fields":[{"name":"ean","type":"string"},{"name":"warehouse_id","type":"int"}]}`
	keyID, err := e.St.Register(stack.StockTopic+"-key", keySchema)
	if err != nil {
		t.Fatal(err)
	}
	keyBody, err := avro.Marshal(avro.MustParse(keySchema), map[string]any{"ean": "5601234567890", "warehouse_id": 7})
	if err != nil {
		t.Fatal(err)
	}

	updates := stack.StockUpdates(2, 9)
	avroKeyed, err := e.Schemas.Record(updates[0])
	if err != nil {
		t.Fatal(err)
	}
	avroKeyed.Key = stack.WireFormat(keyID, keyBody)
	avroKeyed.Headers = []kgo.RecordHeader{{Key: "trace-id", Value: []byte("abc")}, {Key: "source", Value: []byte("wms")}}
	at := time.Date(2026, 11, 20, 10, 30, 0, 123000000, time.UTC)
	avroKeyed.Timestamp = at
	if err := e.St.Produce(ctx, avroKeyed); err != nil {
		t.Fatal(err)
	}

	e.Start(ctx, "g-meta", func(c *sink.Config) { c.MetadataColumn = "_kafka" })
	e.WaitCommitted(ctx, "g-meta")
	tbl := e.Read(ctx)

	var meta *bigquery.FieldSchema
	for _, f := range tbl.Schema {
		if f.Name == "_kafka" {
			meta = f
		}
	}
	if meta == nil || meta.Type != bigquery.RecordFieldType || meta.Required || meta.Repeated {
		t.Fatalf("_kafka column: %+v", meta)
	}
	if len(tbl.Rows) != 1 {
		t.Fatalf("%d rows", len(tbl.Rows))
	}
	fields, ok := tbl.Rows[0]["_kafka"].(map[string]bigquery.Value)
	if !ok {
		t.Fatalf("_kafka = %#v", tbl.Rows[0]["_kafka"])
	}
	if fields["topic"] != stack.StockTopic || fields["offset"] != int64(0) {
		t.Errorf("topic/offset: %v %v", fields["topic"], fields["offset"])
	}
	if p, ok := fields["partition"].(int64); !ok || p < 0 || p > 2 {
		t.Errorf("partition: %#v", fields["partition"])
	}
	if ts, ok := fields["timestamp"].(time.Time); !ok || !ts.Equal(at) {
		t.Errorf("timestamp: %v, want %v", fields["timestamp"], at)
	}
	key, ok := fields["key"].(map[string]bigquery.Value)
	if !ok || len(key) != 2 || key["ean"] != "5601234567890" || key["warehouse_id"] != int64(7) {
		t.Errorf("decoded key: %#v", fields["key"])
	}
	hs, _ := fields["headers"].([]bigquery.Value)
	if len(hs) != 2 {
		t.Fatalf("headers: %#v", fields["headers"])
	}
	h0, _ := hs[0].(map[string]bigquery.Value)
	if v, _ := h0["value"].([]byte); h0["key"] != "trace-id" || string(v) != "abc" {
		t.Errorf("header 0: %#v", hs[0])
	}
}

// A raw (non-Avro) key lands as BYTES.
func TestMetadataColumnRawKey(t *testing.T) {
	ctx := t.Context()
	e := itest.NewEnv(t)
	updates := stack.StockUpdates(3, 10)
	e.Produce(ctx, updates) // keyed by EAN, plain bytes
	e.Start(ctx, "g-meta-raw", func(c *sink.Config) { c.MetadataColumn = "_kafka" })
	e.WaitCommitted(ctx, "g-meta-raw")
	tbl := e.Read(ctx)
	for _, f := range tbl.Schema {
		if f.Name != "_kafka" {
			continue
		}
		for _, sub := range f.Schema {
			if sub.Name == "key" && sub.Type != bigquery.BytesFieldType {
				t.Errorf("raw key column is %s, want BYTES", sub.Type)
			}
		}
	}
	want := map[string]bool{}
	for _, u := range updates {
		want[u.EAN] = true
	}
	for _, r := range tbl.Rows {
		m, _ := r["_kafka"].(map[string]bigquery.Value)
		if k, _ := m["key"].([]byte); !want[string(k)] {
			t.Errorf("raw key %q is not one of the produced EANs", k)
		}
	}
}
