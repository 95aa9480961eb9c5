package integration

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"google.golang.org/grpc/codes"

	"github.com/bqsink/bqsink/integration/itest"
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
	itest.SkipShortParallel(t)
	const group = "g-lag"
	e := itest.NewEnvPartitions(t, 1)
	cfg := itest.NewDaemonConfig(e, group).Set("memory.max_buffered_bytes", 4<<20)
	owner := itest.StartDaemon(t, cfg)
	itest.WaitUntil(t, 30*time.Second, func() string { return owner.Name + " to own the partition" }, func() bool {
		m, err := owner.Metrics()
		return err == nil && m.Sum("bqsink_partitions_assigned") == 1
	})
	idle := itest.StartDaemon(t, cfg)
	itest.WaitUntil(t, 30*time.Second, func() string { return idle.Name + " to join and report" }, func() bool {
		m, err := idle.Metrics()
		return err == nil && len(idle.LogsMatching(itest.MsgIs("consuming"))) > 0 && m.Has("bqsink_group_lag")
	})
	if n := idle.Metric("bqsink_partitions_assigned"); n != 0 {
		t.Fatalf("%s owns %v partitions; the test needs a member that owns none", idle.Name, n)
	}

	e.St.BigQuery.FailAppends(math.MaxInt32, codes.Unavailable)
	s := itest.StartStream(t, e, 40000, 4000, 7)
	s.Finish(60 * time.Second)
	t.Logf("%d records produced during the outage", s.Produced())

	// The lag refresh runs every 15s; each daemon's next one sees the end.
	var truth int64
	var own, group_ float64
	within := func(got float64) bool { return math.Abs(got-float64(truth)) <= 0.1*float64(truth) }
	itest.WaitUntil(t, 40*time.Second, func() string {
		return fmt.Sprintf("the reported lag to be within 10%% of the true lag %d: %s bqsink_partition_lag %v, %s bqsink_group_lag %v",
			truth, owner.Name, own, idle.Name, group_)
	}, func() bool {
		o, err := e.St.GroupOffsets(t.Context(), group, stack.StockTopic)
		if err != nil {
			return false
		}
		truth = o.Lag()
		own, group_ = owner.Metric("bqsink_partition_lag"), idle.Metric("bqsink_group_lag")
		return truth > 30000 && within(own) && within(group_)
	})
	t.Logf("true lag %d: %s bqsink_partition_lag %v, %s bqsink_group_lag %v", truth, owner.Name, own, idle.Name, group_)
	if c := owner.Metric("bqsink_partition_committed_offset"); c > 0.1*float64(s.Produced()) {
		t.Errorf("committed offset %v during the outage: appends must have failed", c)
	}

	e.St.BigQuery.FailAppends(0, codes.OK)
	itest.WaitCaughtUp(t, e, group, 60*time.Second)
	itest.WaitUntil(t, 40*time.Second, func() string {
		return fmt.Sprintf("the reported lag to fall to 0: %v, %v", owner.Metric("bqsink_partition_lag"), idle.Metric("bqsink_group_lag"))
	}, func() bool {
		return owner.Metric("bqsink_partition_lag") == 0 && idle.Metric("bqsink_group_lag") == 0
	})
	for _, d := range []*itest.Daemon{owner, idle} {
		d.Shutdown(15 * time.Second)
	}
}

// A group whose commit is below the log start (retention deleted the
// records it had not read) on partitions with nothing left to read: the
// client starts at the log start, so nothing is owed. The partitions are
// not reported as records left unfetched, /readyz stays ready past
// stall_timeout, and the lag is 0.
func TestRetentionBoundaryIsNoLagAndNoStall(t *testing.T) {
	itest.SkipShortParallel(t)
	ctx := t.Context()
	e := itest.NewEnv(t)
	const group = "g-retention"
	e.Produce(ctx, stack.StockUpdates(90, 11))
	ends, err := itest.AdminClient(t, e).ListEndOffsets(ctx, stack.StockTopic)
	if err != nil {
		t.Fatal(err)
	}
	commits, gone := map[int32]int64{}, kadm.Offsets{}
	ends.Each(func(o kadm.ListedOffset) {
		commits[o.Partition] = o.Offset / 3
		gone.Add(kadm.Offset{Topic: o.Topic, Partition: o.Partition, At: o.Offset})
	})
	itest.CommitWithMetadata(t, e, group, commits, "")
	if _, err := itest.AdminClient(t, e).DeleteRecords(ctx, gone); err != nil {
		t.Fatal(err)
	}
	log, logs := observedLogger(t)
	r := itest.StartSink(ctx, t, e.St, func() sink.Config {
		cfg := e.St.Config(group, stack.StockTopic)
		cfg.StallTimeout = 2 * time.Second
		return cfg
	}(), log)
	itest.WaitUntil(t, 30*time.Second, func() string { return "the sink to consume" }, func() bool {
		return itest.Gauge(t, r.Metrics, "bqsink_partitions_assigned") == 3
	})
	// Two lag watches (every 5s) and stall_timeout.
	time.Sleep(15 * time.Second)
	if err := r.Sink.Ready(); err != nil {
		t.Errorf("not ready: %v", err)
	}
	if n := logs.FilterMessage("fetch failed; retrying").Len(); n > 0 {
		t.Errorf("%d fetch failures reported for partitions whose records retention deleted", n)
	}
	if lag := itest.Gauge(t, r.Metrics, "bqsink_partition_lag"); lag != 0 {
		t.Errorf("bqsink_partition_lag %v, want 0: the records below the log start are gone", lag)
	}
	if lag := itest.Gauge(t, r.Metrics, "bqsink_group_lag"); lag != 0 {
		t.Errorf("bqsink_group_lag %v, want 0", lag)
	}
}
