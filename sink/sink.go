// Package sink consumes Kafka records, turns them into BigQuery rows and
// commits each partition's offset only after BigQuery acknowledged every row
// before it.
//
// One goroutine polls the consumer group and hands each partition's records
// to that partition's worker; the worker owns its batch, its in-flight
// appends and its commit watermark. A committer goroutine commits the
// watermarks every commit_interval, and synchronously when partitions are
// revoked or the sink shuts down. A monitor goroutine reports failures that
// last, summarises rejected records and watches for partitions that have
// records the client cannot fetch.
package sink

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"
	"github.com/twmb/franz-go/plugin/kzap"
	"go.uber.org/zap"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
)

const (
	// pollTimeout bounds one poll so the loop turns (and Live can tell it
	// is alive) even when no records arrive.
	pollTimeout = 5 * time.Second
	// startupTimeout bounds the startup checks: a problem that will not
	// fix itself ends Run within it, and the process within 10s.
	startupTimeout = 8 * time.Second
	// monitorEvery is how often failures that last are logged again and
	// rejection summaries written.
	monitorEvery = 5 * time.Second
	// stopGrace bounds the wait for a worker after it was cancelled; every
	// call it makes honours cancellation, so this is a last resort.
	stopGrace = time.Second
	// maxUnknownIDs bounds the unknown schema IDs remembered for their
	// grace before old ones are forgotten.
	maxUnknownIDs = 1024
)

// ErrIncomplete is returned by Run when shutdown could not finish within
// shutdown_timeout: appends were left unanswered or the final commit
// failed. Nothing acknowledged is lost; the records not committed are read
// again by the partitions' next owner.
var ErrIncomplete = errors.New("shutdown incomplete")

// Sink moves records from Kafka to BigQuery. Create it with New, run it with
// Run. Its methods are safe for concurrent use.
type Sink struct {
	cfg     Config
	log     *zap.Logger
	version string
	metrics *metrics
	health  *health
	rejects *rejectLog
	flow    *flow
	stats   stats
	reg     *schema.Registry
	kopts   []kgo.Opt

	// Set by Run before anything uses them.
	wh    *bq.Client
	cl    *kgo.Client                // the consumer; group callbacks use the client they are given
	clRef atomic.Pointer[kgo.Client] // cl, for readers outside Run's goroutine (metrics)
	admin *kgo.Client                // admin requests and dead-letter writes
	dlq   *deadLetters

	runCtx  context.Context
	stopRun context.CancelCauseFunc // ends the run early: a record failed under errors.policy fail
	// base parents every worker's context. It outlives Run's context so
	// that shutdown can still finish in-flight appends.
	base context.Context

	// mu guards workers. With BlockRebalanceOnPoll the group callbacks and
	// the poll loop never run at once; the lock is for Ready, the monitor
	// and shutdown.
	mu      sync.Mutex
	workers map[topicPartition]*worker

	commits commits

	// brokerLag is the group's offsets and the partitions' ends as the
	// brokers told them at the last refresh (nil before the first).
	brokerLag atomic.Pointer[lagSnapshot]

	unknownMu sync.Mutex
	unknown   map[int]time.Time // schema ID -> first record that carried it unresolved

	fatalErr atomic.Pointer[error] // set once by fatal

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

func (tp topicPartition) String() string { return fmt.Sprintf("%s/%d", tp.topic, tp.partition) }

// Option configures a Sink.
type Option func(*options)

type options struct {
	log       *zap.Logger
	reg       prometheus.Registerer
	kafkaOpts []kgo.Opt
	version   string
}

// WithLogger sets the logger (default: none). The sink names its own
// children ("sink", "kafka", "schema", "bigquery").
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.log = l } }

// WithRegisterer registers the sink's and the Kafka client's metrics (default:
// not registered).
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.reg = r } }

// WithKafkaOpts appends franz-go options after the sink's own, for tuning
// that config.yaml does not expose (tests shorten FetchMaxWait, for example).
func WithKafkaOpts(opts ...kgo.Opt) Option {
	return func(o *options) { o.kafkaOpts = append(o.kafkaOpts, opts...) }
}

// WithVersion sets the version written in the bqsink.version header of
// dead-letter records (default "unknown").
func WithVersion(v string) Option { return func(o *options) { o.version = v } }

// New validates cfg and prepares the sink, its registry client and its
// metrics. It does no I/O: an endpoint that cannot be reached is reported
// by Run.
func New(cfg Config, opts ...Option) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config:\n%w", err)
	}
	o := options{version: "unknown"}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = zap.NewNop()
	}
	cfg = cfg.WithDefaults()
	reg, err := schema.NewRegistry(cfg.SchemaRegistry, o.log.Named("schema"))
	if err != nil {
		return nil, err
	}
	m := newMetrics()
	s := &Sink{
		cfg:     cfg,
		log:     o.log.Named("sink"),
		version: o.version,
		metrics: m,
		rejects: newRejectLog(o.log.Named("sink")),
		flow:    newFlow(cfg.Memory.MaxBufferedBytes),
		reg:     reg,
		workers: map[topicPartition]*worker{},
		commits: commits{marks: map[string]map[int32]kgo.EpochOffset{}, marked: make(chan struct{}, 1)},
	}
	s.health = newHealth(s.log, m, &s.stats.retries)
	s.kopts = s.consumerOpts(o.log.Named("kafka"))
	if o.reg != nil {
		if err := m.register(o.reg, s); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
		s.kopts = append(s.kopts, kgo.WithHooks(kprom.NewMetrics("bqsink_kafka", kprom.Registerer(o.reg))))
	}
	s.kopts = append(s.kopts, o.kafkaOpts...)
	return s, nil
}

func (s *Sink) consumerOpts(log *zap.Logger) []kgo.Opt {
	k := s.cfg.Kafka
	topics, regex := consumeTopics(k.Topics)
	start := kgo.NewOffset().AtStart()
	if k.StartOffset == "latest" {
		start = kgo.NewOffset().AtEnd()
	}
	fetchMax, partitionMax := fetchSizes(s.cfg.Memory.MaxBufferedBytes)
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
		// Fetch sizes follow memory.max_buffered_bytes; see flow.
		kgo.FetchMaxBytes(fetchMax),
		kgo.FetchMaxPartitionBytes(partitionMax),
		kgo.MaxConcurrentFetches(concurrentFetches),
		kgo.FetchIsolationLevel(isolationLevels[k.IsolationLevel]),
		// Transaction markers take offsets too: they are handed to the
		// workers (no row) so that a partition's commit moves past them,
		// and an idle transactional partition has no lag.
		kgo.KeepControlRecords(),
		// Offsets are committed only once BigQuery acknowledged the rows.
		kgo.DisableAutoCommit(),
		// Group callbacks never run while the poll loop routes records, so
		// a record is never handed to a worker whose partition is gone.
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsAssigned(s.assigned),
		kgo.OnPartitionsRevoked(s.revoked),
		kgo.OnPartitionsLost(s.lost),
		kgo.WithLogger(kzap.New(log, kzap.Level(kafkaLogLevels[k.LogLevel]))),
	}
	if regex {
		opts = append(opts, kgo.ConsumeRegex())
	}
	if k.InstanceID != "" {
		opts = append(opts, kgo.InstanceID(k.InstanceID))
	}
	return append(opts, k.securityOpts()...)
}

// adminOpts configure the client for admin requests (the startup checks,
// the lag watch) and dead-letter writes. It joins no group.
func (s *Sink) adminOpts(log *zap.Logger) []kgo.Opt {
	k := s.cfg.Kafka
	return append([]kgo.Opt{
		kgo.SeedBrokers(k.Brokers...),
		kgo.ClientID(k.ClientID),
		kgo.ProducerBatchMaxBytesFn(s.dlq.batchMaxBytes),
		kgo.ProduceRequestTimeout(k.RequestTimeout),
		// Dead-letter records are written at least once, like rows; an
		// idempotent producer would need one more ACL for nothing.
		kgo.DisableIdempotentWrite(),
		kgo.ProducerLinger(0),
		// A dead letter can be as large as the largest record: compressing
		// it would hold one more copy of it while it is written.
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		// Every failure of this client is returned to the sink, which
		// reports it once: franz-go's own copy stays below error.
		kgo.WithLogger(warnCap{kzap.New(log, kzap.Level(kafkaLogLevels[k.LogLevel]))}),
	}, k.securityOpts()...)
}

// kafkaLogLevels are the values of kafka.log_level.
var kafkaLogLevels = map[string]kgo.LogLevel{
	"debug": kgo.LogLevelDebug, "info": kgo.LogLevelInfo, "warn": kgo.LogLevelWarn,
	"error": kgo.LogLevelError, "none": kgo.LogLevelNone,
}

// isolationLevels are the values of kafka.isolation_level.
var isolationLevels = map[string]kgo.IsolationLevel{
	IsolationReadCommitted: kgo.ReadCommitted(), IsolationReadUncommitted: kgo.ReadUncommitted(),
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

// Run checks that Kafka, the registry and BigQuery answer, consumes until
// ctx ends, then flushes, commits what BigQuery acknowledged, leaves the
// group and returns.
//
// A startup check that fails (a missing topic or dataset, refused
// credentials, an endpoint that does not answer within 10s) ends Run
// with an error naming the config key to fix. If ctx ends before consuming
// starts, Run returns nil. Shutdown takes at most shutdown_timeout; if
// appends are still unanswered then or the final commit fails, Run returns
// an error wrapping ErrIncomplete (their records are read again by the
// next owner). Under errors.policy fail, a record that can never be
// written ends Run with an error naming it, after committing everything
// before it. Run may be called once.
func (s *Sink) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("sink: Run called twice")
	}
	runCtx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	s.runCtx, s.stopRun = runCtx, stopRun
	stopWatch := context.AfterFunc(runCtx, func() { s.stopAt.Store(time.Now().UnixNano()) })
	defer stopWatch()
	// The clients outlive ctx: shutdown still appends and commits.
	base, stopBase := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBase()
	s.base = base

	var err error
	if s.wh, err = bq.NewClient(base, s.cfg.BigQuery, s.log.Named("bigquery")); err != nil {
		return fmt.Errorf("bigquery: %w", err)
	}
	defer s.closeBounded("bigquery client", func() { _ = s.wh.Close() })
	s.dlq = &deadLetters{topic: s.cfg.Errors.DLQTopic, table: s.tableName, version: s.version, timeout: s.cfg.Kafka.RequestTimeout}
	if s.admin, err = kgo.NewClient(s.adminOpts(s.log.Named("kafka"))...); err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer s.closeBounded("kafka admin client", s.admin.Close)
	s.dlq.cl = s.admin

	s.log.Info("checking kafka, schema registry and bigquery")
	if err := s.check(runCtx); err != nil {
		if ctx.Err() != nil {
			s.log.Info("stopped before consuming")
			return nil
		}
		return err
	}
	s.checkTableSettings(runCtx)
	// The consumer joins the group as soon as it exists, so it is created
	// only now, when workers have everything they need.
	if s.cl, err = kgo.NewClient(s.kopts...); err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	s.clRef.Store(s.cl)
	s.log.Info("consuming", zap.Strings("topics", s.cfg.Kafka.Topics), zap.String("group", s.cfg.Kafka.GroupID),
		zap.String("errors_policy", s.cfg.Errors.Policy), zap.Int64("max_buffered_bytes", s.cfg.Memory.MaxBufferedBytes))

	var bg sync.WaitGroup
	bgCtx, stopBg := context.WithCancel(base)
	bg.Go(func() { s.commitLoop(bgCtx) })
	bg.Go(func() { s.monitor(bgCtx) })

	s.poll(runCtx)
	return s.shutdown(ctx, stopBg, &bg)
}

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
		var leftover map[string]map[int32]kgo.EpochOffset
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			tp := topicPartition{p.Topic, p.Partition}
			s.mu.Lock()
			w := s.workers[tp]
			s.mu.Unlock()
			if w != nil {
				w.sawEnd(p.HighWatermark)
			}
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
		s.lastPoll.Store(time.Now().UnixNano())
		s.cl.AllowRebalance()
	}
}

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

// partitionOffset is one assigned partition's committed offset and high
// watermark (-1: not seen yet), for metrics and the progress line.
type partitionOffset struct {
	tp             topicPartition
	committed, hwm int64
}

// lag is the records of the partition not committed yet.
func (p partitionOffset) lag() int64 { return max(p.hwm-p.committed, 0) }

// consumer is the consumer client once Run created it, else nil.
func (s *Sink) consumer() *kgo.Client { return s.clRef.Load() }

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
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]partitionOffset, 0, len(s.workers))
	for tp, w := range s.workers {
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

func (s *Sink) newWorker(cl *kgo.Client, tp topicPartition) *worker {
	t := s.wh.Table(s.cfg.TableFor(tp.topic))
	settings, keys := s.cfg.SettingsFor(tp.topic)
	t.SetOptions(settings.tableOptions(keys))
	log := s.log.With(zap.String("topic", tp.topic), zap.Int32("partition", tp.partition), zap.String("table", t.Name()))
	dec := &decoder{reg: s.reg, registry: "schema registry", table: t, meta: s.cfg.MetadataColumn,
		grace: s.withinUnknownGrace, log: log}
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
		charge:     s.flow.charge,
		release:    s.flow.release,
		share:      s.flow.share,
		health:     s.health,
		rejects:    s.rejects,
		metrics:    s.metrics,
		stats:      &s.stats,
	}
	var eo *exactlyOnce
	if s.cfg.BigQuery.ExactlyOnce() {
		eo = &exactlyOnce{table: t, tp: tp, log: log, metrics: s.metrics, committed: s.committedFunc(tp),
			skipped: s.skippedFunc(tp), readCommitted: s.cfg.Kafka.IsolationLevel == IsolationReadCommitted}
		deps.append = eo.appendRows
	}
	b := s.cfg.Batch
	cfg := workerConfig{maxRecords: b.MaxRecords, maxBytes: b.MaxBytes, maxWait: b.MaxWait, maxInflight: b.MaxInflight,
		policy: s.cfg.Errors.Policy, maxRecordBytes: s.cfg.BigQuery.MaxRequestBytes}
	w := newWorker(tp, t.Name(), cfg, deps, s.base, log)
	w.eo = eo
	return w
}

// checkTableSettings compares, in the background, the tables of the
// literal topics that configure partitioning or clustering with what
// exists, so that a table created otherwise is reported at startup rather
// than at its first record. Failures to read are left to the write path.
func (s *Sink) checkTableSettings(ctx context.Context) {
	for _, topic := range s.cfg.literalTopics() {
		settings, keys := s.cfg.SettingsFor(topic)
		if settings.Partitioning == nil && len(settings.Clustering) == 0 {
			continue
		}
		t := s.wh.Table(s.cfg.TableFor(topic))
		t.SetOptions(settings.tableOptions(keys))
		go func() {
			if err := t.CheckSettings(ctx); err != nil {
				s.log.Debug("could not compare the table's settings at startup", zap.String("table", t.Name()), zap.Error(err))
			}
		}()
	}
}

// committedFunc reads the group's committed offset of tp, with its
// metadata, bounded by kafka.request_timeout.
func (s *Sink) committedFunc(tp topicPartition) committedFunc {
	return func(ctx context.Context) (int64, string, bool, error) {
		ctx, cancel := context.WithTimeout(ctx, s.cfg.Kafka.RequestTimeout)
		defer cancel()
		offsets, err := kadm.NewClient(s.admin).FetchOffsets(ctx, s.cfg.Kafka.GroupID)
		if err != nil {
			return 0, "", false, err
		}
		o, ok := offsets.Lookup(tp.topic, tp.partition)
		if !ok || o.At < 0 {
			return -1, "", false, nil
		}
		if o.Err != nil {
			return 0, "", false, o.Err
		}
		return o.At, o.Metadata, true, nil
	}
}

// skippedFunc reads tp's log start offset and whether its topic is
// compacted, bounded by kafka.request_timeout. A topic whose configuration
// may not be read counts as compacted: exactly-once then falls back rather
// than guess.
func (s *Sink) skippedFunc(tp topicPartition) skippedFunc {
	return func(ctx context.Context) (int64, bool, error) {
		ctx, cancel := context.WithTimeout(ctx, s.cfg.Kafka.RequestTimeout)
		defer cancel()
		adm := kadm.NewClient(s.admin)
		starts, err := adm.ListStartOffsets(ctx, tp.topic)
		if err != nil {
			return 0, false, err
		}
		start, ok := starts.Lookup(tp.topic, tp.partition)
		if !ok {
			return 0, false, fmt.Errorf("no start offset listed for %s", tp)
		}
		if start.Err != nil {
			return 0, false, start.Err
		}
		rcs, err := adm.DescribeTopicConfigs(ctx, tp.topic)
		if err != nil {
			return 0, false, err
		}
		rc, err := rcs.On(tp.topic, nil)
		if err != nil || rc.Err != nil {
			return start.Offset, true, nil
		}
		for _, c := range rc.Configs {
			if c.Key == "cleanup.policy" && c.Value != nil {
				return start.Offset, strings.Contains(*c.Value, "compact"), nil
			}
		}
		return start.Offset, false, nil
	}
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
	s.flow.parts.Store(int64(len(s.workers)))
	return ws
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

// fatal ends the run for a record that can never be written under
// errors.policy fail. Everything before it is committed by the shutdown.
func (s *Sink) fatal(rj *rejection) {
	err := fmt.Errorf("errors.policy is fail: record %s/%d offset %d cannot be written (%s): %w; offsets before it are committed",
		rj.rec.Topic, rj.rec.Partition, rj.rec.Offset, rj.reason, rj.err)
	if s.fatalErr.CompareAndSwap(nil, &err) {
		s.stopRun(err)
	}
}

func (s *Sink) tableName(topic string) string {
	if s.wh == nil {
		return s.cfg.TableFor(topic)
	}
	return s.wh.Table(s.cfg.TableFor(topic)).Name()
}

// withinUnknownGrace reports whether a schema ID the registry does not know
// is still within unknown_schema_grace of the first record that carried it.
func (s *Sink) withinUnknownGrace(id int) bool {
	s.unknownMu.Lock()
	defer s.unknownMu.Unlock()
	now := time.Now()
	first, seen := s.unknown[id]
	if !seen {
		if s.unknown == nil {
			s.unknown = map[int]time.Time{}
		}
		if len(s.unknown) >= maxUnknownIDs {
			// Garbage bytes that happen to start with 0 carry random IDs:
			// forget the ones whose grace ended long ago.
			for k, t := range s.unknown {
				if now.Sub(t) > 2*s.cfg.UnknownSchemaGrace {
					delete(s.unknown, k)
				}
			}
		}
		first = now
		s.unknown[id] = first
	}
	return now.Sub(first) < s.cfg.UnknownSchemaGrace
}

// inflight counts the batches sent and not yet acknowledged.
func (s *Sink) inflight() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, w := range s.workers {
		n += w.inflight.Load()
	}
	return n
}

// paused counts the partitions holding their share of memory.
func (s *Sink) paused() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, w := range s.workers {
		w.mu.Lock()
		if w.paused {
			n++
		}
		w.mu.Unlock()
	}
	return n
}

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
	s.mu.Lock()
	for tp, w := range s.workers {
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
	s.mu.Unlock()
	sort.Strings(out)
	return out
}
