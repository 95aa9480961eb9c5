package sink

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"go.uber.org/zap"

	"github.com/bqsink/bqsink/schema"
)

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
	var before stats
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.health.tick(now)
			s.rejects.flush(now)
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
	offsets := s.partitionOffsets()
	for _, p := range offsets {
		if p.hwm > p.committed {
			lag += p.hwm - p.committed
		}
	}
	s.log.Info("progress",
		zap.Int64("rows_written", rows), zap.Float64("rows_per_second", math.Round(float64(rows)/since.Seconds())),
		zap.Int64("lag", lag), zap.Int64("partitions", s.flow.parts.Load()),
		zap.Int64("retries", delta(&s.stats.retries, &before.retries)),
		zap.Int64("rejected", delta(&s.stats.rejected, &before.rejected)),
		zap.Int64("dead_lettered", delta(&s.stats.deadLettered, &before.deadLettered)),
		zap.Int64("buffered_bytes", s.flow.used.Load()), zap.Duration("over", since.Round(time.Second)))
}

// watchLag finds partitions that hold nothing while their end offset is
// beyond their position: records the client cannot or does not fetch (a
// record larger than the brokers let it read, say). Stall detection on held
// records cannot see them, since nothing of theirs is held.
func (s *Sink) watchLag(ctx context.Context) {
	s.mu.Lock()
	idle := map[topicPartition]*worker{}
	var topics []string
	seen := map[string]bool{}
	for tp, w := range s.workers {
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
	s.mu.Unlock()
	if len(idle) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Kafka.RequestTimeout)
	defer cancel()
	adm := kadm.NewClient(s.admin)
	ends, err := adm.ListEndOffsets(ctx, topics...)
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
			if c, ok := committed.Lookup(tp.topic, tp.partition); ok && c.Err == nil && c.At >= 0 {
				pos = c.At
			} else {
				if starts == nil {
					if starts, err = adm.ListStartOffsets(ctx, topics...); err != nil {
						return
					}
				}
				st, ok := starts.Lookup(tp.topic, tp.partition)
				if !ok || st.Err != nil {
					continue
				}
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

// check runs the startup checks in parallel, each retrying failures that
// may pass until startupTimeout: Kafka answers and the topics exist, the
// registry answers, the BigQuery dataset is readable and the Storage Write
// API answers. A failure that will not pass (missing topic or dataset,
// refused credentials) ends the check at once.
func (s *Sink) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startupTimeout)
	defer cancel()
	checks := []func(context.Context) error{s.checkKafka, s.reg.Check, s.wh.Check}
	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			for attempt := 1; ; attempt++ {
				err := c(ctx)
				if err == nil || permanent(err) || ctx.Err() != nil {
					errs[i] = err
					return
				}
				if !sleep(ctx, backoff(attempt)) {
					errs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("startup check failed:\n%w", err)
	}
	return nil
}

// errTopicMissing is wrapped by the startup check's error for a configured
// topic that does not exist.
var errTopicMissing = errors.New("topic does not exist")

// permanent reports whether a startup check's error will not pass by
// itself: a missing topic or dataset, refused credentials, a certificate
// not trusted or refused, a file that cannot be read.
func permanent(err error) bool {
	return errors.Is(err, errTopicMissing) || errors.Is(err, schema.ErrUnauthorized) || errors.Is(err, schema.ErrTLS) ||
		needsOperator(err) || errors.Is(err, kerr.TopicAuthorizationFailed) || errors.Is(err, kerr.ClusterAuthorizationFailed) ||
		errors.Is(err, kerr.SaslAuthenticationFailed) || errors.As(err, new(*kafkaSetupError))
}

// checkKafka asks the brokers for the literal topics and, under
// errors.policy dlq, the dead-letter topic: each must exist.
func (s *Sink) checkKafka(ctx context.Context) error {
	topics := s.cfg.literalTopics()
	dlq := s.cfg.Errors.Policy == PolicyDLQ
	if dlq {
		topics = append(topics, s.cfg.Errors.DLQTopic)
	}
	adm := kadm.NewClient(s.admin)
	if len(topics) == 0 {
		_, err := adm.BrokerMetadata(ctx)
		return s.kafkaErr(err)
	}
	details, err := adm.ListTopics(ctx, topics...)
	if err != nil {
		return s.kafkaErr(err)
	}
	var errs []error
	for _, t := range topics {
		d, ok := details[t]
		var terr error
		switch {
		case !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition):
			terr = errTopicMissing
		default:
			terr = d.Err
		}
		if terr == nil {
			continue
		}
		if dlq && t == s.cfg.Errors.DLQTopic {
			errs = append(errs, fmt.Errorf("errors.dlq_topic: dead-letter topic %q: %w; create it (with max.message.bytes at least the source topics'), or set errors.policy to skip or fail", t, terr))
		} else {
			errs = append(errs, fmt.Errorf("kafka.topics: topic %q: %w", t, terr))
		}
	}
	if len(errs) == 0 && dlq {
		s.readDLQLimit(ctx, adm)
	}
	return errors.Join(errs...)
}

// readDLQLimit reads the dead-letter topic's max.message.bytes, so that the
// producer's batches stay under it. Without the right to read topic
// configs, Kafka's default is assumed.
func (s *Sink) readDLQLimit(ctx context.Context, adm *kadm.Client) {
	rcs, err := adm.DescribeTopicConfigs(ctx, s.cfg.Errors.DLQTopic)
	if err == nil {
		var rc kadm.ResourceConfig
		if rc, err = rcs.On(s.cfg.Errors.DLQTopic, nil); err == nil {
			err = rc.Err
		}
		for _, c := range rc.Configs {
			if c.Key == "max.message.bytes" && c.Value != nil {
				if n, perr := strconv.ParseInt(*c.Value, 10, 32); perr == nil && n >= 512 {
					s.dlq.maxBytes.Store(int32(n))
					return
				}
			}
		}
	}
	s.log.Warn("could not read the dead-letter topic's max.message.bytes; assuming Kafka's default", zap.String("topic", s.cfg.Errors.DLQTopic),
		zap.Int("bytes", defaultMaxMessageBytes), zap.Error(err))
}

// kafkaErr names the key to fix in an error of the startup check's Kafka
// requests: the kafka.tls or kafka.sasl key when only an operator can fix
// it (see KafkaConfig.setupProblem), kafka.brokers otherwise.
func (s *Sink) kafkaErr(err error) error {
	if err == nil {
		return nil
	}
	brokers := strings.Join(s.cfg.Kafka.Brokers, ",")
	if setup := s.cfg.Kafka.setupProblem(err); setup != nil {
		return fmt.Errorf("%w (kafka.brokers %s)", setup, brokers)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		hint := ""
		if s.cfg.Kafka.TLS.Enabled {
			hint = "; kafka.tls.enabled is true: do the brokers listen with TLS there?"
		}
		return fmt.Errorf("kafka.brokers %s: no answer within %s: %w%s", brokers, startupTimeout, err, hint)
	}
	return fmt.Errorf("kafka.brokers %s: %w", brokers, err)
}
