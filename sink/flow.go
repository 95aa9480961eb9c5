package sink

import (
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Memory accounting. What the sink holds for a record until BigQuery
// acknowledges it is the record itself (franz-go's Record struct, key,
// value and headers) and, once decoded, its encoded row. Both are charged
// to the partition that holds them and to the sink-wide total, and
// released together when the record's offset is acknowledged or the
// partition is let go.
const (
	// recordOverhead approximates a *kgo.Record and the sink's references
	// to it beyond its key, value and headers.
	recordOverhead = 256
	// rowOverhead approximates an encoded row's slice and bookkeeping.
	rowOverhead = 48
	// minShare keeps a partition's share of memory useful when many
	// partitions split a small cap.
	minShare = 64 << 10
	// concurrentFetches bounds the fetch responses franz-go keeps in
	// flight or buffered: part of the memory bound.
	concurrentFetches = 4
)

func recordSize(r *kgo.Record) int64 {
	n := int64(len(r.Key) + len(r.Value) + recordOverhead)
	for _, h := range r.Headers {
		n += int64(len(h.Key) + len(h.Value) + 32)
	}
	return n
}

// fetchSizes derives franz-go's fetch limits from the memory cap: one
// fetch response at most cap/64 (at least 256 KiB, at most Kafka's 50 MiB
// default), a partition's share of it at most 1 MiB. A record larger than
// these is still fetched, alone (Kafka returns the first batch whatever
// its size), up to BrokerMaxReadBytes.
func fetchSizes(capBytes int64) (fetchMax, partitionMax int32) {
	f := min(max(capBytes/64, 256<<10), 50<<20)
	return int32(f), int32(min(f, 1<<20))
}

// flow holds the memory budget (memory.max_buffered_bytes). The poll loop
// polls only while what is held plus what one poll can bring stays under
// the cap; each partition also pauses its own fetching once it holds its
// share, so a stalled table cannot take memory from healthy ones.
// Goroutine-safe.
type flow struct {
	cap     int64
	reserve int64 // what franz-go may hold and one poll may bring, rows included
	used    atomic.Int64
	peak    atomic.Int64
	parts   atomic.Int64  // partitions assigned
	freed   chan struct{} // capacity 1: "used went down"
}

func newFlow(capBytes int64) *flow {
	fetchMax, _ := fetchSizes(capBytes)
	// A poll returns what franz-go buffered: at most concurrentFetches
	// responses. Their records count about twice once decoded (record plus
	// row), and small records cost more as Record structs than as bytes.
	reserve := 3 * concurrentFetches * int64(fetchMax)
	return &flow{cap: capBytes, reserve: min(reserve, capBytes/2), freed: make(chan struct{}, 1)}
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

// mayPoll reports whether a poll fits under the cap. With nothing held it
// always does, so a single record larger than the cap still moves.
func (f *flow) mayPoll() bool {
	u := f.used.Load()
	return u == 0 || u+f.reserve <= f.cap
}

// share is how much one partition may hold before its fetching pauses:
// half the budget split evenly, so partitions that cannot progress hold at
// most half of it.
func (f *flow) share() int64 {
	n := max(f.parts.Load(), 1)
	return max((f.cap-f.reserve)/(2*n), minShare)
}
