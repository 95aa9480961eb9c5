package bq

import (
	"errors"
	"testing"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
)

func streamTable(t *testing.T) (*Table, []Row, func() int) {
	t.Helper()
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("eo")
	schema := bigquery.Schema{col("n", bigquery.IntegerFieldType, "REQUIRED")}
	if err := tbl.EnsureSchema(t.Context(), schema); err != nil {
		t.Fatal(err)
	}
	var rows []Row
	for i := range 10 {
		rows = append(rows, encode(t, tbl, map[string]any{"n": i})...)
	}
	count := func() int { return len(readTable(t, s, "eo")) }
	return tbl, rows, count
}

func streamAppend(t *testing.T, s *Stream, rows []Row, offset int64) (*Result, error) {
	t.Helper()
	r, err := s.Append(t.Context(), rows, offset)
	if err != nil {
		t.Fatal(err)
	}
	return r, wait(t, r)
}

// Rows appended again at their offsets are not written again, whoever
// appends them: a whole request already written, and one whose first rows
// are written and the rest not, which is found by probing.
func TestStreamAppendWritesEachOffsetOnce(t *testing.T) {
	tbl, rows, count := streamTable(t)
	s, err := tbl.CreateStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if r, err := streamAppend(t, s, rows[:3], 0); err != nil || r.Existing() != 0 {
		t.Fatalf("first append: %v, existing %d", err, r.Existing())
	}
	// A second writer of the same stream (a restarted owner) repeats it.
	again, err := tbl.OpenStream(t.Context(), s.Name())
	if err != nil {
		t.Fatal(err)
	}
	if r, err := streamAppend(t, again, rows[:3], 0); err != nil || r.Existing() != 3 {
		t.Fatalf("repeated append: %v, existing %d, want 3", err, r.Existing())
	}
	// Rows 0..8 where 0..2 are written: 3..8 are appended, once.
	if r, err := streamAppend(t, again, rows[:9], 0); err != nil || r.Existing() != 3 {
		t.Fatalf("overlapping append: %v, existing %d, want 3", err, r.Existing())
	}
	if n := count(); n != 9 {
		t.Fatalf("table holds %d rows, want 9", n)
	}
	// Past the end: nothing written, the rows are to be retried.
	r, err := streamAppend(t, again, rows[9:], 12)
	var ae *AppendError
	if !errors.As(err, &ae) || len(ae.Retry) != 1 || !isOutOfRange(ae.Err) {
		t.Fatalf("append past the end: %v, want the row in Retry after OUT_OF_RANGE", err)
	}
	_ = r
	if r, err := streamAppend(t, again, rows[9:], 9); err != nil || r.Existing() != 0 {
		t.Fatalf("append at the end: %v", err)
	}
	if n := count(); n != 10 {
		t.Fatalf("table holds %d rows, want 10", n)
	}
}

func TestStreamGoneOrFinalized(t *testing.T) {
	tbl, rows, _ := streamTable(t)
	if _, err := tbl.OpenStream(t.Context(), tbl.streamPrefix()+"nosuchstream"); !errors.Is(err, ErrStreamNotFound) {
		t.Errorf("OpenStream(unknown) = %v, want ErrStreamNotFound", err)
	}
	if _, err := tbl.OpenStream(t.Context(), "projects/x/datasets/y/tables/z/streams/abc"); !errors.Is(err, ErrStreamNotFound) {
		t.Errorf("OpenStream(another table's) = %v, want ErrStreamNotFound", err)
	}
	s, err := tbl.CreateStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := streamAppend(t, s, rows[:2], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := tbl.c.write.FinalizeWriteStream(t.Context(), &storagepb.FinalizeWriteStreamRequest{Name: s.Name()}); err != nil {
		t.Fatal(err)
	}
	if _, err := streamAppend(t, s, rows[2:4], 2); !errors.Is(err, ErrStreamFinalized) {
		t.Errorf("append to a finalized stream: %v, want ErrStreamFinalized", err)
	}
}

// Rows found already written count in Existing whatever the size of their
// request: a single-row request too, and requests split to one row each.
func TestStreamAppendCountsEveryExistingRow(t *testing.T) {
	srv := newFake(t)
	c := newTestClient(t, srv)
	schema := bigquery.Schema{col("n", bigquery.IntegerFieldType, "REQUIRED")}
	tbl := c.Table("eo")
	if err := tbl.EnsureSchema(t.Context(), schema); err != nil {
		t.Fatal(err)
	}
	var maps []map[string]any
	for i := range 5 {
		maps = append(maps, map[string]any{"n": i})
	}
	rows := encode(t, tbl, maps...)
	s, err := tbl.CreateStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := streamAppend(t, s, rows[:2], 0); err != nil {
		t.Fatal(err)
	}
	if r, err := streamAppend(t, s, rows[2:3], 2); err != nil || r.Existing() != 0 {
		t.Fatalf("append at the end: %v, existing %d", err, r.Existing())
	}
	if r, err := streamAppend(t, s, rows[2:3], 2); err != nil || r.Existing() != 1 {
		t.Fatalf("a single row again at its offset: %v, existing %d, want 1", err, r.Existing())
	}
	if r, err := streamAppend(t, s, rows[0:3], 0); err != nil || r.Existing() != 3 {
		t.Fatalf("three rows again: %v, existing %d, want 3", err, r.Existing())
	}
	if r, err := streamAppend(t, s, rows[1:5], 1); err != nil || r.Existing() != 2 {
		t.Fatalf("two rows again and two new: %v, existing %d, want 2", err, r.Existing())
	}

	// Another writer, whose requests hold one row each (the rows all have
	// the same size), repeats three rows.
	perRow := tbl.overhead(tbl.enc.Load()) + rowWireSize(rows[0].Size())
	c2 := newTestClient(t, srv, func(c *Config) { c.MaxRequestBytes = perRow })
	tbl2 := c2.Table("eo")
	if err := tbl2.EnsureSchema(t.Context(), schema); err != nil {
		t.Fatal(err)
	}
	s2, err := tbl2.OpenStream(t.Context(), s.Name())
	if err != nil {
		t.Fatal(err)
	}
	if r, err := streamAppend(t, s2, encode(t, tbl2, maps[1:4]...), 1); err != nil || r.Existing() != 3 {
		t.Fatalf("three one-row requests again: %v, existing %d, want 3", err, r.Existing())
	}
	if n := len(readTable(t, srv, "eo")); n != 5 {
		t.Fatalf("table holds %d rows, want 5", n)
	}
}
