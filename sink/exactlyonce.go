package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"

	"github.com/bqsink/bqsink/bq"
)

// Exactly-once keeps its bookkeeping in the Kafka commit: the metadata of a
// partition's committed offset names the partition's COMMITTED write stream
// and the stream offset of the row of the first record not committed.
// Rows derive deterministically from records, so whoever owns the
// partition next appends the same rows at the same offsets, and BigQuery
// writes each offset once.

// eoMetaPrefix starts the commit metadata of exactly-once; the number is
// the format's version.
const eoMetaPrefix = "bqsink-eo/1 "

// maxEOMeta keeps the metadata well under Kafka's default
// offset.metadata.max.bytes of 4096.
const maxEOMeta = 1024

// Reasons for bqsink_exactly_once_fallbacks_total.
const (
	fallbackStreamLost         = "stream_lost"         // BigQuery no longer has the stream
	fallbackStreamFinalized    = "stream_finalized"    // the stream takes no more rows
	fallbackMetadataMissing    = "metadata_missing"    // an offset is committed without our metadata
	fallbackMetadataUnreadable = "metadata_unreadable" // the metadata is not a format we read
	fallbackCommitMoved        = "commit_moved"        // the committed offset is not where consumption starts
	fallbackRowFateChanged     = "row_fate_changed"    // rows possibly written, then refused
)

// encodeEOMeta is the commit metadata of Kafka offset at: the row of the
// record at it goes to stream at stream offset next; "" if it would not
// fit. The Kafka offset is repeated so that an offset moved by another tool,
// with the metadata left as it was, is noticed.
func encodeEOMeta(stream string, next, at int64) string {
	m := eoMetaPrefix + stream + " " + strconv.FormatInt(next, 10) + " " + strconv.FormatInt(at, 10)
	if len(m) > maxEOMeta {
		return ""
	}
	return m
}

// errNotEOMeta is metadata that is not exactly-once's at all.
var errNotEOMeta = errors.New("not bqsink exactly-once metadata")

// decodeEOMeta reads commit metadata: the stream, the stream offset and the
// Kafka offset it was committed with (-1 if the metadata does not say).
// Metadata of another writer, or none, is errNotEOMeta; another version of
// the format, or a malformed one, is another error.
func decodeEOMeta(m string) (stream string, next, at int64, err error) {
	if !strings.HasPrefix(m, "bqsink-eo/") {
		return "", 0, 0, errNotEOMeta
	}
	if !strings.HasPrefix(m, eoMetaPrefix) {
		return "", 0, 0, fmt.Errorf("metadata %.40q is a version of the format this bqsink does not read", m)
	}
	fields := strings.Fields(m[len(eoMetaPrefix):])
	if len(fields) != 2 && len(fields) != 3 {
		return "", 0, 0, fmt.Errorf("metadata %.80q: want a stream name, a stream offset and a Kafka offset", m)
	}
	next, err = strconv.ParseInt(fields[1], 10, 64)
	if err != nil || next < 0 {
		return "", 0, 0, fmt.Errorf("metadata %.80q: bad stream offset %q", m, fields[1])
	}
	at = -1
	if len(fields) == 3 {
		if at, err = strconv.ParseInt(fields[2], 10, 64); err != nil || at < 0 {
			return "", 0, 0, fmt.Errorf("metadata %.80q: bad Kafka offset %q", m, fields[2])
		}
	}
	return fields[0], next, at, nil
}

// committedFunc reads the partition's committed offset and its metadata;
// ok false when nothing is committed.
type committedFunc func(ctx context.Context) (offset int64, meta string, ok bool, err error)

// exactlyOnce is one partition's exactly-once writer: its stream and the
// stream offset of the next row. Flights of the partition are delivered
// one after another in exactly-once, so only the delivering goroutine uses
// it, and the hand-over between flights orders its accesses.
type exactlyOnce struct {
	table     *bq.Table
	committed committedFunc
	tp        topicPartition
	log       *zap.Logger
	metrics   *metrics

	stream *bq.Stream
	next   int64 // stream offset of the next row
	// fallbackFrom is the Kafka offset from which rows may be written twice
	// after a fallback decided by an answer (for the log line).
	fallbackFrom int64

	flightStart int64 // first record offset of the flight being delivered
	uncertain   bool  // this flight's rows may be in the stream already
	newStream   string
}

// beginFlight starts delivering the flight whose first record is at
// offset first.
func (e *exactlyOnce) beginFlight(first int64) {
	e.flightStart = first
	e.uncertain = false
}

// meta is the commit metadata for Kafka offset at, the offset after the
// flight just delivered.
func (e *exactlyOnce) meta(at int64) string {
	if e.stream == nil {
		return ""
	}
	return encodeEOMeta(e.stream.Name(), e.next, at)
}

// open finds the stream to continue, on the first append of the worker.
func (e *exactlyOnce) open(ctx context.Context) error {
	committed, meta, ok, err := e.committed(ctx)
	if err != nil {
		return fmt.Errorf("read the committed offset of %s/%d for exactly-once: %w", e.tp.topic, e.tp.partition, err)
	}
	if !ok {
		// A partition this group never committed: nothing was written for it.
		return e.create(ctx, "", committed, "")
	}
	name, next, at, err := decodeEOMeta(meta)
	switch {
	case errors.Is(err, errNotEOMeta):
		return e.create(ctx, fallbackMetadataMissing, committed, "")
	case err != nil:
		e.log.Warn("unreadable exactly-once commit metadata", zap.Error(err))
		return e.create(ctx, fallbackMetadataUnreadable, committed, "")
	case at >= 0 && at != committed:
		// Another tool moved the committed offset and left the metadata:
		// the stream offset belongs to another record.
		e.log.Warn("the committed offset was moved without its exactly-once metadata",
			zap.Int64("committed", committed), zap.Int64("metadata_offset", at))
		return e.create(ctx, fallbackCommitMoved, min(committed, at), name)
	case committed != e.flightStart:
		// Consumption does not start where the metadata's offset is (the
		// offset was committed again since it was read, or records expired):
		// the stream offset of this flight is unknown.
		e.log.Warn("the committed offset is not where consumption starts",
			zap.Int64("committed", committed), zap.Int64("first_record", e.flightStart))
		return e.create(ctx, fallbackCommitMoved, min(committed, e.flightStart), name)
	}
	s, err := e.table.OpenStream(ctx, name)
	switch {
	case errors.Is(err, bq.ErrStreamNotFound):
		return e.create(ctx, fallbackStreamLost, committed, name)
	case errors.Is(err, bq.ErrStreamFinalized):
		return e.create(ctx, fallbackStreamFinalized, committed, name)
	case err != nil:
		return err
	}
	e.stream, e.next = s, next
	e.log.Info("continuing the exactly-once write stream", zap.String("stream", name), zap.Int64("stream_offset", next), zap.Int64("committed", committed))
	return nil
}

// create opens a new stream; with a reason it is a fallback: rows of the
// records from offset from on may have been written to the old stream
// (named old, or the current one), and are written again.
func (e *exactlyOnce) create(ctx context.Context, reason string, from int64, old string) error {
	s, err := e.table.CreateStream(ctx)
	if err != nil {
		return err
	}
	if e.stream != nil {
		e.stream.Close()
		old = e.stream.Name()
	}
	e.stream, e.next = s, 0
	if reason == "" {
		return nil
	}
	e.metrics.eoFallbacks.WithLabelValues(e.tp.topic, reason).Inc()
	e.log.Warn("exactly-once not kept for a window; writing it at least once",
		zap.String("reason", reason), zap.Int64("from_offset", from), zap.String("old_stream", old), zap.String("stream", s.Name()),
		zap.String("duplicates", fmt.Sprintf("rows of records from offset %d up to the last one the previous attempt or owner wrote may be written twice", from)))
	return nil
}

// appendRows appends the next rows of the partition at their stream
// offsets, opening the stream on first use and falling back to a new one
// when exactly-once cannot be kept.
func (e *exactlyOnce) appendRows(ctx context.Context, rows []bq.Row, _ []*kgo.Record) (appendResult, error) {
	if e.stream == nil {
		if err := e.open(ctx); err != nil {
			return nil, err
		}
	}
	if e.newStream != "" {
		reason := e.newStream
		if err := e.create(ctx, reason, e.fallbackFrom, ""); err != nil {
			return nil, err
		}
		e.newStream = ""
	}
	res, err := e.stream.Append(ctx, rows, e.next)
	if err != nil {
		return nil, err
	}
	return &eoResult{e: e, res: res, n: len(rows)}, nil
}

// eoResult advances the stream offset by the rows written once the append
// is answered, and decides on fallbacks.
type eoResult struct {
	e    *exactlyOnce
	res  *bq.Result
	n    int
	seen bool
}

func (r *eoResult) Wait(ctx context.Context) error {
	err := r.res.Wait(ctx)
	if r.seen || (err != nil && errors.Is(err, ctx.Err()) && ctx.Err() != nil) {
		return err
	}
	r.seen = true
	e := r.e
	if ex := r.res.Existing(); ex > 0 {
		e.uncertain = true
		e.metrics.eoExisting.WithLabelValues(e.tp.topic).Add(float64(ex))
	}
	var ae *bq.AppendError
	if err == nil {
		e.next += int64(r.n)
		return nil
	}
	if !errors.As(err, &ae) {
		e.uncertain = true
		return err
	}
	// Written rows are a prefix of the rows BigQuery did not refuse.
	e.next += int64(r.n - len(ae.Retry) - len(ae.Rejected))
	// A fallback rewrites what this flight may have written to the old
	// stream; earlier flights were acknowledged there.
	e.fallbackFrom = e.flightStart
	switch {
	case errors.Is(ae.Err, bq.ErrStreamNotFound):
		e.newStream = fallbackStreamLost
	case errors.Is(ae.Err, bq.ErrStreamFinalized):
		e.newStream = fallbackStreamFinalized
	case len(ae.Rejected) > 0 && e.uncertain:
		// Rows of this flight may be in the stream from an attempt whose
		// answer was lost; now BigQuery refuses some: the rows this range
		// of records produces is not what may have been written.
		e.newStream = fallbackRowFateChanged
	case len(ae.Retry) > 0 && !errors.Is(ae.Err, bq.ErrRowRejected):
		e.uncertain = true
	}
	return err
}

// close ends the stream's connection when the worker ends.
func (e *exactlyOnce) close() {
	if e.stream != nil {
		e.stream.Close()
	}
}
