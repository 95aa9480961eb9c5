package sink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"cloud.google.com/go/bigquery"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
)

// errMetadataCollides marks a value schema that has a field named like the
// metadata column: the row cannot hold both.
var errMetadataCollides = errors.New("collides with metadata_column")

// metadataColumn describes the metadata RECORD. key is BYTES (the raw
// Kafka key) unless the key is Avro framed with a registry ID that resolves
// to a record, in which case it is that record's columns.
func metadataColumn(name string, key *schema.Schema) *bigquery.FieldSchema {
	keyField := &bigquery.FieldSchema{Name: "key", Type: bigquery.BytesFieldType, Description: "Kafka record key, raw"}
	if key != nil {
		keyField = &bigquery.FieldSchema{Name: "key", Type: bigquery.RecordFieldType, Schema: key.Columns(),
			Description: "Kafka record key, decoded with its registry schema"}
	}
	return &bigquery.FieldSchema{
		Name:        name,
		Type:        bigquery.RecordFieldType,
		Description: "Kafka metadata of the record this row came from",
		Schema: bigquery.Schema{
			{Name: "topic", Type: bigquery.StringFieldType},
			{Name: "partition", Type: bigquery.IntegerFieldType},
			{Name: "offset", Type: bigquery.IntegerFieldType},
			{Name: "timestamp", Type: bigquery.TimestampFieldType},
			keyField,
			{Name: "headers", Type: bigquery.RecordFieldType, Repeated: true, Schema: bigquery.Schema{
				{Name: "key", Type: bigquery.StringFieldType},
				{Name: "value", Type: bigquery.BytesFieldType},
			}},
		},
	}
}

// errKeyUndecodable is a key whose registry schema does not decode it; the
// key is then kept raw.
var errKeyUndecodable = errors.New("key does not decode with its schema")

// keySchema returns the registry schema of r's key and its Avro body, or
// nil if the key is not framed or its schema is unknown or unusable: keys
// are often plain bytes that happen to start with 0. Only a transient
// registry failure is returned, to be retried.
func (d *decoder) keySchema(ctx context.Context, r *kgo.Record) (*schema.Schema, []byte, error) {
	if !schema.Framed(r.Key) {
		return nil, nil, nil // most keys are not: no error built per record
	}
	id, body, err := schema.Split(r.Key)
	if err != nil {
		return nil, nil, nil
	}
	sch, err := d.reg.Schema(ctx, id)
	switch {
	case err == nil:
		return sch, body, nil
	case errors.Is(err, schema.ErrNotFound), errors.Is(err, schema.ErrUnsupported), errors.Is(err, schema.ErrIncompatible):
		return nil, nil, nil
	}
	return nil, nil, err
}

// metadata encodes the metadata column of r for format f: the complete
// field, as a transcoder takes it, valid until the next call. With keySchema the key is transcoded
// into its RECORD; a key that does not decode returns errKeyUndecodable.
// The record is given by position (bq.Fields) in the table's order of its
// sub-columns, found once per format: no map per row.
func (d *decoder) metadata(f *bq.Format, r *kgo.Record, keySchema *schema.Schema, keyBody []byte) ([]byte, error) {
	at, err := d.metaLayout(f)
	if err != nil {
		return nil, err
	}
	vals := d.metaVals[:len(at.names)]
	clear(vals)
	var missing string
	set := func(i int, name string, v any) {
		switch {
		case i >= 0:
			vals[i] = v
		case missing == "":
			missing = name // the table's RECORD lacks it: ensure the table again
		}
	}
	set(at.topic, "topic", r.Topic)
	set(at.partition, "partition", int64(r.Partition))
	set(at.offset, "offset", r.Offset)
	set(at.timestamp, "timestamp", r.Timestamp.UnixMicro())
	if r.Key != nil {
		set(at.key, "key", r.Key)
	}
	if keySchema != nil {
		tc, err := d.keyTranscoder(keySchema, f)
		if err != nil {
			return nil, err
		}
		key, err := tc.Append(nil, keyBody, nil)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errKeyUndecodable, err)
		}
		set(at.key, "key", bq.Message(key))
	}
	if len(r.Headers) > 0 {
		hs := make([]any, len(r.Headers))
		for i, h := range r.Headers {
			// A header key is any string to Kafka; STRING must be UTF-8.
			hs[i] = map[string]any{"key": strings.ToValidUTF8(h.Key, "\uFFFD"), "value": h.Value}
		}
		set(at.headers, "headers", hs)
	}
	if missing != "" {
		return nil, fmt.Errorf("table %s: %w %s.%s", d.table.Name(), bq.ErrUnknownColumn, d.meta, missing)
	}
	// The field is copied into the row by the transcoder: one buffer serves
	// every row.
	b, err := f.AppendColumn(d.metaBuf[:0], d.meta, vals)
	d.metaBuf = b
	return b, err
}

// metaAt is where each value of the metadata RECORD sits in a format's
// layout of it (-1: the table lacks that sub-column).
type metaAt struct {
	format                                            *bq.Format
	names                                             []string
	topic, partition, offset, timestamp, key, headers int
}

// metaLayout returns the positions of the metadata RECORD's sub-columns in
// format f, computed once per format.
func (d *decoder) metaLayout(f *bq.Format) (*metaAt, error) {
	if d.metaAt != nil && d.metaAt.format == f {
		return d.metaAt, nil
	}
	at := &metaAt{format: f}
	for _, c := range f.Columns() {
		if strings.EqualFold(c.Name, d.meta) && c.Type == bigquery.RecordFieldType {
			for _, sub := range c.Schema {
				at.names = append(at.names, sub.Name)
			}
		}
	}
	if at.names == nil {
		return nil, fmt.Errorf("table %s: column %s is not a RECORD", d.table.Name(), d.meta)
	}
	find := func(name string) int {
		return slices.IndexFunc(at.names, func(n string) bool { return strings.EqualFold(n, name) })
	}
	at.topic, at.partition, at.offset, at.timestamp = find("topic"), find("partition"), find("offset"), find("timestamp")
	at.key, at.headers = find("key"), find("headers")
	if cap(d.metaVals) < len(at.names) {
		d.metaVals = make(bq.Fields, len(at.names))
	}
	d.metaAt = at
	return at, nil
}

// keyTranscoder returns the transcoder of keys of s into the key RECORD of
// the metadata column of f.
func (d *decoder) keyTranscoder(s *schema.Schema, f *bq.Format) (*schema.Transcoder, error) {
	return d.keys.get(s, f, func() (*schema.Transcoder, error) {
		var cols bigquery.Schema
		for _, c := range f.Columns() {
			if strings.EqualFold(c.Name, d.meta) {
				for _, k := range c.Schema {
					if strings.EqualFold(k.Name, "key") && k.Type == bigquery.RecordFieldType {
						cols = k.Schema
					}
				}
			}
		}
		if cols == nil {
			return nil, fmt.Errorf("table %s: column %s.key is not a RECORD", d.table.Name(), d.meta)
		}
		tc, err := s.Transcoder(cols, "")
		if err != nil {
			return nil, fmt.Errorf("table %s: %s.key: %w", d.table.Name(), d.meta, err)
		}
		return tc, nil
	})
}
