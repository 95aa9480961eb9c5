package sink

import (
	"reflect"
	"testing"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
)

// The BigQuery and registry sections are also configs of their packages,
// which a Client or Registry made without the sink fills in itself: their
// defaults must be the declared ones.
func TestDeclaredDefaultsAgreeWithThePackages(t *testing.T) {
	got := DefaultConfig().WithDefaults()
	if want := bq.DefaultConfig().WithDefaults(); got.BigQuery != want {
		t.Errorf("declared bigquery defaults %+v, the bq package's %+v", got.BigQuery, want)
	}
	if want := (schema.Config{}).WithDefaults(); got.SchemaRegistry != want {
		t.Errorf("declared schema_registry defaults %+v, the schema package's %+v", got.SchemaRegistry, want)
	}
}

// A declaration that does not fit its field (a path that is not a key, a
// default its type cannot take) would panic in DefaultConfig: every one
// is applied here.
func TestDeclarationsFitTheConfig(t *testing.T) {
	c := DefaultConfig()
	for _, k := range Keys() {
		if _, ok := k.Field(reflect.ValueOf(&c)); !ok {
			t.Errorf("%s is not a key of Config", k.Path)
		}
	}
}
