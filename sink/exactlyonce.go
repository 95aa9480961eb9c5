package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kadm"
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
	fallbackIsolationChanged   = "isolation_changed"   // the previous owner read records of aborted transactions and this one does not, or the reverse
)

// eoMeta is what a partition's commit metadata says under exactly-once.
type eoMeta struct {
	stream string // the partition's COMMITTED write stream
	next   int64  // stream offset of the row of the first record not committed
	// at is the Kafka offset the metadata was committed with (-1 if the
	// metadata does not say): an offset moved by another tool, with the
	// metadata left as it was, is noticed.
	at int64
	// readCommitted says the writer read with kafka.isolation_level
	// read_committed: records of aborted transactions had no row. Metadata
	// that does not say was written by a reader of every record.
	readCommitted bool
}

// encode is the commit metadata; "" if it would not fit.
func (m eoMeta) encode() string {
	s := eoMetaPrefix + m.stream + " " + strconv.FormatInt(m.next, 10) + " " + strconv.FormatInt(m.at, 10)
	if m.readCommitted {
		s += " " + eoReadCommitted
	}
	if len(s) > maxEOMeta {
		return ""
	}
	return s
}

// eoReadCommitted ends the metadata of a writer that reads committed
// records only.
const eoReadCommitted = "rc"

// errNotEOMeta is metadata that is not exactly-once's at all.
var errNotEOMeta = errors.New("not bqsink exactly-once metadata")

// decodeEOMeta reads commit metadata. Metadata of another writer, or none,
// is errNotEOMeta; another version of the format, or a malformed one, is
// another error.
func decodeEOMeta(s string) (eoMeta, error) {
	m := eoMeta{at: -1}
	if !strings.HasPrefix(s, "bqsink-eo/") {
		return m, errNotEOMeta
	}
	if !strings.HasPrefix(s, eoMetaPrefix) {
		return m, fmt.Errorf("metadata %.40q is a version of the format this bqsink does not read", s)
	}
	fields := strings.Fields(s[len(eoMetaPrefix):])
	if n := len(fields); n == 4 && fields[3] == eoReadCommitted {
		m.readCommitted = true
		fields = fields[:3]
	}
	if len(fields) != 2 && len(fields) != 3 {
		return m, fmt.Errorf("metadata %.80q: want a stream name, a stream offset, a Kafka offset and the isolation level", s)
	}
	next, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil || next < 0 {
		return m, fmt.Errorf("metadata %.80q: bad stream offset %q", s, fields[1])
	}
	if len(fields) == 3 {
		if m.at, err = strconv.ParseInt(fields[2], 10, 64); err != nil || m.at < 0 {
			return m, fmt.Errorf("metadata %.80q: bad Kafka offset %q", s, fields[2])
		}
	}
	m.stream, m.next = fields[0], next
	return m, nil
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
	// skipped tells whether the records from offset from up to the first
	// one this member reads can have had rows for the previous owner.
	skipped       skippedFunc
	readCommitted bool // kafka.isolation_level is read_committed
	tp            topicPartition
	log           *zap.Logger
	metrics       *metrics

	stream *bq.Stream
	next   int64 // stream offset of the next row
	// fallbackFrom is the Kafka offset from which rows may be written twice
	// after a fallback decided by an answer (for the log line).
	fallbackFrom int64

	flightStart int64 // first record offset of the flight being delivered
	uncertain   bool  // this flight's rows may be in the stream already
	newStream   string

	// claim commits offset with metadata now, and claimed says the current
	// stream was committed before its first append: see appendRows.
	claim   func(ctx context.Context, offset int64, meta string) error
	claimed bool
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
	return eoMeta{stream: e.stream.Name(), next: e.next, at: at, readCommitted: e.readCommitted}.encode()
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
	m, err := decodeEOMeta(meta)
	name, next, at := m.stream, m.next, m.at
	switch {
	case errors.Is(err, errNotEOMeta):
		return e.create(ctx, fallbackMetadataMissing, committed, "")
	case err != nil:
		e.log.Warn("unreadable exactly-once commit metadata", zap.Error(err))
		return e.create(ctx, fallbackMetadataUnreadable, committed, "")
	case m.readCommitted != e.readCommitted:
		// One side has rows for records of aborted transactions and the
		// other not: anywhere in the window since the commit, the rows of
		// the same records may sit at other stream offsets.
		e.log.Warn("kafka.isolation_level differs from the previous owner's",
			zap.Bool("previous_read_committed", m.readCommitted), zap.Bool("read_committed", e.readCommitted))
		return e.create(ctx, fallbackIsolationChanged, committed, name)
	case at >= 0 && at != committed:
		// Another tool moved the committed offset and left the metadata:
		// the stream offset belongs to another record.
		e.log.Warn("the committed offset was moved without its exactly-once metadata",
			zap.Int64("committed", committed), zap.Int64("metadata_offset", at))
		return e.create(ctx, fallbackCommitMoved, min(committed, at), name)
	case committed != e.flightStart:
		// Consumption does not start where the metadata's offset is. That
		// is fine when the records in between never had rows: records of
		// aborted transactions, which neither this member nor the previous
		// owner read. Otherwise (the offset was committed again since it
		// was read, or records expired or were compacted away) the stream
		// offset of this flight is unknown.
		ok, why, err := e.gapHadNoRows(ctx, m, committed)
		if err != nil {
			return err
		}
		if !ok {
			e.log.Warn("the committed offset is not where consumption starts",
				zap.Int64("committed", committed), zap.Int64("first_record", e.flightStart), zap.String("why", why))
			return e.create(ctx, fallbackCommitMoved, min(committed, e.flightStart), name)
		}
		e.log.Debug("records between the committed offset and the first one read were of aborted transactions",
			zap.Int64("committed", committed), zap.Int64("first_record", e.flightStart))
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
	e.stream, e.next, e.claimed = s, next, true
	e.log.Info("continuing the exactly-once write stream", zap.String("stream", name), zap.Int64("stream_offset", next), zap.Int64("committed", committed))
	return nil
}

// gapHadNoRows reports whether the records from committed up to the
// flight's first record, which this member did not read, had no rows for
// the previous owner either; if not, why.
//
// Under read_committed the client skips the records of aborted
// transactions, so a commit can point at one and consumption start past
// it. The previous owner skipped them too if it also read committed
// records only (its metadata says so). Offsets can also be missing because
// retention deleted the records (the log now starts past the commit) or
// compaction removed them: those records were there for the previous
// owner, and may have rows in the stream.
func (e *exactlyOnce) gapHadNoRows(ctx context.Context, m eoMeta, committed int64) (bool, string, error) {
	switch {
	case committed > e.flightStart:
		return false, "consumption starts before the committed offset: it was committed again since it was read", nil
	case !e.readCommitted || !m.readCommitted:
		return false, "records were skipped though every record is read (kafka.isolation_level read_uncommitted)", nil
	}
	logStart, compacted, err := e.skipped(ctx)
	switch {
	case err != nil:
		return false, "", fmt.Errorf("read the start offset and cleanup policy of %s/%d for exactly-once: %w", e.tp.topic, e.tp.partition, err)
	case logStart > committed:
		return false, fmt.Sprintf("retention deleted the records up to offset %d", logStart), nil
	case compacted:
		return false, "the topic is compacted: the records skipped may have been compacted away", nil
	}
	return true, "", nil
}

// skippedFunc reads a partition's log start offset and whether its topic
// is compacted.
type skippedFunc func(ctx context.Context) (logStart int64, compacted bool, err error)

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
	e.stream, e.next, e.claimed = s, 0, false
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
	if !e.claimed {
		// A new stream is committed, at the flight's first record, before
		// any row goes to it: an owner that dies before its first commit
		// (or a zombie, frozen with its first append in flight) leaves
		// the next owner the stream to continue, not rows it cannot see.
		if err := e.claim(ctx, e.flightStart, e.meta(e.flightStart)); err != nil {
			return nil, fmt.Errorf("commit the new exactly-once stream of %s/%d before its first append: %w", e.tp.topic, e.tp.partition, err)
		}
		e.claimed = true
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

// claimFunc commits tp's offset with exactly-once metadata now, bounded by
// kafka.request_timeout.
func (s *Sink) claimFunc(tp topicPartition) func(ctx context.Context, offset int64, meta string) error {
	return func(ctx context.Context, offset int64, meta string) error {
		s.commits.claim(tp.topic, tp.partition, kgo.EpochOffset{Epoch: -1, Offset: offset}, meta)
		return s.commitPartitions(ctx, s.cl, map[string][]int32{tp.topic: {tp.partition}}, "exactly-once stream created")
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
