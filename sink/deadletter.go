package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

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
	timeout time.Duration // kafka.request_timeout: each attempt's bound
	// maxBytes is the topic's max.message.bytes, read by the startup check;
	// the producer's batches stay under it.
	maxBytes atomic.Int32
}

// defaultMaxMessageBytes is Kafka's default max.message.bytes, assumed
// until the topic's own is read.
const defaultMaxMessageBytes = 1_000_012

// batchMaxBytes is the producer's ProducerBatchMaxBytesFn: Kafka refuses a
// batch larger than the topic's max.message.bytes, so batches of many
// rejected records must stay under it.
func (d *deadLetters) batchMaxBytes(string) int32 {
	if n := d.maxBytes.Load(); n >= 512 {
		return n
	}
	return defaultMaxMessageBytes
}

// send produces rs and waits until Kafka acknowledged them, for at most
// kafka.request_timeout, or until ctx ends. It returns the records not
// acknowledged; its error is a *stageError whose config flag says whether an
// operator must act (topic missing, record larger than the topic accepts,
// not authorized). It does not wait for answers past its bound: franz-go
// owns those records until it gives up on them, and one acknowledged after
// all is written again by the next attempt (at-least-once).
func (d *deadLetters) send(ctx context.Context, rs []*rejection) ([]*rejection, error) {
	type answer struct {
		i   int
		err error
	}
	// The bound is the record's context, not franz-go's delivery timeout,
	// which counts from the record's timestamp: an old record would time
	// out before it was sent.
	pctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	answers := make(chan answer, len(rs))
	for i, rj := range rs {
		d.cl.Produce(pctx, d.record(rj), func(_ *kgo.Record, err error) { answers <- answer{i, err} })
	}
	done := make([]bool, len(rs))
	var firstErr error
wait:
	for range rs {
		select {
		case a := <-answers:
			if a.err == nil {
				done[a.i] = true
			} else if firstErr == nil {
				firstErr = a.err
			}
		case <-pctx.Done():
			switch {
			case ctx.Err() != nil:
				firstErr = ctx.Err()
			case firstErr == nil:
				firstErr = fmt.Errorf("no answer within kafka.request_timeout %s", d.timeout)
			}
			break wait
		}
	}
	var left []*rejection
	for i, ok := range done {
		if !ok {
			left = append(left, rs[i])
		}
	}
	if len(left) == 0 {
		return nil, nil
	}
	if ctx.Err() != nil {
		return left, ctx.Err()
	}
	if errors.Is(firstErr, kerr.MessageTooLarge) {
		firstErr = fmt.Errorf("%w: the topic takes batches up to %d bytes (its max.message.bytes); raise it above the largest record", firstErr, d.batchMaxBytes(""))
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
