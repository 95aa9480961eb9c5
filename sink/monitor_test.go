package sink

import (
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// The progress line says what happened since the last one: rows and their
// rate, lag over the assigned partitions, retries, rejections, dead letters.
func TestProgressLineCountsSinceTheLastOne(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	s := &Sink{log: zap.New(core), flow: newFlow(64 << 20), workers: map[topicPartition]*worker{}}
	w := &worker{}
	w.first.Store(100)
	w.hwm.Store(130)
	s.workers[topicPartition{"t", 0}] = w
	s.stats.rows.Store(600)
	s.stats.retries.Store(2)
	var before stats
	s.logProgress(&before, 30*time.Second)
	s.stats.rows.Add(300)
	s.logProgress(&before, 30*time.Second)

	lines := logs.FilterMessage("progress").All()
	if len(lines) != 2 {
		t.Fatalf("%d progress lines, want 2", len(lines))
	}
	first, second := lines[0].ContextMap(), lines[1].ContextMap()
	if first["rows_written"] != int64(600) || first["rows_per_second"] != float64(20) || first["retries"] != int64(2) {
		t.Errorf("first line %v", first)
	}
	if first["lag"] != int64(30) {
		t.Errorf("lag %v, want 30: high watermark 130, nothing committed, read from 100", first["lag"])
	}
	if second["rows_written"] != int64(300) || second["retries"] != int64(0) {
		t.Errorf("second line counts since the first: %v", second)
	}
}

// The group's lag of a partition, as the brokers tell it: from the commit,
// or where a partition without one starts (kafka.start_offset), to the end;
// records below the log start are gone and owed to nobody.
func TestBrokerLag(t *testing.T) {
	for _, c := range []struct {
		name        string
		b           brokerOffsets
		startOffset string
		want        int64
	}{
		{"committed", brokerOffsets{start: 0, end: 100, committed: 40}, "earliest", 60},
		{"caught up", brokerOffsets{start: 0, end: 100, committed: 100}, "earliest", 0},
		{"no commit, from the earliest", brokerOffsets{start: 10, end: 100, committed: -1}, "earliest", 90},
		{"no commit, from the latest", brokerOffsets{start: 10, end: 100, committed: -1}, "latest", 0},
		{"commit below the log start", brokerOffsets{start: 80, end: 100, committed: 40}, "earliest", 20},
		{"everything deleted", brokerOffsets{start: 100, end: 100, committed: 40}, "earliest", 0},
		{"log start not known", brokerOffsets{start: -1, end: 100, committed: -1}, "earliest", 100},
	} {
		if got := c.b.lag(c.startOffset); got != c.want {
			t.Errorf("%s: lag %d, want %d", c.name, got, c.want)
		}
	}
}

// An owned partition's lag keeps growing while its fetching is paused: the
// brokers' end offset counts when it is ahead of what the client saw, and
// the newer of the two commits.
func TestPartitionLagUsesTheBrokersView(t *testing.T) {
	s := &Sink{workers: map[topicPartition]*worker{}}
	w := &worker{}
	w.first.Store(0)
	w.hwm.Store(500) // where fetching paused
	tp := topicPartition{"t", 0}
	s.workers[tp] = w
	s.brokerLag.Store(&lagSnapshot{parts: map[topicPartition]brokerOffsets{tp: {start: 0, end: 9000, committed: 100}}})
	got := s.partitionOffsets()
	if len(got) != 1 || got[0].lag() != 8900 {
		t.Fatalf("partition offsets %+v, want lag 8900 (end 9000 from the brokers, commit 100)", got)
	}
	if g := s.groupLag(); g["t"] != 8900 {
		t.Fatalf("group lag %v, want t: 8900", g)
	}
}
