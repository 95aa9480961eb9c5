package integration

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"google.golang.org/grpc/codes"

	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

// During a Storage Write outage records keep arriving while nothing is
// committed and fetching is paused (the partition holds its share of the
// memory cap), so the client's own view of the partition's end stops
// moving. The lag bqsink reports comes from the brokers too: it stays
// within 10% of the true lag, on the member that owns the partition
// (bqsink_partition_lag) and on a member that owns nothing
// (bqsink_group_lag). Once BigQuery is back, both fall to 0.
func TestLagStaysTrueDuringAnOutage(t *testing.T) {
	skipShort(t)
	const group = "g-lag"
	e := newEnvPartitions(t, 1)
	cfg := newDaemonConfig(e, group).set("memory.max_buffered_bytes", 4<<20)
	owner := startDaemon(t, cfg)
	waitUntil(t, 30*time.Second, func() string { return owner.name + " to own the partition" }, func() bool {
		m, err := owner.metrics()
		return err == nil && m.sum("bqsink_partitions_assigned") == 1
	})
	idle := startDaemon(t, cfg)
	waitUntil(t, 30*time.Second, func() string { return idle.name + " to join and report" }, func() bool {
		m, err := idle.metrics()
		return err == nil && len(idle.logsMatching(msgIs("consuming"))) > 0 && m.has("bqsink_group_lag")
	})
	if n := idle.metric("bqsink_partitions_assigned"); n != 0 {
		t.Fatalf("%s owns %v partitions; the test needs a member that owns none", idle.name, n)
	}

	e.st.BigQuery.FailAppends(math.MaxInt32, codes.Unavailable)
	s := startStream(t, e, 40000, 4000, 7)
	s.finish(60 * time.Second)
	t.Logf("%d records produced during the outage", s.produced())

	// The lag refresh runs every 15s; each daemon's next one sees the end.
	var truth int64
	var own, group_ float64
	within := func(got float64) bool { return math.Abs(got-float64(truth)) <= 0.1*float64(truth) }
	waitUntil(t, 40*time.Second, func() string {
		return fmt.Sprintf("the reported lag to be within 10%% of the true lag %d: %s bqsink_partition_lag %v, %s bqsink_group_lag %v",
			truth, owner.name, own, idle.name, group_)
	}, func() bool {
		o, err := e.st.GroupOffsets(t.Context(), group, stack.StockTopic)
		if err != nil {
			return false
		}
		truth = o.Lag()
		own, group_ = owner.metric("bqsink_partition_lag"), idle.metric("bqsink_group_lag")
		return truth > 30000 && within(own) && within(group_)
	})
	t.Logf("true lag %d: %s bqsink_partition_lag %v, %s bqsink_group_lag %v", truth, owner.name, own, idle.name, group_)
	if c := owner.metric("bqsink_partition_committed_offset"); c > 0.1*float64(s.produced()) {
		t.Errorf("committed offset %v during the outage: appends must have failed", c)
	}

	e.st.BigQuery.FailAppends(0, codes.OK)
	waitCaughtUp(t, e, group, 60*time.Second)
	waitUntil(t, 40*time.Second, func() string {
		return fmt.Sprintf("the reported lag to fall to 0: %v, %v", owner.metric("bqsink_partition_lag"), idle.metric("bqsink_group_lag"))
	}, func() bool {
		return owner.metric("bqsink_partition_lag") == 0 && idle.metric("bqsink_group_lag") == 0
	})
	for _, d := range []*daemon{owner, idle} {
		d.shutdown(15 * time.Second)
	}
}

// A group whose commit is below the log start (retention deleted the
// records it had not read) on partitions with nothing left to read: the
// client starts at the log start, so nothing is owed. The partitions are
// not reported as records left unfetched, /readyz stays ready past
// stall_timeout, and the lag is 0.
func TestRetentionBoundaryIsNoLagAndNoStall(t *testing.T) {
	skipShort(t)
	ctx := t.Context()
	e := newEnv(t)
	const group = "g-retention"
	e.produce(ctx, stack.StockUpdates(90, 11))
	ends, err := adminClient(t, e).ListEndOffsets(ctx, stack.StockTopic)
	if err != nil {
		t.Fatal(err)
	}
	commits, gone := map[int32]int64{}, kadm.Offsets{}
	ends.Each(func(o kadm.ListedOffset) {
		commits[o.Partition] = o.Offset / 3
		gone.Add(kadm.Offset{Topic: o.Topic, Partition: o.Partition, At: o.Offset})
	})
	commitWithMetadata(t, e, group, commits, "")
	if _, err := adminClient(t, e).DeleteRecords(ctx, gone); err != nil {
		t.Fatal(err)
	}
	log, logs := observedLogger(t)
	r := startSink(ctx, t, e.st, func() sink.Config {
		cfg := e.st.Config(group, stack.StockTopic)
		cfg.StallTimeout = 2 * time.Second
		return cfg
	}(), log)
	waitUntil(t, 30*time.Second, func() string { return "the sink to consume" }, func() bool {
		return gauge(t, r.metrics, "bqsink_partitions_assigned") == 3
	})
	// Two lag watches (every 5s) and stall_timeout.
	time.Sleep(15 * time.Second)
	if err := r.sink.Ready(); err != nil {
		t.Errorf("not ready: %v", err)
	}
	if n := logs.FilterMessage("fetch failed; retrying").Len(); n > 0 {
		t.Errorf("%d fetch failures reported for partitions whose records retention deleted", n)
	}
	if lag := gauge(t, r.metrics, "bqsink_partition_lag"); lag != 0 {
		t.Errorf("bqsink_partition_lag %v, want 0: the records below the log start are gone", lag)
	}
	if lag := gauge(t, r.metrics, "bqsink_group_lag"); lag != 0 {
		t.Errorf("bqsink_group_lag %v, want 0", lag)
	}
}
