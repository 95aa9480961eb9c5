package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"go.uber.org/zap"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
)

// startupTimeout bounds the startup checks: a problem that will not
// fix itself ends Run within it, and the process within 10s.
const startupTimeout = 8 * time.Second

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

// checkTableSettings compares, in the background, the tables of the
// literal topics that configure partitioning, clustering or a primary key
// with what exists, so that a table created otherwise is reported at
// startup rather than at its first record: a different partitioning or
// clustering is a warning; an upsert table without the configured primary
// key an error with the DDL that fixes it (its partitions then stall at
// their first record, as the write path finds the same). Failures to read
// are left to the write path.
func (s *Sink) checkTableSettings(ctx context.Context) {
	if s.cfg.BigQuery.Endpoint != "" && s.cfg.upserts() {
		s.log.Warn("upsert tables write through change data capture, which BigQuery applies by primary key; an emulator may not: goccy's bigquery-emulator (v0.6.6) appends changes as plain rows, so updates add rows and deletes add rows of NULLs",
			zap.String("endpoint", s.cfg.BigQuery.Endpoint))
	}
	for _, topic := range s.cfg.literalTopics() {
		settings, keys := s.cfg.SettingsFor(topic)
		keyed := settings.Mode == ModeUpsert && len(settings.PrimaryKey) > 0
		if settings.Partitioning == nil && len(settings.Clustering) == 0 && !keyed {
			continue
		}
		t := s.wh.Table(s.cfg.TableFor(topic))
		t.SetOptions(settings.tableOptions(keys))
		go func() {
			err := t.CheckSettings(ctx)
			switch {
			case errors.Is(err, bq.ErrPrimaryKey):
				s.log.Error("the table cannot take changes by the configured primary key; its partitions stop at their first record until it is fixed",
					zap.String("topic", topic), zap.String("table", t.Name()), zap.Error(err))
			case err != nil:
				s.log.Debug("could not compare the table's settings at startup", zap.String("table", t.Name()), zap.Error(err))
			}
		}()
	}
}
