package sink

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Live reports whether the poll loop is turning. A nil error means alive.
func (s *Sink) Live() error {
	if !s.started.Load() {
		return errors.New("not started")
	}
	last := s.lastPoll.Load()
	if last == 0 {
		return nil // starting; Ready tells when it is done
	}
	if cb := s.callback.Load(); cb != 0 && time.Since(time.Unix(0, cb)) < s.cfg.Kafka.RebalanceTimeout {
		return nil // polls wait for the rebalance callback
	}
	if age := time.Since(time.Unix(0, last)); age > 6*pollTimeout {
		return fmt.Errorf("poll loop stuck for %s", age.Round(time.Second))
	}
	return nil
}

// Ready reports whether the sink is consuming and nothing is stuck: no
// failure that needs an operator, no stage failing for longer than
// stall_timeout, and no partition holding unacknowledged records, or
// leaving records unfetched, without progress for longer than
// stall_timeout. The error names each problem.
func (s *Sink) Ready() error {
	if s.lastPoll.Load() == 0 {
		return errors.New("not consuming yet")
	}
	problems := append(s.health.problems(s.cfg.StallTimeout), s.stalled()...)
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// stalled describes the partitions with no progress for stall_timeout.
func (s *Sink) stalled() []string {
	now := time.Now()
	stall := s.cfg.StallTimeout
	var out []string
	for tp, w := range s.ownedWorkers() {
		if held := w.held.Load(); held > 0 {
			if idle := now.Sub(time.Unix(0, w.progress.Load())); idle > stall {
				out = append(out, fmt.Sprintf("%s: no batch acknowledged for %s while holding %d bytes of records (from offset %d)",
					tp, idle.Round(time.Second), held, w.unacked.Load()))
			}
			continue
		}
		if since := w.stuckSince.Load(); since != 0 {
			if d := now.Sub(time.Unix(0, since)); d > stall {
				out = append(out, fmt.Sprintf("%s: records from offset %d not fetched for %s (end offset %d)",
					tp, w.stuckAt.Load(), d.Round(time.Second), w.stuckEnd.Load()))
			}
		}
	}
	sort.Strings(out)
	return out
}
