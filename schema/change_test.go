package schema

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
)

var (
	dbzSpec  = ChangeSpec{Envelope: EnvelopeDebezium, DebeziumSequence: true}
	noPosDbz = ChangeSpec{Envelope: EnvelopeDebezium}
)

func goldenNamed(t testing.TB, name string) golden {
	t.Helper()
	for _, g := range goldens() {
		if g.name == name {
			return g
		}
	}
	t.Fatalf("no golden %q", name)
	return golden{}
}

// envelopeRecord returns the record of golden name with fields replaced.
func envelopeRecord(t testing.TB, name string, set map[string]any) map[string]any {
	t.Helper()
	g := goldenNamed(t, name)
	rec := make(map[string]any, len(g.record))
	for k, v := range g.record {
		rec[k] = v
	}
	for k, v := range set {
		rec[k] = v
	}
	return rec
}

// TestChangeRow: the row of a Debezium envelope is its Value record, whose
// columns are the table's; EnvelopeNone's row is the value itself.
func TestChangeRow(t *testing.T) {
	for _, file := range []string{pgEnvelopeFile, myEnvelopeFile} {
		s := compileFiles(t, file)
		row, err := s.ChangeRow(dbzSpec)
		if err != nil {
			t.Fatal(err)
		}
		assertColumns(t, row.Columns(), productColumns())
		if row.ID() != s.ID() || row.writer.Name() != "Value" {
			t.Errorf("%s: row schema %d %s", file, row.ID(), row.writer.FullName())
		}
		// The row schema decodes the Value record alone.
		value, valueRow := productRecord(7, nil)
		got, err := row.Decode(encode(t, row.writer, value))
		if err != nil {
			t.Fatal(err)
		}
		assertRow(t, got, valueRow)
	}
	s := compileFiles(t, unwrapValueFile)
	row, err := s.ChangeRow(ChangeSpec{SequenceFields: []string{"__lsn"}})
	if err != nil || row != s {
		t.Fatalf("EnvelopeNone: ChangeRow = %p, %v; want the schema itself", row, err)
	}
}

// TestChangeRowErrors: a schema that does not fit the spec is refused at
// compile time, naming what is wrong, with ErrEnvelope and ErrUnsupported.
func TestChangeRowErrors(t *testing.T) {
	stock := compileFiles(t, "sms_physical_stock_updates.v1.avsc")
	pg := compileFiles(t, pgEnvelopeFile)
	seq := tcSchema(t, `{"type":"record","name":"R","fields":[
		{"name":"id","type":"long"},
		{"name":"name","type":"string"},
		{"name":"ts","type":{"type":"long","logicalType":"local-timestamp-micros"}},
		{"name":"r","type":["null",{"type":"record","name":"S","fields":[{"name":"v","type":"int"}]}]},
		{"name":"u","type":["null","string","long"]}]}`)
	envelope := func(before, after, op string) *Schema {
		return tcSchema(t, `{"type":"record","name":"Envelope","fields":[
			{"name":"before","type":`+before+`},
			{"name":"after","type":`+after+`},
			{"name":"op","type":`+op+`}]}`)
	}
	v := `["null",{"type":"record","name":"V","fields":[{"name":"a","type":"int"}]}]`
	w := `["null",{"type":"record","name":"W","fields":[{"name":"a","type":"int"}]}]`
	tests := []struct {
		name string
		s    *Schema
		spec ChangeSpec
		want []string
	}{
		{"not an envelope", stock, dbzSpec, []string{"not a Debezium envelope", `no field "before"`, `"timestamp"`}},
		{"no op", tcSchema(t, `{"type":"record","name":"E","fields":[{"name":"before","type":`+v+`},{"name":"after","type":["null","V"]}]}`), dbzSpec,
			[]string{`no field "op"`}},
		{"op not a string", envelope(v, `["null","V"]`, `"int"`), dbzSpec, []string{"op is int, want a string"}},
		{"image not a record", envelope(v, `["null","string"]`, `"string"`), dbzSpec, []string{"after is union [null, string]", "union of null and the row record"}},
		{"images differ", envelope(v, w, `"string"`), dbzSpec, []string{"before is record V and after is record W"}},
		{"sequence fields with debezium", pg, ChangeSpec{Envelope: EnvelopeDebezium, SequenceFields: []string{"op"}}, []string{"SequenceFields apply to EnvelopeNone"}},
		{"debezium sequence without envelope", stock, ChangeSpec{DebeziumSequence: true}, []string{"DebeziumSequence needs EnvelopeDebezium"}},
		{"unknown envelope", stock, ChangeSpec{Envelope: 7}, []string{"unknown envelope Envelope(7)"}},
		{"missing sequence field", seq, ChangeSpec{SequenceFields: []string{"nope"}}, []string{`sequence field "nope"`, `the value has no field "nope"`}},
		{"missing nested field", seq, ChangeSpec{SequenceFields: []string{"r.x"}}, []string{`sequence field "r.x"`, `record r has no field "x"`}},
		{"string sequence field", seq, ChangeSpec{SequenceFields: []string{"name"}}, []string{`sequence field "name" is string`, "want an int or long"}},
		{"datetime sequence field", seq, ChangeSpec{SequenceFields: []string{"ts"}}, []string{`"ts" is long local-timestamp-micros`}},
		{"through a non-record", seq, ChangeSpec{SequenceFields: []string{"id.x"}}, []string{`id is long, not a record`}},
		{"through a union of several", seq, ChangeSpec{SequenceFields: []string{"u.long"}}, []string{`u is union [null, string, long], not a record`}},
		{"too many", seq, ChangeSpec{SequenceFields: []string{"id", "id", "id", "id"}}, []string{"4 sequence fields, at most 3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.s.ChangeRow(tt.spec)
			_, terr := tt.s.ChangeTranscoder(tt.s.Columns(), "", tt.spec)
			for _, err := range []error{err, terr} {
				if !errors.Is(err, ErrEnvelope) || !errors.Is(err, ErrUnsupported) {
					t.Fatalf("error %v, want ErrEnvelope and ErrUnsupported", err)
				}
				for _, w := range tt.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
			}
		})
	}
	if _, err := seq.ChangeRow(ChangeSpec{SequenceFields: []string{"id", "r.v"}}); err != nil {
		t.Errorf("int and long sequence fields, one in an optional record: %v", err)
	}
	// A table that does not fit the row is ErrTableMismatch, as Transcoder's.
	if _, err := pg.ChangeTranscoder(pg.Columns(), "", dbzSpec); !errors.Is(err, ErrTableMismatch) {
		t.Errorf("the envelope's columns as the table: %v, want ErrTableMismatch", err)
	}
}

// changeOf transcodes rec (encoded with the writer of files) under spec
// into the row's own columns.
func changeOf(t *testing.T, spec ChangeSpec, files []string, rec map[string]any) ([]byte, Change, error) {
	t.Helper()
	s := compileFiles(t, files...)
	row, err := s.ChangeRow(spec)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := s.ChangeTranscoder(row.Columns(), "", spec)
	if err != nil {
		t.Fatal(err)
	}
	return tc.Append(nil, encode(t, parseFiles(t, files...), rec), nil)
}

// valueBytes is the row a Transcoder of the Value record writes for v.
func valueBytes(t *testing.T, files []string, v map[string]any) []byte {
	t.Helper()
	s := compileFiles(t, files...)
	row, err := s.ChangeRow(dbzSpec)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := row.Transcoder(row.Columns(), "")
	if err != nil {
		t.Fatal(err)
	}
	out, err := tc.Append(nil, encode(t, row.writer, v), nil)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestChangeTranscoderDebezium: each op of the golden envelopes gives its
// change, its image's row and the source position.
func TestChangeTranscoderDebezium(t *testing.T) {
	pg := []string{pgEnvelopeFile}
	my := []string{myEnvelopeFile}
	before, _ := productRecord(107, nil)
	after, _ := productRecord(107, "2024-03-01T12:15:30.123456+02:00")
	pgSource := func(set map[string]any) map[string]any {
		src := make(map[string]any)
		for k, v := range goldenNamed(t, "debezium postgres envelope").record["source"].(map[string]any) {
			src[k] = v
		}
		for k, v := range set {
			src[k] = v
		}
		return src
	}
	const tail = ": the change carries no source position"
	tests := []struct {
		name   string
		files  []string
		spec   ChangeSpec
		set    map[string]any
		row    map[string]any // the image written, nil for none
		change Change
	}{
		{"postgres update", pg, dbzSpec, nil, after, Change{Op: OpUpsert, Seq: [3]uint64{24023119, 24023448}, SeqLen: 2}},
		{"postgres create", pg, dbzSpec, map[string]any{"op": "c", "before": nil}, after, Change{Op: OpUpsert, Seq: [3]uint64{24023119, 24023448}, SeqLen: 2}},
		{"postgres snapshot read", pg, dbzSpec, map[string]any{"op": "r", "before": nil, "source": pgSource(map[string]any{"sequence": `[null,"24023448"]`, "snapshot": "true"})},
			after, Change{Op: OpUpsert, Seq: [3]uint64{0, 24023448}, SeqLen: 2}},
		{"postgres delete", pg, dbzSpec, map[string]any{"op": "d", "after": nil}, before, Change{Op: OpDelete, Seq: [3]uint64{24023119, 24023448}, SeqLen: 2}},
		{"postgres delete without before", pg, dbzSpec, map[string]any{"op": "d", "after": nil, "before": nil}, nil,
			Change{Op: OpDelete, NeedKey: true, Seq: [3]uint64{24023119, 24023448}, SeqLen: 2}},
		{"postgres truncate", pg, dbzSpec, map[string]any{"op": "t", "after": nil, "before": nil}, nil,
			Change{Op: OpTruncate, Seq: [3]uint64{24023119, 24023448}, SeqLen: 2}},
		{"postgres without sequence", pg, dbzSpec, map[string]any{"source": pgSource(map[string]any{"sequence": nil})}, after,
			Change{Op: OpUpsert, Seq: [3]uint64{24023448}, SeqLen: 1}},
		{"postgres without sequence or lsn", pg, dbzSpec, map[string]any{"source": pgSource(map[string]any{"sequence": nil, "lsn": nil})}, after,
			Change{Op: OpUpsert, NoPosition: "postgresql source has neither a sequence nor an lsn" + tail}},
		{"postgres bad sequence", pg, dbzSpec, map[string]any{"source": pgSource(map[string]any{"sequence": `["1","2","3"]`})}, after,
			Change{Op: OpUpsert, NoPosition: "postgresql source.sequence is not a JSON array of two LSNs (strings of digits, or null)" + tail}},
		{"other connector", pg, dbzSpec, map[string]any{"source": pgSource(map[string]any{"connector": "sqlserver"})}, after,
			Change{Op: OpUpsert, NoPosition: "source.connector is neither postgresql nor mysql (source record io.debezium.connector.postgresql.Source)" + tail}},
		{"position not asked for", pg, noPosDbz, nil, after, Change{Op: OpUpsert}},
		{"mysql create", my, dbzSpec, nil, after, Change{Op: OpUpsert, Seq: [3]uint64{3, 805, 0}, SeqLen: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := "debezium postgres envelope"
			if tt.files[0] == myEnvelopeFile {
				name = "debezium mysql envelope"
			}
			set := make(map[string]any)
			for k, v := range tt.set {
				if (k == "before" || k == "after") && v != nil {
					v = pgValue(v.(map[string]any))
				}
				set[k] = v
			}
			got, ch, err := changeOf(t, tt.spec, tt.files, envelopeRecord(t, name, set))
			if err != nil {
				t.Fatal(err)
			}
			if ch != tt.change {
				t.Errorf("change %+v, want %+v", ch, tt.change)
			}
			var want []byte
			if tt.row != nil {
				want = valueBytes(t, tt.files, tt.row)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("row %x, want %x", got, want)
			}
		})
	}
}

// TestChangeTranscoderErrors: records whose change cannot be read fail
// with ErrDecode naming the field.
func TestChangeTranscoderErrors(t *testing.T) {
	pg := []string{pgEnvelopeFile}
	bad, _ := productRecord(107, "2024-02-30T10:15:30Z")
	tests := []struct {
		name string
		set  map[string]any
		want string
	}{
		{"message", map[string]any{"op": "m"}, `op: op "m" is a logical decoding message, not a change of a row`},
		{"unknown op", map[string]any{"op": "x"}, `op: op "x" is not a Debezium row change (c, r, u, d or t)`},
		{"create without after", map[string]any{"op": "c", "after": nil}, `after: op "c" has no after image (after is null)`},
		{"bad after", map[string]any{"after": pgValue(bad)}, `after.updated: zoned timestamp "2024-02-30T10:15:30Z" is not an ISO-8601 date-time`},
		{"bad before of a delete", map[string]any{"op": "d", "after": nil, "before": pgValue(bad)}, `before.updated: zoned timestamp "2024-02-30T10:15:30Z"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := changeOf(t, dbzSpec, pg, envelopeRecord(t, "debezium postgres envelope", tt.set))
			if !errors.Is(err, ErrDecode) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want ErrDecode with %q", err, tt.want)
			}
		})
	}
	// A bad before image does not matter to an update, which writes after.
	if _, ch, err := changeOf(t, dbzSpec, pg, envelopeRecord(t, "debezium postgres envelope", map[string]any{"before": pgValue(bad)})); err != nil || ch.Op != OpUpsert {
		t.Errorf("update with a bad before image: %+v, %v", ch, err)
	}
}

// TestChangeTranscoderPlain: EnvelopeNone upserts, deletes what
// ExtractNewRecordState marked __deleted, and reads sequence fields.
func TestChangeTranscoderPlain(t *testing.T) {
	files := []string{unwrapValueFile}
	rec := goldenNamed(t, "debezium unwrapped value").record
	with := func(set map[string]any) map[string]any {
		out := make(map[string]any)
		for k, v := range rec {
			out[k] = v
		}
		for k, v := range set {
			out[k] = v
		}
		return out
	}
	spec := ChangeSpec{SequenceFields: []string{"__lsn", "__source_ts_ms"}}
	for _, tt := range []struct {
		set  map[string]any
		want Change
	}{
		{nil, Change{Op: OpUpsert, Seq: [3]uint64{24023448, 1709288130123}, SeqLen: 2}},
		{map[string]any{"__deleted": "true"}, Change{Op: OpDelete, Seq: [3]uint64{24023448, 1709288130123}, SeqLen: 2}},
		{map[string]any{"__deleted": nil, "__lsn": nil}, Change{Op: OpUpsert, Seq: [3]uint64{0, 1709288130123}, SeqLen: 2}},
	} {
		got, ch, err := changeOf(t, spec, files, with(tt.set))
		if err != nil {
			t.Fatal(err)
		}
		if ch != tt.want {
			t.Errorf("%v: change %+v, want %+v", tt.set, ch, tt.want)
		}
		s := compileFiles(t, files...)
		tc, _ := s.Transcoder(s.Columns(), "")
		want, err := tc.Append(nil, encode(t, parseFiles(t, files...), with(tt.set)), nil)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%v: row %x, want the Transcoder's %x (%v)", tt.set, got, want, err)
		}
	}
	_, _, err := changeOf(t, spec, files, with(map[string]any{"__lsn": int64(-5)}))
	if !errors.Is(err, ErrDecode) || !strings.Contains(err.Error(), "__lsn: sequence value -5 is negative") {
		t.Errorf("negative sequence: %v", err)
	}
}

// TestChangeTranscoderNoPositionWithoutSource: an envelope without a
// source record says so on every change when a position is asked for.
func TestChangeTranscoderNoPositionWithoutSource(t *testing.T) {
	s := tcSchema(t, `{"type":"record","name":"Envelope","fields":[
		{"name":"before","type":["null",{"type":"record","name":"V","fields":[{"name":"a","type":"int"}]}]},
		{"name":"after","type":["null","V"]},
		{"name":"op","type":"string"}]}`)
	row, _ := s.ChangeRow(dbzSpec)
	tc, err := s.ChangeTranscoder(row.Columns(), "", dbzSpec)
	if err != nil {
		t.Fatal(err)
	}
	got, ch, err := tc.Append(nil, []byte{0, 2, 6, 2, 'c'}, nil)
	if err != nil || ch.Op != OpUpsert || ch.NoPosition != "the envelope has no source record: the change carries no source position" || !bytes.Equal(got, []byte{8, 3}) {
		t.Fatalf("Append = %x, %+v, %v", got, ch, err)
	}
}

// changeBodies are bodies of the golden envelopes for each op, and of the
// unwrapped value.
func changeBodies(t testing.TB) []struct {
	name  string
	files []string
	spec  ChangeSpec
	body  []byte
} {
	t.Helper()
	pg, my, unwrap := []string{pgEnvelopeFile}, []string{myEnvelopeFile}, []string{unwrapValueFile}
	env := func(name string, set map[string]any) map[string]any { return envelopeRecord(t, name, set) }
	type body = struct {
		name  string
		files []string
		spec  ChangeSpec
		body  []byte
	}
	return []body{
		{"postgres update", pg, dbzSpec, encode(t, parseFiles(t, pg...), env("debezium postgres envelope", nil))},
		{"postgres delete", pg, dbzSpec, encode(t, parseFiles(t, pg...), env("debezium postgres envelope", map[string]any{"op": "d", "after": nil}))},
		{"mysql create", my, dbzSpec, encode(t, parseFiles(t, my...), env("debezium mysql envelope", nil))},
		{"unwrapped", unwrap, ChangeSpec{SequenceFields: []string{"__lsn", "__source_ts_ms"}}, encode(t, parseFiles(t, unwrap...), goldenNamed(t, "debezium unwrapped value").record)},
	}
}

// TestChangeTranscoderNoAllocs: a change record costs no allocation when
// dst has room, whatever its op and envelope.
func TestChangeTranscoderNoAllocs(t *testing.T) {
	for _, c := range changeBodies(t) {
		s := compileFiles(t, c.files...)
		row, err := s.ChangeRow(c.spec)
		if err != nil {
			t.Fatal(err)
		}
		tc, err := s.ChangeTranscoder(row.Columns(), "", c.spec)
		if err != nil {
			t.Fatal(err)
		}
		buf, _, err := tc.Append(nil, c.body, nil)
		if err != nil {
			t.Fatal(err)
		}
		allocs := testing.AllocsPerRun(100, func() {
			if buf, _, err = tc.Append(buf[:0], c.body, nil); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per record, want 0", c.name, allocs)
		}
	}
}

// TestChangeTranscoderKeepsDst: Append appends after what dst holds, and
// on error gives dst back as it was.
func TestChangeTranscoderKeepsDst(t *testing.T) {
	for _, c := range changeBodies(t) {
		s := compileFiles(t, c.files...)
		row, _ := s.ChangeRow(c.spec)
		cols := row.Columns()
		for i, j := 0, len(cols)-1; i < j; i, j = i+1, j-1 {
			cols[i], cols[j] = cols[j], cols[i] // reordered: the scratch is used too
		}
		tc, err := s.ChangeTranscoder(cols, "", c.spec)
		if err != nil {
			t.Fatal(err)
		}
		alone, ch, err := tc.Append(nil, c.body, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, ch2, err := tc.Append([]byte("prefix"), c.body, nil)
		if err != nil || string(got) != "prefix"+string(alone) || ch2 != ch {
			t.Fatalf("%s: Append after a prefix = %q, %+v, %v", c.name, got, ch2, err)
		}
		got, ch2, err = tc.Append([]byte("prefix"), c.body[:len(c.body)-1], nil)
		if !errors.Is(err, ErrDecode) || string(got) != "prefix" || ch2 != (Change{}) {
			t.Fatalf("%s: failed Append = %q, %+v, %v; want the prefix alone and ErrDecode", c.name, got, ch2, err)
		}
	}
}

// TestChangeTranscoderConcurrent: one change transcoder serves many
// goroutines at once.
func TestChangeTranscoderConcurrent(t *testing.T) {
	for _, c := range changeBodies(t) {
		s := compileFiles(t, c.files...)
		row, _ := s.ChangeRow(c.spec)
		tc, err := s.ChangeTranscoder(row.Columns(), "", c.spec)
		if err != nil {
			t.Fatal(err)
		}
		want, wantCh, err := tc.Append(nil, c.body, nil)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				var buf []byte
				for range 200 {
					var ch Change
					var err error
					if buf, ch, err = tc.Append(buf[:0], c.body, nil); err != nil || !bytes.Equal(buf, want) || ch != wantCh {
						t.Errorf("%s: concurrent Append = %x, %+v, %v", c.name, buf, ch, err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
}

// TestChangeOpString: ops print as BigQuery's _CHANGE_TYPE.
func TestChangeOpString(t *testing.T) {
	for op, want := range map[ChangeOp]string{OpUpsert: "UPSERT", OpDelete: "DELETE", OpTruncate: "TRUNCATE", 0: "ChangeOp(0)"} {
		if op.String() != want {
			t.Errorf("%d prints %q, want %q", op, op, want)
		}
	}
	c := Change{Seq: [3]uint64{1, 2, 3}, SeqLen: 2}
	if got := c.Sequence(); len(got) != 2 || got[1] != 2 {
		t.Errorf("Sequence() = %v", got)
	}
}

// BenchmarkChangeTranscode: Append of change records into a reused
// buffer: a Debezium update (after written, before read past, the
// PostgreSQL position parsed), a delete (before read past, then written),
// a MySQL create, and a value under EnvelopeNone with two sequence fields;
// then, for scale, the Transcoder of the update's after image alone. None
// may allocate.
func BenchmarkChangeTranscode(b *testing.B) {
	for _, c := range changeBodies(b) {
		s := compileFiles(b, c.files...)
		row, err := s.ChangeRow(c.spec)
		if err != nil {
			b.Fatal(err)
		}
		tc, err := s.ChangeTranscoder(row.Columns(), "", c.spec)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(strings.ReplaceAll(c.name, " ", "_"), func(b *testing.B) {
			var buf []byte
			b.ReportAllocs()
			b.SetBytes(int64(len(c.body)))
			for b.Loop() {
				if buf, _, err = tc.Append(buf[:0], c.body, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	s := compileFiles(b, pgEnvelopeFile)
	row, _ := s.ChangeRow(dbzSpec)
	after, _ := productRecord(107, "2024-03-01T12:15:30.123456+02:00")
	unwrap := compileFiles(b, unwrapValueFile)
	for _, c := range []struct {
		name string
		s    *Schema
		body []byte
	}{
		{"postgres_after_image_alone_(Transcoder)", row, encode(b, row.writer, after)},
		{"unwrapped_(Transcoder)", unwrap, encode(b, unwrap.writer, goldenNamed(b, "debezium unwrapped value").record)},
	} {
		tc, err := c.s.Transcoder(c.s.Columns(), "")
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			var buf []byte
			b.ReportAllocs()
			b.SetBytes(int64(len(c.body)))
			for b.Loop() {
				if buf, err = tc.Append(buf[:0], c.body, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestConnectTypeMismatch: a table made when a Debezium type still mapped
// as its base type is refused, naming the Connect type.
func TestConnectTypeMismatch(t *testing.T) {
	s := compileFiles(t, dbzTypesFile)
	cols := s.Columns()
	cols[5].Type = INTEGER // ts_us, an io.debezium.time.MicroTimestamp
	_, err := s.Transcoder(cols, "")
	want := `field ts_us: the writer's long io.debezium.time.MicroTimestamp maps to REQUIRED DATETIME, but table column "ts_us" is REQUIRED INTEGER`
	if !errors.Is(err, ErrTableMismatch) || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want ErrTableMismatch with %q", err, want)
	}
}
