package sink

import "testing"

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
	s.publishWorkersLocked()
	s.brokerLag.Store(&lagSnapshot{parts: map[topicPartition]brokerOffsets{tp: {start: 0, end: 9000, committed: 100}}})
	got := s.partitionOffsets()
	if len(got) != 1 || got[0].lag() != 8900 {
		t.Fatalf("partition offsets %+v, want lag 8900 (end 9000 from the brokers, commit 100)", got)
	}
	if g := s.groupLag(); g["t"] != 8900 {
		t.Fatalf("group lag %v, want t: 8900", g)
	}
}
