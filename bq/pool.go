package bq

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// A shared connection is saturated when it has loadedRequests unanswered
// requests, or a send held by flow control for blockedSend: the pool then
// opens another (up to MaxConnections) rather than queue more behind it. A
// connection streams requests without waiting for answers, so a few in
// flight is normal; many, or a send the server does not read, means
// BigQuery takes it more slowly than bqsink sends. Senders merely taking
// turns at the send slot (a burst of tables flushing at once) is not
// saturation: a send takes microseconds.
const (
	loadedRequests = 8
	blockedSend    = 10 * time.Millisecond
)

// conn is one Storage Write connection (an AppendRows call at a time, its
// stream, reopened when it ends): either shared by the default streams of
// a pool's tables, or a writer's own (explicit streams, and every writer
// when the Client does not pool).
type conn struct {
	c    *Client
	pool *pool  // nil for a writer's own connection
	name string // what errors and logs call it

	// slot (capacity 1) is the send slot: gRPC forbids concurrent sends
	// on a stream. A channel so that a caller whose context ends stops
	// waiting.
	slot   chan struct{}
	stream *stream                // guarded by slot
	cur    atomic.Pointer[stream] // stream, for readers without the slot
	queued atomic.Int32           // callers waiting for the slot or holding it

	quarantine bool // guarded by pool.mu: it carries suspect writers only
}

func newConn(c *Client, p *pool, name string) *conn {
	return &conn{c: c, pool: p, name: name, slot: make(chan struct{}, 1)}
}

// acquire takes the send slot, within ctx.
func (cn *conn) acquire(ctx context.Context) error {
	cn.queued.Add(1)
	select {
	case cn.slot <- struct{}{}:
		return nil
	case <-ctx.Done():
		cn.queued.Add(-1)
		return ctx.Err()
	}
}

func (cn *conn) release() {
	<-cn.slot
	cn.queued.Add(-1)
}

// load is how busy the connection is: callers at its send slot and
// requests on its stream awaiting answers.
func (cn *conn) load() int {
	n := int(cn.queued.Load())
	if st := cn.cur.Load(); st != nil {
		n += st.unanswered()
	}
	return n
}

// saturated reports whether the connection takes requests more slowly
// than they come.
func (cn *conn) saturated() bool {
	st := cn.cur.Load()
	return st != nil && (st.unanswered() >= loadedRequests || st.blocked(blockedSend))
}

// live returns the connection's stream, opening one if there is none or
// it ended. Callers hold the slot.
func (cn *conn) live(ctx context.Context) (*stream, error) {
	if st := cn.stream; st != nil && st.ended() == nil {
		return st, nil
	}
	st, err := cn.open(ctx)
	if err != nil {
		return nil, err
	}
	cn.stream = st
	cn.cur.Store(st)
	return st, nil
}

// close ends the connection's stream, completing its unanswered requests
// with their rows in Retry.
func (cn *conn) close(ctx context.Context, cause error) {
	if cn.acquire(ctx) != nil {
		return
	}
	defer cn.release()
	if st := cn.stream; st != nil {
		st.fail(cause)
		cn.stream = nil
		cn.cur.Store(nil)
	}
}

// poolKey tells pools apart: BigQuery multiplexes default streams of one
// region on a connection, and takes rows with and without change type
// only on connections of their own.
type poolKey struct {
	location string
	kind     int32
}

// pool is the shared connections of one poolKey: at most max, opened as
// the ones there are saturate. Each request of a writer goes to the
// connection it used last unless that one is saturated or quarantined,
// else to the least busy, so a table's schema is sent again only when it
// moves (see writer.send).
//
// A writer whose request was unanswered when its connection broke is a
// suspect: until BigQuery acknowledges one of its requests, its requests
// go to a quarantine connection that others avoid, so that a table whose
// appends make BigQuery end the connection (or answer too late) costs the
// other tables one broken connection, not one per retry. With max 1 there
// is no other connection to move to.
type pool struct {
	c   *Client
	key poolKey
	max int

	mu       sync.Mutex
	conns    []*conn
	suspects int // writers under suspicion
}

// pick returns the connection w's next request goes on.
func (p *pool) pick(w *writer) *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if w.suspect.Load() && p.max > 1 {
		return p.quarantineLocked()
	}
	var best *conn
	bestLoad := 0
	for _, cn := range p.conns {
		if cn.quarantine {
			continue
		}
		if cn == w.conn && !cn.saturated() {
			return cn
		}
		if l := cn.load(); best == nil || l < bestLoad {
			best, bestLoad = cn, l
		}
	}
	if best == nil || (best.saturated() && p.openable()) {
		return p.openLocked()
	}
	return best
}

// openable reports whether the pool may open another connection, keeping
// one place free for a quarantine connection once there are suspects.
func (p *pool) openable() bool {
	n := len(p.conns)
	if p.suspects > 0 && !p.hasQuarantine() {
		n++
	}
	return n < p.max
}

func (p *pool) hasQuarantine() bool {
	for _, cn := range p.conns {
		if cn.quarantine {
			return true
		}
	}
	return false
}

func (p *pool) openLocked() *conn {
	where := p.key.location
	if where == "" {
		where = "default location"
	}
	kind := "rows"
	if p.key.kind == kindChange {
		kind = "changes"
	}
	cn := newConn(p.c, p, fmt.Sprintf("shared connection %d (%s, %s)", len(p.conns)+1, where, kind))
	p.conns = append(p.conns, cn)
	return cn
}

// quarantineLocked returns the quarantine connection, opening one, or
// setting the least busy one aside, if there is none.
func (p *pool) quarantineLocked() *conn {
	var least *conn
	for _, cn := range p.conns {
		if cn.quarantine {
			return cn
		}
		if least == nil || cn.load() < least.load() {
			least = cn
		}
	}
	cn := least
	if len(p.conns) < p.max || cn == nil {
		cn = p.openLocked()
	}
	cn.quarantine = true
	return cn
}

// suspect puts w under suspicion: its unanswered request was on a shared
// connection that broke.
func (p *pool) suspect(w *writer) {
	if p.max < 2 || !w.suspect.CompareAndSwap(false, true) {
		return
	}
	p.mu.Lock()
	p.suspects++
	p.mu.Unlock()
	w.t.log.Warn("the table's request was unanswered when its shared Storage Write connection broke; its appends go on a connection of their own until one is acknowledged")
}

// clear ends w's suspicion once BigQuery acknowledged one of its requests;
// the quarantine connection is shared again once nobody is suspect.
func (p *pool) clear(w *writer) {
	if !w.suspect.CompareAndSwap(true, false) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.suspects--; p.suspects == 0 {
		for _, cn := range p.conns {
			cn.quarantine = false
		}
	}
}

// poolFor returns the pool of key, creating it.
func (c *Client) poolFor(key poolKey) *pool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pools[key]
	if p == nil {
		p = &pool{c: c, key: key, max: c.cfg.maxConnections()}
		c.pools[key] = p
	}
	return p
}

// Connections returns how many Storage Write connections (AppendRows
// calls) are open: each pool's, plus one per explicit stream and, when the
// Client does not pool, per table, that is writing.
func (c *Client) Connections() int { return int(c.open.Load()) }
