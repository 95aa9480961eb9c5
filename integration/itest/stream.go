package itest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"
	"google.golang.org/api/option"

	"github.com/bqsink/bqsink/integration/stack"
)

// Seed is BQSINK_TEST_SEED if set, else the clock. Tests log it, so a
// failing run's random choices can be replayed.
func Seed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("BQSINK_TEST_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("BQSINK_TEST_SEED: %v", err)
		}
	}
	t.Logf("seed %d (replay with BQSINK_TEST_SEED=%d)", seed, seed)
	return seed
}

// Stream produces stock updates of both versions to the stock topic in the
// background, at a steady rate, and remembers the partition and offset of
// every record Kafka acknowledged. Its methods are goroutine-safe.
type Stream struct {
	t    *testing.T
	cl   *kgo.Client
	quit chan struct{} // closed by Finish: stop once atLeast records are out
	done chan struct{}

	mu      sync.Mutex
	offsets map[int32][]int64
	n       int
	err     error
}

// StartStream produces at least atLeast records at perSecond records a second
// (updates keyed by EAN, so they spread over the partitions) until Finish
// is called. It stops and waits when the test ends.
func StartStream(t *testing.T, e *Env, atLeast, perSecond int, seed uint64) *Stream {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.St.Brokers()...), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	s := &Stream{t: t, cl: cl, quit: make(chan struct{}), done: make(chan struct{}), offsets: map[int32][]int64{}}
	go s.run(e, atLeast, perSecond, seed)
	t.Cleanup(func() {
		s.stop()
		<-s.done
		cl.Close()
	})
	return s
}

func (s *Stream) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.quit:
	default:
		close(s.quit)
	}
}

func (s *Stream) run(e *Env, atLeast, perSecond int, seed uint64) {
	defer close(s.done)
	const tick = 20 * time.Millisecond
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	start := time.Now()
	var pending []*kgo.Record
	chunk := uint64(0)
	quit, finishing := s.quit, false
	for sent := 0; ; {
		select {
		case <-s.t.Context().Done():
			return
		case <-quit:
			quit, finishing = nil, true // carry on until atLeast
		case <-ticker.C:
		}
		if finishing && sent >= atLeast {
			return
		}
		due := int(time.Since(start).Seconds()*float64(perSecond)) - sent
		if due <= 0 {
			continue
		}
		due = min(due, perSecond/2) // catch up gradually after a stall
		if finishing {
			due = min(due, atLeast-sent)
		}
		for len(pending) < due {
			chunk++
			for _, u := range stack.StockUpdates(1000, seed^chunk) {
				r, err := e.Schemas.Record(u)
				if err != nil {
					s.fail(err)
					return
				}
				pending = append(pending, r)
			}
		}
		batch := pending[:due]
		pending = pending[due:]
		pctx, cancel := context.WithTimeout(s.t.Context(), 30*time.Second)
		err := s.cl.ProduceSync(pctx, batch...).FirstErr()
		cancel()
		if err != nil {
			if s.t.Context().Err() == nil {
				s.fail(err)
			}
			return
		}
		s.mu.Lock()
		for _, r := range batch {
			s.offsets[r.Partition] = append(s.offsets[r.Partition], r.Offset)
		}
		s.n += len(batch)
		s.mu.Unlock()
		sent += len(batch)
	}
}

func (s *Stream) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

// Produced is the number of records Kafka has acknowledged so far.
func (s *Stream) Produced() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// Offsets is what the stream produced, by partition.
func (s *Stream) Offsets() map[int32][]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[int32][]int64, len(s.offsets))
	for p, o := range s.offsets {
		out[p] = slices.Clone(o)
	}
	return out
}

// Note adds records produced outside s (with their partitions and offsets
// set by Kafka) to what s's coverage check expects.
func (s *Stream) Note(recs []*kgo.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range recs {
		s.offsets[r.Partition] = append(s.offsets[r.Partition], r.Offset)
	}
	s.n += len(recs)
}

// Running reports whether the stream is still producing.
func (s *Stream) Running() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Finish lets the stream stop once it has produced its minimum and waits for
// it, failing the test after within or if a produce failed.
func (s *Stream) Finish(within time.Duration) {
	s.t.Helper()
	s.stop()
	select {
	case <-s.done:
	case <-time.After(within):
		s.t.Fatalf("stream still producing %v after finish (%d records out)", within, s.Produced())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		s.t.Fatalf("produce: %v", s.err)
	}
}

// Coverage compares what a stream produced with a table's rows, by the
// (topic, partition, offset) in their metadata column.
type Coverage struct {
	Records      int // produced
	Rows         int // in the table
	Duplicates   int // rows beyond the first for a record
	Missing      int // records with no row
	Unexpected   int // rows for no produced record
	FirstMissing []string
}

func (c Coverage) String() string {
	return fmt.Sprintf("records %d, rows %d, duplicates %d, missing %d, unexpected %d",
		c.Records, c.Rows, c.Duplicates, c.Missing, c.Unexpected)
}

// CheckCoverage reads the stock table back through the BigQuery client and
// fails the test unless every record the stream produced has at least one
// row and every row is one of them, by the (topic, partition, offset) in
// the metadata column. The stream must be finished.
func CheckCoverage(t *testing.T, e *Env, s *Stream, column string) Coverage {
	t.Helper()
	origins := ReadOrigins(t, e, stack.StockTable, column)
	type partition struct {
		produced []bool
		rows     []int
	}
	parts := map[int32]*partition{}
	var c Coverage
	s.mu.Lock()
	for p, offs := range s.offsets {
		end := int64(0)
		for _, o := range offs {
			end = max(end, o+1)
		}
		pt := &partition{produced: make([]bool, end), rows: make([]int, end)}
		for _, o := range offs {
			pt.produced[o] = true
		}
		parts[p] = pt
		c.Records += len(offs)
	}
	s.mu.Unlock()

	c.Rows = len(origins)
	for _, o := range origins {
		pt := parts[o.Partition]
		if o.Topic != stack.StockTopic || pt == nil || o.Offset < 0 || o.Offset >= int64(len(pt.produced)) || !pt.produced[o.Offset] {
			c.Unexpected++
			continue
		}
		pt.rows[o.Offset]++
	}
	for p, pt := range parts {
		for o, n := range pt.rows {
			switch {
			case !pt.produced[o]:
			case n == 0:
				c.Missing++
				if len(c.FirstMissing) < 10 {
					c.FirstMissing = append(c.FirstMissing, fmt.Sprintf("%d@%d", p, o))
				}
			default:
				c.Duplicates += n - 1
			}
		}
	}
	if c.Missing > 0 || c.Unexpected > 0 {
		t.Errorf("%v; first missing (partition@offset): %v", c, c.FirstMissing)
	}
	return c
}

// Origin is where a row came from, as its metadata column says.
type Origin struct {
	Topic     string
	Partition int32
	Offset    int64
}

// ReadOrigins reads every row's origin from table's metadata column through
// the BigQuery client on the test server's REST endpoint (tabledata.list,
// as a user's tool would), in a few row ranges at once: the whole table is
// tens of thousands of rows.
func ReadOrigins(t *testing.T, e *Env, table, column string) []Origin {
	t.Helper()
	ctx := t.Context()
	cl, err := bigquery.NewClient(ctx, stack.Project, option.WithEndpoint(e.St.BigQuery.RESTEndpoint()), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	tbl := cl.Dataset(stack.Dataset).Table(table)
	md, err := tbl.Metadata(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const ranges = 4
	total := int(md.NumRows)
	out := make([][]Origin, ranges)
	g, gctx := errgroup.WithContext(ctx)
	for i := range ranges {
		lo, hi := total*i/ranges, total*(i+1)/ranges
		g.Go(func() error {
			it := tbl.Read(gctx)
			it.StartIndex = uint64(lo)
			var l originLoader
			l.column = column
			for n := lo; n < hi; n++ {
				if err := it.Next(&l); err != nil {
					return fmt.Errorf("row %d of %s: %w", n, table, err)
				}
				out[i] = append(out[i], l.last)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	var all []Origin
	for _, o := range out {
		all = append(all, o...)
	}
	return all
}

// originLoader is a bigquery.ValueLoader keeping only the metadata column.
type originLoader struct {
	column string
	last   Origin
}

func (l *originLoader) Load(v []bigquery.Value, s bigquery.Schema) error {
	l.last = Origin{}
	for i, f := range s {
		if f.Name != l.column {
			continue
		}
		sub, _ := v[i].([]bigquery.Value)
		for j, sf := range f.Schema {
			if j >= len(sub) {
				break
			}
			switch sf.Name {
			case "topic":
				l.last.Topic, _ = sub[j].(string)
			case "partition":
				p, _ := sub[j].(int64)
				l.last.Partition = int32(p)
			case "offset":
				l.last.Offset, _ = sub[j].(int64)
			}
		}
		return nil
	}
	return fmt.Errorf("no column %s", l.column)
}

// WaitCaughtUp waits until group's committed offsets equal the end offsets
// of the stock topic.
func WaitCaughtUp(t *testing.T, e *Env, group string, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), within)
	defer cancel()
	if _, err := e.St.WaitCommitted(ctx, group, stack.StockTopic); err != nil {
		t.Fatalf("group %s not caught up within %v: %v", group, within, err)
	}
}

// Jitter is a duration in [lo, hi) drawn from rng.
func Jitter(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)))
}
