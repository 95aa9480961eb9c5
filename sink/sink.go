// Package sink consumes Kafka records, turns them into BigQuery rows and
// commits each partition's offset only after BigQuery acknowledged every row
// before it.
//
// One goroutine polls the consumer group and hands each partition's records
// to that partition's worker; the worker owns its batch, its in-flight
// appends and its commit watermark. A committer goroutine commits the
// watermarks every commit_interval, and synchronously when partitions are
// revoked or the sink shuts down.
package sink

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"
	"github.com/twmb/franz-go/plugin/kzap"
	"go.uber.org/zap"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
)

// pollTimeout bounds one poll so the loop turns (and Live can tell it is
// alive) even when no records arrive.
const pollTimeout = 5 * time.Second

// Sink moves records from Kafka to BigQuery. Create it with New, run it with
// Run. Its methods are safe for concurrent use.
type Sink struct {
	cfg     Config
	reg     *schema.Registry
	wh      *bq.Client
	log     *zap.Logger
	metrics *metrics
	kopts   []kgo.Opt
	cl      *kgo.Client // set by Run

	runCtx context.Context // Run's context: its end starts the shutdown

	// base parents every worker's context. It outlives Run's context so
	// that shutdown can still finish in-flight appends.
	base     context.Context
	stopBase context.CancelFunc

	// mu guards workers and tables. With BlockRebalanceOnPoll the group
	// callbacks and the poll loop never run at once; the lock is for Ready
	// and shutdown.
	mu      sync.Mutex
	workers map[topicPartition]*worker
	tables  map[string]*table

	commits commits

	unknownMu sync.Mutex
	unknown   map[int]time.Time // schema ID -> first record that carried it unresolved

	started atomic.Bool
	// stopAt is when Run's context ended (unix nanoseconds; 0 while
	// running). shutdown_timeout counts from then, also for a revoke that
	// was already under way.
	stopAt   atomic.Int64
	lastPoll atomic.Int64 // unix nanoseconds
	// callback is when the running revoke or lost callback began (0: none).
	// franz-go blocks polls while it runs, for up to half the rebalance
	// timeout plus the commit.
	callback atomic.Int64
}

type topicPartition struct {
	topic     string
	partition int32
}

// Option configures a Sink.
type Option func(*options)

type options struct {
	log       *zap.Logger
	reg       prometheus.Registerer
	kafkaOpts []kgo.Opt
}

// WithLogger sets the logger (default: none). The sink names its own
// children ("sink", "kafka").
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.log = l } }

// WithRegisterer registers the sink's and the Kafka client's metrics (default:
// not registered).
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.reg = r } }

// WithKafkaOpts appends franz-go options after the sink's own, for tuning
// that config.yaml does not expose (tests shorten FetchMaxWait, for example).
func WithKafkaOpts(opts ...kgo.Opt) Option {
	return func(o *options) { o.kafkaOpts = append(o.kafkaOpts, opts...) }
}

// New validates cfg and prepares the sink. It does no I/O: a broker that
// cannot be reached is reported by Run.
func New(cfg Config, reg *schema.Registry, wh *bq.Client, opts ...Option) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sink config: %w", err)
	}
	if reg == nil || wh == nil {
		return nil, errors.New("sink: registry and BigQuery client are required")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = zap.NewNop()
	}
	m, err := newMetrics(o.reg)
	if err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	s := &Sink{
		cfg:     cfg.withDefaults(),
		reg:     reg,
		wh:      wh,
		log:     o.log.Named("sink"),
		metrics: m,
		workers: map[topicPartition]*worker{},
		tables:  map[string]*table{},
		commits: commits{marks: map[string]map[int32]kgo.EpochOffset{}},
	}
	s.kopts = s.kafkaOpts(o.log.Named("kafka"))
	if o.reg != nil {
		s.kopts = append(s.kopts, kgo.WithHooks(kprom.NewMetrics("bqsink_kafka", kprom.Registerer(o.reg))))
	}
	s.kopts = append(s.kopts, o.kafkaOpts...)
	return s, nil
}

func (s *Sink) kafkaOpts(log *zap.Logger) []kgo.Opt {
	k := s.cfg.Kafka
	topics, regex := consumeTopics(k.Topics)
	start := kgo.NewOffset().AtStart()
	if k.StartOffset == "latest" {
		start = kgo.NewOffset().AtEnd()
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(k.Brokers...),
		kgo.ClientID(k.ClientID),
		kgo.ConsumerGroup(k.GroupID),
		kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(start),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.SessionTimeout(k.SessionTimeout),
		kgo.RebalanceTimeout(k.RebalanceTimeout),
		kgo.FetchMaxWait(k.FetchMaxWait),
		// Offsets are committed only once BigQuery acknowledged the rows.
		kgo.DisableAutoCommit(),
		// Group callbacks never run while the poll loop routes records, so
		// a record is never handed to a worker whose partition is gone.
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsAssigned(s.assigned),
		kgo.OnPartitionsRevoked(s.revoked),
		kgo.OnPartitionsLost(s.lost),
		kgo.WithLogger(kzap.New(log, kzap.Level(kgo.LogLevelInfo))),
	}
	if regex {
		opts = append(opts, kgo.ConsumeRegex())
	}
	if k.InstanceID != "" {
		opts = append(opts, kgo.InstanceID(k.InstanceID))
	}
	return opts
}

// consumeTopics turns the configured topics into franz-go's form: with any
// regular expression among them every entry must be one, so literal names
// are anchored and quoted.
func consumeTopics(topics []string) ([]string, bool) {
	regex := false
	for _, t := range topics {
		if strings.HasPrefix(t, "^") {
			regex = true
		}
	}
	if !regex {
		return topics, false
	}
	out := make([]string, len(topics))
	for i, t := range topics {
		if strings.HasPrefix(t, "^") {
			out[i] = t
		} else {
			out[i] = "^" + regexp.QuoteMeta(t) + "$"
		}
	}
	return out, true
}

// Run consumes until ctx ends, then flushes, commits what BigQuery
// acknowledged, leaves the group and returns nil. Shutdown takes at most
// shutdown_timeout; writes unanswered by then are abandoned uncommitted and
// read again by the partitions' next owner. Run returns an error without
// consuming when the brokers cannot be reached. Run may be called once.
func (s *Sink) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("sink: Run called twice")
	}
	s.runCtx = ctx
	s.base, s.stopBase = context.WithCancel(context.WithoutCancel(ctx))
	defer s.stopBase()
	// The client joins the group as soon as it exists, so it is created
	// here, where workers have a context to run under.
	var err error
	if s.cl, err = kgo.NewClient(s.kopts...); err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	if err := s.cl.Ping(ctx); err != nil {
		s.cl.Close()
		return fmt.Errorf("reach kafka brokers %v: %w", s.cfg.Kafka.Brokers, err)
	}
	s.log.Info("consuming", zap.Strings("topics", s.cfg.Kafka.Topics), zap.String("group", s.cfg.Kafka.GroupID))

	commitCtx, stopCommitter := context.WithCancel(context.WithoutCancel(ctx))
	committerDone := make(chan struct{})
	go func() {
		defer close(committerDone)
		s.commitLoop(commitCtx)
	}()

	stopWatch := context.AfterFunc(ctx, func() { s.stopAt.Store(time.Now().UnixNano()) })
	defer stopWatch()
	s.poll(ctx)

	// Shutdown: the context that ended Run must not cut short the final
	// appends and commit, so they get their own deadline.
	sctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), s.shutdownDeadline(1))
	defer cancel()
	s.mu.Lock()
	all := make([]*worker, 0, len(s.workers))
	for tp, w := range s.workers {
		all = append(all, w)
		delete(s.workers, tp)
	}
	s.mu.Unlock()
	// A quarter of the budget is kept for the commit: a straggler that
	// uses up the whole wait must not cost every partition its commit.
	stopCtx, stopCancel := context.WithDeadline(sctx, s.shutdownDeadline(0.75))
	stopWorkers(stopCtx, all)
	stopCancel()
	stopCommitter()
	<-committerDone
	s.commitAll(sctx, "shutdown")
	s.metrics.partitions.Set(0)
	s.cl.AllowRebalance()
	// Leaving the group triggers one last revoke, which finds no workers;
	// it is bounded so that an unreachable coordinator cannot hold the exit.
	if err := s.cl.LeaveGroupContext(sctx); err != nil {
		s.log.Warn("leave group", zap.Error(err))
	}
	s.cl.Close()
	s.log.Info("stopped")
	return nil
}

func (s *Sink) poll(ctx context.Context) {
	for {
		pctx, cancel := context.WithTimeout(ctx, pollTimeout)
		fetches := s.cl.PollRecords(pctx, s.cfg.Batch.MaxRecords)
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
			// that an operator sees a broker or ACL problem.
			s.log.Warn("fetch failed", zap.String("topic", topic), zap.Int32("partition", partition), zap.Error(err))
		})
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if len(p.Records) == 0 {
				return
			}
			s.mu.Lock()
			w := s.workers[topicPartition{p.Topic, p.Partition}]
			s.mu.Unlock()
			if w == nil {
				// Cannot happen with BlockRebalanceOnPoll. Dropping is safe
				// only because these offsets were never acknowledged, but
				// later records of this partition would be, so say so loudly.
				s.log.Error("records for a partition without a worker; dropped uncommitted",
					zap.String("topic", p.Topic), zap.Int32("partition", p.Partition))
				return
			}
			s.metrics.consumed.WithLabelValues(p.Topic).Add(float64(len(p.Records)))
			w.push(p.Records)
		})
		s.lastPoll.Store(time.Now().UnixNano())
		s.cl.AllowRebalance()
	}
}

func (s *Sink) assigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for topic, partitions := range assigned {
		t := s.tableLocked(topic)
		for _, p := range partitions {
			tp := topicPartition{topic, p}
			if s.workers[tp] != nil {
				continue
			}
			w := newWorker(s, tp, t)
			s.workers[tp] = w
			go w.run()
			n++
		}
	}
	s.metrics.partitions.Set(float64(len(s.workers)))
	s.log.Info("partitions assigned", zap.Any("partitions", assigned), zap.Int("owned", len(s.workers)))
}

// revoked stops the revoked partitions' workers, letting in-flight appends
// finish for up to half the rebalance timeout, then commits what BigQuery
// acknowledged before the partitions move.
func (s *Sink) revoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	ws := s.take(revoked)
	if len(ws) == 0 {
		return
	}
	s.callback.Store(time.Now().UnixNano())
	defer s.callback.Store(0)
	dctx, cancel := s.shutdownBounded(ctx, s.cfg.Kafka.RebalanceTimeout/2, 0.5)
	defer cancel()
	stopWorkers(dctx, ws)
	// The commit gets its own budget: dctx may have ended on a straggler.
	cctx, ccancel := s.shutdownBounded(ctx, s.cfg.Kafka.RebalanceTimeout/4, 0.75)
	defer ccancel()
	s.commitPartitions(cctx, revoked, "revoke")
	// A partition paused for backpressure would stay paused if it came back.
	s.cl.ResumeFetchPartitions(revoked)
	s.log.Info("partitions revoked", zap.Any("partitions", revoked))
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

// lost abandons the partitions at once: another member may own them already,
// so nothing more is committed for them.
func (s *Sink) lost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
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
		<-w.done
	}
	s.commits.drop(lost)
	s.cl.ResumeFetchPartitions(lost)
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
	s.metrics.partitions.Set(float64(len(s.workers)))
	return ws
}

// stopWorkers asks every worker to finish its in-flight appends and waits;
// when ctx ends first, the stragglers are cancelled.
func stopWorkers(ctx context.Context, ws []*worker) {
	for _, w := range ws {
		w.stop()
	}
	for _, w := range ws {
		select {
		case <-w.done:
		case <-ctx.Done():
			w.cancel()
			<-w.done
		}
	}
}

func (s *Sink) tableLocked(topic string) *table {
	name := s.cfg.TableFor(topic)
	t := s.tables[name]
	if t == nil {
		t = &table{bq: s.wh.Table(name)}
		s.tables[name] = t
	}
	return t
}

// withinUnknownGrace reports whether a schema ID the registry does not know
// is still within unknown_schema_grace of the first record that carried it.
func (s *Sink) withinUnknownGrace(id int) bool {
	s.unknownMu.Lock()
	defer s.unknownMu.Unlock()
	first, seen := s.unknown[id]
	if !seen {
		if s.unknown == nil {
			s.unknown = map[int]time.Time{}
		}
		first = time.Now()
		s.unknown[id] = first
	}
	return time.Since(first) < s.cfg.UnknownSchemaGrace
}

// Live reports whether the poll loop is turning. A nil error means alive.
func (s *Sink) Live() error {
	if !s.started.Load() {
		return errors.New("not started")
	}
	last := s.lastPoll.Load()
	if last == 0 {
		return nil // still joining; Ready tells when it is done
	}
	if cb := s.callback.Load(); cb != 0 && time.Since(time.Unix(0, cb)) < s.cfg.Kafka.RebalanceTimeout {
		return nil // polls wait for the rebalance callback
	}
	if age := time.Since(time.Unix(0, last)); age > 6*pollTimeout {
		return fmt.Errorf("poll loop stuck for %s", age.Round(time.Second))
	}
	return nil
}

// Ready reports whether the sink polls and no partition has held
// unacknowledged records without progress for longer than stall_timeout.
func (s *Sink) Ready() error {
	if s.lastPoll.Load() == 0 {
		return errors.New("not polling yet")
	}
	s.mu.Lock()
	var stalled []string
	for tp, w := range s.workers {
		if w.stalledFor(s.cfg.StallTimeout) {
			stalled = append(stalled, fmt.Sprintf("%s/%d", tp.topic, tp.partition))
		}
	}
	s.mu.Unlock()
	s.metrics.stalled.Set(float64(len(stalled)))
	if len(stalled) > 0 {
		return fmt.Errorf("no progress for %s on %s", s.cfg.StallTimeout, strings.Join(stalled, ", "))
	}
	return nil
}
