package integration

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/big"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/civil"
	"github.com/hamba/avro/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

// Golden tests: a schema's records go through the whole pipeline (Kafka,
// registry, decoder, Storage Write API) and are read back with the BigQuery
// Go client over REST, as a user's query tool would see them. Both the table
// the sink created and every value are compared with expectations written out
// here, independently of the code under test.

// goldenSink is a sink run by runSink, with its metrics and its error logs.
type goldenSink struct {
	metrics *prometheus.Registry
	errors  *observer.ObservedLogs
	stop    func() error
}

// runSink runs the real sink on topic, routed to table, until the test ends
// or stop is called. Unlike env.start it observes the sink's error logs.
func runSink(ctx context.Context, t *testing.T, st *stack.Stack, group, topic, table string) goldenSink {
	t.Helper()
	core, logs := observer.New(zap.ErrorLevel)
	log := zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core))
	cfg := st.Config(group, topic)
	cfg.Tables = map[string]sink.TableRoute{topic: sink.Route(table)}
	r := itest.StartSink(ctx, t, st, cfg, log)
	return goldenSink{metrics: r.Metrics, errors: logs, stop: r.Stop}
}

// pipeline produces recs to topic, runs the sink until every record is
// committed, stops it and reads table back.
func pipeline(ctx context.Context, t *testing.T, st *stack.Stack, topic, table string, recs []*kgo.Record) (goldenSink, stack.Table) {
	t.Helper()
	if err := st.Produce(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	group := "g-" + table
	s := runSink(ctx, t, st, group, topic, table)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := st.WaitCommitted(wctx, group, topic); err != nil {
		t.Fatal(err)
	}
	if err := s.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	tbl, err := st.ReadTable(ctx, table)
	if err != nil {
		t.Fatal(err)
	}
	return s, tbl
}

// encodeRecords writes generic records with hamba/avro, an encoder
// independent of the decoder under test, framed with schema ID id. texts are
// the referenced schemas first, the writer schema last.
func encodeRecords(t *testing.T, topic string, id int, texts []string, records []map[string]any) []*kgo.Record {
	t.Helper()
	cache := &avro.SchemaCache{}
	var sch avro.Schema
	for _, text := range texts {
		var err error
		if sch, err = avro.ParseWithCache(text, "", cache); err != nil {
			t.Fatal(err)
		}
	}
	out := make([]*kgo.Record, 0, len(records))
	for i, r := range records {
		body, err := avro.Marshal(sch, r)
		if err != nil {
			t.Fatalf("encode record %d: %v", i, err)
		}
		// One key: one partition, so the records arrive in the order written.
		out = append(out, &kgo.Record{Topic: topic, Key: []byte("golden"), Value: stack.WireFormat(id, body)})
	}
	return out
}

// col and described build expected columns; the mode is spelled out as in
// BigQuery's console so the expectations read like a table definition.
func col(name string, typ bigquery.FieldType, mode string, fields ...*bigquery.FieldSchema) *bigquery.FieldSchema {
	f := &bigquery.FieldSchema{Name: name, Type: typ, Schema: fields}
	switch mode {
	case "REQUIRED":
		f.Required = true
	case "REPEATED":
		f.Repeated = true
	case "NULLABLE":
	default:
		panic("bad mode " + mode) // a typo in an expectation
	}
	return f
}

func described(f *bigquery.FieldSchema, description string) *bigquery.FieldSchema {
	f.Description = description
	return f
}

// schemaLines renders a schema one column per line, nested columns by
// dotted path, with every property the mapping may set.
func schemaLines(s bigquery.Schema, prefix string) []string {
	var out []string
	for _, f := range s {
		mode := "NULLABLE"
		switch {
		case f.Repeated:
			mode = "REPEATED"
		case f.Required:
			mode = "REQUIRED"
		}
		line := fmt.Sprintf("%s%s %s %s", prefix, f.Name, f.Type, mode)
		if f.Description != "" {
			line += fmt.Sprintf(" description=%q", f.Description)
		}
		if f.Precision != 0 || f.Scale != 0 || f.MaxLength != 0 {
			line += fmt.Sprintf(" precision=%d scale=%d max_length=%d", f.Precision, f.Scale, f.MaxLength)
		}
		out = append(out, line)
		out = append(out, schemaLines(f.Schema, prefix+f.Name+".")...)
	}
	return out
}

func assertSchema(t *testing.T, got, want bigquery.Schema) {
	t.Helper()
	g, w := schemaLines(got, ""), schemaLines(want, "")
	if strings.Join(g, "\n") == strings.Join(w, "\n") {
		return
	}
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			t.Errorf("table schema line %d:\n got  %s\n want %s", i+1, gl, wl)
		}
	}
}

// diffValue compares a value as the BigQuery client returned it with the
// expected one, type included: NUMERIC compares as an exact rational, FLOAT
// bit for bit (NaN equal to NaN), TIMESTAMP as an instant in UTC.
func diffValue(path string, got, want bigquery.Value) []string {
	bad := func() []string { return []string{fmt.Sprintf("%s = %#v, want %#v", path, got, want)} }
	if want == nil {
		if got != nil {
			return bad()
		}
		return nil
	}
	if reflect.TypeOf(got) != reflect.TypeOf(want) {
		return []string{fmt.Sprintf("%s = %#v (%T), want %#v (%T)", path, got, got, want, want)}
	}
	switch w := want.(type) {
	case map[string]bigquery.Value:
		g := got.(map[string]bigquery.Value)
		var out []string
		for k := range g {
			if _, ok := w[k]; !ok {
				out = append(out, fmt.Sprintf("%s.%s = %#v, not expected", path, k, g[k]))
			}
		}
		keys := make([]string, 0, len(w))
		for k := range w {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if _, ok := g[k]; !ok {
				out = append(out, fmt.Sprintf("%s.%s missing", path, k))
				continue
			}
			out = append(out, diffValue(path+"."+k, g[k], w[k])...)
		}
		return out
	case []bigquery.Value:
		g := got.([]bigquery.Value)
		if len(g) != len(w) {
			return bad()
		}
		var out []string
		for i := range w {
			out = append(out, diffValue(fmt.Sprintf("%s[%d]", path, i), g[i], w[i])...)
		}
		return out
	case *big.Rat:
		if got.(*big.Rat).Cmp(w) != 0 {
			return []string{fmt.Sprintf("%s = %s, want %s", path, got.(*big.Rat).RatString(), w.RatString())}
		}
	case float64:
		g := got.(float64)
		if !(math.IsNaN(g) && math.IsNaN(w)) && math.Float64bits(g) != math.Float64bits(w) {
			return bad()
		}
	case time.Time:
		g := got.(time.Time)
		if !g.Equal(w) || g.Location() != time.UTC {
			return []string{fmt.Sprintf("%s = %s, want %s", path, g.Format(time.RFC3339Nano), w.Format(time.RFC3339Nano))}
		}
	case []byte:
		if !bytes.Equal(got.([]byte), w) {
			return bad()
		}
	default:
		if got != want {
			return bad()
		}
	}
	return nil
}

// assertRows matches the table's rows to want by the string column key:
// each expected row exactly once, nothing else.
func assertRows(t *testing.T, tbl stack.Table, key string, want []map[string]bigquery.Value) {
	t.Helper()
	if len(tbl.Rows) != len(want) {
		t.Errorf("%d rows, want %d", len(tbl.Rows), len(want))
	}
	byKey := map[string][]map[string]bigquery.Value{}
	for _, r := range tbl.Rows {
		k, _ := r[key].(string)
		byKey[k] = append(byKey[k], r)
	}
	for _, w := range want {
		k := w[key].(string)
		got := byKey[k]
		if len(got) != 1 {
			t.Errorf("row %s=%s: %d rows", key, k, len(got))
			continue
		}
		for _, d := range diffValue(k, bigquery.Value(got[0]), bigquery.Value(w)) {
			t.Error(d)
		}
	}
}

// sortEntries orders a map column's key/value records by key: hamba/avro
// writes a Go map in random order, and the sink keeps the written order.
func sortEntries(tbl stack.Table, column string) {
	for _, r := range tbl.Rows {
		entries, ok := r[column].([]bigquery.Value)
		if !ok {
			continue
		}
		sort.Slice(entries, func(i, j int) bool {
			ki, _ := entries[i].(map[string]bigquery.Value)["key"].(string)
			kj, _ := entries[j].(map[string]bigquery.Value)["key"].(string)
			return ki < kj
		})
	}
}

func rat(s string) *big.Rat {
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		panic("bad decimal " + s) // a typo in an expectation
	}
	return r
}

// row spells a row value; a RECORD is a row too.
type row = map[string]bigquery.Value

type list = []bigquery.Value

// DeliveryCreated uses types from other subjects (Warehouse, which itself
// references Address, and Address): the sink resolves the references through
// the registry and creates a table with the nested records, and every value
// reads back exactly: nullables set and NULL, the tracking union as each of
// its branches and NULL, empty arrays and maps.
func TestGoldenDeliveryCreated(t *testing.T) {
	ctx := t.Context()
	const topic, table = "deliveries", "deliveries"
	st, err := stack.Start(stack.Options{Partitions: 1, Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)

	address, warehouse, delivery := stack.Schema("com.huub.types.Address.avsc"),
		stack.Schema("com.huub.types.Warehouse.avsc"), stack.Schema("delivery_created.avsc")
	addressRef := sr.SchemaReference{Name: "com.huub.types.Address", Subject: "com.huub.types.Address", Version: 1}
	if _, err := st.Register("com.huub.types.Address", address); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Register("com.huub.types.Warehouse", warehouse, addressRef); err != nil {
		t.Fatal(err)
	}
	id, err := st.Register("deliveries-value", delivery,
		sr.SchemaReference{Name: "com.huub.types.Warehouse", Subject: "com.huub.types.Warehouse", Version: 1}, addressRef)
	if err != nil {
		t.Fatal(err)
	}

	records := []map[string]any{
		{ // every nullable set; tracking as a string
			"delivery_id":   "0b6c1f57-3f0e-4c5e-9a57-6a1f7c2d9e01",
			"created_at":    time.Date(2025, 11, 2, 8, 0, 0, 123456000, time.UTC),
			"delivery_date": time.Date(2025, 11, 4, 0, 0, 0, 0, time.UTC),
			"slot_start":    map[string]any{"int.time-millis": 9*time.Hour + 30*time.Minute + 15*time.Second + 250*time.Millisecond},
			"origin": map[string]any{"id": 1, "name": "Porto Central", "address": map[string]any{
				"line1": "Rua do Heroísmo 12", "line2": "Armazém 3", "city": "Porto", "postal_code": "4300-259", "country_code": [2]byte{'P', 'T'},
			}},
			"destination": map[string]any{
				"line1": "Calle Mayor 1", "line2": "2º izq", "city": "Madrid", "postal_code": "28013", "country_code": [2]byte{'E', 'S'},
			},
			"status": "SHIPPED",
			"total":  big.NewRat(123456, 100),
			"lines": []any{
				map[string]any{"ean": "5601234567890", "quantity": 2, "weight_kg": 1.25},
				map[string]any{"ean": "5601234567891", "quantity": 1, "weight_kg": 0.003},
			},
			"attributes":    map[string]any{"gift": "yes", "channel": "web"},
			"tracking":      map[string]any{"string": "1Z999AA10123456784"},
			"signature_png": []byte{0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a},
		},
		{ // every nullable NULL; tracking as a long
			"delivery_id":   "0b6c1f57-3f0e-4c5e-9a57-6a1f7c2d9e02",
			"created_at":    time.Date(1969, 12, 31, 23, 59, 59, 999999000, time.UTC),
			"delivery_date": time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC),
			"slot_start":    nil,
			"origin": map[string]any{"id": -7, "name": "", "address": map[string]any{
				"line1": "Via Roma 1", "line2": nil, "city": "Milano", "postal_code": "20121", "country_code": [2]byte{'I', 'T'},
			}},
			"destination": map[string]any{
				"line1": "Rua A", "line2": nil, "city": "Lisboa", "postal_code": "1000-001", "country_code": [2]byte{'P', 'T'},
			},
			"status": "CANCELLED",
			"total":  big.NewRat(-4210, 100),
			"lines": []any{
				map[string]any{"ean": "5601234567892", "quantity": 0, "weight_kg": nil},
			},
			"attributes":    map[string]any{},
			"tracking":      map[string]any{"long": int64(math.MaxInt64)},
			"signature_png": nil,
		},
		{ // tracking NULL, no lines, an empty signature
			"delivery_id":   "0b6c1f57-3f0e-4c5e-9a57-6a1f7c2d9e03",
			"created_at":    time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
			"delivery_date": time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
			"slot_start":    map[string]any{"int.time-millis": 23*time.Hour + 59*time.Minute + 59*time.Second + 999*time.Millisecond},
			"origin": map[string]any{"id": 2, "name": "Lisboa Norte", "address": map[string]any{
				"line1": "Av. da Liberdade 1", "line2": nil, "city": "Lisboa", "postal_code": "1250-096", "country_code": [2]byte{'P', 'T'},
			}},
			"destination": map[string]any{
				"line1": "1 Main St", "line2": "", "city": "Dublin", "postal_code": "D01", "country_code": [2]byte{'I', 'E'},
			},
			"status":        "CREATED",
			"total":         big.NewRat(0, 1),
			"lines":         []any{},
			"attributes":    map[string]any{"k": ""},
			"tracking":      nil,
			"signature_png": []byte{},
		},
	}
	recs := encodeRecords(t, topic, id, []string{address, warehouse, delivery}, records)
	s, tbl := pipeline(ctx, t, st, topic, table, recs)

	addressCols := func() []*bigquery.FieldSchema {
		return []*bigquery.FieldSchema{
			col("line1", bigquery.StringFieldType, "REQUIRED"),
			col("line2", bigquery.StringFieldType, "NULLABLE"),
			col("city", bigquery.StringFieldType, "REQUIRED"),
			col("postal_code", bigquery.StringFieldType, "REQUIRED"),
			col("country_code", bigquery.BytesFieldType, "REQUIRED"),
		}
	}
	assertSchema(t, tbl.Schema, bigquery.Schema{
		col("delivery_id", bigquery.StringFieldType, "REQUIRED"),
		col("created_at", bigquery.TimestampFieldType, "REQUIRED"),
		col("delivery_date", bigquery.DateFieldType, "REQUIRED"),
		col("slot_start", bigquery.TimeFieldType, "NULLABLE"),
		col("origin", bigquery.RecordFieldType, "REQUIRED",
			col("id", bigquery.IntegerFieldType, "REQUIRED"),
			col("name", bigquery.StringFieldType, "REQUIRED"),
			col("address", bigquery.RecordFieldType, "REQUIRED", addressCols()...),
		),
		col("destination", bigquery.RecordFieldType, "REQUIRED", addressCols()...),
		col("status", bigquery.StringFieldType, "REQUIRED"),
		col("total", bigquery.NumericFieldType, "REQUIRED"),
		col("lines", bigquery.RecordFieldType, "REPEATED",
			col("ean", bigquery.StringFieldType, "REQUIRED"),
			col("quantity", bigquery.IntegerFieldType, "REQUIRED"),
			col("weight_kg", bigquery.FloatFieldType, "NULLABLE"),
		),
		col("attributes", bigquery.RecordFieldType, "REPEATED",
			col("key", bigquery.StringFieldType, "REQUIRED"),
			col("value", bigquery.StringFieldType, "REQUIRED"),
		),
		col("tracking", bigquery.RecordFieldType, "NULLABLE",
			col("string", bigquery.StringFieldType, "NULLABLE"),
			col("long", bigquery.IntegerFieldType, "NULLABLE"),
		),
		col("signature_png", bigquery.BytesFieldType, "NULLABLE"),
	})

	sortEntries(tbl, "attributes")
	assertRows(t, tbl, "delivery_id", []row{
		{
			"delivery_id":   "0b6c1f57-3f0e-4c5e-9a57-6a1f7c2d9e01",
			"created_at":    time.Date(2025, 11, 2, 8, 0, 0, 123456000, time.UTC),
			"delivery_date": civil.Date{Year: 2025, Month: 11, Day: 4},
			"slot_start":    civil.Time{Hour: 9, Minute: 30, Second: 15, Nanosecond: 250000000},
			"origin": row{"id": int64(1), "name": "Porto Central", "address": row{
				"line1": "Rua do Heroísmo 12", "line2": "Armazém 3", "city": "Porto", "postal_code": "4300-259", "country_code": []byte("PT"),
			}},
			"destination": row{
				"line1": "Calle Mayor 1", "line2": "2º izq", "city": "Madrid", "postal_code": "28013", "country_code": []byte("ES"),
			},
			"status": "SHIPPED",
			"total":  rat("1234.56"),
			"lines": list{
				row{"ean": "5601234567890", "quantity": int64(2), "weight_kg": 1.25},
				row{"ean": "5601234567891", "quantity": int64(1), "weight_kg": 0.003},
			},
			"attributes": list{
				row{"key": "channel", "value": "web"},
				row{"key": "gift", "value": "yes"},
			},
			"tracking":      row{"string": "1Z999AA10123456784", "long": nil},
			"signature_png": []byte{0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a},
		},
		{
			"delivery_id":   "0b6c1f57-3f0e-4c5e-9a57-6a1f7c2d9e02",
			"created_at":    time.Date(1969, 12, 31, 23, 59, 59, 999999000, time.UTC),
			"delivery_date": civil.Date{Year: 1969, Month: 12, Day: 31},
			"slot_start":    nil,
			"origin": row{"id": int64(-7), "name": "", "address": row{
				"line1": "Via Roma 1", "line2": nil, "city": "Milano", "postal_code": "20121", "country_code": []byte("IT"),
			}},
			"destination": row{
				"line1": "Rua A", "line2": nil, "city": "Lisboa", "postal_code": "1000-001", "country_code": []byte("PT"),
			},
			"status": "CANCELLED",
			"total":  rat("-42.10"),
			"lines": list{
				row{"ean": "5601234567892", "quantity": int64(0), "weight_kg": nil},
			},
			"attributes":    list{},
			"tracking":      row{"string": nil, "long": int64(math.MaxInt64)},
			"signature_png": nil,
		},
		{
			"delivery_id":   "0b6c1f57-3f0e-4c5e-9a57-6a1f7c2d9e03",
			"created_at":    time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
			"delivery_date": civil.Date{Year: 2026, Month: 1, Day: 1},
			"slot_start":    civil.Time{Hour: 23, Minute: 59, Second: 59, Nanosecond: 999000000},
			"origin": row{"id": int64(2), "name": "Lisboa Norte", "address": row{
				"line1": "Av. da Liberdade 1", "line2": nil, "city": "Lisboa", "postal_code": "1250-096", "country_code": []byte("PT"),
			}},
			"destination": row{
				"line1": "1 Main St", "line2": "", "city": "Dublin", "postal_code": "D01", "country_code": []byte("IE"),
			},
			"status":        "CREATED",
			"total":         rat("0"),
			"lines":         list{},
			"attributes":    list{row{"key": "k", "value": ""}},
			"tracking":      nil,
			"signature_png": []byte{},
		},
	})
	assertNoRejections(t, s.metrics)
}

func assertNoRejections(t *testing.T, metrics *prometheus.Registry) {
	t.Helper()
	for _, reason := range []string{"wire_format", "schema_not_found", "unsupported_schema", "decode", "incompatible_schema", "bigquery_rejected"} {
		if n := counter(t, metrics, "bqsink_records_rejected_total", "reason", reason); n != 0 {
			t.Errorf("%v records rejected for %s", n, reason)
		}
	}
}

// all_types.avsc has one field per row of the README's mapping table. Its
// records, with values at the edges of each type, read back exactly as the
// table says.
func TestGoldenAllTypes(t *testing.T) {
	ctx := t.Context()
	const topic, table = "all_types", "all_types"
	text, err := os.ReadFile("../schema/testdata/all_types.avsc")
	if err != nil {
		t.Fatal(err)
	}
	st, err := stack.Start(stack.Options{Partitions: 1, Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	id, err := st.Register(topic+"-value", string(text))
	if err != nil {
		t.Fatal(err)
	}

	wide := "12345678901234567890123456789012345678901234567890123456789012345678901234567890"[:78]
	dur := func(months, days, ms uint32) avro.LogicalDuration {
		return avro.LogicalDuration{Months: months, Days: days, Milliseconds: ms}
	}
	inner := func(x int32, y string) map[string]any {
		return map[string]any{"x": x, "deeper": map[string]any{"y": y}}
	}
	records := []map[string]any{
		{
			"b": true, "i": int32(math.MinInt32), "l": int64(math.MaxInt64),
			"f": float32(-0.1), "d": 2.25, "d_nan": math.NaN(), "d_inf": math.Inf(-1),
			"by": []byte{0, 1, 0xff}, "s": "héllo 😀",
			"rec":        inner(1, "z"),
			"e":          "GREEN",
			"arr":        []any{"a", "", "b"},
			"arr_rec":    []any{map[string]any{"y": "q"}, map[string]any{"y": "r"}},
			"arr_arr":    []any{[]any{1, -2}, []any{}, []any{math.MaxInt32}},
			"m":          map[string]any{"a": int64(3), "b": int64(math.MinInt64)},
			"m_opt":      map[string]any{"n": nil, "s": "v"},
			"fx":         [4]byte{9, 8, 7, 6},
			"opt":        "o",
			"opt_null":   nil,
			"opt_last":   "last",
			"multi":      map[string]any{"com.example.Inner": inner(2, "w")},
			"multi_req":  map[string]any{"long": int64(42)},
			"opt_arr":    nil,
			"opt_map":    map[string]any{"map": map[string]any{"a": 1}},
			"dec_bytes":  rat("-123.45"),
			"dec_fixed":  rat("0.000000001"),
			"dec_big":    rat("100000000000000000000000000000"),
			"dec_str":    rat("-0.01"),
			"date":       time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC),
			"t_ms":       13*time.Hour + 4*time.Minute + 5*time.Second + 6*time.Millisecond,
			"t_us":       23*time.Hour + 59*time.Minute + 59*time.Second + 999999*time.Microsecond,
			"ts_ms":      time.UnixMilli(-1).UTC(),
			"ts_us":      time.UnixMicro(1700000000123456).UTC(),
			"ts_ns":      int64(1700000000123456789),
			"lts_ms":     time.Date(1969, 7, 20, 20, 17, 40, 123000000, time.UTC),
			"lts_us":     time.UnixMicro(1700000000123456).UTC(),
			"id":         "00000000-0000-4000-8000-000000000001",
			"dur":        dur(1, 2, 3),
			"unknown_lt": `{"a":1}`, "with_default": 7,
		},
		{
			"b": false, "i": int32(math.MaxInt32), "l": int64(math.MinInt64),
			"f": float32(math.Inf(1)), "d": -math.MaxFloat64, "d_nan": math.NaN(), "d_inf": math.Inf(1),
			"by": []byte{}, "s": "",
			"rec":        inner(-1, ""),
			"e":          "RED",
			"arr":        []any{},
			"arr_rec":    []any{},
			"arr_arr":    []any{},
			"m":          map[string]any{},
			"m_opt":      map[string]any{},
			"fx":         [4]byte{},
			"opt":        nil,
			"opt_null":   "set",
			"opt_last":   nil,
			"multi":      map[string]any{"string": "branch"},
			"multi_req":  map[string]any{"string": "s"},
			"opt_arr":    map[string]any{"array": []any{1, -2}},
			"opt_map":    nil,
			"dec_bytes":  rat("99999999.9999"),
			"dec_fixed":  rat("-99999999999999999999999999999.999999999"),
			"dec_big":    rat("-999999999999999999999999999999.9999999999"),
			"dec_str":    rat(wide + ".99"),
			"date":       time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
			"t_ms":       time.Duration(0),
			"t_us":       time.Microsecond,
			"ts_ms":      time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
			"ts_us":      time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC),
			"ts_ns":      int64(math.MinInt64),
			"lts_ms":     time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
			"lts_us":     time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC),
			"id":         "00000000-0000-4000-8000-000000000002",
			"dur":        dur(0, 0, 0),
			"unknown_lt": "", "with_default": -7,
		},
		{
			"b": true, "i": int32(0), "l": int64(0),
			"f": float32(math.SmallestNonzeroFloat32), "d": math.SmallestNonzeroFloat64, "d_nan": math.NaN(), "d_inf": math.Inf(-1),
			"by": []byte("x"), "s": "tab\tnewline\nquote\"",
			"rec":        inner(0, "y"),
			"e":          "GREEN",
			"arr":        []any{"only"},
			"arr_rec":    []any{map[string]any{"y": ""}},
			"arr_arr":    []any{[]any{}},
			"m":          map[string]any{"": int64(0)},
			"m_opt":      map[string]any{"k": ""},
			"fx":         [4]byte{0xff, 0xff, 0xff, 0xff},
			"opt":        "",
			"opt_null":   nil,
			"opt_last":   "",
			"multi":      map[string]any{"long": int64(-1)},
			"multi_req":  map[string]any{"long": int64(math.MinInt64)},
			"opt_arr":    map[string]any{"array": []any{}},
			"opt_map":    map[string]any{"map": map[string]any{}},
			"dec_bytes":  rat("0"),
			"dec_fixed":  rat("1"),
			"dec_big":    rat("-0.0000000001"),
			"dec_str":    rat("0"),
			"date":       time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC),
			"t_ms":       23*time.Hour + 59*time.Minute + 59*time.Second + 999*time.Millisecond,
			"t_us":       time.Duration(0),
			"ts_ms":      time.Date(1900, 2, 28, 12, 0, 0, 1000000, time.UTC),
			"ts_us":      time.Unix(0, 0).UTC(),
			"ts_ns":      int64(0),
			"lts_ms":     time.Date(2024, 2, 29, 23, 59, 59, 999000000, time.UTC),
			"lts_us":     time.Date(1970, 1, 1, 0, 0, 0, 1000, time.UTC),
			"id":         "00000000-0000-4000-8000-000000000003",
			"dur":        dur(math.MaxUint32, 1, math.MaxUint32),
			"unknown_lt": "[]", "with_default": 0,
		},
	}
	recs := encodeRecords(t, topic, id, []string{string(text)}, records)
	s, tbl := pipeline(ctx, t, st, topic, table, recs)

	innerCols := func() []*bigquery.FieldSchema {
		return []*bigquery.FieldSchema{
			col("x", bigquery.IntegerFieldType, "REQUIRED"),
			col("deeper", bigquery.RecordFieldType, "REQUIRED", col("y", bigquery.StringFieldType, "REQUIRED")),
		}
	}
	assertSchema(t, tbl.Schema, bigquery.Schema{
		described(col("b", bigquery.BooleanFieldType, "REQUIRED"), "a boolean"),
		col("i", bigquery.IntegerFieldType, "REQUIRED"),
		col("l", bigquery.IntegerFieldType, "REQUIRED"),
		col("f", bigquery.FloatFieldType, "REQUIRED"),
		col("d", bigquery.FloatFieldType, "REQUIRED"),
		col("d_nan", bigquery.FloatFieldType, "REQUIRED"),
		col("d_inf", bigquery.FloatFieldType, "REQUIRED"),
		col("by", bigquery.BytesFieldType, "REQUIRED"),
		col("s", bigquery.StringFieldType, "REQUIRED"),
		described(col("rec", bigquery.RecordFieldType, "REQUIRED", innerCols()...), "an inner record"),
		described(col("e", bigquery.StringFieldType, "REQUIRED"), "a color"),
		col("arr", bigquery.StringFieldType, "REPEATED"),
		col("arr_rec", bigquery.RecordFieldType, "REPEATED", col("y", bigquery.StringFieldType, "REQUIRED")),
		col("arr_arr", bigquery.RecordFieldType, "REPEATED", col("items", bigquery.IntegerFieldType, "REPEATED")),
		col("m", bigquery.RecordFieldType, "REPEATED",
			col("key", bigquery.StringFieldType, "REQUIRED"),
			col("value", bigquery.IntegerFieldType, "REQUIRED"),
		),
		col("m_opt", bigquery.RecordFieldType, "REPEATED",
			col("key", bigquery.StringFieldType, "REQUIRED"),
			col("value", bigquery.StringFieldType, "NULLABLE"),
		),
		col("fx", bigquery.BytesFieldType, "REQUIRED"),
		col("opt", bigquery.StringFieldType, "NULLABLE"),
		col("opt_null", bigquery.StringFieldType, "NULLABLE"),
		col("opt_last", bigquery.StringFieldType, "NULLABLE"),
		col("multi", bigquery.RecordFieldType, "NULLABLE",
			col("string", bigquery.StringFieldType, "NULLABLE"),
			col("long", bigquery.IntegerFieldType, "NULLABLE"),
			described(col("Inner", bigquery.RecordFieldType, "NULLABLE", innerCols()...), "an inner record"),
		),
		col("multi_req", bigquery.RecordFieldType, "REQUIRED",
			col("string", bigquery.StringFieldType, "NULLABLE"),
			col("long", bigquery.IntegerFieldType, "NULLABLE"),
		),
		col("opt_arr", bigquery.IntegerFieldType, "REPEATED"),
		col("opt_map", bigquery.RecordFieldType, "REPEATED",
			col("key", bigquery.StringFieldType, "REQUIRED"),
			col("value", bigquery.IntegerFieldType, "REQUIRED"),
		),
		col("dec_bytes", bigquery.NumericFieldType, "REQUIRED"),
		col("dec_fixed", bigquery.NumericFieldType, "REQUIRED"),
		col("dec_big", bigquery.BigNumericFieldType, "REQUIRED"),
		col("dec_str", bigquery.StringFieldType, "REQUIRED"),
		col("date", bigquery.DateFieldType, "REQUIRED"),
		col("t_ms", bigquery.TimeFieldType, "REQUIRED"),
		col("t_us", bigquery.TimeFieldType, "REQUIRED"),
		col("ts_ms", bigquery.TimestampFieldType, "REQUIRED"),
		col("ts_us", bigquery.TimestampFieldType, "REQUIRED"),
		col("ts_ns", bigquery.IntegerFieldType, "REQUIRED"),
		col("lts_ms", bigquery.DateTimeFieldType, "REQUIRED"),
		col("lts_us", bigquery.DateTimeFieldType, "REQUIRED"),
		col("id", bigquery.StringFieldType, "REQUIRED"),
		col("dur", bigquery.BytesFieldType, "REQUIRED"),
		col("unknown_lt", bigquery.StringFieldType, "REQUIRED"),
		col("with_default", bigquery.IntegerFieldType, "REQUIRED"),
	})

	innerRow := func(x int64, y string) row { return row{"x": x, "deeper": row{"y": y}} }
	kv := func(k string, v bigquery.Value) row { return row{"key": k, "value": v} }
	sortEntries(tbl, "m")
	sortEntries(tbl, "m_opt")
	assertRows(t, tbl, "id", []row{
		{
			"b": true, "i": int64(math.MinInt32), "l": int64(math.MaxInt64),
			"f": float64(float32(-0.1)), "d": 2.25, "d_nan": math.NaN(), "d_inf": math.Inf(-1),
			"by": []byte{0, 1, 0xff}, "s": "héllo 😀",
			"rec":        innerRow(1, "z"),
			"e":          "GREEN",
			"arr":        list{"a", "", "b"},
			"arr_rec":    list{row{"y": "q"}, row{"y": "r"}},
			"arr_arr":    list{row{"items": list{int64(1), int64(-2)}}, row{"items": list{}}, row{"items": list{int64(math.MaxInt32)}}},
			"m":          list{kv("a", int64(3)), kv("b", int64(math.MinInt64))},
			"m_opt":      list{kv("n", nil), kv("s", "v")},
			"fx":         []byte{9, 8, 7, 6},
			"opt":        "o",
			"opt_null":   nil,
			"opt_last":   "last",
			"multi":      row{"string": nil, "long": nil, "Inner": innerRow(2, "w")},
			"multi_req":  row{"string": nil, "long": int64(42)},
			"opt_arr":    list{},
			"opt_map":    list{kv("a", int64(1))},
			"dec_bytes":  rat("-123.45"),
			"dec_fixed":  rat("0.000000001"),
			"dec_big":    rat("100000000000000000000000000000"),
			"dec_str":    "-0.01",
			"date":       civil.Date{Year: 1969, Month: 12, Day: 31},
			"t_ms":       civil.Time{Hour: 13, Minute: 4, Second: 5, Nanosecond: 6000000},
			"t_us":       civil.Time{Hour: 23, Minute: 59, Second: 59, Nanosecond: 999999000},
			"ts_ms":      time.Date(1969, 12, 31, 23, 59, 59, 999000000, time.UTC),
			"ts_us":      time.Date(2023, 11, 14, 22, 13, 20, 123456000, time.UTC),
			"ts_ns":      int64(1700000000123456789),
			"lts_ms":     civil.DateTime{Date: civil.Date{Year: 1969, Month: 7, Day: 20}, Time: civil.Time{Hour: 20, Minute: 17, Second: 40, Nanosecond: 123000000}},
			"lts_us":     civil.DateTime{Date: civil.Date{Year: 2023, Month: 11, Day: 14}, Time: civil.Time{Hour: 22, Minute: 13, Second: 20, Nanosecond: 123456000}},
			"id":         "00000000-0000-4000-8000-000000000001",
			"dur":        []byte{1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0},
			"unknown_lt": `{"a":1}`, "with_default": int64(7),
		},
		{
			"b": false, "i": int64(math.MaxInt32), "l": int64(math.MinInt64),
			"f": math.Inf(1), "d": -math.MaxFloat64, "d_nan": math.NaN(), "d_inf": math.Inf(1),
			"by": []byte{}, "s": "",
			"rec":        innerRow(-1, ""),
			"e":          "RED",
			"arr":        list{},
			"arr_rec":    list{},
			"arr_arr":    list{},
			"m":          list{},
			"m_opt":      list{},
			"fx":         []byte{0, 0, 0, 0},
			"opt":        nil,
			"opt_null":   "set",
			"opt_last":   nil,
			"multi":      row{"string": "branch", "long": nil, "Inner": nil},
			"multi_req":  row{"string": "s", "long": nil},
			"opt_arr":    list{int64(1), int64(-2)},
			"opt_map":    list{},
			"dec_bytes":  rat("99999999.9999"),
			"dec_fixed":  rat("-99999999999999999999999999999.999999999"),
			"dec_big":    rat("-999999999999999999999999999999.9999999999"),
			"dec_str":    wide + ".99",
			"date":       civil.Date{Year: 1, Month: 1, Day: 1},
			"t_ms":       civil.Time{},
			"t_us":       civil.Time{Nanosecond: 1000},
			"ts_ms":      time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
			"ts_us":      time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC),
			"ts_ns":      int64(math.MinInt64),
			"lts_ms":     civil.DateTime{Date: civil.Date{Year: 1, Month: 1, Day: 1}},
			"lts_us":     civil.DateTime{Date: civil.Date{Year: 9999, Month: 12, Day: 31}, Time: civil.Time{Hour: 23, Minute: 59, Second: 59, Nanosecond: 999999000}},
			"id":         "00000000-0000-4000-8000-000000000002",
			"dur":        make([]byte, 12),
			"unknown_lt": "", "with_default": int64(-7),
		},
		{
			"b": true, "i": int64(0), "l": int64(0),
			"f": float64(float32(math.SmallestNonzeroFloat32)), "d": math.SmallestNonzeroFloat64, "d_nan": math.NaN(), "d_inf": math.Inf(-1),
			"by": []byte("x"), "s": "tab\tnewline\nquote\"",
			"rec":        innerRow(0, "y"),
			"e":          "GREEN",
			"arr":        list{"only"},
			"arr_rec":    list{row{"y": ""}},
			"arr_arr":    list{row{"items": list{}}},
			"m":          list{kv("", int64(0))},
			"m_opt":      list{kv("k", "")},
			"fx":         []byte{0xff, 0xff, 0xff, 0xff},
			"opt":        "",
			"opt_null":   nil,
			"opt_last":   "",
			"multi":      row{"string": nil, "long": int64(-1), "Inner": nil},
			"multi_req":  row{"string": nil, "long": int64(math.MinInt64)},
			"opt_arr":    list{},
			"opt_map":    list{},
			"dec_bytes":  rat("0"),
			"dec_fixed":  rat("1"),
			"dec_big":    rat("-0.0000000001"),
			"dec_str":    "0.00",
			"date":       civil.Date{Year: 9999, Month: 12, Day: 31},
			"t_ms":       civil.Time{Hour: 23, Minute: 59, Second: 59, Nanosecond: 999000000},
			"t_us":       civil.Time{},
			"ts_ms":      time.Date(1900, 2, 28, 12, 0, 0, 1000000, time.UTC),
			"ts_us":      time.Unix(0, 0).UTC(),
			"ts_ns":      int64(0),
			"lts_ms":     civil.DateTime{Date: civil.Date{Year: 2024, Month: 2, Day: 29}, Time: civil.Time{Hour: 23, Minute: 59, Second: 59, Nanosecond: 999000000}},
			"lts_us":     civil.DateTime{Date: civil.Date{Year: 1970, Month: 1, Day: 1}, Time: civil.Time{Nanosecond: 1000}},
			"id":         "00000000-0000-4000-8000-000000000003",
			"dur":        []byte{0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff},
			"unknown_lt": "[]", "with_default": int64(0),
		},
	})
	assertNoRejections(t, s.metrics)
}

// A writer schema whose column BigQuery cannot take in place (delta turned
// from int to string) sends exactly its records to the error path, with a
// log naming the column and both types. The table keeps its schema and the
// records around them all land.
func TestIncompatibleSchemaChangeGoesToErrorPath(t *testing.T) {
	ctx := t.Context()
	e := itest.NewEnv(t)
	v3 := strings.Replace(stack.Schema("sms_physical_stock_updates.v1.avsc"),
		`{"name": "delta", "type": "int"}`, `{"name": "delta", "type": "string"}`, 1)
	if !strings.Contains(v3, `"delta", "type": "string"`) {
		t.Fatal("v3 fixture: delta's type was not replaced")
	}
	if err := e.St.Registry.SetCompat(stack.StockSubject, sr.CompatNone); err != nil {
		t.Fatal(err)
	}
	v3ID, err := e.St.Register(stack.StockSubject, v3)
	if err != nil {
		t.Fatal(err)
	}

	var v1 []stack.StockUpdate
	for _, u := range stack.StockUpdates(100, 11) {
		if !u.V2 && len(v1) < 20 {
			v1 = append(v1, u)
		}
	}
	var recs []*kgo.Record
	add := func(us []stack.StockUpdate) {
		for _, u := range us {
			r, err := e.Schemas.Record(u)
			if err != nil {
				t.Fatal(err)
			}
			r.Key = []byte("one-partition") // v1 first creates the table
			recs = append(recs, r)
		}
	}
	add(v1[:10])
	v3Recs := encodeRecords(t, stack.StockTopic, v3ID, []string{v3}, []map[string]any{
		v3Record("v3-a", "+5"), v3Record("v3-b", "-2"), v3Record("v3-c", "seven"),
	})
	for _, r := range v3Recs {
		r.Key = []byte("one-partition")
	}
	recs = append(recs, v3Recs...)
	add(v1[10:])

	s, tbl := pipeline(ctx, t, e.St, stack.StockTopic, stack.StockTable, recs)

	assertSchema(t, tbl.Schema, bigquery.Schema{
		col("timestamp", bigquery.IntegerFieldType, "REQUIRED"),
		col("process_reference", bigquery.StringFieldType, "NULLABLE"),
		col("variant_id", bigquery.IntegerFieldType, "REQUIRED"),
		col("warehouse_id", bigquery.IntegerFieldType, "REQUIRED"),
		col("warehouse_name", bigquery.StringFieldType, "REQUIRED"),
		col("huubclient_id", bigquery.IntegerFieldType, "REQUIRED"),
		col("ean", bigquery.StringFieldType, "REQUIRED"),
		col("reference", bigquery.StringFieldType, "REQUIRED"),
		col("sales_channel_type", bigquery.StringFieldType, "REQUIRED"),
		col("delta", bigquery.IntegerFieldType, "REQUIRED"),
		col("stock_after_adjust", bigquery.IntegerFieldType, "REQUIRED"),
	})
	if len(tbl.Rows) != len(v1) {
		t.Errorf("%d rows, want the %d v1 records", len(tbl.Rows), len(v1))
	}
	rows := byKey(t, tbl)
	for _, u := range v1 {
		got := rows[itest.Key(u.EAN, u.Timestamp)]
		if len(got) != 1 {
			t.Fatalf("v1 record %s: %d rows", u.EAN, len(got))
		}
		checkRow(t, u, got[0])
	}

	if n := counter(t, s.metrics, "bqsink_records_rejected_total", "reason", "incompatible_schema"); n != float64(len(v3Recs)) {
		t.Errorf("rejected incompatible_schema = %v, want %d", n, len(v3Recs))
	}
	rejected := s.errors.FilterMessage("record rejected").FilterField(zap.String("reason", "incompatible_schema")).All()
	if len(rejected) != len(v3Recs) {
		t.Fatalf("%d incompatible_schema rejections logged, want %d; error logs: %v", len(rejected), len(v3Recs), s.errors.All())
	}
	for _, entry := range rejected {
		msg, _ := entry.ContextMap()["error"].(string)
		for _, want := range []string{`column "delta"`, "INTEGER", "STRING"} {
			if !strings.Contains(msg, want) {
				t.Errorf("rejection log %q does not name %s", msg, want)
			}
		}
		if strings.Index(msg, "INTEGER") > strings.Index(msg, "STRING") {
			t.Errorf("rejection log %q names the new type before the old", msg)
		}
	}
}

// v3Record is a stock update under the incompatible v3, delta as a string.
func v3Record(ean, delta string) map[string]any {
	return map[string]any{
		"timestamp": int64(1762070400000), "process_reference": nil, "variant_id": 1, "warehouse_id": 1,
		"warehouse_name": "Porto Central", "huubclient_id": 1, "ean": ean, "reference": "REF-v3",
		"sales_channel_type": "b2c", "delta": delta, "stock_after_adjust": 1,
	}
}
