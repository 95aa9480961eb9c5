// Package netfault is a loopback TCP proxy for fault tests. A Proxy forwards
// every connection it accepts to one target and can, on demand, refuse
// connections (the port looks closed) or freeze them (the peer looks alive
// but nothing gets through, like a black hole or a half-open connection).
//
//	p, err := netfault.Listen(srv.Addr())
//	defer p.Close()
//	client := dial(p.Addr())
//	p.Freeze() // requests now go nowhere; answers never come
//	p.Pass()   // what was held is delivered, traffic flows again
package netfault

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"
)

// dialTimeout bounds connecting to the target; it is on loopback, so a
// longer wait means something is badly wrong.
const dialTimeout = 10 * time.Second

type mode int

const (
	passing mode = iota
	freezing
	refusing
)

// Proxy forwards TCP connections from Addr to its target. Its methods are
// goroutine-safe. Close stops and awaits every goroutine the Proxy started.
type Proxy struct {
	target string
	addr   string

	mu      sync.Mutex
	mode    mode
	ln      net.Listener  // nil while refusing or once closed
	flowing chan struct{} // closed while passing
	links   map[*link]struct{}
	conns   int // connections accepted, for Accepted
	closed  bool
	wg      sync.WaitGroup
}

// link is one proxied connection.
type link struct {
	client net.Conn
	done   chan struct{} // closed by shut

	mu     sync.Mutex
	server net.Conn // nil until the target is dialled
	shut   bool
}

// Listen starts a proxy on a free loopback port that forwards to target
// (host:port). It fails only if it cannot listen; the target is dialled
// for each accepted connection, once traffic may flow.
func Listen(target string) (*Proxy, error) {
	ln, err := listenOutsideEphemeral()
	if err != nil {
		return nil, fmt.Errorf("netfault: listen: %w", err)
	}
	p := &Proxy{
		target:  target,
		addr:    ln.Addr().String(),
		ln:      ln,
		flowing: make(chan struct{}),
		links:   make(map[*link]struct{}),
	}
	close(p.flowing)
	p.wg.Add(1)
	go p.accept(ln)
	return p, nil
}

// listenOutsideEphemeral listens on a free loopback port below Linux's
// ephemeral range (32768 and up), where the system never puts the local
// end of an outgoing connection: Refuse gives the port up and Pass takes
// it again, and a port from :0 was seen taken in between by another
// test's connection. Other proxies choose at random among 12,000 ports, so
// one taking it meanwhile is rare. If none is free it takes any port.
func listenOutsideEphemeral() (net.Listener, error) {
	const lo, hi = 20000, 32768
	for range 64 {
		port := lo + rand.IntN(hi-lo)
		if ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			return ln, nil
		}
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

// Addr returns the proxy's "127.0.0.1:port". It stays the same across
// Refuse and Pass.
func (p *Proxy) Addr() string { return p.addr }

// Accepted returns how many connections the proxy has accepted so far,
// refused ones excluded; a test can wait for a client to have connected.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conns
}

// Pass forwards traffic in both directions, for existing and new
// connections; data held while frozen is delivered. After Refuse it listens
// again on the same port, and fails if that port has been taken meanwhile.
func (p *Proxy) Pass() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.listenLocked(); err != nil {
		return err
	}
	p.mode = passing
	select {
	case <-p.flowing:
	default:
		close(p.flowing)
	}
	return nil
}

// Freeze keeps every socket open but forwards nothing in either direction:
// existing connections stall, new ones are accepted and stall too (the
// target is not even dialled). Data already read is held, not dropped, until
// Pass. After Refuse it listens again on the same port, and fails if that
// port has been taken meanwhile.
func (p *Proxy) Freeze() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.listenLocked(); err != nil {
		return err
	}
	p.mode = freezing
	select {
	case <-p.flowing:
		p.flowing = make(chan struct{})
	default:
	}
	return nil
}

// Refuse resets every connection (RST to both ends) and stops listening, so
// new connections are refused as by a closed port. Pass or Freeze listen
// again.
func (p *Proxy) Refuse() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.mode = refusing
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for l := range p.links {
		l.close(true)
	}
}

// Close resets every connection, stops listening and waits for every
// goroutine the Proxy started. Calling it again does nothing.
func (p *Proxy) Close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		if p.ln != nil {
			_ = p.ln.Close()
			p.ln = nil
		}
		for l := range p.links {
			l.close(true)
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// listenLocked listens on the proxy's address again after Refuse; p.mu
// must be held.
func (p *Proxy) listenLocked() error {
	if p.closed {
		return errors.New("netfault: proxy closed")
	}
	if p.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("netfault: listen again on %s: %w", p.addr, err)
	}
	p.ln = ln
	p.wg.Add(1)
	go p.accept(ln)
	return nil
}

func (p *Proxy) accept(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed by Refuse or Close
		}
		p.mu.Lock()
		if p.closed || p.mode == refusing {
			p.mu.Unlock()
			reset(c)
			continue
		}
		l := &link{client: c, done: make(chan struct{})}
		p.links[l] = struct{}{}
		p.conns++
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(l)
	}
}

// serve dials the target once traffic may flow and forwards both ways until
// either side ends or the link is shut.
func (p *Proxy) serve(l *link) {
	defer p.wg.Done()
	defer func() {
		l.close(false)
		p.mu.Lock()
		delete(p.links, l)
		p.mu.Unlock()
	}()
	if !p.waitFlow(l) {
		return
	}
	server, err := net.DialTimeout("tcp", p.target, dialTimeout)
	if err != nil {
		reset(l.client) // the target is down: so is the proxied port
		return
	}
	l.mu.Lock()
	if l.shut {
		l.mu.Unlock()
		_ = server.Close()
		return
	}
	l.server = server
	l.mu.Unlock()

	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.pump(l, server, l.client)
		l.close(false)
	}()
	p.pump(l, l.client, server)
}

// pump copies src to dst while traffic may flow.
func (p *Proxy) pump(l *link, src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		if !p.waitFlow(l) {
			return
		}
		n, err := src.Read(buf)
		if n > 0 {
			if !p.waitFlow(l) {
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// waitFlow blocks while the proxy is frozen; false once the link is shut.
func (p *Proxy) waitFlow(l *link) bool {
	p.mu.Lock()
	ch := p.flowing
	p.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-l.done:
		return false
	}
}

// close shuts the link, resetting both sockets if rst.
func (l *link) close(rst bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.shut {
		return
	}
	l.shut = true
	close(l.done)
	for _, c := range []net.Conn{l.client, l.server} {
		switch {
		case c == nil:
		case rst:
			reset(c)
		default:
			_ = c.Close()
		}
	}
}

// reset closes c with an RST instead of a FIN.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
