package stack

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/sr"
)

// The generated deliveries decode back to what was generated, and cover
// every shape the benchmark claims: each tracking branch, NULLs, empty and
// full arrays and maps.
func TestDeliveriesRoundTrip(t *testing.T) {
	sch, err := ParseDelivery()
	if err != nil {
		t.Fatal(err)
	}
	s := DeliverySchemas{Schema: sch, ID: 7}
	var tracking = map[string]bool{}
	var noLines, manyLines, noAttrs, slotNull, signature bool
	ds := Deliveries(500, 3)
	if again := Deliveries(500, 3); !reflect.DeepEqual(ds[499].DeliveryID, again[499].DeliveryID) {
		t.Fatal("Deliveries is not deterministic for a seed")
	}
	for _, d := range ds {
		rec, err := s.Record(d)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Value[0] != 0 || int(rec.Value[4]) != 7 || string(rec.Key) != d.DeliveryID {
			t.Fatalf("wire format header %x, key %q", rec.Value[:5], rec.Key)
		}
		var got Delivery
		if err := avro.Unmarshal(sch, rec.Value[5:], &got); err != nil {
			t.Fatal(err)
		}
		if got.Total.Cmp(d.Total) != 0 {
			t.Fatalf("total %v, want %v", got.Total, d.Total)
		}
		if !got.CreatedAt.Equal(d.CreatedAt) || !got.DeliveryDate.Equal(d.DeliveryDate) {
			t.Fatalf("times %v %v, want %v %v", got.CreatedAt, got.DeliveryDate, d.CreatedAt, d.DeliveryDate)
		}
		want := d
		want.Total, got.Total = nil, nil
		want.CreatedAt = got.CreatedAt
		want.DeliveryDate = got.DeliveryDate
		if len(want.Lines) == 0 && len(got.Lines) == 0 {
			want.Lines, got.Lines = nil, nil
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
		}
		tracking[fmt.Sprintf("%T", d.Tracking)] = true
		noLines = noLines || len(d.Lines) == 0
		manyLines = manyLines || len(d.Lines) > 3
		noAttrs = noAttrs || len(d.Attributes) == 0
		slotNull = slotNull || d.SlotStart == nil
		signature = signature || d.SignaturePNG != nil
	}
	if len(tracking) != 3 || !noLines || !manyLines || !noAttrs || !slotNull || !signature {
		t.Fatalf("generator misses shapes: tracking %v, no lines %v, >3 lines %v, no attributes %v, NULL slot %v, signature %v",
			tracking, noLines, manyLines, noAttrs, slotNull, signature)
	}
}

// RegisterDelivery registers the referenced types under their own subjects,
// and the registry serves DeliveryCreated with its references by ID.
func TestRegisterDelivery(t *testing.T) {
	st, err := Start(Options{Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ds, err := st.RegisterDelivery()
	if err != nil {
		t.Fatal(err)
	}
	cl, err := sr.NewClient(sr.URLs(st.RegistryURL()))
	if err != nil {
		t.Fatal(err)
	}
	got, err := cl.SchemaByID(t.Context(), ds.ID)
	if err != nil {
		t.Fatal(err)
	}
	refs := map[string]string{}
	for _, r := range got.References {
		refs[r.Name] = r.Subject
	}
	if got.Schema != Schema("delivery_created.avsc") || len(refs) != 2 ||
		refs[WarehouseSubject] != WarehouseSubject || refs[AddressSubject] != AddressSubject {
		t.Fatalf("schema %d: references %v", ds.ID, got.References)
	}
	w, err := cl.SchemaByVersion(t.Context(), WarehouseSubject, -1)
	if err != nil {
		t.Fatal(err)
	}
	if len(w.References) != 1 || w.References[0].Subject != AddressSubject {
		t.Fatalf("%s references %v, want %s", WarehouseSubject, w.References, AddressSubject)
	}
	// Registering again is harmless and gives the same ID.
	again, err := st.RegisterDelivery()
	if err != nil || again.ID != ds.ID {
		t.Fatalf("second registration: id %d, %v; want %d", again.ID, err, ds.ID)
	}
}
