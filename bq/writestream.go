package bq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
)

// maxStreamIDLen bounds the id BigQuery gives an explicit stream, for the
// request overhead every row size check includes.
const maxStreamIDLen = 256

// writer is one write stream of a table as this process sends to it: its
// name, the AppendRows connection to it and the slot that serializes sends,
// so each request carries the descriptor its rows were encoded with, in
// order.
type writer struct {
	t     *Table
	name  string
	named bool // an explicit stream, not _default

	// sendMu (capacity 1) is the writer's turn: its requests go out in the
	// order of its appends. A channel rather than a mutex so that a caller
	// whose context ends stops waiting.
	sendMu chan struct{}
	// own is the writer's own connection: explicit streams always have
	// one (BigQuery multiplexes default streams only), default streams
	// when the Client does not pool (MaxConnections). Otherwise nil, and
	// pool hands out shared ones.
	own *conn
	// guarded by sendMu:
	pool    *pool   // set by the first lookup of the default stream
	conn    *conn   // the connection its last request went on
	checked *stream // the stream its last request went on, after a lookup

	suspect atomic.Bool // see pool
}

func newWriter(t *Table, name string, named bool) *writer {
	w := &writer{t: t, name: name, named: named, sendMu: make(chan struct{}, 1)}
	if named || !t.c.cfg.pooling() {
		w.own = newConn(t.c, nil, t.Name())
	}
	return w
}

// streamPrefix is what the names of the table's streams start with.
func (t *Table) streamPrefix() string {
	return fmt.Sprintf("projects/%s/datasets/%s/tables/%s/streams/", t.project, t.dataset, t.table)
}

// storageErrorCode returns the StorageError code a response error carries
// in its details, or STORAGE_ERROR_CODE_UNSPECIFIED.
func storageErrorCode(e *status.Status) storagepb.StorageError_StorageErrorCode {
	for _, d := range grpcstatus.FromProto(e).Details() {
		if se, ok := d.(*storagepb.StorageError); ok {
			return se.GetCode()
		}
	}
	return storagepb.StorageError_STORAGE_ERROR_CODE_UNSPECIFIED
}

// Stream is an explicit COMMITTED write stream of a table: rows are
// visible once acknowledged, and every append names the stream offset of
// its first row, so that an append repeated by anyone, after any failure,
// writes each row once. Get one from Table.CreateStream or Table.OpenStream.
// Goroutine-safe; appends to one Stream are sent in call order.
type Stream struct {
	w *writer
}

// CreateStream creates a new COMMITTED stream on the table. BigQuery limits
// how many streams a project creates per hour: reuse streams (OpenStream)
// rather than create one per batch. The call is bounded by Timeout.
func (t *Table) CreateStream(ctx context.Context) (*Stream, error) {
	if t.nameErr != nil {
		return nil, t.nameErr
	}
	what := "create a write stream on " + t.Name()
	var ws *storagepb.WriteStream
	err := t.c.call(ctx, what, func(ctx context.Context) (err error) {
		ws, err = t.c.write.CreateWriteStream(ctx, &storagepb.CreateWriteStreamRequest{
			Parent:      fmt.Sprintf("projects/%s/datasets/%s/tables/%s", t.project, t.dataset, t.table),
			WriteStream: &storagepb.WriteStream{Type: storagepb.WriteStream_COMMITTED},
		}, noRetry)
		return err
	})
	if err != nil {
		return nil, withClass(err, grpcClass(err))
	}
	t.log.Info("created a write stream", zap.String("stream", ws.GetName()))
	return &Stream{w: newWriter(t, ws.GetName(), true)}, nil
}

// OpenStream returns the COMMITTED stream name of the table, after asking
// BigQuery that it exists. Errors: ErrStreamNotFound if it does not (or
// the name is not one of this table's streams), ErrStreamFinalized if it
// takes no more rows; others are transient. A stream finalized or collected
// later is reported by the Results of its appends. Bounded by Timeout.
func (t *Table) OpenStream(ctx context.Context, name string) (*Stream, error) {
	if t.nameErr != nil {
		return nil, t.nameErr
	}
	if len(name) <= len(t.streamPrefix()) || name[:len(t.streamPrefix())] != t.streamPrefix() || len(name)-len(t.streamPrefix()) > maxStreamIDLen {
		return nil, fmt.Errorf("open write stream %q: %w: not a stream of %s", name, ErrStreamNotFound, t.Name())
	}
	what := "open write stream " + name
	var ws *storagepb.WriteStream
	err := t.c.call(ctx, what, func(ctx context.Context) (err error) {
		ws, err = t.c.write.GetWriteStream(ctx, &storagepb.GetWriteStreamRequest{Name: name}, noRetry)
		return err
	})
	switch {
	case grpcstatus.Code(errors.Unwrap(err)) == codes.NotFound || grpcstatus.Code(err) == codes.NotFound:
		return nil, withClass(err, ErrStreamNotFound)
	case err != nil:
		return nil, withClass(err, grpcClass(err))
	case ws.GetType() != storagepb.WriteStream_COMMITTED:
		return nil, fmt.Errorf("%s: %w: it is %v, not COMMITTED", what, ErrStreamNotFound, ws.GetType())
	}
	return &Stream{w: newWriter(t, name, true)}, nil
}

// Name returns the stream's full name, which OpenStream takes.
func (s *Stream) Name() string { return s.w.name }

// Close ends the stream's connection (not the stream: it stays open in
// BigQuery for OpenStream). Appends awaiting an answer end with their rows
// in Retry.
func (s *Stream) Close() {
	s.w.own.close(context.Background(), fmt.Errorf("write stream %s: closed", s.w.name))
}

// Append writes rows at stream offsets offset, offset+1, ...: a row lands
// at its offset once, whoever appends it and however often. It returns
// once the requests are sent; the Result says which rows are not written.
//
// A request whose first offset is already written is resolved without
// writing anything twice: single-row appends find where the stream ends
// within it, and the rest is appended from there. Result.Existing counts
// the rows found already written; they count as written.
//
// Besides Table.Append's errors, AppendError.Err may wrap
// ErrStreamNotFound or ErrStreamFinalized (use another stream), and Retry
// rows after OUT_OF_RANGE (an earlier offset is not written yet) are to be
// appended again at their offsets once the rows before them are. Every row
// must come from Row (no row is skipped, or offsets would shift).
//
// Changes (rows of a table with a primary key) cannot be appended to an
// explicit stream: BigQuery takes them on the default stream only
// (Table.Append). Append refuses them, with an error wrapping
// ErrTableConfig, and sends nothing.
func (s *Stream) Append(ctx context.Context, rows []Row, offset int64) (*Result, error) {
	t := s.w.t
	limit := t.c.cfg.maxRequestBytes()
	for i, row := range rows {
		if row.enc == nil || t.overhead(row.enc)+rowWireSize(len(row.b)) > limit {
			return nil, fmt.Errorf("append to %s: row %d was not made by Row for this table", s.w.name, i)
		}
		if row.enc.change {
			return nil, fmt.Errorf("append to %s: row %d is a change (%s has a primary key): %w: BigQuery takes changes on the default stream only (Table.Append), not exactly-once",
				s.w.name, i, t.Name(), ErrTableConfig)
		}
	}
	first, err := s.w.append(ctx, rows, offset)
	if err != nil {
		return nil, err
	}
	out := newResult()
	if !t.c.goOwned(func() { s.resolve(rows, offset, first, out) }) {
		out.record(seq(0, len(rows)), nil, ErrClosed)
		out.release()
	}
	return out, nil
}

// resolve completes out from first, the Result of appending rows at
// offset, finding where the stream ends in each request that met rows
// already written.
func (s *Stream) resolve(rows []Row, offset int64, first *Result, out *Result) {
	defer out.release()
	<-first.done
	first.mu.Lock()
	retry, rejected, cause, groups, existed := first.retry, first.rejected, first.cause, first.existing, first.existed
	first.mu.Unlock()
	out.record(retry, rejected, cause)
	// Single-row requests met already written are counted in first as they
	// are answered (recordExisting): there is nothing left to resolve.
	out.addExisting(existed)
	for _, g := range groups {
		s.resolveGroup(rows, offset, g, out)
	}
}

// resolveGroup handles one request, the rows idx (consecutive), whose
// first row was already written: probes find e, the number of its rows in
// the stream, and rows idx[e:] are appended after them.
func (s *Stream) resolveGroup(rows []Row, offset int64, idx []int, out *Result) {
	ctx := s.w.t.c.ctx
	n := len(idx)
	lo, hi := 1, n // e is in [lo, hi]
	// A probe at the stream's end writes its row: that row was not found
	// written, so Existing must not count it.
	probeWrote := 0
	for lo < hi {
		m := (lo + hi) / 2
		i := idx[m]
		r, err := s.w.append(ctx, rows[i:i+1], offset+int64(i))
		if err != nil {
			out.record(idx[lo:], nil, err)
			return
		}
		<-r.done
		r.mu.Lock()
		placed := len(r.retry) == 0 && len(r.rejected) == 0 // written now, or already
		outOfRange := len(r.retry) > 0 && isOutOfRange(r.cause)
		rj, c, existed := r.rejected, r.cause, r.existed
		r.mu.Unlock()
		switch {
		case placed:
			if existed == 0 {
				probeWrote++
			}
			lo = m + 1
		case outOfRange:
			hi = max(m-1, lo)
		default:
			// Refused or unanswered: what is in the stream from lo on is
			// not known; the caller appends it again, but for the probed
			// row if BigQuery refused it.
			retry := slices.Clone(idx[lo:])
			if err, refused := rj[0]; refused {
				out.record(nil, map[int]error{i: err}, nil)
				retry = slices.DeleteFunc(retry, func(j int) bool { return j == i })
			}
			out.record(retry, nil, c)
			return
		}
	}
	out.addExisting(lo - probeWrote)
	if lo == n {
		return
	}
	// The rest as one append; it may meet written rows again (another
	// writer), which resolves the same way.
	start := idx[lo]
	rest, err := s.Append(ctx, rows[start:idx[n-1]+1], offset+int64(start))
	if err != nil {
		out.record(idx[lo:], nil, err)
		return
	}
	<-rest.done
	rest.mu.Lock()
	defer rest.mu.Unlock()
	shift := func(js []int) []int {
		o := make([]int, len(js))
		for k, j := range js {
			o[k] = j + start
		}
		return o
	}
	sh := make(map[int]error, len(rest.rejected))
	for j, err := range rest.rejected {
		sh[j+start] = err
	}
	out.record(shift(rest.retry), sh, rest.cause)
	out.addExisting(rest.existed)
}

// isOutOfRange reports whether err is BigQuery's answer to an offset past
// the stream's end.
func isOutOfRange(err error) bool {
	var se interface{ GRPCStatus() *grpcstatus.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus().Code() == codes.OutOfRange
	}
	return grpcstatus.Code(err) == codes.OutOfRange
}

func seq(from, to int) []int {
	out := make([]int, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}
