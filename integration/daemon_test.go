package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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

	bin := filepath.Join(t.TempDir(), "bqsink")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	httpAddr := freeAddr(t)
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	cfg := fmt.Sprintf(`
kafka:
  brokers: [%s]
  group_id: daemon
  topics: [%s]
  commit_interval: 200ms
schema_registry:
  url: ${TEST_REGISTRY_URL}
bigquery:
  project: %s
  dataset: %s
  endpoint: %s
  grpc_endpoint: %s
tables:
  %s: %s
batch:
  max_wait: 100ms
http:
  listen: %s
log:
  level: debug
shutdown_timeout: 10s
`, strings.Join(e.st.Brokers(), ", "), stack.StockTopic, stack.Project, stack.Dataset,
		e.st.BigQuery.RESTEndpoint(), e.st.BigQuery.GRPCEndpoint(), stack.StockTopic, stack.StockTable, httpAddr)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	check := exec.CommandContext(ctx, bin, "-config", cfgPath, "-check")
	check.Env = append(os.Environ(), "TEST_REGISTRY_URL="+e.st.RegistryURL())
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("-check: %v\n%s", err, out)
	}

	var logs bytes.Buffer
	cmd := exec.Command(bin, "-config", cfgPath)
	cmd.Env = append(os.Environ(), "TEST_REGISTRY_URL="+e.st.RegistryURL())
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("daemon output:\n%s", logs.String())
		}
	})

	base := "http://" + httpAddr
	waitHTTP(t, base+"/readyz", 200)
	e.waitCommitted(ctx, "daemon")
	if code, body := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d %s", code, body)
	}
	_, metrics := get(t, base+"/metrics")
	for _, want := range []string{
		`bqsink_rows_written_total{table="local-project.kafka.sms_physical_stock_updates"} 1000`,
		`bqsink_records_consumed_total{topic="sms_physical_stock_updated_topic"} 1000`,
		"bqsink_kafka_", "go_goroutines",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("daemon exited with %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("daemon did not exit within shutdown_timeout after SIGTERM")
	}
	if got := len(e.read(ctx).Rows); got != len(updates) {
		t.Errorf("%d rows for %d records", got, len(updates))
	}
	out := logs.String()
	for _, want := range []string{`"msg":"starting"`, `"msg":"partitions assigned"`, `"msg":"stopped"`} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %s", want)
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitHTTP(t *testing.T, url string, want int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		if code, _ := get(t, url); code == want {
			return
		}
		select {
		case <-ctx.Done():
			code, body := get(t, url)
			t.Fatalf("%s: %d %s, want %d", url, code, body, want)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
