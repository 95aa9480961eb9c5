package stack

import (
	"math/big"
	"testing"

	"github.com/hamba/avro/v2"
)

// The generated records must decode back to what was generated under their
// own writer schema, or every end-to-end assertion built on them is moot.
func TestStockUpdatesRoundTrip(t *testing.T) {
	v1 := avro.MustParse(Schema("sms_physical_stock_updates.v1.avsc"))
	v2 := avro.MustParse(Schema("sms_physical_stock_updates.v2.avsc"))
	s := StockSchemas{V1: v1, V2: v2, V1ID: 1, V2ID: 2}
	var sawV1, sawV2, sawCost bool
	for _, u := range StockUpdates(300, 7) {
		rec, err := s.Record(u)
		if err != nil {
			t.Fatal(err)
		}
		sch := v1
		if u.V2 {
			sch, sawV2 = v2, true
		} else {
			sawV1 = true
		}
		if id := int(rec.Value[4]); (u.V2 && id != 2) || (!u.V2 && id != 1) {
			t.Fatalf("schema id %d for v2=%v", id, u.V2)
		}
		// Generic decoding: hamba does not fill a *big.Rat struct field
		// inside a union, but reads the map form correctly.
		var got map[string]any
		if err := avro.Unmarshal(sch, rec.Value[5:], &got); err != nil {
			t.Fatal(err)
		}
		if got["ean"] != u.EAN || got["delta"] != int(u.Delta) || got["timestamp"] != u.Timestamp {
			t.Fatalf("round trip: got %v want %+v", got, u)
		}
		if u.UnitCost != nil {
			sawCost = true
			cost, _ := got["unit_cost"].(*big.Rat)
			if cost == nil || cost.Cmp(u.UnitCost) != 0 || got["reason"] != u.Reason {
				t.Fatalf("v2 fields: got %v %v want %v %q", got["unit_cost"], got["reason"], u.UnitCost, u.Reason)
			}
		}
	}
	if !sawV1 || !sawV2 || !sawCost {
		t.Fatalf("generator must mix versions: v1=%v v2=%v cost=%v", sawV1, sawV2, sawCost)
	}
}
