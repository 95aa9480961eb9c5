package bq

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"cloud.google.com/go/bigquery/storage/managedwriter"
	"google.golang.org/protobuf/encoding/protowire"
)

// requestSlack covers what an AppendRows request carries besides rows and
// the descriptor: stream name, trace id, message framing.
const requestSlack = 1024

// AppendError reports the rows of an Append that were not written. Indexes
// refer to the rows passed to Append; rows in neither field were written
// exactly once.
//
// Rejected rows will never be accepted as they are: a value that does not
// fit its column, an unknown column, a missing REQUIRED value, a row larger
// than max_request_bytes, or a row BigQuery named in its row errors.
//
// Retry rows were not written and may be appended again; the exception is
// an append cut off by Client.Close or by ctx ending mid-send, where BigQuery
// may have taken rows whose answer was lost. Err is the cause,
// for logs. Expected transient causes: RESOURCE_EXHAUSTED (quota),
// UNAVAILABLE, and the lag after a table is created or patched, when the
// write path answers NOT_FOUND or INVALID_ARGUMENT about unknown fields for
// seconds to minutes. A cause that persists (PERMISSION_DENIED, say) keeps
// coming back; callers bound their retries. When only rejections occurred
// Err is the lowest-indexed row's error.
type AppendError struct {
	Rejected map[int]error
	Retry    []int // ascending
	Err      error
}

func (e *AppendError) Error() string {
	return fmt.Sprintf("append: %d rows rejected, %d rows to retry: %v", len(e.Rejected), len(e.Retry), e.Err)
}

// Unwrap returns the cause.
func (e *AppendError) Unwrap() error { return e.Err }

// Result is the outcome of one Append, complete when every request it made
// has an answer. Goroutine-safe.
type Result struct {
	done chan struct{}
	err  error // written once before done is closed
}

// Done is closed when every request of the append has an answer, or when
// the Client is closed.
func (r *Result) Done() <-chan struct{} { return r.done }

// Wait blocks until the Result is done and returns nil if every row was
// written, else an *AppendError; or ctx.Err() if ctx ends first (the append
// goes on and the Result can be waited for again).
func (r *Result) Wait(ctx context.Context) error {
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// batch is the rows of one AppendRows request and their caller indexes.
type batch struct {
	rows [][]byte
	idx  []int
	size int
}

// sent is a request in flight.
type sent struct {
	b  *batch
	ar *managedwriter.AppendResult
}

// Append encodes rows with the table's current schema and sends them on the
// table's default stream, split into requests under max_request_bytes. It
// returns once the requests are sent; the Result tells which rows were
// written. Rows that cannot be encoded are rejected without being sent;
// the others are not affected.
//
// Append returns an error, and sends nothing, only when it cannot start:
// ctx ended, the Client is closed (ErrClosed), the name is malformed, or
// the table's schema cannot be read (ErrTableNotFound if it does not exist;
// call EnsureSchema first to create it). Failures on the write path, such as
// a stream that cannot be opened yet, come back as Retry in the Result.
// If ctx ends while a request is being handed over, that request may still
// reach BigQuery although its rows are reported for retry. Goroutine-safe.
func (t *Table) Append(ctx context.Context, rows []map[string]any) (*Result, error) {
	if t.nameErr != nil {
		return nil, t.nameErr
	}
	if t.c.closed.Load() {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		r := &Result{done: make(chan struct{})}
		r.finish(nil, nil, nil)
		return r, nil
	}
	enc, err := t.encoder(ctx)
	if err != nil {
		return nil, err
	}
	rejected := make(map[int]error)
	batches := t.encodeRows(enc, rows, rejected)

	var out sendOutcome
	if len(batches) > 0 {
		if out, err = t.send(ctx, enc, batches); err != nil {
			return nil, err
		}
	}
	inflight, retry, cause := out.inflight, out.unsent, out.cause
	r := &Result{done: make(chan struct{})}
	if len(inflight) == 0 {
		r.finish(rejected, retry, cause)
		return r, nil
	}
	if !t.c.track() {
		// Closed while sending: nobody will collect the answers.
		for _, s := range inflight {
			retry = append(retry, s.b.idx...)
		}
		r.finish(rejected, retry, ErrClosed)
		return r, nil
	}
	go t.collect(r, inflight, rejected, retry, cause)
	return r, nil
}

// encodeRows encodes rows and packs them into batches whose requests stay
// under max_request_bytes; failures go to rejected.
func (t *Table) encodeRows(enc *encoder, rows []map[string]any, rejected map[int]error) []*batch {
	limit := t.c.cfg.maxRequestBytes()
	// Assume every request carries the descriptor: after a reconnect the
	// first one does, and which one that is is not ours to know.
	overhead := enc.dpSize + requestSlack
	var batches []*batch
	var cur *batch
	for i, row := range rows {
		b, err := enc.encode(row)
		if err != nil {
			rejected[i] = err
			continue
		}
		sz := protowire.SizeTag(1) + protowire.SizeBytes(len(b))
		if overhead+sz > limit {
			rejected[i] = fmt.Errorf("row is %d bytes encoded; with the request overhead of %d bytes it exceeds max_request_bytes %d", len(b), overhead, limit)
			continue
		}
		if cur == nil || cur.size+sz > limit {
			cur = &batch{size: overhead}
			batches = append(batches, cur)
		}
		cur.rows = append(cur.rows, b)
		cur.idx = append(cur.idx, i)
		cur.size += sz
	}
	return batches
}

// sendOutcome is what send did: requests in flight, and the rows of the
// requests it could not send, with the cause.
type sendOutcome struct {
	inflight []sent
	unsent   []int
	cause    error
}

// send hands the batches to the stream in order. It returns an error only if
// nothing was sent because ctx ended or the Client closed.
func (t *Table) send(ctx context.Context, enc *encoder, batches []*batch) (sendOutcome, error) {
	select {
	case t.sendMu <- struct{}{}:
	case <-ctx.Done():
		return sendOutcome{}, ctx.Err()
	}
	defer func() { <-t.sendMu }()
	unsent := func(from int) []int {
		var idx []int
		for _, b := range batches[from:] {
			idx = append(idx, b.idx...)
		}
		return idx
	}
	ms, err := t.openStream(enc)
	if err != nil {
		if errors.Is(err, ErrClosed) {
			return sendOutcome{}, err
		}
		return sendOutcome{unsent: unsent(0), cause: err}, nil
	}
	var out sendOutcome
	for k, b := range batches {
		var opts []managedwriter.AppendOption
		if t.sentEnc != enc {
			// The stream caches the descriptor it was opened with; rows
			// encoded for another schema version must carry theirs.
			opts = append(opts, managedwriter.UpdateSchemaDescriptor(enc.dp))
		}
		ar, err := ms.AppendRows(ctx, b.rows, opts...)
		if err != nil {
			if t.c.closed.Load() && (errors.Is(err, io.EOF) || errors.Is(err, context.Canceled)) {
				err = ErrClosed
			}
			if len(out.inflight) == 0 && (ctx.Err() != nil || errors.Is(err, ErrClosed)) {
				return sendOutcome{}, err
			}
			out.unsent, out.cause = unsent(k), fmt.Errorf("send to %s: %w", t.Name(), err)
			return out, nil
		}
		t.sentEnc = enc
		out.inflight = append(out.inflight, sent{b: b, ar: ar})
	}
	return out, nil
}

// collect waits for every request's answer and completes r. It is owned by
// the Client: Close stops and awaits it.
func (t *Table) collect(r *Result, inflight []sent, rejected map[int]error, retry []int, cause error) {
	defer t.c.wg.Done()
	for k, s := range inflight {
		select {
		case <-s.ar.Ready():
		case <-t.c.closing:
			for _, rest := range inflight[k:] {
				retry = append(retry, rest.b.idx...)
			}
			if cause == nil {
				cause = ErrClosed
			}
			r.finish(rejected, retry, cause)
			return
		}
		resp, err := s.ar.FullResponse(t.c.waitCtx)
		if err == nil {
			continue
		}
		if cause == nil {
			cause = fmt.Errorf("append to %s: %w", t.Name(), err)
		}
		bad := make(map[int]bool)
		for _, re := range resp.GetRowErrors() {
			i := re.GetIndex()
			if i < 0 || i >= int64(len(s.b.idx)) {
				continue
			}
			orig := s.b.idx[i]
			bad[int(i)] = true
			rejected[orig] = fmt.Errorf("rejected by BigQuery (%s): %s", strings.ToLower(re.GetCode().String()), re.GetMessage())
		}
		for i, orig := range s.b.idx {
			if !bad[i] {
				retry = append(retry, orig)
			}
		}
	}
	r.finish(rejected, retry, cause)
}

// finish records the outcome and closes done.
func (r *Result) finish(rejected map[int]error, retry []int, cause error) {
	if len(rejected) > 0 || len(retry) > 0 {
		slices.Sort(retry)
		if cause == nil {
			first := -1
			for i := range rejected {
				if first < 0 || i < first {
					first = i
				}
			}
			cause = rejected[first]
		}
		r.err = &AppendError{Rejected: rejected, Retry: retry, Err: cause}
	}
	close(r.done)
}
