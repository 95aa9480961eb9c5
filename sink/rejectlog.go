package sink

import (
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
)

const (
	// rejectWindow and rejectBurst bound record-level log lines: per
	// partition, the first rejectBurst rejections of a window get a line
	// each; the rest are summed up in one line when the window ends.
	rejectWindow = 10 * time.Second
	rejectBurst  = 10
)

// rejectLog logs records that can never be written. Nothing is sampled
// away: every rejection gets a line of its own, or, past the burst, is
// counted in its partition's summary line with the first and last offsets.
// Goroutine-safe.
type rejectLog struct {
	log *zap.Logger

	mu    sync.Mutex
	parts map[topicPartition]*rejectCount
}

type rejectCount struct {
	start       time.Time
	lines       int
	suppressed  int
	first, last int64
	reasons     map[string]int
}

func newRejectLog(log *zap.Logger) *rejectLog {
	return &rejectLog{log: log, parts: map[topicPartition]*rejectCount{}}
}

// record logs one rejection, or counts it for the summary.
func (l *rejectLog) record(tp topicPartition, table string, rj *rejection, policy string) {
	now := time.Now()
	l.mu.Lock()
	c := l.parts[tp]
	if c == nil || now.Sub(c.start) >= rejectWindow {
		if c != nil && c.suppressed > 0 {
			l.summary(tp, *c)
		}
		c = &rejectCount{start: now}
		l.parts[tp] = c
	}
	logIt := c.lines < rejectBurst
	if logIt {
		c.lines++
	} else {
		if c.suppressed == 0 {
			c.first = rj.rec.Offset
			c.reasons = map[string]int{}
		}
		c.suppressed++
		c.last = rj.rec.Offset
		c.reasons[rj.reason]++
	}
	l.mu.Unlock()
	if logIt {
		fields := []zap.Field{
			zap.String("topic", tp.topic), zap.Int32("partition", tp.partition), zap.Int64("offset", rj.rec.Offset),
			zap.String("table", table), zap.String("reason", rj.reason), zap.String("policy", policy), zap.Error(rj.err),
		}
		if rj.schemaID != 0 {
			fields = append(fields, zap.Int("schema_id", rj.schemaID))
		}
		l.log.Error("record rejected", fields...)
	}
}

// flush writes the summaries of windows that have ended by now; a zero
// now ends them all (at shutdown).
func (l *rejectLog) flush(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for tp, c := range l.parts {
		if !now.IsZero() && now.Sub(c.start) < rejectWindow {
			continue
		}
		if c.suppressed > 0 {
			l.summary(tp, *c)
		}
		delete(l.parts, tp)
	}
}

func (l *rejectLog) summary(tp topicPartition, c rejectCount) {
	reasons := make([]string, 0, len(c.reasons))
	for r := range c.reasons {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	counts := make([]zap.Field, 0, len(reasons))
	for _, r := range reasons {
		counts = append(counts, zap.Int(r, c.reasons[r]))
	}
	l.log.Error("more records rejected than logged one by one",
		zap.String("topic", tp.topic), zap.Int32("partition", tp.partition), zap.Int("count", c.suppressed),
		zap.Int64("first_offset", c.first), zap.Int64("last_offset", c.last),
		zap.Dict("reasons", counts...), zap.Duration("window", rejectWindow))
}
