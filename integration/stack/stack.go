// Package stack runs bqsink's local stack in one process: a Kafka broker
// (franz-go's kfake), a Schema Registry (franz-go's srfake) and the BigQuery
// test server (bqfake). Each speaks its real protocol over real sockets, so
// the daemon's code talks to them exactly as it would to the real services.
// The demo and the end-to-end tests use it; production code never does.
package stack

import (
	"context"
	"embed"
	"fmt"
	"github.com/bqsink/bqsink/bq"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/bqsink/bqsink/integration/bqfake"
	"github.com/bqsink/bqsink/schema"
	"github.com/bqsink/bqsink/sink"
)

// The fixed ports of `go run ./integration/demo -serve`; config.yaml points
// at exactly these.
const (
	KafkaPort    = 9092
	RegistryPort = 8081
	BigQueryREST = 9050
	BigQueryGRPC = 9060

	Project = "local-project"
	Dataset = "kafka"

	// DLQTopic is the stack's dead-letter topic, created by Start: the
	// default of config.yaml's group (bqsink). It takes records up to
	// DLQMaxMessageBytes.
	DLQTopic           = "bqsink.dlq"
	DLQMaxMessageBytes = 64 << 20
)

// Schemas holds the Avro schema fixtures, copied from the project's shared
// schemas so that a clone needs nothing outside the repository.
//
//go:embed testdata/*.avsc
var Schemas embed.FS

// Schema returns a fixture's text by file name.
func Schema(name string) string {
	b, err := Schemas.ReadFile("testdata/" + name)
	if err != nil {
		panic(fmt.Sprintf("stack: no fixture %s", name)) // a typo in a test, not runtime input
	}
	return string(b)
}

// Stack is a running local stack. Close stops it.
type Stack struct {
	Kafka    *kfake.Cluster
	Registry *srfake.Registry
	BigQuery *bqfake.Server

	registryURL string
	registrySrv *http.Server
	producer    *kgo.Client
}

// Options for Start. The zero value starts everything on random ports.
type Options struct {
	// Fixed listens on the documented fixed ports instead of random ones.
	Fixed bool
	// Partitions per seeded topic (default 3).
	Partitions int32
	// Topics to create.
	Topics []string
}

// Start starts the stack. On error nothing is left running.
func Start(o Options) (st *Stack, err error) {
	if o.Partitions == 0 {
		o.Partitions = 3
	}
	st = &Stack{}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()

	kopts := []kfake.Opt{kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(int(o.Partitions))}
	if len(o.Topics) > 0 {
		kopts = append(kopts, kfake.SeedTopics(o.Partitions, o.Topics...))
	}
	regAddr, restAddr, grpcAddr := "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	if o.Fixed {
		kopts = append(kopts, kfake.Ports(KafkaPort))
		regAddr = "127.0.0.1:" + strconv.Itoa(RegistryPort)
		restAddr = "127.0.0.1:" + strconv.Itoa(BigQueryREST)
		grpcAddr = "127.0.0.1:" + strconv.Itoa(BigQueryGRPC)
	}
	if st.Kafka, err = kfake.NewCluster(kopts...); err != nil {
		return nil, fmt.Errorf("start kafka: %w", err)
	}

	st.Registry = srfake.NewRegistry()
	ln, err := net.Listen("tcp", regAddr)
	if err != nil {
		return nil, fmt.Errorf("start schema registry: %w", err)
	}
	st.registryURL = "http://" + ln.Addr().String()
	st.registrySrv = &http.Server{Handler: st.Registry.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = st.registrySrv.Serve(ln) }()

	if st.BigQuery, err = bqfake.New(bqfake.RESTAddr(restAddr), bqfake.GRPCAddr(grpcAddr), bqfake.Dataset(Project, Dataset)); err != nil {
		return nil, fmt.Errorf("start bigquery test server: %w", err)
	}

	if st.producer, err = kgo.NewClient(
		kgo.SeedBrokers(st.Brokers()...),
		kgo.DefaultProduceTopic("unused"),
		kgo.ProducerLinger(5*time.Millisecond),
		kgo.ProducerBatchMaxBytes(DLQMaxMessageBytes),
	); err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.CreateTopic(ctx, DLQTopic, 1, MaxMessageBytes(DLQMaxMessageBytes)); err != nil {
		return nil, err
	}
	return st, nil
}

// Close stops everything Start started. It is safe to call twice.
func (st *Stack) Close() {
	if st.producer != nil {
		st.producer.Close()
		st.producer = nil
	}
	if st.registrySrv != nil {
		_ = st.registrySrv.Close()
		st.registrySrv = nil
	}
	if st.BigQuery != nil {
		st.BigQuery.Close()
	}
	if st.Kafka != nil {
		st.Kafka.Close()
		st.Kafka = nil
	}
}

// Brokers is the Kafka bootstrap list.
func (st *Stack) Brokers() []string { return st.Kafka.ListenAddrs() }

// RegistryURL is the Schema Registry's base URL.
func (st *Stack) RegistryURL() string { return st.registryURL }

// Config is the sink's configuration for the stack: group consumes topics
// with batches small enough for tests to see several flushes, the stack's
// registry and BigQuery test server, and the stack's dead-letter topic.
func (st *Stack) Config(group string, topics ...string) sink.Config {
	cfg := sink.DefaultConfig()
	cfg.Kafka = sink.KafkaConfig{
		Brokers:          st.Brokers(),
		GroupID:          group,
		Topics:           topics,
		SessionTimeout:   6 * time.Second,
		RebalanceTimeout: 10 * time.Second,
		CommitInterval:   200 * time.Millisecond,
	}
	cfg.SchemaRegistry = schema.Config{URL: st.registryURL}
	cfg.BigQuery.Project = Project
	cfg.BigQuery.Dataset = Dataset
	cfg.BigQuery.Endpoint = st.BigQuery.RESTEndpoint()
	cfg.BigQuery.GRPCEndpoint = st.BigQuery.GRPCEndpoint()
	// The test server shares connections as BigQuery does: run BigQuery's
	// default pool, not the emulators' connection per table.
	cfg.BigQuery.MaxConnections = bq.DefaultMaxConnections
	cfg.Tables = map[string]sink.TableRoute{StockTopic: sink.Route(StockTable)} // as in config.yaml
	cfg.Batch = sink.BatchConfig{MaxRecords: 500, MaxWait: 100 * time.Millisecond}
	cfg.Errors.DLQTopic = DLQTopic
	cfg.UnknownSchemaGrace = 300 * time.Millisecond
	return cfg
}

// Register registers an Avro schema under subject and returns its ID.
func (st *Stack) Register(subject, text string, refs ...sr.SchemaReference) (int, error) {
	id, _, err := st.Registry.RegisterSchema(subject, sr.Schema{Schema: text, Type: sr.TypeAvro, References: refs})
	if err != nil {
		return 0, fmt.Errorf("register %s: %w", subject, err)
	}
	return id, nil
}

// Produce writes records synchronously and returns the first error.
func (st *Stack) Produce(ctx context.Context, recs ...*kgo.Record) error {
	return st.producer.ProduceSync(ctx, recs...).FirstErr()
}

// WireFormat frames an Avro body in the Confluent wire format: magic byte 0,
// the schema ID as 4 big-endian bytes, then the body.
func WireFormat(id int, body []byte) []byte {
	out := make([]byte, 5, 5+len(body))
	out[1], out[2], out[3], out[4] = byte(id>>24), byte(id>>16), byte(id>>8), byte(id)
	return append(out, body...)
}

// Offsets are a topic's per-partition committed offsets for a group and its
// end offsets; lag is their difference.
type Offsets struct {
	Committed map[int32]int64
	End       map[int32]int64
}

// Lag is the records not yet committed, summed over partitions.
func (o Offsets) Lag() int64 {
	var lag int64
	for p, end := range o.End {
		c := o.Committed[p]
		if c < 0 {
			c = 0
		}
		lag += end - c
	}
	return lag
}

// GroupOffsets reads what group committed on topic, and the topic's end.
func (st *Stack) GroupOffsets(ctx context.Context, group, topic string) (Offsets, error) {
	adm := kadm.NewClient(st.producer)
	o := Offsets{Committed: map[int32]int64{}, End: map[int32]int64{}}
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return o, fmt.Errorf("list end offsets: %w", err)
	}
	ends.Each(func(l kadm.ListedOffset) { o.End[l.Partition] = l.Offset })
	committed, err := adm.FetchOffsetsForTopics(ctx, group, topic)
	if err != nil {
		return o, fmt.Errorf("fetch committed offsets: %w", err)
	}
	committed.Each(func(r kadm.OffsetResponse) {
		if r.Topic == topic {
			o.Committed[r.Partition] = r.At
		}
	})
	return o, nil
}

// GroupOffsetsOf is GroupOffsets for many topics in two requests.
func (st *Stack) GroupOffsetsOf(ctx context.Context, group string, topics ...string) (map[string]Offsets, error) {
	adm := kadm.NewClient(st.producer)
	out := make(map[string]Offsets, len(topics))
	for _, t := range topics {
		out[t] = Offsets{Committed: map[int32]int64{}, End: map[int32]int64{}}
	}
	ends, err := adm.ListEndOffsets(ctx, topics...)
	if err != nil {
		return nil, fmt.Errorf("list end offsets: %w", err)
	}
	ends.Each(func(l kadm.ListedOffset) {
		if o, ok := out[l.Topic]; ok {
			o.End[l.Partition] = l.Offset
		}
	})
	committed, err := adm.FetchOffsetsForTopics(ctx, group, topics...)
	if err != nil {
		return nil, fmt.Errorf("fetch committed offsets: %w", err)
	}
	committed.Each(func(r kadm.OffsetResponse) {
		if o, ok := out[r.Topic]; ok {
			o.Committed[r.Partition] = r.At
		}
	})
	return out, nil
}

// WaitCommitted polls until group has committed every record of topic, or
// ctx ends.
func (st *Stack) WaitCommitted(ctx context.Context, group, topic string) (Offsets, error) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		o, err := st.GroupOffsets(ctx, group, topic)
		if err == nil && len(o.End) > 0 && o.Lag() == 0 {
			return o, nil
		}
		select {
		case <-ctx.Done():
			return o, fmt.Errorf("lag %d when waiting ended: %w", o.Lag(), ctx.Err())
		case <-t.C:
		}
	}
}

// TopicConfig is a topic config entry for CreateTopic.
type TopicConfig struct{ Key, Value string }

// MaxMessageBytes lets a topic take records up to n bytes.
func MaxMessageBytes(n int) TopicConfig {
	return TopicConfig{"max.message.bytes", strconv.Itoa(n)}
}

// CreateTopic creates a topic with the given partitions and configs.
func (st *Stack) CreateTopic(ctx context.Context, topic string, partitions int32, configs ...TopicConfig) error {
	cfg := map[string]*string{}
	for _, c := range configs {
		cfg[c.Key] = &c.Value
	}
	resp, err := kadm.NewClient(st.producer).CreateTopic(ctx, partitions, 1, cfg, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	return nil
}

// DeadLetters reads every record of the dead-letter topic.
func (st *Stack) DeadLetters(ctx context.Context) ([]*kgo.Record, error) {
	return st.ReadTopic(ctx, DLQTopic)
}

// ReadTopic reads every record of topic, from the start to the end offsets
// it has when called.
func (st *Stack) ReadTopic(ctx context.Context, topic string) ([]*kgo.Record, error) {
	ends, err := kadm.NewClient(st.producer).ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	want := map[int32]int64{}
	ends.Each(func(l kadm.ListedOffset) {
		if l.Offset > 0 {
			want[l.Partition] = l.Offset
		}
	})
	if len(want) == 0 {
		return nil, nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(st.Brokers()...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var out []*kgo.Record
	for len(want) > 0 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return out, fmt.Errorf("read %s: %w", topic, err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if end, ok := want[r.Partition]; ok && r.Offset < end {
				out = append(out, r)
				if r.Offset == end-1 {
					delete(want, r.Partition)
				}
			}
		})
	}
	return out, nil
}
