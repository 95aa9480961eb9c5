package bq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// requestSlack covers what an AppendRows request carries besides rows, the
// descriptor and the stream name: trace id, message framing.
const requestSlack = 1024

// AppendError reports the rows of an Append that were not written. Indexes
// refer to the rows passed to Append; rows in neither field were written.
//
// Rejected rows will never be accepted as they are: a row not made by
// Table.Row, or a row BigQuery named in its row errors (wrapping
// ErrRowRejected).
//
// Retry rows were not acknowledged and may be appended again. Most were
// not written; but rows whose answer was lost (append_timeout passed, the
// stream or connection broke, Client.Close) may have been, so a retry can
// duplicate them: delivery is at-least-once.
//
// Err is the cause and carries its class: ErrTableNotFound (the table was
// deleted and auto_create_tables is off), ErrDatasetNotFound,
// ErrPermissionDenied, ErrClosed; ErrRowRejected when the Retry rows were
// refused only because BigQuery rejected other rows of their request (it
// writes all rows of a request or none), so they may be sent again at once.
// Without a class it is transient, e.g. RESOURCE_EXHAUSTED (quota),
// UNAVAILABLE, a timeout, or the lag after a table is created or patched,
// when the write path answers NOT_FOUND or INVALID_ARGUMENT about unknown
// fields for seconds to minutes. When only rejections occurred Err is the
// lowest-indexed row's error.
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
// has an answer or was given up on. Goroutine-safe.
type Result struct {
	done chan struct{}

	mu       sync.Mutex
	open     int // requests without an outcome, plus one while Append runs
	rejected map[int]error
	retry    []int
	cause    error
	err      error // set before done is closed

	existing [][]int // requests answered "first offset already written" (explicit streams)
	existed  int     // rows found already written, counted as written
}

// recordExisting notes a request whose first row was already in the
// stream; Stream.Append resolves where the stream ends within it.
func (r *Result) recordExisting(idx []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(idx) == 1 {
		r.existed++
		return
	}
	r.existing = append(r.existing, idx)
}

func (r *Result) addExisting(n int) {
	r.mu.Lock()
	r.existed += n
	r.mu.Unlock()
}

// Existing returns how many rows of a Stream append were found already
// written (by an earlier attempt whose answer was lost, or by another
// writer of the stream) rather than written now. Call it once Done.
func (r *Result) Existing() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.existed
}

func newResult() *Result {
	return &Result{done: make(chan struct{}), open: 1, rejected: make(map[int]error)}
}

// Done is closed when every request of the append has an outcome. Each
// request gets one within AppendTimeout of being sent (plus, after a
// NOT_FOUND or PERMISSION_DENIED answer, the REST lookup of the table, each
// call bounded by Timeout), or when the Client closes.
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

func (r *Result) hold() {
	r.mu.Lock()
	r.open++
	r.mu.Unlock()
}

// record notes rows to retry and rows rejected, and the cause. The cause
// that says most about the rows to retry stays: one an operator must fix
// over a transient one, a transient one over row rejections (which say
// nothing against retrying the other rows); else the first.
func (r *Result) record(retry []int, rejected map[int]error, cause error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.retry = append(r.retry, retry...)
	for i, err := range rejected {
		r.rejected[i] = err
	}
	if cause != nil && (r.cause == nil || causeRank(cause) > causeRank(r.cause)) {
		r.cause = cause
	}
}

func causeRank(err error) int {
	switch {
	case permanent(err):
		return 2
	case errors.Is(err, ErrRowRejected):
		return 0
	}
	return 1
}

// release ends one hold; the last completes the Result.
func (r *Result) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.open--; r.open > 0 {
		return
	}
	if len(r.rejected) > 0 || len(r.retry) > 0 {
		slices.Sort(r.retry)
		cause := r.cause
		if cause == nil {
			first := -1
			for i := range r.rejected {
				if first < 0 || i < first {
					first = i
				}
			}
			cause = r.rejected[first]
		}
		r.err = &AppendError{Rejected: r.rejected, Retry: r.retry, Err: cause}
	}
	close(r.done)
}

// batch is the rows of one AppendRows request: consecutive rows of one
// encoder, under max_request_bytes.
type batch struct {
	enc    *encoder
	rows   [][]byte
	idx    []int
	size   int
	offset int64 // stream offset of the first row; -1 on the default stream
}

// Append sends rows (from this Table's Row) on the table's default
// stream, split into requests under max_request_bytes and, where the rows
// were encoded with different schema versions, into one request per run of
// a version, each carrying its descriptor. It returns once the requests are
// sent; the Result tells which rows were written.
//
// The default stream is the only one BigQuery takes changes (rows of a
// table with a primary key) on. A Table's rows are all changes or all
// plain rows (see SetOptions), so its connection never carries both, as
// BigQuery requires; a row of the other kind (made by another Table's Row)
// is rejected.
//
// Before the first request on each new connection, Append looks the
// default stream up (GetWriteStream), as Google's managedwriter does, since
// some servers refuse appends to a stream nobody asked about. BigQuery
// refusing the lookup fails the rows as refusing the append would (Retry,
// with NOT_FOUND and PERMISSION_DENIED judged after a read of the table);
// a server without GetWriteStream (UNIMPLEMENTED) is appended to anyway.
//
// Append returns an error, and sends nothing, only when it cannot start:
// ctx ended, the Client is closed (ErrClosed), or the name is malformed.
// Failures on the write path (a stream that cannot be looked up or opened
// within Timeout, a send that fails or stalls) come back as Retry in the
// Result. Sends to one table are serialized and share one connection; a
// caller whose ctx ends stops waiting for its turn at once, and one whose
// ctx ends while a request is being sent returns at once too: that request
// goes on and the Result has its outcome from BigQuery's answer, like any
// request sent, while the requests not sent yet are in Retry. Other
// callers' requests are not disturbed. Goroutine-safe.
func (t *Table) Append(ctx context.Context, rows []Row) (*Result, error) {
	if t.nameErr != nil {
		return nil, t.nameErr
	}
	return t.def.append(ctx, rows, -1)
}

// append sends rows on w, at stream offset offset (-1: none, the default
// stream), as Table.Append describes.
func (w *writer) append(ctx context.Context, rows []Row, offset int64) (*Result, error) {
	t := w.t
	if t.c.closed.Load() {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := newResult()
	batches := t.split(rows, r)
	if len(batches) == 0 {
		r.release()
		return r, nil
	}
	if offset >= 0 {
		next := offset
		for _, b := range batches {
			b.offset = next
			next += int64(len(b.rows))
		}
	}
	select {
	case w.sendMu <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-w.sendMu }()
	for k, b := range batches {
		sent, err := w.send(ctx, r, b)
		if err == nil {
			continue
		}
		if k == 0 && !sent {
			switch {
			case ctx.Err() != nil:
				return nil, ctx.Err()
			case errors.Is(err, ErrClosed):
				return nil, ErrClosed
			}
		}
		if le, ok := errors.AsType[*lookupError](err); ok {
			// NOT_FOUND and PERMISSION_DENIED need the table lookup an
			// append answered so would get: the table may be gone.
			for _, rest := range batches[k:] {
				r.hold()
				t.retry(&request{w: w, res: r, idx: rest.idx, offset: rest.offset}, le.err)
			}
			break
		}
		// Stop at the first failure rather than wait out a broken stream
		// once per request.
		if sent {
			k++
		}
		for _, rest := range batches[k:] {
			r.record(rest.idx, nil, err)
		}
		break
	}
	r.release()
	return r, nil
}

// split groups rows into batches; rows that cannot be sent are rejected in
// r.
func (t *Table) split(rows []Row, r *Result) []*batch {
	limit := t.c.cfg.maxRequestBytes()
	var batches []*batch
	var cur *batch
	for i, row := range rows {
		if row.enc == nil {
			r.record(nil, map[int]error{i: errors.New("not a row made by Table.Row")}, nil)
			continue
		}
		if k := kindOf(row.enc.change); !t.fixKind(k) {
			// Only a row of another Table's Row gets here: this one's
			// Row refuses the other kind.
			r.record(nil, map[int]error{i: t.kindErr(k, "the row (made by another Table's Row)")}, nil)
			continue
		}
		overhead := t.overhead(row.enc)
		sz := rowWireSize(len(row.b))
		if overhead+sz > limit { // only if the Row came from another Client
			r.record(nil, map[int]error{i: fmt.Errorf("%w: %d bytes encoded exceed max_request_bytes %d", ErrRowTooLarge, len(row.b), limit)}, nil)
			continue
		}
		if cur == nil || cur.enc != row.enc || cur.size+sz > limit {
			// Sized for the rows left, or for as many of this row's size
			// as fit a request: growing by appends would copy them over
			// and over.
			n := min(len(rows)-i, (limit-overhead)/max(sz, 1)+1)
			cur = &batch{enc: row.enc, size: overhead, offset: -1, rows: make([][]byte, 0, n), idx: make([]int, 0, n)}
			batches = append(batches, cur)
		}
		cur.rows = append(cur.rows, row.b)
		cur.idx = append(cur.idx, i)
		cur.size += sz
	}
	return batches
}

// send hands one batch to a connection: the writer's own, or one its
// pool picks. sent reports whether the request reached a stream, whose
// answer (or end) then settles it; err says why sending stops. Callers
// hold the writer's turn (sendMu); the connection's send slot is held for
// this one request, so that the tables sharing the connection interleave.
func (w *writer) send(ctx context.Context, r *Result, b *batch) (sent bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if !w.named && (w.checked == nil || w.checked.ended() != nil) {
		// Looked up with the writer's turn only, not a connection's slot:
		// a slow lookup holds back no other table.
		location, err := w.lookupDefault(ctx)
		if err != nil {
			return false, err
		}
		if w.own == nil && w.pool == nil {
			w.pool = w.t.c.poolFor(poolKey{location: location, kind: w.t.kind.Load()})
		}
	}
	cn := w.own
	if cn == nil {
		cn = w.pool.pick(w)
	}
	if err := cn.acquire(ctx); err != nil {
		return false, err
	}
	defer cn.release()
	st, err := cn.live(ctx)
	if err != nil {
		return false, err
	}
	w.conn = cn
	data := &storagepb.AppendRowsRequest_ProtoData{Rows: &storagepb.ProtoRows{SerializedRows: b.rows}}
	msg := &storagepb.AppendRowsRequest{Rows: &storagepb.AppendRowsRequest_ProtoRows{ProtoRows: data}}
	if st.lastEnc == nil {
		msg.TraceId = traceID
	}
	// Every request names its stream, as Google's client does when it
	// multiplexes: BigQuery takes it on any connection, and goccy's
	// emulator (v0.6.6) appends a request without one to whichever stream
	// its map yields first, another table's included. The schema goes with
	// the first request, and with one that changes it (as BigQuery requires
	// on the default stream) or switches the connection to another table.
	msg.WriteStream = w.name
	if st.resendSchema.Swap(false) || st.lastEnc != b.enc || st.lastW != w {
		data.WriterSchema = &storagepb.ProtoSchema{ProtoDescriptor: b.enc.dp}
	}
	if b.offset >= 0 {
		msg.Offset = wrapperspb.Int64(b.offset)
	}
	r.hold()
	registered, err := st.send(ctx, &request{w: w, res: r, idx: b.idx, offset: b.offset}, msg)
	if !registered {
		r.release()
		return false, err
	}
	// Even if its caller gave up, the request goes out with its descriptor;
	// if the send fails, the stream is not used again.
	st.lastEnc, st.lastW = b.enc, w
	w.checked = st
	return true, err
}

// lookupError is BigQuery's refusal of the lookup that precedes a new
// connection to the default stream. The rows meant for that connection
// fare as if BigQuery had refused the connection's first append with it.
type lookupError struct{ err error }

func (e *lookupError) Error() string { return e.err.Error() }
func (e *lookupError) Unwrap() error { return e.err }

// lookupDefault asks BigQuery about the table's default stream before the
// writer's first request, and again after the connection its last request
// went on ended, as Google's managedwriter does: some servers (goccy's
// bigquery-emulator) refuse appends to a default stream nobody asked
// about. The answer names the stream's location, whose pool the writer
// joins. It is bounded by Timeout, ctx and Close. A server without
// GetWriteStream (UNIMPLEMENTED) is no reason to stop appending. An error
// that is not the caller's ctx ending, nor Close (ErrClosed), is a
// *lookupError. Callers hold the writer's turn.
func (w *writer) lookupDefault(ctx context.Context) (location string, err error) {
	c := w.t.c
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(c.ctx, cancel)()
	err = c.call(lctx, "look up write stream "+w.name, func(ctx context.Context) error {
		ws, err := c.write.GetWriteStream(ctx, &storagepb.GetWriteStreamRequest{Name: w.name}, noRetry)
		location = ws.GetLocation()
		return err
	})
	switch {
	case err == nil:
		return location, nil
	case c.closed.Load():
		return "", ErrClosed
	case ctx.Err() != nil:
		return "", err
	case status.Code(err) == codes.Unimplemented:
		w.t.log.Debug("the Storage Write API has no GetWriteStream; appending without it", zap.Error(err))
		return "", nil
	}
	return "", &lookupError{err: err}
}

// answer settles req with BigQuery's response to it.
func (t *Table) answer(req *request, resp *storagepb.AppendRowsResponse) {
	e := resp.GetError()
	if e == nil || codes.Code(e.GetCode()) == codes.OK {
		req.res.release()
		return
	}
	cause := fmt.Errorf("append to %s: %w", t.Name(), status.ErrorProto(e))
	if req.offset >= 0 {
		switch storageErrorCode(e) {
		case storagepb.StorageError_OFFSET_ALREADY_EXISTS:
			// The request's first row is in the stream already: written by
			// an earlier attempt or another writer. The rest may not be.
			req.res.recordExisting(req.idx)
			req.res.release()
			return
		case storagepb.StorageError_STREAM_FINALIZED:
			req.res.record(req.idx, nil, withClass(cause, ErrStreamFinalized))
			req.res.release()
			return
		case storagepb.StorageError_STREAM_NOT_FOUND:
			req.res.record(req.idx, nil, withClass(cause, ErrStreamNotFound))
			req.res.release()
			return
		}
	}
	rowErrs := resp.GetRowErrors()
	if len(rowErrs) == 0 {
		t.retry(req, cause)
		return
	}
	// BigQuery wrote none of the request's rows: the ones it named are
	// rejected, the others may be sent again.
	rejected := make(map[int]error, len(rowErrs))
	bad := make(map[int]bool, len(rowErrs))
	for _, re := range rowErrs {
		i := int(re.GetIndex())
		if i < 0 || i >= len(req.idx) {
			continue
		}
		bad[i] = true
		rejected[req.idx[i]] = fmt.Errorf("%w (%s): %s", ErrRowRejected, strings.ToLower(re.GetCode().String()), re.GetMessage())
	}
	if len(rejected) == 0 { // none of the named rows is one of ours
		t.retry(req, cause)
		return
	}
	var retry []int
	for i, orig := range req.idx {
		if !bad[i] {
			retry = append(retry, orig)
		}
	}
	req.res.record(retry, rejected, withClass(cause, ErrRowRejected))
	req.res.release()
}

// retry settles req with all its rows in Retry. NOT_FOUND and
// PERMISSION_DENIED wait for a lookup of the table first, which tells a
// deleted table (recreated, or ErrTableNotFound) from the write path
// catching up after a create or patch.
func (t *Table) retry(req *request, cause error) {
	settle := func(verdict error) {
		if verdict == nil {
			class := grpcClass(cause)
			if req.w.named && status.Code(cause) == codes.NotFound {
				class = ErrStreamNotFound // the table is there, the stream is not
			}
			verdict = withClass(cause, class)
		}
		req.res.record(req.idx, nil, verdict)
		req.res.release()
	}
	switch status.Code(cause) {
	case codes.NotFound, codes.PermissionDenied:
		if !errors.Is(cause, ErrClosed) {
			t.afterLookup(settle)
			return
		}
	}
	settle(nil)
}
