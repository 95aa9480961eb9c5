package main

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/bqsink/bqsink/integration/stack"
)

// fixture is a kind of record the bench produces.
type fixture struct {
	name, topic, table string
	// register registers the fixture's schemas and returns the encoder of
	// the i-th of n records for a seed (safe for concurrent use).
	register func(st *stack.Stack, n int, seed uint64) (func(i int) (*kgo.Record, error), error)
}

var fixtures = map[string]fixture{
	"seed": {
		name: "seed", topic: stack.StockTopic, table: stack.StockTable,
		register: func(st *stack.Stack, n int, seed uint64) (func(int) (*kgo.Record, error), error) {
			schemas, err := st.RegisterStock()
			if err != nil {
				return nil, err
			}
			// v1 and v2 interleaved; v2 only in the second half.
			updates := stack.StockUpdates(n, seed)
			return func(i int) (*kgo.Record, error) { return schemas.Record(updates[i]) }, nil
		},
	},
	"delivery": {
		name: "delivery", topic: stack.DeliveryTopic, table: stack.DeliveryTable,
		register: func(st *stack.Stack, _ int, seed uint64) (func(int) (*kgo.Record, error), error) {
			schemas, err := st.RegisterDelivery()
			if err != nil {
				return nil, err
			}
			return func(i int) (*kgo.Record, error) { return schemas.Record(stack.MakeDelivery(seed, i)) }, nil
		},
	},
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
func produceBacklog(ctx context.Context, st *stack.Stack, topic string, n int, rec func(int) (*kgo.Record, error)) error {
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
				r.Topic = topic
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
func produceSteady(ctx context.Context, st *stack.Stack, topic string, rate int, d time.Duration, pool []*kgo.Record) (steadyProduced, error) {
	var out steadyProduced
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
			p.produce(ctx, &kgo.Record{Topic: topic, Key: src.Key, Value: src.Value, Timestamp: time.Now()})
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
