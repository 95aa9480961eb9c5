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
	s.publishWorkersLocked()
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
