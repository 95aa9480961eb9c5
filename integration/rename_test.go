package integration

import (
	"strings"
	"testing"

	"cloud.google.com/go/bigquery"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"
	"go.uber.org/zap"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
)

// A field renamed without an Avro alias would split a column's history in
// two, so its records go to the error path naming both columns; the same
// rename declared with an alias is accepted and lands in the new column.
func TestRenameWithoutAliasGoesToErrorPath(t *testing.T) {
	ctx := t.Context()
	e := itest.NewEnv(t) // registers v1 (1) and v2 (2)
	if err := e.St.Registry.SetCompat(stack.StockSubject, sr.CompatNone); err != nil {
		t.Fatal(err)
	}
	v1 := stack.Schema("sms_physical_stock_updates.v1.avsc")
	renamed := strings.Replace(v1, `{"name": "delta", "type": "int"}`, `{"name": "quantity_delta", "type": "int"}`, 1)
	aliased := strings.Replace(v1, `{"name": "delta", "type": "int"}`, `{"name": "quantity_delta", "type": "int", "aliases": ["delta"]}`, 1)
	if renamed == v1 || aliased == v1 {
		t.Fatal("fixture: delta not found in v1")
	}
	renamedID, err := e.St.Register(stack.StockSubject, renamed) // version 3, against v2
	if err != nil {
		t.Fatal(err)
	}
	aliasedID, err := e.St.Register(stack.StockSubject, aliased) // version 4, against v3: no field gone
	if err != nil {
		t.Fatal(err)
	}

	rec := func(ean string) map[string]any {
		r := v3Record(ean, "")
		delete(r, "delta")
		r["quantity_delta"] = 4
		return r
	}
	old := v3Record("v1-a", "")
	old["delta"] = 3
	var recs []*kgo.Record
	recs = append(recs, encodeRecords(t, stack.StockTopic, e.Schemas.V1ID, []string{v1}, []map[string]any{old})...) // creates the table with delta
	recs = append(recs, encodeRecords(t, stack.StockTopic, renamedID, []string{renamed}, []map[string]any{rec("renamed-a"), rec("renamed-b")})...)
	recs = append(recs, encodeRecords(t, stack.StockTopic, aliasedID, []string{aliased}, []map[string]any{rec("aliased-a")})...)
	s, tbl := pipeline(ctx, t, e.St, stack.StockTopic, stack.StockTable, recs)

	if n := counter(t, s.metrics, "bqsink_records_rejected_total", "reason", "incompatible_schema"); n != 2 {
		t.Errorf("rejected incompatible_schema = %v, want the 2 renamed records", n)
	}
	logged := s.errors.FilterMessage("record rejected").FilterField(zap.String("reason", "incompatible_schema")).All()
	for _, l := range logged {
		msg := l.ContextMap()["error"].(string)
		if !strings.Contains(msg, `"delta"`) || !strings.Contains(msg, `"quantity_delta"`) || !strings.Contains(msg, "INTEGER") {
			t.Errorf("rejection does not name both columns and the type: %s", msg)
		}
	}
	got := map[string]map[string]bigquery.Value{}
	for _, r := range tbl.Rows {
		got[r["ean"].(string)] = r
	}
	if len(got) != 2 || got["v1-a"]["delta"] != int64(3) || got["aliased-a"]["quantity_delta"] != int64(4) || got["aliased-a"]["delta"] != nil {
		t.Fatalf("want the v1 record in delta and the aliased one in quantity_delta; rows: %v", tbl.Rows)
	}
	var sawOld bool
	for _, f := range tbl.Schema {
		if f.Name == "delta" {
			sawOld = true
			if f.Required || f.Type != bigquery.IntegerFieldType {
				t.Errorf("old column delta: %s required=%v, want it kept and relaxed", f.Type, f.Required)
			}
		}
	}
	if !sawOld {
		t.Error("the old column delta must be kept")
	}
}
