package bq

import (
	"math"
	"strings"
	"testing"

	"cloud.google.com/go/bigquery"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// typicalSchema is a 14-column row like the ones bqsink writes.
func typicalSchema() bigquery.Schema {
	return bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		col("name", bigquery.StringFieldType, "NULLABLE"),
		col("price", bigquery.NumericFieldType, "NULLABLE"),
		col("big", bigquery.BigNumericFieldType, "NULLABLE"),
		col("weight", bigquery.FloatFieldType, "NULLABLE"),
		col("active", bigquery.BooleanFieldType, "NULLABLE"),
		col("created", bigquery.TimestampFieldType, "REQUIRED"),
		col("day", bigquery.DateFieldType, "NULLABLE"),
		col("at", bigquery.TimeFieldType, "NULLABLE"),
		col("local", bigquery.DateTimeFieldType, "NULLABLE"),
		col("payload", bigquery.BytesFieldType, "NULLABLE"),
		col("tags", bigquery.StringFieldType, "REPEATED"),
		col("address", bigquery.RecordFieldType, "NULLABLE",
			col("street", bigquery.StringFieldType, "NULLABLE"),
			col("zip", bigquery.IntegerFieldType, "REQUIRED")),
		col("lines", bigquery.RecordFieldType, "REPEATED",
			col("sku", bigquery.StringFieldType, "REQUIRED"),
			col("qty", bigquery.IntegerFieldType, "NULLABLE")),
	}
}

func typicalRow() map[string]any {
	return map[string]any{
		"id":      int64(42),
		"name":    "Ünïcode wärehouse",
		"price":   "-123.4500",
		"big":     "12345678901234567890.123456789012345678",
		"weight":  2.5,
		"active":  true,
		"created": int64(1_700_000_000_123_456),
		"day":     int32(19700),
		"at":      "15:04:05.000000",
		"local":   "2006-01-02 15:04:05.000000",
		"payload": []byte{0, 1, 2, 255},
		"tags":    []any{"a", "b"},
		"address": map[string]any{"street": "Main St", "zip": int32(1234)},
		"lines":   []any{map[string]any{"sku": "X-1", "qty": 3}, map[string]any{"sku": "Y-2"}},
	}
}

// decode parses b with the wire descriptor, as BigQuery does.
func decode(t *testing.T, enc *encoder, b []byte) *dynamicpb.Message {
	t.Helper()
	msg := dynamicpb.NewMessage(wireMessage(t, enc))
	if err := proto.Unmarshal(b, msg); err != nil {
		t.Fatalf("unmarshal with wire descriptor: %v", err)
	}
	return msg
}

func field(t *testing.T, m protoreflect.Message, name string) protoreflect.Value {
	t.Helper()
	fd := m.Descriptor().Fields().ByName(protoreflect.Name(name))
	if fd == nil {
		t.Fatalf("message %s has no field %q", m.Descriptor().FullName(), name)
	}
	return m.Get(fd)
}

func TestEncoderWireTypes(t *testing.T) {
	enc, err := newEncoder(typicalSchema(), false)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]descriptorpb.FieldDescriptorProto_Type{
		"id": descriptorpb.FieldDescriptorProto_TYPE_INT64, "name": descriptorpb.FieldDescriptorProto_TYPE_STRING,
		"price": descriptorpb.FieldDescriptorProto_TYPE_STRING, "big": descriptorpb.FieldDescriptorProto_TYPE_STRING,
		"weight": descriptorpb.FieldDescriptorProto_TYPE_DOUBLE, "active": descriptorpb.FieldDescriptorProto_TYPE_BOOL,
		"created": descriptorpb.FieldDescriptorProto_TYPE_INT64, "day": descriptorpb.FieldDescriptorProto_TYPE_INT32,
		"at": descriptorpb.FieldDescriptorProto_TYPE_STRING, "local": descriptorpb.FieldDescriptorProto_TYPE_STRING,
		"payload": descriptorpb.FieldDescriptorProto_TYPE_BYTES, "tags": descriptorpb.FieldDescriptorProto_TYPE_STRING,
		"address": descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, "lines": descriptorpb.FieldDescriptorProto_TYPE_MESSAGE,
	}
	labels := map[string]descriptorpb.FieldDescriptorProto_Label{
		"id": descriptorpb.FieldDescriptorProto_LABEL_REQUIRED, "name": descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL,
		"tags": descriptorpb.FieldDescriptorProto_LABEL_REPEATED, "lines": descriptorpb.FieldDescriptorProto_LABEL_REPEATED,
	}
	for _, f := range enc.dp.GetField() {
		if w, ok := want[f.GetName()]; !ok || f.GetType() != w {
			t.Errorf("field %s: type %v, want %v", f.GetName(), f.GetType(), w)
		}
		if l, ok := labels[f.GetName()]; ok && f.GetLabel() != l {
			t.Errorf("field %s: label %v, want %v", f.GetName(), f.GetLabel(), l)
		}
	}
	if len(enc.dp.GetField()) != len(want) {
		t.Errorf("descriptor has %d fields, want %d", len(enc.dp.GetField()), len(want))
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	enc, err := newEncoder(typicalSchema(), false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := enc.encode(typicalRow())
	if err != nil {
		t.Fatal(err)
	}
	m := decode(t, enc, b)
	if got := field(t, m, "id").Int(); got != 42 {
		t.Errorf("id = %d", got)
	}
	if got := field(t, m, "price").String(); got != "-123.4500" {
		t.Errorf("price = %q", got)
	}
	if got := field(t, m, "day").Int(); got != 19700 {
		t.Errorf("day = %d", got)
	}
	if got := field(t, m, "created").Int(); got != 1_700_000_000_123_456 {
		t.Errorf("created = %d", got)
	}
	if got := field(t, m, "tags").List(); got.Len() != 2 || got.Get(1).String() != "b" {
		t.Errorf("tags = %v", got)
	}
	addr := field(t, m, "address").Message()
	if got := field(t, addr, "zip").Int(); got != 1234 {
		t.Errorf("address.zip = %d", got)
	}
	lines := field(t, m, "lines").List()
	if lines.Len() != 2 || field(t, lines.Get(1).Message(), "sku").String() != "Y-2" {
		t.Errorf("lines = %v", lines)
	}
	if m.Has(m.Descriptor().Fields().ByName("weight")) == false {
		t.Error("weight missing")
	}

	// NULLs: absent and nil both leave the field unset.
	row := typicalRow()
	delete(row, "name")
	row["weight"] = nil
	row["tags"] = nil
	b, err = enc.encode(row)
	if err != nil {
		t.Fatal(err)
	}
	m = decode(t, enc, b)
	for _, name := range []string{"name", "weight", "tags"} {
		if m.Has(m.Descriptor().Fields().ByName(protoreflect.Name(name))) {
			t.Errorf("%s set, want NULL", name)
		}
	}
}

func TestEncodeSpecialFloats(t *testing.T) {
	enc, err := newEncoder(bigquery.Schema{col("f", bigquery.FloatFieldType, "REPEATED")}, false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := enc.encode(map[string]any{"f": []any{math.NaN(), math.Inf(1), math.Inf(-1), float32(1.5)}})
	if err != nil {
		t.Fatal(err)
	}
	l := field(t, decode(t, enc, b), "f").List()
	if !math.IsNaN(l.Get(0).Float()) || !math.IsInf(l.Get(1).Float(), 1) || !math.IsInf(l.Get(2).Float(), -1) || l.Get(3).Float() != 1.5 {
		t.Errorf("floats = %v %v %v %v", l.Get(0), l.Get(1), l.Get(2), l.Get(3))
	}
}

func TestEncodeRejectsBadValues(t *testing.T) {
	enc, err := newEncoder(typicalSchema(), false)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		edit   func(map[string]any)
		column string // must appear in the error
	}{
		{"float in INTEGER", func(r map[string]any) { r["id"] = 1.5 }, `"id"`},
		{"string in INTEGER", func(r map[string]any) { r["id"] = "42" }, `"id"`},
		{"uint64 overflow", func(r map[string]any) { r["id"] = uint64(math.MaxUint64) }, `"id"`},
		{"missing REQUIRED", func(r map[string]any) { delete(r, "created") }, `"created"`},
		{"null REQUIRED", func(r map[string]any) { r["id"] = nil }, `"id"`},
		{"unknown column", func(r map[string]any) { r["nope"] = 1 }, `"nope"`},
		{"nested unknown column", func(r map[string]any) { r["address"] = map[string]any{"zip": 1, "x": 2} }, `"x"`},
		{"nested missing REQUIRED", func(r map[string]any) { r["address"] = map[string]any{"street": "s"} }, `"address.zip"`},
		{"REQUIRED in repeated record", func(r map[string]any) { r["lines"] = []any{map[string]any{"qty": 1}} }, `"lines.sku"`},
		{"invalid UTF-8", func(r map[string]any) { r["name"] = "\xff" }, `"name"`},
		{"float in NUMERIC", func(r map[string]any) { r["price"] = 1.5 }, `"price"`},
		{"malformed NUMERIC", func(r map[string]any) { r["price"] = "1.2.3" }, `"price"`},
		{"NUMERIC too large", func(r map[string]any) { r["price"] = strings.Repeat("9", 30) }, `"price"`},
		{"DATE out of range", func(r map[string]any) { r["day"] = int32(3_000_000) }, `"day"`},
		{"DATE as string", func(r map[string]any) { r["day"] = "2024-01-01" }, `"day"`},
		{"bad TIME", func(r map[string]any) { r["at"] = "25:00:00" }, `"at"`},
		{"bad DATETIME", func(r map[string]any) { r["local"] = "2023-02-29 00:00:00" }, `"local"`},
		{"TIMESTAMP out of range", func(r map[string]any) { r["created"] = int64(math.MaxInt64) }, `"created"`},
		{"string in BYTES", func(r map[string]any) { r["payload"] = "abc" }, `"payload"`},
		{"typed slice for REPEATED", func(r map[string]any) { r["tags"] = []string{"a"} }, `"tags"`},
		{"null in array", func(r map[string]any) { r["tags"] = []any{"a", nil} }, `"tags"`},
		{"wrong element", func(r map[string]any) { r["tags"] = []any{"a", 1} }, `"tags"`},
		{"struct not a map", func(r map[string]any) { r["address"] = "Main St" }, `"address"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			row := typicalRow()
			tc.edit(row)
			_, err := enc.encode(row)
			if err == nil {
				t.Fatal("encode accepted the row")
			}
			if !strings.Contains(err.Error(), tc.column) {
				t.Errorf("error %q does not name column %s", err, tc.column)
			}
		})
	}
}

func TestEncodeAcceptsIntKindsAndCase(t *testing.T) {
	enc, err := newEncoder(bigquery.Schema{col("N", bigquery.IntegerFieldType, "REPEATED"), col("d", bigquery.DateFieldType, "NULLABLE")}, false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := enc.encode(map[string]any{"n": []any{int(1), int32(2), int64(3), uint8(4)}, "d": int64(-719162)})
	if err != nil {
		t.Fatal(err)
	}
	m := decode(t, enc, b)
	l := field(t, m, "N").List()
	if l.Len() != 4 || l.Get(0).Int() != 1 || l.Get(3).Int() != 4 {
		t.Errorf("N = %v", l)
	}
	if field(t, m, "d").Int() != -719162 {
		t.Errorf("d = %v", field(t, m, "d"))
	}
}

func TestValidators(t *testing.T) {
	for s, want := range map[string]bool{
		"0": true, "-123.4500": true, "+1": true, ".5": true, "5.": true, "1e10": true, "1.5E-3": true,
		"": false, "-": false, ".": false, "1.2.3": false, "1e": false, "abc": false, " 1": false, "0x10": false,
		strings.Repeat("9", 29) + ".999999999": true, strings.Repeat("9", 30): false, "000" + strings.Repeat("9", 29): true,
	} {
		if got := validDecimal(s, 29); got != want {
			t.Errorf("validDecimal(%q) = %v, want %v", s, got, want)
		}
	}
	for s, want := range map[string]bool{
		"00:00:00": true, "23:59:59.999999": true, "15:04:05.1": true,
		"24:00:00": false, "12:60:00": false, "12:00:00.": false, "12:00:00.1234567": false, "1:00:00": false,
	} {
		if got := validTime(s); got != want {
			t.Errorf("validTime(%q) = %v, want %v", s, got, want)
		}
	}
	for s, want := range map[string]bool{
		"2006-01-02 15:04:05.000000": true, "2024-02-29T00:00:00": true, "0001-01-01 00:00:00": true,
		"2023-02-29 00:00:00": false, "0000-01-01 00:00:00": false, "2006-13-01 00:00:00": false, "2006-01-02": false,
	} {
		if got := validDateTime(s); got != want {
			t.Errorf("validDateTime(%q) = %v, want %v", s, got, want)
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	enc, err := newEncoder(typicalSchema(), false)
	if err != nil {
		b.Fatal(err)
	}
	row := typicalRow()
	b.ReportAllocs()
	var bytes int
	for b.Loop() {
		out, err := enc.encode(row)
		if err != nil {
			b.Fatal(err)
		}
		bytes = len(out)
	}
	b.ReportMetric(1, "rows/op")
	b.ReportMetric(float64(bytes), "bytes/row")
}

func BenchmarkTableEncode(b *testing.B) {
	s := newFake(b)
	c := newTestClient(b, s)
	tbl := c.Table("bench")
	if err := tbl.EnsureSchema(b.Context(), typicalSchema()); err != nil {
		b.Fatal(err)
	}
	row := typicalRow()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tbl.Encode(row); err != nil {
			b.Fatal(err)
		}
	}
}
