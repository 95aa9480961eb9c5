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
// for it, decompressed. Partitions admit records from three quarters of the
// rest (the pool), leaving room for rows that turn out larger than
// estimated; a partition leaves the rest of a poll in Kafka, to be fetched
// again once it has room.
//
// The pool is handed to the partitions that have records, not split evenly
// over all assigned ones. Half of it is guaranteed: each partition may
// always hold pool/(2×partitions), whatever the others hold. The other half
// is elastic: a busy partition (one holding records, or with records
// waiting in Kafka) aims for its guaranteed part plus an even part of the
// elastic half among the busy ones, so one busy partition among a hundred
// idle ones holds half the pool, and a hundred busy ones hold an even share
// each. A partition takes elastic memory only while what all partitions
// hold beyond their guaranteed parts stays within the elastic half. So the
// sum stays under the pool, a partition becoming busy always has its
// guaranteed part at once, and one that cannot progress (a stalled table)
// keeps what it holds but never more than the elastic half and its
// guaranteed parts: the healthy ones still move. As partitions go idle the
// busy ones' aim grows; as more become busy it shrinks, and those holding
// more than their new aim take nothing until BigQuery acknowledged enough.
// Goroutine-safe.
type flow struct {
	cap   int64
	avail int64 // cap minus franz-go's reserve
	used  atomic.Int64
	peak  atomic.Int64
	parts atomic.Int64 // partitions assigned
	// busy is how many partitions hold records or have records waiting
	// in Kafka, as the poll loop last counted them.
	busy atomic.Int64
	// inside is what the partitions hold within their guaranteed parts:
	// the sum over partitions of min(held, guaranteed()), as each last
	// accounted it (worker.account).
	inside atomic.Int64
	// rawSeen and chargedSeen are the bytes of records admitted as they
	// came from Kafka and as charged: their ratio sizes fetches.
	rawSeen, chargedSeen atomic.Int64
	// asked is what fetches ask of a partition since the poll loop last
	// changed it (0: fetchSizes' default); the poll loop's own.
	asked int32
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

// pool is what the partitions hold between them, at most.
func (f *flow) pool() int64 { return f.avail * 3 / 4 }

// guaranteedShare is the part of the pool that is each partition's
// whatever the others hold: half of it split evenly among the partitions
// assigned.
func (f *flow) guaranteedShare() int64 {
	return f.pool() / (2 * max(f.parts.Load(), 1))
}

// elastic is the part of the pool beyond the guaranteed parts: what busy
// partitions share.
func (f *flow) elastic() int64 {
	return f.pool() - max(f.parts.Load(), 1)*f.guaranteedShare()
}

// aim is what a busy partition holds at most: its guaranteed part and an
// even part of the elastic half among the busy partitions. With every
// partition busy it is the pool split evenly; with one, about half the
// pool.
func (f *flow) aim() int64 {
	busy := min(max(f.busy.Load(), 1), max(f.parts.Load(), 1))
	return f.guaranteedShare() + f.elastic()/busy
}

// limit is how much a partition that holds held, inside of it within its
// guaranteed part, may hold now: its aim, unless the other partitions hold
// so much beyond their guaranteed parts that less of the elastic half is
// left; never less than its guaranteed part.
func (f *flow) limit(held, inside int64) int64 {
	g := f.guaranteedShare()
	beyondOthers := (f.used.Load() - held) - (f.inside.Load() - inside)
	room := max(f.elastic()-beyondOthers, 0)
	return max(min(f.aim(), g+room), g)
}

// sawRecords notes the sizes of admitted records, raw (as in Kafka,
// uncompressed) and charged.
func (f *flow) sawRecords(raw, charged int64) {
	if f.chargedSeen.Add(charged) > 1<<40 {
		// Keep the ratio current and the sums far from overflowing.
		f.rawSeen.Store(f.rawSeen.Load() / 2)
		f.chargedSeen.Store(f.chargedSeen.Load() / 2)
	}
	f.rawSeen.Add(raw)
}

// minPartitionFetch is the least that a fetch asks of one partition. Kafka
// returns a partition's first batch whole whatever the limit, so a smaller
// one would only add fetches.
const minPartitionFetch = 16 << 10

// partitionFetch is how much one fetch should ask of one partition, in
// bytes as they come from Kafka: a quarter of a busy partition's aim, as
// raw bytes, so that the records fetched are admitted rather than fetched,
// decompressed and dropped again and again. A partition has room for about
// half its aim when its fetching resumes (see worker.release); a quarter
// leaves room for compression, which puts more records in a byte on the
// wire. Before any record was admitted, and at most, it is what fetchSizes
// says.
func (f *flow) partitionFetch() int32 {
	_, most := fetchSizes(f.cap)
	raw, charged := f.rawSeen.Load(), f.chargedSeen.Load()
	if raw <= 0 || charged <= 0 {
		return most
	}
	want := int64(float64(f.aim()/4) * float64(raw) / float64(charged))
	return int32(min(max(want, minPartitionFetch), int64(most)))
}
