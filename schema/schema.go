package schema

import (
	"cloud.google.com/go/bigquery"
	"github.com/hamba/avro/v2"
)

// Schema is one compiled Avro writer schema: the BigQuery columns it maps to
// and the parsed schema Transcoder compiles its rows from. It is immutable
// and safe for concurrent use. Get one from Registry.Schema.
type Schema struct {
	id      int
	columns bigquery.Schema
	writer  *avro.RecordSchema // the parsed writer schema, for Transcoder
}

// ID returns the registry ID of the schema.
func (s *Schema) ID() int { return s.id }

// Columns returns the table columns this writer schema maps to: type, mode
// and description (from the Avro doc) per field, nested for records. The
// result is a fresh copy the caller may modify. Columns of a later,
// backward-compatible version of the same subject are a superset.
func (s *Schema) Columns() bigquery.Schema { return cloneColumns(s.columns) }

func cloneColumns(cols bigquery.Schema) bigquery.Schema {
	if cols == nil {
		return nil
	}
	out := make(bigquery.Schema, len(cols))
	for i, f := range cols {
		c := *f
		c.Schema = cloneColumns(f.Schema)
		out[i] = &c
	}
	return out
}
