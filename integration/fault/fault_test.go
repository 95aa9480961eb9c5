package fault

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sr/srfake"
	"go.uber.org/zap"
	"google.golang.org/api/option"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/netfault"
	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

// Timeouts of every fault test: short, so that faults show within seconds.
const (
	faultStall    = 15 * time.Second
	faultShutdown = 5 * time.Second
	// exitBound is the promise for SIGTERM: shutdown_timeout plus a second.
	exitBound = faultShutdown + time.Second
	// warnBound is the promise for the first warning of a failure.
	warnBound = 30 * time.Second
	// flowRate is the records per second a fault test's stream produces.
	flowRate = 300
)

// faultConfig is the daemon config of a fault test: the stack's, with short
// timeouts, a 15s stall_timeout, a 5s shutdown_timeout and the metadata
// column coverage checks read.
func faultConfig(e *itest.Env, group string) *itest.DaemonConfig {
	return itest.NewDaemonConfig(e, group).MergeYAML(`
bigquery: {timeout: 2s, append_timeout: 3s}
schema_registry: {timeout: 2s}
kafka: {request_timeout: 3s}
stall_timeout: 15s
shutdown_timeout: 5s
metadata_column: _kafka
`)
}

// stockTableName is the stock table as the daemon names it in logs.
const stockTableName = stack.Project + "." + stack.Dataset + "." + stack.StockTable

// faultProxy puts a netfault proxy in front of target (host:port), closed when
// the test ends.
func faultProxy(t *testing.T, target string) *netfault.Proxy {
	t.Helper()
	p, err := netfault.Listen(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// urlHostPort is the host:port of an http:// URL.
func urlHostPort(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// startFlowing starts a daemon and waits until it has written rows.
func startFlowing(t *testing.T, cfg *itest.DaemonConfig) *itest.Daemon {
	t.Helper()
	d := itest.StartDaemon(t, cfg)
	d.WaitLog(30*time.Second, `"consuming"`, itest.MsgIs("consuming"))
	waitRowsWritten(t, d, 1, 30*time.Second)
	return d
}

// waitRowsWritten waits until the daemon has written at least n rows.
func waitRowsWritten(t *testing.T, d *itest.Daemon, n float64, within time.Duration) {
	t.Helper()
	var last float64
	itest.WaitUntil(t, within, func() string { return fmt.Sprintf("%s to write %.0f rows (wrote %.0f)", d.Name, n, last) }, func() bool {
		m, err := d.Metrics()
		if err != nil {
			return false
		}
		last = m.Sum("bqsink_rows_written_total")
		return last >= n
	})
}

// failedLine matches the first warning of a failure of stage on a target
// that target accepts.
func failedLine(stage string, target func(string) bool) func(itest.LogLine) bool {
	return func(l itest.LogLine) bool {
		return l.Level == "warn" && l.Msg == stage+" failed; retrying" && l.Str("stage") == stage && target(l.Str("target"))
	}
}

// stillFailingLine matches the repeated warning of a failure of stage.
func stillFailingLine(stage string) func(itest.LogLine) bool {
	return func(l itest.LogLine) bool {
		return l.Level == "warn" && l.Msg == stage+" still failing; retrying" && l.Str("stage") == stage
	}
}

// recoveredLine matches the line that ends a failure of stage.
func recoveredLine(stage string) func(itest.LogLine) bool {
	return func(l itest.LogLine) bool {
		return l.Level == "info" && l.Msg == "recovered" && l.Str("stage") == stage
	}
}

// awaitFirstWarning waits for the first warning of stage logged after line
// index from, requires it within warnBound of since, checks its fields and
// logs how long it took. It returns the line and its index.
func awaitFirstWarning(t *testing.T, d *itest.Daemon, from int, since time.Time, stage string, target func(string) bool) (itest.LogLine, int) {
	t.Helper()
	l, i := d.WaitLogFrom(from, warnBound+5*time.Second, "warning of a failing "+stage, failedLine(stage, target))
	took := time.Since(since)
	t.Logf("first warning %v after the fault: %s", took.Round(time.Millisecond), l.Raw)
	if took > warnBound {
		t.Errorf("first %s warning %v after the fault, promised within %v", stage, took.Round(time.Millisecond), warnBound)
	}
	if l.Num("attempts") < 1 || l.Str("error") == "" || l.Str("failing_for") == "" || l.Str("target") == "" {
		t.Errorf("warning lacks attempts, failing_for, target or error: %s", l.Raw)
	}
	return l, i
}

// awaitRecovered waits for the "recovered" line of stage after line index
// from and logs how long after healedAt (what: "healing", "the fault") it
// came.
func awaitRecovered(t *testing.T, d *itest.Daemon, from int, healedAt time.Time, what, stage string, within time.Duration) itest.LogLine {
	t.Helper()
	l, _ := d.WaitLogFrom(from, within, `"recovered" of `+stage, recoveredLine(stage))
	t.Logf("recovered %v after %s: %s", time.Since(healedAt).Round(time.Millisecond), what, l.Raw)
	return l
}

// awaitNotReady polls /readyz until it answers 503 with a body containing
// every name, failing the test if that has not happened by deadline. It
// returns the body.
func awaitNotReady(t *testing.T, d *itest.Daemon, since, deadline time.Time, names ...string) string {
	t.Helper()
	var code int
	var body string
	for {
		code, body = d.Get("/readyz")
		if code == http.StatusServiceUnavailable && itest.ContainsEvery(body, names...) {
			t.Logf("/readyz 503 %v after the fault: %s", time.Since(since).Round(time.Millisecond), strings.TrimSpace(body))
			return body
		}
		if time.Now().After(deadline) {
			t.Errorf("/readyz %v after the fault: %d %s; want 503 naming %q", time.Since(since).Round(time.Millisecond), code, strings.TrimSpace(body), names)
			return body
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-d.Exited():
			t.Fatalf("%s exited (%v) while waiting for /readyz 503", d.Name, d.Status())
		}
	}
}

// retriesOf is bqsink_retries_total of stage.
func retriesOf(d *itest.Daemon, stage string) float64 {
	m, err := d.Metrics()
	if err != nil {
		return -1
	}
	return m.Sum("bqsink_retries_total", "stage", stage)
}

// requireRetriesGrew fails the test unless stage's retry counter is above
// before.
func requireRetriesGrew(t *testing.T, d *itest.Daemon, stage string, before float64) {
	t.Helper()
	var now float64
	itest.WaitUntil(t, 10*time.Second, func() string {
		return fmt.Sprintf("bqsink_retries_total{stage=%q} to grow from %.0f (now %.0f)", stage, before, now)
	}, func() bool {
		now = retriesOf(d, stage)
		return now > before
	})
	t.Logf("bqsink_retries_total{stage=%q}: %.0f before the fault, %.0f during it", stage, before, now)
}

// requireRepeatedIfLong checks the repeat promise over a failure that
// lasted failedFor: past the first warning by more than the 30s repeat
// period plus the monitor's 5s tick, a "still failing" line with a higher
// attempt count must have come between first (the index of the first
// warning) and the recovery.
func requireRepeatedIfLong(t *testing.T, d *itest.Daemon, stage string, first itest.LogLine, firstAt int, failedFor time.Duration) {
	t.Helper()
	var still []itest.LogLine
	for _, l := range d.Logs()[firstAt:] {
		if stillFailingLine(stage)(l) {
			still = append(still, l)
		}
	}
	prev := first
	for _, l := range still {
		t.Logf("%q after %v (attempts %v)", l.Msg, logTime(l).Sub(logTime(prev)).Round(time.Millisecond), l.Num("attempts"))
		prev = l
	}
	t.Logf("%d %q lines over a failure of %v", len(still), stage+" still failing; retrying", failedFor.Round(time.Millisecond))
	if failedFor < 36*time.Second {
		return
	}
	if len(still) == 0 {
		t.Errorf("a %s failure lasting %v was warned about once; promised again every 30s", stage, failedFor.Round(time.Second))
		return
	}
	if still[0].Num("attempts") <= first.Num("attempts") {
		t.Errorf("repeated warning's attempts %v not above the first's %v", still[0].Num("attempts"), first.Num("attempts"))
	}
}

// logTime is when the daemon wrote a line, by its time field.
func logTime(l itest.LogLine) time.Time {
	at, _ := time.Parse("2006-01-02T15:04:05.000Z0700", l.Str("time"))
	return at
}

// failedFor is the recovered line's failed_for field, which zap writes as
// seconds (a number) or as a Go duration string.
func failedFor(l itest.LogLine) time.Duration {
	switch v := l.Fields["failed_for"].(type) {
	case float64:
		return time.Duration(v * float64(time.Second))
	case string:
		d, _ := time.ParseDuration(v)
		return d
	}
	return 0
}

// terminateDuringFault sends SIGTERM while a fault lasts and requires the
// exit within shutdown_timeout plus a second: code 0, or 1 with a line
// saying what was not flushed. A process killed by the signal fails.
func terminateDuringFault(t *testing.T, d *itest.Daemon) itest.ExitStatus {
	t.Helper()
	from := len(d.Logs())
	d.Terminate()
	st := d.Wait(exitBound)
	t.Logf("SIGTERM during the fault: %v", st)
	switch {
	case st.Signal != 0:
		t.Errorf("%s killed by %v, want a clean exit", d.Name, st.Signal)
	case st.Code == 1:
		var why []string
		for _, l := range d.Logs()[from:] {
			if l.Level != "error" {
				continue
			}
			if l.Msg == "bqsink stopped with an error" && strings.Contains(l.Str("error"), "shutdown incomplete") ||
				strings.HasPrefix(l.Msg, "shutdown did not finish within shutdown_timeout") {
				why = append(why, l.Raw)
			}
		}
		if len(why) == 0 {
			t.Errorf("exit 1 without a line saying what was not flushed; logs since SIGTERM:\n%s", itest.RawLines(d.Logs()[from:]))
		} else {
			t.Logf("what was not flushed: %s", strings.Join(why, "; "))
		}
	case st.Code != 0:
		t.Errorf("%s after SIGTERM: %v, want 0 or 1", d.Name, st)
	}
	if st.Took > exitBound {
		t.Errorf("exit took %v after SIGTERM, promised within %v", st.Took, exitBound)
	}
	return st
}

// logAheadOfCommits logs, after a daemon stopped, how many rows of the
// stock table lie beyond group's committed offsets: rows BigQuery wrote
// whose answer never came back (they will be written again) or that were
// acknowledged and not committed.
func logAheadOfCommits(t *testing.T, e *itest.Env, group string) {
	t.Helper()
	t.Logf("after the exit, rows beyond the committed offsets: %d", itest.RowsAheadOfCommits(t, e, group))
}

// finishClean lets the stream stop, waits until the group committed every
// record, stops the daemon with SIGTERM (exit 0 within the bound) and checks
// that every produced record has a row.
func finishClean(t *testing.T, e *itest.Env, s *itest.Stream, d *itest.Daemon, group string, began time.Time) {
	t.Helper()
	s.Finish(60 * time.Second)
	itest.WaitCaughtUp(t, e, group, 90*time.Second)
	t.Logf("caught up %v after the start: %d records", time.Since(began).Round(time.Millisecond), s.Produced())
	st := d.Shutdown(exitBound)
	t.Logf("SIGTERM after catching up: %v", st)
	itest.LogProblems(t, d)
	c := itest.CheckCoverage(t, e, s, "_kafka")
	t.Logf("%v", c)
}

// recordFeed produces records made by mk to Kafka at a steady rate in the
// background until stopped, remembering each one's topic, partition and
// offset. Its methods are goroutine-safe.
type recordFeed struct {
	t    *testing.T
	quit chan struct{}
	done chan struct{}

	mu   sync.Mutex
	recs []*kgo.Record // produced, with partition and offset
	err  error
}

// startRecordFeed produces perSecond records a second, each made by mk from the
// i-th update of a generator seeded with seed, until stop is called or the
// test ends.
func startRecordFeed(t *testing.T, e *itest.Env, perSecond int, seed uint64, mk func(stack.StockUpdate) (*kgo.Record, error)) *recordFeed {
	t.Helper()
	f := &recordFeed{t: t, quit: make(chan struct{}), done: make(chan struct{})}
	go f.run(e, perSecond, seed, mk)
	t.Cleanup(func() {
		f.stopOnce()
		<-f.done
	})
	return f
}

func (f *recordFeed) run(e *itest.Env, perSecond int, seed uint64, mk func(stack.StockUpdate) (*kgo.Record, error)) {
	defer close(f.done)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	per := max(perSecond/10, 1)
	for chunk := uint64(1); ; chunk++ {
		select {
		case <-f.quit:
			return
		case <-f.t.Context().Done():
			return
		case <-tick.C:
		}
		var batch []*kgo.Record
		for _, u := range stack.StockUpdates(per, seed^chunk) {
			r, err := mk(u)
			if err != nil {
				f.fail(err)
				return
			}
			batch = append(batch, r)
		}
		ctx, cancel := context.WithTimeout(f.t.Context(), 30*time.Second)
		err := e.St.Produce(ctx, batch...)
		cancel()
		if err != nil {
			if f.t.Context().Err() == nil {
				f.fail(err)
			}
			return
		}
		f.mu.Lock()
		f.recs = append(f.recs, batch...)
		f.mu.Unlock()
	}
}

func (f *recordFeed) fail(err error) {
	f.t.Errorf("record feed: %v", err)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *recordFeed) stopOnce() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.quit:
	default:
		close(f.quit)
	}
}

// stop stops the feed, waits for it and returns what it produced, failing
// the test if a produce failed.
func (f *recordFeed) stop() []*kgo.Record {
	f.t.Helper()
	f.stopOnce()
	<-f.done
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		f.t.Fatalf("feed: %v", f.err)
	}
	return append([]*kgo.Record(nil), f.recs...)
}

// faultCase is a fault that TestFault injects while records flow, and what
// the daemon must say about it.
type faultCase struct {
	name string
	// setup starts the case's stack, stream and daemon, consuming as group,
	// and returns them with the fault's inject and heal and the case's own
	// checks. Each run of a case sets up a stack of its own.
	setup func(t *testing.T, group string) *faultRig
	// stage and target are the first warning's: a failure of stage on a
	// target that target accepts (it gets the rig, for the group and
	// addresses the warning may name).
	stage  string
	target func(r *faultRig, target string) bool
	// ready is what a failing /readyz must name (nil: the target the first
	// warning named).
	ready []string
	// window is how long the fault lasts before it is healed; when nothing
	// heals it, how long /readyz may take to fail.
	window time.Duration
	// recoverWithin bounds the "recovered" line after healing (after the
	// injection when nothing heals it).
	recoverWithin time.Duration
}

// faultRig is what a fault case's setup started: the stack, the daemon's
// config, the daemon and the stream whose every record must land, and the
// fault. The hooks a case leaves nil are skipped.
type faultRig struct {
	e     *itest.Env
	group string
	cfg   *itest.DaemonConfig
	d     *itest.Daemon
	// s is the stream; a case whose stream starts with the fault sets it in
	// inject.
	s      *itest.Stream
	inject func()
	// heal ends the fault; nil when the daemon must get over it by itself.
	heal func()
	// afterRecovery checks more once the healed run's daemon recovered and
	// /readyz is 200 again, took after the injection.
	afterRecovery func(took time.Duration)
	// beforeFinish runs before the records are counted (records produced
	// outside the stream noted in it).
	beforeFinish func()
	// afterFinish checks more once every record landed.
	afterFinish func()
}

// The runtime faults: each is injected while records flow, and
//   - healed after its window (TestFault/<name>): the daemon must warn
//     naming the stage and target within 30s, count the retries, fail
//     /readyz once the fault outlasts stall_timeout, warn again every 30s
//     while it lasts, log "recovered" once healed, be ready again, and lose
//     nothing;
//   - with SIGTERM after the first warning (TestFault/<name>/SIGTERM): the
//     exit must come within shutdown_timeout plus a second, and once the
//     fault is healed a fresh daemon completes everything.
//
// A fault of another shape has a test of its own below: the unanswered
// fetches, the table deleted at runtime, the problems at startup.
func TestFault(t *testing.T) {
	itest.SkipShortParallel(t)
	for _, c := range faultCases() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			// Registered first, so that it runs even if the healed run
			// fails; it starts once that run's function returns.
			t.Run("SIGTERM", func(t *testing.T) {
				t.Parallel()
				faultAndTerminate(t, c)
			})
			faultAndHeal(t, c)
		})
	}
}

// faultCases are TestFault's faults.
func faultCases() []faultCase {
	return []faultCase{{
		// The Storage Write endpoint closed for 20s mid-stream: connections
		// reset, new ones refused.
		name: "StorageWriteRefused",
		setup: func(t *testing.T, group string) *faultRig {
			var p *netfault.Proxy
			r := writeFaultRig(t, group, func(target string) string { p = faultProxy(t, target); return p.Addr() })
			r.inject, r.heal = p.Refuse, func() { mustPass(t, p) }
			return r
		},
		stage: "append", target: stockTable, ready: []string{stockTableName},
		window: 20 * time.Second, recoverWithin: 45 * time.Second,
	}, {
		// The Storage Write endpoint black-holed for 30s mid-stream: sockets
		// stay open, nothing gets through, on existing and new connections
		// alike.
		name: "StorageWriteFrozen",
		setup: func(t *testing.T, group string) *faultRig {
			var p *netfault.Proxy
			r := writeFaultRig(t, group, func(target string) string { p = faultProxy(t, target); return p.Addr() })
			r.inject, r.heal = func() { mustFreeze(t, p) }, func() { mustPass(t, p) }
			return r
		},
		stage: "append", target: stockTable, ready: []string{stockTableName},
		window: 30 * time.Second, recoverWithin: 45 * time.Second,
	}, {
		// The open Storage Write connection stops answering mid-stream and
		// never resumes, while new connections work: only the keepalive (a
		// ping every 30s, 10s to answer) can tell, and must replace it, about
		// 40s in. With SIGTERM, the hung connection must not hold the exit.
		name: "StorageWriteConnectionHangs",
		setup: func(t *testing.T, group string) *faultRig {
			var p *hangingProxy
			r := writeFaultRig(t, group, func(target string) string { p = listenHanging(t, target); return p.Addr() })
			var conns int
			r.inject = func() { conns = p.hangOpen() }
			r.afterRecovery = func(took time.Duration) {
				// Pings every 30s, 10s to answer, then a new connection and
				// the next retry (backoff capped at 30s, but by then about
				// 12s).
				if took > 60*time.Second {
					t.Errorf("recovered %v after the connection hung; the keepalive should replace it in about 40s", took.Round(time.Millisecond))
				}
				t.Logf("hung %d connections; the proxy accepted %d in all", conns, p.accepted())
				if p.accepted() <= conns {
					t.Errorf("no new connection after the hang: %d accepted, %d hung", p.accepted(), conns)
				}
			}
			return r
		},
		stage: "append", target: stockTable, ready: []string{stockTableName},
		window:        35 * time.Second, // nothing heals it: /readyz must fail before the keepalive fires
		recoverWithin: 70 * time.Second,
	}, {
		// The BigQuery REST endpoint answers after 5s, beyond
		// bigquery.timeout (2s), for 20s while v2 records need the table to
		// gain v2's columns.
		name: "RESTSlowWhileTableEvolves",
		setup: func(t *testing.T, group string) *faultRig {
			r, startStream := evolveFaultRig(t, group, nil)
			r.inject = func() { r.e.St.BigQuery.SetRESTLatency(5 * time.Second); startStream() }
			r.heal = func() { r.e.St.BigQuery.SetRESTLatency(0) }
			return r
		},
		stage: "table", target: stockTable, ready: []string{stockTableName},
		window: 20 * time.Second, recoverWithin: 45 * time.Second,
	}, {
		// The BigQuery REST endpoint closed for 20s while v2 records need the
		// table to gain v2's columns.
		name: "RESTRefusedWhileTableEvolves",
		setup: func(t *testing.T, group string) *faultRig {
			var p *netfault.Proxy
			r, startStream := evolveFaultRig(t, group, func(target string) string {
				p = faultProxy(t, urlHostPort(t, target))
				return "http://" + p.Addr()
			})
			r.inject = func() { p.Refuse(); startStream() }
			r.heal = func() { mustPass(t, p) }
			return r
		},
		stage: "table", target: stockTable, ready: []string{stockTableName},
		window: 20 * time.Second, recoverWithin: 45 * time.Second,
	}, {
		// The schema registry closed for 20s while records of a schema ID
		// the daemon has not seen arrive.
		name:  "RegistryRefusedWithUncachedSchema",
		setup: registryFaultRig(func(_ *testing.T, p *netfault.Proxy) { p.Refuse() }),
		stage: "schema", target: registry,
		window: 20 * time.Second, recoverWithin: 45 * time.Second,
	}, {
		// The schema registry black-holed for 20s (connections accepted,
		// never answered) while records of a schema ID the daemon has not
		// seen arrive: every registry call is bounded by
		// schema_registry.timeout.
		name:  "RegistryFrozenWithUncachedSchema",
		setup: registryFaultRig(mustFreeze),
		stage: "schema", target: registry,
		window: 20 * time.Second, recoverWithin: 45 * time.Second,
	}, {
		// The broker stops answering offset commits for 20s while records
		// flow: each commit is bounded by kafka.request_timeout and retried;
		// nothing is lost. With SIGTERM the final commit cannot succeed, so
		// the exit is 1 saying so, within the bound.
		name: "KafkaCommitUnanswered",
		setup: func(t *testing.T, group string) *faultRig {
			e := itest.NewEnv(t)
			hang := unanswered(e, kmsg.OffsetCommit)
			r := flowingRig(t, e, group, faultConfig(e, group))
			r.inject, r.heal = func() { hang.Store(true) }, func() { hang.Store(false) }
			return r
		},
		stage: "commit", target: consumerGroup,
		window: 20 * time.Second, recoverWithin: 45 * time.Second,
	}}
}

// stockTable accepts the stock table as the daemon names it.
func stockTable(_ *faultRig, s string) bool { return s == stockTableName }

// consumerGroup accepts the rig's consumer group as the daemon names it.
func consumerGroup(r *faultRig, s string) bool { return s == "group "+r.group }

// registry accepts the registry's name in logs: its address or words
// naming it.
func registry(r *faultRig, s string) bool {
	url, _ := r.cfg.Get("schema_registry.url").(string)
	return strings.Contains(s, "registry") || strings.Contains(s, strings.TrimPrefix(url, "http://"))
}

// faultAndHeal runs c healed: it injects the fault while records flow,
// requires the first warning within warnBound, the retry counter to grow
// and /readyz to fail once the fault outlasts stall_timeout, heals it after
// its window, requires the "recovered" line, the repeated warnings if it
// lasted long enough, and /readyz 200 again, then that every record lands.
func faultAndHeal(t *testing.T, c faultCase) {
	began := time.Now()
	r := c.setup(t, "g-"+c.name)
	d := r.d
	target := func(s string) bool { return c.target(r, s) }
	before := retriesOf(d, c.stage)
	from := len(d.Logs())
	at := time.Now()
	r.inject()
	first, i := awaitFirstWarning(t, d, from, at, c.stage, target)
	requireRetriesGrew(t, d, c.stage, before)
	if c.window > faultStall {
		names := c.ready
		if names == nil {
			names = []string{first.Str("target")}
		}
		awaitNotReady(t, d, at, at.Add(c.window), names...)
	}
	healed, what := at, "the fault (never healed)"
	if r.heal != nil {
		waitOutWindow(t, at.Add(c.window))
		healed, what = time.Now(), "healing"
		r.heal()
		t.Logf("healed %v after the fault", healed.Sub(at).Round(time.Millisecond))
	}
	rec := awaitRecovered(t, d, i, healed, what, c.stage, c.recoverWithin)
	recovered := time.Since(at)
	requireRepeatedIfLong(t, d, c.stage, first, i, failedFor(rec))
	d.WaitHTTP("/readyz", http.StatusOK, 30*time.Second)
	if r.afterRecovery != nil {
		r.afterRecovery(recovered)
	}
	finishRig(t, r, d, began)
}

// faultAndTerminate runs c with SIGTERM: it injects the fault while records
// flow, waits for its first warning, sends SIGTERM while it lasts and
// requires the exit within the bound, heals it, logs the rows beyond the
// commits, and requires that a fresh daemon makes every record land.
func faultAndTerminate(t *testing.T, c faultCase) {
	began := time.Now()
	r := c.setup(t, "g-"+c.name+"-term")
	from := len(r.d.Logs())
	at := time.Now()
	r.inject()
	awaitFirstWarning(t, r.d, from, at, c.stage, func(s string) bool { return c.target(r, s) })
	terminateDuringFault(t, r.d)
	if r.heal != nil {
		r.heal()
	}
	logAheadOfCommits(t, r.e, r.group)
	finishRig(t, r, itest.StartDaemon(t, r.cfg), began)
}

// finishRig is finishClean of r's stream and group with d, with r's hooks
// before and after.
func finishRig(t *testing.T, r *faultRig, d *itest.Daemon, began time.Time) {
	t.Helper()
	if r.beforeFinish != nil {
		r.beforeFinish()
	}
	finishClean(t, r.e, r.s, d, r.group, began)
	if r.afterFinish != nil {
		r.afterFinish()
	}
}

// waitOutWindow waits until the moment comes (a fault window, not a condition).
func waitOutWindow(t *testing.T, until time.Time) {
	t.Helper()
	select {
	case <-time.After(time.Until(until)):
	case <-t.Context().Done():
		t.Fatal("test ended waiting out a fault window")
	}
}

// flowingRig starts a stream of records on e and a daemon with cfg
// consuming them as group, and waits until it has written rows.
func flowingRig(t *testing.T, e *itest.Env, group string, cfg *itest.DaemonConfig) *faultRig {
	t.Helper()
	s := itest.StartStream(t, e, 1000, flowRate, itest.Seed(t))
	return &faultRig{e: e, group: group, cfg: cfg, s: s, d: startFlowing(t, cfg)}
}

// writeFaultRig is a flowing rig whose daemon reaches the Storage Write
// endpoint at the address via returns for it (a proxy to it).
func writeFaultRig(t *testing.T, group string, via func(target string) string) *faultRig {
	t.Helper()
	e := itest.NewEnv(t)
	cfg := faultConfig(e, group).Set("bigquery.grpc_endpoint", via(e.St.BigQuery.GRPCEndpoint()))
	return flowingRig(t, e, group, cfg)
}

func mustPass(t *testing.T, p *netfault.Proxy) {
	t.Helper()
	if err := p.Pass(); err != nil {
		t.Fatal(err)
	}
}

func mustFreeze(t *testing.T, p *netfault.Proxy) {
	t.Helper()
	if err := p.Freeze(); err != nil {
		t.Fatal(err)
	}
}

// hangingProxy forwards TCP connections to a target and can hang the
// connections open at a moment: they stay open and forward nothing, ever,
// like a peer that silently went away, while later connections pass.
// netfault's Freeze cannot do this: it holds new connections too. Its
// methods are goroutine-safe.
type hangingProxy struct {
	target string
	ln     net.Listener
	closed chan struct{}
	wg     sync.WaitGroup

	mu    sync.Mutex
	links map[*hangLink]bool // open links; true once hung
	conns int
}

type hangLink struct {
	client, server net.Conn
	hung           chan struct{}
}

// listenHanging starts a hangingProxy to target, closed when the test ends.
func listenHanging(t *testing.T, target string) *hangingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &hangingProxy{target: target, ln: ln, closed: make(chan struct{}), links: map[*hangLink]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *hangingProxy) Addr() string { return p.ln.Addr().String() }

// accepted is how many connections the proxy has accepted.
func (p *hangingProxy) accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conns
}

// hangOpen hangs every connection open now and returns how many.
func (p *hangingProxy) hangOpen() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for l, hung := range p.links {
		if !hung {
			p.links[l] = true
			close(l.hung)
			n++
		}
	}
	return n
}

func (p *hangingProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.DialTimeout("tcp", p.target, 10*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		l := &hangLink{client: c, server: s, hung: make(chan struct{})}
		p.mu.Lock()
		p.links[l] = false
		p.conns++
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pump(l, c, s)
		go p.pump(l, s, c)
	}
}

// pump copies src to dst until either ends or the link hangs; a hung link
// holds what it reads and keeps both sockets open until the proxy closes.
func (p *hangingProxy) pump(l *hangLink, src, dst net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-l.hung:
			<-p.closed
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			select {
			case <-l.hung:
				<-p.closed
				return
			default:
			}
			_ = l.client.Close()
			_ = l.server.Close()
			p.mu.Lock()
			delete(p.links, l)
			p.mu.Unlock()
			return
		}
	}
}

// close stops listening, closes every connection and waits for the pumps.
func (p *hangingProxy) close() {
	close(p.closed)
	_ = p.ln.Close()
	p.mu.Lock()
	for l := range p.links {
		_ = l.client.Close()
		_ = l.server.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// evolveFaultRig is a rig whose stock table the daemon created from v1
// records only, so that the stream's v2 records make it add columns: a
// REST call. restVia puts the REST endpoint behind a proxy (nil: direct).
// Its daemon is caught up on the v1 records and its stream not started:
// startStream starts it, noting those records in it. Once every record
// landed, the table must have v2's columns.
func evolveFaultRig(t *testing.T, group string, restVia func(target string) string) (r *faultRig, startStream func()) {
	t.Helper()
	e := itest.NewEnv(t)
	seed := itest.Seed(t)
	var v1 []*kgo.Record
	for _, u := range stack.StockUpdates(600, seed) {
		if !u.V2 {
			rec, err := e.Schemas.Record(u)
			if err != nil {
				t.Fatal(err)
			}
			v1 = append(v1, rec)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := e.St.Produce(ctx, v1...); err != nil {
		t.Fatal(err)
	}
	cfg := faultConfig(e, group)
	if restVia != nil {
		cfg.Set("bigquery.endpoint", restVia(e.St.BigQuery.RESTEndpoint()))
	}
	d := itest.StartDaemon(t, cfg)
	itest.WaitCaughtUp(t, e, group, 30*time.Second)
	if cols := tableColumns(t, e, stack.StockTable); cols["reason"] || !cols["delta"] {
		t.Fatalf("after the v1 records, the table has columns %v; want v1's only", cols)
	}
	t.Logf("table created from %d v1 records", len(v1))
	r = &faultRig{e: e, group: group, cfg: cfg, d: d, afterFinish: func() { requireEvolved(t, e) }}
	return r, func() {
		r.s = itest.StartStream(t, e, 1000, flowRate, seed+1)
		r.s.Note(v1)
	}
}

// tableColumns is the set of a table's top-level column names, read with
// the BigQuery client from the test server's REST endpoint.
func tableColumns(t *testing.T, e *itest.Env, table string) map[string]bool {
	t.Helper()
	md := tableMetadata(t, e, table)
	cols := map[string]bool{}
	for _, f := range md.Schema {
		cols[f.Name] = true
	}
	return cols
}

// bigQueryClient is a BigQuery client of the test server's REST endpoint,
// as a user's tool would use it, closed when the test ends.
func bigQueryClient(t *testing.T, e *itest.Env) *bigquery.Client {
	t.Helper()
	cl, err := bigquery.NewClient(t.Context(), stack.Project, option.WithEndpoint(e.St.BigQuery.RESTEndpoint()), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}

func tableMetadata(t *testing.T, e *itest.Env, table string) *bigquery.TableMetadata {
	t.Helper()
	md, err := bigQueryClient(t, e).Dataset(stack.Dataset).Table(table).Metadata(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return md
}

// requireEvolved fails the test unless the stock table has v2's columns.
func requireEvolved(t *testing.T, e *itest.Env) {
	t.Helper()
	if cols := tableColumns(t, e, stack.StockTable); !cols["reason"] || !cols["unit_cost"] {
		t.Errorf("table columns %v lack v2's", cols)
	}
}

// registryFaultRig is the setup of an outage of the registry, breakIt on a
// proxy in front of it: a flowing rig whose daemon has written the
// stream's v1 and v2 records (both schema IDs cached), and whose fault
// breaks the registry, then registers a v3 and feeds records with its
// (uncached) ID. v3 has v2's fields under a new doc: only the registry
// stands in the way. The v3 records are noted in the stream before the
// finish.
func registryFaultRig(breakIt func(*testing.T, *netfault.Proxy)) func(t *testing.T, group string) *faultRig {
	return func(t *testing.T, group string) *faultRig {
		t.Helper()
		e := itest.NewEnv(t)
		p := faultProxy(t, urlHostPort(t, e.St.RegistryURL()))
		cfg := faultConfig(e, group).Set("schema_registry.url", "http://"+p.Addr())
		seed := itest.Seed(t)
		s := itest.StartStream(t, e, 1000, flowRate, seed)
		d := startFlowing(t, cfg)
		waitRowsWritten(t, d, 300, 30*time.Second) // v1 and v2 both resolved by now
		v2 := stack.Schema("sms_physical_stock_updates.v2.avsc")
		v3 := strings.Replace(v2, `"doc": "v2: backward compatible with v1 (new optional fields only).",`, `"doc": "v3: v2's fields, new doc.",`, 1)
		if v3 == v2 {
			t.Fatal("v2 fixture: doc not found")
		}
		var f *recordFeed
		r := &faultRig{e: e, group: group, cfg: cfg, d: d, s: s}
		r.inject = func() {
			breakIt(t, p)
			id, err := e.St.Register(stack.StockSubject, v3)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("registered v3 as schema ID %d while the registry is down", id)
			f = startRecordFeed(t, e, 50, seed+1, func(u stack.StockUpdate) (*kgo.Record, error) {
				if !u.V2 {
					u.V2, u.Reason = true, "OTHER"
				}
				rec, err := e.Schemas.Record(u)
				if err != nil {
					return nil, err
				}
				rec.Value = stack.WireFormat(id, rec.Value[5:]) // v2's body is v3's
				return rec, nil
			})
		}
		r.heal = func() { mustPass(t, p) }
		r.beforeFinish = func() {
			recs := f.stop()
			t.Logf("%d records of v3", len(recs))
			s.Note(recs)
		}
		return r
	}
}

// The second topic of the deleted-table tests and its table.
const (
	otherTopic     = "stock_other_topic"
	otherTable     = "stock_other"
	otherTableName = stack.Project + "." + stack.Dataset + "." + otherTable
)

// deletedTableEnv is a stack with two topics routed to two existing tables
// (created by a warm-up run of the sink with auto_create_tables on, under
// group), the stream on the stock topic, a feed on the other one, and a
// daemon config with auto_create_tables off, consuming both as group.
func deletedTableEnv(t *testing.T, group string) (*itest.Env, *itest.DaemonConfig, *itest.Stream, *recordFeed) {
	t.Helper()
	e := itest.NewEnv(t)
	ctx := t.Context()
	if err := e.St.CreateTopic(ctx, otherTopic, 3); err != nil {
		t.Fatal(err)
	}
	seed := itest.Seed(t)
	toOther := func(u stack.StockUpdate) (*kgo.Record, error) {
		r, err := e.Schemas.Record(u)
		if err != nil {
			return nil, err
		}
		r.Topic = otherTopic
		return r, nil
	}
	var stockWarm, otherWarm []*kgo.Record
	for _, u := range stack.StockUpdates(30, seed) {
		r, err := e.Schemas.Record(u)
		if err != nil {
			t.Fatal(err)
		}
		o, err := toOther(u)
		if err != nil {
			t.Fatal(err)
		}
		stockWarm, otherWarm = append(stockWarm, r), append(otherWarm, o)
	}
	if err := e.St.Produce(ctx, append(append([]*kgo.Record(nil), stockWarm...), otherWarm...)...); err != nil {
		t.Fatal(err)
	}
	warm := e.St.Config(group, stack.StockTopic, otherTopic)
	warm.Tables = map[string]sink.TableRoute{stack.StockTopic: sink.Route(stack.StockTable), otherTopic: sink.Route(otherTable)}
	warm.MetadataColumn = "_kafka"
	r := itest.StartSink(ctx, t, e.St, warm, zap.NewNop())
	for _, topic := range []string{stack.StockTopic, otherTopic} {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := e.St.WaitCommitted(wctx, group, topic)
		cancel()
		if err != nil {
			t.Fatalf("warm-up: %s: %v", topic, err)
		}
	}
	if err := r.Stop(); err != nil {
		t.Fatalf("warm-up sink: %v", err)
	}

	s := itest.StartStream(t, e, 1000, flowRate, seed+1)
	s.Note(stockWarm)
	f := startRecordFeed(t, e, 100, seed+2, toOther)
	cfg := faultConfig(e, group).
		Set("kafka.topics", []string{stack.StockTopic, otherTopic}).
		Set("tables", map[string]any{stack.StockTopic: stack.StockTable, otherTopic: otherTable}).
		Set("bigquery.auto_create_tables", false)
	return e, cfg, s, f
}

// operatorLine matches a failure only an operator can fix, of target.
func operatorLine(target string) func(itest.LogLine) bool {
	return func(l itest.LogLine) bool {
		return l.Level == "error" && strings.HasPrefix(l.Msg, "needs an operator") && l.Str("target") == target
	}
}

// deleteTable deletes a table as an operator would, with the BigQuery
// client, and returns its metadata from before, and the other topic's end
// offsets right after: records from there on were produced after the table
// was gone.
func deleteTable(t *testing.T, e *itest.Env, group, table string) (*bigquery.TableMetadata, map[int32]int64) {
	t.Helper()
	ref := bigQueryClient(t, e).Dataset(stack.Dataset).Table(table)
	md, err := ref.Metadata(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := ref.Delete(t.Context()); err != nil {
		t.Fatal(err)
	}
	o, err := e.St.GroupOffsets(t.Context(), group, otherTopic)
	if err != nil {
		t.Fatal(err)
	}
	return md, o.End
}

// recreateTable creates a table again with the schema it had.
func recreateTable(t *testing.T, e *itest.Env, table string, md *bigquery.TableMetadata) {
	t.Helper()
	if err := bigQueryClient(t, e).Dataset(stack.Dataset).Table(table).Create(t.Context(), &bigquery.TableMetadata{Schema: md.Schema}); err != nil {
		t.Fatal(err)
	}
}

// committed is group's committed offsets on topic.
func committed(t *testing.T, e *itest.Env, group, topic string) map[int32]int64 {
	t.Helper()
	o, err := e.St.GroupOffsets(t.Context(), group, topic)
	if err != nil {
		t.Fatal(err)
	}
	return o.Committed
}

func offsetSum(m map[int32]int64) int64 {
	var n int64
	for _, o := range m {
		n += max(o, 0)
	}
	return n
}

// finishDeleted stops the feed and the stream, waits until group committed
// both topics, stops d with SIGTERM (exit 0), checks the stock table's
// coverage, and requires a row in the other table for every record
// produced to it from after (per partition) on: the rows written before
// the deletion went with the table.
func finishDeleted(t *testing.T, e *itest.Env, s *itest.Stream, f *recordFeed, d *itest.Daemon, group string, after map[int32]int64) {
	t.Helper()
	recs := f.stop()
	s.Finish(60 * time.Second)
	itest.WaitCaughtUp(t, e, group, 90*time.Second)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	if _, err := e.St.WaitCommitted(ctx, group, otherTopic); err != nil {
		t.Fatalf("%s not caught up: %v", otherTopic, err)
	}
	st := d.Shutdown(exitBound)
	t.Logf("SIGTERM after catching up: %v", st)
	itest.LogProblems(t, d)
	t.Logf("stock table: %v", itest.CheckCoverage(t, e, s, "_kafka"))

	rows := map[itest.Origin]int{}
	for _, o := range itest.ReadOrigins(t, e, otherTable, "_kafka") {
		rows[o]++
	}
	var want, missing, before, lostBefore int
	var first []string
	for _, r := range recs {
		n := rows[itest.Origin{Topic: otherTopic, Partition: r.Partition, Offset: r.Offset}]
		if r.Offset < after[r.Partition] {
			before++
			if n == 0 {
				lostBefore++
			}
			continue
		}
		want++
		if n == 0 {
			missing++
			if len(first) < 10 {
				first = append(first, fmt.Sprintf("%d@%d", r.Partition, r.Offset))
			}
		}
	}
	t.Logf("%s: %d records produced after the deletion, %d missing; of %d produced before it, %d went with the deleted table", otherTable, want, missing, before, lostBefore)
	if want == 0 || missing > 0 {
		t.Errorf("%s: %d of %d records produced after the deletion have no row; first: %v", otherTable, missing, want, first)
	}
}

// A table deleted at runtime with auto_create_tables off: its partitions
// stall while the other table's keep flowing; an error line names it once a
// minute; /readyz fails naming it; once an operator recreates it,
// everything lands.
func TestFaultTableDeletedAtRuntime(t *testing.T) {
	itest.SkipShortParallel(t)
	const group = "g-table-deleted"
	e, cfg, s, f := deletedTableEnv(t, group)
	d := startFlowing(t, cfg)
	itest.WaitUntil(t, 30*time.Second, func() string { return "rows in " + otherTable }, func() bool {
		return d.Metric("bqsink_rows_written_total", "table", otherTableName) > 0
	})
	before := retriesOf(d, "append")
	from := len(d.Logs())
	md, after := deleteTable(t, e, group, otherTable)
	at := time.Now()

	first, i := d.WaitLogFrom(from, warnBound+5*time.Second, "error line naming "+otherTable, operatorLine(otherTableName))
	t.Logf("error line %v after the deletion: %s", time.Since(at).Round(time.Millisecond), first.Raw)
	if took := time.Since(at); took > warnBound {
		t.Errorf("error line %v after the deletion, promised within %v", took, warnBound)
	}
	requireRetriesGrew(t, d, "append", before)
	awaitNotReady(t, d, at, at.Add(30*time.Second), otherTableName)

	// Over the next minute: the other table's partitions commit nothing,
	// the stock table's keep committing, and the error comes once more.
	// Rows BigQuery acknowledged just before the deletion are committed
	// within a few commit intervals (200ms): let those land first.
	time.Sleep(time.Second)
	otherA, stockA := committed(t, e, group, otherTopic), committed(t, e, group, stack.StockTopic)
	again, _ := d.WaitLogFrom(i+1, 80*time.Second, "the error line repeated a minute later", operatorLine(otherTableName))
	t.Logf("error line repeated %v after the first", logTime(again).Sub(logTime(first)).Round(time.Millisecond))
	otherB, stockB := committed(t, e, group, otherTopic), committed(t, e, group, stack.StockTopic)
	if offsetSum(otherB) != offsetSum(otherA) {
		t.Errorf("%s committed %v then %v while its table was gone", otherTopic, otherA, otherB)
	}
	if offsetSum(stockB) <= offsetSum(stockA) {
		t.Errorf("%s committed nothing while only %s was gone: %v then %v", stack.StockTopic, otherTable, stockA, stockB)
	} else {
		t.Logf("%s committed %d more records meanwhile", stack.StockTopic, offsetSum(stockB)-offsetSum(stockA))
	}
	if n := len(d.LogsMatching(operatorLine(otherTableName))); n != 2 {
		t.Errorf("%d error lines naming %s in about a minute, want 2 (once a minute)", n, otherTable)
	}
	if again.Num("attempts") <= first.Num("attempts") {
		t.Errorf("repeated error line's attempts %v not above the first's %v", again.Num("attempts"), first.Num("attempts"))
	}
	awaitNotReady(t, d, at, time.Now().Add(5*time.Second), otherTableName)

	recreateTable(t, e, otherTable, md)
	healed := time.Now()
	awaitRecovered(t, d, i, healed, "recreating the table", "append", 75*time.Second)
	d.WaitHTTP("/readyz", http.StatusOK, 30*time.Second)
	finishDeleted(t, e, s, f, d, group, after)
}

// The same deletion, with SIGTERM while the table is gone.
func TestFaultTableDeletedAtRuntimeSIGTERM(t *testing.T) {
	itest.SkipShortParallel(t)
	const group = "g-table-deleted-term"
	e, cfg, s, f := deletedTableEnv(t, group)
	d := startFlowing(t, cfg)
	itest.WaitUntil(t, 30*time.Second, func() string { return "rows in " + otherTable }, func() bool {
		return d.Metric("bqsink_rows_written_total", "table", otherTableName) > 0
	})
	from := len(d.Logs())
	md, after := deleteTable(t, e, group, otherTable)
	d.WaitLogFrom(from, warnBound+5*time.Second, "error line naming "+otherTable, operatorLine(otherTableName))
	terminateDuringFault(t, d)
	recreateTable(t, e, otherTable, md)
	finishDeleted(t, e, s, f, itest.StartDaemon(t, cfg), group, after)
}

// startupCase is a config that cannot start and the keys its error line
// must name.
type startupCase struct {
	name string
	keys []string
	tune func(t *testing.T, c *itest.DaemonConfig)
}

// frozenAt is a black-holed proxy to target: connections are accepted
// and never answered.
func frozenAt(t *testing.T, target string) string {
	t.Helper()
	p := faultProxy(t, target)
	mustFreeze(t, p)
	return p.Addr()
}

// authRegistry serves a registry that wants user bqsink with password
// secret, and returns its URL.
func authRegistry(t *testing.T) string {
	t.Helper()
	reg := srfake.NewRegistry(srfake.WithAuth("Basic " + base64.StdEncoding.EncodeToString([]byte("bqsink:secret"))))
	srv := httptest.NewServer(reg.Handler())
	t.Cleanup(srv.Close)
	return srv.URL
}

// startupCases are problems the startup check must find: some only an
// operator can fix, some endpoints that do not answer.
func startupCases() []startupCase {
	set := func(key string, v func(t *testing.T, e string) any) func(*testing.T, *itest.DaemonConfig) {
		return func(t *testing.T, c *itest.DaemonConfig) { c.Set(key, v(t, fmt.Sprint(c.Get(key)))) }
	}
	value := func(v any) func(*testing.T, string) any { return func(*testing.T, string) any { return v } }
	closed := func(prefix string) func(*testing.T, string) any {
		return func(t *testing.T, _ string) any { return prefix + itest.FreeAddr(t) }
	}
	frozen := func(prefix string) func(*testing.T, string) any {
		return func(t *testing.T, cur string) any {
			return prefix + frozenAt(t, strings.TrimPrefix(strings.Trim(cur, "[]"), "http://"))
		}
	}
	return []startupCase{
		{"dataset missing", []string{"bigquery.dataset"}, set("bigquery.dataset", value("no_such_dataset"))},
		{"topic missing", []string{"kafka.topics"}, set("kafka.topics", value([]string{"no_such_topic"}))},
		{"dead-letter topic missing, not to be created", []string{"errors.dlq_topic", "errors.dlq_create"}, func(t *testing.T, c *itest.DaemonConfig) {
			c.Set("errors.dlq_topic", "no_such_topic.dlq").Set("errors.dlq_create", false)
		}},
		{"registry refuses the credentials", []string{"schema_registry.username", "password"}, func(t *testing.T, c *itest.DaemonConfig) {
			c.Set("schema_registry.url", authRegistry(t)).Set("schema_registry.username", "bqsink").Set("schema_registry.password", "wrong")
		}},
		{"registry wants credentials", []string{"schema_registry.username"}, set("schema_registry.url", func(t *testing.T, _ string) any { return authRegistry(t) })},
		{"Storage Write endpoint closed", []string{"bigquery.grpc_endpoint"}, set("bigquery.grpc_endpoint", closed(""))},
		{"Storage Write endpoint black-holed", []string{"bigquery.grpc_endpoint"}, set("bigquery.grpc_endpoint", frozen(""))},
		{"REST endpoint closed", []string{"bigquery.endpoint"}, set("bigquery.endpoint", closed("http://"))},
		{"REST endpoint black-holed", []string{"bigquery.endpoint"}, set("bigquery.endpoint", frozen("http://"))},
		{"registry closed", []string{"schema_registry.url"}, set("schema_registry.url", closed("http://"))},
		{"registry black-holed", []string{"schema_registry.url"}, set("schema_registry.url", frozen("http://"))},
		{"Kafka closed", []string{"kafka.brokers"}, set("kafka.brokers", func(t *testing.T, _ string) any { return []string{itest.FreeAddr(t)} })},
		{"Kafka black-holed", []string{"kafka.brokers"}, set("kafka.brokers", func(t *testing.T, cur string) any {
			return []string{frozenAt(t, strings.Trim(cur, "[]"))}
		})},
	}
}

// A start that cannot succeed ends within 10s with exit 1 and one error
// line naming the config key to fix: a missing dataset, topic or
// dead-letter topic, refused credentials, an endpoint that is closed or
// does not answer.
func TestStartupProblemExitsWithinTenSecondsNamingTheKey(t *testing.T) {
	itest.SkipShortParallel(t)
	e := itest.NewEnv(t)
	for i, c := range startupCases() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cfg := faultConfig(e, fmt.Sprintf("g-startup-%d", i))
			cfg.T = t
			c.tune(t, cfg)
			d := itest.StartDaemon(t, cfg)
			st := d.Wait(itest.StartupBound + 10*time.Second)
			var lines []itest.LogLine
			for _, l := range d.Logs() {
				if !l.JSON || l.Level == "error" || l.Level == "fatal" || l.Level == "panic" {
					lines = append(lines, l)
				}
			}
			t.Logf("%v; %s", st, itest.RawLines(lines))
			if st.Signal != 0 || st.Code != 1 {
				t.Errorf("%v, want exit 1", st)
			}
			if st.Took > itest.StartupBound {
				t.Errorf("exit %v after the start, promised within %v", st.Took.Round(time.Millisecond), itest.StartupBound)
			}
			switch {
			case len(lines) != 1:
				t.Errorf("%d error lines, want one naming %q", len(lines), c.keys)
			case !itest.ContainsEvery(lines[0].Raw, c.keys...):
				t.Errorf("the error line does not name %q", c.keys)
			}
		})
	}
}

// startupStop is a moment during the start to send SIGTERM at.
type startupStop struct {
	name string
	// tune changes the config; nil leaves it as is.
	tune func(t *testing.T, c *itest.DaemonConfig) func() bool
}

// SIGTERM during the start is a clean stop: exit 0 within a couple of
// seconds, never a kill by the signal, whether the startup check is done
// or waiting on an endpoint that does not answer.
func TestStartupSIGTERMIsACleanStop(t *testing.T) {
	itest.SkipShortParallel(t)
	e := itest.NewEnv(t)
	// via puts a black-holed proxy in front of the endpoint at key and
	// returns a condition that holds once the daemon has connected to it.
	via := func(key, prefix string) func(*testing.T, *itest.DaemonConfig) func() bool {
		return func(t *testing.T, c *itest.DaemonConfig) func() bool {
			cur := strings.TrimPrefix(strings.Trim(fmt.Sprint(c.Get(key)), "[]"), "http://")
			p := faultProxy(t, cur)
			mustFreeze(t, p)
			var v any = prefix + p.Addr()
			if key == "kafka.brokers" {
				v = []string{p.Addr()}
			}
			c.Set(key, v)
			return func() bool { return p.Accepted() > 0 }
		}
	}
	for i, c := range []startupStop{
		{name: "at its first line"},
		{name: "while checking"},
		{name: "check waiting on a black-holed Storage Write endpoint", tune: via("bigquery.grpc_endpoint", "")},
		{name: "check waiting on a black-holed REST endpoint", tune: via("bigquery.endpoint", "http://")},
		{name: "check waiting on a black-holed registry", tune: via("schema_registry.url", "http://")},
		{name: "check waiting on a black-holed Kafka", tune: via("kafka.brokers", "")},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cfg := faultConfig(e, fmt.Sprintf("g-startup-term-%d", i))
			cfg.T = t
			waiting := func() bool { return true }
			if c.tune != nil {
				waiting = c.tune(t, cfg)
			}
			d := itest.StartDaemon(t, cfg)
			switch {
			case i == 0:
				d.WaitLog(10*time.Second, "a first line", func(itest.LogLine) bool { return true })
			default:
				d.WaitLog(10*time.Second, "the startup check", itest.MsgIs("checking kafka, schema registry and bigquery"))
				itest.WaitUntil(t, 5*time.Second, func() string { return "a connection to the black-holed endpoint" }, waiting)
			}
			d.Terminate()
			st := d.Wait(exitBound)
			t.Logf("SIGTERM %s: %v", c.name, st)
			if st.Signal != 0 || st.Code != 0 {
				t.Errorf("%v, want exit 0", st)
			}
			if st.Took > 2*time.Second {
				t.Errorf("exit %v after SIGTERM during the start, want within 2s", st.Took.Round(time.Millisecond))
			}
			if c.tune != nil && len(d.LogsMatching(itest.MsgIs("consuming"))) > 0 {
				t.Errorf("consumed although the startup check could not have passed")
			}
			itest.LogProblems(t, d)
		})
	}
}

// unanswered makes the broker take requests of key and never answer them
// while on is set; an operator's broker that hangs.
func unanswered(e *itest.Env, key kmsg.Key) *atomic.Bool {
	var on atomic.Bool
	c := e.St.Kafka
	c.ControlKey(int16(key), func(kmsg.Request) (kmsg.Response, error, bool) {
		if !on.Load() {
			return nil, nil, false
		}
		c.KeepControl()
		return nil, nil, true // handled, no answer: the client waits
	})
	return &on
}

// The broker stops answering fetches while records are produced: the
// daemon must warn within 30s as promised for the fetch stage (stage,
// target, error; counted in bqsink_retries_total{stage="fetch"}), fail
// /readyz once it lasts stall_timeout, and catch up once the broker answers
// again, losing nothing. franz-go only retries such a fetch; the lag watch
// is what notices, looking every 10s whatever stall_timeout is.
func TestFaultKafkaFetchUnanswered(t *testing.T) {
	itest.SkipShortParallel(t)
	for _, stall := range []string{"15s", "default"} {
		t.Run("stall_timeout "+stall, func(t *testing.T) {
			t.Parallel()
			group := "g-fetch-hang-" + stall
			began := time.Now()
			e := itest.NewEnv(t)
			hang := unanswered(e, kmsg.Fetch)
			s := itest.StartStream(t, e, 1000, flowRate, itest.Seed(t))
			cfg := faultConfig(e, group)
			if stall == "default" {
				cfg.Unset("stall_timeout")
			}
			d := startFlowing(t, cfg)
			before := retriesOf(d, "fetch")
			from := len(d.Logs())
			at := time.Now()
			hang.Store(true)

			// Any warning about it first, to measure; then the promised form.
			l, _ := d.WaitLogFrom(from, 2*warnBound+5*time.Second, "a warning about the unanswered fetches", func(l itest.LogLine) bool {
				return l.Level == "warn" && l.Logger == "sink"
			})
			took := time.Since(at)
			t.Logf("first warning %v after the fault: %s", took.Round(time.Millisecond), l.Raw)
			if took > warnBound {
				t.Errorf("first warning %v after the fetches went unanswered, promised within %v", took.Round(time.Millisecond), warnBound)
			}
			waitOutWindow(t, at.Add(warnBound))
			var promised []itest.LogLine
			for _, l := range d.Logs()[from:] {
				if failedLine("fetch", func(s string) bool { return s != "" })(l) {
					promised = append(promised, l)
				}
			}
			if len(promised) == 0 {
				t.Errorf("no %q line (stage, target, error) within %v of the fetches going unanswered", "fetch failed; retrying", warnBound)
			}
			if n := retriesOf(d, "fetch"); n <= before {
				t.Errorf("bqsink_retries_total{stage=\"fetch\"} = %v after %v of unanswered fetches, was %v", n, warnBound, before)
			}
			if stall != "default" {
				awaitNotReady(t, d, at, time.Now().Add(5*time.Second), stack.StockTopic)
			}
			healed := time.Now()
			hang.Store(false)
			t.Logf("healed %v after the fault", healed.Sub(at).Round(time.Millisecond))
			if len(promised) > 0 {
				awaitRecovered(t, d, from, healed, "healing", "fetch", 45*time.Second)
			}
			d.WaitHTTP("/readyz", http.StatusOK, 45*time.Second)
			finishClean(t, e, s, d, group, began)
		})
	}
}
