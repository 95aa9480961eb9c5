package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
)

// The daemon as users run it: `bqsink -config FILE` built from main, pointed
// at the local stack. It serves its probes and metrics, writes every record,
// and on SIGTERM flushes, commits and exits 0.
func TestDaemonRunsFromConfigAndStopsCleanlyOnSIGTERM(t *testing.T) {
	ctx := t.Context()
	e := itest.NewEnv(t)
	updates := stack.StockUpdates(1000, 5)
	e.Produce(ctx, updates)

	// The registry URL comes from the environment, as a secret would.
	cfg := itest.NewDaemonConfig(e, "daemon").
		Set("schema_registry.url", "${TEST_REGISTRY_URL}").
		SetEnv("TEST_REGISTRY_URL", e.St.RegistryURL()).
		Set("log.level", "debug")
	if code, out := itest.CheckConfig(t, cfg); code != 0 {
		t.Fatalf("-check: exit %d\n%s", code, out)
	}

	d := itest.StartDaemon(t, cfg)
	d.WaitLog(30*time.Second, "partitions assigned", itest.AssignedSome)
	d.WaitHTTP("/readyz", 200, 30*time.Second)
	e.WaitCommitted(ctx, "daemon")
	if code, body := d.Get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d %s", code, body)
	}
	_, metrics := d.Get("/metrics")
	for _, want := range []string{
		`bqsink_rows_written_total{table="local-project.kafka.sms_physical_stock_updates"} 1000`,
		`bqsink_records_consumed_total{topic="sms_physical_stock_updated_topic"} 1000`,
		"bqsink_kafka_", "go_goroutines",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	d.Terminate()
	if st := d.Wait(15 * time.Second); st.Code != 0 {
		t.Fatalf("daemon after SIGTERM: %v, want exit 0", st)
	}
	if got := len(e.Read(ctx).Rows); got != len(updates) {
		t.Errorf("%d rows for %d records", got, len(updates))
	}
	for _, want := range []string{"starting", "partitions assigned", "stopped"} {
		if len(d.LogsMatching(itest.MsgIs(want))) == 0 {
			t.Errorf("logs lack %q", want)
		}
	}
}
