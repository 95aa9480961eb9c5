package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Headers bqsink adds to a dead-letter record, beside the original ones.
const (
	HeaderTopic     = "bqsink.topic"     // source topic
	HeaderPartition = "bqsink.partition" // source partition, decimal
	HeaderOffset    = "bqsink.offset"    // source offset, decimal
	HeaderReason    = "bqsink.reason"    // the reason label of bqsink_records_rejected_total
	HeaderError     = "bqsink.error"     // the error message
	HeaderSchemaID  = "bqsink.schema_id" // writer schema ID, when the record had one
	HeaderTable     = "bqsink.table"     // the table the record was for
	HeaderVersion   = "bqsink.version"   // the bqsink version that wrote it
)

// deadLetters writes rejected records to the dead-letter topic with their
// original key, value, headers and timestamp, plus headers saying where
// they came from and why. Goroutine-safe.
type deadLetters struct {
	cl      *kgo.Client
	topic   string
	table   func(topic string) string
	version string
}

// send produces rs and waits until Kafka acknowledged them or ctx ends. It
// returns the records not acknowledged; its error is a *stageError whose
// config flag says whether an operator must act (topic missing, record
// larger than the topic accepts, not authorized). It does not wait for
// answers once ctx has ended: franz-go owns those records until it gives
// up on them.
func (d *deadLetters) send(ctx context.Context, rs []*rejection) ([]*rejection, error) {
	type answer struct {
		i   int
		err error
	}
	answers := make(chan answer, len(rs))
	for i, rj := range rs {
		d.cl.Produce(ctx, d.record(rj), func(_ *kgo.Record, err error) { answers <- answer{i, err} })
	}
	var left []*rejection
	var firstErr error
	for range rs {
		select {
		case a := <-answers:
			if a.err != nil {
				left = append(left, rs[a.i])
				if firstErr == nil {
					firstErr = a.err
				}
			}
		case <-ctx.Done():
			return rs, ctx.Err()
		}
	}
	if firstErr == nil {
		return nil, nil
	}
	return left, &stageError{stage: stageDeadLetter, target: d.topic, config: operatorKafkaError(firstErr),
		err: fmt.Errorf("produce %d of %d records to dead-letter topic %s: %w", len(left), len(rs), d.topic, firstErr)}
}

func (d *deadLetters) record(rj *rejection) *kgo.Record {
	r := rj.rec
	hs := make([]kgo.RecordHeader, 0, len(r.Headers)+8)
	hs = append(hs, r.Headers...)
	add := func(k, v string) { hs = append(hs, kgo.RecordHeader{Key: k, Value: []byte(v)}) }
	add(HeaderTopic, r.Topic)
	add(HeaderPartition, strconv.Itoa(int(r.Partition)))
	add(HeaderOffset, strconv.FormatInt(r.Offset, 10))
	add(HeaderReason, rj.reason)
	add(HeaderError, rj.err.Error())
	if rj.schemaID != 0 {
		add(HeaderSchemaID, strconv.Itoa(rj.schemaID))
	}
	add(HeaderTable, d.table(r.Topic))
	add(HeaderVersion, d.version)
	return &kgo.Record{Topic: d.topic, Key: r.Key, Value: r.Value, Headers: hs, Timestamp: r.Timestamp}
}

// operatorKafkaError reports whether a produce error lasts until someone
// changes the topic or the ACLs.
func operatorKafkaError(err error) bool {
	for _, e := range []error{kerr.UnknownTopicOrPartition, kerr.MessageTooLarge, kerr.RecordListTooLarge,
		kerr.TopicAuthorizationFailed, kerr.ClusterAuthorizationFailed, kerr.InvalidTopicException, kerr.SaslAuthenticationFailed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
