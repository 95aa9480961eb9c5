package sink

import (
	"context"
	"maps"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"

	"github.com/bqsink/bqsink/bq"
)

func (s *Sink) assigned(_ context.Context, cl *kgo.Client, assigned map[string][]int32) {
	if countPartitions(assigned) == 0 {
		return // a cooperative rebalance that gave this member nothing
	}
	s.metrics.rebalances.WithLabelValues("assigned").Inc()
	s.mu.Lock()
	defer s.mu.Unlock()
	for topic, partitions := range assigned {
		s.metrics.initTopic(topic)
		s.metrics.initTable(s.tableName(topic))
		for _, p := range partitions {
			tp := topicPartition{topic, p}
			if s.workers[tp] != nil {
				continue
			}
			w := s.newWorker(cl, tp)
			s.workers[tp] = w
			go w.run()
		}
	}
	s.publishWorkersLocked()
	s.flow.parts.Store(int64(len(s.workers)))
	s.log.Info("partitions assigned", zap.Any("partitions", assigned), zap.Int("owned", len(s.workers)))
}

func countPartitions(m map[string][]int32) int {
	n := 0
	for _, ps := range m {
		n += len(ps)
	}
	return n
}

func (s *Sink) newWorker(cl *kgo.Client, tp topicPartition) *worker {
	t := s.wh.Table(s.cfg.TableFor(tp.topic))
	settings, keys := s.cfg.SettingsFor(tp.topic)
	opts := settings.tableOptions(keys)
	log := s.log.With(zap.String("topic", tp.topic), zap.Int32("partition", tp.partition), zap.String("table", t.Name()))
	change := s.newChangeDecoder(tp.topic, t.Name(), settings, opts, log)
	if change != nil {
		opts = change.opts // with the key the table's first records named
	}
	t.SetOptions(opts)
	dec := &decoder{reg: s.reg, registry: "schema registry", table: t, meta: s.cfg.MetadataColumn,
		grace: s.withinUnknownGrace, log: log, change: change,
		warnPlain: func(id int) bool { return s.once(t.Name() + "\x00plain\x00" + strconv.Itoa(id)) }}
	one := map[string][]int32{tp.topic: {tp.partition}}
	deps := workerDeps{
		decode: dec.decode,
		append: func(ctx context.Context, rows []bq.Row, _ []*kgo.Record) (appendResult, error) {
			res, err := t.Append(ctx, rows)
			if err != nil {
				return nil, err
			}
			return res, nil
		},
		deadLetter: s.dlq.send,
		pause:      func() { cl.PauseFetchPartitions(one) },
		resume:     func() { cl.ResumeFetchPartitions(one) },
		mark:       func(eo kgo.EpochOffset, meta string) { s.commits.mark(tp.topic, tp.partition, eo, meta) },
		fatal:      s.fatal,
		flow:       s.flow,
		health:     s.health,
		rejects:    s.rejects,
		metrics:    s.metrics,
		stats:      &s.stats,
	}
	var eo *exactlyOnce
	if s.cfg.BigQuery.ExactlyOnce() {
		eo = &exactlyOnce{table: t, tp: tp, log: log, metrics: s.metrics, committed: s.committedFunc(tp),
			skipped: s.skippedFunc(tp), readCommitted: s.cfg.Kafka.IsolationLevel == IsolationReadCommitted, claim: s.claimFunc(tp)}
		deps.append = eo.appendRows
	}
	b := s.cfg.Batch
	cfg := workerConfig{maxRecords: b.MaxRecords, maxBytes: b.MaxBytes, maxWait: b.MaxWait, maxInflight: b.MaxInflight,
		policy: s.cfg.Errors.Policy, maxRecordBytes: s.cfg.BigQuery.MaxRequestBytes}
	w := newWorker(tp, t.Name(), cfg, deps, s.base, log)
	w.eo = eo
	return w
}

// revoked stops the revoked partitions' workers, letting in-flight appends
// finish for up to half the rebalance timeout, then commits what BigQuery
// acknowledged before the partitions move.
func (s *Sink) revoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	ws := s.take(revoked)
	if len(ws) == 0 {
		return
	}
	s.metrics.rebalances.WithLabelValues("revoked").Inc()
	s.callback.Store(time.Now().UnixNano())
	defer s.callback.Store(0)
	dctx, cancel := s.shutdownBounded(ctx, s.cfg.Kafka.RebalanceTimeout/2, 0.5)
	defer cancel()
	if n := s.stopWorkers(dctx, ws); n > 0 {
		s.log.Warn("batches of revoked partitions still unanswered after half the rebalance timeout; their records are read again by the next owner",
			zap.Int64("batches", n), zap.Any("partitions", revoked))
	}
	// The commit gets its own budget: dctx may have ended on a straggler.
	cctx, ccancel := s.shutdownBounded(ctx, s.cfg.Kafka.RebalanceTimeout/4, 0.75)
	defer ccancel()
	_ = s.commitPartitions(cctx, cl, revoked, "revoke")
	// A partition paused for backpressure would stay paused if it came back.
	cl.ResumeFetchPartitions(revoked)
	s.log.Info("partitions revoked", zap.Any("partitions", revoked))
}

// lost abandons the partitions at once: another member may own them already,
// so nothing more is committed for them.
func (s *Sink) lost(_ context.Context, cl *kgo.Client, lost map[string][]int32) {
	if countPartitions(lost) == 0 {
		return // franz-go reports every failed attempt to join; nothing is lost
	}
	s.metrics.rebalances.WithLabelValues("lost").Inc()
	ws := s.take(lost)
	s.callback.Store(time.Now().UnixNano())
	defer s.callback.Store(0)
	for _, w := range ws {
		w.cancel()
	}
	// Dropped before and after the wait: the committer must not commit a
	// lost partition's marks meanwhile, and a worker may mark once more
	// before it sees the cancel.
	s.commits.drop(lost)
	for _, w := range ws {
		s.awaitCancelled(w)
	}
	s.commits.drop(lost)
	cl.ResumeFetchPartitions(lost)
	s.log.Warn("partitions lost; their unacknowledged work is abandoned", zap.Any("partitions", lost))
}

func (s *Sink) take(m map[string][]int32) []*worker {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ws []*worker
	for topic, partitions := range m {
		for _, p := range partitions {
			tp := topicPartition{topic, p}
			if w := s.workers[tp]; w != nil {
				ws = append(ws, w)
				delete(s.workers, tp)
			}
		}
	}
	s.publishWorkersLocked()
	s.flow.parts.Store(int64(len(s.workers)))
	return ws
}

// workerSet is a copy of the workers map that is never changed once
// published (see Sink.owned).
type workerSet map[topicPartition]*worker

// publishWorkersLocked publishes a copy of workers for the readers that
// take no lock. s.mu must be held.
func (s *Sink) publishWorkersLocked() {
	set := make(workerSet, len(s.workers))
	maps.Copy(set, s.workers)
	s.owned.Store(&set)
}

// ownedWorkers is the set of workers as last published (empty before
// the first assignment). It must not be changed.
func (s *Sink) ownedWorkers() workerSet {
	if set := s.owned.Load(); set != nil {
		return *set
	}
	return nil
}

// stopWorkers asks every worker to finish its in-flight appends and waits;
// when ctx ends first, the stragglers are cancelled. It returns how many
// batches were abandoned unfinished: their records stay uncommitted.
func (s *Sink) stopWorkers(ctx context.Context, ws []*worker) (abandoned int64) {
	for _, w := range ws {
		w.stop()
	}
	for _, w := range ws {
		select {
		case <-w.done:
		case <-ctx.Done():
			w.cancel()
			if !s.awaitCancelled(w) {
				abandoned += max(w.inflight.Load(), 1)
				continue
			}
		}
		abandoned += w.abandoned.Load()
	}
	return abandoned
}

// awaitCancelled waits for a cancelled worker, for at most stopGrace, and
// reports whether it ended.
func (s *Sink) awaitCancelled(w *worker) bool {
	select {
	case <-w.done:
		return true
	case <-time.After(stopGrace):
		w.log.Error("partition worker did not stop after cancellation; not waiting for it")
		return false
	}
}

// stopGrace bounds the wait for a worker after it was cancelled; every
// call it makes honours cancellation, so this is a last resort.
const stopGrace = time.Second
