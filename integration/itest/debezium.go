package itest

import (
	"context"
	"fmt"
	"math/big"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/bqsink/bqsink/integration/stack"
)

// debeziumFixture reads a schema of schema/testdata/debezium: the Avro
// Debezium's converter registers, shared with package schema's tests.
func debeziumFixture(t *testing.T, name string) string {
	t.Helper()
	_, here, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(here), "..", "..", "schema", "testdata", "debezium", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Debezium's PostgreSQL change events for inventory.products, in the Avro
// its converter registers (schema/testdata/debezium).
type dbzValue struct {
	ID          int32    `avro:"id"`
	Name        string   `avro:"name"`
	Description *string  `avro:"description"`
	Weight      *float64 `avro:"weight"`
	Price       *big.Rat `avro:"price"`
	CreatedAt   int64    `avro:"created_at"`
	Updated     *string  `avro:"updated"`
}

type dbzSource struct {
	Version   string  `avro:"version"`
	Connector string  `avro:"connector"`
	Name      string  `avro:"name"`
	TsMs      int64   `avro:"ts_ms"`
	Snapshot  *string `avro:"snapshot"`
	DB        string  `avro:"db"`
	Sequence  *string `avro:"sequence"`
	TsUs      *int64  `avro:"ts_us"`
	TsNs      *int64  `avro:"ts_ns"`
	Schema    string  `avro:"schema"`
	Table     string  `avro:"table"`
	TxID      *int64  `avro:"txId"`
	LSN       *int64  `avro:"lsn"`
	Xmin      *int64  `avro:"xmin"`
}

type dbzEnvelope struct {
	Before      *dbzValue `avro:"before"`
	After       *dbzValue `avro:"after"`
	Source      dbzSource `avro:"source"`
	Transaction *dbzBlock `avro:"transaction"`
	Op          string    `avro:"op"`
	TsMs        *int64    `avro:"ts_ms"`
	TsUs        *int64    `avro:"ts_us"`
	TsNs        *int64    `avro:"ts_ns"`
}

type dbzBlock struct {
	ID                  string `avro:"id"`
	TotalOrder          int64  `avro:"total_order"`
	DataCollectionOrder int64  `avro:"data_collection_order"`
}

type dbzKey struct {
	ID int32 `avro:"id"`
}

// Debezium is a PostgreSQL table's change stream as Debezium writes
// it, and the table's state it leaves: what the mirror must equal.
type Debezium struct {
	t              *testing.T
	st             *stack.Stack
	flat           avro.Schema // the unwrapped records' schema, once registered
	flatID         int
	sent           []*kgo.Record // unwrapped records, for stale copies
	rng            *rand.Rand
	topic          string
	keyID, valueID int
	keySchema      avro.Schema
	valueSchema    avro.Schema
	lsn            int64
	state          map[int32]dbzValue
	history        map[int32][]*kgo.Record // each key's change events, for stale copies
}

// NewDebezium registers the key schema and, with envelope, the change
// events' schema under topic's subjects.
func NewDebezium(t *testing.T, st *stack.Stack, topic string, envelope bool) *Debezium {
	t.Helper()
	read := func(name string) string { return debeziumFixture(t, name) }
	keyText, valueText := read("dbserver1.inventory.products-key.avsc"), read("dbserver1.inventory.products-value.avsc")
	keyID, err := st.Register(topic+"-key", keyText)
	if err != nil {
		t.Fatal(err)
	}
	var valueID int
	if envelope {
		if valueID, err = st.Register(topic+"-value", valueText); err != nil {
			t.Fatal(err)
		}
	}
	seed := Seed(t)
	return &Debezium{
		t: t, st: st, rng: rand.New(rand.NewPCG(seed, 1)), topic: topic, keyID: keyID, valueID: valueID,
		keySchema: avro.MustParse(keyText), valueSchema: avro.MustParse(valueText),
		lsn: 0x16B3748, state: map[int32]dbzValue{}, history: map[int32][]*kgo.Record{},
	}
}

// Key is key id as Debezium's converter writes it.
func (d *Debezium) Key(id int32) []byte {
	b, err := avro.Marshal(d.keySchema, dbzKey{ID: id})
	if err != nil {
		d.t.Fatal(err)
	}
	return stack.WireFormat(d.keyID, b)
}

// event is one change event at the next log position.
func (d *Debezium) event(op string, before, after *dbzValue, id int32) *kgo.Record {
	commit := d.lsn
	d.lsn += 1 + d.rng.Int64N(500)
	seq := fmt.Sprintf(`["%d","%d"]`, commit, d.lsn)
	lsn := d.lsn
	snap := "false"
	if op == "r" {
		snap = "true"
	}
	env := dbzEnvelope{Before: before, After: after, Op: op, Source: dbzSource{
		Version: "2.7.0.Final", Connector: "postgresql", Name: "dbserver1", TsMs: 1_700_000_000_000, Snapshot: &snap,
		DB: "inventory", Sequence: &seq, Schema: "inventory", Table: "products", LSN: &lsn,
	}}
	b, err := avro.Marshal(d.valueSchema, env)
	if err != nil {
		d.t.Fatal(err)
	}
	r := &kgo.Record{Topic: d.topic, Key: d.Key(id), Value: stack.WireFormat(d.valueID, b)}
	d.history[id] = append(d.history[id], r)
	return r
}

// Row is a new random row for key id.
func (d *Debezium) Row(id int32) dbzValue {
	desc := fmt.Sprintf("v%d", d.rng.IntN(1000))
	w := float64(d.rng.IntN(10000)) / 100
	upd := time.Unix(1_700_000_000+d.rng.Int64N(1e6), 0).UTC().Format(time.RFC3339)
	v := dbzValue{ID: id, Name: fmt.Sprintf("product-%d-%d", id, d.rng.IntN(1e6)), Price: big.NewRat(d.rng.Int64N(1e6), 100),
		CreatedAt: 1_700_000_000_000_000 + d.rng.Int64N(1e12), Updated: &upd}
	if d.rng.IntN(4) > 0 {
		v.Description = &desc
	}
	if d.rng.IntN(4) > 0 {
		v.Weight = &w
	}
	return v
}

// Changes makes n change events over keys ids: snapshot reads, creates,
// updates, deletes (each followed by its tombstone) and, now and then, a
// stale copy of an earlier event of a key delivered late (its log position
// is older than the key's state: it must change nothing).
func (d *Debezium) Changes(n int, keys int32) []*kgo.Record {
	var out []*kgo.Record
	for range n {
		id := 1 + d.rng.Int32N(keys)
		cur, exists := d.state[id]
		switch p := d.rng.IntN(100); {
		case p < 3 && len(d.history[id]) > 1:
			h := d.history[id]
			stale := h[d.rng.IntN(len(h)-1)]
			out = append(out, &kgo.Record{Topic: d.topic, Key: stale.Key, Value: stale.Value})
		case !exists:
			v := d.Row(id)
			op := "c"
			if d.rng.IntN(3) == 0 {
				op = "r"
			}
			out = append(out, d.event(op, nil, &v, id))
			d.state[id] = v
		case p < 25:
			b := cur
			out = append(out, d.event("d", &b, nil, id))
			out = append(out, &kgo.Record{Topic: d.topic, Key: d.Key(id)}) // the tombstone
			delete(d.state, id)
		default:
			b, v := cur, d.Row(id)
			out = append(out, d.event("u", &b, &v, id))
			d.state[id] = v
		}
	}
	return out
}

// Check compares the mirror table with the source's state.
func (d *Debezium) Check(ctx context.Context, st *stack.Stack, table, when string) {
	d.t.Helper()
	tbl, err := st.ReadTable(ctx, table)
	if err != nil {
		d.t.Fatal(err)
	}
	got := map[int32]string{}
	for _, r := range tbl.Rows {
		id := int32(r["id"].(int64))
		if _, dup := got[id]; dup {
			d.t.Errorf("%s: key %d twice in the table", when, id)
		}
		got[id] = fmt.Sprintf("%v|%v|%v|%s", r["name"], r["description"], r["weight"], r["price"].(*big.Rat).FloatString(2))
	}
	want := map[int32]string{}
	for id, v := range d.state {
		var desc, w any
		if v.Description != nil {
			desc = *v.Description
		}
		if v.Weight != nil {
			w = *v.Weight
		}
		want[id] = fmt.Sprintf("%v|%v|%v|%s", v.Name, desc, w, v.Price.FloatString(2))
	}
	missing, extra, differ := 0, 0, 0
	for id, w := range want {
		g, ok := got[id]
		switch {
		case !ok:
			missing++
		case g != w:
			differ++
			if differ <= 3 {
				d.t.Errorf("%s: key %d is %s, want %s", when, id, g, w)
			}
		}
	}
	for id := range got {
		if _, ok := want[id]; !ok {
			extra++
		}
	}
	d.t.Logf("%s: the source holds %d rows, the mirror %d: %d missing, %d deleted but present, %d different",
		when, len(want), len(got), missing, extra, differ)
	if missing+extra+differ > 0 {
		d.t.Errorf("%s: the mirror differs from the source", when)
	}
}

// Unwrapped makes n records as Debezium's unwrap transform
// (ExtractNewRecordState, delete handling "rewrite", add.fields op,lsn)
// writes them over keys ids: the row with __op, __lsn and __deleted; a
// delete is the row with __deleted "true", or now and then a tombstone
// alone; and now and then a stale copy of an earlier record, delivered
// late (ordered by __lsn, it must change nothing). The flattened schema is
// registered under the topic's value subject on first use: do not mix it
// with Changes on one topic.
func (d *Debezium) Unwrapped(n int, keys int32) []*kgo.Record {
	if d.flat == nil {
		text := debeziumFixture(d.t, "unwrap.dbserver1.inventory.products-value.avsc")
		id, err := d.st.Register(d.topic+"-value", text)
		if err != nil {
			d.t.Fatal(err)
		}
		d.flat, d.flatID = avro.MustParse(text), id
	}
	record := func(v dbzValue, op string, deleted bool) *kgo.Record {
		d.lsn += 1 + d.rng.Int64N(100)
		lsn, del := d.lsn, fmt.Sprint(deleted)
		b, err := avro.Marshal(d.flat, map[string]any{
			"id": v.ID, "name": v.Name, "description": v.Description, "weight": v.Weight, "price": v.Price,
			"created_at": v.CreatedAt, "updated": v.Updated, "__op": &op, "__source_ts_ms": nil, "__lsn": &lsn, "__deleted": &del,
		})
		if err != nil {
			d.t.Fatal(err)
		}
		return &kgo.Record{Topic: d.topic, Key: d.Key(v.ID), Value: stack.WireFormat(d.flatID, b)}
	}
	var out []*kgo.Record
	for range n {
		k := 1 + d.rng.Int32N(keys)
		cur, exists := d.state[k]
		switch p := d.rng.IntN(100); {
		case p < 3 && len(d.sent) > 0:
			stale := d.sent[d.rng.IntN(len(d.sent))]
			out = append(out, &kgo.Record{Topic: d.topic, Key: stale.Key, Value: stale.Value})
			continue
		case !exists:
			v := d.Row(k)
			out = append(out, record(v, "c", false))
			d.state[k] = v
		case p < 15:
			out = append(out, record(cur, "d", true))
			delete(d.state, k)
		case p < 20:
			d.lsn += 1 + d.rng.Int64N(100)
			out = append(out, &kgo.Record{Topic: d.topic, Key: d.Key(k)}) // a tombstone alone
			delete(d.state, k)
			continue
		default:
			v := d.Row(k)
			out = append(out, record(v, "u", false))
			d.state[k] = v
		}
		d.sent = append(d.sent, out[len(out)-1])
	}
	return out
}
