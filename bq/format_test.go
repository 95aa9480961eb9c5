package bq

import (
	"bytes"
	"errors"
	"testing"

	"cloud.google.com/go/bigquery"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// A row built outside bq (by a transcoder) is the same row as Encode's: a
// Message for a RECORD and AppendColumn for a column written separately
// give Encode's bytes.
func TestFormatPiecesMatchEncode(t *testing.T) {
	f, err := NewFormat(typicalSchema())
	if err != nil {
		t.Fatal(err)
	}
	if got := len(f.Columns()); got != len(typicalSchema()) {
		t.Fatalf("Columns: %d columns, want %d", got, len(typicalSchema()))
	}
	row := typicalRow()
	want, err := f.Encode(row)
	if err != nil {
		t.Fatal(err)
	}

	// The address RECORD given as its encoded content.
	sub, err := NewFormat(typicalSchema()[12].Schema)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := sub.Encode(row["address"].(map[string]any))
	if err != nil {
		t.Fatal(err)
	}
	withMsg := typicalRow()
	withMsg["address"] = Message(addr)
	got, err := f.Encode(withMsg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("row with a Message RECORD differs from the map row:\n got %x\nwant %x", got, want)
	}

	// The last column appended on its own after the others.
	lines := row["lines"]
	rest := typicalRow()
	delete(rest, "lines")
	head, err := f.Encode(rest)
	if err != nil {
		t.Fatal(err)
	}
	got, err = f.AppendColumn(head, "LINES", lines)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("row with AppendColumn differs from the map row:\n got %x\nwant %x", got, want)
	}
	if out, err := f.AppendColumn(nil, "lines", nil); err != nil || len(out) != 0 {
		t.Errorf("AppendColumn(nil value) = %x, %v; want nothing (NULL)", out, err)
	}
	if _, err := f.AppendColumn(nil, "nope", int64(1)); !errors.Is(err, ErrUnknownColumn) {
		t.Errorf("AppendColumn(unknown) = %v, want ErrUnknownColumn", err)
	}
	if _, err := f.AppendColumn(nil, "address", "not a record"); err == nil {
		t.Error("AppendColumn accepted a string for a RECORD")
	}
}

// Columns leaves out what bq cannot write and canonicalizes type names, so
// a transcoder numbering fields from it agrees with the descriptor.
func TestFormatColumnsAreTheWireFields(t *testing.T) {
	f, err := NewFormat(bigquery.Schema{
		col("a", "INT64", "NULLABLE"),
		col("span", bigquery.IntervalFieldType, "NULLABLE"),
		col("b", "STRUCT", "REPEATED", col("c", "FLOAT64", "NULLABLE")),
	})
	if err != nil {
		t.Fatal(err)
	}
	cols := f.Columns()
	if len(cols) != 2 || cols[0].Name != "a" || cols[0].Type != bigquery.IntegerFieldType ||
		cols[1].Name != "b" || cols[1].Type != bigquery.RecordFieldType || cols[1].Schema[0].Type != bigquery.FloatFieldType {
		t.Fatalf("Columns = %v, want a INTEGER, b RECORD{c FLOAT}", cols)
	}
	fields := wireMessage(t, f.enc).Fields()
	for i, c := range cols {
		if fd := fields.ByNumber(protoreflect.FieldNumber(i + 1)); fd == nil || string(fd.Name()) != c.Name {
			t.Errorf("field %d is %v, want column %q", i+1, fd, c.Name)
		}
	}
}

// Rows made by Table.Row are written like Encode's, and a row too large for
// a request is refused up front.
func TestTableRowFromBytes(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s, func(cfg *Config) { cfg.MaxRequestBytes = 64 << 10 })
	tbl := c.Table("fromBytes")
	if _, err := tbl.Row(tbl.Format(), nil); !errors.Is(err, ErrNoSchema) {
		t.Fatalf("Row before EnsureSchema: %v, want ErrNoSchema", err)
	}
	if err := tbl.EnsureSchema(t.Context(), typicalSchema()); err != nil {
		t.Fatal(err)
	}
	f := tbl.Format()
	b, err := f.Encode(typicalRow())
	if err != nil {
		t.Fatal(err)
	}
	row, err := tbl.Row(f, b)
	if err != nil {
		t.Fatal(err)
	}
	res, err := tbl.Append(t.Context(), []Row{row})
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(t, res); err != nil {
		t.Fatal(err)
	}
	if rows := readTable(t, s, "fromBytes"); len(rows) != 1 || rows[0]["id"] != int64(42) {
		t.Fatalf("table holds %v, want the one row", rows)
	}
	if _, err := tbl.Row(f, make([]byte, 64<<10)); !errors.Is(err, ErrRowTooLarge) {
		t.Errorf("Row of 64 KiB under a 64 KiB limit: %v, want ErrRowTooLarge", err)
	}
}

// A RECORD given by position (Fields) is written as the same record given
// as a map; NULLs and a short tail are NULL; too many values, or NULL in a
// REQUIRED sub-column, are errors naming the column.
func TestAppendColumnFieldsMatchesMap(t *testing.T) {
	schema := bigquery.Schema{{Name: "meta", Type: bigquery.RecordFieldType, Schema: bigquery.Schema{
		{Name: "topic", Type: bigquery.StringFieldType, Required: true},
		{Name: "offset", Type: bigquery.IntegerFieldType},
		{Name: "key", Type: bigquery.BytesFieldType},
		{Name: "tags", Type: bigquery.StringFieldType, Repeated: true},
	}}}
	f, err := NewFormat(schema)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		fields Fields
		m      map[string]any
	}{
		{Fields{"t", int64(1 << 40), []byte("k"), []any{"a", "b"}}, map[string]any{"topic": "t", "offset": int64(1 << 40), "key": []byte("k"), "tags": []any{"a", "b"}}},
		{Fields{"t", nil, []byte("k")}, map[string]any{"topic": "t", "key": []byte("k")}},
		{Fields{"t"}, map[string]any{"topic": "t"}},
	} {
		got, err := f.AppendColumn(nil, "meta", c.fields)
		if err != nil {
			t.Fatal(err)
		}
		want, err := f.AppendColumn(nil, "meta", c.m)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("Fields %v: %x\nmap %v: %x", c.fields, got, c.m, want)
		}
	}
	if _, err := f.AppendColumn(nil, "meta", Fields{"t", nil, nil, nil, "extra"}); err == nil {
		t.Error("five values for a RECORD of four columns: no error")
	}
	if _, err := f.AppendColumn(nil, "meta", Fields{nil, int64(1)}); err == nil || !bytes.Contains([]byte(err.Error()), []byte(`"meta.topic"`)) {
		t.Errorf("NULL in the REQUIRED meta.topic: %v", err)
	}
}
