package bq

import (
	"crypto/sha256"
	"fmt"
	"strings"

	"cloud.google.com/go/bigquery"
)

// IncompatibleError says a column cannot take the wanted shape; the table
// was left untouched. errors.Is(err, ErrIncompatible) is true.
type IncompatibleError struct {
	Column string // dotted path, e.g. "address.zip"
	Table  string // "project.dataset.table"
	Old    string // the table's mode and type, e.g. "NULLABLE INTEGER"
	New    string // the wanted mode and type, e.g. "NULLABLE STRING"
}

func (e *IncompatibleError) Error() string {
	return fmt.Sprintf("table %s column %q: cannot change %s to %s: %s", e.Table, e.Column, e.Old, e.New, ErrIncompatible)
}

// Is makes errors.Is(err, ErrIncompatible) true.
func (e *IncompatibleError) Is(target error) bool { return target == ErrIncompatible }

// schemaChange is one column edit a merge needs; kept for logs and for the
// error when auto_update_schema is off.
type schemaChange struct {
	Column string
	What   string // "add NULLABLE STRING", "relax REQUIRED to NULLABLE"
}

func (c schemaChange) String() string { return c.Column + ": " + c.What }

// mergeSchema merges want into have, returning the schema to patch in and the
// changes made (none means want is already contained in have). Columns have
// lacks are appended as NULLABLE (REPEATED stays REPEATED), recursively;
// REQUIRED columns want has as NULLABLE, or lacks, are relaxed so want's rows
// are accepted. Names compare case-insensitively, like BigQuery's. have is
// not modified.
func mergeSchema(table string, have, want bigquery.Schema) (bigquery.Schema, []schemaChange, error) {
	var changes []schemaChange
	out, err := mergeFields(table, "", have, want, &changes)
	if err != nil {
		return nil, nil, err
	}
	return out, changes, nil
}

func mergeFields(table, prefix string, have, want bigquery.Schema, changes *[]schemaChange) (bigquery.Schema, error) {
	wantByName := make(map[string]*bigquery.FieldSchema, len(want))
	for _, w := range want {
		if w != nil {
			wantByName[strings.ToLower(w.Name)] = w
		}
	}
	out := make(bigquery.Schema, 0, len(have)+len(want))
	seen := make(map[string]bool, len(have))
	for _, h := range have {
		if h == nil {
			continue
		}
		key := strings.ToLower(h.Name)
		seen[key] = true
		path := prefix + h.Name
		nf := *h
		w, ok := wantByName[key]
		if !ok {
			if nf.Required && !nf.Repeated {
				nf.Required = false
				*changes = append(*changes, schemaChange{path, "relax REQUIRED to NULLABLE (column not written)"})
			}
			out = append(out, &nf)
			continue
		}
		if canonicalType(h.Type) != canonicalType(w.Type) || h.Repeated != w.Repeated {
			return nil, &IncompatibleError{Column: path, Table: table, Old: describeField(h), New: describeField(w)}
		}
		if nf.Required && !nf.Repeated && !w.Required {
			nf.Required = false
			*changes = append(*changes, schemaChange{path, "relax REQUIRED to NULLABLE"})
		}
		if canonicalType(h.Type) == bigquery.RecordFieldType {
			sub, err := mergeFields(table, path+".", h.Schema, w.Schema, changes)
			if err != nil {
				return nil, err
			}
			nf.Schema = sub
		}
		out = append(out, &nf)
	}
	for _, w := range want {
		if w == nil || seen[strings.ToLower(w.Name)] {
			continue
		}
		nf := nullableCopy(w)
		*changes = append(*changes, schemaChange{prefix + w.Name, "add " + describeField(nf)})
		out = append(out, nf)
	}
	return out, nil
}

// nullableCopy deep-copies f with every non-REPEATED field NULLABLE: BigQuery
// refuses to add REQUIRED columns to an existing table, nested ones included.
func nullableCopy(f *bigquery.FieldSchema) *bigquery.FieldSchema {
	nf := *f
	nf.Required = false
	nf.Schema = nil
	for _, s := range f.Schema {
		if s != nil {
			nf.Schema = append(nf.Schema, nullableCopy(s))
		}
	}
	return &nf
}

func describeField(f *bigquery.FieldSchema) string {
	return modeOf(f) + " " + string(canonicalType(f.Type))
}

func modeOf(f *bigquery.FieldSchema) string {
	switch {
	case f.Repeated:
		return "REPEATED"
	case f.Required:
		return "REQUIRED"
	default:
		return "NULLABLE"
	}
}

// canonicalType maps BigQuery's standard SQL type names (what DDL-created
// tables report) to the legacy names bigquery.FieldType uses.
func canonicalType(t bigquery.FieldType) bigquery.FieldType {
	switch u := bigquery.FieldType(strings.ToUpper(string(t))); u {
	case "INT64":
		return bigquery.IntegerFieldType
	case "FLOAT64":
		return bigquery.FloatFieldType
	case "BOOL":
		return bigquery.BooleanFieldType
	case "STRUCT":
		return bigquery.RecordFieldType
	case "DECIMAL":
		return bigquery.NumericFieldType
	case "BIGDECIMAL":
		return bigquery.BigNumericFieldType
	default:
		return u
	}
}

// fingerprint identifies a schema by what matters to containment: names,
// types and modes, recursively.
type fingerprint [sha256.Size]byte

func schemaFingerprint(s bigquery.Schema) fingerprint {
	var b strings.Builder
	writeFingerprint(&b, s)
	return sha256.Sum256([]byte(b.String()))
}

// wantFingerprint identifies what EnsureSchema knows to fit: a wanted
// schema and the primary key its rows are written as changes by (none for
// plain rows), as a table keyed otherwise does not take them.
func wantFingerprint(s bigquery.Schema, key []string) fingerprint {
	var b strings.Builder
	writeFingerprint(&b, s)
	for _, k := range key {
		fmt.Fprintf(&b, "key %d:%s;", len(k), strings.ToLower(k))
	}
	return sha256.Sum256([]byte(b.String()))
}

func writeFingerprint(b *strings.Builder, s bigquery.Schema) {
	b.WriteByte('(')
	for _, f := range s {
		if f == nil {
			continue
		}
		// Lengths prefix the names so no column name can forge a boundary.
		fmt.Fprintf(b, "%d:%s %s %s", len(f.Name), f.Name, modeOf(f), canonicalType(f.Type))
		if len(f.Schema) > 0 {
			writeFingerprint(b, f.Schema)
		}
		b.WriteByte(';')
	}
	b.WriteByte(')')
}
