package netfault

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// echoServer echoes every line back until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(c, c) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func listen(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := Listen(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

type conn struct {
	net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &conn{Conn: c, r: bufio.NewReader(c)}
}

// roundTrip sends a line and reads the echo within d.
func (c *conn) roundTrip(line string, d time.Duration) (string, error) {
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	return c.readLine(d)
}

func (c *conn) readLine(d time.Duration) (string, error) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	s, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return s[:len(s)-1], nil
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// quiet is how long a test watches for data that must not arrive.
const quiet = 200 * time.Millisecond

func TestPassForwards(t *testing.T) {
	p := listen(t, echoServer(t))
	c := dial(t, p.Addr())
	for _, s := range []string{"a", "bb", "ccc"} {
		if got, err := c.roundTrip(s, 5*time.Second); err != nil || got != s {
			t.Fatalf("echo %q = %q, %v", s, got, err)
		}
	}
}

func TestFreezeHoldsThenDelivers(t *testing.T) {
	p := listen(t, echoServer(t))
	old := dial(t, p.Addr())
	if _, err := old.roundTrip("warm", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := p.Freeze(); err != nil {
		t.Fatal(err)
	}
	// An existing connection stalls.
	if got, err := old.roundTrip("held", quiet); !isTimeout(err) {
		t.Fatalf("frozen existing connection answered %q, %v", got, err)
	}
	// A new one is accepted and stalls too.
	fresh := dial(t, p.Addr())
	deadline := time.After(5 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for p.Accepted() != 2 { // poll: the accept happens on the proxy's side
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("Accepted() = %d, want 2", p.Accepted())
		}
	}
	if got, err := fresh.roundTrip("new", quiet); !isTimeout(err) {
		t.Fatalf("frozen new connection answered %q, %v", got, err)
	}
	if err := p.Pass(); err != nil {
		t.Fatal(err)
	}
	// What was sent while frozen arrives now, then traffic flows.
	if got, err := old.readLine(5 * time.Second); err != nil || got != "held" {
		t.Fatalf("after Pass: %q, %v; want the held line", got, err)
	}
	if got, err := fresh.readLine(5 * time.Second); err != nil || got != "new" {
		t.Fatalf("after Pass: %q, %v; want the held line", got, err)
	}
	if got, err := fresh.roundTrip("more", 5*time.Second); err != nil || got != "more" {
		t.Fatalf("after Pass: %q, %v", got, err)
	}
}

func TestRefuseResetsAndRefuses(t *testing.T) {
	p := listen(t, echoServer(t))
	c := dial(t, p.Addr())
	if _, err := c.roundTrip("warm", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Refuse()
	if _, err := c.readLine(5 * time.Second); err == nil || isTimeout(err) {
		t.Fatalf("read on a refused connection: %v, want a reset or EOF", err)
	}
	_, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial while refusing: %v, want connection refused", err)
	}
	if err := p.Pass(); err != nil {
		t.Fatal(err)
	}
	c = dial(t, p.Addr())
	if got, err := c.roundTrip("back", 5*time.Second); err != nil || got != "back" {
		t.Fatalf("after Pass: %q, %v", got, err)
	}
	// Refuse, then Freeze: the port is open again but black-holed.
	p.Refuse()
	if err := p.Freeze(); err != nil {
		t.Fatal(err)
	}
	c = dial(t, p.Addr())
	if got, err := c.roundTrip("void", quiet); !isTimeout(err) {
		t.Fatalf("frozen after refusing answered %q, %v", got, err)
	}
}

func TestTargetDownLooksClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	_ = ln.Close()
	p := listen(t, target)
	nc, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		return // reset before connect returned: as good as refused
	}
	c := &conn{Conn: nc, r: bufio.NewReader(nc)}
	defer c.Close()
	if _, err := c.readLine(5 * time.Second); err == nil || isTimeout(err) {
		t.Fatalf("read through a proxy to a closed port: %v, want a reset or EOF", err)
	}
}

func TestCloseEndsEverything(t *testing.T) {
	p, err := Listen(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	flowing := dial(t, p.Addr())
	if _, err := flowing.roundTrip("x", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := p.Freeze(); err != nil {
		t.Fatal(err)
	}
	stalled := dial(t, p.Addr())
	if _, err := stalled.Write([]byte("y\n")); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		p.Close()
		p.Close() // idempotent
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	for _, c := range []*conn{flowing, stalled} {
		if _, err := c.readLine(5 * time.Second); err == nil || isTimeout(err) {
			t.Errorf("read after Close: %v, want the connection ended", err)
		}
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second); err == nil {
		t.Error("dial after Close succeeded")
	}
	if err := p.Pass(); err == nil {
		t.Error("Pass after Close succeeded")
	}
}

func TestConcurrentModeChanges(t *testing.T) {
	p := listen(t, echoServer(t))
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 50 {
				switch (i + j) % 3 {
				case 0:
					_ = p.Pass()
				case 1:
					_ = p.Freeze()
				default:
					p.Refuse()
				}
			}
		})
		wg.Go(func() {
			for range 20 {
				c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
				if err != nil {
					continue
				}
				_, _ = c.Write([]byte("z\n"))
				_ = c.Close()
			}
		})
	}
	wg.Wait()
	if err := p.Pass(); err != nil {
		t.Fatal(err)
	}
	c := dial(t, p.Addr())
	if got, err := c.roundTrip("end", 5*time.Second); err != nil || got != "end" {
		t.Fatalf("after the storm: %q, %v", got, err)
	}
}
