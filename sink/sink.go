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
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"
	"go.uber.org/zap"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/internal/tokenfile"
	"github.com/bqsink/bqsink/schema"
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
	// kafkaPass reads kafka.sasl.password_file for both Kafka clients;
	// nil when it is not set.
	kafkaPass *tokenfile.Password

	// Set by Run before anything uses them.
	wh *bq.Client
	// whScraped is wh for the scrape, which runs concurrently with Run
	// setting wh.
	whScraped atomic.Pointer[bq.Client]
	cl        *kgo.Client                // the consumer; group callbacks use the client they are given
	clRef     atomic.Pointer[kgo.Client] // cl, for readers outside Run's goroutine (metrics)
	admin     *kgo.Client                // admin requests and dead-letter writes
	dlq       *deadLetters

	runCtx  context.Context
	stopRun context.CancelCauseFunc // ends the run early: a record failed under errors.policy fail
	// base parents every worker's context. It outlives Run's context so
	// that shutdown can still finish in-flight appends.
	base context.Context

	// mu guards workers. With BlockRebalanceOnPoll the group callbacks and
	// the poll loop never run at once; the lock is for shutdown.
	mu      sync.Mutex
	workers map[topicPartition]*worker
	// owned is a copy of workers, replaced (never changed) under mu each
	// time workers changes. Readers outside the poll loop and the group
	// callbacks (metrics, Ready, the monitor) use it and take no lock, so
	// a scrape or a probe never waits on a rebalance.
	owned atomic.Pointer[workerSet]

	commits commits

	// brokerLag is the group's offsets and the partitions' ends as the
	// brokers told them at the last refresh (nil before the first).
	brokerLag atomic.Pointer[lagSnapshot]

	unknownMu sync.Mutex
	unknown   map[int]time.Time // schema ID -> first record that carried it unresolved

	primaryKeys primaryKeys // upsert tables' keys once known
	warned      sync.Map    // warnings given once: see once

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
// metrics. It does no network I/O: an endpoint that cannot be reached is
// reported by Run. It reads the password files (kafka.sasl.password_file,
// schema_registry.password_file) and the registry's TLS and token files:
// one that cannot be read, or holds nothing, is an error naming its key
// and the file.
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
	kafkaPass, err := cfg.Kafka.SASL.passwordFile(o.log.Named("kafka"))
	if err != nil {
		return nil, err
	}
	m := newMetrics()
	s := &Sink{
		cfg:       cfg,
		log:       o.log.Named("sink"),
		version:   o.version,
		metrics:   m,
		rejects:   newRejectLog(o.log.Named("sink")),
		flow:      newFlow(cfg.Memory.MaxBufferedBytes),
		reg:       reg,
		kafkaPass: kafkaPass,
		workers:   map[topicPartition]*worker{},
		commits:   commits{marks: map[string]map[int32]kgo.EpochOffset{}, marked: make(chan struct{}, 1)},
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
	s.whScraped.Store(s.wh)
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

// consumer is the consumer client once Run created it, else nil.
func (s *Sink) consumer() *kgo.Client { return s.clRef.Load() }

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
