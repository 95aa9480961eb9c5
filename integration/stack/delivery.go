package stack

import (
	"fmt"
	"math/big"
	"math/rand/v2"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"
)

// The DeliveryCreated fixture (testdata/delivery_created.avsc): nested
// records, an array of records, a map, a multi-branch union, logical types,
// and types registered under subjects of their own (com.huub.types.Warehouse,
// which references com.huub.types.Address, and com.huub.types.Address).
const (
	DeliveryTopic   = "delivery_created_topic"
	DeliverySubject = DeliveryTopic + "-value"
	DeliveryTable   = "delivery_created"

	AddressSubject   = "com.huub.types.Address"
	WarehouseSubject = "com.huub.types.Warehouse"
)

// Address is com.huub.types.Address.
type Address struct {
	Line1       string  `avro:"line1"`
	Line2       *string `avro:"line2"`
	City        string  `avro:"city"`
	PostalCode  string  `avro:"postal_code"`
	CountryCode [2]byte `avro:"country_code"`
}

// Warehouse is com.huub.types.Warehouse.
type Warehouse struct {
	ID      int32   `avro:"id"`
	Name    string  `avro:"name"`
	Address Address `avro:"address"`
}

// DeliveryLine is one element of DeliveryCreated.lines.
type DeliveryLine struct {
	EAN      string   `avro:"ean"`
	Quantity int32    `avro:"quantity"`
	WeightKg *float64 `avro:"weight_kg"`
}

// Delivery is one com.huub.events.DeliveryCreated record. Tracking is nil,
// a string or an int64 (the union's branches); SlotStart is a time of day.
type Delivery struct {
	DeliveryID   string            `avro:"delivery_id"`
	CreatedAt    time.Time         `avro:"created_at"`
	DeliveryDate time.Time         `avro:"delivery_date"`
	SlotStart    *time.Duration    `avro:"slot_start"`
	Origin       Warehouse         `avro:"origin"`
	Destination  Address           `avro:"destination"`
	Status       string            `avro:"status"`
	Total        *big.Rat          `avro:"total"`
	Lines        []DeliveryLine    `avro:"lines"`
	Attributes   map[string]string `avro:"attributes"`
	Tracking     any               `avro:"tracking"`
	SignaturePNG []byte            `avro:"signature_png"`
}

// DeliverySchemas holds the parsed DeliveryCreated schema and its registry
// ID.
type DeliverySchemas struct {
	Schema avro.Schema
	ID     int
}

// ParseDelivery parses DeliveryCreated with its referenced types, each
// parsed once into a cache of its own as a registry client would.
func ParseDelivery() (avro.Schema, error) {
	cache := &avro.SchemaCache{}
	var s avro.Schema
	for _, name := range []string{"com.huub.types.Address.avsc", "com.huub.types.Warehouse.avsc", "delivery_created.avsc"} {
		var err error
		if s, err = avro.ParseWithCache(Schema(name), "", cache); err != nil {
			return nil, fmt.Errorf("parse %s: %w", name, err)
		}
	}
	return s, nil
}

// RegisterDelivery registers DeliveryCreated under DeliverySubject as a
// producer's tooling would: Address under its own subject, Warehouse under
// its own subject referencing Address, and DeliveryCreated referencing both.
func (st *Stack) RegisterDelivery() (DeliverySchemas, error) {
	var s DeliverySchemas
	var err error
	if s.Schema, err = ParseDelivery(); err != nil {
		return s, err
	}
	register := func(subject, file string, refs ...sr.SchemaReference) (sr.SchemaReference, error) {
		id, version, err := st.Registry.RegisterSchema(subject, sr.Schema{Schema: Schema(file), Type: sr.TypeAvro, References: refs})
		if err != nil {
			return sr.SchemaReference{}, fmt.Errorf("register %s: %w", subject, err)
		}
		s.ID = id
		return sr.SchemaReference{Name: subject, Subject: subject, Version: version}, nil
	}
	address, err := register(AddressSubject, "com.huub.types.Address.avsc")
	if err != nil {
		return s, err
	}
	warehouse, err := register(WarehouseSubject, "com.huub.types.Warehouse.avsc", address)
	if err != nil {
		return s, err
	}
	if _, err := register(DeliverySubject, "delivery_created.avsc", warehouse, address); err != nil {
		return s, err
	}
	return s, nil
}

// Record encodes d in the wire format, keyed by its delivery ID.
func (s DeliverySchemas) Record(d Delivery) (*kgo.Record, error) {
	body, err := avro.Marshal(s.Schema, d)
	if err != nil {
		return nil, fmt.Errorf("encode delivery: %w", err)
	}
	return &kgo.Record{Topic: DeliveryTopic, Key: []byte(d.DeliveryID), Value: WireFormat(s.ID, body)}, nil
}

var (
	deliveryWarehouses = []Warehouse{
		{1, "Porto Central", Address{"Rua do Heroísmo 12", ptr("Armazém 3"), "Porto", "4300-259", [2]byte{'P', 'T'}}},
		{2, "Lisboa Norte", Address{"Av. da Liberdade 1", nil, "Lisboa", "1250-096", [2]byte{'P', 'T'}}},
		{3, "Madrid Sur", Address{"Calle de Toledo 80", ptr("Nave 2"), "Madrid", "28005", [2]byte{'E', 'S'}}},
		{4, "Milano Est", Address{"Via Roma 1", nil, "Milano", "20121", [2]byte{'I', 'T'}}},
	}
	deliveryCities = []struct {
		city, country string
	}{
		{"Porto", "PT"}, {"Lisboa", "PT"}, {"Braga", "PT"}, {"Madrid", "ES"}, {"Barcelona", "ES"},
		{"Milano", "IT"}, {"Paris", "FR"}, {"Lyon", "FR"}, {"Berlin", "DE"}, {"Dublin", "IE"},
	}
	deliveryStreets  = []string{"Rua Augusta", "Calle Mayor", "Via Torino", "Rue de Rivoli", "Hauptstraße", "Main Street"}
	deliveryStatuses = []string{"CREATED", "SHIPPED", "DELIVERED", "CANCELLED"}
	deliveryAttrs    = []struct {
		key    string
		values []string
	}{
		{"channel", []string{"web", "app", "store", "marketplace"}},
		{"gift", []string{"yes", "no"}},
		{"priority", []string{"standard", "express", "same-day"}},
		{"carrier", []string{"CTT", "DHL", "UPS", "SEUR", "GLS"}},
	}
)

func ptr[T any](v T) *T { return &v }

// Deliveries makes n DeliveryCreated records, deterministic for a seed:
// MakeDelivery(seed, i) for i from 0.
func Deliveries(n int, seed uint64) []Delivery {
	out := make([]Delivery, n)
	for i := range out {
		out[i] = MakeDelivery(seed, i)
	}
	return out
}

// MakeDelivery makes the i-th DeliveryCreated record of a seed, on its own
// (so that a producer may make them in any order, in parallel), with every
// shape the schema allows: nullable fields set and NULL, 0 to 6 lines, 0 to
// 4 attributes, tracking as each union branch and NULL, and now and then a
// signature.
func MakeDelivery(seed uint64, i int) Delivery {
	rng := rand.New(rand.NewPCG(seed^0x6a09e667f3bcc909, uint64(i)))
	base := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	created := base.Add(time.Duration(i)*1500*time.Millisecond + time.Duration(rng.IntN(1_000_000))*time.Microsecond)
	c := deliveryCities[rng.IntN(len(deliveryCities))]
	d := Delivery{
		DeliveryID: fmt.Sprintf("%08x-%04x-4%03x-%04x-%012x", rng.Uint32(), rng.IntN(1<<16), rng.IntN(1<<12),
			0x8000|rng.IntN(1<<14), rng.Uint64()&(1<<48-1)),
		CreatedAt:    created,
		DeliveryDate: created.Truncate(24*time.Hour).AddDate(0, 0, 1+rng.IntN(5)),
		Origin:       deliveryWarehouses[rng.IntN(len(deliveryWarehouses))],
		Destination: Address{
			Line1:       fmt.Sprintf("%s %d", deliveryStreets[rng.IntN(len(deliveryStreets))], 1+rng.IntN(300)),
			City:        c.city,
			PostalCode:  fmt.Sprintf("%05d", rng.IntN(100000)),
			CountryCode: [2]byte{c.country[0], c.country[1]},
		},
		Status: deliveryStatuses[rng.IntN(len(deliveryStatuses))],
		Total:  big.NewRat(rng.Int64N(5_000_000), 100), // up to 49,999.99
	}
	if rng.IntN(4) > 0 {
		d.SlotStart = ptr(time.Duration(rng.IntN(24*3600*1000)) * time.Millisecond)
	}
	if rng.IntN(3) == 0 {
		d.Destination.Line2 = ptr(fmt.Sprintf("%dº %s", 1+rng.IntN(9), []string{"esq", "dto", "A", "B"}[rng.IntN(4)]))
	}
	if k := rng.IntN(7); k > 0 {
		d.Lines = make([]DeliveryLine, k)
		for j := range d.Lines {
			d.Lines[j] = DeliveryLine{EAN: fmt.Sprintf("560%010d", rng.IntN(1e10)), Quantity: int32(1 + rng.IntN(12))}
			if rng.IntN(5) > 0 {
				d.Lines[j].WeightKg = ptr(float64(rng.IntN(250_000)) / 1000)
			}
		}
	}
	d.Attributes = make(map[string]string)
	for _, a := range deliveryAttrs {
		if rng.IntN(2) == 0 {
			d.Attributes[a.key] = a.values[rng.IntN(len(a.values))]
		}
	}
	switch rng.IntN(3) {
	case 1:
		d.Tracking = fmt.Sprintf("1Z%03X%010d", rng.IntN(4096), rng.IntN(1e10))
	case 2:
		d.Tracking = rng.Int64()
	}
	if rng.IntN(10) == 0 {
		sig := make([]byte, 16+rng.IntN(48))
		for j := range sig {
			sig[j] = byte(rng.Uint32())
		}
		d.SignaturePNG = sig
	}
	return d
}
