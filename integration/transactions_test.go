package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
)

// Topics written by transactional producers (Kafka Streams, Flink,
// Debezium with exactly-once): two producers interleave transactions on
// every partition, one committing and one aborting. Under the default
// kafka.isolation_level, read_committed, the table holds exactly the
// committed records; the transaction markers are committed past, so the
// group's lag reaches 0 and an idle member stays ready. In exactly-once, a
// restart while a transaction is open, then aborted, does not fall back.
func TestTransactionalTopicsLandOnlyCommittedRecords(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the daemon through transactions, an idle period and a restart")
	}
	t.Parallel() // mostly idle periods; a stack of its own per case
	for _, delivery := range []string{"at_least_once", "exactly_once"} {
		t.Run(delivery, func(t *testing.T) {
			t.Parallel()
			testTransactions(t, delivery)
		})
	}
}

func testTransactions(t *testing.T, delivery string) {
	const (
		group      = "g-txn"
		partitions = 3
		stall      = 3 * time.Second
	)
	rng := rand.New(rand.NewPCG(itest.Seed(t), 0))
	e := itest.NewEnvPartitions(t, partitions)
	cfg := itest.NewDaemonConfig(e, group).Set("metadata_column", "_kafka").Set("bigquery.delivery", delivery).
		Set("stall_timeout", stall.String())
	tx := newTxnWriters(t, e, rng)

	// 1,000 committed records and 500 aborted ones, interleaved on every
	// partition by two producers.
	for range 10 {
		tx.round(100, 50)
	}
	d := itest.StartDaemon(t, cfg)
	waitCommittedToEnd(t, e, group, 60*time.Second)
	t.Logf("caught up: %d committed records, %d aborted", len(tx.committed), len(tx.aborted))

	// Idle for longer than stall_timeout: the partitions end in
	// transaction markers, which must not look like records left unfetched.
	time.Sleep(stall + 7*time.Second)
	if code, body := d.Get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after %v idle: %d %s", stall+7*time.Second, code, body)
	}
	if lines := d.LogsMatching(itest.MsgIs("fetch failed; retrying")); len(lines) > 0 {
		t.Errorf("an idle transactional topic was reported as a fetch failure: %v", lines[0])
	}
	itest.WaitUntil(t, 30*time.Second, func() string {
		return fmt.Sprintf("bqsink_partition_lag to be 0 (is %v)", d.Metric("bqsink_partition_lag"))
	}, func() bool {
		m, err := d.Metrics()
		return err == nil && m.Sum("bqsink_partition_lag") == 0 && m.Sum("bqsink_group_lag") == 0
	})

	// A restart while a transaction is open: the group's commit stops at
	// the open transaction's first record (its last stable offset), and
	// the transaction is aborted while no member runs. The next member
	// starts past the aborted records.
	tx.openAborted(30)
	tx.round(60, 0)
	waitCommittedTo(t, e, group, "the last stable offset", 60*time.Second, lastStable(t, e))
	d.Shutdown(15 * time.Second)
	tx.abortOpen()
	for range 3 {
		tx.round(100, 50)
	}
	d2 := itest.StartDaemon(t, cfg)
	waitCommittedToEnd(t, e, group, 60*time.Second)
	if n := d2.Metric(itest.EOFallbacks); n != 0 {
		t.Errorf("the restarted member fell back %v times; want none: %v", n, d2.LogsMatching(itest.MsgIs(itest.EOFallbackMsg)))
	}
	d2.Shutdown(15 * time.Second)
	tx.checkTable(t, e)
}

// txnWriters are two transactional producers on e's stock topic: one
// whose transactions commit, one whose transactions abort.
type txnWriters struct {
	t         *testing.T
	e         *itest.Env
	rng       *rand.Rand
	commit    *kgo.Client
	abort     *kgo.Client
	committed map[itest.Origin]bool
	aborted   map[itest.Origin]bool
}

func newTxnWriters(t *testing.T, e *itest.Env, rng *rand.Rand) *txnWriters {
	t.Helper()
	producer := func(id string) *kgo.Client {
		cl, err := kgo.NewClient(kgo.SeedBrokers(e.St.Brokers()...), kgo.TransactionalID(id),
			kgo.DefaultProduceTopic(stack.StockTopic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return cl
	}
	return &txnWriters{t: t, e: e, rng: rng, commit: producer("committer"), abort: producer("aborter"),
		committed: map[itest.Origin]bool{}, aborted: map[itest.Origin]bool{}}
}

// round runs one transaction of each producer at once, interleaving
// their records on the partitions: commits records in one, aborts
// aborts in the other.
func (x *txnWriters) round(commits, aborts int) {
	t := x.t
	t.Helper()
	ctx := t.Context()
	if err := x.commit.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if aborts > 0 {
		if err := x.abort.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range max(commits, aborts) {
		if i < commits {
			x.produce(ctx, x.commit, x.committed)
		}
		if i < aborts {
			x.produce(ctx, x.abort, x.aborted)
		}
	}
	if err := x.commit.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	if aborts > 0 {
		if err := x.abort.EndTransaction(ctx, kgo.TryAbort); err != nil {
			t.Fatal(err)
		}
	}
}

// openAborted begins a transaction of the aborting producer and writes n
// records in it, leaving it open.
func (x *txnWriters) openAborted(n int) {
	x.t.Helper()
	if err := x.abort.BeginTransaction(); err != nil {
		x.t.Fatal(err)
	}
	for range n {
		x.produce(x.t.Context(), x.abort, x.aborted)
	}
}

// abortOpen aborts the transaction openAborted left open.
func (x *txnWriters) abortOpen() {
	x.t.Helper()
	if err := x.abort.EndTransaction(x.t.Context(), kgo.TryAbort); err != nil {
		x.t.Fatal(err)
	}
}

func (x *txnWriters) produce(ctx context.Context, cl *kgo.Client, into map[itest.Origin]bool) {
	x.t.Helper()
	u := stack.StockUpdates(1, x.rng.Uint64())[0]
	r, err := x.e.Schemas.Record(u)
	if err != nil {
		x.t.Fatal(err)
	}
	r.Partition = int32(x.rng.IntN(3))
	if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		x.t.Fatal(err)
	}
	into[itest.Origin{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset}] = true
}

// checkTable requires one row per committed record and none of an
// aborted one.
func (x *txnWriters) checkTable(t *testing.T, e *itest.Env) {
	t.Helper()
	rows := map[itest.Origin]int{}
	for _, o := range itest.ReadOrigins(t, e, stack.StockTable, "_kafka") {
		rows[o]++
	}
	var missing, dup, aborted, unknown int
	for o := range x.committed {
		switch n := rows[o]; {
		case n == 0:
			missing++
		case n > 1:
			dup += n - 1
		}
	}
	for o, n := range rows {
		switch {
		case x.aborted[o]:
			aborted += n
		case !x.committed[o]:
			unknown += n
		}
	}
	t.Logf("%d committed records, %d aborted; rows: %d, missing %d, duplicates %d, of aborted records %d, unknown %d",
		len(x.committed), len(x.aborted), len(rows), missing, dup, aborted, unknown)
	if missing+dup+aborted+unknown > 0 {
		t.Errorf("the table must hold exactly the committed records: %d missing, %d duplicates, %d rows of aborted records, %d unknown",
			missing, dup, aborted, unknown)
	}
}

// lastStable is the stock topic's last stable offset per partition: the
// first record of a transaction still open, else the end.
func lastStable(t *testing.T, e *itest.Env) map[int32]int64 {
	t.Helper()
	lso, err := itest.AdminClient(t, e).ListCommittedOffsets(t.Context(), stack.StockTopic)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int32]int64{}
	lso.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
	return out
}

// waitCommittedToEnd waits until group's committed offsets equal the end
// offsets of every partition: the transaction markers are committed too.
func waitCommittedToEnd(t *testing.T, e *itest.Env, group string, within time.Duration) {
	t.Helper()
	var o stack.Offsets
	itest.WaitUntil(t, within, func() string {
		return fmt.Sprintf("group %s to commit up to the end offsets: committed %v, end %v", group, o.Committed, o.End)
	}, func() bool {
		var err error
		o, err = e.St.GroupOffsets(t.Context(), group, stack.StockTopic)
		if err != nil || len(o.End) == 0 {
			return false
		}
		for p, end := range o.End {
			if o.Committed[p] != end {
				return false
			}
		}
		return true
	})
}

// waitCommittedTo waits until group's committed offsets equal want.
func waitCommittedTo(t *testing.T, e *itest.Env, group, what string, within time.Duration, want map[int32]int64) {
	t.Helper()
	var o stack.Offsets
	itest.WaitUntil(t, within, func() string {
		return fmt.Sprintf("group %s to commit up to %s %v: committed %v", group, what, want, o.Committed)
	}, func() bool {
		var err error
		o, err = e.St.GroupOffsets(t.Context(), group, stack.StockTopic)
		if err != nil {
			return false
		}
		for p, w := range want {
			if o.Committed[p] != w {
				return false
			}
		}
		return true
	})
}
