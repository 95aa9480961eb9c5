package sink

import (
	"context"
	"math"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// monitorEvery is how often failures that last are logged again and
// rejection summaries written.
const monitorEvery = 5 * time.Second

// progressEvery is how often the progress line is written.
const progressEvery = 30 * time.Second

// stats are running totals for the progress line. Goroutine-safe.
type stats struct {
	rows, rejected, deadLettered, retries atomic.Int64
}

// monitor repeats the warnings of failures that last, writes the summaries
// of rejected records and a progress line, and watches for partitions with
// records the client does not fetch, until ctx ends.
func (s *Sink) monitor(ctx context.Context) {
	t := time.NewTicker(monitorEvery)
	defer t.Stop()
	// Two sightings at the same position make a stall: seen within 20 s.
	lagEvery := min(max(s.cfg.StallTimeout/4, monitorEvery), 10*time.Second)
	lastLag, lastProgress := time.Now(), time.Now()
	s.refreshLag(ctx)
	lastRefresh := time.Now()
	var before stats
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.health.tick(now)
			s.rejects.flush(now)
			if now.Sub(lastRefresh) >= lagRefresh-monitorEvery/2 {
				lastRefresh = now
				s.refreshLag(ctx)
			}
			if now.Sub(lastLag) >= lagEvery {
				lastLag = now
				s.watchLag(ctx)
			}
			if now.Sub(lastProgress) >= progressEvery {
				s.logProgress(&before, now.Sub(lastProgress))
				lastProgress = now
			}
		}
	}
}

// logProgress writes what happened since the last progress line.
func (s *Sink) logProgress(before *stats, since time.Duration) {
	delta := func(total, prev *atomic.Int64) int64 {
		n := total.Load()
		d := n - prev.Load()
		prev.Store(n)
		return d
	}
	rows := delta(&s.stats.rows, &before.rows)
	var lag int64
	for _, p := range s.partitionOffsets() {
		lag += p.lag()
	}
	fields := []zap.Field{
		zap.Int64("rows_written", rows), zap.Float64("rows_per_second", math.Round(float64(rows)/since.Seconds())),
		zap.Int64("lag", lag),
	}
	if g := s.groupLag(); g != nil {
		var sum int64
		for _, n := range g {
			sum += n
		}
		fields = append(fields, zap.Int64("group_lag", sum))
	}
	s.log.Info("progress", append(fields, zap.Int64("partitions", s.flow.parts.Load()),
		zap.Int64("retries", delta(&s.stats.retries, &before.retries)),
		zap.Int64("rejected", delta(&s.stats.rejected, &before.rejected)),
		zap.Int64("dead_lettered", delta(&s.stats.deadLettered, &before.deadLettered)),
		zap.Int64("buffered_bytes", s.flow.used.Load()), zap.Duration("over", since.Round(time.Second)))...)
}
