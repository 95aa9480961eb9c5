package schema

import (
	"sync"

	"cloud.google.com/go/bigquery"
	"github.com/hamba/avro/v2"
	"go.uber.org/zap"
)

// Schema is one compiled Avro writer schema: the BigQuery columns it maps to
// and the parsed schema Transcoder compiles its rows from. It is immutable
// and safe for concurrent use. Get one from Registry.Schema.
type Schema struct {
	id      int
	columns bigquery.Schema
	writer  *avro.RecordSchema // the parsed writer schema, for Transcoder

	// plain: Kafka Connect's and Debezium's types (connect.name) map as
	// their base Avro types; see WithoutConnectTypes.
	plain     bool
	plainOnce sync.Once
	plainOf   *Schema
}

// ID returns the registry ID of the schema.
func (s *Schema) ID() int { return s.id }

// Columns returns the table columns this writer schema maps to: type, mode
// and description (from the Avro doc) per field, nested for records. The
// result is a fresh copy the caller may modify. Columns of a later,
// backward-compatible version of the same subject are a superset.
func (s *Schema) Columns() bigquery.Schema { return cloneColumns(s.columns) }

// WithoutConnectTypes returns s with Kafka Connect's and Debezium's types
// (the connect.name property: io.debezium.time.MicroTimestamp, ...) mapped
// as their base Avro types, as bqsink mapped them before it knew them: a
// table an earlier bqsink created holds such a field as its base type (a
// MicroTimestamp as INTEGER), and writing through this variant keeps that
// table working. Its Columns, Transcoder, ChangeRow and ChangeTranscoder
// all use the base types. It returns s itself when no field of s has such
// a type, or when s is that variant already.
func (s *Schema) WithoutConnectTypes() *Schema {
	if s.plain || s.writer == nil {
		return s
	}
	s.plainOnce.Do(func() {
		s.plainOf = s
		m := &mapper{id: s.id, logger: zap.NewNop(), plain: true}
		c, err := m.record("", s.writer)
		if err != nil || sameColumns(c.fields, s.columns) {
			return // err cannot be: s mapped, and plain types map as base types do
		}
		s.plainOf = &Schema{id: s.id, columns: c.fields, writer: s.writer, plain: true}
	})
	return s.plainOf
}

// sameColumns reports whether a and b have the same names, types and modes,
// recursively.
func sameColumns(a, b bigquery.Schema) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Name != y.Name || x.Type != y.Type || x.Repeated != y.Repeated || x.Required != y.Required || !sameColumns(x.Schema, y.Schema) {
			return false
		}
	}
	return true
}

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
