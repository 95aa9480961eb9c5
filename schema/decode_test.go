package schema

import (
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"

	"cloud.google.com/go/bigquery"
)

// The tests of the reference decoder (decode_oracle_test.go), which the
// transcoder's tests trust: every way a body can be bad is an ErrDecode
// naming the field, and rows are independent of each other.

func TestDecodeErrors(t *testing.T) {
	v2 := parseFiles(t, "sms_physical_stock_updates.v2.avsc")
	var v2Record map[string]any
	for _, g := range goldens() {
		if g.name == "stock v2" {
			v2Record = g.record
		}
	}
	good := encode(t, v2, v2Record)

	tests := []struct {
		name   string
		schema string // empty: stock v2
		body   []byte
		want   []string // substrings of the error: the field path and the problem
	}{
		{name: "empty body", body: nil, want: []string{"timestamp", "ends early"}},
		{name: "truncated", body: good[:len(good)-1], want: []string{"reason", "ends early"}},
		{name: "trailing bytes", body: append(append([]byte{}, good...), 0), want: []string{"trailing bytes"}},
		{
			name:   "invalid UTF-8 names the nested field",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"record","name":"A","fields":[{"name":"s","type":"string"}]}}]}`,
			body:   []byte{4, 0xff, 0xfe},
			want:   []string{"a.s", "UTF-8"},
		},
		{
			name:   "NULL array element",
			schema: `{"type":"record","name":"R","fields":[{"name":"arr","type":{"type":"array","items":["null","int"]}}]}`,
			body:   []byte{4, 2, 4, 0, 0},
			want:   []string{"arr[1]", "NULL array element"},
		},
		{
			name:   "enum index out of range",
			schema: `{"type":"record","name":"R","fields":[{"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}}]}`,
			body:   []byte{10},
			want:   []string{"e", "enum index 5"},
		},
		{
			name:   "union index out of range",
			schema: `{"type":"record","name":"R","fields":[{"name":"u","type":["null","string"]}]}`,
			body:   []byte{6},
			want:   []string{"u", "union branch 3"},
		},
		{
			name:   "negative length",
			schema: `{"type":"record","name":"R","fields":[{"name":"s","type":"string"}]}`,
			body:   []byte{1, 'a'},
			want:   []string{"s", "length -1"},
		},
		{
			name:   "length beyond the body",
			schema: `{"type":"record","name":"R","fields":[{"name":"b","type":"bytes"}]}`,
			body:   []byte{0xfe, 0xff, 0xff, 0xff, 0x0f, 1, 2},
			want:   []string{"b", "does not fit"},
		},
		{
			name:   "huge block count",
			schema: `{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"array","items":"boolean"}}]}`,
			body:   []byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 1},
			want:   []string{"a[0]", "block of"},
		},
		{
			name:   "block count of math.MinInt64",
			schema: `{"type":"record","name":"R","fields":[{"name":"m","type":{"type":"map","values":"int"}}]}`,
			body:   []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0},
			want:   []string{"m[0]", "block of"},
		},
		{
			name:   "map value names key and index",
			schema: `{"type":"record","name":"R","fields":[{"name":"m","type":{"type":"map","values":"string"}}]}`,
			body:   []byte{2, 2, 'k', 2, 0xc0, 0},
			want:   []string{"m[0].value", "UTF-8"},
		},
		{
			name:   "invalid boolean",
			schema: `{"type":"record","name":"R","fields":[{"name":"b","type":"boolean"}]}`,
			body:   []byte{2},
			want:   []string{"b", "invalid bool"},
		},
		{
			name:   "date outside BigQuery's range",
			schema: `{"type":"record","name":"R","fields":[{"name":"d","type":{"type":"int","logicalType":"date"}}]}`,
			body:   zigzag(3000000),
			want:   []string{"d", "outside"},
		},
		{
			name:   "time-millis past midnight",
			schema: `{"type":"record","name":"R","fields":[{"name":"t","type":{"type":"int","logicalType":"time-millis"}}]}`,
			body:   zigzag(86400000),
			want:   []string{"t", "not a time of day"},
		},
		{
			name:   "timestamp-millis that would overflow micros",
			schema: `{"type":"record","name":"R","fields":[{"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}}]}`,
			body:   zigzag(1 << 62),
			want:   []string{"ts", "outside"},
		},
		{
			name:   "decimal over its precision",
			schema: `{"type":"record","name":"R","fields":[{"name":"x","type":{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}}]}`,
			body:   []byte{6, 0x01, 0xe2, 0x40}, // 123456 -> 1234.56 needs 6 digits
			want:   []string{"x", "more than its precision 4"},
		},
		{
			name:   "huge decimal is refused before conversion",
			schema: `{"type":"record","name":"R","fields":[{"name":"x","type":{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}}]}`,
			body:   append([]byte{0x80, 0x01, 0x01}, make([]byte, 63)...), // 64 bytes: 0x01 then zeros
			want:   []string{"x", "exceeds precision"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := compileFiles(t, "sms_physical_stock_updates.v2.avsc")
			if tt.schema != "" {
				var err error
				if s, err = compileText(t, tt.schema); err != nil {
					t.Fatal(err)
				}
			}
			row, err := s.Decode(tt.body)
			if !errors.Is(err, ErrDecode) {
				t.Fatalf("Decode = %v, %v; want ErrDecode", row, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// zigzag encodes v as an Avro long.
func zigzag(v int64) []byte {
	u := uint64(v<<1) ^ uint64(v>>63)
	var b []byte
	for u >= 0x80 {
		b = append(b, byte(u)|0x80)
		u >>= 7
	}
	return append(b, byte(u))
}

// TestDecodeAfterError: a pooled decoder that failed must not leak its
// error or position into the next record.
func TestDecodeAfterError(t *testing.T) {
	s, err := compileText(t, `{"type":"record","name":"R","fields":[{"name":"s","type":"string"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.Decode([]byte{9}); !errors.Is(err, ErrDecode) {
			t.Fatalf("bad body: %v", err)
		}
		row, err := s.Decode([]byte{2, 'x'})
		if err != nil {
			t.Fatal(err)
		}
		assertRow(t, row, map[string]any{"s": "x"})
	}
}

// TestDecodeValuesAreIndependent: bytes values from one record must not
// share capacity with each other, so appending to one cannot overwrite
// another.
func TestDecodeValuesAreIndependent(t *testing.T) {
	s, err := compileText(t, `{"type":"record","name":"R","fields":[{"name":"a","type":"bytes"},{"name":"b","type":"bytes"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	row, err := s.Decode([]byte{2, 'a', 2, 'b'})
	if err != nil {
		t.Fatal(err)
	}
	a := row["a"].([]byte)
	_ = append(a, 'X')
	assertRow(t, row, map[string]any{"a": []byte("a"), "b": []byte("b")})
}

func TestDecodeConcurrent(t *testing.T) {
	var g golden
	for _, x := range goldens() {
		if x.name == "delivery" {
			g = x
		}
	}
	s := compileFiles(t, g.files...)
	body := encode(t, parseFiles(t, g.files...), g.record)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for range 200 {
				row, err := s.Decode(body)
				if err != nil {
					errs <- err
					return
				}
				if row["total"] != "1234.56" || row["status"] != "SHIPPED" {
					errs <- errors.New("wrong row")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestDecimalText(t *testing.T) {
	big9 := func(s string) []byte { // two's complement of a decimal literal in 9+ bytes
		n, _ := new(big.Int).SetString(s, 10)
		if n.Sign() >= 0 {
			return append([]byte{0}, n.Bytes()...)
		}
		m := new(big.Int).Lsh(big.NewInt(1), uint(8*(len(n.Bytes())+1)))
		return m.Add(m, n).Bytes()
	}
	tests := []struct {
		b      []byte
		scale  int
		want   string
		digits int
	}{
		{nil, 0, "0", 0},
		{nil, 2, "0.00", 0},
		{[]byte{0}, 3, "0.000", 0},
		{[]byte{0xff}, 2, "-0.01", 1},
		{[]byte{0x7f}, 0, "127", 3},
		{[]byte{0x80}, 1, "-12.8", 3},
		{[]byte{0x04, 0xd2}, 1, "123.4", 4},
		{[]byte{0x80, 0, 0, 0, 0, 0, 0, 0}, 0, "-9223372036854775808", 19},
		{[]byte{0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 4, "922337203685477.5807", 19},
		{big9("123456789012345678901234567890"), 9, "123456789012345678901.234567890", 30},
		{big9("-123456789012345678901234567890"), 40, "-0.0000000000123456789012345678901234567890", 30},
	}
	for _, tt := range tests {
		got, digits := decimalText(trimSign(tt.b), tt.scale)
		if got != tt.want || digits != tt.digits {
			t.Errorf("decimalText(%x, %d) = %q, %d; want %q, %d", tt.b, tt.scale, got, digits, tt.want, tt.digits)
		}
	}
	// Redundant sign bytes, as a fixed decimal is padded, do not change the value.
	if got, _ := decimalText(trimSign([]byte{0xff, 0xff, 0xff, 0xfe}), 0); got != "-2" {
		t.Errorf("padded -2 = %q", got)
	}
	if got, _ := decimalText(trimSign([]byte{0, 0, 0, 0x80}), 0); got != "128" {
		t.Errorf("padded 128 = %q", got)
	}
}

func TestMappingRefused(t *testing.T) {
	tests := []struct {
		name   string
		schema string
		want   []string
	}{
		{"null alone", `{"type":"record","name":"R","fields":[{"name":"n","type":"null"}]}`, []string{"n", "null alone"}},
		{"union of null alone", `{"type":"record","name":"R","fields":[{"name":"n","type":["null"]}]}`, []string{"n", "null alone"}},
		{"null array items", `{"type":"record","name":"R","fields":[{"name":"n","type":{"type":"array","items":"null"}}]}`, []string{"n[]", "null alone"}},
		{
			"direct recursion",
			`{"type":"record","name":"Node","namespace":"x","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","Node"]}]}`,
			[]string{"next", "recursive type x.Node", "x.Node -> x.Node"},
		},
		{
			"indirect recursion through an array",
			`{"type":"record","name":"A","fields":[{"name":"bs","type":{"type":"array","items":{"type":"record","name":"B","fields":[{"name":"a","type":"A"}]}}}]}`,
			[]string{"bs[].a", "A -> B -> A"},
		},
		{
			"names differing only in case",
			`{"type":"record","name":"R","fields":[{"name":"Name","type":"int"},{"name":"name","type":"int"}]}`,
			[]string{`"Name"`, `"name"`, "case-insensitive"},
		},
		{
			"union branch names differing only in case",
			`{"type":"record","name":"R","fields":[{"name":"u","type":["long",{"type":"record","name":"Long","fields":[{"name":"x","type":"int"}]}]}]}`,
			[]string{"u", `"long"`, `"Long"`},
		},
		{"reserved prefix", `{"type":"record","name":"R","fields":[{"name":"_PARTITIONTIME","type":"int"}]}`, []string{"_PARTITIONTIME", "reserved"}},
		{"empty record", `{"type":"record","name":"R","fields":[{"name":"e","type":{"type":"record","name":"E","fields":[]}}]}`, []string{"e", "no fields"}},
		{"top level not a record", `"string"`, []string{"top-level type is string"}},
		{"fixed of size 0", `{"type":"record","name":"R","fields":[{"name":"f","type":{"type":"fixed","name":"F","size":0}}]}`, []string{"f", "size 0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := compileText(t, tt.schema)
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("compile = %v; want ErrUnsupported", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestSharedTypeTwice: a named type used by two fields (not recursion) maps
// twice.
func TestSharedTypeTwice(t *testing.T) {
	s, err := compileText(t, `{"type":"record","name":"R","fields":[
		{"name":"a","type":{"type":"record","name":"P","fields":[{"name":"x","type":"int"}]}},
		{"name":"b","type":["null","P"]}]}`)
	if err != nil {
		t.Fatal(err)
	}
	p := func(name, mode string) *bigquery.FieldSchema {
		return col(name, RECORD, mode, col("x", INTEGER, "REQUIRED"))
	}
	assertColumns(t, s.Columns(), []*bigquery.FieldSchema{p("a", "REQUIRED"), p("b", "NULLABLE")})
}

func BenchmarkDecode(b *testing.B) {
	var g golden
	for _, x := range goldens() {
		if x.name == "stock v2" {
			g = x
		}
	}
	s := compileFiles(b, g.files...)
	body := encode(b, parseFiles(b, g.files...), g.record)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Decode(body); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDescriptionLimit: BigQuery rejects descriptions over 1,024
// characters, so a long Avro doc is cut at a character boundary.
func TestDescriptionLimit(t *testing.T) {
	long := strings.Repeat("é", 1500)
	s, err := compileText(t, `{"type":"record","name":"R","fields":[{"name":"a","type":"int","doc":"`+long+`"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Columns()[0].Description; got != strings.Repeat("é", 1024) {
		t.Errorf("description has %d bytes, want 1024 runes", len(got))
	}
}
