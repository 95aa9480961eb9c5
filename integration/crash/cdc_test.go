package crash

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/bqsink/bqsink/integration/itest"
)

// The real binary mirroring a Debezium topic in upsert mode, SIGKILLed at
// random moments while change events flow and started again each time,
// leaves the table exactly as the source: a killed member's changes are
// read again by the next one, and applying a change twice, or an older one
// after a newer one, changes nothing, since each carries its source
// position and Kafka offset as its sequence number.
func TestUpsertCrashLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts the daemon for about half a minute")
	}
	const (
		group = "g-upsert-crash"
		topic = "dbserver1.inventory.products"
		table = "products"
		kills = 4
	)
	e := itest.NewEnvPartitions(t, 4)
	if err := e.St.CreateTopic(t.Context(), topic, 4); err != nil {
		t.Fatal(err)
	}
	src := itest.NewDebezium(t, e.St, topic, true)
	rng := rand.New(rand.NewPCG(itest.Seed(t), 2))
	began := time.Now()
	since := func() time.Duration { return time.Since(began).Round(time.Millisecond) }

	// Change events over 2,000 keys, 100 every 30 ms, until stopped: each
	// kill lands while they flow.
	ctx, stop := context.WithCancel(t.Context())
	var produced int
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(30 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			recs := src.Changes(100, 2000)
			if err := e.St.Produce(t.Context(), recs...); err != nil {
				t.Errorf("produce: %v", err)
				return
			}
			produced += len(recs)
		}
	})
	defer func() { stop(); wg.Wait() }()

	cfg := itest.NewDaemonConfig(e, group).Set("kafka.topics", []string{topic}).Set("tables", map[string]any{
		topic: map[string]any{"table": table, "mode": "upsert", "envelope": "debezium", "sequence": "debezium"},
	}).Set("kafka.commit_interval", "1s")
	d := itest.StartDaemon(t, cfg)
	for i := 1; i <= kills; i++ {
		waitWriting(t, d)
		wait, ok := pause(t, rng, 0, 2*time.Second)
		if !ok {
			return
		}
		rows := d.Metric("bqsink_rows_written_total")
		st := d.Kill()
		itest.LogProblems(t, d)
		t.Logf("kill %d at %v, %v after %s wrote its first rows; it wrote %.0f rows; %v", i, since(), wait.Round(time.Millisecond), d.Name, rows, st)
		d = itest.StartDaemon(t, cfg)
	}
	stop()
	wg.Wait()
	t.Logf("stream done at %v: %d change events", since(), produced)
	cctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if _, err := e.St.WaitCommitted(cctx, group, topic); err != nil {
		t.Fatalf("group %s not caught up: %v", group, err)
	}
	t.Logf("caught up at %v", since())
	if n := d.Metric("bqsink_records_rejected_total"); n != 0 {
		t.Errorf("%s rejected %v records", d.Name, n)
	}
	d.Shutdown(15 * time.Second)
	itest.LogProblems(t, d)
	src.Check(t.Context(), e.St, table, "after the crash loop")
}
