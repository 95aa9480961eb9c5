package sink

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
)

// lagRefresh is how often the group's lag is read from the brokers: every
// partition of the consumed topics, whoever owns it.
const lagRefresh = 15 * time.Second

// lagSnapshot is what the brokers said about the consumed partitions at
// one lag refresh.
type lagSnapshot struct {
	parts map[topicPartition]brokerOffsets
}

// brokerOffsets are one partition's offsets as the brokers said: its log
// start (-1: not known) and end (high watermark), and the group's commit
// (-1: none).
type brokerOffsets struct {
	start, end, committed int64
}

// owedFrom is where the group's lag of a partition without a commit
// starts: kafka.start_offset says where its consumption starts.
func (b brokerOffsets) owedFrom(startOffset string) int64 {
	if startOffset == "latest" {
		return b.end
	}
	return b.start
}

// lag is the partition's records not committed: those from the commit,
// or where consumption would start, up to the end. Records below the log
// start are gone and owed to nobody.
func (b brokerOffsets) lag(startOffset string) int64 {
	from := b.committed
	if from < 0 {
		from = b.owedFrom(startOffset)
	}
	return max(b.end-max(from, b.start, 0), 0)
}

func (l *lagSnapshot) get(tp topicPartition) (brokerOffsets, bool) {
	if l == nil {
		return brokerOffsets{}, false
	}
	b, ok := l.parts[tp]
	return b, ok
}

// refreshLag reads the group's committed offsets and the start and end
// offsets of every partition of the consumed topics, bounded by
// kafka.request_timeout. A failure keeps the last snapshot (logged at
// debug: fetch and commit failures are what an operator is told of).
func (s *Sink) refreshLag(ctx context.Context) {
	topics := s.cfg.literalTopics()
	if len(topics) != len(s.cfg.Kafka.Topics) {
		if cl := s.consumer(); cl != nil {
			topics = cl.GetConsumeTopics()
		}
	}
	if len(topics) == 0 {
		return // an empty list would ask for every topic of the cluster
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Kafka.RequestTimeout)
	defer cancel()
	adm := kadm.NewClient(s.admin)
	ends, err := adm.ListEndOffsets(ctx, topics...)
	if err != nil {
		s.log.Debug("lag refresh: list end offsets", zap.Error(err))
		return
	}
	starts, err := adm.ListStartOffsets(ctx, topics...)
	if err != nil {
		s.log.Debug("lag refresh: list start offsets", zap.Error(err))
		return
	}
	committed, err := adm.FetchOffsetsForTopics(ctx, s.cfg.Kafka.GroupID, topics...)
	if err != nil {
		s.log.Debug("lag refresh: fetch the group's offsets", zap.Error(err))
		return
	}
	snap := &lagSnapshot{parts: map[topicPartition]brokerOffsets{}}
	ends.Each(func(e kadm.ListedOffset) {
		if e.Err != nil || e.Partition < 0 {
			return
		}
		b := brokerOffsets{start: -1, end: e.Offset, committed: -1}
		if st, ok := starts.Lookup(e.Topic, e.Partition); ok && st.Err == nil {
			b.start = st.Offset
		}
		if c, ok := committed.Lookup(e.Topic, e.Partition); ok && c.Err == nil && c.At >= 0 {
			b.committed = c.At
		}
		snap.parts[topicPartition{e.Topic, e.Partition}] = b
	})
	s.brokerLag.Store(snap)
}

// groupLag is the group's lag per consumed topic, summed over its
// partitions at the last refresh, with this member's fresher view of its
// own partitions; nil before the first refresh.
func (s *Sink) groupLag() map[string]int64 {
	return s.groupLagOf(s.partitionOffsets())
}

// groupLagOf is groupLag with this member's partitions as offsets lists
// them.
func (s *Sink) groupLagOf(offsets []partitionOffset) map[string]int64 {
	snap := s.brokerLag.Load()
	if snap == nil {
		return nil
	}
	owned := map[topicPartition]int64{}
	for _, p := range offsets {
		owned[p.tp] = p.lag()
	}
	sums := map[string]int64{}
	for tp, b := range snap.parts {
		if l, ok := owned[tp]; ok {
			sums[tp.topic] += l
			continue
		}
		sums[tp.topic] += b.lag(s.cfg.Kafka.StartOffset)
	}
	return sums
}

// watchLag finds partitions that hold nothing while their end offset is
// beyond their position: records the client cannot or does not fetch (a
// record larger than the brokers let it read, say). Stall detection on held
// records cannot see them, since nothing of theirs is held.
func (s *Sink) watchLag(ctx context.Context) {
	idle := map[topicPartition]*worker{}
	var topics []string
	seen := map[string]bool{}
	for tp, w := range s.ownedWorkers() {
		if w.held.Load() > 0 {
			s.unstuck(tp, w)
			continue
		}
		idle[tp] = w
		if !seen[tp.topic] {
			seen[tp.topic] = true
			topics = append(topics, tp.topic)
		}
	}
	if len(idle) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Kafka.RequestTimeout)
	defer cancel()
	adm := kadm.NewClient(s.admin)
	listEnds := adm.ListEndOffsets
	if s.cfg.Kafka.IsolationLevel == IsolationReadCommitted {
		// The last stable offset: records of a transaction still open
		// cannot be fetched yet, and that is no stall.
		listEnds = adm.ListCommittedOffsets
	}
	ends, err := listEnds(ctx, topics...)
	if err != nil {
		s.log.Debug("lag watch: list end offsets", zap.Error(err))
		return
	}
	var committed kadm.OffsetResponses
	var starts kadm.ListedOffsets
	now := time.Now()
	for tp, w := range idle {
		end, ok := ends.Lookup(tp.topic, tp.partition)
		if !ok || end.Err != nil {
			continue
		}
		w.sawEnd(end.Offset)
		pos := w.next.Load()
		if pos < 0 {
			// Nothing arrived since assignment: the position is the
			// committed offset, or the start of the partition.
			if committed == nil {
				if committed, err = adm.FetchOffsets(ctx, s.cfg.Kafka.GroupID); err != nil {
					return
				}
			}
			if starts == nil {
				if starts, err = adm.ListStartOffsets(ctx, topics...); err != nil {
					return
				}
			}
			st, ok := starts.Lookup(tp.topic, tp.partition)
			if !ok || st.Err != nil {
				continue
			}
			if c, ok := committed.Lookup(tp.topic, tp.partition); ok && c.Err == nil && c.At >= 0 {
				// Records below the log start are gone: the client starts
				// at the log start, and owes nothing before it.
				pos = max(c.At, st.Offset)
			} else {
				if s.cfg.Kafka.StartOffset == "latest" {
					continue // starts at the end: nothing is owed
				}
				pos = st.Offset
			}
		}
		if end.Offset <= pos {
			s.unstuck(tp, w)
			continue
		}
		if w.stuckSince.Load() == 0 || w.stuckAt.Load() != pos {
			s.unstuck(tp, w)
			w.stuckSince.Store(now.UnixNano())
			w.stuckAt.Store(pos)
			w.stuckEnd.Store(end.Offset)
			continue
		}
		w.stuckEnd.Store(end.Offset)
		// Seen twice at the same position: a fetch failure, whatever
		// franz-go does about it; Ready fails once it lasts stall_timeout.
		w.stuckReported.Store(true)
		s.health.fail(stageFetch, tp.String(), fmt.Errorf("%d records from offset %d not fetched for %s though nothing of the partition is in flight%s",
			end.Offset-pos, pos, now.Sub(time.Unix(0, w.stuckSince.Load())).Round(time.Second), s.gatedNote()), false)
	}
}

// unstuck ends what the lag watch saw for a partition, and the fetch
// failure it reported.
func (s *Sink) unstuck(tp topicPartition, w *worker) {
	w.stuckSince.Store(0)
	if w.stuckReported.Swap(false) {
		s.health.ok(stageFetch, tp.String())
	}
}

func (s *Sink) gatedNote() string {
	if s.flow.mayPoll() {
		return ""
	}
	return "; fetching is paused: buffered bytes are at memory.max_buffered_bytes"
}

// partitionOffset is one assigned partition's committed offset and high
// watermark (-1: not seen yet), for metrics and the progress line.
type partitionOffset struct {
	tp             topicPartition
	committed, hwm int64
}

// lag is the records of the partition not committed yet.
func (p partitionOffset) lag() int64 { return max(p.hwm-p.committed, 0) }

// partitionOffsets lists the assigned partitions whose committed offset is
// known: from the group's commits, or where this member started reading.
// Each end and commit is the newest of what the client saw and what the
// brokers said at the last lag refresh: the client's view stops moving
// while fetching is paused (memory at its cap, a stage down), the
// brokers' does not.
func (s *Sink) partitionOffsets() []partitionOffset {
	var committed map[string]map[int32]kgo.EpochOffset
	if cl := s.consumer(); cl != nil {
		committed = cl.CommittedOffsets()
	}
	snap := s.brokerLag.Load()
	owned := s.ownedWorkers()
	out := make([]partitionOffset, 0, len(owned))
	for tp, w := range owned {
		c := int64(-1)
		if eo, ok := committed[tp.topic][tp.partition]; ok && eo.Offset >= 0 {
			c = eo.Offset
		} else if f := w.first.Load(); f >= 0 {
			c = f
		}
		hwm := w.hwm.Load()
		if b, ok := snap.get(tp); ok {
			hwm = max(hwm, b.end)
			if c < 0 && b.committed < 0 && b.start >= 0 {
				c = b.owedFrom(s.cfg.Kafka.StartOffset)
			}
			c = max(c, b.committed, b.start)
		}
		if c < 0 {
			continue
		}
		out = append(out, partitionOffset{tp: tp, committed: c, hwm: hwm})
	}
	return out
}
