package integration

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

// Three daemon processes share a group while records flow; one is SIGKILLed
// and a fourth joins. The group settles on the three live members, the
// newcomer takes its share, and every produced record has a row.
func TestRebalanceKilledAndJoiningMembersLoseNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("runs four daemon processes through two rebalances")
	}
	const (
		group   = "g-members"
		records = 30000
	)
	began := time.Now()
	since := func() time.Duration { return time.Since(began).Round(time.Millisecond) }
	rng := rand.New(rand.NewPCG(testSeed(t), 0))
	e := newEnvPartitions(t, 6)
	cfg := newDaemonConfig(e, group).set("metadata_column", "_kafka")

	s := startStream(t, e, records, 3000, rng.Uint64())
	members := []*daemon{startDaemon(t, cfg), startDaemon(t, cfg), startDaemon(t, cfg)}
	waitShared(t, members, 60*time.Second)
	t.Logf("three members share the partitions at %v", since())

	wait := jitter(rng, 0, 2*time.Second)
	select {
	case <-time.After(wait):
	case <-t.Context().Done():
		return
	}
	if !s.running() {
		t.Fatal("the stream ended before the kill: records must be flowing")
	}
	i := rng.IntN(len(members))
	victim := members[i]
	owned := victim.metric("bqsink_partitions_assigned")
	st := victim.kill()
	logProblems(t, victim)
	fourth := startDaemon(t, cfg)
	members = append(append(members[:i:i], members[i+1:]...), fourth)
	t.Logf("killed %s (owning %v partitions) at %v, %v after the group settled: %v; %s joins",
		victim.name, owned, since(), wait.Round(time.Millisecond), st, fourth.name)

	waitShared(t, members, 60*time.Second)
	t.Logf("%s and the survivors share the partitions at %v", fourth.name, since())
	s.finish(60 * time.Second)
	t.Logf("stream done at %v: %d records", since(), s.produced())
	waitCaughtUp(t, e, group, 60*time.Second)
	t.Logf("caught up at %v", since())

	if n := fourth.metric("bqsink_rows_written_total"); n == 0 {
		t.Errorf("%s owns partitions but wrote no rows", fourth.name)
	}
	for _, d := range members {
		d.terminate()
	}
	for _, d := range members {
		if st := d.wait(15 * time.Second); st.Code != 0 {
			t.Errorf("%s after SIGTERM: %v, want exit 0", d.name, st)
		} else {
			t.Logf("%s: %v", d.name, st)
		}
		logProblems(t, d)
	}
	for _, d := range append(members, victim) {
		t.Logf("%s: %d assignments, %d revocations, %d losses", d.name, len(d.logsMatching(assignedSome)),
			len(d.logsMatching(msgIs("partitions revoked"))), len(d.logsMatching(msgIs("partitions lost; their unacknowledged work is abandoned"))))
	}
	c := checkCoverage(t, e, s, "_kafka")
	t.Logf("%v (read back at %v)", c, since())
}

// waitShared waits until every member owns at least one partition and
// together they own six, each exactly once as far as the gauges tell.
func waitShared(t *testing.T, members []*daemon, within time.Duration) {
	t.Helper()
	var last string
	waitUntil(t, within, func() string {
		return fmt.Sprintf("%d members to share 6 partitions (last seen %s)", len(members), last)
	}, func() bool {
		owned := make([]float64, len(members))
		var wg sync.WaitGroup
		for i, d := range members {
			wg.Go(func() {
				if m, err := d.metrics(); err == nil {
					owned[i] = m.sum("bqsink_partitions_assigned")
				}
			})
		}
		wg.Wait()
		last = fmt.Sprint(owned)
		var total float64
		for _, n := range owned {
			if n == 0 {
				return false
			}
			total += n
		}
		return total == 6
	})
}

// A member told to stop while its memory is at memory.max_buffered_bytes
// (its poll loop waiting for acknowledgements, not polling) keeps its
// partitions until its shutdown commit is done: a member joining meanwhile
// gets them only after that, never while the stopping member still writes
// and commits them.
func TestShutdownAtTheMemoryCapHoldsThePartitionsUntilCommitted(t *testing.T) {
	skipShort(t)
	ctx := t.Context()
	e := newEnv(t)
	const group = "g-cap-stop"
	// One 5 MiB row, over the 4 MiB cap: admitted alone, it holds the
	// memory while BigQuery takes its time to answer.
	big := stack.StockUpdates(1, 5)[0]
	big.WarehouseName = strings.Repeat("w", 5<<20)
	e.produce(ctx, append([]stack.StockUpdate{big}, stack.StockUpdates(30, 6)...))
	e.st.BigQuery.SetAppendLatency(time.Minute)
	defer e.st.BigQuery.SetAppendLatency(0)

	first := e.start(ctx, group, func(c *sink.Config) {
		c.Memory.MaxBufferedBytes = 4 << 20
		c.ShutdownTimeout = 12 * time.Second
	})
	waitUntil(t, 30*time.Second, func() string { return "the first member to reach its memory cap" }, func() bool {
		return gauge(t, first.metrics, "bqsink_buffered_bytes") >= 4<<20
	})
	stopped := make(chan time.Time, 1)
	go func() {
		_ = first.stop()
		stopped <- time.Now()
	}()
	second := e.start(ctx, group, func(c *sink.Config) { c.ShutdownTimeout = time.Second })
	var assignedAt time.Time
	waitUntil(t, 40*time.Second, func() string { return "the second member to be assigned partitions" }, func() bool {
		if gauge(t, second.metrics, "bqsink_partitions_assigned") == 0 {
			return false
		}
		assignedAt = time.Now()
		return true
	})
	select {
	case at := <-stopped:
		t.Logf("the first member stopped %v before the second was assigned partitions", assignedAt.Sub(at).Round(time.Millisecond))
	default:
		t.Fatal("the second member was assigned partitions while the first was still stopping: a revoke found no workers and handed them over before the shutdown commit")
	}
}

// gauge is the sum of a gauge's series in reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}
