package schema

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"cloud.google.com/go/bigquery"
	"github.com/hamba/avro/v2"
	"go.uber.org/zap/zaptest"
)

// parseFiles parses testdata files in order into one cache, so later files
// can use the named types of earlier ones, and returns the last schema.
func parseFiles(t testing.TB, files ...string) avro.Schema {
	t.Helper()
	cache := &avro.SchemaCache{}
	var last avro.Schema
	for _, f := range files {
		text, err := os.ReadFile(filepath.Join("testdata", f))
		if err != nil {
			t.Fatal(err)
		}
		if last, err = avro.ParseWithCache(string(text), "", cache); err != nil {
			t.Fatalf("parse %s: %v", f, err)
		}
	}
	return last
}

func compileFiles(t testing.TB, files ...string) *Schema {
	t.Helper()
	s, err := compile(1, parseFiles(t, files...), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// compileText compiles one schema text, returning compile's error.
func compileText(t testing.TB, text string) (*Schema, error) {
	t.Helper()
	sch, err := avro.ParseWithCache(text, "", &avro.SchemaCache{})
	if err != nil {
		t.Fatalf("parse %s: %v", text, err)
	}
	return compile(1, sch, zaptest.NewLogger(t))
}

// encode writes a generic record with hamba/avro, an encoder independent of
// our decoder.
func encode(t testing.TB, s avro.Schema, record map[string]any) []byte {
	t.Helper()
	b, err := avro.Marshal(s, record)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return b
}

func col(name string, typ bigquery.FieldType, mode string, fields ...*bigquery.FieldSchema) *bigquery.FieldSchema {
	f := &bigquery.FieldSchema{Name: name, Type: typ}
	switch mode {
	case "REQUIRED":
		f.Required = true
	case "REPEATED":
		f.Repeated = true
	case "NULLABLE":
	default:
		panic("bad mode " + mode)
	}
	if len(fields) > 0 {
		f.Schema = fields
	}
	return f
}

func doc(f *bigquery.FieldSchema, d string) *bigquery.FieldSchema {
	f.Description = d
	return f
}

func assertColumns(t *testing.T, got, want bigquery.Schema) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", " ")
		w, _ := json.MarshalIndent(want, "", " ")
		t.Errorf("columns differ\ngot:  %s\nwant: %s", g, w)
	}
}

// assertRow compares rows exactly, Go types included; NaN equals NaN.
func assertRow(t *testing.T, got, want map[string]any) {
	t.Helper()
	if !reflect.DeepEqual(nanFree(got), nanFree(want)) {
		t.Errorf("row differs\ngot:  %#v\nwant: %#v", got, want)
	}
}

// nanFree replaces NaN floats with a marker, as reflect.DeepEqual never
// equates NaNs.
func nanFree(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[k] = nanFree(x)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = nanFree(x)
		}
		return out
	case float64:
		if math.IsNaN(v) {
			return "NaN"
		}
	}
	return v
}
