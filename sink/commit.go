package sink

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/zap"
)

// commits holds, per partition, the offset after the last record whose row
// (and every row before it) BigQuery acknowledged and that is not committed
// yet. Workers mark; the committer takes and commits.
type commits struct {
	// commitMu serialises whole take-and-commit rounds: an older round
	// landing after a newer one would rewind the group. So at most one
	// commit is in flight per member.
	commitMu sync.Mutex

	mu    sync.Mutex
	marks map[string]map[int32]kgo.EpochOffset
	meta  map[string]map[int32]string // exactly-once metadata of the marks

	// marked (capacity 1) says that a mark arrived since the committer
	// last looked; nil in tests that commit by hand.
	marked chan struct{}
}

// mark records a watermark and its commit metadata; it only ever moves
// forward.
func (c *commits) mark(topic string, partition int32, eo kgo.EpochOffset, meta string) {
	c.mu.Lock()
	moved := c.markLocked(topic, partition, eo, meta)
	c.mu.Unlock()
	if moved && c.marked != nil {
		select {
		case c.marked <- struct{}{}:
		default:
		}
	}
}

// claim records a watermark for a new exactly-once stream: as mark, but at
// the offset of a pending mark too, whose metadata names the old stream.
func (c *commits) claim(topic string, partition int32, eo kgo.EpochOffset, meta string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.marks[topic][partition]; ok && old.Offset == eo.Offset {
		c.meta[topic][partition] = meta
		return
	}
	c.markLocked(topic, partition, eo, meta)
}

func (c *commits) markLocked(topic string, partition int32, eo kgo.EpochOffset, meta string) bool {
	ps := c.marks[topic]
	if ps == nil {
		ps = map[int32]kgo.EpochOffset{}
		c.marks[topic] = ps
	}
	if old, ok := ps[partition]; ok && old.Offset >= eo.Offset {
		return false
	}
	ps[partition] = eo
	if c.meta == nil {
		c.meta = map[string]map[int32]string{}
	}
	if c.meta[topic] == nil {
		c.meta[topic] = map[int32]string{}
	}
	c.meta[topic][partition] = meta
	return true
}

// take removes and returns the marks of the given partitions, or all marks
// when only is nil.
func (c *commits) take(only map[string][]int32) map[string]map[int32]kgo.EpochOffset {
	offsets, _ := c.takeWithMeta(only)
	return offsets
}

// restore puts back marks whose commit failed, unless a newer mark arrived
// meanwhile. It does not wake the committer: the next round retries them.
func (c *commits) restore(failed map[string]map[int32]kgo.EpochOffset, meta map[string]map[int32]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for topic, ps := range failed {
		for p, eo := range ps {
			c.markLocked(topic, p, eo, meta[topic][p])
		}
	}
}

// takeWithMeta is take, with the commit metadata of the marks taken. Both
// are read under one lock, so that an offset always goes with the metadata
// marked with it.
func (c *commits) takeWithMeta(only map[string][]int32) (map[string]map[int32]kgo.EpochOffset, map[string]map[int32]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]map[int32]kgo.EpochOffset{}
	meta := map[string]map[int32]string{}
	takeOne := func(topic string, p int32, eo kgo.EpochOffset) {
		delete(c.marks[topic], p)
		if out[topic] == nil {
			out[topic] = map[int32]kgo.EpochOffset{}
			meta[topic] = map[int32]string{}
		}
		out[topic][p] = eo
		meta[topic][p] = c.meta[topic][p]
	}
	if only == nil {
		for topic, ps := range c.marks {
			for p, eo := range ps {
				takeOne(topic, p, eo)
			}
		}
		return out, meta
	}
	for topic, partitions := range only {
		for _, p := range partitions {
			if eo, ok := c.marks[topic][p]; ok {
				takeOne(topic, p, eo)
			}
		}
	}
	return out, meta
}

func (c *commits) drop(only map[string][]int32) {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	c.take(only)
}

// commitLoop commits acknowledged offsets promptly: as soon as a flight's
// mark arrives and no commit is in flight, so that a crash re-delivers
// little beyond what was in flight. Marks that arrive during a commit go
// together in the next one. kafka.commit_interval bounds how long a mark
// whose commit failed waits for its retry.
func (s *Sink) commitLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.Kafka.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.commits.marked:
		case <-t.C:
		}
		_ = s.commitAll(ctx, "acknowledged")
	}
}

func (s *Sink) commitAll(ctx context.Context, why string) error {
	return s.commitPartitions(ctx, s.cl, nil, why)
}

// commitPartitions commits the marks of the given partitions (all when nil),
// each attempt bounded by kafka.request_timeout. A failed commit is reported
// and its marks kept for the next round: the records stay uncommitted, so
// nothing is lost, at worst re-read.
func (s *Sink) commitPartitions(ctx context.Context, cl *kgo.Client, only map[string][]int32, why string) error {
	s.commits.commitMu.Lock()
	defer s.commits.commitMu.Unlock()
	offsets, meta := s.commits.takeWithMeta(only)
	if len(offsets) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Kafka.RequestTimeout)
	defer cancel()
	if s.cfg.BigQuery.ExactlyOnce() {
		ctx = kgo.PreCommitFnContext(ctx, func(req *kmsg.OffsetCommitRequest) error {
			for i := range req.Topics {
				t := &req.Topics[i]
				for j := range t.Partitions {
					p := &t.Partitions[j]
					if m, ok := meta[t.Topic][p.Partition]; ok && offsets[t.Topic][p.Partition].Offset == p.Offset {
						p.Metadata = kmsg.StringPtr(m)
					}
				}
			}
			return nil
		})
	}
	var failed map[string]map[int32]kgo.EpochOffset
	var firstErr error
	cl.CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			failed, firstErr = offsets, err
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if perr := kerr.ErrorForCode(p.ErrorCode); perr != nil {
					if failed == nil {
						failed = map[string]map[int32]kgo.EpochOffset{}
					}
					if failed[t.Topic] == nil {
						failed[t.Topic] = map[int32]kgo.EpochOffset{}
					}
					failed[t.Topic][p.Partition] = offsets[t.Topic][p.Partition]
					if firstErr == nil {
						firstErr = perr
					}
				}
			}
		}
	})
	group := "group " + s.cfg.Kafka.GroupID
	if firstErr == nil {
		s.metrics.commits.WithLabelValues("ok").Inc()
		s.health.ok(stageCommit, group)
		level := zap.DebugLevel
		if why != "acknowledged" {
			level = zap.InfoLevel // a revoke's and the shutdown's commits are worth a line
		}
		if ce := s.log.Check(level, "committed"); ce != nil {
			ce.Write(zap.Any("offsets", offsetsForLog(offsets)), zap.String("why", why))
		}
		return nil
	}
	s.metrics.commits.WithLabelValues("error").Inc()
	// Marks of a revoked partition are not put back: it belongs to another
	// member now and must not be committed by us again.
	if only == nil {
		s.commits.restore(failed, meta)
	}
	err := fmt.Errorf("commit offsets %v (%s): %w", offsetsForLog(failed), why, firstErr)
	s.health.fail(stageCommit, group, err, false)
	return err
}

func offsetsForLog(m map[string]map[int32]kgo.EpochOffset) map[string]map[int32]int64 {
	out := make(map[string]map[int32]int64, len(m))
	for t, ps := range m {
		out[t] = make(map[int32]int64, len(ps))
		for p, eo := range ps {
			out[t][p] = eo.Offset
		}
	}
	return out
}
