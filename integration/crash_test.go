package integration

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/bqsink/bqsink/integration/stack"
)

// The real binary, SIGKILLed at random moments while records flow and
// started again each time, loses nothing: every produced (topic, partition,
// offset) has a row. Each kill may duplicate what BigQuery acknowledged but
// was not yet committed; the figures are logged.
func TestCrashLoopLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts the daemon for about half a minute")
	}
	const (
		group   = "g-crash"
		records = 50000
		kills   = 3
	)
	began := time.Now()
	since := func() time.Duration { return time.Since(began).Round(time.Millisecond) }
	rng := rand.New(rand.NewPCG(testSeed(t), 0))
	e := newEnvPartitions(t, 6)
	cfg := newDaemonConfig(e, group).set("metadata_column", "_kafka")

	// The stream runs until finish, so every kill happens while records
	// flow; by the last kill it has produced about its minimum.
	s := startStream(t, e, records, 3000, rng.Uint64())
	d := startDaemon(t, cfg)
	for i := 1; i <= kills; i++ {
		// Kill only once this process writes: its partitions are assigned,
		// appends and commits are under way.
		waitUntil(t, 30*time.Second, func() string { return d.name + " to write rows" }, func() bool {
			m, err := d.metrics()
			return err == nil && m.sum("bqsink_rows_written_total") > 0
		})
		wait := jitter(rng, 0, 2*time.Second)
		select {
		case <-time.After(wait):
		case <-t.Context().Done():
			return
		}
		rows := d.metric("bqsink_rows_written_total")
		st := d.kill()
		logProblems(t, d)
		t.Logf("kill %d at %v, %v after %s wrote its first rows; it wrote %.0f rows; %d records produced; %v; table rows beyond the committed offsets: %d",
			i, since(), wait.Round(time.Millisecond), d.name, rows, s.produced(), st, rowsAheadOfCommits(t, e, group))
		d = startDaemon(t, cfg)
	}

	s.finish(60 * time.Second)
	t.Logf("stream done at %v: %d records", since(), s.produced())
	waitCaughtUp(t, e, group, 60*time.Second)
	t.Logf("caught up at %v", since())
	st := d.shutdown(15 * time.Second)
	logProblems(t, d)
	t.Logf("last daemon %s: %v", d.name, st)
	c := checkCoverage(t, e, s, "_kafka")
	t.Logf("%v (read back at %v)", c, since())
}

// rowsAheadOfCommits is the stock table's row count minus group's committed
// offsets on the stock topic: right after a kill, the duplicates so far plus
// the rows the next owner will write again, except appends the test server
// had received but not yet answered when the process died (they land a
// little later, and are re-read too).
func rowsAheadOfCommits(t *testing.T, e *env, group string) int64 {
	t.Helper()
	o, err := e.st.GroupOffsets(t.Context(), group, stack.StockTopic)
	if err != nil {
		t.Fatal(err)
	}
	n := int64(e.st.BigQuery.RowCount(stack.Project, stack.Dataset, stack.StockTable))
	for _, c := range o.Committed {
		n -= max(c, 0)
	}
	return n
}

// logProblems logs what a daemon logged at warn or above, counted by message.
func logProblems(t *testing.T, d *daemon) {
	t.Helper()
	if p := d.problems(); len(p) > 0 {
		t.Logf("%s logged: %v", d.name, p)
	}
}
