package bq

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"cloud.google.com/go/bigquery"
)

func TestTableNames(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("events")
	if got := tbl.Name(); got != "proj.ds.events" {
		t.Errorf("Name() = %q", got)
	}
	if c.Table("ds.events") != tbl || c.Table("events") != tbl {
		t.Error("the same table under two spellings gave different *Table")
	}
	if got := c.Table("other.events").Name(); got != "proj.other.events" {
		t.Errorf("Name() = %q", got)
	}
	for _, bad := range []string{"a.b.c", "", "ds.", "bad-ds.t"} {
		if err := c.Table(bad).EnsureSchema(t.Context(), bigquery.Schema{col("a", bigquery.StringFieldType, "")}); err == nil {
			t.Errorf("EnsureSchema on table %q succeeded", bad)
		}
		if _, err := c.Table(bad).Encode(map[string]any{"a": "x"}); err == nil {
			t.Errorf("Encode on table %q succeeded", bad)
		}
		if _, err := c.Table(bad).Append(t.Context(), nil); err == nil {
			t.Errorf("Append on table %q succeeded", bad)
		}
	}
}

func TestEnsureSchemaCreatesTable(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	want := typicalSchema()
	tbl := c.Table("created")
	if err := tbl.EnsureSchema(t.Context(), want); err != nil {
		t.Fatal(err)
	}
	equalShape(t, tableMetadata(t, s, "created").Schema, want)

	// A want already known to fit costs no BigQuery call: the failure armed
	// here would surface if it did.
	s.FailREST(1, http.StatusForbidden)
	err := tbl.EnsureSchema(t.Context(), typicalSchema())
	s.FailREST(0, 0)
	if err != nil {
		t.Fatalf("cached EnsureSchema called BigQuery: %v", err)
	}

	// A second client (another process) finds the table and leaves it be.
	etag := tableMetadata(t, s, "created").ETag
	if err := newTestClient(t, s).Table("created").EnsureSchema(t.Context(), want); err != nil {
		t.Fatal(err)
	}
	if got := tableMetadata(t, s, "created").ETag; got != etag {
		t.Error("EnsureSchema with a contained schema modified the table")
	}
}

func TestEnsureSchemaMissingTableWithoutAutoCreate(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s, func(c *Config) { c.AutoCreateTables = false })
	err := c.Table("missing").EnsureSchema(t.Context(), typicalSchema())
	if !errors.Is(err, ErrTableNotFound) {
		t.Fatalf("err = %v, want ErrTableNotFound", err)
	}
	_, err = c.Table("missing").Encode(typicalRow())
	if !errors.Is(err, ErrNoSchema) {
		t.Fatalf("Encode for a missing table: %v, want ErrNoSchema", err)
	}
}

func TestEnsureSchemaEvolves(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("evolving")
	v1 := bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		col("name", bigquery.StringFieldType, "REQUIRED"),
		col("legacy", bigquery.StringFieldType, "REQUIRED"),
		col("addr", bigquery.RecordFieldType, "NULLABLE", col("street", bigquery.StringFieldType, "REQUIRED")),
	}
	if err := tbl.EnsureSchema(t.Context(), v1); err != nil {
		t.Fatal(err)
	}
	v2 := bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		col("name", bigquery.StringFieldType, "NULLABLE"), // relax
		col("addr", bigquery.RecordFieldType, "NULLABLE",
			col("street", bigquery.StringFieldType, "REQUIRED"),
			col("zip", bigquery.StringFieldType, "REQUIRED")), // nested add, as NULLABLE
		col("tags", bigquery.StringFieldType, "REPEATED"), // add, stays REPEATED
	} // legacy is gone from v2: kept but relaxed
	if err := tbl.EnsureSchema(t.Context(), v2); err != nil {
		t.Fatal(err)
	}
	equalShape(t, tableMetadata(t, s, "evolving").Schema, bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		col("name", bigquery.StringFieldType, "NULLABLE"),
		col("legacy", bigquery.StringFieldType, "NULLABLE"),
		col("addr", bigquery.RecordFieldType, "NULLABLE",
			col("street", bigquery.StringFieldType, "REQUIRED"),
			col("zip", bigquery.StringFieldType, "NULLABLE")),
		col("tags", bigquery.StringFieldType, "REPEATED"),
	})

	// With auto_update_schema off a needed change is refused, naming the column.
	strict := newTestClient(t, s, func(c *Config) { c.AutoUpdateSchema = false })
	v3 := append(bigquery.Schema{}, v2...)
	v3 = append(v3, col("extra", bigquery.IntegerFieldType, "NULLABLE"))
	etag := tableMetadata(t, s, "evolving").ETag
	err := strict.Table("evolving").EnsureSchema(t.Context(), v3)
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), `"extra"`) {
		t.Fatalf("err = %v, want ErrIncompatible naming \"extra\"", err)
	}
	if tableMetadata(t, s, "evolving").ETag != etag {
		t.Error("refused change modified the table")
	}
	// ...while a want that already fits is fine.
	if err := strict.Table("evolving").EnsureSchema(t.Context(), v1[:1]); err != nil {
		t.Errorf("contained schema with auto_update_schema off: %v", err)
	}
}

func TestEnsureSchemaIncompatible(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("typed")
	base := bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "NULLABLE"),
		col("addr", bigquery.RecordFieldType, "NULLABLE", col("zip", bigquery.IntegerFieldType, "NULLABLE")),
	}
	if err := tbl.EnsureSchema(t.Context(), base); err != nil {
		t.Fatal(err)
	}
	before := tableMetadata(t, s, "typed")
	for _, tc := range []struct {
		want   bigquery.Schema
		column string
	}{
		{bigquery.Schema{col("id", bigquery.StringFieldType, "NULLABLE"), col("new", bigquery.StringFieldType, "NULLABLE")}, "id"},
		{bigquery.Schema{col("addr", bigquery.RecordFieldType, "NULLABLE", col("zip", bigquery.StringFieldType, "NULLABLE"))}, "addr.zip"},
		{bigquery.Schema{col("id", bigquery.IntegerFieldType, "REPEATED")}, "id"},
	} {
		err := tbl.EnsureSchema(t.Context(), tc.want)
		var ie *IncompatibleError
		if !errors.As(err, &ie) || !errors.Is(err, ErrIncompatible) {
			t.Fatalf("err = %v, want *IncompatibleError", err)
		}
		if ie.Column != tc.column || ie.Table != "proj.ds.typed" {
			t.Errorf("IncompatibleError %+v, want column %q of proj.ds.typed", ie, tc.column)
		}
	}
	after := tableMetadata(t, s, "typed")
	if after.ETag != before.ETag {
		t.Error("incompatible change modified the table")
	}
	equalShape(t, after.Schema, base)
}

func TestEnsureSchemaConcurrentClients(t *testing.T) {
	s := newFake(t)
	a, b := newTestClient(t, s), newTestClient(t, s)
	base := bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED")}
	if err := a.Table("shared").EnsureSchema(t.Context(), base); err != nil {
		t.Fatal(err)
	}

	// Deterministic interleaving: b patches between a's read and a's patch,
	// so a's conditional patch fails and a must re-read and re-merge.
	ta, tb := a.Table("shared"), b.Table("shared")
	tries := 0
	ta.beforePatch = func() {
		tries++
		if tries == 1 {
			if err := tb.EnsureSchema(t.Context(), append(bigquery.Schema{}, base[0], col("from_b", bigquery.StringFieldType, ""))); err != nil {
				t.Errorf("b: %v", err)
			}
		}
	}
	if err := ta.EnsureSchema(t.Context(), append(bigquery.Schema{}, base[0], col("from_a", bigquery.StringFieldType, ""))); err != nil {
		t.Fatal(err)
	}
	if tries != 2 {
		t.Errorf("a patched %d times, want 2 (one precondition failure, one success)", tries)
	}
	equalShape(t, tableMetadata(t, s, "shared").Schema, bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		col("from_b", bigquery.StringFieldType, ""),
		col("from_a", bigquery.StringFieldType, ""),
	})

	// Free-running: two processes each add their own columns, round after
	// round, at the same time. None may be lost.
	const rounds = 8
	var wg sync.WaitGroup
	for _, p := range []struct {
		c      *Client
		prefix string
	}{{a, "a"}, {b, "b"}} {
		wg.Go(func() {
			want := bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED")}
			for i := range rounds {
				want = append(want, col(fmt.Sprintf("%s%d", p.prefix, i), bigquery.IntegerFieldType, ""))
				if err := p.c.Table("race").EnsureSchema(t.Context(), want); err != nil {
					t.Errorf("%s round %d: %v", p.prefix, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	got := map[string]bool{}
	for _, f := range tableMetadata(t, s, "race").Schema {
		got[f.Name] = true
	}
	for i := range rounds {
		for _, p := range []string{"a", "b"} {
			if name := fmt.Sprintf("%s%d", p, i); !got[name] {
				t.Errorf("column %s lost", name)
			}
		}
	}
}

// A server that answers a schema patch but keeps the old schema (goccy's
// bigquery-emulator) must not have rows written as if the new columns
// existed: their values would be dropped without a word. EnsureSchema reads
// the table again after patching it and fails, naming the change, until
// the table holds it.
func TestEnsureSchemaPatchNotKept(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("forgetful")
	v1 := bigquery.Schema{col("a", bigquery.StringFieldType, "REQUIRED")}
	if err := tbl.EnsureSchema(t.Context(), v1); err != nil {
		t.Fatal(err)
	}
	s.ForgetSchemaChanges(true)
	v2 := bigquery.Schema{col("a", bigquery.StringFieldType, "REQUIRED"), col("b", bigquery.IntegerFieldType, "NULLABLE")}
	err := tbl.EnsureSchema(t.Context(), v2)
	if err == nil || !strings.Contains(err.Error(), "does not keep it") || !strings.Contains(err.Error(), "b: add NULLABLE INTEGER") {
		t.Fatalf("EnsureSchema against a server that forgets the patch: %v, want an error naming the change", err)
	}
	if _, err := tbl.Encode(map[string]any{"a": "x", "b": int64(1)}); err == nil {
		t.Fatal("a row with the column the table does not have was encoded")
	}
	s.ForgetSchemaChanges(false)
	if err := tbl.EnsureSchema(t.Context(), v2); err != nil {
		t.Fatalf("once the server keeps the change: %v", err)
	}
	equalShape(t, tableMetadata(t, s, "forgetful").Schema, v2)
}
