package schema_test

import (
	"fmt"
	"slices"
	"strings"

	"cloud.google.com/go/bigquery"

	"github.com/bqsink/bqsink/bq"
)

// encodeRow encodes row (the row value contract: column name to value, NULL
// an absent key) as a message of f: the second half of the transcoder's
// reference, after Decode. Each column's field is bq's own encoding of its
// value (AppendColumn, the encoder bq keeps for the columns a transcoder
// leaves to its caller), in field-number order; the row-level rules are
// bq's too: a key names its column exactly, else case-insensitively, and a
// REQUIRED column must hold a value.
func encodeRow(f *bq.Format, row map[string]any) ([]byte, error) {
	cols := f.Columns()
	vals := make([]any, len(cols))
	var unknown []string
	for k, v := range row {
		i := columnIndex(cols, k)
		switch {
		case i < 0:
			unknown = append(unknown, k)
		case v == nil:
		case vals[i] != nil:
			return nil, fmt.Errorf("column %q: given twice (names differ only in case)", cols[i].Name)
		default:
			vals[i] = v
		}
	}
	var b []byte
	for i, c := range cols {
		if vals[i] != nil {
			var err error
			if b, err = f.AppendColumn(b, c.Name, vals[i]); err != nil {
				return nil, err
			}
		}
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("unknown column %q", slices.Min(unknown))
	}
	for i, c := range cols {
		if c.Required && !c.Repeated && vals[i] == nil {
			return nil, fmt.Errorf("column %q: REQUIRED but missing or null", c.Name)
		}
	}
	return b, nil
}

// columnIndex finds name among cols as bq does: the exact name, else
// case-insensitively (the last such column).
func columnIndex(cols bigquery.Schema, name string) int {
	for i, c := range cols {
		if c.Name == name {
			return i
		}
	}
	found := -1
	lower := strings.ToLower(name)
	for i, c := range cols {
		if strings.ToLower(c.Name) == lower {
			found = i
		}
	}
	return found
}
