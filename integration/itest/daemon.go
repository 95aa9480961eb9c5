package itest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// This file is the harness for tests of the real binary: build it once,
// render its config for the local stack, run it as a child process, read its
// JSON logs, probes and metrics, signal it, and clean up after it.

// ModulePath is the import path of the daemon's main package, the module
// root: go build finds it from any directory of the module, so the test
// packages under integration/ need not know how deep they are.
const ModulePath = "github.com/bqsink/bqsink"

var built struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// Main runs a test package's tests and removes the daemon binary built for
// the run, if any, then exits with the tests' code. Every test package that
// starts the daemon calls it from its TestMain:
//
//	func TestMain(m *testing.M) { itest.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		_ = os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// DaemonBinary builds bqsink from the module root once per test binary run
// and returns its path. A build failure fails every test that asks, with the
// compiler's output.
func DaemonBinary(t testing.TB) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "bqsink-integration-")
		if err != nil {
			built.err = err
			return
		}
		built.dir = dir
		built.path = filepath.Join(dir, "bqsink")
		start := time.Now()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-o", built.path, ModulePath).CombinedOutput()
		if err != nil {
			built.err = fmt.Errorf("go build %s: %v\n%s", ModulePath, err, out)
			return
		}
		t.Logf("built bqsink in %v", time.Since(start).Round(time.Millisecond))
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}

// LogLine is one line the daemon wrote. JSON lines (zap) have their level,
// logger and message split out and every field in Fields; other lines (a
// panic, a config error on stderr) only have Raw.
type LogLine struct {
	Stream string // "stdout" or "stderr"
	Raw    string
	JSON   bool
	Level  string
	Logger string
	Msg    string
	Fields map[string]any
}

// Str is a field's value as text ("" if absent).
func (l LogLine) Str(key string) string {
	switch v := l.Fields[key].(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// Num is a numeric field's value (0 if absent or not a number).
func (l LogLine) Num(key string) float64 {
	v, _ := l.Fields[key].(float64)
	return v
}

// MsgIs matches lines with this message.
func MsgIs(msg string) func(LogLine) bool {
	return func(l LogLine) bool { return l.Msg == msg }
}

// AssignedSome matches "partitions assigned" lines that assigned at least
// one partition: the sink also logs the empty assignments of cooperative
// rebalances that moved nothing to it.
func AssignedSome(l LogLine) bool {
	return l.Msg == "partitions assigned" && l.Str("partitions") != "{}" && l.Str("partitions") != ""
}

// ExitStatus is how a daemon process ended.
type ExitStatus struct {
	Code   int            // exit code; -1 when a signal ended it
	Signal syscall.Signal // the signal that ended it, or 0
	Took   time.Duration  // from the last signal the harness sent (or the start) to the exit
}

func (e ExitStatus) String() string {
	if e.Signal != 0 {
		return fmt.Sprintf("signal %q after %v", e.Signal, e.Took.Round(time.Millisecond))
	}
	return fmt.Sprintf("exit %d after %v", e.Code, e.Took.Round(time.Millisecond))
}

// Daemon is a running bqsink process. Its methods are goroutine-safe.
type Daemon struct {
	t    *testing.T
	Name string // bqsink[pid]
	cmd  *exec.Cmd
	// addr is the http.listen address as configured; base is where it
	// listens, "http://host:port", found from its "http listening" line
	// when the port was left to the system.
	addr     string
	baseOnce sync.Once
	base     string
	http     *http.Client

	mu      sync.Mutex
	lines   []LogLine
	changed chan struct{} // closed and replaced whenever a line arrives
	sentAt  time.Time     // the last signal sent, or the start
	exit    ExitStatus

	exited chan struct{} // closed once the process is reaped and its output read
}

// StartDaemon runs the binary with cfg, listening for HTTP on a port the
// system picks unless cfg sets http.listen. The process is killed when the
// test ends, and its output is logged if the test failed.
func StartDaemon(t *testing.T, cfg *DaemonConfig) *Daemon {
	t.Helper()
	bin := DaemonBinary(t)
	cfg = cfg.Clone()
	addr, _ := cfg.Get("http.listen").(string)
	if addr == "" {
		// A port picked here and closed could be taken by another process
		// before the daemon binds it.
		addr = "127.0.0.1:0"
		cfg.Set("http.listen", addr)
	}
	d := &Daemon{
		t: t, addr: addr,
		http:    &http.Client{Timeout: 5 * time.Second},
		changed: make(chan struct{}), exited: make(chan struct{}),
	}
	d.cmd = exec.Command(bin, "-config", cfg.WriteConfig())
	d.cmd.Env = processEnv(cfg.env)
	d.cmd.Stdout = &lineWriter{d: d, stream: "stdout"}
	d.cmd.Stderr = &lineWriter{d: d, stream: "stderr"}
	d.sentAt = time.Now()
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	d.Name = fmt.Sprintf("bqsink[%d]", d.cmd.Process.Pid)
	go d.reap()
	t.Cleanup(func() {
		if !d.Done() {
			_ = d.cmd.Process.Kill()
		}
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("%s (pid %d) not reaped 10s after SIGKILL", d.Name, d.cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", d.Name, d.Tail(400))
		}
	})
	return d
}

func (d *Daemon) reap() {
	err := d.cmd.Wait() // returns once stdout and stderr are drained
	now := time.Now()
	st := ExitStatus{Code: d.cmd.ProcessState.ExitCode()}
	if ws, ok := d.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		st.Signal = ws.Signal()
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		d.t.Logf("%s: wait: %v", d.Name, err)
	}
	d.mu.Lock()
	st.Took = now.Sub(d.sentAt)
	d.exit = st
	d.mu.Unlock()
	close(d.exited)
}

// BaseURL is "http://host:port" of the daemon's HTTP server, waiting for
// its "http listening" line if the port was left to the system.
func (d *Daemon) BaseURL() string {
	d.baseOnce.Do(func() {
		addr := d.addr
		if strings.HasSuffix(addr, ":0") {
			l := d.WaitLog(30*time.Second, "http listening", MsgIs("http listening"))
			addr = l.Str("addr")
		}
		if strings.HasPrefix(addr, ":") {
			addr = "127.0.0.1" + addr
		}
		d.base = "http://" + addr
	})
	return d.base
}

// Done reports whether the process has exited and its output is read.
func (d *Daemon) Done() bool {
	select {
	case <-d.exited:
		return true
	default:
		return false
	}
}

// Exited is closed once the process has exited and its output is read.
func (d *Daemon) Exited() <-chan struct{} { return d.exited }

// Pid is the process ID.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Signal sends sig to the process; the exit's Took counts from here.
func (d *Daemon) Signal(sig syscall.Signal) {
	d.t.Helper()
	d.mu.Lock()
	d.sentAt = time.Now()
	d.mu.Unlock()
	if err := d.cmd.Process.Signal(sig); err != nil && !d.Done() {
		d.t.Fatalf("%s: %v: %v", d.Name, sig, err)
	}
}

// Terminate sends SIGTERM and returns at once; wait for the exit.
func (d *Daemon) Terminate() { d.t.Helper(); d.Signal(syscall.SIGTERM) }

// Kill sends SIGKILL and waits until the process is gone (its sockets are
// closed by then; its group membership lives on until the session times out).
func (d *Daemon) Kill() ExitStatus {
	d.t.Helper()
	d.Signal(syscall.SIGKILL)
	return d.Wait(10 * time.Second)
}

// Wait waits for the process to exit, failing the test if it is still
// running after within.
func (d *Daemon) Wait(within time.Duration) ExitStatus {
	d.t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case <-d.exited:
	case <-timer.C:
		d.t.Fatalf("%s still running %v after waiting began", d.Name, within)
	}
	return d.Status()
}

// Status is how the process ended; only meaningful once it has.
func (d *Daemon) Status() ExitStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.exit
}

// Shutdown sends SIGTERM and requires exit code 0 within the bound.
func (d *Daemon) Shutdown(within time.Duration) ExitStatus {
	d.t.Helper()
	d.Terminate()
	st := d.Wait(within)
	if st.Code != 0 {
		d.t.Errorf("%s after SIGTERM: %v, want exit 0", d.Name, st)
	}
	return st
}

// lineWriter splits a stream into lines and hands each to the daemon.
type lineWriter struct {
	d       *Daemon
	stream  string
	partial []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.partial = append(w.partial, p...)
			return n, nil
		}
		line := append(w.partial, p[:i]...)
		w.partial = nil
		w.d.addLine(w.stream, string(line))
		p = p[i+1:]
	}
}

func (d *Daemon) addLine(stream, raw string) {
	l := LogLine{Stream: stream, Raw: raw}
	if err := json.Unmarshal([]byte(raw), &l.Fields); err == nil {
		l.JSON = true
		l.Level, _ = l.Fields["level"].(string)
		l.Logger, _ = l.Fields["logger"].(string)
		l.Msg, _ = l.Fields["msg"].(string)
	}
	d.mu.Lock()
	d.lines = append(d.lines, l)
	close(d.changed)
	d.changed = make(chan struct{})
	d.mu.Unlock()
}

// Logs is every line so far, in order.
func (d *Daemon) Logs() []LogLine {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]LogLine(nil), d.lines...)
}

// LogsMatching is every line so far that matches.
func (d *Daemon) LogsMatching(match func(LogLine) bool) []LogLine {
	var out []LogLine
	for _, l := range d.Logs() {
		if match(l) {
			out = append(out, l)
		}
	}
	return out
}

// WaitLog waits for the first line that matches, including lines written
// before the call. It fails the test if none arrives within the bound or
// the process exits first.
func (d *Daemon) WaitLog(within time.Duration, what string, match func(LogLine) bool) LogLine {
	d.t.Helper()
	l, _ := d.WaitLogFrom(0, within, what, match)
	return l
}

// WaitLogFrom is WaitLog over the lines from index from on (len(d.Logs())
// taken earlier: "a line after that moment"); it also returns the index of
// the line found.
func (d *Daemon) WaitLogFrom(from int, within time.Duration, what string, match func(LogLine) bool) (LogLine, int) {
	d.t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		d.mu.Lock()
		for ; from < len(d.lines); from++ {
			if match(d.lines[from]) {
				l := d.lines[from]
				d.mu.Unlock()
				return l, from
			}
		}
		changed := d.changed
		d.mu.Unlock()
		select {
		case <-changed:
		case <-d.exited:
			// Output is drained before exited closes: one last look.
			d.mu.Lock()
			for ; from < len(d.lines); from++ {
				if match(d.lines[from]) {
					l := d.lines[from]
					d.mu.Unlock()
					return l, from
				}
			}
			d.mu.Unlock()
			d.t.Fatalf("%s exited (%v) without logging %s", d.Name, d.Status(), what)
		case <-deadline.C:
			d.t.Fatalf("%s logged no %s within %v", d.Name, what, within)
		}
	}
}

// Problems counts the JSON lines logged at warn or above by message, and
// the lines that are not JSON (a panic, a fatal error) under "(not JSON)".
func (d *Daemon) Problems() map[string]int {
	out := map[string]int{}
	for _, l := range d.Logs() {
		switch {
		case !l.JSON:
			out["(not JSON)"]++
		case l.Level != "debug" && l.Level != "info":
			out[l.Level+": "+l.Msg]++
		}
	}
	return out
}

// Output is everything the process wrote, one line per line.
func (d *Daemon) Output() string { return d.Tail(0) }

// Tail is the last n lines written (all of them if n is 0).
func (d *Daemon) Tail(n int) string {
	lines := d.Logs()
	var b strings.Builder
	if n > 0 && len(lines) > n {
		fmt.Fprintf(&b, "[%d earlier lines left out]\n", len(lines)-n)
		lines = lines[len(lines)-n:]
	}
	for _, l := range lines {
		if l.Stream == "stderr" {
			b.WriteString("stderr: ")
		}
		b.WriteString(l.Raw)
		b.WriteByte('\n')
	}
	return b.String()
}

// Get requests a path of the daemon's HTTP server (/readyz, /healthz,
// /metrics). The code is 0, and the body the error, if it did not answer.
func (d *Daemon) Get(path string) (int, string) {
	resp, err := d.http.Get(d.BaseURL() + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err.Error()
	}
	return resp.StatusCode, string(b)
}

// WaitHTTP polls a path until it answers with code, failing the test after
// within or if the process exits.
func (d *Daemon) WaitHTTP(path string, code int, within time.Duration) {
	d.t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		got, body := d.Get(path)
		if got == code {
			return
		}
		select {
		case <-tick.C:
		case <-d.exited:
			d.t.Fatalf("%s exited (%v) before %s answered %d", d.Name, d.Status(), path, code)
		case <-deadline.C:
			d.t.Fatalf("%s%s: %d %s, want %d within %v", d.Name, path, got, strings.TrimSpace(body), code, within)
		}
	}
}

// Metrics scrapes /metrics.
func (d *Daemon) Metrics() (PromText, error) {
	code, body := d.Get("/metrics")
	if code != http.StatusOK {
		return "", fmt.Errorf("%s/metrics: %d %s", d.Name, code, body)
	}
	return PromText(body), nil
}

// Metric scrapes /metrics and sums a metric's series whose labels include
// the given name, value pairs. A failed scrape fails the test.
func (d *Daemon) Metric(name string, labels ...string) float64 {
	d.t.Helper()
	m, err := d.Metrics()
	if err != nil {
		d.t.Fatal(err)
	}
	return m.Sum(name, labels...)
}

// LogProblems logs what a daemon logged at warn or above, counted by message.
func LogProblems(t *testing.T, d *Daemon) {
	t.Helper()
	if p := d.Problems(); len(p) > 0 {
		t.Logf("%s logged: %v", d.Name, p)
	}
}

// ContainsEvery reports whether s contains every one of subs.
func ContainsEvery(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// RawLines is the lines as written, one a line, for messages.
func RawLines(ls []LogLine) string {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l.Raw)
		b.WriteByte('\n')
	}
	return b.String()
}

// StartupBound is the promise for a start that cannot succeed: exit 1
// within 10s of the process starting.
const StartupBound = 10 * time.Second
