package schema

import (
	"bytes"
	"math/big"
	"testing"

	"cloud.google.com/go/bigquery"

	"github.com/bqsink/bqsink/bq"
)

// A table an earlier bqsink created from a Debezium schema holds its
// Connect types as their base Avro types. WithoutConnectTypes maps them so
// again, and transcodes bodies into such a table byte for byte as the
// encoder writes the base-typed row.
func TestWithoutConnectTypesWritesBaseTypes(t *testing.T) {
	s := compileFiles(t, "debezium/unwrap.dbserver1.inventory.products-value.avsc")
	p := s.WithoutConnectTypes()
	if p == s {
		t.Fatal("a schema with Connect types has no variant without them")
	}
	if p.WithoutConnectTypes() != p {
		t.Error("the variant of the variant is not itself")
	}
	types := map[string]bigquery.FieldType{}
	for _, c := range p.Columns() {
		types[c.Name] = c.Type
	}
	if types["created_at"] != bigquery.IntegerFieldType || types["updated"] != bigquery.StringFieldType || types["price"] != bigquery.NumericFieldType {
		t.Errorf("plain columns: created_at %s, updated %s, price %s; want INTEGER, STRING and NUMERIC (an Avro decimal stays one)",
			types["created_at"], types["updated"], types["price"])
	}
	for _, c := range s.Columns() {
		if c.Name == "created_at" && c.Type != bigquery.DateTimeFieldType {
			t.Errorf("the schema itself changed: created_at is %s", c.Type)
		}
	}
	plainOnly := compileFiles(t, "sms_physical_stock_updates.v1.avsc")
	if plainOnly.WithoutConnectTypes() != plainOnly {
		t.Error("a schema without Connect types is not its own variant")
	}

	f, err := bq.NewFormat(p.Columns())
	if err != nil {
		t.Fatal(err)
	}
	tc, err := p.Transcoder(f.Columns(), "")
	if err != nil {
		t.Fatalf("the variant does not transcode into its own columns: %v", err)
	}
	if _, err := s.Transcoder(f.Columns(), ""); err == nil {
		t.Error("the schema itself transcodes into base-typed columns: the variant would not be needed")
	}
	upd, del := "2024-03-01T10:15:30Z", "false"
	body := encode(t, parseFiles(t, "debezium/unwrap.dbserver1.inventory.products-value.avsc"), map[string]any{
		"id": 7, "name": "hammer", "description": nil, "weight": nil, "price": big.NewRat(1999, 100),
		"created_at": int64(1_700_000_000_123_456), "updated": &upd, "__op": nil, "__source_ts_ms": nil, "__lsn": nil, "__deleted": &del,
	})
	got, err := tc.Append(nil, body, nil)
	if err != nil {
		t.Fatal(err)
	}
	// bq's own encoding of the base-typed values, column by column in
	// field order (NULL columns write nothing).
	row := map[string]any{"id": int64(7), "name": "hammer", "price": "19.99",
		"created_at": int64(1_700_000_000_123_456), "updated": upd, "__deleted": "false"}
	var want []byte
	for _, c := range f.Columns() {
		if v, ok := row[c.Name]; ok {
			if want, err = f.AppendColumn(want, c.Name, v); err != nil {
				t.Fatalf("%s: %v", c.Name, err)
			}
		}
	}
	if !bytes.Equal(got, want) {
		t.Errorf("transcoded %x\nwant       %x", got, want)
	}
}
