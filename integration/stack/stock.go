package stack

import (
	"fmt"
	"math/big"
	"math/rand/v2"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"
)

// StockTopic and StockSubject are the seed document's topic and subject.
const (
	StockTopic   = "sms_physical_stock_updated_topic"
	StockSubject = StockTopic + "-value"
	StockTable   = "sms_physical_stock_updates"
)

// StockUpdate is one record of the seed's stock-update schema. The V2
// fields are set only on records written with v2.
type StockUpdate struct {
	Timestamp        int64   `avro:"timestamp"`
	ProcessReference *string `avro:"process_reference"`
	VariantID        int32   `avro:"variant_id"`
	WarehouseID      int32   `avro:"warehouse_id"`
	WarehouseName    string  `avro:"warehouse_name"`
	HuubClientID     int32   `avro:"huubclient_id"`
	EAN              string  `avro:"ean"`
	Reference        string  `avro:"reference"`
	SalesChannelType string  `avro:"sales_channel_type"`
	Delta            int32   `avro:"delta"`
	StockAfterAdjust int32   `avro:"stock_after_adjust"`

	V2         bool       `avro:"-"`
	AdjustedAt *time.Time `avro:"adjusted_at"`
	UnitCost   *big.Rat   `avro:"unit_cost"`
	Reason     string     `avro:"reason"`
}

// StockSchemas holds the parsed v1 and v2 schemas and their registry IDs.
type StockSchemas struct {
	V1, V2     avro.Schema
	V1ID, V2ID int
}

// RegisterStock registers both stock-update versions under StockSubject.
func (st *Stack) RegisterStock() (StockSchemas, error) {
	var s StockSchemas
	var err error
	v1, v2 := Schema("sms_physical_stock_updates.v1.avsc"), Schema("sms_physical_stock_updates.v2.avsc")
	if s.V1, err = avro.Parse(v1); err != nil {
		return s, err
	}
	if s.V2, err = avro.Parse(v2); err != nil {
		return s, err
	}
	if s.V1ID, err = st.Register(StockSubject, v1); err != nil {
		return s, err
	}
	if s.V2ID, err = st.Register(StockSubject, v2); err != nil {
		return s, err
	}
	return s, nil
}

// Record encodes u in the wire format with the schema of its version, keyed
// by EAN so that one product's updates stay in order on one partition.
func (s StockSchemas) Record(u StockUpdate) (*kgo.Record, error) {
	sch, id := s.V1, s.V1ID
	if u.V2 {
		sch, id = s.V2, s.V2ID
	}
	body, err := avro.Marshal(sch, u)
	if err != nil {
		return nil, fmt.Errorf("encode stock update: %w", err)
	}
	return &kgo.Record{Topic: StockTopic, Key: []byte(u.EAN), Value: WireFormat(id, body)}, nil
}

var (
	warehouses = []string{"Porto Central", "Lisboa Norte", "Madrid Sur", "Milano Est"}
	channels   = []string{"b2c", "b2b", "marketplace", "retail"}
	reasons    = []string{"COUNT", "DAMAGE", "RETURN", "OTHER"}
)

// StockUpdates makes n realistic updates, deterministic for a seed. Every
// third record, and all of the second half, are v2 so that versions
// interleave within partitions.
func StockUpdates(n int, seed uint64) []StockUpdate {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	base := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	out := make([]StockUpdate, n)
	for i := range out {
		wh := rng.IntN(len(warehouses))
		delta := int32(rng.IntN(41) - 20)
		ts := base.Add(time.Duration(i) * 1500 * time.Millisecond)
		u := StockUpdate{
			Timestamp:        ts.UnixMilli(),
			VariantID:        int32(100000 + rng.IntN(5000)),
			WarehouseID:      int32(wh + 1),
			WarehouseName:    warehouses[wh],
			HuubClientID:     int32(1 + rng.IntN(40)),
			EAN:              fmt.Sprintf("560%010d", rng.IntN(1e10)),
			Reference:        fmt.Sprintf("REF-%06d", rng.IntN(1e6)),
			SalesChannelType: channels[rng.IntN(len(channels))],
			Delta:            delta,
			StockAfterAdjust: int32(rng.IntN(500)),
		}
		if rng.IntN(3) > 0 {
			ref := fmt.Sprintf("PR-%08d", i)
			u.ProcessReference = &ref
		}
		if i%3 == 2 || i >= n/2 {
			u.V2 = true
			u.Reason = reasons[rng.IntN(len(reasons))]
			if rng.IntN(4) > 0 {
				at := ts.Add(-time.Duration(rng.IntN(3600)) * time.Second)
				u.AdjustedAt = &at
				u.UnitCost = big.NewRat(int64(rng.IntN(10_000_000)), 10000) // up to 999.9999, scale 4
			}
		}
		out[i] = u
	}
	return out
}
