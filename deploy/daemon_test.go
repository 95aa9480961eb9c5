package deploy

import (
	"bufio"
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
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"sigs.k8s.io/yaml"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bqsink-deploy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type binaries struct{ bqsink, demo string }

var (
	buildOnce sync.Once
	built     binaries
	buildErr  error
)

// daemonBinaries builds, once per test run, the daemon and the demo (whose
// -serve starts the local stack) from the parent module, as they are in
// the work tree.
func daemonBinaries(t *testing.T) binaries {
	t.Helper()
	buildOnce.Do(func() {
		parent, err := filepath.Abs("..")
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+string(filepath.Separator), ".", "./integration/demo")
		cmd.Dir = parent
		cmd.Env = append(os.Environ(), "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build in %s: %v\n%s", parent, err, out)
			return
		}
		built = binaries{bqsink: filepath.Join(binDir, "bqsink"), demo: filepath.Join(binDir, "demo")}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

// stackPorts are the fixed ports of `demo -serve`, which the parent's
// config.yaml points at.
var stackPorts = []int{9092, 8081, 9050, 9060}

// process is a started binary whose output is kept for the failure message.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// tail returns the last n lines of the output.
func (p *process) tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.out.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- last lines of %s ---\n%s", p.name, strings.Join(lines, "\n"))
}

// start starts a binary; stop (registered as cleanup) sends it sig and
// waits for it, killing it if it has not ended within wait.
func start(t *testing.T, name string, sig os.Signal, wait time.Duration, bin string, args ...string) *process {
	t.Helper()
	p := &process{name: name, cmd: exec.Command(bin, args...), out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(sig)
		select {
		case <-p.done:
		case <-time.After(wait):
			_ = p.cmd.Process.Kill()
			<-p.done
			t.Errorf("%s did not stop within %s of %v", name, wait, sig)
		}
	})
	return p
}

// waitFor waits until the process prints a line containing s.
func (p *process) waitFor(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(p.out.String(), s) {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited before printing %q\n%s", p.name, s, p.tail(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("%s did not print %q within %s\n%s", p.name, s, timeout, p.tail(30))
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// exportedMetrics is what a scrape of /metrics holds: each series name the
// scrape yields (a histogram's name_bucket, name_sum and name_count, not
// its bare name) with the label names seen on it.
type exportedMetrics map[string]map[string]bool

func parseMetrics(r io.Reader) (exportedMetrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, err
	}
	out := exportedMetrics{}
	add := func(name string, extra string, m []*dto.Metric) {
		ls := map[string]bool{}
		for _, s := range m {
			for _, l := range s.GetLabel() {
				ls[l.GetName()] = true
			}
		}
		if extra != "" {
			ls[extra] = true
		}
		out[name] = ls
	}
	for name, f := range fams {
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			add(name+"_bucket", "le", f.GetMetric())
			add(name+"_sum", "", f.GetMetric())
			add(name+"_count", "", f.GetMetric())
		case dto.MetricType_SUMMARY:
			add(name, "quantile", f.GetMetric())
			add(name+"_sum", "", f.GetMetric())
			add(name+"_count", "", f.GetMetric())
		default:
			add(name, "", f.GetMetric())
		}
	}
	return out, nil
}

// scrapeRunningDaemon starts the local stack (`demo -serve`, which produces
// records) and the daemon on the parent's config.yaml, and scrapes
// /metrics until every name in want is there (a labelled series exists
// only once something happened to it: a table written, a partition
// assigned) or a minute has passed. It returns the last scrape.
func scrapeRunningDaemon(t *testing.T, want []string) exportedMetrics {
	t.Helper()
	bins := daemonBinaries(t)
	for _, port := range stackPorts {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatalf("port %d is taken (the local stack needs 9092, 8081, 9050 and 9060): is `make serve` running? %v", port, err)
		}
		ln.Close()
	}
	demo := start(t, "demo -serve", os.Interrupt, 20*time.Second, bins.demo, "-serve", "-records", "2000", "-partitions", "3")
	demo.waitFor(t, "stack is up", time.Minute)

	cfg := readConfig(t, "../config.yaml")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	httpSection, ok := cfg.tree["http"].(map[string]any)
	if !ok {
		t.Fatal("../config.yaml: no http section")
	}
	httpSection["listen"] = addr
	b, err := yaml.Marshal(cfg.tree)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	daemon := start(t, "bqsink", syscall.SIGTERM, 40*time.Second, bins.bqsink, "-config", file)

	var last exportedMetrics
	var missing []string
	deadline := time.Now().Add(time.Minute)
	for {
		m, err := scrape(addr)
		if err == nil {
			last, missing = m, nil
			for _, name := range want {
				if _, ok := m[name]; !ok {
					missing = append(missing, name)
				}
			}
			if len(missing) == 0 {
				return last
			}
		}
		if time.Now().After(deadline) {
			if last == nil {
				t.Fatalf("no scrape of http://%s/metrics succeeded: %v\n%s", addr, err, daemon.tail(30))
			}
			t.Logf("still missing after a minute: %s\n%s", strings.Join(missing, ", "), daemon.tail(10))
			return last
		}
		select {
		case <-daemon.done:
			t.Fatalf("bqsink exited\n%s\n%s", daemon.tail(30), demo.tail(10))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func scrape(addr string) (exportedMetrics, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseMetrics(bufio.NewReader(resp.Body))
}
