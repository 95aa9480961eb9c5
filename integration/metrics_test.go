package integration

import (
	"strconv"
	"testing"
	"time"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
)

// What an operator reads after a run: per-partition lag and committed
// offsets from the client's own view, the table's last write, bytes
// appended, end-to-end freshness for every row, and the rebalance that gave
// this member its partitions.
func TestOperatorMetrics(t *testing.T) {
	ctx := t.Context()
	e := itest.NewEnv(t)
	updates := stack.StockUpdates(900, 31)
	began := time.Now()
	e.Produce(ctx, updates)
	r := e.Start(ctx, "g-metrics")
	o := e.WaitCommitted(ctx, "g-metrics")
	table := "local-project.kafka." + stack.StockTable

	// The lag gauge follows the committed offsets at the next commit.
	itest.WaitFor(t, 10*time.Second, "lag 0 on every partition", func() bool {
		for p := range o.End {
			if gaugeAt(t, r, "bqsink_partition_lag", p) != 0 {
				return false
			}
		}
		return true
	})
	for p, end := range o.End {
		if got := gaugeAt(t, r, "bqsink_partition_committed_offset", p); got != float64(end) {
			t.Errorf("partition %d committed offset %v, want %d", p, got, end)
		}
	}
	if got := counter(t, r.Metrics, "bqsink_appended_bytes_total", "table", table); got <= 0 {
		t.Errorf("bqsink_appended_bytes_total = %v", got)
	}
	last := time.Unix(0, int64(itest.MetricValue(t, r.Metrics, "bqsink_table_last_write_timestamp_seconds", "table", table)*1e9))
	if last.Before(began) || last.After(time.Now()) {
		t.Errorf("last write at %v, want during the run (from %v)", last, began)
	}
	if n := histogramCount(t, r, "bqsink_freshness_seconds"); n != float64(len(updates)) {
		t.Errorf("freshness observed %v rows, want %d", n, len(updates))
	}
	if got := counter(t, r.Metrics, "bqsink_rebalances_total", "event", "assigned"); got < 1 {
		t.Errorf("bqsink_rebalances_total{event=assigned} = %v", got)
	}
	// Known label values are there from the start, at zero.
	mfs, err := r.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if mf.GetName() == "bqsink_rebalances_total" && l.GetName() == "event" {
					seen[l.GetValue()] = true
				}
			}
		}
	}
	for _, ev := range []string{"assigned", "revoked", "lost"} {
		if !seen[ev] {
			t.Errorf("bqsink_rebalances_total{event=%q} not exported", ev)
		}
	}
}

// gaugeAt reads a per-partition gauge of the stock topic; a partition
// without the series fails the test.
func gaugeAt(t *testing.T, r itest.Running, name string, partition int32) float64 {
	t.Helper()
	mfs, err := r.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := strconv.Itoa(int(partition))
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["topic"] == stack.StockTopic && labels["partition"] == want {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("%s has no series for partition %d", name, partition)
	return 0
}

func histogramCount(t *testing.T, r itest.Running, name string) float64 {
	t.Helper()
	mfs, err := r.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			n += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return n
}
