package bq

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"go.uber.org/zap"
)

// traceID names bqsink to BigQuery on the first request of each stream.
const traceID = "bqsink"

// stream is one AppendRows call on a connection. Requests are sent in
// order by the holder of the connection's send slot and answered in order,
// read by one receive goroutine. A watchdog goroutine bounds the
// open (and ends it with its caller's context) and every send by Timeout,
// and every answer by AppendTimeout; past either it tears the stream down,
// which completes every unanswered request with its rows in Retry. A
// sender's context ending does not: the stream is shared by every caller
// appending on the connection, and its other requests may be written
// already.
// A stream that ended is never used again.
type stream struct {
	cn     *conn
	c      *Client
	ctx    context.Context // cancelled when the stream ends
	cancel context.CancelFunc
	rpc    storagepb.BigQueryWrite_AppendRowsClient // set by openStream before use

	// lastEnc is the encoder whose descriptor the stream last carried, for
	// the writer lastW; guarded by the connection's send slot.
	lastEnc *encoder
	lastW   *writer
	// resendSchema is set by an answer with an error: the next request
	// carries its descriptor again rather than trust the server kept the
	// one a failed request brought.
	resendSchema atomic.Bool
	// counted is set once the stream is counted in Client.open; the count
	// drops when it ends.
	counted bool
	// sending is the latest request handed to rpc.Send, which may outlive
	// the caller that gave up on it; guarded by the send slot. gRPC forbids
	// concurrent sends on a stream, so the next send waits for it.
	sending *sendOp

	kick chan struct{} // capacity 1: the watchdog re-reads the state
	done chan struct{} // closed when the stream ends

	mu      sync.Mutex
	err     error      // why the stream ended; set once
	pending []*request // sent, unanswered, oldest first
	op      *op        // the open or send under way
}

// op is an open or send in progress, bounded by due; an open also by its
// caller's context (ctx, nil for a send), as nobody else uses the stream
// yet.
type op struct {
	what  string // "open" or "send"
	since time.Time
	due   time.Time
	ctx   context.Context
}

// sendOp is one rpc.Send under way in its own goroutine.
type sendOp struct {
	done chan struct{} // closed once rpc.Send returned
	err  error         // why the stream ended, if the send failed; set before done closes
}

// request is one AppendRows request in flight: which rows of which Append,
// by which writer.
type request struct {
	w      *writer
	res    *Result
	idx    []int
	sentAt time.Time
	offset int64 // stream offset of its first row, -1 for none
}

// open opens a new AppendRows stream on the connection, bounded by Timeout
// and ctx. Callers hold the slot.
func (cn *conn) open(ctx context.Context) (*stream, error) {
	c := cn.c
	sctx, cancel := context.WithCancel(c.ctx)
	st := &stream{
		cn:     cn,
		c:      c,
		ctx:    sctx,
		cancel: cancel,
		kick:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	open := &op{what: "open", due: time.Now().Add(c.cfg.timeout()), ctx: ctx}
	st.op = open
	if !c.goOwned(st.watch) {
		cancel()
		return nil, ErrClosed
	}
	rpc, err := c.write.AppendRows(sctx, noRetry)
	st.endOp(open)
	if err != nil {
		return nil, st.fail(fmt.Errorf("open a write stream for %s: %w", cn.name, err))
	}
	st.rpc = rpc
	st.mu.Lock()
	if st.err == nil {
		st.counted = true
		c.open.Add(1)
	}
	st.mu.Unlock()
	if !c.goOwned(st.recv) {
		return nil, st.fail(ErrClosed)
	}
	if err := st.ended(); err != nil {
		return nil, err // the watchdog gave up just as the open returned
	}
	c.logger.Debug("opened write stream", zap.String("connection", cn.name))
	return st, nil
}

// unanswered is how many requests sent on the stream await an answer.
func (st *stream) unanswered() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.pending)
}

// blocked reports whether a send has been under way for longer than d:
// gRPC's flow control holds it, as the server reads no faster.
func (st *stream) blocked(d time.Duration) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.op != nil && st.op.what == "send" && time.Since(st.op.since) > d
}

// ended returns why the stream ended, or nil while it is usable.
func (st *stream) ended() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.err
}

// send registers req and sends msg. The send is bounded by Timeout (past
// it the watchdog ends the stream) and waits first, within ctx, for an
// earlier send its caller gave up on (bounded by that one's Timeout).
//
// registered false means nothing was sent: the stream had ended, or ctx
// ended before req's turn. Otherwise req's outcome arrives through the
// stream, even when err says the send failed. A caller whose ctx ends while
// its send is under way gets ctx's error at once, but the send goes on: the
// other requests on the stream are not disturbed, and req is settled by
// BigQuery's answer (or the stream's end) like any other. Callers hold the
// connection's send slot.
func (st *stream) send(ctx context.Context, req *request, msg *storagepb.AppendRowsRequest) (registered bool, err error) {
	if prev := st.sending; prev != nil {
		select {
		case <-prev.done:
		case <-st.done:
			return false, st.ended()
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	st.mu.Lock()
	if st.err != nil {
		err := st.err
		st.mu.Unlock()
		return false, err
	}
	now := time.Now()
	req.sentAt = now
	st.pending = append(st.pending, req)
	o := &op{what: "send", since: now, due: now.Add(st.c.cfg.timeout())}
	st.op = o
	st.mu.Unlock()
	st.poke()

	// In a goroutine of its own so that its caller can leave: only the end
	// of the stream interrupts rpc.Send.
	so := &sendOp{done: make(chan struct{})}
	st.sending = so
	if !st.c.goOwned(func() { st.sendNow(o, so, msg) }) {
		close(so.done)
		return true, st.fail(ErrClosed)
	}
	select {
	case <-so.done:
		return true, so.err
	case <-ctx.Done():
		return true, fmt.Errorf("send to %s: the caller gave up while sending; the request goes on: %w", req.w.t.Name(), ctx.Err())
	}
}

// sendNow runs the send o, msg, and ends the stream if it fails.
func (st *stream) sendNow(o *op, so *sendOp, msg *storagepb.AppendRowsRequest) {
	defer close(so.done)
	err := st.rpc.Send(msg)
	if errors.Is(err, io.EOF) {
		// The stream ended; the receiver ends it with the server's reason,
		// or the watchdog with its own once the send is due.
		<-st.done
	}
	st.endOp(o)
	if err != nil {
		so.err = st.fail(fmt.Errorf("send to %s: %w", st.cn.name, err))
	}
}

// endOp ends the open or send o; the watchdog forgets its deadline and
// context.
func (st *stream) endOp(o *op) {
	st.mu.Lock()
	if st.op == o {
		st.op = nil
	}
	st.mu.Unlock()
	st.poke()
}

func (st *stream) poke() {
	select {
	case st.kick <- struct{}{}:
	default:
	}
}

// fail ends the stream with cause (ErrClosed once the Client is closing)
// unless it already ended, completes every unanswered request with its rows
// in Retry, and returns the reason the stream ended. On a shared
// connection, the writer of the oldest unanswered request becomes a
// suspect (see pool).
func (st *stream) fail(cause error) error {
	st.mu.Lock()
	if st.err != nil {
		err := st.err
		st.mu.Unlock()
		return err
	}
	closing := st.c.closed.Load()
	if closing {
		cause = ErrClosed
	}
	st.err = cause
	pending := st.pending
	st.pending = nil
	if st.counted {
		st.c.open.Add(-1)
	}
	close(st.done)
	st.mu.Unlock()
	st.cancel()
	if len(pending) > 0 {
		st.c.logger.Debug("write stream ended", zap.String("connection", st.cn.name), zap.Int("unanswered", len(pending)), zap.Error(cause))
		if p := st.cn.pool; p != nil && !closing {
			p.suspect(pending[0].w)
		}
	}
	for _, req := range pending {
		req.w.t.retry(req, cause)
	}
	return cause
}

// recv matches answers to requests in order until the stream ends.
func (st *stream) recv() {
	for {
		resp, err := st.rpc.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the server ended the stream")
			}
			st.fail(fmt.Errorf("append to %s: %w", st.cn.name, err))
			return
		}
		st.mu.Lock()
		if st.err != nil {
			st.mu.Unlock()
			return // fail completed every request
		}
		if len(st.pending) == 0 {
			st.mu.Unlock()
			st.fail(fmt.Errorf("append to %s: an answer to no request", st.cn.name))
			return
		}
		req := st.pending[0]
		st.pending[0] = nil
		st.pending = st.pending[1:]
		st.mu.Unlock()
		if resp.GetError() != nil {
			st.resendSchema.Store(true)
		} else if p := st.cn.pool; p != nil {
			p.clear(req.w)
		}
		req.w.t.answer(req, resp)
	}
}

// watch ends the stream when an open or send outlives Timeout, when an
// open outlives its caller's context, when the oldest request has no answer
// AppendTimeout after it was sent, or when the Client closes.
func (st *stream) watch() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		due, what, cur, ok := st.nextDeadline()
		if !ok {
			return
		}
		var fire <-chan time.Time
		if !due.IsZero() {
			wait := time.Until(due)
			if wait <= 0 {
				st.fail(st.timeoutErr(what))
				return
			}
			timer.Reset(wait)
			fire = timer.C
		}
		var opDone <-chan struct{}
		if cur != nil && cur.ctx != nil {
			opDone = cur.ctx.Done()
		}
		select {
		case <-fire:
		case <-st.kick:
		case <-opDone:
			if st.opUnderWay(cur) {
				st.fail(fmt.Errorf("%s a write stream for %s: the caller gave up: %w", cur.what, st.cn.name, cur.ctx.Err()))
				return
			}
			// That open is over: what its caller does with its context now
			// is not the stream's business.
		case <-st.ctx.Done():
			st.fail(fmt.Errorf("write stream for %s: %w", st.cn.name, context.Cause(st.ctx)))
			return
		case <-st.done:
			return
		}
		timer.Stop()
	}
}

// nextDeadline returns when the watchdog must act and on what ("open",
// "send" or "answer"), and the open or send under way; ok false once the
// stream ended.
func (st *stream) nextDeadline() (due time.Time, what string, cur *op, ok bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.err != nil {
		return due, "", nil, false
	}
	if cur = st.op; cur != nil {
		due, what = cur.due, cur.what
	}
	if len(st.pending) > 0 {
		if d := st.pending[0].sentAt.Add(st.c.cfg.appendTimeout()); due.IsZero() || d.Before(due) {
			due, what = d, "answer"
		}
	}
	return due, what, cur, true
}

// opUnderWay reports whether o is still the open or send under way.
func (st *stream) opUnderWay(o *op) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.op == o
}

func (st *stream) timeoutErr(what string) error {
	if what == "answer" {
		return fmt.Errorf("append to %s: no answer from the Storage Write API within append_timeout %v", st.cn.name, st.c.cfg.appendTimeout())
	}
	return fmt.Errorf("%s a write stream for %s: not done within timeout %v", what, st.cn.name, st.c.cfg.timeout())
}
