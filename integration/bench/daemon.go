package main

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/bqsink/bqsink/bq"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

// daemonOutcome is what one daemon run measured.
type daemonOutcome struct {
	result result
	notes  []string
	// rows is how many rows the table took: one per record, less the
	// changes the daemon left out of upsert batches (superseded by a later
	// change of the same key in the batch).
	rows       int
	superseded int
}

// daemonConfig is the daemon's config file: the defaults, except what
// points it at the stack (brokers, group, topic, registry, BigQuery
// endpoints, the table and, with -mode upsert, its mode, the stack's
// dead-letter topic, a free port for /metrics), then extra, then -set.
func (h *harness) daemonConfig(group string, extra map[string]any, listen string) (string, error) {
	var route any = h.fx.table // the short form, as before modes existed
	if h.o.mode == sink.ModeUpsert {
		// The primary key is left to its default: the key schema's fields.
		route = map[string]any{"table": h.fx.table, "mode": sink.ModeUpsert}
	}
	doc := map[string]any{
		"kafka": map[string]any{
			"brokers":  h.st.Brokers(),
			"group_id": group,
			"topics":   h.subscription(),
		},
		"schema_registry": map[string]any{"url": h.st.RegistryURL()},
		"bigquery": map[string]any{
			"project":       stack.Project,
			"dataset":       stack.Dataset,
			"endpoint":      h.st.BigQuery.RESTEndpoint(),
			"grpc_endpoint": h.st.BigQuery.GRPCEndpoint(),
			// BigQuery's default pool, which the test server serves as
			// BigQuery does (not the emulators' connection per table).
			"max_connections": bq.DefaultMaxConnections,
		},
		"tables": h.routes(route),
		"errors": map[string]any{"dlq_topic": stack.DLQTopic},
		"http":   map[string]any{"listen": listen},
	}
	for k, v := range extra {
		setKey(doc, k, v)
	}
	for _, kv := range h.o.set {
		setKey(doc, kv.key, kv.value)
	}
	text, err := yaml.Marshal(doc)
	if err != nil {
		return "", err
	}
	path := filepath.Join(h.tmp, "config.yaml")
	return path, os.WriteFile(path, text, 0o600)
}

// subscription is the daemon's kafka.topics: the topic, or with -tables a
// regular expression matching every one.
func (h *harness) subscription() []string {
	if h.o.tables == 0 {
		return []string{h.fx.topic}
	}
	return []string{"^" + regexp.QuoteMeta(h.fx.topic) + "-[0-9]+$"}
}

// routes is the daemon's tables: the topic's route, or with -tables none
// (each topic goes to the table of its name).
func (h *harness) routes(route any) map[string]any {
	if h.o.tables > 0 {
		return map[string]any{}
	}
	return map[string]any{h.fx.topic: route}
}

// setKey sets a dotted key in a document of nested maps.
func setKey(doc map[string]any, key string, v any) {
	parts := strings.Split(key, ".")
	m := doc
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = v
}

// setFlags are -set key=value flags.
type setFlags []struct {
	key   string
	value any
}

func (s *setFlags) String() string { return fmt.Sprint(*s) }

func (s *setFlags) Set(kv string) error {
	k, v, ok := strings.Cut(kv, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", kv)
	}
	var val any
	if err := yaml.Unmarshal([]byte(v), &val); err != nil {
		return fmt.Errorf("%s: %w", k, err)
	}
	*s = append(*s, struct {
		key   string
		value any
	}{k, val})
	return nil
}

// lookup is the -set value of key, if given.
func (s setFlags) lookup(key string) (any, bool) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i].key == key {
			return s[i].value, true
		}
	}
	return nil, false
}

// maxWait is the daemon's batch.max_wait: -set's, else its declared
// default (the daemon's config sets none).
func (h *harness) maxWait() time.Duration {
	if v, ok := h.o.set.lookup("batch.max_wait"); ok {
		if d, err := time.ParseDuration(fmt.Sprint(v)); err == nil {
			return d
		}
	}
	return sink.DefaultConfig().Batch.MaxWait
}

// daemonEnv is the harness's environment without the memory settings that
// would change what is measured: the daemon sets its own Go memory limit.
func daemonEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOMEMLIMIT=") && !strings.HasPrefix(kv, "GOGC=") {
			env = append(env, kv)
		}
	}
	return env
}

// runDaemon runs the daemon as group until its committed lag on the topic
// is 0 and the table holds want() rows, then stops it with SIGTERM and
// checks it exited 0 and the table holds exactly want() rows. The wall time
// runs from the daemon's start; with during, the daemon's readiness is
// awaited first, then during (the steady producer) runs while the daemon
// runs, and the wall time starts at the time it returns; want is asked
// after.
func (h *harness) runDaemon(ctx context.Context, group string, extra map[string]any, want func() int, during func(context.Context) (time.Time, error)) (daemonOutcome, error) {
	var out daemonOutcome
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return out, err
	}
	listen := ln.Addr().String()
	ln.Close()
	cfg, err := h.daemonConfig(group, extra, listen)
	if err != nil {
		return out, err
	}
	logPath := filepath.Join(h.tmp, "bqsink.log")
	c, err := launch(ctx, "bqsink", logPath, daemonEnv(), h.bin, "-config", cfg)
	if err != nil {
		return out, err
	}
	defer c.kill()
	logf("bqsink started (pid %d), output in %s", c.pid, logPath)
	fail := func(format string, args ...any) (daemonOutcome, error) {
		msg := fmt.Sprintf(format, args...)
		if c.done() {
			msg += fmt.Sprintf(" (bqsink exited with code %d%s)", c.report.Exit, signalNote(c.report.Signal))
		}
		return out, fmt.Errorf("bqsink (pid %d): %s%s", c.pid, msg, tailNote(logPath))
	}

	from := c.started
	if during != nil {
		if err := waitReady(ctx, c, "http://"+listen+"/readyz", time.Minute); err != nil {
			return fail("%v", err)
		}
		logf("bqsink ready after %.1f s", time.Since(c.started).Seconds())
		if from, err = during(ctx); err != nil {
			return fail("while it ran: %v", err)
		}
		if c.done() {
			return fail("exited while records were produced")
		}
	}

	n := want()
	// Until lag 0 and every row landed; records that went elsewhere (the
	// dead-letter topic) would leave lag 0 with rows missing: give up 15s
	// after lag 0 without the rows. An upsert table takes a row per record
	// less the changes superseded in their batch (none when keys are
	// unique): read from /metrics once lag 0 is reached with rows missing,
	// when every record has been batched and the count is final.
	expect := n
	upsert := h.o.mode == sink.ModeUpsert
	superseded := func() error {
		sup, err := supersededChanges("http://"+listen+"/metrics", h.fx.topic)
		if err != nil {
			return err
		}
		out.superseded, expect = sup, n-sup
		return nil
	}
	var landedAt, lagZeroAt, lagZeroShort time.Time
	var lastLag int64 = -1
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	stop := progress(ctx, 10*time.Second, func() {
		logf("bqsink: %d of %d rows in BigQuery, lag %s (%.0f s)", h.rowCount(), expect, lagText(lastLag), time.Since(c.started).Seconds())
	})
	defer stop()
	for lagZeroAt.IsZero() {
		select {
		case <-ctx.Done():
			return fail("waiting for lag 0 and %d rows: %v (lag %s, %d rows)", n, context.Cause(ctx), lagText(lastLag),
				h.rowCount())
		case <-c.exited:
			return fail("exited before catching up: lag %s, %d of %d rows", lagText(lastLag),
				h.rowCount(), n)
		case <-tick.C:
		}
		now := time.Now()
		rows := h.rowCount()
		if rows >= expect && landedAt.IsZero() {
			landedAt = now
		}
		o, err := h.groupOffsets(ctx, group)
		if err != nil || len(o.End) != h.o.partitions*len(h.topicNames) {
			continue
		}
		lastLag = o.Lag()
		if upsert && lastLag == 0 && rows < expect {
			if err := superseded(); err != nil {
				return fail("%v", err)
			}
			if rows >= expect && landedAt.IsZero() {
				landedAt = now
			}
		}
		switch {
		case lastLag != 0:
			lagZeroShort = time.Time{}
		case rows >= expect:
			lagZeroAt = now
		case lagZeroShort.IsZero():
			lagZeroShort = now
		case now.Sub(lagZeroShort) > 15*time.Second:
			dlq, _ := h.st.GroupOffsets(ctx, group, stack.DLQTopic)
			var dead int64
			for _, e := range dlq.End {
				dead += e
			}
			return fail("lag 0 but %d of %d rows in BigQuery for 15s; %d records in the dead-letter topic %s", rows, expect, dead, stack.DLQTopic)
		}
	}
	stop()
	wall := lagZeroAt.Sub(from)
	if landedAt.IsZero() {
		landedAt = lagZeroAt
	}
	logf("bqsink caught up: lag 0 after %.2f s (every row acknowledged by BigQuery after %.2f s)", wall.Seconds(), landedAt.Sub(from).Seconds())

	hwm, hwmErr := procStatusKiB(c.pid, "VmHWM")
	if upsert {
		// Read for the report in any case: none should be, with unique keys.
		if err := superseded(); err != nil {
			return fail("%v", err)
		}
	}
	termAt := time.Now()
	c.signal(syscall.SIGTERM)
	rep, err := c.wait(ctx, time.Minute)
	if err != nil {
		return fail("after SIGTERM: %v", err)
	}
	if rep.Exit != 0 {
		return fail("exit code %d%s after SIGTERM, want 0", rep.Exit, signalNote(rep.Signal))
	}
	logf("bqsink exited 0 %.2f s after SIGTERM", time.Since(termAt).Seconds())
	if rows := h.rowCount(); rows != expect {
		if upsert {
			return fail("%d rows in %s.%s for %d records of which %d changes were superseded: want exactly %d", rows, stack.Dataset, h.fx.table, n, out.superseded, expect)
		}
		return fail("%d rows in %s.%s for %d records: want exactly one row per record", rows, stack.Dataset, h.fx.table, n)
	}
	out.rows = expect
	cpu := time.Duration(rep.UserUS+rep.SysUS) * time.Microsecond
	out.result = newResult("bqsink", n, wall, cpu, rep.MaxRSSKiB)
	if hwmErr == nil {
		out.result.VmHWMMiB = float64(hwm) / 1024
	}
	out.notes = append(out.notes,
		fmt.Sprintf("bqsink: every row acknowledged by BigQuery after %.2f s, lag 0 seen after %.2f s (it commits each acknowledged batch at once); CPU s is the process's whole life, startup to exit after SIGTERM",
			landedAt.Sub(from).Seconds(), wall.Seconds()),
		rssNote("bqsink", out.result, "before SIGTERM"))
	if upsert {
		out.notes = append(out.notes, fmt.Sprintf("bqsink: upsert: %d rows (UPSERT changes) for %d records; %d changes superseded by a later one of the same key in their batch (bqsink_changes_superseded_total)",
			expect, n, out.superseded))
	}
	return out, nil
}

// supersededChanges reads bqsink_changes_superseded_total of topic from
// the daemon's /metrics.
func supersededChanges(url, topic string) (int, error) {
	cl := &http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return 0, fmt.Errorf("reading the superseded changes: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("reading the superseded changes: %s answered %s", url, resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("reading the superseded changes: %w", err)
	}
	return parseSuperseded(string(body), topic)
}

// parseSuperseded finds bqsink_changes_superseded_total of topic in a
// Prometheus text exposition.
func parseSuperseded(text, topic string) (int, error) {
	const name = "bqsink_changes_superseded_total"
	label := `topic="` + topic + `"`
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok || !slices.Contains(strings.Split(labels, ","), label) {
			continue
		}
		fields := strings.Fields(value)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return 0, fmt.Errorf("%s{%s}: %w", name, label, err)
		}
		return int(v), nil
	}
	return 0, fmt.Errorf("the daemon's /metrics has no %s{%s}", name, label)
}

// waitReady polls url until it answers 200.
func waitReady(ctx context.Context, c *child, url string, within time.Duration) error {
	cl := &http.Client{Timeout: 2 * time.Second}
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := "no answer"
	for {
		resp, err := cl.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", url, context.Cause(ctx))
		case <-c.exited:
			return fmt.Errorf("exited before %s answered 200", url)
		case <-deadline.C:
			return fmt.Errorf("%s not 200 within %v: %s", url, within, last)
		case <-tick.C:
		}
	}
}

// runFloor runs the floor over n records: in backlog mode (from nil) the
// topic's first n, the wall time running from its start; in steady mode
// the n that during (the steady producer) produces from the offsets from,
// during starting once the floor is connected (it says floorReady), the
// wall time running from the time during returns (its first record), as
// the daemon's does. Its CPU is its whole life in either mode.
func (h *harness) runFloor(ctx context.Context, n int, from map[int32]int64, during func(context.Context) (time.Time, error)) (result, error) {
	self, err := os.Executable()
	if err != nil {
		return result{}, err
	}
	logPath := filepath.Join(h.tmp, "floor.log")
	args := []string{self, "-floor",
		"-brokers", strings.Join(h.st.Brokers(), ","), "-registry", h.st.RegistryURL(),
		"-topic", h.fx.topic, "-n", strconv.Itoa(n), "-schema", h.fx.name, "-timeout", h.o.timeout.String()}
	if from != nil {
		args = append(args, "-from", formatOffsets(from))
	}
	c, err := launch(ctx, "floor", logPath, daemonEnv(), args...)
	if err != nil {
		return result{}, err
	}
	defer c.kill()
	logf("floor started (pid %d)", c.pid)
	began := c.started
	if during != nil {
		if err := waitLine(ctx, c, logPath, floorReady, time.Minute); err != nil {
			return result{}, fmt.Errorf("floor: %v%s", err, tailNote(logPath))
		}
		logf("floor ready after %.1f s", time.Since(c.started).Seconds())
		if began, err = during(ctx); err != nil {
			return result{}, fmt.Errorf("floor: while it ran: %v%s", err, tailNote(logPath))
		}
	}
	rep, err := c.wait(ctx, h.o.timeout)
	wall := time.Since(began)
	if err != nil {
		return result{}, fmt.Errorf("floor: %v%s", err, tailNote(logPath))
	}
	if rep.Exit != 0 {
		return result{}, fmt.Errorf("floor: exit code %d%s%s", rep.Exit, signalNote(rep.Signal), tailNote(logPath))
	}
	text, err := os.ReadFile(logPath)
	if err != nil {
		return result{}, err
	}
	lines := strings.Split(strings.TrimSpace(string(text)), "\n")
	var fr floorResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &fr); err != nil {
		return result{}, fmt.Errorf("floor: its last line is not its result: %v%s", err, tailNote(logPath))
	}
	if fr.Records != n {
		return result{}, fmt.Errorf("floor: read %d records, want %d", fr.Records, n)
	}
	logf("floor read and decoded %d records (%d writer schemas) in %.2f s", fr.Records, fr.Schemas, wall.Seconds())
	cpu := time.Duration(rep.UserUS+rep.SysUS) * time.Microsecond
	r := newResult("floor", fr.Records, wall, cpu, rep.MaxRSSKiB)
	r.VmHWMMiB = float64(fr.VmHWMKiB) / 1024
	return r, nil
}

// waitLine polls a child's log until a line equals line.
func waitLine(ctx context.Context, c *child, logPath, line string, within time.Duration) error {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if text, err := os.ReadFile(logPath); err == nil && slices.Contains(strings.Split(string(text), "\n"), line) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %q: %w", line, context.Cause(ctx))
		case <-c.exited:
			return fmt.Errorf("exited before saying %q (exit code %d%s)", line, c.report.Exit, signalNote(c.report.Signal))
		case <-deadline.C:
			return fmt.Errorf("did not say %q within %v", line, within)
		case <-tick.C:
		}
	}
}

// lagText is a lag, or "unknown" before the group's offsets were read.
func lagText(lag int64) string {
	if lag < 0 {
		return "unknown"
	}
	return strconv.FormatInt(lag, 10)
}

func signalNote(sig string) string {
	if sig == "" {
		return ""
	}
	return " (" + sig + ")"
}
