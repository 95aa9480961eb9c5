package sink

import (
	"context"
	"errors"
	"strings"

	"cloud.google.com/go/bigquery"
	"github.com/twmb/franz-go/pkg/kgo"

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

// metadata builds the metadata value of r. A key that looks framed but whose
// schema is unknown or cannot be decoded is kept raw: keys are often plain
// bytes that happen to start with 0. Only a transient registry failure is
// returned, to be retried.
func (d *decoder) metadata(ctx context.Context, r *kgo.Record) (map[string]any, *schema.Schema, error) {
	m := map[string]any{
		"topic":     r.Topic,
		"partition": int64(r.Partition),
		"offset":    r.Offset,
		"timestamp": r.Timestamp.UnixMicro(),
	}
	var keySchema *schema.Schema
	if r.Key != nil {
		m["key"] = r.Key
	}
	if id, body, err := schema.Split(r.Key); err == nil {
		sch, err := d.reg.Schema(ctx, id)
		switch {
		case err == nil:
			if key, err := sch.Decode(body); err == nil {
				m["key"], keySchema = key, sch
			}
		case !errors.Is(err, schema.ErrNotFound) && !errors.Is(err, schema.ErrUnsupported) && !errors.Is(err, schema.ErrIncompatible):
			return nil, nil, err
		}
	}
	if len(r.Headers) > 0 {
		hs := make([]any, len(r.Headers))
		for i, h := range r.Headers {
			// A header key is any string to Kafka; STRING must be UTF-8.
			hs[i] = map[string]any{"key": strings.ToValidUTF8(h.Key, "\uFFFD"), "value": h.Value}
		}
		m["headers"] = hs
	}
	return m, keySchema, nil
}
