package bq

import (
	"errors"
	"math/big"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"google.golang.org/protobuf/encoding/protowire"
)

func mustSequence(t testing.TB, sections ...uint64) Sequence {
	t.Helper()
	q, err := NewSequence(sections...)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func TestSequenceFormat(t *testing.T) {
	for _, tc := range []struct {
		sections []uint64
		want     string
	}{
		{nil, ""},
		{[]uint64{0}, "0"},
		{[]uint64{0xff}, "FF"},
		{[]uint64{0xfff, 0xb}, "FFF/B"},
		{[]uint64{1, 0, 0x10, 1 << 63}, "1/0/10/8000000000000000"},
		{[]uint64{^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0)}, "FFFFFFFFFFFFFFFF/FFFFFFFFFFFFFFFF/FFFFFFFFFFFFFFFF/FFFFFFFFFFFFFFFF"},
	} {
		q := mustSequence(t, tc.sections...)
		if got := q.String(); got != tc.want {
			t.Errorf("%v: String() = %q, want %q", tc.sections, got, tc.want)
		}
		if got := string(q.Append([]byte("x:"))); got != "x:"+tc.want {
			t.Errorf("%v: Append = %q", tc.sections, got)
		}
		if q.Len() != len(tc.sections) || q.IsZero() != (len(tc.sections) == 0) {
			t.Errorf("%v: Len %d IsZero %v", tc.sections, q.Len(), q.IsZero())
		}
		for i, v := range tc.sections {
			if q.Section(i) != v {
				t.Errorf("%v: Section(%d) = %d", tc.sections, i, q.Section(i))
			}
		}
	}
	if _, err := NewSequence(1, 2, 3, 4, 5); err == nil {
		t.Error("NewSequence with five sections succeeded")
	}
}

func TestParseSequence(t *testing.T) {
	good := map[string][]uint64{
		"0":                   {0},
		"ff":                  {0xff},
		"Ab/cD":               {0xab, 0xcd},
		"000000000000000A":    {10},
		"1/2/3/4":             {1, 2, 3, 4},
		"FFFFFFFFFFFFFFFF/0":  {^uint64(0), 0},
		"8000000000000000/01": {1 << 63, 1},
	}
	for s, want := range good {
		q, err := ParseSequence(s)
		if err != nil {
			t.Errorf("ParseSequence(%q): %v", s, err)
			continue
		}
		if CompareSequence(q, mustSequence(t, want...)) != 0 {
			t.Errorf("ParseSequence(%q) = %v, want %v", s, q, want)
		}
	}
	bad := map[string]string{
		"":                  "empty",
		"/":                 "empty section",
		"A/":                "empty section",
		"/A":                "empty section",
		"A//B":              "empty section",
		"1/2/3/4/5":         "more than 4 sections",
		"10000000000000000": "more than 16 hex digits",
		"G":                 "not a hex digit",
		"-1":                "not a hex digit",
		"+1":                "not a hex digit",
		" 1":                "not a hex digit",
		"0x1":               "not a hex digit",
		"1.2":               "not a hex digit",
	}
	for s, want := range bad {
		_, err := ParseSequence(s)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSequence(%q) = %v, want an error saying %q", s, err, want)
		}
	}
}

// BigQuery compares sequence numbers section by section as unsigned
// numbers; this package orders a prefix before the longer sequence.
func TestCompareSequence(t *testing.T) {
	ordered := []string{"0", "0/0", "0/1", "A", "A/0", "A/0/0/0", "A/1", "B", "FFF/A", "FFF/B", "1000/0", "7FFFFFFFFFFFFFFF", "8000000000000000", "FFFFFFFFFFFFFFFF"}
	seqs := []Sequence{{}} // the zero Sequence comes first
	for _, s := range ordered {
		q, err := ParseSequence(s)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, q)
	}
	for i, a := range seqs {
		for j, b := range seqs {
			want := 0
			switch {
			case i < j:
				want = -1
			case i > j:
				want = 1
			}
			if got := CompareSequence(a, b); got != want {
				t.Errorf("CompareSequence(%q, %q) = %d, want %d", a, b, got, want)
			}
		}
	}
	// Leading zeros and case make no difference.
	a, _ := ParseSequence("00ff/0A")
	b, _ := ParseSequence("FF/a")
	if CompareSequence(a, b) != 0 || a.String() != "FF/A" {
		t.Errorf("00ff/0A and FF/a: compare %d, String %q", CompareSequence(a, b), a)
	}
}

// The hot path (a sequence made, formatted, compared, a change appended)
// allocates nothing.
func TestSequenceAllocations(t *testing.T) {
	f, err := NewChangeFormat(optionsSchema())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 0, 256)
	sections := []uint64{1, 2, 3}
	var sink int
	allocs := testing.AllocsPerRun(100, func() {
		q, _ := NewSequence(7, 0xabc)
		r, _ := NewSequence(sections...)
		p, _ := ParseSequence("FF/A")
		sink += CompareSequence(q, r) + CompareSequence(p, q) + len(q.Append(buf[:0]))
		sink += len(f.AppendChange(buf[:0], true, r))
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per run, want 0", allocs)
	}
	_ = sink
}

// refValid is ParseSequence's grammar, independently.
var refValid = regexp.MustCompile(`^[0-9A-Fa-f]{1,16}(/[0-9A-Fa-f]{1,16}){0,3}$`)

// refCompare compares two sequence numbers in BigQuery's form with
// math/big, section by section, a prefix first.
func refCompare(a, b string) int {
	var as, bs []string
	if a != "" {
		as = strings.Split(a, "/")
	}
	if b != "" {
		bs = strings.Split(b, "/")
	}
	for i := 0; i < len(as) && i < len(bs); i++ {
		x, ok1 := new(big.Int).SetString(as[i], 16)
		y, ok2 := new(big.Int).SetString(bs[i], 16)
		if !ok1 || !ok2 {
			panic("refCompare: not hex: " + a + " " + b)
		}
		if c := x.Cmp(y); c != 0 {
			return c
		}
	}
	switch {
	case len(as) < len(bs):
		return -1
	case len(as) > len(bs):
		return 1
	}
	return 0
}

// refPadded is the other reference: sections zero-padded to 16 digits
// compare as strings like the numbers they are.
func refPadded(s string) []string {
	if s == "" {
		return nil
	}
	parts := strings.Split(strings.ToUpper(s), "/")
	for i, p := range parts {
		parts[i] = strings.Repeat("0", 16-len(p)) + p
	}
	return parts
}

func FuzzSequence(f *testing.F) {
	f.Add(uint8(1), uint64(0), uint64(0), uint64(0), uint64(0), uint8(1), uint64(1), uint64(0), uint64(0), uint64(0), "FFF/B")
	f.Add(uint8(4), ^uint64(0), uint64(1), uint64(2), uint64(3), uint8(2), ^uint64(0), uint64(1), uint64(0), uint64(0), "0/0/0/0")
	f.Add(uint8(0), uint64(5), uint64(0), uint64(0), uint64(0), uint8(3), uint64(1<<63), uint64(1<<63-1), uint64(0), uint64(0), "a//b")
	f.Add(uint8(2), uint64(10), uint64(0), uint64(0), uint64(0), uint8(1), uint64(10), uint64(0), uint64(0), uint64(0), "00000000000000000")
	f.Fuzz(func(t *testing.T, na uint8, a0, a1, a2, a3 uint64, nb uint8, b0, b1, b2, b3 uint64, s string) {
		a := mustSequence(t, []uint64{a0, a1, a2, a3}[:na%5]...)
		b := mustSequence(t, []uint64{b0, b1, b2, b3}[:nb%5]...)

		// Format, then parse: the same sequence, and the same text.
		for _, q := range []Sequence{a, b} {
			txt := q.String()
			if !q.IsZero() && !refValid.MatchString(txt) {
				t.Fatalf("%v formats as %q, not BigQuery's form", q.sec[:q.n], txt)
			}
			if q.IsZero() {
				continue
			}
			back, err := ParseSequence(txt)
			if err != nil {
				t.Fatalf("ParseSequence(%q): %v", txt, err)
			}
			if back != q || CompareSequence(back, q) != 0 || back.String() != txt {
				t.Fatalf("%q parses as %v, formatted from %v", txt, back.sec[:back.n], q.sec[:q.n])
			}
		}

		// The order agrees with both references and is antisymmetric.
		got := CompareSequence(a, b)
		if want := refCompare(a.String(), b.String()); got != want {
			t.Fatalf("CompareSequence(%q, %q) = %d, math/big says %d", a, b, got, want)
		}
		if want := slices.Compare(refPadded(a.String()), refPadded(b.String())); got != want {
			t.Fatalf("CompareSequence(%q, %q) = %d, padded strings say %d", a, b, got, want)
		}
		if CompareSequence(b, a) != -got {
			t.Fatalf("CompareSequence is not antisymmetric on %q, %q", a, b)
		}
		if (got == 0) != (a == b) {
			t.Fatalf("CompareSequence(%q, %q) = %d but the values are equal: %v", a, b, got, a == b)
		}

		// Any string: parsed exactly when the grammar says, and then it
		// compares as the reference reads it.
		q, err := ParseSequence(s)
		if (err == nil) != refValid.MatchString(s) {
			t.Fatalf("ParseSequence(%q) error %v, grammar says valid=%v", s, err, refValid.MatchString(s))
		}
		if err == nil {
			if c := CompareSequence(q, a); c != refCompare(s, a.String()) {
				t.Fatalf("CompareSequence(%q, %q) = %d, math/big says %d", s, a, c, refCompare(s, a.String()))
			}
			again, err := ParseSequence(q.String())
			if err != nil || again != q {
				t.Fatalf("%q → %q → %v, %v", s, q, again, err)
			}
		}
	})
}

// AppendChange writes the two pseudo-columns after the row's columns, as
// fields len(Columns)+1 and +2, which the descriptor declares as optional
// strings named as BigQuery reads them.
func TestAppendChangeWire(t *testing.T) {
	f, err := NewChangeFormat(typicalSchema())
	if err != nil {
		t.Fatal(err)
	}
	if !f.Change() || len(f.Columns()) != len(typicalSchema()) {
		t.Fatalf("Change %v, %d columns, want true and %d (pseudo-columns are not columns)", f.Change(), len(f.Columns()), len(typicalSchema()))
	}
	row, err := f.Encode(typicalRow())
	if err != nil {
		t.Fatal(err)
	}
	n := protowire.Number(len(typicalSchema()))
	seq := mustSequence(t, 0x1a, 0xff)
	for _, tc := range []struct {
		del  bool
		seq  Sequence
		want []protowire.Number
		typ  string
	}{
		{false, Sequence{}, []protowire.Number{n + 1}, "UPSERT"},
		{true, seq, []protowire.Number{n + 1, n + 2}, "DELETE"},
	} {
		b := f.AppendChange(slices.Clone(row), tc.del, tc.seq)
		if !slices.Equal(b[:len(row)], row) {
			t.Fatal("AppendChange changed the row's bytes")
		}
		// The appended bytes, field by field.
		tail := b[len(row):]
		var nums []protowire.Number
		values := map[protowire.Number]string{}
		for len(tail) > 0 {
			num, typ, k := protowire.ConsumeTag(tail)
			if k < 0 || typ != protowire.BytesType {
				t.Fatalf("appended field: tag error %d, type %v", k, typ)
			}
			v, m := protowire.ConsumeBytes(tail[k:])
			if m < 0 {
				t.Fatalf("appended field %d: %v", num, protowire.ParseError(m))
			}
			nums = append(nums, num)
			values[num] = string(v)
			tail = tail[k+m:]
		}
		if !slices.Equal(nums, tc.want) || values[n+1] != tc.typ || values[n+2] != tc.seq.String() {
			t.Errorf("del=%v seq=%q: appended fields %v %q, want %v with %s", tc.del, tc.seq, nums, values, tc.want, tc.typ)
		}

		// BigQuery's view: the whole row decoded with the descriptor.
		msg := decode(t, f.enc, b)
		if got := field(t, msg, "_CHANGE_TYPE").String(); got != tc.typ {
			t.Errorf("_CHANGE_TYPE decodes as %q", got)
		}
		if got := field(t, msg, "_CHANGE_SEQUENCE_NUMBER").String(); got != tc.seq.String() {
			t.Errorf("_CHANGE_SEQUENCE_NUMBER decodes as %q", got)
		}
		if got := field(t, msg, "id").Int(); got != 42 {
			t.Errorf("id decodes as %d", got)
		}
		if err := f.enc.checkChange(b); err != nil {
			t.Errorf("checkChange: %v", err)
		}
	}
	md := wireMessage(t, f.enc)
	for i, name := range []string{"_CHANGE_TYPE", "_CHANGE_SEQUENCE_NUMBER"} {
		fd := md.Fields().ByNumber(n + 1 + protowire.Number(i))
		if fd == nil || string(fd.Name()) != name || fd.Kind().String() != "string" || fd.Cardinality().String() != "optional" {
			t.Errorf("descriptor field %d: %v, want optional string %s", n+1+protowire.Number(i), fd, name)
		}
	}
}

func TestNewChangeFormatRefusesPseudoColumnNames(t *testing.T) {
	_, err := NewChangeFormat(bigquery.Schema{col("id", bigquery.IntegerFieldType, ""), col("_change_type", bigquery.StringFieldType, "")})
	if err == nil || !strings.Contains(err.Error(), "_change_type") {
		t.Errorf("NewChangeFormat with a _change_type column: %v", err)
	}
	if _, err := NewFormat(bigquery.Schema{col("id", bigquery.IntegerFieldType, "")}); err != nil {
		t.Fatal(err)
	}
}

// AppendChange on a plain format is the caller's bug: a DELETE would be
// appended as a row.
func TestAppendChangePanicsOnPlainFormat(t *testing.T) {
	f, err := NewFormat(optionsSchema())
	if err != nil {
		t.Fatal(err)
	}
	if f.Change() {
		t.Fatal("NewFormat made a change format")
	}
	defer func() {
		if recover() == nil {
			t.Error("AppendChange on a plain format did not panic")
		}
	}()
	f.AppendChange(nil, true, Sequence{})
}

// A change row must carry exactly one valid change type, and a valid
// sequence number if any.
func TestCheckChange(t *testing.T) {
	f, err := NewChangeFormat(optionsSchema())
	if err != nil {
		t.Fatal(err)
	}
	row, err := f.Encode(map[string]any{"id": int64(1)})
	if err != nil {
		t.Fatal(err)
	}
	n := protowire.Number(len(f.Columns()))
	field := func(num protowire.Number, v string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), v)
	}
	cat := func(parts ...[]byte) []byte { return slices.Concat(parts...) }
	good := map[string][]byte{
		"upsert":            f.AppendChange(slices.Clone(row), false, Sequence{}),
		"delete with seq":   f.AppendChange(slices.Clone(row), true, mustSequence(t, 1, 2)),
		"type first":        cat(field(n+1, "DELETE"), row),
		"seq before type":   cat(row, field(n+2, "ff/0"), field(n+1, "UPSERT")),
		"delete, key alone": f.AppendChange(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 7), true, Sequence{}),
	}
	for name, b := range good {
		if err := f.enc.checkChange(b); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	bad := map[string][]byte{
		"no change type":      row,
		"empty row":           nil,
		"seq alone":           cat(row, field(n+2, "1")),
		"lower case type":     cat(row, field(n+1, "upsert")),
		"INSERT":              cat(row, field(n+1, "INSERT")),
		"type twice":          cat(f.AppendChange(slices.Clone(row), false, Sequence{}), field(n+1, "DELETE")),
		"seq twice":           cat(f.AppendChange(slices.Clone(row), false, mustSequence(t, 1)), field(n+2, "2")),
		"bad seq":             cat(row, field(n+1, "UPSERT"), field(n+2, "1//2")),
		"type as varint":      cat(row, protowire.AppendVarint(protowire.AppendTag(nil, n+1, protowire.VarintType), 1)),
		"truncated":           f.AppendChange(slices.Clone(row), false, Sequence{})[:len(row)+3],
		"not protobuf at all": []byte{0xff, 0xff, 0xff},
	}
	for name, b := range bad {
		if err := f.enc.checkChange(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Options that cannot key a table are a configuration error naming the
// setting and the column, before BigQuery is asked.
func TestCheckOptionsPrimaryKey(t *testing.T) {
	schema := append(optionsSchema(),
		col("geo", bigquery.GeographyFieldType, "NULLABLE"),
		col("doc", bigquery.JSONFieldType, "NULLABLE"),
		col("blob", bigquery.BytesFieldType, "NULLABLE"),
		col("name", bigquery.StringFieldType, "REQUIRED"),
		col("amount", bigquery.NumericFieldType, "NULLABLE"),
		col("flag", bigquery.FieldType("BOOL"), "NULLABLE"))
	for _, o := range []TableOptions{
		{PrimaryKey: []string{"id"}},
		{PrimaryKey: []string{"ID", "day", "at", "name", "amount", "flag"}, MaxStaleness: 15 * time.Minute},
		{PrimaryKey: []string{"id"}, Clustering: []string{"day"}},
	} {
		if err := checkOptions(o, schema); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
	many := make([]string, 17)
	for i := range many {
		many[i] = "id"
	}
	bad := map[string]TableOptions{
		`tables.t.primary_key: 17 columns; BigQuery's primary keys have at most 16`: {PrimaryKey: many, PrimaryKeyKey: "tables.t.primary_key"},
		`primary_key: "nope" is not a top-level column`:                             {PrimaryKey: []string{"id", "nope"}},
		`primary_key: "rec.ts" is not a top-level column`:                           {PrimaryKey: []string{"rec.ts"}},
		`primary_key: "tags" is REPEATED`:                                           {PrimaryKey: []string{"tags"}},
		`primary_key: "price" is FLOAT`:                                             {PrimaryKey: []string{"price"}},
		`primary_key: "rec" is RECORD`:                                              {PrimaryKey: []string{"rec"}},
		`primary_key: "geo" is GEOGRAPHY`:                                           {PrimaryKey: []string{"geo"}},
		`primary_key: "doc" is JSON`:                                                {PrimaryKey: []string{"doc"}},
		`primary_key: "blob" is BYTES`:                                              {PrimaryKey: []string{"blob"}},
		`primary_key: "ID" is listed twice`:                                         {PrimaryKey: []string{"id", "ID"}},
		`max_staleness -1s is negative`:                                             {PrimaryKey: []string{"id"}, MaxStaleness: -time.Second},
	}
	for want, o := range bad {
		err := checkOptions(o, schema)
		if !errors.Is(err, ErrTableConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: %v; want ErrTableConfig saying %s", o, err, want)
		}
	}
}

// A change table is created keyed, clustered by its key, with max
// staleness, and with every top-level column but the key's NULLABLE.
func TestMetadataForChangeTable(t *testing.T) {
	schema := bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		col("region", bigquery.StringFieldType, "REQUIRED"),
		col("name", bigquery.StringFieldType, "REQUIRED"),
		col("tags", bigquery.StringFieldType, "REPEATED"),
		col("addr", bigquery.RecordFieldType, "REQUIRED", col("zip", bigquery.StringFieldType, "REQUIRED")),
	}
	o := TableOptions{PrimaryKey: []string{"id", "REGION"}, MaxStaleness: 90 * time.Minute}
	md := o.metadataFor(schema)
	equalShape(t, md.Schema, bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		col("region", bigquery.StringFieldType, "REQUIRED"),
		col("name", bigquery.StringFieldType, "NULLABLE"),
		col("tags", bigquery.StringFieldType, "REPEATED"),
		col("addr", bigquery.RecordFieldType, "NULLABLE", col("zip", bigquery.StringFieldType, "REQUIRED")),
	})
	if !schema[2].Required {
		t.Error("metadataFor modified the schema it was given")
	}
	if md.TableConstraints == nil || md.TableConstraints.PrimaryKey == nil || !slices.Equal(md.TableConstraints.PrimaryKey.Columns, []string{"id", "REGION"}) {
		t.Errorf("table constraints %+v", md.TableConstraints)
	}
	if md.Clustering == nil || !slices.Equal(md.Clustering.Fields, []string{"id", "REGION"}) {
		t.Errorf("clustering %+v, want the key", md.Clustering)
	}
	if md.MaxStaleness == nil || md.MaxStaleness.String() != "0-0 0 1:30:0" {
		t.Errorf("max staleness %v", md.MaxStaleness)
	}

	// Clustering by the first four key columns only; configured clustering
	// wins; a plain table has neither key nor relaxed columns.
	long := TableOptions{PrimaryKey: []string{"a", "b", "c", "d", "e"}}
	if got := long.metadataFor(schema).Clustering.Fields; !slices.Equal(got, []string{"a", "b", "c", "d"}) {
		t.Errorf("clustering of a five-column key: %v", got)
	}
	own := TableOptions{PrimaryKey: []string{"id"}, Clustering: []string{"name"}}
	if got := own.metadataFor(schema).Clustering.Fields; !slices.Equal(got, []string{"name"}) {
		t.Errorf("configured clustering: %v", got)
	}
	plain := TableOptions{}.metadataFor(schema)
	if plain.TableConstraints != nil || plain.Clustering != nil || plain.MaxStaleness != nil || !plain.Schema[2].Required {
		t.Errorf("plain table: constraints %v clustering %v staleness %v", plain.TableConstraints, plain.Clustering, plain.MaxStaleness)
	}
}

// The DDL in ErrPrimaryKey's message is runnable: names that are not
// identifiers are quoted.
func TestCheckPrimaryKeyMessages(t *testing.T) {
	o := TableOptions{PrimaryKey: []string{"id", "my col"}}
	keyed := func(cols ...string) *bigquery.TableMetadata {
		return &bigquery.TableMetadata{TableConstraints: &bigquery.TableConstraints{PrimaryKey: &bigquery.PrimaryKey{Columns: cols}}}
	}
	for _, tc := range []struct {
		md      *bigquery.TableMetadata
		created bool
		want    string // "" for no error
	}{
		{keyed("MY COL", "ID"), false, ""},
		{&bigquery.TableMetadata{}, false, "table p.d.t has no primary key; bqsink writes changes by (id, `my col`) (primary_key): run ALTER TABLE `p.d.t` ADD PRIMARY KEY (id, `my col`) NOT ENFORCED"},
		{&bigquery.TableMetadata{TableConstraints: &bigquery.TableConstraints{}}, false, "has no primary key"},
		{&bigquery.TableMetadata{}, true, "was created with PRIMARY KEY (id, `my col`) but has none"},
		{keyed("id"), false, "table p.d.t has primary key (id); bqsink writes changes by (id, `my col`) (primary_key): run ALTER TABLE `p.d.t` DROP PRIMARY KEY; then ALTER TABLE `p.d.t` ADD PRIMARY KEY (id, `my col`) NOT ENFORCED"},
	} {
		err := checkPrimaryKey("p.d.t", o, tc.md, tc.created)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.md, err)
		case tc.want == "":
		case !errors.Is(err, ErrPrimaryKey) || !errors.Is(err, ErrTableConfig) || !permanent(err) || !strings.Contains(err.Error(), tc.want):
			t.Errorf("%+v: %v; want a permanent ErrPrimaryKey saying %s", tc.md, err, tc.want)
		}
	}
	for in, want := range map[string]string{"id": "id", "_x9": "_x9", "9x": "`9x`", "a-b": "`a-b`", "a`b": "`a\\`b`", "": "``"} {
		if got := ddlIdent(in); got != want {
			t.Errorf("ddlIdent(%q) = %s, want %s", in, got, want)
		}
	}
}
