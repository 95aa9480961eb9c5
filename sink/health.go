package sink

import (
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Stages a failure can happen in; they label bqsink_retries_total and the
// "stage" field of log lines.
const (
	stageSchema     = "schema"      // resolving a writer schema in the registry
	stageTable      = "table"       // creating or evolving a table (BigQuery REST)
	stageAppend     = "append"      // writing rows (BigQuery Storage Write API)
	stageDeadLetter = "dead_letter" // producing to the dead-letter topic
	stageCommit     = "commit"      // committing offsets
	stageFetch      = "fetch"       // fetching records
)

var stages = []string{stageSchema, stageTable, stageAppend, stageDeadLetter, stageCommit, stageFetch}

const (
	// repeatEvery is how often a failure that lasts is logged again: at
	// most 30 s apart, checked every monitorEvery.
	repeatEvery = 30*time.Second - monitorEvery
	// configEvery is how often a failure only an operator can fix is
	// logged again (at error): once a minute.
	configEvery = time.Minute - monitorEvery
	// forgetAfter drops a failure nobody reported or cleared for this
	// long: its reporter went away (a revoked partition, say). Every retry
	// loop reports at least every 30 s plus one call's timeout.
	forgetAfter = 2 * time.Minute
)

// health tracks what is failing, by stage and target (a table, the
// registry, a topic). Everything that retries reports each failure here and
// its recovery; health turns that into one warning when a failure starts,
// another every 30 s while it lasts (with the attempt count), a line when
// it ends, the retry counter, and what Ready reports. Goroutine-safe.
type health struct {
	log      *zap.Logger
	metrics  *metrics
	attempts *atomic.Int64 // every failed attempt, for the progress line

	n  atomic.Int64 // len(failing), for a lock-free ok when nothing fails
	mu sync.Mutex
	// failing holds the current failures by stage and target.
	failing map[failKey]*failure
	// inStage counts the entries of failing per stage, kept with it under
	// mu and read without it by metrics. The map itself never changes.
	inStage map[string]*atomic.Int64
}

type failKey struct{ stage, target string }

type failure struct {
	// healed is closed when the failure ends, waking every retry loop
	// that waits on the same stage and target: when a target recovers,
	// all its partitions retry at once rather than each after its own
	// backoff.
	healed   chan struct{}
	since    time.Time
	last     time.Time // latest report
	logged   time.Time // latest log line
	attempts int
	err      error
	config   bool // an operator must change something; retrying alone will not help
}

func newHealth(log *zap.Logger, m *metrics, attempts *atomic.Int64) *health {
	h := &health{log: log, metrics: m, attempts: attempts, failing: map[failKey]*failure{}, inStage: map[string]*atomic.Int64{}}
	for _, st := range stages {
		h.inStage[st] = new(atomic.Int64)
	}
	return h
}

// fail reports one failed attempt. config marks a failure that only an
// operator can fix (a missing dataset, refused credentials): it is logged
// at error and makes Ready fail at once rather than after stall_timeout.
func (h *health) fail(stage, target string, err error, config bool) {
	h.metrics.retries.WithLabelValues(stage).Inc()
	h.attempts.Add(1)
	now := time.Now()
	h.mu.Lock()
	k := failKey{stage, target}
	f := h.failing[k]
	first := f == nil
	if first {
		f = &failure{since: now, healed: make(chan struct{})}
		h.failing[k] = f
		h.n.Store(int64(len(h.failing)))
		h.countLocked(stage, 1)
	}
	escalated := config && !f.config
	f.attempts++
	f.last, f.err, f.config = now, err, config
	logNow := first || escalated
	if logNow {
		f.logged = now
	}
	snap := *f
	h.mu.Unlock()
	if logNow {
		h.logFailure(k, snap, now, false)
	}
}

// ok reports that a call of stage on target succeeded, ending its failure
// if there was one. It is cheap when nothing is failing.
func (h *health) ok(stage, target string) {
	if h.n.Load() == 0 {
		return
	}
	h.mu.Lock()
	k := failKey{stage, target}
	f := h.failing[k]
	if f != nil {
		delete(h.failing, k)
		h.n.Store(int64(len(h.failing)))
		h.countLocked(stage, -1)
		close(f.healed)
	}
	h.mu.Unlock()
	if f != nil {
		h.log.Info("recovered", zap.String("stage", stage), zap.String("target", target),
			zap.Duration("failed_for", time.Since(f.since).Round(time.Millisecond)), zap.Int("attempts", f.attempts))
	}
}

// healed returns a channel closed when the failure of stage on target
// ends; nil (never ready) when it is not failing.
func (h *health) healed(stage, target string) <-chan struct{} {
	if h.n.Load() == 0 {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if f := h.failing[failKey{stage, target}]; f != nil {
		return f.healed
	}
	return nil
}

// tick logs every failure not logged for repeatEvery (configEvery for
// configuration errors) and forgets the ones nobody reported for a while.
func (h *health) tick(now time.Time) {
	type line struct {
		k failKey
		f failure
	}
	var lines []line
	h.mu.Lock()
	for k, f := range h.failing {
		if now.Sub(f.last) > forgetAfter {
			delete(h.failing, k)
			h.countLocked(k.stage, -1)
			close(f.healed)
			continue
		}
		every := repeatEvery
		if f.config {
			every = configEvery
		}
		if now.Sub(f.logged) >= every {
			f.logged = now
			lines = append(lines, line{k, *f})
		}
	}
	h.n.Store(int64(len(h.failing)))
	h.mu.Unlock()
	for _, l := range lines {
		h.logFailure(l.k, l.f, now, true)
	}
}

func (h *health) logFailure(k failKey, f failure, now time.Time, still bool) {
	fields := []zap.Field{
		zap.String("stage", k.stage), zap.String("target", k.target), zap.Int("attempts", f.attempts),
		zap.Duration("failing_for", now.Sub(f.since).Round(time.Millisecond)), zap.Error(f.err),
	}
	switch {
	case f.config:
		h.log.Error("needs an operator: "+k.stage+" fails until the configuration or the service is fixed; retrying", fields...)
	case still:
		h.log.Warn(k.stage+" still failing; retrying", fields...)
	default:
		h.log.Warn(k.stage+" failed; retrying", fields...)
	}
}

// problems lists, for Ready, the configuration errors and the failures that
// have lasted longer than stall.
func (h *health) problems(stall time.Duration) []string {
	now := time.Now()
	var out []string
	h.mu.Lock()
	for k, f := range h.failing {
		if f.config || now.Sub(f.since) >= stall {
			out = append(out, fmt.Sprintf("%s %s failing for %s: %v", k.stage, k.target, now.Sub(f.since).Round(time.Second), f.err))
		}
	}
	h.mu.Unlock()
	sort.Strings(out)
	return out
}

// countLocked adds d to the count of failures in stage. h.mu must be held.
func (h *health) countLocked(stage string, d int64) {
	if c := h.inStage[stage]; c != nil {
		c.Add(d)
	}
}

// failingStage counts the targets failing in stage, for a metric. It takes
// no lock.
func (h *health) failingStage(stage string) int {
	if c := h.inStage[stage]; c != nil {
		return int(c.Load())
	}
	return 0
}
