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
	snap := s.brokerLag.Load()
	if snap == nil {
		return nil
	}
	owned := map[topicPartition]int64{}
	for _, p := range s.partitionOffsets() {
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
	return errors.Is(err, errTopicMissing) || errors.Is(err, errDLQRefused) || errors.Is(err, schema.ErrUnauthorized) || errors.Is(err, schema.ErrTLS) ||
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
	createDLQ := false
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
		switch {
		case dlq && t == s.cfg.Errors.DLQTopic && terr == errTopicMissing && s.cfg.Errors.DLQCreate:
			createDLQ = true
		case dlq && t == s.cfg.Errors.DLQTopic:
			errs = append(errs, fmt.Errorf("errors.dlq_topic: dead-letter topic %q: %w; create it (with max.message.bytes at least the source topics'), set errors.dlq_create: true, or set errors.policy to skip or fail", t, terr))
		default:
			errs = append(errs, fmt.Errorf("kafka.topics: topic %q: %w", t, terr))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if createDLQ {
		if err := s.createDLQ(ctx, adm); err != nil {
			return err
		}
	}
	if dlq {
		s.readDLQLimit(ctx, adm)
	}
	return nil
}

// dlqHeadroom is what the dead-letter topic's max.message.bytes allows
// beyond the largest source record: the headers bqsink adds (where it came
// from, the reason, the error).
const dlqHeadroom = 64 << 10

// errDLQRefused is wrapped by the startup check's error when the brokers
// refuse to create the dead-letter topic: retrying will not help.
var errDLQRefused = errors.New("the brokers refused to create it")

// createDLQ creates the missing dead-letter topic with the brokers'
// default partition count and replication factor, and a max.message.bytes
// that takes the largest record of the source topics plus the headers
// bqsink adds. Another replica creating it first is fine.
func (s *Sink) createDLQ(ctx context.Context, adm *kadm.Client) error {
	topic := s.cfg.Errors.DLQTopic
	largest, from := s.largestSourceRecord(ctx, adm)
	var configs map[string]*string
	if largest > 0 {
		configs = map[string]*string{"max.message.bytes": kadm.StringPtr(strconv.FormatInt(largest+dlqHeadroom, 10))}
	}
	resp, err := adm.CreateTopic(ctx, -1, -1, configs, topic)
	if err == nil {
		err = resp.Err
	}
	switch {
	case err == nil:
		s.log.Info("created the dead-letter topic", zap.String("topic", topic), zap.Int32("partitions", resp.NumPartitions),
			zap.Int16("replication_factor", resp.ReplicationFactor), zap.Int64("max_message_bytes", largest+dlqHeadroom),
			zap.String("max_message_bytes_from", from))
		return nil
	case errors.Is(err, kerr.TopicAlreadyExists):
		return nil // another replica was first
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || kerr.IsRetriable(err):
		return s.kafkaErr(err)
	}
	want := "with max.message.bytes at least the source topics'"
	if largest > 0 {
		want = fmt.Sprintf("with max.message.bytes %d (the largest of %s, plus %d for bqsink's headers)", largest+dlqHeadroom, from, dlqHeadroom)
	}
	return fmt.Errorf("errors.dlq_topic: dead-letter topic %q does not exist and %w (%v): create it %s, or grant this client CREATE on it, or set errors.policy to skip or fail",
		topic, errDLQRefused, err, want)
}

// largestSourceRecord is the largest max.message.bytes among the literal
// source topics and the brokers' default (message.max.bytes), which topics
// matched by a regular expression may use; and where it comes from. Zero
// if none can be read (no right to describe configs).
func (s *Sink) largestSourceRecord(ctx context.Context, adm *kadm.Client) (int64, string) {
	var largest int64
	var from string
	consider := func(rcs kadm.ResourceConfigs, key, what string) { // what: how to name the largest, followed by its resource's name
		for _, rc := range rcs {
			if rc.Err != nil {
				continue
			}
			for _, c := range rc.Configs {
				if c.Key != key || c.Value == nil {
					continue
				}
				if n, err := strconv.ParseInt(*c.Value, 10, 64); err == nil && n > largest {
					largest, from = n, what+rc.Name
				}
			}
		}
	}
	if topics := s.cfg.literalTopics(); len(topics) > 0 {
		if rcs, err := adm.DescribeTopicConfigs(ctx, topics...); err == nil {
			consider(rcs, "max.message.bytes", "max.message.bytes of topic ")
		}
	}
	if rcs, err := adm.DescribeBrokerConfigs(ctx); err == nil {
		consider(rcs, "message.max.bytes", "message.max.bytes of broker ")
	}
	return largest, from
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
