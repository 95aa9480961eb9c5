package sink

import (
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

// The series computed when scraped come from state the poll loop and the
// group callbacks do not lock: a scrape completes, with every value, while
// the workers map, each worker and health are locked (a rebalance callback
// or a poll holding them), and reports the partitions as last published.
func TestScrapeTakesNoLockOfThePollLoop(t *testing.T) {
	m := newMetrics()
	s := &Sink{cfg: Config{StallTimeout: time.Minute}, log: zap.NewNop(), metrics: m, flow: newFlow(64 << 20),
		workers: map[topicPartition]*worker{}}
	s.health = newHealth(s.log, m, &s.stats.retries)
	reg := prometheus.NewPedanticRegistry()
	if err := m.register(reg, s); err != nil {
		t.Fatal(err)
	}

	// Partition 0 read from offset 100 up to 130 and holds records: paused,
	// two appends in flight, no progress for two minutes (stalled).
	busy := &worker{}
	busy.first.Store(100)
	busy.hwm.Store(130)
	busy.inflight.Store(2)
	busy.paused.Store(true)
	busy.held.Store(1000)
	busy.unacked.Store(100)
	busy.progress.Store(time.Now().Add(-2 * time.Minute).UnixNano())
	// Partition 1 has read nothing yet: its offsets are the brokers'.
	idle := &worker{}
	idle.first.Store(-1)
	idle.hwm.Store(-1)
	idle.progress.Store(time.Now().UnixNano())
	s.workers[topicPartition{"orders", 0}] = busy
	s.workers[topicPartition{"orders", 1}] = idle
	s.mu.Lock()
	s.publishWorkersLocked()
	s.mu.Unlock()
	s.flow.parts.Store(2)
	s.flow.charge(1000)
	// The brokers' view at the last lag refresh is older for partition 0;
	// partition 2 belongs to another member: only the group's lag has it.
	s.brokerLag.Store(&lagSnapshot{parts: map[topicPartition]brokerOffsets{
		{"orders", 0}: {start: 0, end: 120, committed: 90},
		{"orders", 1}: {start: 0, end: 50, committed: 20},
		{"orders", 2}: {start: 0, end: 10, committed: -1},
	}})
	s.health.fail(stageAppend, "p.d.orders", errors.New("unavailable"), false)

	want := `
# HELP bqsink_appends_inflight Batches sent to BigQuery and not yet delivered (answered, their rejections dead-lettered).
# TYPE bqsink_appends_inflight gauge
bqsink_appends_inflight 2
# HELP bqsink_buffered_bytes Memory held for records fetched and not yet acknowledged (records and their rows); capped by memory.max_buffered_bytes.
# TYPE bqsink_buffered_bytes gauge
bqsink_buffered_bytes 1000
# HELP bqsink_buffered_bytes_limit memory.max_buffered_bytes.
# TYPE bqsink_buffered_bytes_limit gauge
bqsink_buffered_bytes_limit 6.7108864e+07
# HELP bqsink_buffered_bytes_peak The highest bqsink_buffered_bytes since the start.
# TYPE bqsink_buffered_bytes_peak gauge
bqsink_buffered_bytes_peak 1000
# HELP bqsink_group_lag The group's records of the topic not committed yet, summed over its partitions whoever owns them, as the brokers said at the last refresh (every 15s); every member reports it.
# TYPE bqsink_group_lag gauge
bqsink_group_lag{topic="orders"} 70
# HELP bqsink_partition_committed_offset The group's committed offset of the partition: the next record to read after a restart.
# TYPE bqsink_partition_committed_offset gauge
bqsink_partition_committed_offset{partition="0",topic="orders"} 100
bqsink_partition_committed_offset{partition="1",topic="orders"} 20
# HELP bqsink_partition_lag Records of an owned partition not committed yet: its end offset minus the group's committed offset, each the newest of what the client saw and what the brokers said at the last refresh (every 15s).
# TYPE bqsink_partition_lag gauge
bqsink_partition_lag{partition="0",topic="orders"} 30
bqsink_partition_lag{partition="1",topic="orders"} 30
# HELP bqsink_partitions_assigned Partitions this member owns.
# TYPE bqsink_partitions_assigned gauge
bqsink_partitions_assigned 2
# HELP bqsink_partitions_paused Partitions whose fetching is paused because they hold their share of memory.max_buffered_bytes.
# TYPE bqsink_partitions_paused gauge
bqsink_partitions_paused 1
# HELP bqsink_partitions_stalled Partitions holding unacknowledged records with no progress, or with records they cannot fetch, for longer than stall_timeout.
# TYPE bqsink_partitions_stalled gauge
bqsink_partitions_stalled 1
# HELP bqsink_stage_failing Targets (tables, registry, topics) whose calls in this stage are failing now.
# TYPE bqsink_stage_failing gauge
bqsink_stage_failing{stage="append"} 1
bqsink_stage_failing{stage="commit"} 0
bqsink_stage_failing{stage="dead_letter"} 0
bqsink_stage_failing{stage="fetch"} 0
bqsink_stage_failing{stage="schema"} 0
bqsink_stage_failing{stage="table"} 0
`
	names := []string{"bqsink_appends_inflight", "bqsink_buffered_bytes", "bqsink_buffered_bytes_limit",
		"bqsink_buffered_bytes_peak", "bqsink_group_lag", "bqsink_partition_committed_offset", "bqsink_partition_lag",
		"bqsink_partitions_assigned", "bqsink_partitions_paused", "bqsink_partitions_stalled", "bqsink_stage_failing"}

	// Everything a poll, a rebalance callback or a worker may hold.
	s.mu.Lock()
	busy.mu.Lock()
	idle.mu.Lock()
	s.health.mu.Lock()
	scraped := make(chan error, 1)
	go func() { scraped <- testutil.GatherAndCompare(reg, strings.NewReader(want), names...) }()
	select {
	case err := <-scraped:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a scrape waited on the poll loop's locks") // the locks stay held: the scrape must not finish late
	}
	s.health.mu.Unlock()
	idle.mu.Unlock()
	busy.mu.Unlock()
	s.mu.Unlock()
}

// Taking partitions (revoked, lost) publishes the workers left, and a set
// already handed to a reader does not change under it.
func TestTakePublishesTheWorkersLeft(t *testing.T) {
	s := &Sink{flow: newFlow(64 << 20), workers: map[topicPartition]*worker{}}
	a, b := &worker{}, &worker{}
	s.workers[topicPartition{"t", 0}] = a
	s.workers[topicPartition{"t", 1}] = b
	s.mu.Lock()
	s.publishWorkersLocked()
	s.mu.Unlock()
	before := s.ownedWorkers()

	if ws := s.take(map[string][]int32{"t": {0}}); len(ws) != 1 || ws[0] != a {
		t.Fatalf("took %v, want partition 0's worker", ws)
	}
	if after := s.ownedWorkers(); len(after) != 1 || after[topicPartition{"t", 1}] != b {
		t.Errorf("published %v after taking partition 0, want partition 1 alone", after)
	}
	if len(before) != 2 {
		t.Errorf("the set read before the take changed: %v", before)
	}
}

// Every series the sink registers is in the README's metrics table, and
// every bqsink_ series the table lists (but franz-go's and the build's,
// which main registers) is registered: operators read the table to write
// their alerts.
func TestREADMEListsEveryMetric(t *testing.T) {
	m := newMetrics()
	s := &Sink{cfg: Config{StallTimeout: time.Minute}, log: zap.NewNop(), metrics: m, flow: newFlow(64 << 20),
		workers: map[topicPartition]*worker{}}
	s.health = newHealth(s.log, m, &s.stats.retries)
	reg := prometheus.NewRegistry()
	if err := m.register(reg, s); err != nil {
		t.Fatal(err)
	}
	m.initTopic("t")
	m.initTable("t")
	m.appendSeconds.WithLabelValues("t")
	m.lastWrite.WithLabelValues("t")
	m.freshness.WithLabelValues("t")
	m.eoFallbacks.WithLabelValues("t", "stream_lost")
	// Gauges computed at scrape time only appear with a partition and a
	// lag refresh.
	s.workers[topicPartition{"t", 0}] = &worker{}
	s.brokerLag.Store(&lagSnapshot{parts: map[topicPartition]brokerOffsets{{"t", 0}: {start: 0, end: 10, committed: 5}}})
	s.mu.Lock()
	s.publishWorkersLocked()
	s.mu.Unlock()
	registered := map[string]bool{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		registered[mf.GetName()] = true
	}

	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(bqsink_[a-z_]+)` \\|").FindAllStringSubmatch(string(readme), -1) {
		listed[m[1]] = true
	}
	for name := range registered {
		if !listed[name] {
			t.Errorf("%s is registered but not in the README's metrics table", name)
		}
	}
	for name := range listed {
		if !registered[name] && name != "bqsink_build_info" {
			t.Errorf("the README lists %s, which the sink does not register", name)
		}
	}
}
