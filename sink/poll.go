package sink

import (
	"context"
	"errors"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
)

// pollTimeout bounds one poll so the loop turns (and Live can tell it
// is alive) even when no records arrive.
const pollTimeout = 5 * time.Second

// poll hands fetched records to the partitions' workers until ctx ends.
// It returns with rebalances blocked (see shutdown).
func (s *Sink) poll(ctx context.Context) {
	// Rebalances are blocked from a poll until AllowRebalance. Leaving
	// between the two (after a wait for memory, or after routing a poll's
	// records) would let a revoke run now, find no workers once shutdown
	// took them, and hand the partitions over before their acknowledged
	// offsets are committed. A poll with an ended context blocks them and
	// takes nothing.
	defer s.cl.PollFetches(ctx)
	failing := map[topicPartition]bool{}
	for ctx.Err() == nil {
		if !s.flow.mayPoll() {
			// Memory is at max_buffered_bytes: fetch nothing more until
			// acknowledgements free some. franz-go stops fetching once its
			// buffers are full.
			s.lastPoll.Store(time.Now().UnixNano())
			select {
			case <-s.flow.freed:
			case <-time.After(pollTimeout):
			case <-ctx.Done():
			}
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, pollTimeout)
		fetches := s.cl.PollFetches(pctx)
		cancel()
		if fetches.IsClientClosed() || ctx.Err() != nil {
			// Rebalances stay blocked until the shutdown commit is done:
			// a revoke now would find no workers and hand the partitions
			// over before their acknowledged offsets are committed.
			return
		}
		fetches.EachError(func(topic string, partition int32, err error) {
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				return
			}
			// franz-go retries fetch errors itself; they are reported so
			// that an operator sees a broker or ACL problem. An error of
			// the group (joining, heartbeats) comes without a topic.
			tp := topicPartition{topic, partition}
			target := tp.String()
			if topic == "" {
				target = "group " + s.cfg.Kafka.GroupID
			}
			failing[tp] = true
			s.health.fail(stageFetch, target, err, false)
		})
		// Memory goes to the partitions that have records: count them,
		// with those that have some in this poll, before any admits.
		owned := s.ownedWorkers()
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if w := owned[topicPartition{p.Topic, p.Partition}]; w != nil {
				w.sawEnd(p.HighWatermark)
				w.offered = len(p.Records) > 0
			}
		})
		s.countBusy(owned)
		var leftover map[string]map[int32]kgo.EpochOffset
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			tp := topicPartition{p.Topic, p.Partition}
			s.mu.Lock()
			w := s.workers[tp]
			s.mu.Unlock()
			if len(p.Records) == 0 {
				return
			}
			if failing[tp] {
				delete(failing, tp)
				s.health.ok(stageFetch, tp.String())
			}
			if failing[topicPartition{}] {
				delete(failing, topicPartition{})
				s.health.ok(stageFetch, "group "+s.cfg.Kafka.GroupID)
			}
			if _, ok := leftover[p.Topic][p.Partition]; ok {
				return // later records of a partition that left some in Kafka
			}
			if w == nil {
				// Cannot happen with BlockRebalanceOnPoll. Dropping is safe
				// only because these offsets were never acknowledged, but
				// later records of this partition would be, so say so loudly.
				s.log.Error("records for a partition without a worker; dropped uncommitted",
					zap.String("topic", p.Topic), zap.Int32("partition", p.Partition))
				return
			}
			n, data := w.admit(p.Records)
			s.metrics.consumed.WithLabelValues(p.Topic).Add(float64(data))
			if n < len(p.Records) {
				// Past its share of memory: the rest stays in Kafka and is
				// fetched again, from the first record not taken, once the
				// partition has room.
				if leftover == nil {
					leftover = map[string]map[int32]kgo.EpochOffset{}
				}
				if leftover[p.Topic] == nil {
					leftover[p.Topic] = map[int32]kgo.EpochOffset{}
				}
				r := p.Records[n]
				leftover[p.Topic][p.Partition] = kgo.EpochOffset{Epoch: r.LeaderEpoch, Offset: r.Offset}
			}
		})
		if leftover != nil {
			// Before AllowRebalance: no revoke can run meanwhile.
			s.cl.SetOffsets(leftover)
		}
		s.sizeFetches()
		s.lastPoll.Store(time.Now().UnixNano())
		s.cl.AllowRebalance()
	}
}

// countBusy counts the partitions that hold records, have some waiting in
// Kafka, or have some in the poll at hand (offered), for flow.aim.
func (s *Sink) countBusy(owned workerSet) {
	var n int64
	for _, w := range owned {
		if w.offered || w.busy() {
			n++
		}
		w.offered = false
	}
	s.flow.busy.Store(n)
}

// sizeFetches asks of each partition, in the next fetches, about what a
// busy partition has room for (flow.partitionFetch), so that a small share
// of memory does not fetch records only to leave most of them in Kafka and
// fetch them again. The limit is only changed when it moves by more than
// an eighth.
func (s *Sink) sizeFetches() {
	want := s.flow.partitionFetch()
	if cur := s.flow.asked; cur == 0 || want < cur-cur/8 || want > cur+cur/8 {
		fetchMax, _ := fetchSizes(s.flow.cap)
		s.cl.UpdateFetchMaxBytes(fetchMax, want)
		s.flow.asked = want
	}
}
