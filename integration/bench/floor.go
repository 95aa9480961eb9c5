package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/bqsink/bqsink/integration/stack"
)

// The floor: the least any consumer of these records must do. It reads the
// topic from the start with franz-go (direct partition consumption, no
// group), strips the Confluent wire format's 5-byte header, and decodes each
// body with hamba/avro into a Go struct of the fixture, its writer schema
// picked by the schema ID and fetched and parsed once per ID (references
// resolved through the registry, as any registry client does). bqsink must
// do all of this and more (transcode to rows, append, commit), so its CPU
// per record divided by the floor's says how much more. The floor is this
// binary, which carries the harness's packages: its figures include their
// start (about 30 ms of CPU and 27 MiB of RSS), as bqsink's include its own.

// floorStock is the stock-update record for decoding: stack.StockUpdate
// cannot take unit_cost back (hamba does not fill a *big.Rat inside a
// union; an interface gets the *big.Rat).
type floorStock struct {
	Timestamp        int64      `avro:"timestamp"`
	ProcessReference *string    `avro:"process_reference"`
	VariantID        int32      `avro:"variant_id"`
	WarehouseID      int32      `avro:"warehouse_id"`
	WarehouseName    string     `avro:"warehouse_name"`
	HuubClientID     int32      `avro:"huubclient_id"`
	EAN              string     `avro:"ean"`
	Reference        string     `avro:"reference"`
	SalesChannelType string     `avro:"sales_channel_type"`
	Delta            int32      `avro:"delta"`
	StockAfterAdjust int32      `avro:"stock_after_adjust"`
	AdjustedAt       *time.Time `avro:"adjusted_at"`
	UnitCost         any        `avro:"unit_cost"`
	Reason           string     `avro:"reason"`
}

// floorResult is the floor's last line of output.
type floorResult struct {
	Records  int   `json:"records"`
	Schemas  int   `json:"schemas"`
	Checksum int64 `json:"checksum"`
	VmHWMKiB int64 `json:"vmhwm_kib"`
}

// floorReady is the line the floor writes to stderr once its Kafka client
// reached the broker, with -from: the harness then starts producing.
const floorReady = "floor: ready"

// floorMain runs the floor: -floor -brokers B -registry URL -topic T -n N
// -schema S [-from P:O,...].
func floorMain(args []string) int {
	fs := flag.NewFlagSet("floor", flag.ContinueOnError)
	brokers := fs.String("brokers", "", "comma-separated bootstrap brokers")
	registry := fs.String("registry", "", "schema registry URL")
	topic := fs.String("topic", "", "topic to read")
	n := fs.Int("n", 0, "records to read")
	schemaName := fs.String("schema", "seed", "fixture: seed or delivery")
	timeout := fs.Duration("timeout", 30*time.Minute, "give up after this")
	from := fs.String("from", "", "partition:offset,...: read every partition from these offsets (records still to be produced, as they arrive) and say "+floorReady+" on stderr once connected; empty: the topic from its start")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	offsets, err := parseOffsets(*from)
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor: -from:", err)
		return 2
	}
	res, err := floor(*brokers, *registry, *topic, *schemaName, *n, offsets, *timeout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		return 1
	}
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	return 0
}

// formatOffsets is -from's value: partition:offset pairs.
func formatOffsets(offsets map[int32]int64) string {
	parts := make([]string, 0, len(offsets))
	for p, o := range offsets {
		parts = append(parts, fmt.Sprintf("%d:%d", p, o))
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// parseOffsets reads -from; nil for "".
func parseOffsets(text string) (map[int32]int64, error) {
	if text == "" {
		return nil, nil
	}
	out := map[int32]int64{}
	for _, kv := range strings.Split(text, ",") {
		var p int32
		var o int64
		if _, err := fmt.Sscanf(kv, "%d:%d", &p, &o); err != nil || p < 0 || o < 0 {
			return nil, fmt.Errorf("%q: want partition:offset", kv)
		}
		out[p] = o
	}
	return out, nil
}

// floor reads n records of topic: from its start, or with from, from those
// offsets of its partitions, as they are produced.
func floor(brokers, registry, topic, fixture string, n int, from map[int32]int64, timeout time.Duration) (floorResult, error) {
	var res floorResult
	var decode func(avro.Schema, []byte) (int64, error)
	switch fixture {
	case "seed":
		decode = func(s avro.Schema, body []byte) (int64, error) {
			var v floorStock
			err := avro.Unmarshal(s, body, &v)
			return int64(v.Delta) + int64(len(v.EAN)), err
		}
	case "delivery":
		decode = func(s avro.Schema, body []byte) (int64, error) {
			var v stack.Delivery
			err := avro.Unmarshal(s, body, &v)
			return int64(len(v.Lines)) + int64(len(v.Attributes)), err
		}
	default:
		return res, fmt.Errorf("unknown fixture %q", fixture)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	reg, err := sr.NewClient(sr.URLs(registry))
	if err != nil {
		return res, err
	}
	opts := []kgo.Opt{kgo.SeedBrokers(strings.Split(brokers, ",")...)}
	if from == nil {
		opts = append(opts, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	} else {
		parts := map[int32]kgo.Offset{}
		for p, o := range from {
			parts[p] = kgo.NewOffset().At(o)
		}
		opts = append(opts, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: parts}))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return res, err
	}
	defer cl.Close()
	if from != nil {
		if err := cl.Ping(ctx); err != nil {
			return res, fmt.Errorf("reaching the brokers: %w", err)
		}
		fmt.Fprintln(os.Stderr, floorReady)
	}

	schemas := map[uint32]avro.Schema{}
	for res.Records < n {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("read %d of %d records: %w", res.Records, n, err)
		}
		for _, fe := range fetches.Errors() {
			return res, fmt.Errorf("fetch %s[%d]: %w", fe.Topic, fe.Partition, fe.Err)
		}
		for it := fetches.RecordIter(); !it.Done() && res.Records < n; {
			r := it.Next()
			v := r.Value
			if len(v) < 5 || v[0] != 0 {
				return res, fmt.Errorf("%s[%d]@%d: not in the Confluent wire format", r.Topic, r.Partition, r.Offset)
			}
			id := binary.BigEndian.Uint32(v[1:5])
			s, ok := schemas[id]
			if !ok {
				if s, err = fetchSchema(ctx, reg, int(id)); err != nil {
					return res, err
				}
				schemas[id] = s
			}
			sum, err := decode(s, v[5:])
			if err != nil {
				return res, fmt.Errorf("%s[%d]@%d: decode with schema %d: %w", r.Topic, r.Partition, r.Offset, id, err)
			}
			res.Checksum += sum
			res.Records++
		}
	}
	res.Schemas = len(schemas)
	res.VmHWMKiB, _ = procStatusKiB(os.Getpid(), "VmHWM")
	return res, nil
}

// fetchSchema fetches schema id and the schemas it references, parses the
// references first (depth first) into a cache of its own, and then it.
func fetchSchema(ctx context.Context, reg *sr.Client, id int) (avro.Schema, error) {
	s, err := reg.SchemaByID(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("schema %d: %w", id, err)
	}
	cache := &avro.SchemaCache{}
	seen := map[string]bool{}
	var refs func([]sr.SchemaReference) error
	refs = func(rs []sr.SchemaReference) error {
		for _, r := range rs {
			key := fmt.Sprintf("%s/%d", r.Subject, r.Version)
			if seen[key] {
				continue
			}
			seen[key] = true
			ss, err := reg.SchemaByVersion(ctx, r.Subject, r.Version)
			if err != nil {
				return fmt.Errorf("reference %s: %w", key, err)
			}
			if err := refs(ss.References); err != nil {
				return err
			}
			if _, err := avro.ParseWithCache(ss.Schema.Schema, "", cache); err != nil {
				return fmt.Errorf("parse reference %s: %w", key, err)
			}
		}
		return nil
	}
	if err := refs(s.References); err != nil {
		return nil, fmt.Errorf("schema %d: %w", id, err)
	}
	parsed, err := avro.ParseWithCache(s.Schema, "", cache)
	if err != nil {
		return nil, fmt.Errorf("parse schema %d: %w", id, err)
	}
	return parsed, nil
}
