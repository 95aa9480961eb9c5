package sink

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// shutdown stops the workers, commits what BigQuery acknowledged and leaves
// the group, within shutdown_timeout of the moment Run's context ended.
func (s *Sink) shutdown(ctx context.Context, stopBg context.CancelFunc, bg *sync.WaitGroup) error {
	if s.stopAt.Load() == 0 {
		s.stopAt.Store(time.Now().UnixNano())
	}
	sctx, cancel := context.WithDeadline(s.base, s.shutdownDeadline(1))
	defer cancel()
	s.mu.Lock()
	all := make([]*worker, 0, len(s.workers))
	for tp, w := range s.workers {
		all = append(all, w)
		delete(s.workers, tp)
	}
	s.publishWorkersLocked()
	s.flow.parts.Store(0)
	s.mu.Unlock()
	// A quarter of the budget is kept for the commit: a straggler that
	// uses up the whole wait must not cost every partition its commit.
	stopCtx, stopCancel := context.WithDeadline(sctx, s.shutdownDeadline(0.75))
	abandoned := s.stopWorkers(stopCtx, all)
	stopCancel()
	stopBg()
	bg.Wait()
	// Every rejection is in a log line before the process ends.
	s.rejects.flush(time.Time{})
	commitErr := s.commitAll(sctx, "shutdown")
	// Rebalances stayed blocked until now: a member joining during the
	// shutdown must not read the acknowledged records again.
	s.cl.AllowRebalance()
	// Leaving the group triggers one last revoke, which finds no workers;
	// it is bounded so that an unreachable coordinator cannot hold the exit.
	if err := s.cl.LeaveGroupContext(sctx); err != nil {
		s.log.Warn("leave group", zap.Error(err))
	}
	s.closeBounded("kafka consumer", s.cl.Close)

	if err := s.fatalErr.Load(); err != nil {
		s.log.Info("stopped")
		return *err
	}
	var problems []string
	if n := abandoned; n > 0 {
		problems = append(problems, fmt.Sprintf("%d batches still unanswered after shutdown_timeout %s", n, s.cfg.ShutdownTimeout))
	}
	if commitErr != nil {
		problems = append(problems, "final commit: "+commitErr.Error())
	}
	if len(problems) > 0 {
		s.log.Info("stopped")
		return fmt.Errorf("%w: %s; their records stay uncommitted and are read again by the next owner", ErrIncomplete, strings.Join(problems, "; "))
	}
	s.log.Info("stopped")
	return nil
}

// closeBounded runs a client's Close, giving up on it at the shutdown
// deadline (within a second, at least 100ms): the process is ending and
// must not wait on an unreachable peer.
func (s *Sink) closeBounded(what string, fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	wait := max(min(stopGrace, time.Until(s.shutdownDeadline(1))), 100*time.Millisecond)
	start := time.Now()
	select {
	case <-done:
		s.log.Debug("closed", zap.String("client", what), zap.Duration("took", time.Since(start)))
	case <-time.After(wait):
		s.log.Warn("close did not finish; not waiting", zap.String("client", what))
	}
}

// shutdownDeadline is the given fraction of shutdown_timeout after Run's
// context ended (or from now, if it has not).
func (s *Sink) shutdownDeadline(fraction float64) time.Time {
	from := time.Now()
	if at := s.stopAt.Load(); at != 0 {
		from = time.Unix(0, at)
	}
	return from.Add(time.Duration(float64(s.cfg.ShutdownTimeout) * fraction))
}

// shutdownBounded is ctx with timeout d that also ends at the given
// fraction of shutdown_timeout once Run's context ends, so that a revoke
// under way at SIGTERM does not outlast the shutdown budget.
func (s *Sink) shutdownBounded(ctx context.Context, d time.Duration, fraction float64) (context.Context, context.CancelFunc) {
	bctx, cancel := context.WithTimeout(ctx, d)
	// A timer firing after cancel is harmless: cancelling twice is a no-op.
	stop := context.AfterFunc(s.runCtx, func() {
		time.AfterFunc(time.Until(s.shutdownDeadline(fraction)), cancel)
	})
	return bctx, func() { stop(); cancel() }
}
