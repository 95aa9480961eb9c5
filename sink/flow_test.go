package sink

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
)

const defaultMaxBuffered = 64 << 20 // memory.max_buffered_bytes' default

// withFlow makes a harness's worker account its memory in f.
func withFlow(f *flow) func(*workerDeps) { return func(d *workerDeps) { d.flow = f } }

// idleWorkers makes n workers of other partitions that hold nothing and
// have nothing waiting, as a poll loop sees idle partitions.
func idleWorkers(n int, f *flow) workerSet {
	set := workerSet{}
	for i := range n {
		tp := topicPartition{"idle", int32(i)}
		set[tp] = newWorker(tp, "p.d.idle", workerConfig{}, workerDeps{flow: f}, context.Background(), zap.NewNop())
	}
	return set
}

// countAsPoll counts busy partitions as the poll loop does before it
// admits a poll's records: offered are the workers with records in it.
func countAsPoll(f *flow, set workerSet, offered ...*worker) {
	for _, w := range offered {
		w.offered = true
	}
	(&Sink{flow: f}).countBusy(set)
}

// firstBatch admits a backlog of small records (100-byte values) into a
// partition whose flow has parts partitions assigned, the others idle, and
// returns how many records its first append carries.
func firstBatch(t *testing.T, parts int) int {
	t.Helper()
	f := newFlow(defaultMaxBuffered)
	f.parts.Store(int64(parts))
	h := newHarnessWith(t, withFlow(f), func(c *workerConfig) {
		c.maxRecords, c.maxBytes, c.maxWait, c.maxInflight = 10000, 8<<20, time.Hour, 4
	})
	set := idleWorkers(parts-1, f)
	set[h.w.tp] = h.w
	countAsPoll(f, set, h.w)
	value := string(make([]byte, 100))
	took, _ := h.w.admit(records(0, 30000, value))
	c := h.nextCall()
	t.Logf("%d partitions, 1 busy: limit %d bytes of a pool of %d, admitted %d records, first batch %d", parts, h.w.limit.Load(), f.pool(), took, len(c.offsets))
	c.complete(nil)
	return len(c.offsets)
}

// A partition that becomes busy while the 99 others assigned to the process
// are idle gets the memory they do not use: its batches are as large as
// those of a process with that one partition (batch.max_records here), not
// the few hundred records an even split of the cap over 100 partitions left
// it.
func TestLoneBusyPartitionBatchesAsInAOnePartitionProcess(t *testing.T) {
	one := firstBatch(t, 1)
	hundred := firstBatch(t, 100)
	if one != 10000 {
		t.Fatalf("a 1-partition process sent a first batch of %d records, want batch.max_records (10000)", one)
	}
	if hundred != one {
		t.Errorf("the one busy partition of 100 sent a first batch of %d records, want %d as with 1 partition", hundred, one)
	}
}

// With every partition busy the pool is split evenly: a partition's aim is
// its even share, and fetches ask of a partition about what it has room
// for, not the fixed per-partition limit, so records are not fetched only
// to be left in Kafka and fetched again.
func TestAllBusySplitEvenlyAndFetchWhatFits(t *testing.T) {
	f := newFlow(defaultMaxBuffered)
	_, most := fetchSizes(f.cap)
	if got := f.partitionFetch(); got != most {
		t.Fatalf("before any record, fetches ask %d of a partition, want fetchSizes' %d", got, most)
	}
	f.parts.Store(100)
	f.busy.Store(100)
	if got, want := f.aim(), f.pool()/100; got < want-100 || got > want {
		t.Errorf("100 busy of 100: aim %d, want the even share %d", got, want)
	}
	// Records charged four times their raw size.
	f.sawRecords(1<<20, 4<<20)
	want := f.aim() / 4 / 4
	if got := int64(f.partitionFetch()); got > want+want/100 || got < want-want/100 {
		t.Errorf("100 busy: fetches ask %d of a partition, want about a quarter of its aim in raw bytes (%d)", got, want)
	}
	f.busy.Store(1)
	if got := f.partitionFetch(); got != most {
		t.Errorf("1 busy: fetches ask %d of a partition, want fetchSizes' %d (its aim is far more)", got, most)
	}
}

// Memory held never passes the pool (three quarters of the cap after
// franz-go's reserve) as partitions become busy and idle again: one busy
// partition takes most of the pool, each partition becoming busy after it
// still gets its guaranteed part at once although the first never
// acknowledges anything (a stalled table), a healthy one keeps moving
// meanwhile, and everything is given back once all are idle.
func TestMemoryWithinThePoolAcrossBusyAndIdle(t *testing.T) {
	const parts = 8
	f := newFlow(minMaxBufferedBytes)
	f.parts.Store(parts)
	pool, g := f.pool(), f.guaranteedShare()
	hs := make([]*harness, parts)
	set := workerSet{}
	for i := range hs {
		hs[i] = newHarnessWith(t, withFlow(f), func(c *workerConfig) { c.maxRecords = 50; c.maxInflight = 2; c.maxWait = 20 * time.Millisecond })
		hs[i].w.tp = topicPartition{"t", int32(i)}
		set[hs[i].w.tp] = hs[i].w
	}
	one := recordSize(&kgo.Record{Value: []byte("v")}) + hs[0].w.estimatedRow(&kgo.Record{Value: []byte("v")})
	checkUsed := func(when string) {
		t.Helper()
		if u := f.used.Load(); u > pool {
			t.Fatalf("%s: %d bytes held, over the pool of %d", when, u, pool)
		}
	}
	offer := func(i int) int {
		t.Helper()
		countAsPoll(f, set, hs[i].w)
		next := max(hs[i].w.next.Load(), 0)
		n, _ := hs[i].w.admit(records(next, next+pool/one, "v"))
		checkUsed(fmt.Sprintf("partition %d admitted %d records", i, n))
		return n
	}

	// Partition 0 alone: it takes far more than an even share.
	if n := int64(offer(0)); n*one < pool/2 {
		t.Fatalf("the only busy partition admitted %d bytes, want at least half the pool (%d)", n*one, pool/2)
	}
	// Its table stalls: its appends are never answered. Each partition
	// becoming busy still gets its guaranteed part.
	for i := 1; i < parts; i++ {
		if n := int64(offer(i)); n*one < g-one {
			t.Fatalf("partition %d, busy after %d others, admitted %d bytes, under its guaranteed %d", i, i, n*one, g)
		}
	}
	// Partition 1 is healthy: it is acknowledged, takes more, and is
	// acknowledged again, while partition 0 still holds what it took.
	for round := range 3 {
		eventually(t, "partition 1 giving back what it held", func() bool {
			select {
			case c := <-hs[1].calls:
				c.complete(nil)
			default:
			}
			return hs[1].w.held.Load() == 0
		})
		if n := offer(1); n == 0 {
			t.Fatalf("round %d: healthy partition 1 admitted nothing while partition 0 is stalled", round)
		}
	}
	// Everything is acknowledged: the partitions go idle and give it all
	// back, the accounting of guaranteed parts too.
	for i, h := range hs {
		eventually(t, fmt.Sprintf("partition %d giving back what it held", i), func() bool {
			select {
			case c := <-h.calls:
				c.complete(nil)
			default:
			}
			return h.w.held.Load() == 0
		})
		checkUsed(fmt.Sprintf("partition %d idle", i))
	}
	countAsPoll(f, set)
	if u, in, b := f.used.Load(), f.inside.Load(), f.busy.Load(); u != 0 || in != 0 || b != 0 {
		t.Errorf("all idle: used %d, inside %d, busy %d; want 0, 0, 0", u, in, b)
	}
	if p := f.peak.Load(); p > pool {
		t.Errorf("peak %d over the pool of %d", p, pool)
	}
}
