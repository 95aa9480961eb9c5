package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/http"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/hamba/avro/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/api/option"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

// This file holds the tests of records that can never be written: each
// kind of bad input under errors.policy dlq (the default), skip and fail;
// a dead-letter topic that cannot be written; and a flood of records whose
// schema ID the registry does not know.

// rejectReasons are the values of the reason label of
// bqsink_records_rejected_total and of the bqsink.reason header.
var rejectReasons = []string{"wire_format", "schema_not_found", "unsupported_schema", "incompatible_schema",
	"decode", "encode", "row_too_large", "bigquery_rejected"}

// bqsinkHeaders are the headers bqsink adds to a dead-letter record;
// bqsink.schema_id only when the record had a schema ID.
var bqsinkHeaders = []string{sink.HeaderTopic, sink.HeaderPartition, sink.HeaderOffset, sink.HeaderReason,
	sink.HeaderError, sink.HeaderSchemaID, sink.HeaderTable, sink.HeaderVersion}

const (
	// badTopicMaxBytes lets a bad-input topic take the 50 MiB record (the
	// stack's dead-letter topic takes as much).
	badTopicMaxBytes = stack.DLQMaxMessageBytes
	// refMaxLength is the maxLength of the pre-created tables' reference
	// column: the generated stock updates' references ("REF-123456") fit,
	// a longer one is refused by BigQuery though the Avro decodes.
	refMaxLength = 10
	// unknownID is a schema ID the registry never hands out in these tests.
	unknownID = 424242
)

// badFixture is a stack for bad input: the stock schemas; a version that
// retypes delta from int to string, registered under a subject of its own
// so that the registry accepts it; and a schema with no BigQuery mapping (a
// top-level string).
type badFixture struct {
	t             *testing.T
	st            *stack.Stack
	schemas       stack.StockSchemas
	retyped       avro.Schema
	retypedID     int
	unsupportedID int
}

func newBadFixture(t *testing.T, partitions int32) *badFixture {
	t.Helper()
	st, err := stack.Start(stack.Options{Partitions: partitions})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	f := &badFixture{t: t, st: st}
	if f.schemas, err = st.RegisterStock(); err != nil {
		t.Fatal(err)
	}
	v1 := stack.Schema("sms_physical_stock_updates.v1.avsc")
	retyped := strings.Replace(v1, `{"name": "delta", "type": "int"}`, `{"name": "delta", "type": "string"}`, 1)
	if retyped == v1 {
		t.Fatal("retyped fixture: delta's type was not replaced")
	}
	if f.retyped, err = avro.Parse(retyped); err != nil {
		t.Fatal(err)
	}
	if f.retypedID, err = st.Register("bad.retyped-value", retyped); err != nil {
		t.Fatal(err)
	}
	if f.unsupportedID, err = st.Register("bad.unsupported-value", `"string"`); err != nil {
		t.Fatal(err)
	}
	return f
}

// topic creates a topic of the given partitions taking records up to
// badTopicMaxBytes, and its table with the stock v1 columns, reference as
// STRING(refMaxLength), through the BigQuery client on the test server's
// REST endpoint: the sink finds it and keeps it.
func (f *badFixture) topic(name, table string, partitions int32) {
	f.t.Helper()
	ctx := f.t.Context()
	if err := f.st.CreateTopic(ctx, name, partitions, stack.MaxMessageBytes(badTopicMaxBytes)); err != nil {
		f.t.Fatal(err)
	}
	c, err := bigquery.NewClient(ctx, stack.Project, option.WithEndpoint(f.st.BigQuery.RESTEndpoint()), option.WithoutAuthentication())
	if err != nil {
		f.t.Fatal(err)
	}
	defer c.Close()
	ref := col("reference", bigquery.StringFieldType, "REQUIRED")
	ref.MaxLength = refMaxLength
	schema := bigquery.Schema{
		col("timestamp", bigquery.IntegerFieldType, "REQUIRED"),
		col("process_reference", bigquery.StringFieldType, "NULLABLE"),
		col("variant_id", bigquery.IntegerFieldType, "REQUIRED"),
		col("warehouse_id", bigquery.IntegerFieldType, "REQUIRED"),
		col("warehouse_name", bigquery.StringFieldType, "REQUIRED"),
		col("huubclient_id", bigquery.IntegerFieldType, "REQUIRED"),
		col("ean", bigquery.StringFieldType, "REQUIRED"),
		ref,
		col("sales_channel_type", bigquery.StringFieldType, "REQUIRED"),
		col("delta", bigquery.IntegerFieldType, "REQUIRED"),
		col("stock_after_adjust", bigquery.IntegerFieldType, "REQUIRED"),
	}
	if err := c.Dataset(stack.Dataset).Table(table).Create(ctx, &bigquery.TableMetadata{Schema: schema}); err != nil {
		f.t.Fatalf("create table %s: %v", table, err)
	}
}

// config is the stack's sink config for group consuming topic into table.
func (f *badFixture) config(group, topic, table string) sink.Config {
	cfg := f.st.Config(group, topic)
	cfg.Tables = map[string]sink.TableRoute{topic: sink.Route(table)}
	return cfg
}

// v1Body is u's Avro body under stock v1.
func (f *badFixture) v1Body(u stack.StockUpdate) []byte {
	f.t.Helper()
	u.V2 = false
	b, err := avro.Marshal(f.schemas.V1, u)
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

// good turns updates into records of topic, each with a header of its own.
func (f *badFixture) good(topic string, us []stack.StockUpdate) []*kgo.Record {
	f.t.Helper()
	out := make([]*kgo.Record, len(us))
	for i, u := range us {
		r, err := f.schemas.Record(u)
		if err != nil {
			f.t.Fatal(err)
		}
		r.Topic = topic
		r.Headers = []kgo.RecordHeader{{Key: "kind", Value: []byte("good")}}
		out[i] = r
	}
	return out
}

// badRecord is a bad record with a key and headers (a duplicate key and a
// binary value among them, in an order that must survive). stamp gives it
// a timestamp of its own when it is produced.
func badRecord(topic, name string, i int, value []byte) *kgo.Record {
	return &kgo.Record{
		Topic: topic,
		Key:   []byte("key-" + name),
		Value: value,
		Headers: []kgo.RecordHeader{
			{Key: "case", Value: []byte(name)},
			{Key: "trace", Value: []byte{0, 0xff, byte(i)}},
			{Key: "case", Value: []byte("again")},
		},
	}
}

// stamp gives each record without a timestamp a distinct one just before
// now, in whole milliseconds as Kafka keeps them. They are recent on
// purpose: TestBadInputOldRecordIsDeadLettered is about old ones.
func stamp(recs []*kgo.Record) []*kgo.Record {
	now := time.Now().Truncate(time.Millisecond)
	for i, r := range recs {
		if r.Timestamp.IsZero() {
			r.Timestamp = now.Add(-time.Duration(len(recs)-i) * time.Millisecond)
		}
	}
	return recs
}

// badCase is one row of the bad-input table.
type badCase struct {
	name     string
	value    []byte
	reason   string   // "" for a tombstone: no rejection
	schemaID int      // the bqsink.schema_id header expected; 0: none
	errHas   []string // what the bqsink.error header must say
	rec      *kgo.Record
}

// badCases are the table's inputs. Under -short the 11 MB and 50 MiB
// records are left out.
func (f *badFixture) badCases(topic string) []*badCase {
	f.t.Helper()
	us := stack.StockUpdates(8, 77)
	v1 := f.v1Body(us[0])
	// A v1 body whose process_reference (a string branch) claims a
	// 2,000,000,000-byte string, followed by a few bytes: the decoder must
	// see the length cannot fit in the body before allocating anything.
	huge := []byte{0x00, 0x02} // timestamp 0; union branch 1 (string)
	huge = binary.AppendVarint(huge, 2_000_000_000)
	huge = append(huge, "tail"...)
	tooLong := us[1]
	tooLong.Reference = "REF-TOO-LONG" // 12 characters for a STRING(10)
	retyped, err := avro.Marshal(f.retyped, map[string]any{
		"timestamp": int64(1762070400000), "process_reference": nil, "variant_id": 1, "warehouse_id": 1,
		"warehouse_name": "Porto Central", "huubclient_id": 1, "ean": "5600000000001", "reference": "REF-v3",
		"sales_channel_type": "b2c", "delta": "seven", "stock_after_adjust": 1,
	})
	if err != nil {
		f.t.Fatal(err)
	}
	str, err := avro.Marshal(avro.MustParse(`"string"`), "a top-level string")
	if err != nil {
		f.t.Fatal(err)
	}
	cases := []*badCase{
		{name: "no magic byte", value: []byte("plain text, no magic byte"), reason: "wire_format", errHas: []string{"magic byte 112"}},
		{name: "magic byte 1", value: append([]byte{1}, v1[1:]...), reason: "wire_format", errHas: []string{"magic byte 1,"}},
		{name: "truncated header", value: []byte{0, 0, 0}, reason: "wire_format", errHas: []string{"3 bytes"}},
		{name: "unknown schema ID", value: stack.WireFormat(unknownID, v1), reason: "schema_not_found", schemaID: unknownID,
			errHas: []string{strconv.Itoa(unknownID)}},
		{name: "truncated body", value: stack.WireFormat(f.schemas.V1ID, v1[:len(v1)-3]), reason: "decode", schemaID: f.schemas.V1ID,
			errHas: []string{"body ends early"}},
		{name: "string length 2 GB", value: stack.WireFormat(f.schemas.V1ID, huge), reason: "decode", schemaID: f.schemas.V1ID,
			errHas: []string{"process_reference", "2000000000"}},
		{name: "value BigQuery refuses", value: stack.WireFormat(f.schemas.V1ID, f.v1Body(tooLong)), reason: "bigquery_rejected",
			schemaID: f.schemas.V1ID, errHas: []string{"reference"}},
		{name: "retyped column", value: stack.WireFormat(f.retypedID, retyped), reason: "incompatible_schema", schemaID: f.retypedID,
			errHas: []string{"delta", "INTEGER", "STRING"}},
		{name: "unsupported schema", value: stack.WireFormat(f.unsupportedID, str), reason: "unsupported_schema", schemaID: f.unsupportedID},
		{name: "tombstone"},
	}
	if !testing.Short() {
		big := func(n int) []byte {
			u := us[2]
			u.WarehouseName = strings.Repeat("w", n)
			return stack.WireFormat(f.schemas.V1ID, f.v1Body(u))
		}
		cases = append(cases,
			&badCase{name: "11 MB row", value: big(11 << 20), reason: "row_too_large", schemaID: f.schemas.V1ID,
				errHas: []string{"max_request_bytes"}},
			&badCase{name: "50 MiB record", value: big(50 << 20), reason: "row_too_large", schemaID: f.schemas.V1ID,
				errHas: []string{"max_request_bytes"}})
	}
	for i, c := range cases {
		c.rec = badRecord(topic, c.name, i, c.value)
	}
	return cases
}

// observedLogger is a logger for an in-process sink that also keeps every line
// at info and above for the test to inspect.
func observedLogger(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.InfoLevel)
	return zap.New(zapcore.NewTee(zaptest.NewLogger(t, zaptest.Level(zapcore.InfoLevel)).Core(), core)), logs
}

// Every kind of record that can never be written, interleaved with good
// records on one partition: each is dead-lettered with its key, value,
// headers and timestamp and bqsink's headers, counted under its reason and
// logged; the tombstone is only counted; every good record lands once; the
// group commits to the end; and the 2 GB length prefix is rejected without
// allocating anything near it.
func TestBadInputTable(t *testing.T) {
	start := time.Now()
	ctx := t.Context()
	const topic, table, group = "bad.input", "bad_input", "g-bad-input"
	f := newBadFixture(t, 1)
	f.topic(topic, table, 1)
	cases := f.badCases(topic)
	var probe *badCase // produced alone once the rest is committed, to measure allocations
	var first []*badCase
	for _, c := range cases {
		if c.name == "string length 2 GB" {
			probe = c
			continue
		}
		first = append(first, c)
	}

	goodUpdates := stack.StockUpdates(4*(len(cases)+1), 78)
	var recs []*kgo.Record
	next := 0
	goods := func(n int) {
		recs = append(recs, f.good(topic, goodUpdates[next:next+n])...)
		next += n
	}
	for _, c := range first {
		goods(4)
		recs = append(recs, c.rec)
	}
	goods(4)
	if err := f.st.Produce(ctx, stamp(recs)...); err != nil {
		t.Fatal(err)
	}

	log, logs := observedLogger(t)
	r := itest.StartSink(ctx, t, f.st, f.config(group, topic, table), log)
	itest.WaitAllCommitted(t, f.st, group, topic, 90*time.Second)
	t.Logf("all but the 2 GB case committed after %v", time.Since(start).Round(time.Millisecond))

	// The 2 GB claim alone, with nothing else in flight: the process must
	// not allocate anything near 2 GB for it.
	before := heapAllocs()
	goods(4)
	if err := f.st.Produce(ctx, stamp(append([]*kgo.Record{probe.rec}, f.good(topic, goodUpdates[next-4:next])...))...); err != nil {
		t.Fatal(err)
	}
	itest.WaitAllCommitted(t, f.st, group, topic, 30*time.Second)
	if d := heapAllocs() - before; d > 256<<20 {
		t.Errorf("the process allocated %d MiB while the 2 GB length prefix was handled, want far less", d>>20)
	} else {
		t.Logf("allocated %d MiB while the 2 GB length prefix was handled", d>>20)
	}
	goodUpdates = goodUpdates[:next]

	// Counters by reason, and the tombstone.
	wantRejected := map[string]int{}
	for _, c := range cases {
		if c.reason != "" {
			wantRejected[c.reason]++
		}
	}
	for _, reason := range rejectReasons {
		if got := counter(t, r.Metrics, "bqsink_records_rejected_total", "reason", reason); got != float64(wantRejected[reason]) {
			t.Errorf("bqsink_records_rejected_total{reason=%q} = %v, want %d", reason, got, wantRejected[reason])
		}
		if got := counter(t, r.Metrics, "bqsink_records_dead_lettered_total", "reason", reason); got != float64(wantRejected[reason]) {
			t.Errorf("bqsink_records_dead_lettered_total{reason=%q} = %v, want %d", reason, got, wantRejected[reason])
		}
	}
	if got := counter(t, r.Metrics, "bqsink_tombstones_total", "topic", topic); got != 1 {
		t.Errorf("bqsink_tombstones_total{topic=%q} = %v, want 1", topic, got)
	}
	if got := counter(t, r.Metrics, "bqsink_retries_total", "stage", "schema"); got < 1 {
		t.Errorf("bqsink_retries_total{stage=schema} = %v: the unknown schema ID was not retried for unknown_schema_grace", got)
	}

	// The dead-letter topic: exactly the rejected records, each found by
	// its source offset.
	dls, err := f.st.DeadLetters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byOffset := indexDeadLetters(t, dls, topic)
	rejected := 0
	for _, c := range cases {
		got := byOffset[c.rec.Offset]
		if c.reason == "" {
			if len(got) != 0 {
				t.Errorf("%s (offset %d): %d dead-letter records, want none", c.name, c.rec.Offset, len(got))
			}
			continue
		}
		rejected++
		if len(got) != 1 {
			t.Errorf("%s (offset %d): %d dead-letter records, want 1", c.name, c.rec.Offset, len(got))
			continue
		}
		checkDeadLetter(t, c.name, got[0], c.rec, wantDeadLetter{
			reason: c.reason, schemaID: c.schemaID, errHas: c.errHas,
			table: stack.Project + "." + stack.Dataset + "." + table, version: "unknown",
		})
	}
	if len(dls) != rejected {
		t.Errorf("%d dead-letter records, want the %d rejected ones", len(dls), rejected)
	}

	// Every good record landed once, and nothing else.
	tbl, err := f.st.ReadTable(ctx, table)
	if err != nil {
		t.Fatal(err)
	}
	rows := byKey(t, tbl)
	for _, u := range goodUpdates {
		if n := len(rows[itest.Key(u.EAN, u.Timestamp)]); n != 1 {
			t.Errorf("good record %s: %d rows, want 1", itest.Key(u.EAN, u.Timestamp), n)
		}
	}
	if len(tbl.Rows) != len(goodUpdates) {
		t.Errorf("%d rows, want the %d good records", len(tbl.Rows), len(goodUpdates))
	}
	for _, fs := range tbl.Schema {
		if fs.Name == "reference" && fs.MaxLength != refMaxLength {
			t.Errorf("the table's reference column lost its maxLength: %d, want %d", fs.MaxLength, refMaxLength)
		}
	}

	// Each rejection logged once, on its own line or in a summary.
	var want []rejectionWant
	for _, c := range cases {
		if c.reason != "" {
			want = append(want, rejectionWant{offset: c.rec.Offset, reason: c.reason, schemaID: c.schemaID})
		}
	}
	checkRejectLogs(t, func() rejectLines { return observedRejectLines(logs) }, rejectLogWant{
		topic: topic, partition: 0, table: stack.Project + "." + stack.Dataset + "." + table, policy: "dlq", records: want,
	}, 30*time.Second)
	for _, e := range logs.FilterMessage("record rejected").All() {
		if e.Stack != "" {
			t.Errorf("a rejection was logged with a stack trace: %s", e.Stack)
		}
	}
	if err := r.Stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	t.Logf("%d bad inputs (%d rejected, 1 tombstone) among %d good records in %v", len(cases), rejected, len(goodUpdates),
		time.Since(start).Round(time.Millisecond))
}

// heapAllocs is the bytes allocated on the heap by the process so far.
func heapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// deadLetter is a dead-letter record with bqsink's headers split from the
// original ones.
type deadLetter struct {
	rec  *kgo.Record
	orig []kgo.RecordHeader
	bq   map[string][]string
}

// indexDeadLetters indexes the dead-letter records of source topic by their
// bqsink.offset header (as a list: a record dead-lettered twice shows).
func indexDeadLetters(t *testing.T, recs []*kgo.Record, topic string) map[int64][]deadLetter {
	t.Helper()
	out := map[int64][]deadLetter{}
	for _, r := range recs {
		dl := deadLetter{rec: r, bq: map[string][]string{}}
		for _, h := range r.Headers {
			if strings.HasPrefix(h.Key, "bqsink.") {
				dl.bq[h.Key] = append(dl.bq[h.Key], string(h.Value))
			} else {
				dl.orig = append(dl.orig, h)
			}
		}
		if got := dl.bq[sink.HeaderTopic]; len(got) != 1 || got[0] != topic {
			continue
		}
		off, err := strconv.ParseInt(dl.one(sink.HeaderOffset), 10, 64)
		if err != nil {
			t.Errorf("dead-letter record at %d has bqsink.offset %q", r.Offset, dl.one(sink.HeaderOffset))
			continue
		}
		out[off] = append(out[off], dl)
	}
	return out
}

func (dl deadLetter) one(k string) string {
	if v := dl.bq[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}

type wantDeadLetter struct {
	reason   string
	schemaID int
	errHas   []string
	table    string
	version  string
}

// checkDeadLetter compares a dead-letter record with its source record.
func checkDeadLetter(t *testing.T, name string, dl deadLetter, src *kgo.Record, w wantDeadLetter) {
	t.Helper()
	show := func(b []byte) string {
		if len(b) > 64 {
			return fmt.Sprintf("%d bytes %q...", len(b), b[:64])
		}
		return fmt.Sprintf("%q", b)
	}
	if !bytes.Equal(dl.rec.Key, src.Key) {
		t.Errorf("%s: dead-letter key %s, want %s", name, show(dl.rec.Key), show(src.Key))
	}
	if !bytes.Equal(dl.rec.Value, src.Value) || (dl.rec.Value == nil) != (src.Value == nil) {
		t.Errorf("%s: dead-letter value %s, want %s", name, show(dl.rec.Value), show(src.Value))
	}
	if !dl.rec.Timestamp.Equal(src.Timestamp) {
		t.Errorf("%s: dead-letter timestamp %v, want the original %v", name, dl.rec.Timestamp, src.Timestamp)
	}
	if !slices.EqualFunc(dl.orig, src.Headers, func(a, b kgo.RecordHeader) bool { return a.Key == b.Key && bytes.Equal(a.Value, b.Value) }) {
		t.Errorf("%s: original headers %v, want %v in order", name, dl.orig, src.Headers)
	}
	for i, h := range dl.rec.Headers[:min(len(src.Headers), len(dl.rec.Headers))] {
		if strings.HasPrefix(h.Key, "bqsink.") {
			t.Errorf("%s: header %d is %s: the original headers must come first", name, i, h.Key)
			break
		}
	}
	want := map[string]string{
		sink.HeaderTopic:     src.Topic,
		sink.HeaderPartition: strconv.Itoa(int(src.Partition)),
		sink.HeaderOffset:    strconv.FormatInt(src.Offset, 10),
		sink.HeaderReason:    w.reason,
		sink.HeaderTable:     w.table,
		sink.HeaderVersion:   w.version,
	}
	if w.schemaID != 0 {
		want[sink.HeaderSchemaID] = strconv.Itoa(w.schemaID)
	}
	for _, k := range bqsinkHeaders {
		got := dl.bq[k]
		wv, wanted := want[k]
		switch {
		case k == sink.HeaderError:
			if len(got) != 1 || got[0] == "" {
				t.Errorf("%s: %s = %q, want one non-empty message", name, k, got)
				continue
			}
			for _, s := range w.errHas {
				if !strings.Contains(got[0], s) {
					t.Errorf("%s: %s %q does not say %q", name, k, got[0], s)
				}
			}
		case !wanted && len(got) > 0:
			t.Errorf("%s: %s = %q, want no such header (the record had no schema ID)", name, k, got)
		case wanted && (len(got) != 1 || got[0] != wv):
			t.Errorf("%s: %s = %q, want %q once", name, k, got, wv)
		}
	}
	for k := range dl.bq {
		if !slices.Contains(bqsinkHeaders, k) {
			t.Errorf("%s: unexpected header %s = %q", name, k, dl.bq[k])
		}
	}
}

// rejectLines are the rejection log lines of a sink: "record rejected"
// lines and summaries, each as its fields, from an in-process observer or
// the daemon's JSON output alike.
type rejectLines struct {
	single    []map[string]any
	summaries []map[string]any
	stacks    int // lines carrying a stack trace
}

const (
	msgRejected  = "record rejected"
	msgSummary   = "more records rejected than logged one by one"
	logStackKey  = "stacktrace"
	logSummaryBy = "reasons"
)

func observedRejectLines(logs *observer.ObservedLogs) rejectLines {
	var out rejectLines
	for _, e := range logs.All() {
		switch e.Message {
		case msgRejected:
			out.single = append(out.single, withLevel(e.ContextMap(), e.Level.String()))
		case msgSummary:
			out.summaries = append(out.summaries, withLevel(e.ContextMap(), e.Level.String()))
		default:
			continue
		}
		if e.Stack != "" {
			out.stacks++
		}
	}
	return out
}

func withLevel(m map[string]any, level string) map[string]any {
	m["level"] = level
	return m
}

// logInt reads a numeric log field, whichever way it was decoded.
func logInt(v any) (int64, bool) {
	switch v := v.(type) {
	case int64:
		return v, true
	case int32:
		return int64(v), true
	case int:
		return int64(v), true
	case uint64:
		return int64(v), true
	case float64:
		return int64(v), v == float64(int64(v))
	}
	return 0, false
}

type rejectionWant struct {
	offset   int64
	reason   string
	schemaID int
}

type rejectLogWant struct {
	topic     string
	partition int32
	table     string
	policy    string
	records   []rejectionWant
}

// checkRejectLogs checks that every rejected record is accounted for in the
// logs exactly once: on a "record rejected" line of its own, with topic,
// partition, offset, table, reason, policy, error and, when the record had
// one, schema_id; or inside one summary line's [first_offset, last_offset]
// of its partition, the summaries' counts adding up. Summaries come when a
// window ends, so it polls for them for up to within. No line may carry a
// stack trace.
func checkRejectLogs(t *testing.T, read func() rejectLines, w rejectLogWant, within time.Duration) rejectLines {
	t.Helper()
	var lines rejectLines
	var missing []int64
	deadline := time.Now().Add(within)
	for {
		lines = read()
		missing = unaccounted(lines, w)
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-t.Context().Done():
			t.Fatal("test ended waiting for rejection logs")
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d rejected records are in no log line (%d own lines, %d summaries, after %v): offsets %v",
			len(missing), len(w.records), len(lines.single), len(lines.summaries), within, firstN(missing, 20))
	}
	wants := map[int64]rejectionWant{}
	for _, r := range w.records {
		wants[r.offset] = r
	}
	seen := map[int64]int{}
	for _, l := range lines.single {
		if l["topic"] != w.topic {
			continue
		}
		off, _ := logInt(l["offset"])
		seen[off]++
		r, ok := wants[off]
		if !ok {
			t.Errorf("a record rejected at offset %d that should not have been: %v", off, l)
			continue
		}
		if p, _ := logInt(l["partition"]); p != int64(w.partition) || l["table"] != w.table || l["reason"] != r.reason ||
			l["policy"] != w.policy || l["level"] != "error" {
			t.Errorf("offset %d logged as %v, want partition %d, table %s, reason %s, policy %s at error",
				off, l, w.partition, w.table, r.reason, w.policy)
		}
		if e, _ := l["error"].(string); e == "" {
			t.Errorf("offset %d logged without its error: %v", off, l)
		}
		id, has := logInt(l["schema_id"])
		switch {
		case r.schemaID == 0 && l["schema_id"] != nil:
			t.Errorf("offset %d logged with schema_id %v, but the record had none", off, l["schema_id"])
		case r.schemaID != 0 && (!has || id != int64(r.schemaID)):
			t.Errorf("offset %d logged with schema_id %v, want %d", off, l["schema_id"], r.schemaID)
		}
	}
	for off, n := range seen {
		if n > 1 {
			t.Errorf("offset %d logged %d times, want once", off, n)
		}
	}
	total := len(seen)
	for _, s := range lines.summaries {
		if s["topic"] != w.topic {
			continue
		}
		n, _ := logInt(s["count"])
		total += int(n)
		byReason, _ := s[logSummaryBy].(map[string]any)
		var sum int64
		for _, v := range byReason {
			k, _ := logInt(v)
			sum += k
		}
		if sum != n || s["level"] != "error" {
			t.Errorf("summary %v: reasons add up to %d, count %d (want equal, at error)", s, sum, n)
		}
	}
	if total != len(w.records) {
		t.Errorf("own lines plus summary counts = %d, want the %d rejected records", total, len(w.records))
	}
	if lines.stacks > 0 {
		t.Errorf("%d rejection lines carry a stack trace", lines.stacks)
	}
	return lines
}

// unaccounted lists the offsets of w.records neither on a line of their
// own nor inside a summary's range.
func unaccounted(lines rejectLines, w rejectLogWant) []int64 {
	own := map[int64]bool{}
	for _, l := range lines.single {
		if p, _ := logInt(l["partition"]); l["topic"] == w.topic && p == int64(w.partition) {
			off, _ := logInt(l["offset"])
			own[off] = true
		}
	}
	type span struct{ first, last int64 }
	var spans []span
	for _, s := range lines.summaries {
		if p, _ := logInt(s["partition"]); s["topic"] == w.topic && p == int64(w.partition) {
			a, _ := logInt(s["first_offset"])
			b, _ := logInt(s["last_offset"])
			spans = append(spans, span{a, b})
		}
	}
	var out []int64
	for _, r := range w.records {
		if own[r.offset] {
			continue
		}
		if !slices.ContainsFunc(spans, func(s span) bool { return s.first <= r.offset && r.offset <= s.last }) {
			out = append(out, r.offset)
		}
	}
	return out
}

func firstN[T any](s []T, n int) []T { return s[:min(n, len(s))] }

// policyRun is a sink run by the test itself, so that it can see Run end
// on its own (errors.policy fail).
type policyRun struct {
	metrics *prometheus.Registry
	logs    *observer.ObservedLogs
	done    chan error
	cancel  context.CancelFunc
}

func runPolicy(t *testing.T, cfg sink.Config) *policyRun {
	t.Helper()
	log, logs := observedLogger(t)
	reg := prometheus.NewRegistry()
	s, err := sink.New(cfg, sink.WithLogger(log), sink.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	p := &policyRun{metrics: reg, logs: logs, done: make(chan error, 1), cancel: cancel}
	go func() { p.done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.done:
		case <-time.After(45 * time.Second):
			t.Errorf("Run did not return 45s after its context ended")
		}
	})
	return p
}

// policyInput is good records around a record that fails at decoding
// (no magic byte), one that BigQuery refuses, one that does not decode and
// a tombstone, on one partition.
type policyInput struct {
	recs    []*kgo.Record
	good    []stack.StockUpdate
	goodOff []int64 // offset of good[i]
	bad     []*badCase
}

func (f *badFixture) policyInput(topic string, order []string, seed uint64) policyInput {
	f.t.Helper()
	all := map[string]*badCase{}
	for _, c := range f.badCases(topic) {
		all[c.name] = c
	}
	var in policyInput
	updates := stack.StockUpdates(5*(len(order)+1), seed)
	var goodRecs []*kgo.Record
	add := func() {
		us := updates[len(in.good) : len(in.good)+5]
		rs := f.good(topic, us)
		in.good = append(in.good, us...)
		goodRecs = append(goodRecs, rs...)
		in.recs = append(in.recs, rs...)
	}
	for _, name := range order {
		add()
		c := all[name]
		if c == nil {
			f.t.Fatalf("no bad case %q", name)
		}
		in.bad = append(in.bad, c)
		in.recs = append(in.recs, c.rec)
	}
	add()
	if err := f.st.Produce(f.t.Context(), stamp(in.recs)...); err != nil {
		f.t.Fatal(err)
	}
	for _, r := range goodRecs {
		in.goodOff = append(in.goodOff, r.Offset)
	}
	return in
}

// errors.policy skip: the same rejections are counted and logged, nothing
// goes to the dead-letter topic, and the offsets are committed past them.
func TestBadInputPolicySkip(t *testing.T) {
	ctx := t.Context()
	const topic, table, group = "bad.skip", "bad_skip", "g-bad-skip"
	f := newBadFixture(t, 1)
	f.topic(topic, table, 1)
	in := f.policyInput(topic, []string{"no magic byte", "value BigQuery refuses", "truncated body", "tombstone"}, 81)
	cfg := f.config(group, topic, table)
	cfg.Errors.Policy = sink.PolicySkip
	p := runPolicy(t, cfg)
	itest.WaitAllCommitted(t, f.st, group, topic, 60*time.Second)

	var want []rejectionWant
	for _, c := range in.bad {
		if c.reason == "" {
			continue
		}
		want = append(want, rejectionWant{offset: c.rec.Offset, reason: c.reason, schemaID: c.schemaID})
		if got := counter(t, p.metrics, "bqsink_records_rejected_total", "reason", c.reason); got != 1 {
			t.Errorf("rejected %s = %v, want 1", c.reason, got)
		}
		if got := counter(t, p.metrics, "bqsink_records_dead_lettered_total", "reason", c.reason); got != 0 {
			t.Errorf("dead-lettered %s = %v under policy skip, want 0", c.reason, got)
		}
	}
	if got := counter(t, p.metrics, "bqsink_tombstones_total", "topic", topic); got != 1 {
		t.Errorf("tombstones = %v, want 1", got)
	}
	checkRejectLogs(t, func() rejectLines { return observedRejectLines(p.logs) }, rejectLogWant{
		topic: topic, table: stack.Project + "." + stack.Dataset + "." + table, policy: "skip", records: want,
	}, 30*time.Second)
	dls, err := f.st.DeadLetters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 0 {
		t.Errorf("%d dead-letter records under policy skip, want none", len(dls))
	}
	checkGoodRows(t, f.st, table, in.good)
}

// checkGoodRows checks that each of us is in table exactly once and
// nothing else is.
func checkGoodRows(t *testing.T, st *stack.Stack, table string, us []stack.StockUpdate) {
	t.Helper()
	tbl, err := st.ReadTable(t.Context(), table)
	if err != nil {
		t.Fatal(err)
	}
	rows := byKey(t, tbl)
	for _, u := range us {
		if n := len(rows[itest.Key(u.EAN, u.Timestamp)]); n != 1 {
			t.Errorf("good record %s: %d rows, want 1", itest.Key(u.EAN, u.Timestamp), n)
		}
	}
	if len(tbl.Rows) != len(us) {
		t.Errorf("%d rows in %s, want %d", len(tbl.Rows), table, len(us))
	}
}

// errors.policy fail: the first record that can never be written ends the
// run with an error naming it; the group's offset is committed up to it,
// not past it; the good records before it are written. Once for a record
// rejected while decoding, once for one BigQuery refuses.
func TestBadInputPolicyFail(t *testing.T) {
	for _, first := range []string{"no magic byte", "value BigQuery refuses"} {
		t.Run(strings.ReplaceAll(first, " ", "_"), func(t *testing.T) {
			ctx := t.Context()
			f := newBadFixture(t, 1)
			const topic, table, group = "bad.fail", "bad_fail", "g-bad-fail"
			f.topic(topic, table, 1)
			in := f.policyInput(topic, []string{first, "truncated body"}, 82)
			bad := in.bad[0]
			cfg := f.config(group, topic, table)
			cfg.Errors.Policy = sink.PolicyFail
			p := runPolicy(t, cfg)
			var runErr error
			select {
			case runErr = <-p.done:
				p.done <- runErr // for the cleanup
			case <-time.After(60 * time.Second):
				t.Fatal("Run did not end within 60s of a record failing under errors.policy fail")
			}
			if runErr == nil {
				t.Fatal("Run returned nil, want an error naming the record")
			}
			for _, s := range []string{fmt.Sprintf("%s/0", topic), fmt.Sprintf("offset %d", bad.rec.Offset), bad.reason} {
				if !strings.Contains(runErr.Error(), s) {
					t.Errorf("Run's error %q does not say %q", runErr, s)
				}
			}
			o, err := f.st.GroupOffsets(ctx, group, topic)
			if err != nil {
				t.Fatal(err)
			}
			if got := o.Committed[0]; got != bad.rec.Offset {
				t.Errorf("committed offset %d, want %d: everything before the failed record and nothing from it on", got, bad.rec.Offset)
			}
			var before []stack.StockUpdate
			for i, u := range in.good {
				if in.goodOff[i] < bad.rec.Offset {
					before = append(before, u)
				}
			}
			tbl, err := f.st.ReadTable(ctx, table)
			if err != nil {
				t.Fatal(err)
			}
			rows := byKey(t, tbl)
			for _, u := range before {
				if n := len(rows[itest.Key(u.EAN, u.Timestamp)]); n != 1 {
					t.Errorf("good record %s before the failed one: %d rows, want 1", u.EAN, n)
				}
			}
			dls, err := f.st.DeadLetters(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(dls) != 0 {
				t.Errorf("%d dead-letter records under policy fail, want none", len(dls))
			}
			t.Logf("Run: %v; committed %d of %d; %d rows (%d good records before it)", runErr, o.Committed[0], o.End[0], len(tbl.Rows), len(before))
		})
	}
}

// The dead-letter topic disappears after startup. A record that can never
// be written then holds its partition: an error line with stage
// dead_letter within 30s, bqsink_retries_total{stage="dead_letter"}
// growing, /readyz failing, its offset not committed. Once the topic is
// back, the record is dead-lettered and the partition catches up.
//
// With the default request_timeout (10s) the outage outlasts it; with
// request_timeout raised above the outage it does not, which tells a
// recovery that fails because of the outage's length from one that fails
// at all.
func TestBadInputDeadLetterTopicUnavailable(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out the retry backoff of an operator error twice")
	}
	t.Parallel() // mostly waiting out the backoff; a stack of its own per case
	for _, c := range []struct {
		name           string
		requestTimeout time.Duration
	}{
		{"default_request_timeout", 0},
		{"request_timeout_above_the_outage", 3 * time.Minute},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			testDeadLetterTopicUnavailable(t, c.requestTimeout)
		})
	}
}

func testDeadLetterTopicUnavailable(t *testing.T, requestTimeout time.Duration) {
	start := time.Now()
	ctx := t.Context()
	const topic, table, group = "bad.nodlq", "bad_nodlq", "g-bad-nodlq"
	f := newBadFixture(t, 1)
	f.topic(topic, table, 1)
	cfg := f.config(group, topic, table)
	cfg.Kafka.RequestTimeout = requestTimeout
	cfg.ShutdownTimeout = 5 * time.Second // a stuck flight holds the stop this long at most
	log, logs := observedLogger(t)
	r := itest.StartSink(ctx, t, f.st, cfg, log)

	warmup := stack.StockUpdates(5, 90)
	if err := f.st.Produce(ctx, f.good(topic, warmup)...); err != nil {
		t.Fatal(err)
	}
	itest.WaitAllCommitted(t, f.st, group, topic, 60*time.Second)

	adm := kadm.NewClient(newKafkaClient(t, f.st))
	resp, err := adm.DeleteTopic(ctx, stack.DLQTopic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("delete %s: %v", stack.DLQTopic, err)
	}
	t.Logf("deleted %s at %v", stack.DLQTopic, time.Since(start).Round(time.Millisecond))

	in := f.policyInput(topic, []string{"no magic byte"}, 91)
	bad := in.bad[0]
	failing := func(e observer.LoggedEntry) bool {
		return e.Level >= zapcore.WarnLevel && e.ContextMap()["stage"] == "dead_letter"
	}
	produced := time.Now()
	itest.WaitFor(t, 30*time.Second, "a warn or error line with stage dead_letter", func() bool {
		return len(logs.Filter(failing).All()) > 0
	})
	line := logs.Filter(failing).All()[0]
	t.Logf("%v after the record: %s %q %v", time.Since(produced).Round(time.Millisecond), line.Level, line.Message, line.ContextMap())
	if err := r.Sink.Ready(); err == nil || !strings.Contains(err.Error(), "dead_letter") {
		t.Errorf("Ready() = %v while the dead-letter topic is gone, want an error naming dead_letter", err)
	}
	itest.WaitFor(t, 75*time.Second, "bqsink_retries_total{stage=dead_letter} to reach 2", func() bool {
		return counter(t, r.Metrics, "bqsink_retries_total", "stage", "dead_letter") >= 2
	})
	o, err := f.st.GroupOffsets(ctx, group, topic)
	if err != nil {
		t.Fatal(err)
	}
	if o.Committed[0] > bad.rec.Offset {
		t.Fatalf("committed %d past the record at %d that was never dead-lettered", o.Committed[0], bad.rec.Offset)
	}
	t.Logf("retries %v, committed %d (record at %d, end %d) at %v",
		counter(t, r.Metrics, "bqsink_retries_total", "stage", "dead_letter"), o.Committed[0], bad.rec.Offset, o.End[0],
		time.Since(start).Round(time.Millisecond))

	if err := f.st.CreateTopic(ctx, stack.DLQTopic, 1, stack.MaxMessageBytes(stack.DLQMaxMessageBytes)); err != nil {
		t.Fatal(err)
	}
	fixed := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 75*time.Second)
	defer cancel()
	if _, err := f.st.WaitCommitted(wctx, group, topic); err != nil {
		o, _ := f.st.GroupOffsets(ctx, group, topic)
		var why []string
		for _, e := range logs.Filter(failing).All() {
			if e.Time.After(fixed) {
				why = append(why, fmt.Sprintf("%s %q: %v", e.Level, e.Message, e.ContextMap()["error"]))
			}
		}
		t.Fatalf("the topic back, the partition did not catch up within 75s (committed %v, end %v, record at %d; the record was produced %v before the topic was back); dead_letter lines since: %q",
			o.Committed, o.End, bad.rec.Offset, fixed.Sub(produced).Round(time.Second), firstN(why, 3))
	}
	t.Logf("caught up %v after the topic was back", time.Since(fixed).Round(time.Millisecond))
	dls, err := f.st.DeadLetters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := indexDeadLetters(t, dls, topic)[bad.rec.Offset]
	if len(got) != 1 || len(dls) != 1 {
		t.Fatalf("%d dead-letter records, %d of them for offset %d; want exactly that one", len(dls), len(got), bad.rec.Offset)
	}
	checkDeadLetter(t, bad.name, got[0], bad.rec, wantDeadLetter{reason: bad.reason, table: stack.Project + "." + stack.Dataset + "." + table, version: "unknown"})
	if n := len(logs.FilterMessage("recovered").FilterField(zap.String("stage", "dead_letter")).All()); n == 0 {
		t.Error("no \"recovered\" line for stage dead_letter")
	}
	checkGoodRows(t, f.st, table, append(warmup, in.good...))
}

// A record produced an hour ago (a backlog, a replay, a consumer that was
// down) that can never be written is dead-lettered with its original
// timestamp like any other, and the partition moves on past it.
func TestBadInputOldRecordIsDeadLettered(t *testing.T) {
	ctx := t.Context()
	const topic, table, group = "bad.old", "bad_old", "g-bad-old"
	f := newBadFixture(t, 1)
	f.topic(topic, table, 1)
	us := stack.StockUpdates(10, 93)
	old := badRecord(topic, "an hour old", 0, []byte("plain text, no magic byte"))
	old.Timestamp = time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	recs := append(append(f.good(topic, us[:5]), old), f.good(topic, us[5:])...)
	if err := f.st.Produce(ctx, stamp(recs)...); err != nil {
		t.Fatal(err)
	}
	cfg := f.config(group, topic, table)
	cfg.ShutdownTimeout = 5 * time.Second // a stuck flight holds the stop this long at most
	log, logs := observedLogger(t)
	r := itest.StartSink(ctx, t, f.st, cfg, log)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := f.st.WaitCommitted(wctx, group, topic); err != nil {
		o, _ := f.st.GroupOffsets(ctx, group, topic)
		var why []string
		for _, e := range logs.FilterField(zap.String("stage", "dead_letter")).All() {
			why = append(why, fmt.Sprintf("%s %q: %v", e.Level, e.Message, e.ContextMap()["error"]))
		}
		t.Fatalf("committed %v of %v within 20s (record at %d); dead_letter retries %v; dead_letter lines: %q",
			o.Committed, o.End, old.Offset, counter(t, r.Metrics, "bqsink_retries_total", "stage", "dead_letter"), firstN(why, 3))
	}
	dls, err := f.st.DeadLetters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := indexDeadLetters(t, dls, topic)[old.Offset]
	if len(got) != 1 {
		t.Fatalf("%d dead-letter records for offset %d, want 1", len(got), old.Offset)
	}
	checkDeadLetter(t, "an hour old", got[0], old, wantDeadLetter{reason: "wire_format",
		table: stack.Project + "." + stack.Dataset + "." + table, version: "unknown"})
	checkGoodRows(t, f.st, table, us)
}

// Large rejected records in a row, each within the dead-letter topic's
// max.message.bytes (which equals the source topic's, as the README asks),
// together beyond it: each is dead-lettered and the partition moves on.
// Kafka checks max.message.bytes against a whole record batch (compressed),
// so the dead-letter writes must not put more into one batch than the
// topic takes. The values are random so that compression cannot hide it.
func TestBadInputLargeDeadLettersInARow(t *testing.T) {
	ctx := t.Context()
	const topic, table, group, dlq = "bad.large", "bad_large", "g-bad-large", "bad.large.dlq"
	const limit, n = 100 << 10, 10
	f := newBadFixture(t, 1)
	for _, name := range []string{topic, dlq} {
		if err := f.st.CreateTopic(ctx, name, 1, stack.MaxMessageBytes(limit)); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewChaCha8([32]byte{95}))
	var bad []*kgo.Record
	us := stack.StockUpdates(2, 95)
	for i := range n {
		v := make([]byte, limit*6/10) // 60 KiB
		for j := range v {
			v[j] = byte(rng.Uint32())
		}
		v[0] = 'x' // no magic byte
		bad = append(bad, badRecord(topic, fmt.Sprintf("large %d", i), i, v))
	}
	// One record per produce: the source topic takes one of them per batch.
	for _, r := range append(append(f.good(topic, us[:1]), bad...), f.good(topic, us[1:])...) {
		if err := f.st.Produce(ctx, stamp([]*kgo.Record{r})...); err != nil {
			t.Fatal(err)
		}
	}
	cfg := f.config(group, topic, table)
	cfg.Errors.DLQTopic = dlq
	cfg.ShutdownTimeout = 5 * time.Second // a stuck flight holds the stop this long at most
	log, logs := observedLogger(t)
	r := itest.StartSink(ctx, t, f.st, cfg, log)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := f.st.WaitCommitted(wctx, group, topic); err != nil {
		o, _ := f.st.GroupOffsets(ctx, group, topic)
		var why []string
		for _, e := range logs.FilterField(zap.String("stage", "dead_letter")).All() {
			why = append(why, fmt.Sprintf("%s %q: %v", e.Level, e.Message, e.ContextMap()["error"]))
		}
		t.Fatalf("committed %v of %v within 20s (%d records of %d KiB at %d..%d, topics taking %d KiB); dead_letter retries %v; dead_letter lines: %q",
			o.Committed, o.End, n, len(bad[0].Value)>>10, bad[0].Offset, bad[len(bad)-1].Offset, limit>>10,
			counter(t, r.Metrics, "bqsink_retries_total", "stage", "dead_letter"), firstN(why, 3))
	}
	dls, err := f.st.ReadTopic(ctx, dlq)
	if err != nil {
		t.Fatal(err)
	}
	byOffset := indexDeadLetters(t, dls, topic)
	for i, b := range bad {
		if got := byOffset[b.Offset]; len(got) != 1 {
			t.Errorf("large %d (offset %d): %d dead-letter records, want 1", i, b.Offset, len(got))
		} else if !bytes.Equal(got[0].rec.Value, b.Value) {
			t.Errorf("large %d (offset %d): dead-letter value differs", i, b.Offset)
		}
	}
	checkGoodRows(t, f.st, table, us)
}

func newKafkaClient(t *testing.T, st *stack.Stack) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(st.Brokers()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// 5,000 records carrying one schema ID the registry does not know, over
// three partitions: the registry is asked about that ID only a handful of
// times (the first ask, then its backoff), and every record is
// dead-lettered as schema_not_found.
func TestBadInputUnknownSchemaIDFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("5,000 records through the dead-letter topic")
	}
	start := time.Now()
	ctx := t.Context()
	const topic, table, group, n = "bad.flood", "bad_flood", "g-bad-flood", 5000
	f := newBadFixture(t, 3)
	f.topic(topic, table, 3)
	var asked atomic.Int64
	path := fmt.Sprintf("/schemas/ids/%d", unknownID)
	f.st.Registry.Intercept(func(_ http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, path) {
			asked.Add(1)
		}
		return false
	})
	body := f.v1Body(stack.StockUpdates(1, 92)[0])
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: topic, Key: []byte(strconv.Itoa(i)), Value: stack.WireFormat(unknownID, body)}
	}
	if err := f.st.Produce(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	produced := time.Now()
	r := itest.StartSink(ctx, t, f.st, f.config(group, topic, table), zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)))
	itest.WaitAllCommitted(t, f.st, group, topic, 120*time.Second)
	took := time.Since(produced)

	if got := counter(t, r.Metrics, "bqsink_records_rejected_total", "reason", "schema_not_found"); got != n {
		t.Errorf("rejected schema_not_found = %v, want %d", got, n)
	}
	dls, err := f.st.DeadLetters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	type origin struct {
		p int32
		o int64
	}
	seen := map[origin]int{}
	for _, dl := range dls {
		var p, o int64
		var reason, id string
		for _, h := range dl.Headers {
			switch h.Key {
			case sink.HeaderPartition:
				p, _ = strconv.ParseInt(string(h.Value), 10, 32)
			case sink.HeaderOffset:
				o, _ = strconv.ParseInt(string(h.Value), 10, 64)
			case sink.HeaderReason:
				reason = string(h.Value)
			case sink.HeaderSchemaID:
				id = string(h.Value)
			}
		}
		if reason != "schema_not_found" || id != strconv.Itoa(unknownID) {
			t.Errorf("dead letter %d/%d: reason %q schema_id %q", p, o, reason, id)
		}
		seen[origin{int32(p), o}]++
	}
	missing, dup := 0, 0
	for _, r := range recs {
		switch seen[origin{r.Partition, r.Offset}] {
		case 0:
			missing++
		case 1:
		default:
			dup++
		}
	}
	if missing > 0 || len(dls) != n {
		t.Errorf("%d dead-letter records for %d records; %d records missing, %d more than once", len(dls), n, missing, dup)
	}
	const handful = 5
	if got := asked.Load(); got > handful {
		t.Errorf("the registry was asked about schema ID %d %d times for %d records, want at most %d", unknownID, got, n, handful)
	}
	t.Logf("%d records over 3 partitions dead-lettered in %v; the registry was asked about ID %d %d times; %v in all",
		n, took.Round(time.Millisecond), unknownID, asked.Load(), time.Since(start).Round(time.Millisecond))
}
