package bq

import (
	"errors"
	"testing"

	"cloud.google.com/go/bigquery"
)

func col(name string, typ bigquery.FieldType, mode string, sub ...*bigquery.FieldSchema) *bigquery.FieldSchema {
	return &bigquery.FieldSchema{Name: name, Type: typ, Required: mode == "REQUIRED", Repeated: mode == "REPEATED", Schema: sub}
}

// shape renders a schema as "name MODE TYPE" lines, nested with dots, for
// comparisons.
func shape(s bigquery.Schema) []string {
	var out []string
	var walk func(prefix string, s bigquery.Schema)
	walk = func(prefix string, s bigquery.Schema) {
		for _, f := range s {
			out = append(out, prefix+f.Name+" "+describeField(f))
			walk(prefix+f.Name+".", f.Schema)
		}
	}
	walk("", s)
	return out
}

func equalShape(t *testing.T, got, want bigquery.Schema) {
	t.Helper()
	g, w := shape(got), shape(want)
	if len(g) != len(w) {
		t.Fatalf("schema\n got %q\nwant %q", g, w)
	}
	for i := range g {
		if g[i] != w[i] {
			t.Fatalf("schema\n got %q\nwant %q", g, w)
		}
	}
}

func TestMergeSchema(t *testing.T) {
	have := bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		col("name", bigquery.StringFieldType, "REQUIRED"),
		col("legacy", "INT64", "REQUIRED"),
		col("addr", bigquery.RecordFieldType, "NULLABLE",
			col("street", bigquery.StringFieldType, "REQUIRED")),
	}
	want := bigquery.Schema{
		col("ID", bigquery.IntegerFieldType, "REQUIRED"), // names are case-insensitive
		col("name", bigquery.StringFieldType, "NULLABLE"),
		col("addr", "STRUCT", "NULLABLE",
			col("street", bigquery.StringFieldType, "REQUIRED"),
			col("zip", bigquery.StringFieldType, "REQUIRED")),
		col("tags", bigquery.StringFieldType, "REPEATED"),
		col("extra", bigquery.RecordFieldType, "REQUIRED",
			col("a", bigquery.IntegerFieldType, "REQUIRED")),
	}
	got, changes, err := mergeSchema("p.d.t", have, want)
	if err != nil {
		t.Fatal(err)
	}
	equalShape(t, got, bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		col("name", bigquery.StringFieldType, "NULLABLE"),
		col("legacy", bigquery.IntegerFieldType, "NULLABLE"),
		col("addr", bigquery.RecordFieldType, "NULLABLE",
			col("street", bigquery.StringFieldType, "REQUIRED"),
			col("zip", bigquery.StringFieldType, "NULLABLE")),
		col("tags", bigquery.StringFieldType, "REPEATED"),
		col("extra", bigquery.RecordFieldType, "NULLABLE",
			col("a", bigquery.IntegerFieldType, "NULLABLE")),
	})
	if len(changes) != 5 {
		t.Errorf("changes = %v, want 5 (relax name, relax legacy, add addr.zip, tags, extra)", changes)
	}
	if have[1].Required != true || len(have[3].Schema) != 1 {
		t.Error("mergeSchema modified its input")
	}

	// Merging again is a no-op: want is now contained.
	_, changes, err = mergeSchema("p.d.t", got, want)
	if err != nil || len(changes) != 0 {
		t.Errorf("second merge: changes %v, err %v; want none", changes, err)
	}
}

func TestMergeSchemaIncompatible(t *testing.T) {
	have := bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "NULLABLE"),
		col("addr", bigquery.RecordFieldType, "NULLABLE", col("zip", bigquery.IntegerFieldType, "NULLABLE")),
		col("tags", bigquery.StringFieldType, "REPEATED"),
	}
	tests := []struct {
		name     string
		want     *bigquery.FieldSchema
		column   string
		old, new string
	}{
		{"retype", col("id", bigquery.StringFieldType, "NULLABLE"), "id", "NULLABLE INTEGER", "NULLABLE STRING"},
		{"nested retype", col("addr", bigquery.RecordFieldType, "NULLABLE", col("zip", bigquery.StringFieldType, "NULLABLE")), "addr.zip", "NULLABLE INTEGER", "NULLABLE STRING"},
		{"unrepeat", col("tags", bigquery.StringFieldType, "NULLABLE"), "tags", "REPEATED STRING", "NULLABLE STRING"},
		{"repeat", col("id", bigquery.IntegerFieldType, "REPEATED"), "id", "NULLABLE INTEGER", "REPEATED INTEGER"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := mergeSchema("p.d.t", have, bigquery.Schema{tc.want})
			var ie *IncompatibleError
			if !errors.As(err, &ie) {
				t.Fatalf("err = %v, want *IncompatibleError", err)
			}
			if !errors.Is(err, ErrIncompatible) {
				t.Error("errors.Is(err, ErrIncompatible) = false")
			}
			if ie.Column != tc.column || ie.Old != tc.old || ie.New != tc.new || ie.Table != "p.d.t" {
				t.Errorf("got %+v, want column %q old %q new %q", ie, tc.column, tc.old, tc.new)
			}
		})
	}
}

func TestSchemaFingerprint(t *testing.T) {
	a := bigquery.Schema{col("a", bigquery.IntegerFieldType, "NULLABLE"), col("b", bigquery.StringFieldType, "NULLABLE")}
	same := bigquery.Schema{col("a", "INT64", "NULLABLE"), col("b", bigquery.StringFieldType, "NULLABLE")}
	if schemaFingerprint(a) != schemaFingerprint(same) {
		t.Error("INT64 and INTEGER fingerprint differently")
	}
	for name, other := range map[string]bigquery.Schema{
		"mode":   {col("a", bigquery.IntegerFieldType, "REQUIRED"), col("b", bigquery.StringFieldType, "NULLABLE")},
		"order":  {col("b", bigquery.StringFieldType, "NULLABLE"), col("a", bigquery.IntegerFieldType, "NULLABLE")},
		"nested": {col("a", bigquery.RecordFieldType, "NULLABLE", col("b", bigquery.StringFieldType, "NULLABLE"))},
		"name":   {col("a", bigquery.IntegerFieldType, "NULLABLE"), col("c", bigquery.StringFieldType, "NULLABLE")},
	} {
		if schemaFingerprint(a) == schemaFingerprint(other) {
			t.Errorf("%s change keeps the fingerprint", name)
		}
	}
}
