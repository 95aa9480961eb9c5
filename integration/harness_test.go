package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"gopkg.in/yaml.v3"

	"github.com/bqsink/bqsink/integration/stack"
)

// This file is the harness for tests of the real binary: build it once,
// render its config for the local stack, run it as a child process, read its
// JSON logs, probes and metrics, signal it, and clean up after it.

// TestMain removes the daemon binary built for this run, if any.
func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		_ = os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

var built struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// daemonBinary builds bqsink from the module root once per test binary run
// and returns its path. A build failure fails every test that asks, with the
// compiler's output.
func daemonBinary(t testing.TB) string {
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
		out, err := exec.CommandContext(ctx, "go", "build", "-o", built.path, "..").CombinedOutput()
		if err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		t.Logf("built bqsink in %v", time.Since(start).Round(time.Millisecond))
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}

// newEnvPartitions is newEnv with the stock topic's partition count chosen.
func newEnvPartitions(t *testing.T, partitions int32) *env {
	t.Helper()
	st, err := stack.Start(stack.Options{Partitions: partitions, Topics: []string{stack.StockTopic}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	schemas, err := st.RegisterStock()
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, st: st, schemas: schemas}
}

// daemonConfig is a bqsink config file under construction, held as a YAML
// document of nested maps: a test sets any key, including keys this harness
// has never heard of, and a key set twice keeps the last value. It is not
// goroutine-safe.
type daemonConfig struct {
	t   *testing.T
	doc map[string]any
	raw []string
	env map[string]string
}

// newDaemonConfig points a daemon at e's stack, consuming the stock topic as
// group into the stock table, with the small batch, commit and session
// settings the in-process tests use (stack.SinkConfig). http.listen is left
// unset: startDaemon gives each process a free port unless a test sets it.
//
// It also creates the group's dead-letter topic, <group>.dlq, if missing:
// with errors.policy dlq the daemon requires it at startup.
func newDaemonConfig(e *env, group string) *daemonConfig {
	e.t.Helper()
	if err := e.st.CreateTopic(e.t.Context(), group+".dlq", 1); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		e.t.Fatal(err)
	}
	return daemonConfigNoDLQ(e, group)
}

// daemonConfigNoDLQ is newDaemonConfig without creating the dead-letter
// topic.
func daemonConfigNoDLQ(e *env, group string) *daemonConfig {
	return &daemonConfig{
		t:   e.t,
		env: map[string]string{},
		doc: map[string]any{
			"kafka": map[string]any{
				"brokers":           e.st.Brokers(),
				"group_id":          group,
				"topics":            []string{stack.StockTopic},
				"session_timeout":   "6s", // kfake's minimum
				"rebalance_timeout": "10s",
				"commit_interval":   "200ms",
			},
			"schema_registry": map[string]any{"url": e.st.RegistryURL()},
			"bigquery": map[string]any{
				"project":       stack.Project,
				"dataset":       stack.Dataset,
				"endpoint":      e.st.BigQuery.RESTEndpoint(),
				"grpc_endpoint": e.st.BigQuery.GRPCEndpoint(),
			},
			"tables":               map[string]any{stack.StockTopic: stack.StockTable},
			"batch":                map[string]any{"max_records": 500, "max_wait": "100ms"},
			"log":                  map[string]any{"level": "info"},
			"unknown_schema_grace": "300ms",
			"shutdown_timeout":     "10s",
		},
	}
}

// set sets a dotted key ("kafka.session_timeout") to v, creating the maps
// on the way. A time.Duration is written as a Go duration string.
func (c *daemonConfig) set(key string, v any) *daemonConfig {
	parts := strings.Split(key, ".")
	m := c.doc
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = v
	return c
}

// get is the value at a dotted key, or nil.
func (c *daemonConfig) get(key string) any {
	var v any = c.doc
	for _, p := range strings.Split(key, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// unset removes a dotted key, so the daemon's default applies.
func (c *daemonConfig) unset(key string) *daemonConfig {
	parts := strings.Split(key, ".")
	m := c.doc
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			return c
		}
		m = next
	}
	delete(m, parts[len(parts)-1])
	return c
}

// merge deep-merges m into the document: maps merge key by key, anything
// else replaces what was there.
func (c *daemonConfig) merge(m map[string]any) *daemonConfig {
	mergeInto(c.doc, m)
	return c
}

// mergeYAML parses text as a YAML mapping and merges it like merge.
func (c *daemonConfig) mergeYAML(text string) *daemonConfig {
	c.t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(text), &m); err != nil {
		c.t.Fatalf("mergeYAML: %v\n%s", err, text)
	}
	return c.merge(m)
}

// appendRaw appends text verbatim after the rendered document, for tests
// of what the daemon makes of a file as written (duplicate keys, bad YAML).
func (c *daemonConfig) appendRaw(text string) *daemonConfig {
	c.raw = append(c.raw, text)
	return c
}

// setEnv adds a variable to the daemon's environment, for ${VAR} in values.
func (c *daemonConfig) setEnv(name, value string) *daemonConfig {
	c.env[name] = value
	return c
}

func mergeInto(dst, src map[string]any) {
	for k, v := range src {
		sm, sok := v.(map[string]any)
		dm, dok := dst[k].(map[string]any)
		if sok && dok {
			mergeInto(dm, sm)
			continue
		}
		dst[k] = v
	}
}

// render is the config file's text.
func (c *daemonConfig) render() []byte {
	c.t.Helper()
	out, err := yaml.Marshal(durationsAsText(c.doc))
	if err != nil {
		c.t.Fatalf("render config: %v", err)
	}
	for _, r := range c.raw {
		out = append(out, '\n')
		out = append(out, r...)
	}
	return out
}

// clone is a deep copy, so that a start can add http.listen without the
// next start inheriting the port.
func (c *daemonConfig) clone() *daemonConfig {
	return &daemonConfig{t: c.t, doc: deepCopy(c.doc).(map[string]any), raw: append([]string(nil), c.raw...), env: maps.Clone(c.env)}
}

func deepCopy(v any) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = deepCopy(v)
	}
	return out
}

func durationsAsText(v any) any {
	switch v := v.(type) {
	case time.Duration:
		return v.String()
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = durationsAsText(e)
		}
		return out
	}
	return v
}

// writeConfig writes c to a new file in the test's temp dir.
func (c *daemonConfig) writeConfig() string {
	c.t.Helper()
	f, err := os.CreateTemp(c.t.TempDir(), "config-*.yaml")
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(c.render()); err != nil {
		c.t.Fatal(err)
	}
	return f.Name()
}

// checkConfig runs `bqsink -config FILE -check` and returns its exit code
// and combined output.
func checkConfig(t *testing.T, c *daemonConfig) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, daemonBinary(t), "-config", c.writeConfig(), "-check")
	cmd.Env = processEnv(c.env)
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("-check: %v", err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

func processEnv(extra map[string]string) []string {
	env := os.Environ()
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	return env
}

// logLine is one line the daemon wrote. JSON lines (zap) have their level,
// logger and message split out and every field in Fields; other lines (a
// panic, a config error on stderr) only have Raw.
type logLine struct {
	Stream string // "stdout" or "stderr"
	Raw    string
	JSON   bool
	Level  string
	Logger string
	Msg    string
	Fields map[string]any
}

// str is a field's value as text ("" if absent).
func (l logLine) str(key string) string {
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

// num is a numeric field's value (0 if absent or not a number).
func (l logLine) num(key string) float64 {
	v, _ := l.Fields[key].(float64)
	return v
}

// msgIs matches lines with this message.
func msgIs(msg string) func(logLine) bool {
	return func(l logLine) bool { return l.Msg == msg }
}

// assignedSome matches "partitions assigned" lines that assigned at least
// one partition: the sink also logs the empty assignments of cooperative
// rebalances that moved nothing to it.
func assignedSome(l logLine) bool {
	return l.Msg == "partitions assigned" && l.str("partitions") != "{}" && l.str("partitions") != ""
}

// exitStatus is how a daemon process ended.
type exitStatus struct {
	Code   int            // exit code; -1 when a signal ended it
	Signal syscall.Signal // the signal that ended it, or 0
	Took   time.Duration  // from the last signal the harness sent (or the start) to the exit
}

func (e exitStatus) String() string {
	if e.Signal != 0 {
		return fmt.Sprintf("signal %q after %v", e.Signal, e.Took.Round(time.Millisecond))
	}
	return fmt.Sprintf("exit %d after %v", e.Code, e.Took.Round(time.Millisecond))
}

// daemon is a running bqsink process. Its methods are goroutine-safe.
type daemon struct {
	t    *testing.T
	name string // bqsink[pid]
	cmd  *exec.Cmd
	// addr is the http.listen address as configured; base is where it
	// listens, "http://host:port", found from its "http listening" line
	// when the port was left to the system.
	addr     string
	baseOnce sync.Once
	base     string
	http     *http.Client

	mu      sync.Mutex
	lines   []logLine
	changed chan struct{} // closed and replaced whenever a line arrives
	sentAt  time.Time     // the last signal sent, or the start
	exit    exitStatus

	exited chan struct{} // closed once the process is reaped and its output read
}

// startDaemon runs the binary with cfg, listening for HTTP on a port the
// system picks unless cfg sets http.listen. The process is killed when the
// test ends, and its output is logged if the test failed.
func startDaemon(t *testing.T, cfg *daemonConfig) *daemon {
	t.Helper()
	bin := daemonBinary(t)
	cfg = cfg.clone()
	addr, _ := cfg.get("http.listen").(string)
	if addr == "" {
		// A port picked here and closed could be taken by another process
		// before the daemon binds it.
		addr = "127.0.0.1:0"
		cfg.set("http.listen", addr)
	}
	d := &daemon{
		t: t, addr: addr,
		http:    &http.Client{Timeout: 5 * time.Second},
		changed: make(chan struct{}), exited: make(chan struct{}),
	}
	d.cmd = exec.Command(bin, "-config", cfg.writeConfig())
	d.cmd.Env = processEnv(cfg.env)
	d.cmd.Stdout = &lineWriter{d: d, stream: "stdout"}
	d.cmd.Stderr = &lineWriter{d: d, stream: "stderr"}
	d.sentAt = time.Now()
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	d.name = fmt.Sprintf("bqsink[%d]", d.cmd.Process.Pid)
	go d.reap()
	t.Cleanup(func() {
		if !d.done() {
			_ = d.cmd.Process.Kill()
		}
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("%s (pid %d) not reaped 10s after SIGKILL", d.name, d.cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", d.name, d.tail(400))
		}
	})
	return d
}

func (d *daemon) reap() {
	err := d.cmd.Wait() // returns once stdout and stderr are drained
	now := time.Now()
	st := exitStatus{Code: d.cmd.ProcessState.ExitCode()}
	if ws, ok := d.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		st.Signal = ws.Signal()
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		d.t.Logf("%s: wait: %v", d.name, err)
	}
	d.mu.Lock()
	st.Took = now.Sub(d.sentAt)
	d.exit = st
	d.mu.Unlock()
	close(d.exited)
}

// baseURL is "http://host:port" of the daemon's HTTP server, waiting for
// its "http listening" line if the port was left to the system.
func (d *daemon) baseURL() string {
	d.baseOnce.Do(func() {
		addr := d.addr
		if strings.HasSuffix(addr, ":0") {
			l := d.waitLog(30*time.Second, "http listening", msgIs("http listening"))
			addr = l.str("addr")
		}
		if strings.HasPrefix(addr, ":") {
			addr = "127.0.0.1" + addr
		}
		d.base = "http://" + addr
	})
	return d.base
}

func (d *daemon) done() bool {
	select {
	case <-d.exited:
		return true
	default:
		return false
	}
}

// pid is the process ID.
func (d *daemon) pid() int { return d.cmd.Process.Pid }

func (d *daemon) signal(sig syscall.Signal) {
	d.t.Helper()
	d.mu.Lock()
	d.sentAt = time.Now()
	d.mu.Unlock()
	if err := d.cmd.Process.Signal(sig); err != nil && !d.done() {
		d.t.Fatalf("%s: %v: %v", d.name, sig, err)
	}
}

// terminate sends SIGTERM and returns at once; wait for the exit.
func (d *daemon) terminate() { d.t.Helper(); d.signal(syscall.SIGTERM) }

// kill sends SIGKILL and waits until the process is gone (its sockets are
// closed by then; its group membership lives on until the session times out).
func (d *daemon) kill() exitStatus {
	d.t.Helper()
	d.signal(syscall.SIGKILL)
	return d.wait(10 * time.Second)
}

// wait waits for the process to exit, failing the test if it is still
// running after within.
func (d *daemon) wait(within time.Duration) exitStatus {
	d.t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case <-d.exited:
	case <-timer.C:
		d.t.Fatalf("%s still running %v after waiting began", d.name, within)
	}
	return d.status()
}

// status is how the process ended; only meaningful once it has.
func (d *daemon) status() exitStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.exit
}

// shutdown sends SIGTERM and requires exit code 0 within the bound.
func (d *daemon) shutdown(within time.Duration) exitStatus {
	d.t.Helper()
	d.terminate()
	st := d.wait(within)
	if st.Code != 0 {
		d.t.Errorf("%s after SIGTERM: %v, want exit 0", d.name, st)
	}
	return st
}

// lineWriter splits a stream into lines and hands each to the daemon.
type lineWriter struct {
	d       *daemon
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

func (d *daemon) addLine(stream, raw string) {
	l := logLine{Stream: stream, Raw: raw}
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

// logs is every line so far, in order.
func (d *daemon) logs() []logLine {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]logLine(nil), d.lines...)
}

// logsMatching is every line so far that matches.
func (d *daemon) logsMatching(match func(logLine) bool) []logLine {
	var out []logLine
	for _, l := range d.logs() {
		if match(l) {
			out = append(out, l)
		}
	}
	return out
}

// waitLog waits for the first line that matches, including lines written
// before the call. It fails the test if none arrives within the bound or
// the process exits first.
func (d *daemon) waitLog(within time.Duration, what string, match func(logLine) bool) logLine {
	d.t.Helper()
	l, _ := d.waitLogFrom(0, within, what, match)
	return l
}

// waitLogFrom is waitLog over the lines from index from on (len(d.logs())
// taken earlier: "a line after that moment"); it also returns the index of
// the line found.
func (d *daemon) waitLogFrom(from int, within time.Duration, what string, match func(logLine) bool) (logLine, int) {
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
			d.t.Fatalf("%s exited (%v) without logging %s", d.name, d.status(), what)
		case <-deadline.C:
			d.t.Fatalf("%s logged no %s within %v", d.name, what, within)
		}
	}
}

// problems counts the JSON lines logged at warn or above by message, and
// the lines that are not JSON (a panic, a fatal error) under "(not JSON)".
func (d *daemon) problems() map[string]int {
	out := map[string]int{}
	for _, l := range d.logs() {
		switch {
		case !l.JSON:
			out["(not JSON)"]++
		case l.Level != "debug" && l.Level != "info":
			out[l.Level+": "+l.Msg]++
		}
	}
	return out
}

// output is everything the process wrote, one line per line.
func (d *daemon) output() string { return d.tail(0) }

// tail is the last n lines written (all of them if n is 0).
func (d *daemon) tail(n int) string {
	lines := d.logs()
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

// get requests a path of the daemon's HTTP server (/readyz, /healthz,
// /metrics). The code is 0, and the body the error, if it did not answer.
func (d *daemon) get(path string) (int, string) {
	resp, err := d.http.Get(d.baseURL() + path)
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

// waitHTTP polls a path until it answers with code, failing the test after
// within or if the process exits.
func (d *daemon) waitHTTP(path string, code int, within time.Duration) {
	d.t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		got, body := d.get(path)
		if got == code {
			return
		}
		select {
		case <-tick.C:
		case <-d.exited:
			d.t.Fatalf("%s exited (%v) before %s answered %d", d.name, d.status(), path, code)
		case <-deadline.C:
			d.t.Fatalf("%s%s: %d %s, want %d within %v", d.name, path, got, strings.TrimSpace(body), code, within)
		}
	}
}

// metrics scrapes /metrics.
func (d *daemon) metrics() (promText, error) {
	code, body := d.get("/metrics")
	if code != http.StatusOK {
		return "", fmt.Errorf("%s/metrics: %d %s", d.name, code, body)
	}
	return promText(body), nil
}

// metric scrapes /metrics and sums a metric's series whose labels include
// the given name, value pairs. A failed scrape fails the test.
func (d *daemon) metric(name string, labels ...string) float64 {
	d.t.Helper()
	m, err := d.metrics()
	if err != nil {
		d.t.Fatal(err)
	}
	return m.sum(name, labels...)
}

// promText is a Prometheus text exposition.
type promText string

// sum adds up the samples named name (exactly, so a histogram's _bucket
// series are not included) whose labels include every given name, value
// pair.
func (p promText) sum(name string, labels ...string) float64 {
	var total float64
	for _, line := range strings.Split(string(p), "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		var ls map[string]string
		switch {
		case strings.HasPrefix(rest, "{"):
			var ok bool
			if ls, rest, ok = parseLabels(rest[1:]); !ok {
				continue
			}
		case strings.HasPrefix(rest, " "):
		default:
			continue // a longer name
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if ls[labels[i]] != labels[i+1] {
				match = false
			}
		}
		fields := strings.Fields(rest)
		if !match || len(fields) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(fields[0], 64); err == nil {
			total += v
		}
	}
	return total
}

// has reports whether the exposition has a sample named name.
func (p promText) has(name string) bool {
	for _, line := range strings.Split(string(p), "\n") {
		if rest, ok := strings.CutPrefix(line, name); ok && (strings.HasPrefix(rest, " ") || strings.HasPrefix(rest, "{")) {
			return true
		}
	}
	return false
}

// parseLabels reads `a="x",b="y"}` and returns the labels and what follows.
func parseLabels(s string) (map[string]string, string, bool) {
	ls := map[string]string{}
	for {
		s = strings.TrimLeft(s, ", ")
		if strings.HasPrefix(s, "}") {
			return ls, s[1:], true
		}
		eq := strings.Index(s, `="`)
		if eq < 0 {
			return nil, "", false
		}
		name := s[:eq]
		s = s[eq+2:]
		var v strings.Builder
		for {
			if s == "" {
				return nil, "", false
			}
			c := s[0]
			s = s[1:]
			if c == '"' {
				break
			}
			if c == '\\' && s != "" {
				switch s[0] {
				case 'n':
					v.WriteByte('\n')
				default:
					v.WriteByte(s[0])
				}
				s = s[1:]
				continue
			}
			v.WriteByte(c)
		}
		ls[name] = v.String()
	}
}

// freeAddr is a loopback address with a port free at the time of the call.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitUntil polls cond every 20ms until it holds, failing the test after
// within with what() (called then, so it can report the last state seen).
func waitUntil(t *testing.T, within time.Duration, what func() string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("waited %v for %s", within, what())
		case <-t.Context().Done():
			t.Fatalf("test ended waiting for %s", what())
		}
	}
}

func TestPromTextSum(t *testing.T) {
	p := promText(`# HELP x_total a counter
# TYPE x_total counter
x_total{table="a.b",why="q\"}, x"} 2
x_total{table="c"} 3
x_total_more 100
x_seconds_bucket{le="1"} 7
x 5
`)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"x_total", nil, 5},
		{"x_total", []string{"table", "c"}, 3},
		{"x_total", []string{"why", `q"}, x`}, 2},
		{"x_total", []string{"table", "z"}, 0},
		{"x", nil, 5},
		{"x_seconds", nil, 0},
	} {
		if got := p.sum(c.name, c.labels...); got != c.want {
			t.Errorf("sum(%s, %q) = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}
