package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/bqsink/bqsink/integration/stack"
)

// The daemon as users run it: `bqsink -config FILE` built from main, pointed
// at the local stack. It serves its probes and metrics, writes every record,
// and on SIGTERM flushes, commits and exits 0.
func TestDaemonRunsFromConfigAndStopsCleanlyOnSIGTERM(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t)
	updates := stack.StockUpdates(1000, 5)
	e.produce(ctx, updates)

	// The registry URL comes from the environment, as a secret would.
	cfg := newDaemonConfig(e, "daemon").
		set("schema_registry.url", "${TEST_REGISTRY_URL}").
		setEnv("TEST_REGISTRY_URL", e.st.RegistryURL()).
		set("log.level", "debug")
	if code, out := checkConfig(t, cfg); code != 0 {
		t.Fatalf("-check: exit %d\n%s", code, out)
	}

	d := startDaemon(t, cfg)
	d.waitLog(30*time.Second, "partitions assigned", assignedSome)
	d.waitHTTP("/readyz", 200, 30*time.Second)
	e.waitCommitted(ctx, "daemon")
	if code, body := d.get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d %s", code, body)
	}
	_, metrics := d.get("/metrics")
	for _, want := range []string{
		`bqsink_rows_written_total{table="local-project.kafka.sms_physical_stock_updates"} 1000`,
		`bqsink_records_consumed_total{topic="sms_physical_stock_updated_topic"} 1000`,
		"bqsink_kafka_", "go_goroutines",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	d.terminate()
	if st := d.wait(15 * time.Second); st.Code != 0 {
		t.Fatalf("daemon after SIGTERM: %v, want exit 0", st)
	}
	if got := len(e.read(ctx).Rows); got != len(updates) {
		t.Errorf("%d rows for %d records", got, len(updates))
	}
	for _, want := range []string{"starting", "partitions assigned", "stopped"} {
		if len(d.logsMatching(msgIs(want))) == 0 {
			t.Errorf("logs lack %q", want)
		}
	}
}
