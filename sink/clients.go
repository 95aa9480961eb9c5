package sink

import (
	"regexp"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kzap"
	"go.uber.org/zap"
)

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
	return append(opts, k.securityOpts(s.kafkaPass)...)
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
	}, k.securityOpts(s.kafkaPass)...)
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
