package sink

import (
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Memory accounting. What the sink holds for a record until BigQuery
// acknowledges it is the record itself (franz-go's Record struct, key,
// value and headers) and its encoded row. A partition admits a record by
// charging both, the row as an estimate until it is encoded; they are
// released together when the record's offset is acknowledged or the
// partition is let go.
const (
	// recordOverhead approximates a *kgo.Record and the sink's references
	// to it beyond its key, value and headers.
	recordOverhead = 256
	// rowOverhead approximates an encoded row's slice and bookkeeping.
	rowOverhead = 48
)

// recordSize is what holding r costs, its row aside.
func recordSize(r *kgo.Record) int64 {
	n := int64(len(r.Key) + len(r.Value) + recordOverhead)
	for _, h := range r.Headers {
		n += int64(len(h.Key) + len(h.Value) + 32)
	}
	return n
}

// estimatedRow is what r's encoded row is expected to cost until it is
// encoded: about its Avro body; nothing for a record too large to have a
// row (see workerConfig.maxRecordBytes), so that a huge record is charged
// once, not twice.
func (w *worker) estimatedRow(r *kgo.Record) int64 {
	if w.tooLarge(r) {
		return 0
	}
	return int64(len(r.Value) + rowOverhead)
}

// tooLarge reports whether r's value is too large for its row to fit one
// AppendRows request.
func (w *worker) tooLarge(r *kgo.Record) bool {
	return w.cfg.maxRecordBytes > 0 && len(r.Value) > w.cfg.maxRecordBytes
}

// fetchSizes derives franz-go's fetch limits from the memory cap: one
// fetch response at most cap/32 (at least 256 KiB, at most Kafka's 50 MiB
// default), one partition's part of it at most cap/128 (64 KiB to 1 MiB).
// Kafka still returns a partition's first batch whole, whatever these say,
// so a record larger than them is fetched too, up to BrokerMaxReadBytes.
func fetchSizes(capBytes int64) (fetchMax, partitionMax int32) {
	f := min(max(capBytes/32, 256<<10), 50<<20)
	p := min(max(capBytes/128, 64<<10), 1<<20)
	return int32(f), int32(p)
}

// flow holds the memory budget (memory.max_buffered_bytes). franz-go keeps
// one fetch response (concurrentFetches) between polls: a reserve is kept
// for it, decompressed. The rest is split evenly: each partition admits
// records up to three quarters of its part (its share), leaving room for
// rows that turn out larger than estimated, and leaves the rest of a poll
// in Kafka to be fetched again once it has room. So the sum stays under
// the cap, and a partition that cannot progress holds its share and no
// more: a stalled table takes no memory from healthy ones.
// Goroutine-safe.
type flow struct {
	cap   int64
	avail int64 // cap minus franz-go's reserve: what partitions share
	used  atomic.Int64
	peak  atomic.Int64
	parts atomic.Int64  // partitions assigned
	freed chan struct{} // capacity 1: "used went down"
}

// concurrentFetches is how many fetch responses franz-go may have in flight
// or buffered: one, so that what it holds between polls is bounded.
const concurrentFetches = 1

func newFlow(capBytes int64) *flow {
	fetchMax, _ := fetchSizes(capBytes)
	// A response decompressed, with a Record struct per record, is several
	// times its size on the wire.
	reserve := min(4*concurrentFetches*int64(fetchMax), capBytes/4)
	return &flow{cap: capBytes, avail: capBytes - reserve, freed: make(chan struct{}, 1)}
}

func (f *flow) charge(n int64) {
	u := f.used.Add(n)
	for {
		p := f.peak.Load()
		if u <= p || f.peak.CompareAndSwap(p, u) {
			return
		}
	}
}

func (f *flow) release(n int64) {
	if n == 0 {
		return
	}
	f.used.Add(-n)
	select {
	case f.freed <- struct{}{}:
	default:
	}
}

// mayPoll reports whether there is room left for a poll. With nothing held
// there always is, so a single record larger than the cap still moves.
func (f *flow) mayPoll() bool {
	u := f.used.Load()
	return u == 0 || u < f.avail
}

// share is how much one partition admits before it leaves records in
// Kafka and pauses its fetching.
func (f *flow) share() int64 {
	return f.avail * 3 / (4 * max(f.parts.Load(), 1))
}
