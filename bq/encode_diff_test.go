package bq

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// allTypesSchema has every column type bq writes in every mode, records
// nested two deep and repeated, more than 15 columns (two-byte keys), legacy
// type names, a column bq cannot write, and names that are not ASCII or
// longer than 64 bytes.
func allTypesSchema() bigquery.Schema {
	inner := func() []*bigquery.FieldSchema {
		return []*bigquery.FieldSchema{
			col("s", bigquery.StringFieldType, "NULLABLE"),
			col("n", "INT64", "REQUIRED"),
			col("fs", bigquery.FloatFieldType, "REPEATED"),
			col("deep", "STRUCT", "NULLABLE",
				col("by", bigquery.BytesFieldType, "NULLABLE"),
				col("ts", bigquery.TimestampFieldType, "REPEATED"),
				col("d", bigquery.DateFieldType, "NULLABLE")),
		}
	}
	return bigquery.Schema{
		col("b", bigquery.BooleanFieldType, "NULLABLE"),
		col("i", bigquery.IntegerFieldType, "REQUIRED"),
		col("f", "FLOAT64", "NULLABLE"),
		col("s", bigquery.StringFieldType, "NULLABLE"),
		col("by", bigquery.BytesFieldType, "NULLABLE"),
		col("num", bigquery.NumericFieldType, "NULLABLE"),
		col("bignum", bigquery.BigNumericFieldType, "NULLABLE"),
		col("d", bigquery.DateFieldType, "NULLABLE"),
		col("t", bigquery.TimeFieldType, "NULLABLE"),
		col("dt", bigquery.DateTimeFieldType, "NULLABLE"),
		col("ts", bigquery.TimestampFieldType, "REQUIRED"),
		col("geo", bigquery.GeographyFieldType, "NULLABLE"),
		col("js", bigquery.JSONFieldType, "NULLABLE"),
		col("iv", bigquery.IntervalFieldType, "NULLABLE"),
		col("rb", "BOOL", "REPEATED"),
		col("ri", bigquery.IntegerFieldType, "REPEATED"),
		col("rf", bigquery.FloatFieldType, "REPEATED"),
		col("rs", bigquery.StringFieldType, "REPEATED"),
		col("rby", bigquery.BytesFieldType, "REPEATED"),
		col("rnum", bigquery.NumericFieldType, "REPEATED"),
		col("rbig", bigquery.BigNumericFieldType, "REPEATED"),
		col("rd", bigquery.DateFieldType, "REPEATED"),
		col("rt", bigquery.TimeFieldType, "REPEATED"),
		col("rdt", bigquery.DateTimeFieldType, "REPEATED"),
		col("rts", bigquery.TimestampFieldType, "REPEATED"),
		col("rjs", bigquery.JSONFieldType, "REPEATED"),
		col("rec", bigquery.RecordFieldType, "NULLABLE", inner()...),
		col("recreq", bigquery.RecordFieldType, "REQUIRED", inner()...),
		col("recs", bigquery.RecordFieldType, "REPEATED", inner()...),
		col("Mixed_Case", bigquery.StringFieldType, "NULLABLE"),
		col("Ünï_côl", bigquery.StringFieldType, "NULLABLE"),
		col("A_"+strings.Repeat("long_", 14)+"name", bigquery.IntegerFieldType, "NULLABLE"),
	}
}

// wireMessage is the row message as BigQuery rebuilds it from the wire
// descriptor.
func wireMessage(t testing.TB, enc *encoder) protoreflect.MessageDescriptor {
	t.Helper()
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name:        proto.String("wire.proto"),
		Syntax:      proto.String("proto2"),
		MessageType: []*descriptorpb.DescriptorProto{enc.dp},
	}, nil)
	if err != nil {
		t.Fatalf("wire descriptor is not self-contained: %v", err)
	}
	return fd.Messages().Get(0)
}

// differ holds the encoder to the dynamicpb reference for one schema.
type differ struct {
	enc  *encoder
	ref  *refEncoder
	wire protoreflect.MessageDescriptor
}

func newDiffer(t testing.TB, s bigquery.Schema) *differ {
	t.Helper()
	enc, err := newEncoder(s, false)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := newRefEncoder(s)
	if err != nil {
		t.Fatal(err)
	}
	return &differ{enc: enc, ref: ref, wire: wireMessage(t, enc)}
}

// check encodes row with both encoders. Both must accept it or both reject
// it; with exact errors, the messages must match too (a row with several
// faults may be blamed on any of them, as the reference walks a map).
// Accepted rows must decode to equal messages, and the encoder's bytes must
// be the canonical (deterministic) encoding of that message.
func (d *differ) check(row map[string]any, exactErr bool) error {
	got, gotErr := d.enc.encode(row)
	want, wantErr := d.ref.encode(row)
	switch {
	case gotErr != nil && wantErr != nil:
		if exactErr && gotErr.Error() != wantErr.Error() {
			return fmt.Errorf("error %q, reference says %q", gotErr, wantErr)
		}
		return nil
	case gotErr != nil:
		return fmt.Errorf("rejected (%v), reference accepted", gotErr)
	case wantErr != nil:
		return fmt.Errorf("accepted, reference rejected (%v)", wantErr)
	}
	gm, wm := dynamicpb.NewMessage(d.wire), dynamicpb.NewMessage(d.wire)
	if err := proto.Unmarshal(got, gm); err != nil {
		return fmt.Errorf("unmarshal encoder bytes: %v", err)
	}
	if err := proto.Unmarshal(want, wm); err != nil {
		return fmt.Errorf("unmarshal reference bytes: %v", err)
	}
	if !proto.Equal(gm, wm) {
		return fmt.Errorf("decoded messages differ\n got %v\nwant %v", gm, wm)
	}
	canon, err := proto.MarshalOptions{Deterministic: true}.Marshal(wm)
	if err != nil {
		return fmt.Errorf("marshal reference message: %v", err)
	}
	if !bytes.Equal(got, canon) {
		return fmt.Errorf("bytes are not the canonical encoding\n got %x\nwant %x", got, canon)
	}
	again, err := d.enc.encode(row)
	if err != nil || !bytes.Equal(again, got) {
		return fmt.Errorf("encoding the row again gave %x, %v", again, err)
	}
	return nil
}

func fullRow() map[string]any {
	rec := func(n int) map[string]any {
		deep := map[string]any{"by": []byte{0, 0xff}, "ts": []any{int64(-1), int64(maxTimestamp)}, "d": int32(-1)}
		return map[string]any{"s": "rec", "n": int64(n), "fs": []any{1.5, math.Inf(-1)}, "deep": deep}
	}
	return map[string]any{
		"b": false, "i": int64(math.MinInt64), "f": math.Copysign(0, -1), "s": "", "by": []byte{},
		"num": "-123.4500", "bignum": "1" + strings.Repeat("0", 38) + "." + strings.Repeat("9", 38),
		"d": int32(minDate), "t": "23:59:59.999999", "dt": "9999-12-31T23:59:59", "ts": int64(minTimestamp),
		"geo": "POINT(1 2)", "js": `{"a":[1,2]}`,
		"rb": []any{true, false, true}, "ri": []any{int64(-1), 0, uint32(7), int64(math.MaxInt64)},
		"rf": []any{math.NaN(), math.Inf(1), float32(0.1), 0.0}, "rs": []any{"a", "", "ü"},
		"rby": []any{[]byte(nil), []byte("x")}, "rnum": []any{"0", "1e10"}, "rbig": []any{".5"},
		"rd": []any{int32(maxDate), int32(-1), 0}, "rt": []any{"00:00:00"}, "rdt": []any{"2024-02-29 12:00:00.5"},
		"rts": []any{int64(0), int64(minTimestamp)}, "rjs": []any{"null"},
		"rec": rec(1), "recreq": rec(2), "recs": []any{rec(3), map[string]any{"n": 0}, rec(4)},
		"Mixed_Case": "mc",
	}
}

func TestEncodeMatchesDynamicpb(t *testing.T) {
	d := newDiffer(t, allTypesSchema())
	minimal := func() map[string]any {
		return map[string]any{"i": 1, "ts": int64(0), "recreq": map[string]any{"n": 1}}
	}
	with := func(base map[string]any, kv ...any) map[string]any {
		for i := 0; i+1 < len(kv); i += 2 {
			base[kv[i].(string)] = kv[i+1]
		}
		return base
	}
	long := strings.Repeat("ünïcode ", 3000) // 27000 bytes: three-byte lengths at every level
	many := make([]any, 300)
	for i := range many {
		many[i] = float64(i) / 3
	}
	tests := []struct {
		name string
		row  map[string]any
	}{
		{"every column", fullRow()},
		{"only REQUIRED", minimal()},
		{"explicit NULLs", func() map[string]any {
			r := minimal()
			for _, f := range writableSchema(allTypesSchema()) {
				if _, ok := r[f.Name]; !ok {
					r[f.Name] = nil
				}
			}
			return r
		}()},
		{"empty repeated", with(minimal(), "rb", []any{}, "ri", []any(nil), "rs", []any{}, "recs", []any{},
			"recreq", map[string]any{"n": 1, "fs": []any{}, "deep": map[string]any{"ts": []any{}}})},
		{"empty records", with(minimal(), "rec", map[string]any{"n": 0, "deep": map[string]any{}},
			"recs", []any{map[string]any{"n": 1, "deep": map[string]any(nil)}})},
		{"typed nils", with(minimal(), "by", []byte(nil), "rby", []any{[]byte(nil)})},
		{"names differ in case", map[string]any{"I": 1, "Ts": int64(5), "RECREQ": map[string]any{"N": 2, "Deep": map[string]any{"BY": []byte("x")}},
			"mixed_case": "lower", "RS": []any{"x"}, "üNÏ_CÔL": "x", strings.ToUpper("A_" + strings.Repeat("long_", 14) + "name"): 7}},
		{"exact and other-case names", with(fullRow(), "Rec", fullRow()["rec"], "MIXED_CASE", "upper", "rec", nil, "Mixed_Case", nil)},
		{"nested records over 127 and 16383 bytes", with(minimal(), "recreq", map[string]any{"n": 1, "s": long,
			"deep": map[string]any{"by": []byte(long[:200])}}, "recs", []any{map[string]any{"n": 2, "s": long[:130]}})},
		{"packed run over 127 bytes", with(minimal(), "rf", many, "ri", []any{int64(-1), int64(-1), int64(-1), int64(-1), int64(-1), int64(-1), int64(-1), int64(-1), int64(-1), int64(-1), int64(-1), int64(-1), int64(-1)})},
		{"every integer kind", with(minimal(), "ri", []any{int(1), int8(-2), int16(-3), int32(-4), int64(-5), uint(6), uint8(7), uint16(8), uint32(9), uint64(math.MaxInt64)},
			"rd", []any{int64(minDate), int(maxDate), int16(-1), uint8(1)}, "ts", uint64(maxTimestamp))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := d.check(tc.row, true); err != nil {
				t.Fatal(err)
			}
			if _, err := d.enc.encode(tc.row); err != nil {
				t.Fatalf("rejected a valid row: %v", err)
			}
		})
	}
}

func TestEncodeErrorsMatchDynamicpb(t *testing.T) {
	d := newDiffer(t, allTypesSchema())
	tests := []struct {
		name string
		edit func(map[string]any)
	}{
		{"float in INTEGER", func(r map[string]any) { r["i"] = 1.5 }},
		{"uint64 overflow", func(r map[string]any) { r["ri"] = []any{uint64(math.MaxUint64)} }},
		{"int in FLOAT", func(r map[string]any) { r["f"] = 1 }},
		{"string in BOOLEAN", func(r map[string]any) { r["rb"] = []any{true, "false"} }},
		{"missing REQUIRED", func(r map[string]any) { delete(r, "ts") }},
		{"null REQUIRED record", func(r map[string]any) { r["recreq"] = nil }},
		{"unknown column", func(r map[string]any) { r["nope"] = 1 }},
		{"unwritable column", func(r map[string]any) { r["iv"] = "1-2" }},
		{"first unknown column by name", func(r map[string]any) { r["zz"], r["aa"], r["mm"] = 1, nil, 2 }},
		{"nested unknown column", func(r map[string]any) { r["rec"].(map[string]any)["x"] = 1 }},
		{"deep unknown column", func(r map[string]any) { r["recreq"].(map[string]any)["deep"] = map[string]any{"q": 1} }},
		{"nested missing REQUIRED", func(r map[string]any) { delete(r["rec"].(map[string]any), "n") }},
		{"REQUIRED in repeated record", func(r map[string]any) { r["recs"] = []any{map[string]any{"n": 1}, map[string]any{"s": "x"}} }},
		{"invalid UTF-8", func(r map[string]any) { r["rs"] = []any{"ok", "\xc3"} }},
		{"invalid UTF-8 JSON", func(r map[string]any) { r["js"] = "\xff" }},
		{"malformed NUMERIC", func(r map[string]any) { r["rnum"] = []any{"1.2.3"} }},
		{"BIGNUMERIC too large", func(r map[string]any) { r["bignum"] = strings.Repeat("9", 40) }},
		{"DATE out of range", func(r map[string]any) { r["rec"].(map[string]any)["deep"].(map[string]any)["d"] = int64(minDate - 1) }},
		{"bad TIME", func(r map[string]any) { r["rt"] = []any{"12:00:00.1234567"} }},
		{"bad DATETIME", func(r map[string]any) { r["dt"] = "2023-02-29 00:00:00" }},
		{"TIMESTAMP out of range", func(r map[string]any) { r["rts"] = []any{int64(maxTimestamp + 1)} }},
		{"string in BYTES", func(r map[string]any) { r["by"] = "abc" }},
		{"typed slice for REPEATED", func(r map[string]any) { r["rf"] = []float64{1} }},
		{"null in array", func(r map[string]any) { r["rjs"] = []any{nil} }},
		{"null record in array", func(r map[string]any) { r["recs"] = []any{map[string]any{"n": 1}, nil} }},
		{"record element not a map", func(r map[string]any) { r["recs"] = []any{"x"} }},
		{"record not a map", func(r map[string]any) { r["rec"] = []any{} }},
		{"given twice", func(r map[string]any) { r["MIXED_CASE"] = "again" }},
		{"given twice in a record", func(r map[string]any) { r["recreq"].(map[string]any)["N"] = 5 }},
		{"repeated given twice", func(r map[string]any) { r["RS"] = []any{"again"} }},
		{"bad value beats unknown column", func(r map[string]any) { r["nope"], r["s"] = 1, 2 }},
		{"unknown column beats missing REQUIRED", func(r map[string]any) { r["nope"] = 1; delete(r, "i") }},
		{"bad value beats missing REQUIRED", func(r map[string]any) { r["s"] = 2; delete(r, "i") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			row := fullRow()
			tc.edit(row)
			if _, err := d.enc.encode(row); err == nil {
				t.Fatal("encode accepted the row")
			}
			if err := d.check(row, true); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// rowGen makes random rows for a schema, with faults at a given rate.
type rowGen struct {
	r      *rand.Rand
	rate   float64 // chance of a fault at each place one can go
	sparse bool    // leave most NULLABLE columns out
	faults int
}

func (g *rowGen) fault() bool {
	if g.r.Float64() < g.rate {
		g.faults++
		return true
	}
	return false
}

func (g *rowGen) row(s bigquery.Schema) map[string]any {
	g.faults = 0
	g.sparse = g.r.IntN(3) == 0
	return g.record(s)
}

func (g *rowGen) record(s bigquery.Schema) map[string]any {
	m := make(map[string]any)
	for _, f := range s {
		typ := canonicalType(f.Type)
		if !writableTypes[typ] {
			if g.fault() {
				m[f.Name] = "1-2" // an unknown column to the encoder
			}
			continue
		}
		key := f.Name
		if g.r.IntN(6) == 0 {
			key = strings.ToUpper(key)
		}
		required := f.Required && !f.Repeated
		absent := g.r.IntN(4) == 0 || (g.sparse && g.r.IntN(5) > 0)
		if required && absent && !g.fault() {
			absent = false
		}
		switch {
		case absent && g.r.IntN(2) == 0:
			continue
		case absent:
			m[key] = nil
			continue
		}
		v := g.value(f, typ)
		m[key] = v
		if arr, ok := v.([]any); ok && len(arr) == 0 {
			continue
		}
		if g.fault() {
			other := strings.ToLower(key)
			if other == key {
				other = strings.ToUpper(key)
			}
			dup := g.value(f, typ)
			for arr, ok := dup.([]any); ok && len(arr) == 0; arr, ok = dup.([]any) {
				dup = g.value(f, typ)
			}
			m[other] = dup
		}
	}
	if g.fault() {
		m[fmt.Sprintf("unknown%d", g.r.IntN(3))] = g.r.IntN(2)
	}
	return m
}

// value is a non-nil value for column f.
func (g *rowGen) value(f *bigquery.FieldSchema, typ bigquery.FieldType) any {
	if !f.Repeated {
		return g.one(f, typ)
	}
	if g.fault() {
		if g.r.IntN(2) == 0 {
			return []string{"typed"}
		}
		return g.one(f, typ)
	}
	n := g.r.IntN(5)
	if g.r.IntN(10) == 0 {
		n = 100 + g.r.IntN(100)
	}
	arr := make([]any, n)
	for i := range arr {
		if g.fault() {
			if g.r.IntN(2) == 0 {
				continue // a NULL element
			}
			arr[i] = struct{}{}
			continue
		}
		arr[i] = g.one(f, typ)
	}
	return arr
}

func (g *rowGen) one(f *bigquery.FieldSchema, typ bigquery.FieldType) any {
	if typ == bigquery.RecordFieldType {
		if g.fault() {
			return "not a record"
		}
		return g.record(f.Schema)
	}
	if g.fault() {
		return g.bad(typ)
	}
	return g.scalar(typ)
}

func (g *rowGen) pick(vs ...any) any { return vs[g.r.IntN(len(vs))] }

func (g *rowGen) digits(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('0' + g.r.IntN(10))
	}
	return string(b)
}

func (g *rowGen) str() string {
	n := g.r.IntN(12)
	if g.r.IntN(20) == 0 {
		n = 100 + g.r.IntN(20000)
	}
	alphabet := []rune("aZ09 _-ßü€😀\u0000")
	var b strings.Builder
	for range n {
		b.WriteRune(alphabet[g.r.IntN(len(alphabet))])
	}
	return b.String()
}

func (g *rowGen) decimal(maxInt, maxFrac int) string {
	sign := g.pick("", "-", "+").(string)
	if g.r.IntN(8) == 0 {
		return sign + g.digits(1+g.r.IntN(3)) + "e" + g.pick("", "-", "+").(string) + g.digits(1+g.r.IntN(4))
	}
	s := sign + strings.Repeat("0", g.r.IntN(3)) + g.digits(g.r.IntN(maxInt+1))
	if g.r.IntN(2) == 0 || s == sign {
		s += "." + g.digits(1+g.r.IntN(maxFrac))
	}
	return s
}

func (g *rowGen) time() string {
	s := fmt.Sprintf("%02d:%02d:%02d", g.r.IntN(24), g.r.IntN(60), g.r.IntN(60))
	if g.r.IntN(2) == 0 {
		s += "." + g.digits(1+g.r.IntN(6))
	}
	return s
}

func (g *rowGen) scalar(typ bigquery.FieldType) any {
	switch typ {
	case bigquery.BooleanFieldType:
		return g.r.IntN(2) == 0
	case bigquery.IntegerFieldType:
		return g.pick(int64(g.r.Uint64()), int64(0), int64(-1), int64(math.MinInt64), int64(math.MaxInt64),
			int(g.r.Int32()), int32(g.r.Int32()), int16(-7), int8(-8), uint8(200), uint16(60000), uint32(math.MaxUint32),
			uint64(math.MaxInt64), uint(g.r.Uint32()))
	case bigquery.FloatFieldType:
		return g.pick(g.r.NormFloat64()*1e6, math.NaN(), math.Inf(1), math.Inf(-1), 0.0, math.Copysign(0, -1),
			float32(g.r.Float32()), math.MaxFloat64, math.SmallestNonzeroFloat64)
	case bigquery.StringFieldType:
		return g.str()
	case bigquery.GeographyFieldType:
		return fmt.Sprintf("POINT(%d %d)", g.r.IntN(180), g.r.IntN(90))
	case bigquery.JSONFieldType:
		return fmt.Sprintf(`{"k":%q}`, g.str())
	case bigquery.BytesFieldType:
		switch g.r.IntN(4) {
		case 0:
			return []byte(nil)
		case 1:
			return []byte{}
		}
		b := make([]byte, g.r.IntN(300))
		for i := range b {
			b[i] = byte(g.r.Uint32())
		}
		return b
	case bigquery.NumericFieldType:
		return g.decimal(29, 9)
	case bigquery.BigNumericFieldType:
		return g.decimal(39, 38)
	case bigquery.DateFieldType:
		n := minDate + g.r.Int64N(maxDate-minDate+1)
		return g.pick(int32(n), n, int(n), int32(minDate), int32(maxDate))
	case bigquery.TimeFieldType:
		return g.time()
	case bigquery.DateTimeFieldType:
		y, mo := 1+g.r.IntN(9999), 1+g.r.IntN(12)
		d := 1 + g.r.IntN(daysIn(y, mo))
		return fmt.Sprintf("%04d-%02d-%02d%s%s", y, mo, d, g.pick(" ", "T"), g.time())
	case bigquery.TimestampFieldType:
		return g.pick(minTimestamp+g.r.Int64N(maxTimestamp-minTimestamp+1), int64(minTimestamp), int64(maxTimestamp), int64(0))
	}
	panic("rowGen: no values for " + typ)
}

func (g *rowGen) bad(typ bigquery.FieldType) any {
	switch typ {
	case bigquery.BooleanFieldType:
		return g.pick("true", 1)
	case bigquery.IntegerFieldType:
		return g.pick(1.5, "42", uint64(math.MaxUint64), uint(math.MaxUint64), true)
	case bigquery.FloatFieldType:
		return g.pick("1.5", int64(1), true)
	case bigquery.StringFieldType, bigquery.GeographyFieldType, bigquery.JSONFieldType:
		return g.pick("\xff", "ok\xc3", 1, []byte("x"))
	case bigquery.BytesFieldType:
		return g.pick("abc", []any{byte(1)})
	case bigquery.NumericFieldType:
		return g.pick(1.5, "1.2.3", strings.Repeat("9", 30), "", "1e", "0x10", "1e12345")
	case bigquery.BigNumericFieldType:
		return g.pick(strings.Repeat("9", 40), "abc", int64(1))
	case bigquery.DateFieldType:
		return g.pick(int32(3_000_000), "2024-01-01", int64(minDate-1), uint64(math.MaxUint64))
	case bigquery.TimeFieldType:
		return g.pick("25:00:00", "12:00", int64(5), "12:00:00.")
	case bigquery.DateTimeFieldType:
		return g.pick("2023-02-29 00:00:00", "0000-01-01 00:00:00", "2024-01-01", time.Time{})
	case bigquery.TimestampFieldType:
		return g.pick(int64(math.MaxInt64), int64(minTimestamp-1), "x", time.Time{})
	}
	panic("rowGen: no bad values for " + typ)
}

// checkRandomRows holds the encoder to the reference on n random rows.
func checkRandomRows(t *testing.T, d *differ, s bigquery.Schema, seed uint64, rate float64, n int) {
	t.Helper()
	g := &rowGen{r: rand.New(rand.NewPCG(seed, uint64(rate*1e6))), rate: rate}
	for i := range n {
		row := g.row(s)
		if err := d.check(row, g.faults <= 1); err != nil {
			t.Fatalf("seed %d rate %v row %d (%d faults): %v\nrow: %v", seed, rate, i, g.faults, err, row)
		}
	}
}

func TestEncodeMatchesDynamicpbRandom(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	for _, s := range []bigquery.Schema{allTypesSchema(), typicalSchema()} {
		d := newDiffer(t, s)
		for _, rate := range []float64{0, 0.002, 0.02, 0.1} {
			checkRandomRows(t, d, s, seed, rate, 400)
		}
	}
}

func FuzzEncodeMatchesDynamicpb(f *testing.F) {
	f.Add(uint64(1), uint8(0))
	f.Add(uint64(2), uint8(1))
	f.Add(uint64(3), uint8(10))
	f.Add(uint64(4), uint8(60))
	s := allTypesSchema()
	d := newDiffer(f, s)
	f.Fuzz(func(t *testing.T, seed uint64, rate uint8) {
		checkRandomRows(t, d, s, seed, float64(rate)/255, 20)
	})
}

// The encoder's scratch is shared through a pool: concurrent encodes must
// neither race nor see each other's rows.
func TestEncodeConcurrent(t *testing.T) {
	d := newDiffer(t, allTypesSchema())
	want, err := d.enc.encode(fullRow())
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 4)
	for w := range 4 {
		go func() {
			g := &rowGen{r: rand.New(rand.NewPCG(uint64(w), 0)), rate: 0.05}
			for range 200 {
				d.enc.encode(g.row(allTypesSchema()))
				got, err := d.enc.encode(fullRow())
				if err != nil || !bytes.Equal(got, want) {
					errs <- fmt.Errorf("fullRow encoded as %x, %v", got, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func BenchmarkEncodeOtherCase(b *testing.B) {
	enc, err := newEncoder(typicalSchema(), false)
	if err != nil {
		b.Fatal(err)
	}
	row := make(map[string]any)
	for k, v := range typicalRow() {
		row[strings.ToUpper(k)] = v
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := enc.encode(row); err != nil {
			b.Fatal(err)
		}
	}
}
