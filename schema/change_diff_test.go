package schema_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hamba/avro/v2"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
)

// ChangeTranscoder must agree with its reference, DecodeChange
// (change_oracle_test.go) then bq's encoder, as Transcoder agrees with
// Decode: the same row bytes (or none), the same change, or a failure of
// the same class. These tests compare them on Debezium envelopes of the
// fixtures (PostgreSQL and MySQL sources), an envelope of odd shape
// (fields out of order, a source full of nested values), and values under
// EnvelopeNone with __deleted and sequence fields, on random bodies with
// random ops, images and source positions, valid and not, and on mangled
// ones.

// changeCase is a writer schema and a spec to compare under.
type changeCase struct {
	name   string
	parsed avro.Schema
	s      *schema.Schema
	spec   schema.ChangeSpec
}

// oddEnvelope is a Debezium-like envelope in another order, with op
// nullable, after not a union, and source and transaction holding every
// kind of Avro value to read past.
const oddEnvelope = `{"type":"record","name":"Envelope","namespace":"odd","fields":[
	{"name":"op","type":["null","string"]},
	{"name":"source","type":["null",{"type":"record","name":"Source","fields":[
		{"name":"extra","type":{"type":"array","items":{"type":"map","values":["null","long",{"type":"record","name":"X","fields":[{"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}},{"name":"f","type":{"type":"fixed","name":"F","size":3}}]}]}}},
		{"name":"connector","type":["null","string"]},
		{"name":"flags","type":{"type":"array","items":"boolean"}},
		{"name":"sequence","type":"string"},
		{"name":"lsn","type":"int"},
		{"name":"file","type":["null","string"]},
		{"name":"pos","type":["null","long"]},
		{"name":"row","type":["null","long"]},
		{"name":"nums","type":{"type":"map","values":["float","double"]}}]}]},
	{"name":"after","type":{"type":"record","name":"Value","fields":[
		{"name":"id","type":"long"},
		{"name":"tags","type":{"type":"array","items":"string"}},
		{"name":"at","type":["null",{"type":"string","connect.name":"io.debezium.time.ZonedTimestamp"}]},
		{"name":"sub","type":["null",{"type":"record","name":"Sub","fields":[{"name":"n","type":["null","int"]}]}]}]}},
	{"name":"transaction","type":["null",{"type":"map","values":{"type":"array","items":"bytes"}}]},
	{"name":"before","type":["null","Value"]}
]}`

// sequenced is a value with sequence fields in a nested record, a
// timestamp and a boolean __deleted.
const sequenced = `{"type":"record","name":"Seq","namespace":"t","fields":[
	{"name":"id","type":"long"},
	{"name":"meta","type":["null",{"type":"record","name":"M","fields":[
		{"name":"ver","type":["null","int"]},
		{"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}}]}]},
	{"name":"__deleted","type":"boolean"},
	{"name":"ts_us","type":{"type":"long","logicalType":"timestamp-micros"}}
]}`

func loadChangeCases(t testing.TB) []changeCase {
	t.Helper()
	file := func(name string) avro.Schema {
		text, err := os.ReadFile(filepath.Join("testdata", "debezium", name))
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := avro.ParseWithCache(string(text), "", &avro.SchemaCache{})
		if err != nil {
			t.Fatal(err)
		}
		return parsed
	}
	text := func(s string) avro.Schema {
		parsed, err := avro.ParseWithCache(s, "", &avro.SchemaCache{})
		if err != nil {
			t.Fatal(err)
		}
		return parsed
	}
	pg := file("dbserver1.inventory.products-value.avsc")
	my := file("mysqlserver1.inventory.products-value.avsc")
	unwrap := file("unwrap.dbserver1.inventory.products-value.avsc")
	odd := text(oddEnvelope)
	seq := text(sequenced)
	dbz := schema.ChangeSpec{Envelope: schema.EnvelopeDebezium, DebeziumSequence: true}
	cases := []changeCase{
		{name: "postgres", parsed: pg, spec: dbz},
		{name: "postgres without position", parsed: pg, spec: schema.ChangeSpec{Envelope: schema.EnvelopeDebezium}},
		{name: "mysql", parsed: my, spec: dbz},
		{name: "odd envelope", parsed: odd, spec: dbz},
		{name: "unwrapped", parsed: unwrap, spec: schema.ChangeSpec{SequenceFields: []string{"__lsn", "__source_ts_ms"}}},
		{name: "sequenced", parsed: seq, spec: schema.ChangeSpec{SequenceFields: []string{"meta.ver", "meta.ts", "ts_us"}}},
		{name: "sequenced twice", parsed: seq, spec: schema.ChangeSpec{SequenceFields: []string{"meta.ver", "id", "meta.ver"}}},
		{name: "unwrapped plain", parsed: unwrap},
	}
	for i := range cases {
		cases[i].s = schema.CompileForTest(t, 300+i, cases[i].parsed)
	}
	return cases
}

// ---- random change records ----

// envGen writes random bodies of a change case: Debezium envelopes with a
// random op and the images it wants (or, now and then, not), a source
// with random connectors and positions, valid or not; values with
// __deleted and sequence fields.
type envGen struct {
	*gen
}

func (g envGen) pick(options ...string) string { return options[g.r.IntN(len(options))] }

// opt writes a value of a (a union with null, or not): null when v is nil
// and a has a null branch, else v's bytes.
func (g envGen) opt(b []byte, a avro.Schema, v func([]byte) []byte) []byte {
	if ref, ok := a.(*avro.RefSchema); ok {
		a = ref.Schema()
	}
	u, ok := a.(*avro.UnionSchema)
	if !ok {
		if v == nil {
			return g.value(b, a)
		}
		return v(b)
	}
	null, other := -1, -1
	for i, t := range u.Types() {
		if t.Type() == avro.Null {
			null = i
		} else if other < 0 {
			other = i
		}
	}
	if v == nil && null >= 0 {
		return zz(b, int64(null))
	}
	b = zz(b, int64(other))
	if v == nil {
		return g.value(b, u.Types()[other])
	}
	return v(b)
}

func str(s string) func([]byte) []byte {
	return func(b []byte) []byte { return append(zz(b, int64(len(s))), s...) }
}

func num(n int64) func([]byte) []byte {
	return func(b []byte) []byte { return zz(b, n) }
}

func (g envGen) body(c changeCase) []byte {
	rec := c.parsed.(*avro.RecordSchema)
	if c.spec.Envelope == schema.EnvelopeNone {
		return g.plain(nil, rec)
	}
	op := g.pick("c", "c", "u", "u", "u", "r", "d", "d", "t", "m", "x", "", "cc")
	before := op == "u" && g.r.IntN(3) > 0 || op == "d" && g.r.IntN(5) > 0
	after := op == "c" || op == "u" || op == "r"
	if g.r.IntN(10) == 0 {
		before = !before
	}
	if g.r.IntN(10) == 0 {
		after = !after
	}
	var b []byte
	for _, f := range rec.Fields() {
		switch f.Name() {
		case "op":
			if g.r.IntN(20) == 0 {
				b = g.opt(b, f.Type(), nil)
			} else {
				b = g.opt(b, f.Type(), str(op))
			}
		case "before", "after":
			var image func([]byte) []byte
			if f.Name() == "before" && before || f.Name() == "after" && after {
				value := optionalOf(f.Type())
				image = func(b []byte) []byte { return g.value(b, value) }
			}
			b = g.opt(b, f.Type(), image)
		case "source":
			b = g.opt(b, f.Type(), func(b []byte) []byte { return g.source(b, optionalOf(f.Type()).(*avro.RecordSchema)) })
		default:
			b = g.value(b, f.Type())
		}
	}
	return b
}

func optionalOf(a avro.Schema) avro.Schema {
	if ref, ok := a.(*avro.RefSchema); ok {
		a = ref.Schema()
	}
	if u, ok := a.(*avro.UnionSchema); ok {
		for _, t := range u.Types() {
			if t.Type() != avro.Null {
				return optionalOf(t)
			}
		}
	}
	return a
}

// source writes a Debezium source record with a random connector and
// position.
func (g envGen) source(b []byte, rec *avro.RecordSchema) []byte {
	connector := g.pick("postgresql", "mysql", "mariadb", "sqlserver", "", "postgresql ")
	if g.r.IntN(3) > 0 { // mostly the fixture's own
		switch {
		case strings.Contains(rec.FullName(), "postgresql"):
			connector = "postgresql"
		case strings.Contains(rec.FullName(), "mysql"):
			connector = "mysql"
		}
	}
	null := func() bool { return g.r.IntN(8) == 0 }
	for _, f := range rec.Fields() {
		var v func([]byte) []byte
		switch f.Name() {
		case "connector":
			v = str(connector)
		case "sequence":
			v = str(g.pick(`["24023119","24023448"]`, `[null,"24023448"]`, ` [ "1" ,	null ] `, `[null,null]`,
				`["18446744073709551615","0"]`, `["0001","0"]`))
			if g.r.IntN(3) == 0 {
				v = str(g.pick(`["18446744073709551616","1"]`, `["1"]`, `["1","2","3"]`, `[1,2]`, `["1","2"]x`, `["a","2"]`,
					`["","2"]`, `["\u0031","2"]`, `nul`, ``, `["1",nul]`, `["1" "2"]`, `["1",]`, `{"a":1}`))
			}
		case "lsn", "pos":
			v = num(g.int64In(-2, 1<<30))
		case "row":
			v = num(g.int64In(-1, 1000))
		case "file":
			v = str(g.pick("mysql-bin.000003", "mysql-bin.000003", "binlog.18446744073709551615", "mysql-bin.", "mysqlbin", "a.b.12", "mysql-bin.0x3", "mysql-bin.18446744073709551616"))
		default:
			b = g.value(b, f.Type())
			continue
		}
		if null() {
			v = nil
		}
		b = g.opt(b, f.Type(), v)
	}
	return b
}

// plain writes a value with __deleted and sequence fields of chosen
// values.
func (g envGen) plain(b []byte, rec *avro.RecordSchema) []byte {
	for _, f := range rec.Fields() {
		var v func([]byte) []byte
		switch f.Name() {
		case "__deleted":
			if p, ok := optionalOf(f.Type()).(*avro.PrimitiveSchema); ok && p.Type() == avro.Boolean {
				v = func(b []byte) []byte { return append(b, byte(g.r.IntN(2))) }
			} else {
				v = str(g.pick("true", "false", "TRUE", ""))
			}
		case "__lsn", "__source_ts_ms", "ver":
			v = num(g.int64In(-2, 1<<30))
		case "ts":
			v = num(g.int64In(0, maxMicros/1000))
		case "ts_us":
			v = num(g.int64In(-1, maxMicros))
		case "meta":
			if g.r.IntN(5) > 0 {
				sub := optionalOf(f.Type()).(*avro.RecordSchema)
				v = func(b []byte) []byte { return g.plain(b, sub) }
			}
		default:
			b = g.value(b, f.Type())
			continue
		}
		if g.r.IntN(6) == 0 {
			v = nil
		}
		b = g.opt(b, f.Type(), v)
	}
	return b
}

// ---- comparing ----

type changeTarget struct {
	c  changeCase
	v  variant
	f  *bq.Format
	tc *schema.ChangeTranscoder
}

func newChangeTarget(t testing.TB, c changeCase, v variant) changeTarget {
	t.Helper()
	f, err := bq.NewFormat(v.table)
	if err != nil {
		t.Fatalf("%s/%s: NewFormat: %v", c.name, v.name, err)
	}
	tc, err := c.s.ChangeTranscoder(f.Columns(), v.extra, c.spec)
	if err != nil {
		t.Fatalf("%s/%s: ChangeTranscoder: %v", c.name, v.name, err)
	}
	return changeTarget{c: c, v: v, f: f, tc: tc}
}

func changeTargets(t testing.TB, r *rand.Rand, c changeCase) []changeTarget {
	t.Helper()
	row, err := c.s.ChangeRow(c.spec)
	if err != nil {
		t.Fatalf("%s: ChangeRow: %v", c.name, err)
	}
	var out []changeTarget
	for _, v := range variants(r, row.Columns()) {
		out = append(out, newChangeTarget(t, c, v))
	}
	return out
}

// positionClass names why a change has no position, from either side's
// text.
func positionClass(text string) string {
	switch text {
	case "", "no source", "null connector", "other connector", "no lsn", "bad sequence", "no binlog position", "bad binlog file":
		return text // the reference's
	}
	for _, k := range []struct{ in, class string }{
		{"has no source record", "no source"}, {"has no connector", "null connector"},
		{"neither postgresql nor mysql", "other connector"}, {"neither a sequence nor an lsn", "no lsn"},
		{"sequence is not a JSON array", "bad sequence"}, {"lacks file, pos or row", "no binlog position"},
		{"does not end in a binlog number", "bad binlog file"},
	} {
		if strings.Contains(text, k.in) {
			return k.class
		}
	}
	return "unknown: " + text
}

func sameChange(got, want schema.Change) bool {
	return got.Op == want.Op && got.NeedKey == want.NeedKey && got.SeqLen == want.SeqLen && got.Seq == want.Seq &&
		positionClass(got.NoPosition) == positionClass(want.NoPosition)
}

// compare runs both paths on body and fails t where they differ.
func (tg changeTarget) compare(t testing.TB, body []byte, meta map[string]any, extraField []byte) outcome {
	t.Helper()
	where := tg.c.name + "/" + tg.v.name
	got, ch, terr := tg.tc.Append(nil, body, extraField)
	row, want, derr := tg.c.s.DecodeChange(body, tg.c.spec)
	if derr != nil {
		if terr == nil || !errors.Is(terr, schema.ErrDecode) {
			t.Fatalf("%s: body %x\nDecodeChange: %v\nAppend: %v (%+v)", where, body, derr, terr, ch)
		}
		return decodeFailed
	}
	if row == nil {
		if terr != nil || len(got) != 0 || !sameChange(ch, want) {
			t.Fatalf("%s: body %x\nDecodeChange: no row, %+v\nAppend: %x, %+v, %v", where, body, want, got, ch, terr)
		}
		return okBoth
	}
	if meta != nil {
		row[tg.v.extra] = meta
	}
	wantRow, eerr := encodeRow(tg.f, row)
	if eerr != nil {
		if terr == nil || errors.Is(terr, schema.ErrDecode) || !strings.Contains(terr.Error(), "REQUIRED but missing or null") {
			t.Fatalf("%s: body %x\nEncode: %v\nAppend: %v", where, body, eerr, terr)
		}
		return encodeFailed
	}
	if terr != nil {
		t.Fatalf("%s: body %x: Append: %v; the reference wrote %x, %+v", where, body, terr, wantRow, want)
	}
	if !bytes.Equal(got, wantRow) || !sameChange(ch, want) {
		t.Fatalf("%s: body %x\nAppend: %x %+v\nEncode: %x %+v", where, body, got, ch, wantRow, want)
	}
	return okBoth
}

// TestChangeTranscodeMatchesReference: random change records give the
// reference's rows and changes for every table variant; bodies with
// invalid values fail where the reference fails.
func TestChangeTranscodeMatchesReference(t *testing.T) {
	iters := 400
	if testing.Short() {
		iters = 60
	}
	for ci, c := range loadChangeCases(t) {
		t.Run(c.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(ci), 17))
			var total [3]int
			ops := map[schema.ChangeOp]int{}
			reasons := map[string]int{}
			needKey, positions, noPosition := 0, 0, 0
			for _, tg := range changeTargets(t, r, c) {
				for i := range iters {
					g := envGen{&gen{r: r}}
					if i%3 == 2 {
						g.bad = 0.05
					}
					meta, field, err := target{v: tg.v, f: tg.f}.meta(r)
					if err != nil {
						t.Fatal(err)
					}
					body := g.body(c)
					out := tg.compare(t, body, meta, field)
					total[out]++
					if out == okBoth {
						_, ch, _ := tg.tc.Append(nil, body, field)
						ops[ch.Op]++
						if ch.NeedKey {
							needKey++
						}
						if ch.SeqLen > 0 {
							positions++
						}
						if ch.NoPosition != "" {
							noPosition++
							reasons[positionClass(ch.NoPosition)]++
						}
					}
				}
			}
			t.Logf("%d identical, %d decode errors, %d encode errors; ops %v, %d need the key, %d with a position, %d without %v",
				total[okBoth], total[decodeFailed], total[encodeFailed], ops, needKey, positions, noPosition, reasons)
			if total[okBoth] < iters {
				t.Errorf("only %d identical outcomes: the comparison proves little", total[okBoth])
			}
			if c.spec.Envelope == schema.EnvelopeDebezium && (ops[schema.OpUpsert] == 0 || ops[schema.OpDelete] == 0 || ops[schema.OpTruncate] == 0 || needKey == 0) {
				t.Errorf("ops %v, %d deletes needing the key: some changes were never compared", ops, needKey)
			}
			if c.spec.DebeziumSequence && (positions == 0 || noPosition == 0) {
				t.Errorf("%d changes with a position, %d without: both must be compared", positions, noPosition)
			}
			if c.spec.Envelope == schema.EnvelopeNone && strings.Contains(c.name, "unwrapped") && (ops[schema.OpUpsert] == 0 || ops[schema.OpDelete] == 0) {
				t.Errorf("ops %v: upserts and deletes must both be compared", ops)
			}
		})
	}
}

// TestChangeTranscodeMangledBodies: prefixes of valid bodies, and bodies
// with bytes flipped, inserted or appended, fail (or not) as the reference
// does.
func TestChangeTranscodeMangledBodies(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for _, c := range loadChangeCases(t) {
		tgs := changeTargets(t, r, c)
		tgs = []changeTarget{tgs[0], tgs[len(tgs)-1]}
		for range 20 {
			body := envGen{&gen{r: r}}.body(c)
			for _, tg := range tgs {
				for i := range min(len(body), 64) {
					n := i
					if len(body) > 64 && i >= 16 {
						n = r.IntN(len(body))
					}
					tg.compare(t, body[:n], nil, nil)
				}
				tg.compare(t, append(body[:len(body):len(body)], byte(r.Uint32())), nil, nil)
				for range 30 {
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

// FuzzChangeTranscode: for arbitrary bodies of each change case (and each
// kind of table), the change transcoder and the reference agree.
func FuzzChangeTranscode(f *testing.F) {
	cases := loadChangeCases(f)
	r := rand.New(rand.NewPCG(23, 24))
	var targets [][]changeTarget
	for _, c := range cases {
		targets = append(targets, changeTargets(f, r, c))
	}
	golden := schema.GoldenBodiesForTest(f)
	for i, c := range cases {
		name := map[string]string{
			"postgres": "debezium postgres envelope", "postgres without position": "debezium postgres envelope",
			"mysql": "debezium mysql envelope", "unwrapped": "debezium unwrapped value", "unwrapped plain": "debezium unwrapped value",
		}[c.name]
		if body, ok := golden[name]; ok {
			f.Add(uint8(i), uint8(0), body)
		}
		for added := 0; added < 4; {
			if body := (envGen{&gen{r: r, bad: 0.02}}).body(c); len(body) <= 512 {
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
