package main

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/bqsink/bqsink/integration/stack"
)

// fixture is a kind of record the bench produces.
type fixture struct {
	name, topic, table string
	// keySchema is the Avro schema of the records' keys with -keyed,
	// registered as <topic>-key: fields of the value, each with the value's
	// type, that tell the records apart (unique per record).
	keySchema string
	// register registers the fixture's schemas (and with keyed its key
	// schema) and returns the encoder of the i-th of n records for a seed
	// (safe for concurrent use). Without keyed a record's key is a raw
	// string, as before -keyed existed; with it, the key record of its
	// value's fields in the wire format.
	register func(st *stack.Stack, n int, seed uint64, keyed bool) (func(i int) (*kgo.Record, error), error)
}

// stockKey is a stock update's key with -keyed: the stock item (variant
// and warehouse) and the update's timestamp, unique per record
// (StockUpdates spaces timestamps 1.5 s apart), so that an upsert table
// keeps one row per record.
type stockKey struct {
	VariantID   int32 `avro:"variant_id"`
	WarehouseID int32 `avro:"warehouse_id"`
	Timestamp   int64 `avro:"timestamp"`
}

// deliveryKey is a DeliveryCreated's key with -keyed: its random UUID.
type deliveryKey struct {
	DeliveryID string `avro:"delivery_id"`
}

// The key schemas of -keyed (see fixture.keySchema).
const (
	stockKeySchema = `{"type": "record", "name": "SMSPhysicalStockUpdates_key", "namespace": "com.huub.types", "fields": [
		{"name": "variant_id", "type": "int"},
		{"name": "warehouse_id", "type": "int"},
		{"name": "timestamp", "type": "long"}]}`
	deliveryKeySchema = `{"type": "record", "name": "DeliveryCreated_key", "namespace": "com.huub.events", "fields": [
		{"name": "delivery_id", "type": {"type": "string", "logicalType": "uuid"}}]}`
)

var fixtures = map[string]fixture{
	"seed": {
		name: "seed", topic: stack.StockTopic, table: stack.StockTable,
		keySchema: stockKeySchema,
		register: func(st *stack.Stack, n int, seed uint64, keyed bool) (func(int) (*kgo.Record, error), error) {
			schemas, err := st.RegisterStock()
			if err != nil {
				return nil, err
			}
			key, err := registerKey(st, stack.StockTopic, stockKeySchema, keyed)
			if err != nil {
				return nil, err
			}
			// v1 and v2 interleaved; v2 only in the second half.
			updates := stack.StockUpdates(n, seed)
			return func(i int) (*kgo.Record, error) {
				u := updates[i]
				r, err := schemas.Record(u)
				if err != nil || key == nil {
					return r, err
				}
				r.Key, err = key(stockKey{VariantID: u.VariantID, WarehouseID: u.WarehouseID, Timestamp: u.Timestamp})
				return r, err
			}, nil
		},
	},
	"delivery": {
		name: "delivery", topic: stack.DeliveryTopic, table: stack.DeliveryTable,
		keySchema: deliveryKeySchema,
		register: func(st *stack.Stack, _ int, seed uint64, keyed bool) (func(int) (*kgo.Record, error), error) {
			schemas, err := st.RegisterDelivery()
			if err != nil {
				return nil, err
			}
			key, err := registerKey(st, stack.DeliveryTopic, deliveryKeySchema, keyed)
			if err != nil {
				return nil, err
			}
			return func(i int) (*kgo.Record, error) {
				d := stack.MakeDelivery(seed, i)
				r, err := schemas.Record(d)
				if err != nil || key == nil {
					return r, err
				}
				r.Key, err = key(deliveryKey{DeliveryID: d.DeliveryID})
				return r, err
			}, nil
		},
	},
}

// registerKey registers a key schema as topic's key subject (<topic>-key)
// and returns the encoder of keys in the wire format; nil without keyed.
func registerKey(st *stack.Stack, topic, text string, keyed bool) (func(v any) ([]byte, error), error) {
	if !keyed {
		return nil, nil
	}
	s, err := avro.Parse(text)
	if err != nil {
		return nil, fmt.Errorf("key schema of %s: %w", topic, err)
	}
	id, err := st.Register(topic+"-key", text)
	if err != nil {
		return nil, err
	}
	return func(v any) ([]byte, error) {
		body, err := avro.Marshal(s, v)
		if err != nil {
			return nil, fmt.Errorf("encode key: %w", err)
		}
		return stack.WireFormat(id, body), nil
	}, nil
}

// keyFields are the field names of a fixture's key schema.
func (f fixture) keyFields() []string {
	s, err := avro.Parse(f.keySchema)
	if err != nil {
		return nil
	}
	rs, ok := s.(*avro.RecordSchema)
	if !ok {
		return nil
	}
	var names []string
	for _, fl := range rs.Fields() {
		names = append(names, fl.Name())
	}
	return names
}

// producer writes to one topic asynchronously in batches, as a busy
// producer does (franz-go's defaults: snappy, batches up to 1 MB), and
// counts what the broker acknowledged.
type producer struct {
	cl    *kgo.Client
	acked atomic.Int64

	mu       sync.Mutex
	firstErr error
}

func newProducer(st *stack.Stack, topic string) (*producer, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(st.Brokers()...),
		kgo.DefaultProduceTopic(topic),
		kgo.MaxBufferedRecords(100_000),
		kgo.ProducerLinger(5*time.Millisecond),
		// Order within a partition does not matter here; throughput does.
		kgo.DisableIdempotentWrite(),
		kgo.MaxProduceRequestsInflightPerBroker(4),
		kgo.RecordRetries(10),
	)
	if err != nil {
		return nil, err
	}
	return &producer{cl: cl}, nil
}

func (p *producer) produce(ctx context.Context, r *kgo.Record) {
	p.cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
		if err != nil {
			p.mu.Lock()
			if p.firstErr == nil {
				p.firstErr = err
			}
			p.mu.Unlock()
			return
		}
		p.acked.Add(1)
	})
}

// flush waits for everything produced and returns the first error.
func (p *producer) flush(ctx context.Context) error {
	if err := p.cl.Flush(ctx); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.firstErr
}

func (p *producer) close() { p.cl.Close() }

// produceBacklog writes records 0..n-1 of rec, encoded on every core in
// parallel, and waits until the broker has them all.
func produceBacklog(ctx context.Context, st *stack.Stack, topics []string, n int, rec func(int) (*kgo.Record, error)) error {
	topic := topics[0]
	p, err := newProducer(st, topic)
	if err != nil {
		return err
	}
	defer p.close()
	began := time.Now()
	stop := progress(ctx, 10*time.Second, func() {
		logf("produced %d of %d records (%.0f s)", p.acked.Load(), n, time.Since(began).Seconds())
	})
	defer stop()
	workers := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				if ctx.Err() != nil {
					return
				}
				r, err := rec(i)
				if err != nil {
					errs <- fmt.Errorf("record %d: %w", i, err)
					return
				}
				r.Topic = topics[i%len(topics)]
				p.produce(ctx, r)
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("produce: %w", err)
	}
	if err := p.flush(ctx); err != nil {
		return fmt.Errorf("produce to %s: %w", topic, err)
	}
	if got := p.acked.Load(); got != int64(n) {
		return fmt.Errorf("produce to %s: %d of %d records acknowledged", topic, got, n)
	}
	return nil
}

// steadyProduced is what produceSteady did.
type steadyProduced struct {
	records     int
	first, last time.Time // first and last record produced
}

// produceSteady produces rate records per second for d, cycling through a
// pool of encoded records; each record's timestamp is the moment it is
// handed to the client.
func produceSteady(ctx context.Context, st *stack.Stack, topics []string, rate int, d time.Duration, pool []*kgo.Record) (steadyProduced, error) {
	var out steadyProduced
	topic := topics[0]
	p, err := newProducer(st, topic)
	if err != nil {
		return out, err
	}
	defer p.close()
	total := int(float64(rate) * d.Seconds())
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	stop := progress(ctx, 10*time.Second, func() {
		logf("produced %d of %d records at %d/s", p.acked.Load(), total, rate)
	})
	defer stop()
	out.first = time.Now()
	for out.records < total {
		due := min(total, int(float64(rate)*time.Since(out.first).Seconds())+1)
		for ; out.records < due; out.records++ {
			src := pool[out.records%len(pool)]
			p.produce(ctx, &kgo.Record{Topic: topics[out.records%len(topics)], Key: src.Key, Value: src.Value, Timestamp: time.Now()})
		}
		out.last = time.Now()
		select {
		case <-ctx.Done():
			return out, fmt.Errorf("produce: %w", ctx.Err())
		case <-tick.C:
		}
	}
	if err := p.flush(ctx); err != nil {
		return out, fmt.Errorf("produce to %s: %w", topic, err)
	}
	if got := p.acked.Load(); got != int64(total) {
		return out, fmt.Errorf("produce to %s: %d of %d records acknowledged", topic, got, total)
	}
	return out, nil
}

// progress calls f every interval until stopped or ctx ends.
func progress(ctx context.Context, every time.Duration, f func()) (stop func()) {
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-quit:
				return
			case <-t.C:
				f()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(quit) })
		<-done
	}
}
