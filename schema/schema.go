package schema

import (
	"fmt"
	"sync"

	"cloud.google.com/go/bigquery"
	"github.com/hamba/avro/v2"
)

// Schema is one compiled Avro writer schema: the BigQuery columns it maps to
// and a decoder from its binary encoding to rows. It is immutable and safe
// for concurrent use. Get one from Registry.Schema.
type Schema struct {
	id       int
	columns  bigquery.Schema
	root     decodeFunc
	decoders sync.Pool          // *decoder, each owning a reusable *avro.Reader
	writer   *avro.RecordSchema // the parsed writer schema, for Transcoder
}

func newSchema(id int, columns bigquery.Schema, root decodeFunc) *Schema {
	s := &Schema{id: id, columns: columns, root: root}
	s.decoders.New = func() any { return &decoder{r: avro.NewReader(nil, 0)} }
	return s
}

// ID returns the registry ID of the schema.
func (s *Schema) ID() int { return s.id }

// Columns returns the table columns this writer schema maps to: type, mode
// and description (from the Avro doc) per field, nested for records. The
// result is a fresh copy the caller may modify. Columns of a later,
// backward-compatible version of the same subject are a superset.
func (s *Schema) Columns() bigquery.Schema { return cloneColumns(s.columns) }

// Decode decodes an Avro binary body written with this schema into a row
// keyed by column name, holding values as the row value contract says (NULL
// is an absent key). The whole body must be consumed. Errors wrap ErrDecode
// and name the field path; arbitrary input returns an error, never panics.
// Strings and bytes in the row share one allocation the size of body, and
// body itself is not retained.
func (s *Schema) Decode(body []byte) (map[string]any, error) {
	d := s.decoders.Get().(*decoder)
	d.reset(body)
	v, err := s.root(d)
	if err == nil {
		if d.r.Peek(); d.r.Error == nil {
			err = fail("trailing bytes after the record")
		}
	}
	d.reset(nil)
	s.decoders.Put(d)
	if err != nil {
		return nil, fmt.Errorf("%w: schema %d: %v", ErrDecode, s.id, err)
	}
	return v.(map[string]any), nil
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
