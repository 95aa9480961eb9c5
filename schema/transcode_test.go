package schema

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"cloud.google.com/go/bigquery"
	"github.com/hamba/avro/v2"
	"go.uber.org/zap"
)

// CompileForTest compiles a parsed writer schema as the registry does; the
// external tests (transcode_diff_test.go, which need bq) use it.
func CompileForTest(tb testing.TB, id int, parsed avro.Schema) *Schema {
	tb.Helper()
	s, err := compile(id, parsed, zap.NewNop())
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// GoldenBodiesForTest returns the Avro body of each golden record (see
// goldens), by golden name, for the external benchmarks.
func GoldenBodiesForTest(tb testing.TB) map[string][]byte {
	tb.Helper()
	out := make(map[string][]byte)
	for _, g := range goldens() {
		out[g.name] = encode(tb, parseFiles(tb, g.files...), g.record)
	}
	return out
}

// TestReaderMatchesHamba: our varint, bool and float reads take the same
// bytes, give the same values and fail in the same way as hamba/avro's
// Reader over a byte slice, which Decode uses. Overlong varints are the
// interesting part: hamba reads them as the body ending early.
func TestReaderMatchesHamba(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	hr := avro.NewReader(nil, 0)
	for i := range 200000 {
		buf := make([]byte, r.IntN(14))
		for j := range buf {
			switch r.IntN(4) {
			case 0:
				buf[j] = byte(r.IntN(0x80))
			case 1:
				buf[j] = 0xff
			default:
				buf[j] = 0x80 | byte(r.IntN(0x80))
			}
		}
		op := i % 4
		hr.Reset(buf)
		hr.Error = nil
		st := tstate{buf: buf}
		for range 2 { // two reads in a row: the second starts where the first ended
			var want, got int64
			var herr, err error
			switch op {
			case 0:
				want = hr.ReadLong()
				got, err = st.readLong()
			case 1:
				want = int64(hr.ReadInt())
				var v int32
				v, err = st.readInt()
				got = int64(v)
			case 2:
				if hr.ReadBool() {
					want = 1
				}
				n := &node{kind: kBool}
				var out []byte
				out, _, err = n.run(&st, nil)
				if err == nil {
					got = int64(out[0])
				}
			case 3:
				want = int64(math.Float64bits(hr.ReadDouble()))
				var b []byte
				if b, err = st.take(8); err == nil {
					got = int64(math.Float64bits(math.Float64frombits(uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
						uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56)))
				}
			}
			d := &decoder{r: hr}
			herr = d.readErr()
			if (herr == nil) != (err == nil) || herr != nil && herr.Error() != err.Error() {
				t.Fatalf("op %d on %x: hamba error %v, ours %v", op, buf, herr, err)
			}
			if herr != nil {
				break
			}
			if got != want {
				t.Fatalf("op %d on %x: hamba read %d, we read %d", op, buf, want, got)
			}
		}
	}
}

// TestDecimalDigits: the allocation-free decimal text equals decimalText,
// Decode's, for values of every width up to far beyond BIGNUMERIC.
func TestDecimalDigits(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	check := func(b []byte, scale int) {
		t.Helper()
		want, wantCount := decimalText(b, scale)
		var buf [160]byte
		digits, neg := decimalDigits(buf[:], b)
		count := len(digits)
		if count == 1 && digits[0] == '0' {
			count, neg = 0, false
		}
		got := string(appendDecimalText(nil, digits, neg, scale))
		if got != want || count != wantCount {
			t.Fatalf("%x scale %d: got %s (%d digits), want %s (%d digits)", b, scale, got, count, want, wantCount)
		}
	}
	edges := [][]byte{
		{}, {0}, {0xff}, {0x80}, {0x7f}, {0, 0, 0, 0, 0, 0, 0, 0, 0}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		{0x80, 0, 0, 0, 0, 0, 0, 0}, {0x80, 0, 0, 0, 0, 0, 0, 0, 0}, {0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		{0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		bytes.Repeat([]byte{0x80}, 100), bytes.Repeat([]byte{0x7f}, 200), append([]byte{1}, make([]byte, 40)...),
	}
	for _, b := range edges {
		for _, scale := range []int{0, 1, 9, 38, 80} {
			check(b, scale)
		}
	}
	for range 100000 {
		b := make([]byte, r.IntN(72))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		if len(b) > 0 && r.IntN(3) == 0 {
			b[0] = 0xff
		}
		check(b, r.IntN(40))
	}
}

// TestDateTimeAndTime: the append forms equal dateTime and timeOfDay
// across BigQuery's whole range.
func TestDateTimeAndTime(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	us := []int64{minMicros, maxMicros, 0, -1, 1, dayMicros, -dayMicros, -dayMicros - 1, 951782400000000 /* 2000-02-29 */}
	for range 200000 {
		us = append(us, minMicros+r.Int64N(maxMicros-minMicros+1))
	}
	for d := int64(minDate); d <= maxDate; d += 1 + int64(r.IntN(40)) {
		us = append(us, d*dayMicros, d*dayMicros+dayMicros-1)
	}
	for _, v := range us {
		if got, want := string(appendDateTime(nil, v)), dateTime(v); got != want {
			t.Fatalf("appendDateTime(%d) = %s, want %s", v, got, want)
		}
		tod := ((v % dayMicros) + dayMicros) % dayMicros
		want, err := timeOfDay(tod, "time-micros", tod)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(appendTimeOfDay(nil, tod)); got != want.(string) {
			t.Fatalf("appendTimeOfDay(%d) = %s, want %s", tod, got, want)
		}
	}
}

func tcSchema(t *testing.T, text string) *Schema {
	t.Helper()
	s, err := compileText(t, text)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestTranscoderTableMismatch: what cannot be written is refused when the
// transcoder is compiled, naming the field and both sides.
func TestTranscoderTableMismatch(t *testing.T) {
	s := tcSchema(t, `{"type":"record","name":"R","fields":[
		{"name":"id","type":"long"},
		{"name":"tags","type":{"type":"array","items":"string"}},
		{"name":"addr","type":{"type":"record","name":"A","fields":[{"name":"city","type":"string"},{"name":"zip","type":["null","int"]}]}},
		{"name":"attrs","type":{"type":"map","values":"double"}},
		{"name":"u","type":["null","string","long"]}]}`)
	good := s.Columns()
	good = append(good, &bigquery.FieldSchema{Name: "meta", Type: bigquery.RecordFieldType, Schema: bigquery.Schema{{Name: "topic", Type: bigquery.StringFieldType}}})
	if _, err := s.Transcoder(good, "META"); err != nil {
		t.Fatalf("the writer's own columns: %v", err)
	}
	edit := func(f func(cols bigquery.Schema) bigquery.Schema) bigquery.Schema { return f(cloneColumns(good)) }
	tests := []struct {
		name  string
		table bigquery.Schema
		extra string
		want  []string
	}{
		{"missing top-level column", edit(func(c bigquery.Schema) bigquery.Schema { return c[1:] }), "", []string{"field id", `no column "id"`}},
		{"missing nested column", edit(func(c bigquery.Schema) bigquery.Schema { c[2].Schema = c[2].Schema[:1]; return c }), "",
			[]string{"field addr.zip", `record "addr" has no column "zip"`}},
		{"type", edit(func(c bigquery.Schema) bigquery.Schema { c[0].Type = bigquery.StringFieldType; return c }), "",
			[]string{"field id", "long maps to REQUIRED INTEGER", `column "id" is REQUIRED STRING`}},
		{"not repeated", edit(func(c bigquery.Schema) bigquery.Schema { c[1].Repeated = false; return c }), "",
			[]string{"field tags", "REPEATED STRING", `"tags" is NULLABLE STRING`}},
		{"repeated", edit(func(c bigquery.Schema) bigquery.Schema { c[2].Schema[0].Repeated = true; return c }), "",
			[]string{"field addr.city", `"addr.city" is REPEATED STRING`}},
		{"map value type", edit(func(c bigquery.Schema) bigquery.Schema { c[3].Schema[1].Type = bigquery.IntegerFieldType; return c }), "",
			[]string{"field attrs.value", "attrs.value", "INTEGER"}},
		{"union branch missing", edit(func(c bigquery.Schema) bigquery.Schema { c[4].Schema = c[4].Schema[:1]; return c }), "",
			[]string{"field u.long", `record "u" has no column "long"`}},
		{"extra not a column", good, "nope", []string{`extra column "nope"`}},
		{"extra is a writer field", good, "tags", []string{"field tags", "extra column"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Transcoder(tt.table, tt.extra)
			if !errors.Is(err, ErrTableMismatch) {
				t.Fatalf("error %v, want ErrTableMismatch", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestTranscoderNoAllocs: a record costs no allocation when dst has room,
// through optional fields, nested records, arrays, maps, unions, decimals
// and timestamps, in order or reordered.
func TestTranscoderNoAllocs(t *testing.T) {
	for _, g := range goldens() {
		s := compileFiles(t, g.files...)
		body := encode(t, parseFiles(t, g.files...), g.record)
		for _, reorder := range []bool{false, true} {
			cols := s.Columns()
			if reorder {
				for i, j := 0, len(cols)-1; i < j; i, j = i+1, j-1 {
					cols[i], cols[j] = cols[j], cols[i]
				}
			}
			tc, err := s.Transcoder(cols, "")
			if err != nil {
				t.Fatal(err)
			}
			buf, err := tc.Append(nil, body, nil)
			if err != nil {
				t.Fatalf("%s: %v", g.name, err)
			}
			if reorder {
				continue // the span scratch comes from a sync.Pool, which the race detector empties at will
			}
			allocs := testing.AllocsPerRun(100, func() {
				if buf, err = tc.Append(buf[:0], body, nil); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Errorf("%s: %v allocations per record, want 0", g.name, allocs)
			}
		}
	}
}

// TestTranscoderKeepsDst: Append appends after what dst holds, and on error
// gives dst back as it was.
func TestTranscoderKeepsDst(t *testing.T) {
	g := goldens()[0]
	s := compileFiles(t, g.files...)
	body := encode(t, parseFiles(t, g.files...), g.record)
	tc, err := s.Transcoder(s.Columns(), "")
	if err != nil {
		t.Fatal(err)
	}
	alone, err := tc.Append(nil, body, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tc.Append([]byte("prefix"), body, nil)
	if err != nil || string(got) != "prefix"+string(alone) {
		t.Fatalf("Append after a prefix = %q, %v", got, err)
	}
	got, err = tc.Append([]byte("prefix"), body[:len(body)-1], nil)
	if !errors.Is(err, ErrDecode) || string(got) != "prefix" {
		t.Fatalf("failed Append = %q, %v; want the prefix alone and ErrDecode", got, err)
	}
}

// TestTranscoderConcurrent: one transcoder serves many goroutines at once,
// in order and reordered (whose scratch is pooled), each getting what a
// lone call gives.
func TestTranscoderConcurrent(t *testing.T) {
	for _, g := range goldens() {
		s := compileFiles(t, g.files...)
		body := encode(t, parseFiles(t, g.files...), g.record)
		cols := s.Columns()
		for i, j := 0, len(cols)-1; i < j; i, j = i+1, j-1 {
			cols[i], cols[j] = cols[j], cols[i]
		}
		for _, table := range []bigquery.Schema{s.Columns(), cols} {
			tc, err := s.Transcoder(table, "")
			if err != nil {
				t.Fatal(err)
			}
			want, err := tc.Append(nil, body, nil)
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					var buf []byte
					for range 200 {
						var err error
						if buf, err = tc.Append(buf[:0], body, nil); err != nil || !bytes.Equal(buf, want) {
							t.Errorf("%s: concurrent Append = %x, %v; want %x", g.name, buf, err, want)
							return
						}
						if _, err := tc.Append(nil, body[:len(body)/2], nil); !errors.Is(err, ErrDecode) {
							t.Errorf("%s: truncated body: %v", g.name, err)
							return
						}
					}
				})
			}
			wg.Wait()
		}
	}
}
