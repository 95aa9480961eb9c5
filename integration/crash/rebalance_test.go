package crash

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/bqsink/bqsink/integration/itest"
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
	rng := rand.New(rand.NewPCG(itest.Seed(t), 0))
	e := itest.NewEnvPartitions(t, 6)
	cfg := itest.NewDaemonConfig(e, group).Set("metadata_column", "_kafka")

	s := itest.StartStream(t, e, records, 3000, rng.Uint64())
	members := []*itest.Daemon{itest.StartDaemon(t, cfg), itest.StartDaemon(t, cfg), itest.StartDaemon(t, cfg)}
	waitShared(t, members, 60*time.Second)
	t.Logf("three members share the partitions at %v", since())

	wait := itest.Jitter(rng, 0, 2*time.Second)
	select {
	case <-time.After(wait):
	case <-t.Context().Done():
		return
	}
	if !s.Running() {
		t.Fatal("the stream ended before the kill: records must be flowing")
	}
	i := rng.IntN(len(members))
	victim := members[i]
	owned := victim.Metric("bqsink_partitions_assigned")
	st := victim.Kill()
	itest.LogProblems(t, victim)
	fourth := itest.StartDaemon(t, cfg)
	members = append(append(members[:i:i], members[i+1:]...), fourth)
	t.Logf("killed %s (owning %v partitions) at %v, %v after the group settled: %v; %s joins",
		victim.Name, owned, since(), wait.Round(time.Millisecond), st, fourth.Name)

	waitShared(t, members, 60*time.Second)
	t.Logf("%s and the survivors share the partitions at %v", fourth.Name, since())
	s.Finish(60 * time.Second)
	t.Logf("stream done at %v: %d records", since(), s.Produced())
	itest.WaitCaughtUp(t, e, group, 60*time.Second)
	t.Logf("caught up at %v", since())

	if n := fourth.Metric("bqsink_rows_written_total"); n == 0 {
		t.Errorf("%s owns partitions but wrote no rows", fourth.Name)
	}
	for _, d := range members {
		d.Terminate()
	}
	for _, d := range members {
		if st := d.Wait(15 * time.Second); st.Code != 0 {
			t.Errorf("%s after SIGTERM: %v, want exit 0", d.Name, st)
		} else {
			t.Logf("%s: %v", d.Name, st)
		}
		itest.LogProblems(t, d)
	}
	for _, d := range append(members, victim) {
		t.Logf("%s: %d assignments, %d revocations, %d losses", d.Name, len(d.LogsMatching(itest.AssignedSome)),
			len(d.LogsMatching(itest.MsgIs("partitions revoked"))), len(d.LogsMatching(itest.MsgIs("partitions lost; their unacknowledged work is abandoned"))))
	}
	c := itest.CheckCoverage(t, e, s, "_kafka")
	t.Logf("%v (read back at %v)", c, since())
}

// waitShared waits until every member owns at least one partition and
// together they own six, each exactly once as far as the gauges tell.
func waitShared(t *testing.T, members []*itest.Daemon, within time.Duration) {
	t.Helper()
	var last string
	itest.WaitUntil(t, within, func() string {
		return fmt.Sprintf("%d members to share 6 partitions (last seen %s)", len(members), last)
	}, func() bool {
		owned := make([]float64, len(members))
		var wg sync.WaitGroup
		for i, d := range members {
			wg.Go(func() {
				if m, err := d.Metrics(); err == nil {
					owned[i] = m.Sum("bqsink_partitions_assigned")
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
