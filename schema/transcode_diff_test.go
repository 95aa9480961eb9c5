package schema_test

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cloud.google.com/go/bigquery"
	"github.com/hamba/avro/v2"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
)

// The transcoder must write exactly what the reference path writes: Decode
// (the reference decoder, decode_oracle_test.go) into the row value
// contract, then bq's encoder (encodeRow). Where the reference fails, the
// transcoder must fail too, with the same class of error: ErrDecode for a
// body that does not decode, another error for a row the table cannot
// take. The messages may differ (a bad body can have several faults, and
// the two need not blame the same one first). These tests compare the two
// on the golden schemas (and a few more covering every mapping), on random
// valid and invalid bodies, for tables that are the writer's columns,
// reordered, wider, differently cased, stricter, and with a metadata column
// the caller writes.

// tcSchema is a writer schema under test.
type tcSchema struct {
	name   string
	parsed avro.Schema
	s      *schema.Schema
}

// goldenFiles are the golden schemas of golden_test.go: referenced schemas
// first, the writer schema last.
var goldenFiles = []struct {
	name  string
	files []string
}{
	{"stock v1", []string{"sms_physical_stock_updates.v1.avsc"}},
	{"stock v2", []string{"sms_physical_stock_updates.v2.avsc"}},
	{"address", []string{"com.huub.types.Address.avsc"}},
	{"warehouse", []string{"com.huub.types.Address.avsc", "com.huub.types.Warehouse.avsc"}},
	{"delivery", []string{"com.huub.types.Address.avsc", "com.huub.types.Warehouse.avsc", "delivery_created.avsc"}},
	{"all types", []string{"all_types.avsc"}},
	{"debezium postgres key", []string{"debezium/dbserver1.inventory.products-key.avsc"}},
	{"debezium postgres envelope", []string{"debezium/dbserver1.inventory.products-value.avsc"}},
	{"debezium mysql envelope", []string{"debezium/mysqlserver1.inventory.products-value.avsc"}},
	{"debezium unwrapped value", []string{"debezium/unwrap.dbserver1.inventory.products-value.avsc"}},
	{"debezium types", []string{"debezium/dbserver1.public.all_types-value.avsc"}},
}

// moreSchemas cover what the goldens do not: repeated columns of every
// type (packed and not), arrays of maps, optional arrays of optional arrays,
// maps of records and unions, unions holding arrays and maps, wide and huge
// decimals, and each logical type both plain and optional.
var moreSchemas = []struct{ name, text string }{
	{"repeated", `{"type":"record","name":"Rep","namespace":"t","fields":[
		{"name":"bools","type":{"type":"array","items":"boolean"}},
		{"name":"ints","type":{"type":"array","items":"int"}},
		{"name":"longs","type":{"type":"array","items":"long"}},
		{"name":"floats","type":{"type":"array","items":"float"}},
		{"name":"doubles","type":{"type":"array","items":"double"}},
		{"name":"dates","type":{"type":"array","items":{"type":"int","logicalType":"date"}}},
		{"name":"times","type":{"type":"array","items":{"type":"int","logicalType":"time-millis"}}},
		{"name":"times_us","type":{"type":"array","items":{"type":"long","logicalType":"time-micros"}}},
		{"name":"tss","type":{"type":"array","items":{"type":"long","logicalType":"timestamp-micros"}}},
		{"name":"tss_ms","type":{"type":"array","items":{"type":"long","logicalType":"timestamp-millis"}}},
		{"name":"ltss","type":{"type":"array","items":{"type":"long","logicalType":"local-timestamp-millis"}}},
		{"name":"decs","type":{"type":"array","items":{"type":"bytes","logicalType":"decimal","precision":20,"scale":3}}},
		{"name":"enums","type":{"type":"array","items":{"type":"enum","name":"E","symbols":["A","BB","CCC"]}}},
		{"name":"fixeds","type":{"type":"array","items":{"type":"fixed","name":"F3","size":3}}},
		{"name":"byts","type":{"type":"array","items":"bytes"}},
		{"name":"strs","type":{"type":"array","items":"string"}},
		{"name":"opt_ints","type":{"type":"array","items":["null","int"]}},
		{"name":"opt_strs","type":["null",{"type":"array","items":"string"}]}
	]}`},
	{"nested", `{"type":"record","name":"Nest","namespace":"t","fields":[
		{"name":"maps","type":{"type":"array","items":{"type":"map","values":["null","long"]}}},
		{"name":"arrs","type":["null",{"type":"array","items":["null",{"type":"array","items":"double"}]}]},
		{"name":"map_recs","type":{"type":"map","values":{"type":"record","name":"MV","fields":[
			{"name":"a","type":["null","int"]},
			{"name":"b","type":{"type":"array","items":"string"}},
			{"name":"c","type":["null",{"type":"record","name":"MW","fields":[{"name":"w","type":"string"},{"name":"x","type":["null","boolean"]}]}]}]}}},
		{"name":"map_union","type":{"type":"map","values":["null","string","int","MV"]}},
		{"name":"u_arr","type":[{"type":"array","items":"int"},"null","string",{"type":"map","values":"boolean"}]},
		{"name":"recs","type":{"type":"array","items":"MV"}},
		{"name":"union_recs","type":{"type":"array","items":["MW","long"]}},
		{"name":"opt_rec","type":["null","MV"]},
		{"name":"arr3","type":{"type":"array","items":{"type":"array","items":{"type":"array","items":"MW"}}}}
	]}`},
	{"scalars", `{"type":"record","name":"Sc","namespace":"t","fields":[
		{"name":"big","type":{"type":"fixed","name":"F32","size":32,"logicalType":"decimal","precision":76,"scale":38}},
		{"name":"huge","type":{"type":"bytes","logicalType":"decimal","precision":200,"scale":5}},
		{"name":"int_dec","type":["null",{"type":"bytes","logicalType":"decimal","precision":18,"scale":0}]},
		{"name":"t_us","type":["null",{"type":"long","logicalType":"time-micros"}]},
		{"name":"t_ms","type":["null",{"type":"int","logicalType":"time-millis"}]},
		{"name":"lts_us","type":{"type":"long","logicalType":"local-timestamp-micros"}},
		{"name":"lts_ms","type":["null",{"type":"long","logicalType":"local-timestamp-millis"}]},
		{"name":"ts_ms","type":{"type":"long","logicalType":"timestamp-millis"}},
		{"name":"ts_us","type":["null",{"type":"long","logicalType":"timestamp-micros"}]},
		{"name":"d","type":["null",{"type":"int","logicalType":"date"}]},
		{"name":"long_str","type":"string"},
		{"name":"f","type":["null","float"]},
		{"name":"b","type":["boolean","null"]},
		{"name":"e","type":["null",{"type":"enum","name":"E2","symbols":["X","Y"]}]},
		{"name":"fx","type":["null",{"type":"fixed","name":"F1","size":1}]},
		{"name":"by","type":["null","bytes"]}
	]}`},
	{"connect", `{"type":"record","name":"Cn","namespace":"t","fields":[
		{"name":"dates","type":{"type":"array","items":{"type":"int","connect.name":"io.debezium.time.Date"}}},
		{"name":"times","type":{"type":"array","items":{"type":"int","connect.name":"io.debezium.time.Time"}}},
		{"name":"utimes","type":{"type":"array","items":["null",{"type":"long","connect.name":"io.debezium.time.MicroTime"}]}},
		{"name":"ntimes","type":["null",{"type":"array","items":{"type":"long","connect.name":"io.debezium.time.NanoTime"}}]},
		{"name":"ts_ms","type":{"type":"array","items":{"type":"long","connect.name":"io.debezium.time.Timestamp"}}},
		{"name":"ts_us","type":["null",{"type":"long","connect.name":"io.debezium.time.MicroTimestamp"}]},
		{"name":"ts_ns","type":{"type":"array","items":{"type":"long","connect.name":"io.debezium.time.NanoTimestamp"}}},
		{"name":"k_ts","type":{"type":"array","items":{"type":"long","connect.name":"org.apache.kafka.connect.data.Timestamp"}}},
		{"name":"k_time","type":["null",{"type":"int","connect.name":"org.apache.kafka.connect.data.Time"}]},
		{"name":"zoned","type":{"type":"array","items":{"type":"string","connect.name":"io.debezium.time.ZonedTimestamp"}}},
		{"name":"zoned_opt","type":["null",{"type":"string","connect.name":"io.debezium.time.ZonedTimestamp"}]},
		{"name":"vsd","type":{"type":"record","name":"VariableScaleDecimal","namespace":"io.debezium.data","fields":[{"name":"scale","type":"int"},{"name":"value","type":"bytes"}],"connect.name":"io.debezium.data.VariableScaleDecimal"}},
		{"name":"vsds","type":{"type":"array","items":["null","io.debezium.data.VariableScaleDecimal"]}},
		{"name":"vsd_map","type":{"type":"map","values":["null","io.debezium.data.VariableScaleDecimal"]}},
		{"name":"multi","type":["null",{"type":"string","connect.name":"io.debezium.time.ZonedTimestamp"},"io.debezium.data.VariableScaleDecimal",{"type":"long","connect.name":"io.debezium.time.MicroTimestamp"}]},
		{"name":"js","type":{"type":"array","items":{"type":"string","connect.name":"io.debezium.data.Json"}}},
		{"name":"dec_nolt","type":{"type":"bytes","connect.parameters":{"scale":"3","connect.decimal.precision":"12"},"connect.name":"org.apache.kafka.connect.data.Decimal"}},
		{"name":"dec_noprec","type":["null",{"type":"bytes","connect.parameters":{"scale":"9"},"connect.name":"org.apache.kafka.connect.data.Decimal"}]},
		{"name":"dec_wide","type":{"type":"bytes","connect.parameters":{"scale":"40"},"connect.name":"org.apache.kafka.connect.data.Decimal"}},
		{"name":"dec_bad","type":{"type":"bytes","connect.parameters":{"scale":"-1"},"connect.name":"org.apache.kafka.connect.data.Decimal"}},
		{"name":"misplaced","type":{"type":"long","connect.name":"io.debezium.time.Date"}}
	]}`},
}

func loadSchemas(t testing.TB) []tcSchema {
	t.Helper()
	var out []tcSchema
	for i, g := range goldenFiles {
		cache := &avro.SchemaCache{}
		var parsed avro.Schema
		for _, f := range g.files {
			text, err := os.ReadFile(filepath.Join("testdata", f))
			if err != nil {
				t.Fatal(err)
			}
			if parsed, err = avro.ParseWithCache(string(text), "", cache); err != nil {
				t.Fatalf("parse %s: %v", f, err)
			}
		}
		out = append(out, tcSchema{g.name, parsed, schema.CompileForTest(t, 100+i, parsed)})
	}
	for i, m := range moreSchemas {
		parsed, err := avro.ParseWithCache(m.text, "", &avro.SchemaCache{})
		if err != nil {
			t.Fatalf("parse %s: %v", m.name, err)
		}
		out = append(out, tcSchema{m.name, parsed, schema.CompileForTest(t, 200+i, parsed)})
	}
	return out
}

// ---- random bodies ----

// gen writes random Avro binary values of a schema, independently of the
// decoder: valid ones, and with probability bad per value an invalid one of
// the kinds Decode rejects (out-of-range logical values, invalid UTF-8,
// decimals over their precision, bad union or enum indexes, invalid bools).
type gen struct {
	r     *rand.Rand
	bad   float64
	depth int
}

func (g *gen) isBad() bool { return g.bad > 0 && g.r.Float64() < g.bad }

func zz(b []byte, v int64) []byte { return protowire.AppendVarint(b, protowire.EncodeZigZag(v)) }

func (g *gen) int64In(lo, hi int64) int64 {
	switch g.r.IntN(6) {
	case 0:
		return lo
	case 1:
		return hi
	case 2:
		if lo <= 0 && hi >= 0 {
			return 0
		}
	}
	return lo + g.r.Int64N(hi-lo+1)
}

func (g *gen) anyInt(bitsize int) int64 {
	switch g.r.IntN(8) {
	case 0:
		return 0
	case 1:
		return -1
	case 2:
		return int64(g.r.IntN(128)) - 64
	case 3:
		if bitsize == 32 {
			return math.MinInt32
		}
		return math.MinInt64
	case 4:
		if bitsize == 32 {
			return math.MaxInt32
		}
		return math.MaxInt64
	}
	if bitsize == 32 {
		return int64(int32(g.r.Uint32()))
	}
	return int64(g.r.Uint64())
}

// outside returns a value outside [lo, hi] within [floor, ceil].
func (g *gen) outside(lo, hi, floor, ceil int64) int64 {
	if g.r.IntN(2) == 0 && lo > floor {
		return lo - 1 - g.r.Int64N(int64(min(uint64(lo)-uint64(floor), 1000000)))
	}
	if hi < ceil {
		return hi + 1 + g.r.Int64N(int64(min(uint64(ceil)-uint64(hi), 1000000)))
	}
	return lo - 1
}

var runes = []rune{'a', 'Z', '0', ' ', '_', 'é', 'ß', '日', '本', '😀', 0x7f, 0x80, 0x7ff, 0x800, 0xffff, 0x10000, 0x10ffff}

func (g *gen) str(b []byte) []byte {
	n := g.r.IntN(8)
	if g.r.IntN(10) == 0 {
		n = 50 + g.r.IntN(300) // longer than one length byte
	}
	var s []byte
	for range n {
		s = append(s, string(runes[g.r.IntN(len(runes))])...)
	}
	if g.isBad() {
		bad := [][]byte{{0xff}, {0xc0, 0x80}, {0xed, 0xa0, 0x80}, {0xe2, 0x82}}[g.r.IntN(4)]
		at := g.r.IntN(len(s) + 1)
		s = append(s[:at:at], append(bad, s[at:]...)...)
	}
	return append(zz(b, int64(len(s))), s...)
}

func (g *gen) rawBytes(b []byte) []byte {
	n := g.r.IntN(6)
	if g.r.IntN(10) == 0 {
		n = 130 + g.r.IntN(200)
	}
	b = zz(b, int64(n))
	for range n {
		b = append(b, byte(g.r.Uint32()))
	}
	return b
}

// decimal writes an unscaled value of at most precision digits (more when
// bad) in two's complement: minimal or with redundant sign bytes for bytes,
// sign-extended to size for fixed (size 0).
func (g *gen) decimal(b []byte, precision, size int) []byte {
	digits := g.r.IntN(precision + 1)
	if g.r.IntN(4) == 0 {
		digits = precision
	}
	if g.isBad() {
		digits = precision + 1 + g.r.IntN(3)
	}
	v := new(big.Int)
	for i := range digits {
		d := int64(g.r.IntN(10))
		if i == 0 && digits > 0 && d == 0 {
			d = 1 + int64(g.r.IntN(9))
		}
		v.Mul(v, big.NewInt(10)).Add(v, big.NewInt(d))
	}
	if g.r.IntN(2) == 0 {
		v.Neg(v)
	}
	n := (v.BitLen() + 8) / 8 // room for the sign bit
	if size == 0 {
		n += g.r.IntN(2) // sometimes a redundant sign byte
		if n == 1 && v.Sign() == 0 && g.r.IntN(3) == 0 {
			n = 0 // the empty value is zero too
		}
	} else {
		if n > size {
			v.SetInt64(int64(g.r.IntN(100)) - 50)
		}
		n = size
	}
	tc := new(big.Int).Set(v)
	if v.Sign() < 0 {
		tc.Add(tc, new(big.Int).Lsh(big.NewInt(1), uint(8*n)))
	}
	raw := tc.FillBytes(make([]byte, n))
	if size == 0 {
		b = zz(b, int64(n))
	}
	return append(b, raw...)
}

const (
	minDate   = -719162
	maxDate   = 2932896
	minMicros = -62135596800000000
	maxMicros = 253402300799999999
	dayMicros = 86400000000
)

func (g *gen) value(b []byte, a avro.Schema) []byte {
	switch a := a.(type) {
	case *avro.RefSchema:
		return g.value(b, a.Schema())
	case *avro.RecordSchema:
		if isVSD(a) {
			return g.variableScaleDecimal(b)
		}
		g.depth++
		for _, f := range a.Fields() {
			b = g.value(b, f.Type())
		}
		g.depth--
		return b
	case *avro.EnumSchema:
		i := int64(g.r.IntN(len(a.Symbols())))
		if g.isBad() {
			i = g.outside(0, int64(len(a.Symbols())-1), math.MinInt32, math.MaxInt32)
		}
		return zz(b, i)
	case *avro.FixedSchema:
		if d, ok := a.Logical().(*avro.DecimalLogicalSchema); ok {
			return g.decimal(b, d.Precision(), a.Size())
		}
		for range a.Size() {
			b = append(b, byte(g.r.Uint32()))
		}
		return b
	case *avro.ArraySchema:
		return g.blocks(b, func(b []byte) []byte { return g.item(b, a.Items()) })
	case *avro.MapSchema:
		return g.blocks(b, func(b []byte) []byte { return g.value(g.str(b), a.Values()) })
	case *avro.UnionSchema:
		i := int64(g.r.IntN(len(a.Types())))
		if g.isBad() {
			return zz(b, g.outside(0, int64(len(a.Types())-1), math.MinInt64, math.MaxInt64))
		}
		return g.value(zz(b, i), a.Types()[i])
	case *avro.PrimitiveSchema:
		return g.primitive(b, a)
	case *avro.NullSchema:
		return b
	}
	panic(fmt.Sprintf("no generator for %T", a))
}

// item writes an array item: BigQuery arrays cannot hold NULL, so a valid
// one takes a non-null branch of a union.
func (g *gen) item(b []byte, a avro.Schema) []byte {
	u, ok := a.(*avro.UnionSchema)
	if !ok || g.isBad() {
		return g.value(b, a)
	}
	var branches []int
	for i, t := range u.Types() {
		if t.Type() != avro.Null {
			branches = append(branches, i)
		}
	}
	i := branches[g.r.IntN(len(branches))]
	return g.value(zz(b, int64(i)), u.Types()[i])
}

func (g *gen) blocks(b []byte, item func([]byte) []byte) []byte {
	blocks := g.r.IntN(3)
	if g.depth > 3 {
		blocks = g.r.IntN(2)
	}
	for range blocks {
		n := 1 + g.r.IntN(4)
		if g.depth <= 1 && g.r.IntN(8) == 0 {
			n = 40 + g.r.IntN(40) // a packed run longer than one length byte
		}
		g.depth++
		var items []byte
		for range n {
			items = item(items)
		}
		g.depth--
		if g.r.IntN(3) == 0 {
			b = zz(zz(b, -int64(n)), int64(len(items))) // negative count, then the byte size
		} else {
			b = zz(b, int64(n))
		}
		b = append(b, items...)
	}
	return zz(b, 0)
}

func (g *gen) primitive(b []byte, a *avro.PrimitiveSchema) []byte {
	if out, ok := g.connect(b, a); ok {
		return out
	}
	var logical avro.LogicalType
	if l := a.Logical(); l != nil {
		logical = l.Type()
	}
	bad := g.isBad()
	in := func(lo, hi, floor, ceil int64) int64 {
		if bad {
			return g.outside(lo, hi, floor, ceil)
		}
		return g.int64In(lo, hi)
	}
	switch a.Type() {
	case avro.Boolean:
		if bad {
			return append(b, byte(2+g.r.IntN(254)))
		}
		return append(b, byte(g.r.IntN(2)))
	case avro.Int:
		switch logical {
		case avro.Date:
			return zz(b, in(minDate, maxDate, math.MinInt32, math.MaxInt32))
		case avro.TimeMillis:
			return zz(b, in(0, dayMicros/1000-1, math.MinInt32, math.MaxInt32))
		}
		return zz(b, g.anyInt(32))
	case avro.Long:
		switch logical {
		case avro.TimeMicros:
			return zz(b, in(0, dayMicros-1, math.MinInt64, math.MaxInt64))
		case avro.TimestampMillis, avro.LocalTimestampMillis:
			return zz(b, in(minMicros/1000, maxMicros/1000, math.MinInt64, math.MaxInt64))
		case avro.TimestampMicros, avro.LocalTimestampMicros:
			return zz(b, in(minMicros, maxMicros, math.MinInt64, math.MaxInt64))
		}
		return zz(b, g.anyInt(64))
	case avro.Float:
		u := g.r.Uint32()
		if g.r.IntN(4) == 0 {
			u = math.Float32bits(float32(g.r.NormFloat64()))
		}
		return append(b, byte(u), byte(u>>8), byte(u>>16), byte(u>>24))
	case avro.Double:
		u := g.r.Uint64()
		switch g.r.IntN(4) {
		case 0:
			u = math.Float64bits(g.r.NormFloat64())
		case 1:
			u = math.Float64bits([]float64{math.NaN(), math.Inf(1), math.Inf(-1), 0, math.Copysign(0, -1)}[g.r.IntN(5)])
		}
		return protowire.AppendFixed64(b, u)
	case avro.Bytes:
		if d, ok := a.Logical().(*avro.DecimalLogicalSchema); ok {
			return g.decimal(b, d.Precision(), 0)
		}
		return g.rawBytes(b)
	default:
		return g.str(b)
	}
}

// ---- table variants ----

// variant is a table to transcode into: columns as bq.NewFormat takes them
// and the metadata column the caller writes, if any.
type variant struct {
	name  string
	table bigquery.Schema
	extra string
	valid bool // every valid body must transcode (no REQUIRED tightening)
}

func cloneCols(cols bigquery.Schema) bigquery.Schema {
	out := make(bigquery.Schema, len(cols))
	for i, c := range cols {
		cc := *c
		cc.Schema = cloneCols(c.Schema)
		out[i] = &cc
	}
	return out
}

// walk calls f on each column list: the top level and every RECORD's.
func walk(cols bigquery.Schema, f func(bigquery.Schema) bigquery.Schema) bigquery.Schema {
	cols = f(cols)
	for _, c := range cols {
		if c.Type == bigquery.RecordFieldType {
			c.Schema = walk(c.Schema, f)
		}
	}
	return cols
}

var extraTypes = []*bigquery.FieldSchema{
	{Type: bigquery.StringFieldType}, {Type: bigquery.IntegerFieldType, Repeated: true}, {Type: bigquery.JSONFieldType},
	{Type: bigquery.RecordFieldType, Schema: bigquery.Schema{{Name: "q", Type: bigquery.BooleanFieldType, Required: true}}},
	{Type: bigquery.FloatFieldType}, {Type: bigquery.GeographyFieldType},
}

func metaColumn(name string, required bool) *bigquery.FieldSchema {
	return &bigquery.FieldSchema{Name: name, Type: bigquery.RecordFieldType, Required: required, Schema: bigquery.Schema{
		{Name: "topic", Type: bigquery.StringFieldType},
		{Name: "partition", Type: bigquery.IntegerFieldType},
		{Name: "offset", Type: bigquery.IntegerFieldType},
		{Name: "headers", Type: bigquery.RecordFieldType, Repeated: true, Schema: bigquery.Schema{
			{Name: "key", Type: bigquery.StringFieldType}, {Name: "value", Type: bigquery.BytesFieldType}}},
	}}
}

func variants(r *rand.Rand, writer bigquery.Schema) []variant {
	shuffle := func(c bigquery.Schema) bigquery.Schema {
		r.Shuffle(len(c), func(i, j int) { c[i], c[j] = c[j], c[i] })
		return c
	}
	reverse := func(c bigquery.Schema) bigquery.Schema {
		for i, j := 0, len(c)-1; i < j; i, j = i+1, j-1 {
			c[i], c[j] = c[j], c[i]
		}
		return c
	}
	n := 0
	widen := func(c bigquery.Schema) bigquery.Schema {
		for range 1 + r.IntN(2) {
			x := cloneCols(bigquery.Schema{extraTypes[r.IntN(len(extraTypes))]})[0]
			x.Name = fmt.Sprintf("zz_new_%d", n)
			n++
			at := r.IntN(len(c) + 1)
			c = append(c[:at:at], append(bigquery.Schema{x}, c[at:]...)...)
		}
		return c
	}
	upper := func(c bigquery.Schema) bigquery.Schema {
		for _, f := range c {
			if r.IntN(2) == 0 {
				f.Name = strings.ToUpper(f.Name)
			}
		}
		return c
	}
	require := func(c bigquery.Schema) bigquery.Schema {
		for _, f := range c {
			if !f.Repeated && r.IntN(2) == 0 {
				f.Required = true
			}
		}
		return c
	}
	absent := func(c bigquery.Schema) bigquery.Schema {
		if r.IntN(2) == 0 {
			at := r.IntN(len(c) + 1)
			x := &bigquery.FieldSchema{Name: fmt.Sprintf("zz_req_%d", n), Type: bigquery.DateFieldType, Required: true}
			n++
			c = append(c[:at:at], append(bigquery.Schema{x}, c[at:]...)...)
		}
		return c
	}
	withMeta := func(c bigquery.Schema, required bool) bigquery.Schema {
		at := len(c) / 2
		return append(c[:at:at], append(bigquery.Schema{metaColumn("kafka_meta", required)}, c[at:]...)...)
	}
	v := func(name string, extra string, valid bool, fs ...func(bigquery.Schema) bigquery.Schema) variant {
		t := cloneCols(writer)
		for _, f := range fs {
			t = walk(t, f)
		}
		if extra != "" {
			t = withMeta(t, !valid && r.IntN(2) == 0)
		}
		return variant{name: name, table: t, extra: extra, valid: valid}
	}
	return []variant{
		v("writer", "", true),
		v("reversed", "", true, reverse),
		v("shuffled", "", true, shuffle),
		v("wider", "", true, widen),
		v("upper case", "", true, upper),
		v("meta", "kafka_meta", true),
		v("meta shuffled", "kafka_meta", true, shuffle, widen),
		v("required", "", false, require),
		v("required absent", "", false, absent),
		v("everything", "kafka_meta", false, shuffle, widen, upper, require, absent),
	}
}

// ---- comparing ----

type target struct {
	v   variant
	f   *bq.Format
	tc  *schema.Transcoder
	sch tcSchema
}

func newTarget(t testing.TB, sch tcSchema, v variant) target {
	t.Helper()
	f, err := bq.NewFormat(v.table)
	if err != nil {
		t.Fatalf("%s/%s: NewFormat: %v", sch.name, v.name, err)
	}
	tc, err := sch.s.Transcoder(f.Columns(), v.extra)
	if err != nil {
		t.Fatalf("%s/%s: Transcoder: %v", sch.name, v.name, err)
	}
	return target{v: v, f: f, tc: tc, sch: sch}
}

// meta returns a metadata value and its encoded field, or nil and nil.
func (tg target) meta(r *rand.Rand) (map[string]any, []byte, error) {
	if tg.v.extra == "" || r.IntN(4) == 0 {
		return nil, nil, nil
	}
	m := map[string]any{"topic": "orders", "partition": int64(r.IntN(64)), "offset": r.Int64()}
	if r.IntN(2) == 0 {
		m["headers"] = []any{map[string]any{"key": "h", "value": bytes.Repeat([]byte{1}, r.IntN(300))}}
	}
	field, err := tg.f.AppendColumn(nil, tg.v.extra, m)
	return m, field, err
}

type outcome int

const (
	okBoth outcome = iota
	decodeFailed
	encodeFailed
)

// compare runs both paths on body and fails t where they differ: one
// fails and the other does not, they fail with errors of different classes,
// or they write different bytes.
func (tg target) compare(t testing.TB, body []byte, meta map[string]any, extraField []byte) outcome {
	t.Helper()
	got, terr := tg.tc.Append(nil, body, extraField)
	row, derr := tg.sch.s.Decode(body)
	if derr != nil {
		if terr == nil || !errors.Is(terr, schema.ErrDecode) {
			t.Fatalf("%s/%s: body %x\nDecode: %v\nAppend: %v", tg.sch.name, tg.v.name, body, derr, terr)
		}
		return decodeFailed
	}
	if meta != nil {
		row[tg.v.extra] = meta
	}
	want, eerr := encodeRow(tg.f, row)
	if eerr != nil {
		// The only row a table cannot take from a body that decodes is one
		// with a NULL for a REQUIRED column.
		if terr == nil || errors.Is(terr, schema.ErrDecode) || !strings.Contains(terr.Error(), "REQUIRED but missing or null") {
			t.Fatalf("%s/%s: body %x\nEncode: %v\nAppend: %v", tg.sch.name, tg.v.name, body, eerr, terr)
		}
		return encodeFailed
	}
	if terr != nil {
		t.Fatalf("%s/%s: body %x: Append: %v; the reference wrote %x", tg.sch.name, tg.v.name, body, terr, want)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s/%s: body %x\nAppend: %x\nEncode: %x", tg.sch.name, tg.v.name, body, got, want)
	}
	return okBoth
}

// TestTranscodeMatchesReference: random valid bodies give the reference's
// bytes for every table variant; bodies with invalid values (and tables
// stricter than the writer) fail where the reference fails, with the same
// class of error.
func TestTranscodeMatchesReference(t *testing.T) {
	iters := 300
	if testing.Short() {
		iters = 50
	}
	rows, encodeErrors := 0, 0
	t.Cleanup(func() {
		// About a sixth of the rows fail to encode (the stricter tables'),
		// whatever the iteration count: 1231 of 7500 under -short, 7318 of
		// 45000 without. Fewer than a tenth means the generator or the
		// variants stopped making rows a table refuses.
		if encodeErrors*10 < rows && !t.Failed() {
			t.Errorf("only %d of %d rows the tables could not take: the comparison of encode errors proves little", encodeErrors, rows)
		}
	})
	for si, sch := range loadSchemas(t) {
		t.Run(sch.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(si), 7))
			for _, v := range variants(r, sch.s.Columns()) {
				tg := newTarget(t, sch, v)
				var counts [3]int
				for i := range iters {
					g := &gen{r: r}
					if i%3 == 2 {
						g.bad = 0.05
					}
					meta, field, err := tg.meta(r)
					if err != nil {
						t.Fatal(err)
					}
					out := tg.compare(t, g.value(nil, sch.parsed), meta, field)
					counts[out]++
					if g.bad == 0 && v.valid && out != okBoth {
						t.Fatalf("%s: a valid body failed", v.name)
					}
				}
				if counts[okBoth]+counts[encodeFailed] == 0 {
					t.Errorf("%s: outcomes %v: the comparison proves little", v.name, counts)
				}
				rows += iters
				encodeErrors += counts[encodeFailed]
				t.Logf("%s: %d identical rows, %d decode errors, %d encode errors", v.name, counts[okBoth], counts[decodeFailed], counts[encodeFailed])
			}
		})
	}
}

// TestTranscodeMangledBodies: every prefix of valid bodies, and bodies with
// bytes flipped, inserted or appended, fail (or not) as the reference does.
func TestTranscodeMangledBodies(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, sch := range loadSchemas(t) {
		vs := variants(r, sch.s.Columns())
		tgs := []target{newTarget(t, sch, vs[0]), newTarget(t, sch, vs[len(vs)-1])}
		for range 20 {
			body := (&gen{r: r}).value(nil, sch.parsed)
			for _, tg := range tgs {
				for i := range min(len(body), 64) {
					n := i
					if len(body) > 64 && i >= 16 {
						n = r.IntN(len(body))
					}
					tg.compare(t, body[:n], nil, nil)
				}
				tg.compare(t, append(body[:len(body):len(body)], byte(r.Uint32())), nil, nil)
				for range 20 {
					m := append([]byte{}, body...)
					switch at := r.IntN(len(m) + 1); r.IntN(3) {
					case 0:
						if at < len(m) {
							m[at] ^= byte(1 << r.IntN(8))
						}
					case 1:
						m = append(m[:at], append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}[r.IntN(11):], m[at:]...)...)
					default:
						if at < len(m) {
							m[at] = byte(r.Uint32())
						}
					}
					tg.compare(t, m, nil, nil)
				}
			}
		}
	}
}

func compileText(t testing.TB, text string) tcSchema {
	t.Helper()
	parsed, err := avro.ParseWithCache(text, "", &avro.SchemaCache{})
	if err != nil {
		t.Fatal(err)
	}
	return tcSchema{name: "inline", parsed: parsed, s: schema.CompileForTest(t, 9, parsed)}
}

// TestTranscodeErrors: each kind of bad body fails with ErrDecode and a
// message naming the field path and the problem, and a row the table cannot
// take with one naming the column; the reference fails too, with the same
// class of error. A body that does not decode fails with ErrDecode even
// when the table could not take its row either.
func TestTranscodeErrors(t *testing.T) {
	varint := func(v int64) []byte { return zz(nil, v) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	str := func(s string) []byte { return append(varint(int64(len(s))), s...) }
	tests := []struct {
		name   string
		schema string
		table  func(bigquery.Schema) bigquery.Schema // nil: the writer's columns
		body   []byte
		want   string // the expected message, in full
	}{
		{
			name:   "truncated",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"s","type":"string"}]}`,
			body:   cat(varint(5), varint(4), []byte("ab")),
			want:   "undecodable record: schema 9: s: body ends early",
		},
		{
			name:   "empty body",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}`,
			body:   nil,
			want:   "undecodable record: schema 9: a: body ends early",
		},
		{
			name:   "trailing bytes",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}`,
			body:   []byte{2, 0},
			want:   "undecodable record: schema 9: (top level): trailing bytes after the record",
		},
		{
			name:   "bad UTF-8 in a map key",
			schema: `{"type":"record","name":"R","fields":[{"name":"m","type":{"type":"map","values":"int"}}]}`,
			body:   cat(varint(1), str("ok"), varint(1), varint(2), varint(2), []byte{0xc3, 0x28}),
			want:   "undecodable record: schema 9: m[1].key: string is not valid UTF-8",
		},
		{
			name: "over-precision decimal",
			schema: `{"type":"record","name":"R","fields":[{"name":"items","type":{"type":"array","items":{"type":"record","name":"I","fields":[
				{"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}}]}}}]}`,
			body: cat(varint(4), varint(1), []byte{1}, varint(1), []byte{0x7f}, varint(2), []byte{0x27, 0x10}, varint(2), []byte{0xd8, 0xf0}, varint(0)),
			want: "undecodable record: schema 9: items[2].price: decimal 100.00 has 5 digits, more than its precision 4",
		},
		{
			name:   "over-long decimal",
			schema: `{"type":"record","name":"R","fields":[{"name":"d","type":{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}}]}`,
			body:   cat(varint(5), []byte{1, 2, 3, 4, 5}),
			want:   "undecodable record: schema 9: d: decimal of 5 bytes exceeds precision 4",
		},
		{
			name:   "date out of range",
			schema: `{"type":"record","name":"R","fields":[{"name":"d","type":["null",{"type":"int","logicalType":"date"}]}]}`,
			body:   cat(varint(1), varint(maxDate+1)),
			want:   "undecodable record: schema 9: d: date 2932897 days from 1970-01-01 is outside BigQuery's 0001-01-01..9999-12-31",
		},
		{
			name:   "time of day",
			schema: `{"type":"record","name":"R","fields":[{"name":"t","type":{"type":"int","logicalType":"time-millis"}}]}`,
			body:   varint(-1),
			want:   "undecodable record: schema 9: t: time-millis -1 is not a time of day",
		},
		{
			name:   "local timestamp out of range",
			schema: `{"type":"record","name":"R","fields":[{"name":"t","type":{"type":"long","logicalType":"local-timestamp-micros"}}]}`,
			body:   varint(maxMicros + 1),
			want:   "undecodable record: schema 9: t: local-timestamp-micros 253402300800000000 is outside BigQuery's years 1..9999",
		},
		{
			name:   "huge length prefix",
			schema: `{"type":"record","name":"R","fields":[{"name":"b","type":"bytes"}]}`,
			body:   cat(varint(1<<40), []byte{1, 2}),
			want:   "undecodable record: schema 9: b: length 1099511627776 does not fit in a 8-byte body",
		},
		{
			name:   "negative length",
			schema: `{"type":"record","name":"R","fields":[{"name":"b","type":"bytes"}]}`,
			body:   varint(-1),
			want:   "undecodable record: schema 9: b: length -1 does not fit in a 1-byte body",
		},
		{
			name:   "length past what the body has left",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"string"}]}`,
			body:   cat(str("abcdef"), varint(7)),
			want:   "undecodable record: schema 9: b: body ends early",
		},
		{
			name:   "fixed past the end",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"f","type":{"type":"fixed","name":"F","size":4}}]}`,
			body:   cat(varint(1), []byte("xyz")),
			want:   "undecodable record: schema 9: f: body ends early",
		},
		{
			name:   "long varint overflow",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}`,
			body:   []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
			want:   "undecodable record: schema 9: a: body ends early",
		},
		{
			name:   "int varint overflow",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":"int"}]}`,
			body:   []byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0},
			want:   "undecodable record: schema 9: a: body ends early",
		},
		{
			name:   "invalid bool",
			schema: `{"type":"record","name":"R","fields":[{"name":"r","type":{"type":"record","name":"S","fields":[{"name":"b","type":"boolean"}]}}]}`,
			body:   []byte{2},
			want:   "undecodable record: schema 9: r.b: avro: ReadBool: invalid bool",
		},
		{
			name:   "huge block count",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"array","items":"int"}}]}`,
			body:   cat(varint(2), varint(1), varint(2), varint(-(1 << 62)), varint(3)),
			want:   "undecodable record: schema 9: a[2]: block of 4611686018427387904 items cannot fit in the rest of a 13-byte body",
		},
		{
			name:   "block count over what is left",
			schema: `{"type":"record","name":"R","fields":[{"name":"m","type":{"type":"map","values":"int"}}]}`,
			body:   cat(varint(4), str("k"), varint(1)),
			want:   "undecodable record: schema 9: m[0]: block of 4 items cannot fit in the rest of a 4-byte body",
		},
		{
			name:   "union branch",
			schema: `{"type":"record","name":"R","fields":[{"name":"u","type":["null","string","long"]}]}`,
			body:   varint(3),
			want:   "undecodable record: schema 9: u: union branch 3 out of range, the union has 3",
		},
		{
			name:   "error inside a union branch",
			schema: `{"type":"record","name":"R","fields":[{"name":"u","type":["null","string","long"]}]}`,
			body:   cat(varint(1), varint(1), []byte{0xff}),
			want:   "undecodable record: schema 9: u.string: string is not valid UTF-8",
		},
		{
			name:   "array of arrays",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"array","items":{"type":"array","items":{"type":"enum","name":"E","symbols":["X"]}}}}]}`,
			body:   cat(varint(1), varint(2), varint(0), varint(1), varint(0)),
			want:   "undecodable record: schema 9: a[0].items[1]: enum index 1 out of range, the enum has 1 symbols",
		},
		{
			name:   "NULL array element",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"array","items":["null","double"]}}]}`,
			body:   cat(varint(2), varint(1), make([]byte, 8), varint(0)),
			want:   "undecodable record: schema 9: a[1]: NULL array element: BigQuery arrays cannot hold NULL",
		},
		{
			name:   "REQUIRED column null",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":["null","long"]},{"name":"r","type":{"type":"record","name":"S","fields":[{"name":"b","type":["null","long"]}]}}]}`,
			table:  func(c bigquery.Schema) bigquery.Schema { c[0].Required, c[1].Schema[0].Required = true, true; return c },
			body:   cat(varint(0), varint(0)),
			want:   `column "a": REQUIRED but missing or null`, // the first met in reading order
		},
		{
			name:   "REQUIRED column null in an array element",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"array","items":{"type":"record","name":"S","fields":[{"name":"b","type":["null","long"]}]}}}]}`,
			table: func(c bigquery.Schema) bigquery.Schema {
				c[0].Schema[0].Name, c[0].Schema[0].Required = "B", true
				return c
			},
			body: cat(varint(2), varint(1), varint(2), varint(0), varint(0)),
			want: `element 1: column "a.B": REQUIRED but missing or null`,
		},
		{
			name:   "REQUIRED column the writer lacks",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}`,
			table: func(c bigquery.Schema) bigquery.Schema {
				return append(bigquery.Schema{{Name: "z", Type: bigquery.StringFieldType, Required: true}}, c...)
			},
			body: varint(1),
			want: `column "z": REQUIRED but missing or null`,
		},
		{
			name:   "decode error after a REQUIRED null wins",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":["null","long"]},{"name":"s","type":"string"}]}`,
			table:  func(c bigquery.Schema) bigquery.Schema { c[0].Required = true; return c },
			body:   cat(varint(0), varint(1), []byte{0x80}),
			want:   "undecodable record: schema 9: s: string is not valid UTF-8",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sch := compileText(t, tt.schema)
			table := sch.s.Columns()
			if tt.table != nil {
				table = tt.table(table)
			}
			tg := newTarget(t, sch, variant{name: tt.name, table: table})
			tg.compare(t, tt.body, nil, nil)
			_, err := tg.tc.Append(nil, tt.body, nil)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Append error %v, want %s", err, tt.want)
			}
		})
	}
}

// FuzzTranscode: for arbitrary bodies of each schema (and each kind of
// table), the transcoder and the reference both succeed with the same
// bytes, or both fail with the same class of error.
func FuzzTranscode(f *testing.F) {
	schemas := loadSchemas(f)
	r := rand.New(rand.NewPCG(21, 22))
	var targets [][]target
	for _, sch := range schemas {
		var tgs []target
		for _, v := range variants(r, sch.s.Columns()) {
			tgs = append(tgs, newTarget(f, sch, v))
		}
		targets = append(targets, tgs)
	}
	goldenBodies := schema.GoldenBodiesForTest(f)
	for i, sch := range schemas {
		if body, ok := goldenBodies[sch.name]; ok {
			f.Add(uint8(i), uint8(0), body)
			f.Add(uint8(i), uint8(len(targets[i])-1+0x80), body)
		}
		for added := 0; added < 3; {
			// Small seeds: the fuzzer mutates and minimizes them faster.
			if body := (&gen{r: r, bad: 0.02}).value(nil, sch.parsed); len(body) <= 512 {
				f.Add(uint8(i), uint8(r.IntN(256)), body)
				added++
			}
		}
	}
	f.Fuzz(func(t *testing.T, which, table uint8, body []byte) {
		tgs := targets[int(which)%len(targets)]
		tg := tgs[int(table)%len(tgs)]
		var meta map[string]any
		var field []byte
		if tg.v.extra != "" && table&0x80 != 0 {
			meta = map[string]any{"topic": "t", "offset": int64(len(body))}
			var err error
			if field, err = tg.f.AppendColumn(nil, tg.v.extra, meta); err != nil {
				t.Fatal(err)
			}
		}
		tg.compare(t, body, meta, field)
	})
}
