package bq

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
)

// changeTableSchema is an Avro-like schema whose fields are all REQUIRED,
// as a record without unions gives.
func changeTableSchema() bigquery.Schema {
	return bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		col("name", bigquery.StringFieldType, "REQUIRED"),
		col("tags", bigquery.StringFieldType, "REPEATED"),
		col("addr", bigquery.RecordFieldType, "REQUIRED", col("zip", bigquery.StringFieldType, "REQUIRED")),
	}
}

// Creating a change table declares the key, makes the other columns
// NULLABLE, clusters by the key and sets max staleness, as read back over
// REST (bqfake stores tableConstraints and maxStaleness as sent).
func TestCreateChangeTable(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("mirror")
	tbl.SetOptions(TableOptions{PrimaryKey: []string{"id"}, MaxStaleness: 15 * time.Minute, Description: "changes"})
	if err := tbl.EnsureSchema(t.Context(), changeTableSchema()); err != nil {
		t.Fatal(err)
	}
	md := tableMetadata(t, s, "mirror")
	equalShape(t, md.Schema, bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		col("name", bigquery.StringFieldType, "NULLABLE"),
		col("tags", bigquery.StringFieldType, "REPEATED"),
		col("addr", bigquery.RecordFieldType, "NULLABLE", col("zip", bigquery.StringFieldType, "REQUIRED")),
	})
	if md.TableConstraints == nil || md.TableConstraints.PrimaryKey == nil || !slices.Equal(md.TableConstraints.PrimaryKey.Columns, []string{"id"}) {
		t.Errorf("table constraints %+v, want primary key (id)", md.TableConstraints)
	}
	if md.Clustering == nil || !slices.Equal(md.Clustering.Fields, []string{"id"}) {
		t.Errorf("clustering %+v, want (id)", md.Clustering)
	}
	if md.MaxStaleness == nil || md.MaxStaleness.String() != "0-0 0 0:15:0" {
		t.Errorf("max staleness %v, want 15 minutes", md.MaxStaleness)
	}
	f := tbl.Format()
	if f == nil || !f.Change() || len(f.Columns()) != 4 {
		t.Fatalf("Format: %+v, want a change format of 4 columns", f)
	}

	// Evolution: a new REQUIRED field is added NULLABLE, and the REQUIRED
	// fields of the want never ask to tighten a NULLABLE column.
	v2 := append(changeTableSchema(), col("email", bigquery.StringFieldType, "REQUIRED"))
	etag := tableMetadata(t, s, "mirror").ETag
	if err := tbl.EnsureSchema(t.Context(), v2); err != nil {
		t.Fatal(err)
	}
	md = tableMetadata(t, s, "mirror")
	if md.ETag == etag || len(md.Schema) != 5 || md.Schema[4].Name != "email" || md.Schema[4].Required {
		t.Errorf("after adding email: %v", shape(md.Schema))
	}
	if f := tbl.Format(); !f.Change() || len(f.Columns()) != 5 {
		t.Errorf("Format after evolving: change %v, %d columns", f.Change(), len(f.Columns()))
	}
	// Another process with the same settings finds the table as it wants it.
	other := newTestClient(t, s).Table("mirror")
	other.SetOptions(TableOptions{PrimaryKey: []string{"ID"}})
	etag = md.ETag
	if err := other.EnsureSchema(t.Context(), v2); err != nil {
		t.Fatal(err)
	}
	if tableMetadata(t, s, "mirror").ETag != etag {
		t.Error("EnsureSchema of a fitting change table modified it")
	}
}

// An existing table keyed by the same columns has its REQUIRED non-key
// columns relaxed (a DELETE carries the key alone), and the
// auto_update_schema setting governs that as any other change.
func TestEnsureSchemaRelaxesExistingChangeTable(t *testing.T) {
	s := newFake(t)
	err := restClient(t, s).Dataset(testDataset).Table("keyed").Create(t.Context(), &bigquery.TableMetadata{
		Schema:           changeTableSchema(),
		TableConstraints: &bigquery.TableConstraints{PrimaryKey: &bigquery.PrimaryKey{Columns: []string{"id"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	strict := newTestClient(t, s, func(c *Config) { c.AutoUpdateSchema = false }).Table("keyed")
	strict.SetOptions(TableOptions{PrimaryKey: []string{"id"}})
	if err := strict.EnsureSchema(t.Context(), changeTableSchema()); !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "relax REQUIRED to NULLABLE") {
		t.Fatalf("auto_update_schema off: %v, want ErrIncompatible asking to relax", err)
	}
	tbl := newTestClient(t, s).Table("keyed")
	tbl.SetOptions(TableOptions{PrimaryKey: []string{"id"}})
	if err := tbl.EnsureSchema(t.Context(), changeTableSchema()); err != nil {
		t.Fatal(err)
	}
	equalShape(t, tableMetadata(t, s, "keyed").Schema, bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		col("name", bigquery.StringFieldType, "NULLABLE"),
		col("tags", bigquery.StringFieldType, "REPEATED"),
		col("addr", bigquery.RecordFieldType, "NULLABLE", col("zip", bigquery.StringFieldType, "REQUIRED")),
	})
}

// An existing table without the key, or with another, is a permanent
// error giving the DDL; once an operator fixes the table (here: recreates
// it keyed, as bqfake has no ALTER TABLE), EnsureSchema succeeds.
func TestEnsureSchemaPrimaryKeyDiffers(t *testing.T) {
	s := newFake(t)
	rest := restClient(t, s).Dataset(testDataset)
	if err := rest.Table("unkeyed").Create(t.Context(), &bigquery.TableMetadata{Schema: changeTableSchema()}); err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, s)
	tbl := c.Table("unkeyed")
	tbl.SetOptions(TableOptions{PrimaryKey: []string{"id"}, PrimaryKeyKey: "tables.orders.primary_key"})
	etag := tableMetadata(t, s, "unkeyed").ETag
	err := tbl.EnsureSchema(t.Context(), changeTableSchema())
	want := "table proj.ds.unkeyed has no primary key; bqsink writes changes by (id) (tables.orders.primary_key): run ALTER TABLE `proj.ds.unkeyed` ADD PRIMARY KEY (id) NOT ENFORCED"
	if !errors.Is(err, ErrPrimaryKey) || !errors.Is(err, ErrTableConfig) || !permanent(err) || err.Error() != want {
		t.Fatalf("EnsureSchema on a table without key:\n got %v\nwant a permanent ErrPrimaryKey: %s", err, want)
	}
	if tableMetadata(t, s, "unkeyed").ETag != etag {
		t.Error("EnsureSchema modified a table it refused")
	}
	if tbl.Format() != nil {
		t.Error("a Format was made for a table that refused its rows")
	}
	// The refusal is not remembered: the operator's fix is seen.
	if err := rest.Table("unkeyed").Delete(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := rest.Table("unkeyed").Create(t.Context(), &bigquery.TableMetadata{Schema: changeTableSchema(),
		TableConstraints: &bigquery.TableConstraints{PrimaryKey: &bigquery.PrimaryKey{Columns: []string{"id"}}}}); err != nil {
		t.Fatal(err)
	}
	if err := tbl.EnsureSchema(t.Context(), changeTableSchema()); err != nil {
		t.Fatalf("after the table was keyed: %v", err)
	}

	// Another key.
	if err := rest.Table("other_key").Create(t.Context(), &bigquery.TableMetadata{Schema: changeTableSchema(),
		TableConstraints: &bigquery.TableConstraints{PrimaryKey: &bigquery.PrimaryKey{Columns: []string{"id", "name"}}}}); err != nil {
		t.Fatal(err)
	}
	ok := c.Table("other_key")
	ok.SetOptions(TableOptions{PrimaryKey: []string{"id"}})
	err = ok.EnsureSchema(t.Context(), changeTableSchema())
	if !errors.Is(err, ErrPrimaryKey) || !strings.Contains(err.Error(), "has primary key (id, name)") ||
		!strings.Contains(err.Error(), "ALTER TABLE `proj.ds.other_key` DROP PRIMARY KEY; then ALTER TABLE `proj.ds.other_key` ADD PRIMARY KEY (id) NOT ENFORCED") {
		t.Fatalf("EnsureSchema on a table with another key: %v", err)
	}
	// Changing the key of the Table to the table's (in any order) is
	// checked afresh, and fits.
	ok.SetOptions(TableOptions{PrimaryKey: []string{"NAME", "id"}})
	if err := ok.EnsureSchema(t.Context(), changeTableSchema()); err != nil {
		t.Fatalf("with the table's key: %v", err)
	}
	// A plain table written as appended rows needs no key, and one with a
	// key takes appended rows too.
	for _, name := range []string{"plain_new", "other_key"} {
		p := newTestClient(t, s).Table(name)
		if err := p.EnsureSchema(t.Context(), changeTableSchema()); err != nil || p.Format().Change() {
			t.Errorf("plain rows to %s: %v", name, err)
		}
	}
}

// The schema must have the key columns before anything is created.
func TestEnsureSchemaKeyNotInSchema(t *testing.T) {
	s := newFake(t)
	tbl := newTestClient(t, s).Table("keyless")
	tbl.SetOptions(TableOptions{PrimaryKey: []string{"order_id"}})
	err := tbl.EnsureSchema(t.Context(), changeTableSchema())
	if !errors.Is(err, ErrTableConfig) || !permanent(err) || !strings.Contains(err.Error(), `primary_key: "order_id" is not a top-level column of the table (columns: id, name, tags, addr)`) {
		t.Fatalf("EnsureSchema with a key column the schema lacks: %v", err)
	}
	if _, err := restClient(t, s).Dataset(testDataset).Table("keyless").Metadata(t.Context()); httpStatus(err) != 404 {
		t.Errorf("the table was created anyway: %v", err)
	}
}

// A Table takes changes or plain rows for its life: its one connection
// never carries both. Options, formats and rows of the other kind are
// refused, and changes never go to an explicit stream.
func TestChangeKindIsFixedPerTable(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	changes := c.Table("changes")
	changes.SetOptions(TableOptions{PrimaryKey: []string{"id"}})
	if err := changes.EnsureSchema(t.Context(), changeTableSchema()); err != nil {
		t.Fatal(err)
	}
	plain := c.Table("plain")
	if err := plain.EnsureSchema(t.Context(), changeTableSchema()); err != nil {
		t.Fatal(err)
	}
	cf, pf := changes.Format(), plain.Format()
	row := map[string]any{"id": int64(1), "name": "a", "addr": map[string]any{"zip": "1"}}
	cb, err := cf.Encode(row)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := pf.Encode(row)
	if err != nil {
		t.Fatal(err)
	}

	// Row: a change without its change type, and formats of the other kind.
	if _, err := changes.Row(cf, cb); err == nil || !strings.Contains(err.Error(), "no _CHANGE_TYPE") {
		t.Errorf("change row without change type: %v", err)
	}
	if _, err := changes.Row(pf, pb); !errors.Is(err, ErrTableConfig) {
		t.Errorf("plain row for a change table: %v, want ErrTableConfig", err)
	}
	if _, err := plain.Row(cf, cf.AppendChange(cb, false, Sequence{})); !errors.Is(err, ErrTableConfig) {
		t.Errorf("change row for a plain table: %v, want ErrTableConfig", err)
	}
	change, err := changes.Row(cf, cf.AppendChange(slices.Clone(cb), true, mustSequence(t, 5)))
	if err != nil {
		t.Fatal(err)
	}

	// A change row made for one table, appended to a plain one.
	res, err := plain.Append(t.Context(), []Row{change})
	if err != nil {
		t.Fatal(err)
	}
	ae := appendErr(t, wait(t, res))
	if !errors.Is(ae.Rejected[0], ErrTableConfig) || len(ae.Retry) != 0 {
		t.Errorf("change row appended to a plain table: %+v", ae)
	}
	if got := s.AppendsReceived(); got != 0 {
		t.Errorf("%d append requests reached the server", got)
	}

	// Options of the other kind, later.
	changes.SetOptions(TableOptions{})
	if err := changes.EnsureSchema(t.Context(), changeTableSchema()); !errors.Is(err, ErrTableConfig) || !strings.Contains(err.Error(), "takes changes") {
		t.Errorf("EnsureSchema after the key was dropped from the options: %v", err)
	}
	plain.SetOptions(TableOptions{PrimaryKey: []string{"id"}})
	if err := plain.EnsureSchema(t.Context(), changeTableSchema()); !errors.Is(err, ErrTableConfig) {
		t.Errorf("EnsureSchema after a key was added to the options: %v", err)
	}
	if plain.Format().Change() || !changes.Format().Change() {
		t.Error("a refused option change changed a Format")
	}

	// Explicit streams take no changes.
	changes.SetOptions(TableOptions{PrimaryKey: []string{"id"}})
	st, err := changes.CreateStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Append(t.Context(), []Row{change}, 0); !errors.Is(err, ErrTableConfig) || !strings.Contains(err.Error(), "default stream only") {
		t.Errorf("change row to an explicit stream: %v", err)
	}
}

// Changes written end to end. NEEDS bqfake CDC: bqfake learns BigQuery's
// CDC rules separately; until it takes the pseudo-columns (it answers
// "Input schema has more fields than BigQuery schema, extra fields:
// '_CHANGE_TYPE,...'"), this test skips, saying so.
func TestChangesAppliedByKey(t *testing.T) {
	s := newFake(t)
	tbl := newTestClient(t, s).Table("applied")
	tbl.SetOptions(TableOptions{PrimaryKey: []string{"id"}})
	if err := tbl.EnsureSchema(t.Context(), bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		col("name", bigquery.StringFieldType, "REQUIRED"),
	}); err != nil {
		t.Fatal(err)
	}
	f := tbl.Format()
	mk := func(id int64, name string, del bool, seq ...uint64) Row {
		t.Helper()
		r := map[string]any{"id": id}
		if name != "" {
			r["name"] = name
		}
		b, err := f.Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		row, err := tbl.Row(f, f.AppendChange(b, del, mustSequence(t, seq...)))
		if err != nil {
			t.Fatal(err)
		}
		return row
	}
	rows := []Row{
		mk(1, "b", false, 2),   // newer
		mk(1, "a", false, 1),   // older, arrives later: loses
		mk(2, "x", false, 1),   // deleted next
		mk(2, "", true, 2),     // DELETE carries the key alone
		mk(3, "c", false, 0xf), // no other change
	}
	res, err := tbl.Append(t.Context(), rows)
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(t, res); err != nil {
		t.Fatal(err)
	}
	got := map[int64]string{}
	for _, r := range readTable(t, s, "applied") {
		got[r["id"].(int64)] = r["name"].(string)
	}
	if len(got) != 2 || got[1] != "b" || got[3] != "c" {
		t.Errorf("table after the changes: %v, want 1:b and 3:c", got)
	}
}
