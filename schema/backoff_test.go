package schema

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/twmb/franz-go/pkg/sr"
)

const lateID = 99

var lateSchema = sr.Schema{Schema: `{"type":"record","name":"L","fields":[{"name":"x","type":"int"}]}`}

func TestRetryDelay(t *testing.T) {
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	for i, w := range want {
		if d := retryDelay(i + 1); d != w {
			t.Errorf("retryDelay(%d) = %s, want %s", i+1, d, w)
		}
	}
	if d := retryDelay(1000); d != maxRetry {
		t.Errorf("retryDelay(1000) = %s, want the cap", d)
	}
	for d, want := range map[time.Duration]string{
		time.Nanosecond: "100ms", 999 * time.Millisecond: "1s", time.Second: "1s",
		3*time.Second + time.Nanosecond: "4s", 10 * time.Second: "10s",
	} {
		if got := roundUp(d).String(); got != want {
			t.Errorf("roundUp(%s) = %s, want %s", d, got, want)
		}
	}
}

// A flood of records carrying an ID the registry does not know, on the real
// clock: thousands of calls, concurrent and sequential, over 2.5s cost one
// request at first and one after the 1s backoff, each call failing with
// ErrNotFound.
func TestRegistryUnknownIDFlood(t *testing.T) {
	f := newFakeRegistry(t)
	r := newTestRegistry(t, Config{URL: f.URL()})
	path := fmt.Sprintf("/schemas/ids/%d", lateID)
	deadline := time.Now().Add(2500 * time.Millisecond)

	var calls atomic.Int64
	var bad atomic.Pointer[error]
	check := func() {
		calls.Add(1)
		_, err := r.Schema(t.Context(), lateID)
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "schema 99") ||
			!strings.Contains(err.Error(), "; not asked again for ") {
			bad.CompareAndSwap(nil, &err)
		}
	}

	// 2,000 concurrent first calls.
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range 2000 {
		wg.Go(func() {
			<-start
			check()
		})
	}
	close(start)
	wg.Wait()
	// Then 4 callers in a loop until the deadline, one call per millisecond each.
	for range 4 {
		wg.Go(func() {
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for time.Now().Before(deadline) {
				check()
				<-tick.C
			}
		})
	}
	wg.Wait()

	if p := bad.Load(); p != nil {
		t.Fatalf("Schema = %v, want a remembered ErrNotFound naming schema 99", *p)
	}
	n := f.count(path)
	t.Logf("%d calls, %d requests", calls.Load(), n)
	if calls.Load() < 5000 {
		t.Errorf("only %d calls", calls.Load())
	}
	// At 0s and after the 1s backoff; the next is due at 3s.
	if n < 2 || n > 3 {
		t.Errorf("%d requests for one unknown ID in 2.5s, want 2 (3 at most)", n)
	}
}

// A schema registered after its ID was first asked for is found once the
// backoff has passed, on the real clock.
func TestRegistryUnknownIDFoundAfterBackoff(t *testing.T) {
	f := newFakeRegistry(t)
	r := newTestRegistry(t, Config{URL: f.URL()})
	path := fmt.Sprintf("/schemas/ids/%d", lateID)

	start := time.Now()
	_, err := r.Schema(t.Context(), lateID)
	want := "schema not found: schema 99: registry error 40403: schema not found; not asked again for 1s"
	if !errors.Is(err, ErrNotFound) || err.Error() != want {
		t.Fatalf("Schema = %v, want %q", err, want)
	}
	f.SeedSchema("late-value", 1, lateID, lateSchema)

	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var s *Schema
	for s == nil {
		if s, err = r.Schema(t.Context(), lateID); err == nil {
			break
		}
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("Schema = %v, want the remembered ErrNotFound", err)
		}
		if time.Since(start) > firstRetry+2*time.Second {
			t.Fatalf("not found %s after registration: %v", time.Since(start), err)
		}
		<-tick.C
	}
	if d := time.Since(start); d < firstRetry {
		t.Errorf("found after %s, before the backoff passed", d)
	}
	assertColumns(t, s.Columns(), bigquery.Schema{col("x", INTEGER, "REQUIRED")})
	if n := f.count(path); n != 2 {
		t.Errorf("%d requests, want 2 (the miss and the find)", n)
	}
}

// The backoff doubles per consecutive failure up to 10s, each remembered
// error says how long it stays, and a success clears it.
func TestRegistryBackoffDoubles(t *testing.T) {
	f := newFakeRegistry(t)
	r := newTestRegistry(t, Config{URL: f.URL()})
	clock := withClock(r)
	path := fmt.Sprintf("/schemas/ids/%d", lateID)
	schema := func(wantErr string, wantRequests int) {
		t.Helper()
		_, err := r.Schema(t.Context(), lateID)
		if !errors.Is(err, ErrNotFound) || !strings.HasSuffix(err.Error(), wantErr) {
			t.Fatalf("Schema = %v, want ErrNotFound ending in %q", err, wantErr)
		}
		if n := f.count(path); n != wantRequests {
			t.Fatalf("%d requests, want %d", n, wantRequests)
		}
	}

	requests := 0
	for _, backoff := range []int{1, 2, 4, 8, 10, 10} {
		requests++
		schema(fmt.Sprintf("; not asked again for %ds", backoff), requests)
		// Remembered until the backoff has passed, to the nanosecond.
		clock.Advance(time.Duration(backoff)*time.Second - time.Nanosecond)
		schema("; not asked again for 100ms", requests)
		clock.Advance(time.Nanosecond)
	}

	f.SeedSchema("late-value", 1, lateID, lateSchema)
	if _, err := r.Schema(t.Context(), lateID); err != nil {
		t.Fatalf("after registration and the backoff: %v", err)
	}
	r.mu.Lock()
	left := len(r.failures)
	r.mu.Unlock()
	if left != 0 {
		t.Errorf("%d failures remembered after the success, want 0", left)
	}
}

// A failure not asked about again within 10s of its backoff ending is
// forgotten: dropped from memory, and the next one starts at 1s again.
func TestRegistryForgetsStaleFailures(t *testing.T) {
	f := newFakeRegistry(t)
	r := newTestRegistry(t, Config{URL: f.URL()})
	clock := withClock(r)

	for range 3 {
		if _, err := r.Schema(t.Context(), lateID); !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		clock.Advance(maxRetry)
	}
	// The third backoff (4s) ended 6s ago: not forgotten yet.
	_, err := r.Schema(t.Context(), lateID)
	if !strings.HasSuffix(err.Error(), "not asked again for 8s") {
		t.Fatalf("Schema = %v, want the fourth backoff, 8s", err)
	}
	clock.Advance(8*time.Second + maxRetry + time.Nanosecond)
	// Another ID's failure sweeps the stale one out.
	if _, err := r.Schema(t.Context(), lateID+1); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	r.mu.Lock()
	_, kept := r.failures[fmt.Sprintf("id:%d", lateID)]
	r.mu.Unlock()
	if kept {
		t.Error("a failure stale for over 10s is still remembered")
	}
	if _, err := r.Schema(t.Context(), lateID); !strings.HasSuffix(err.Error(), "not asked again for 1s") {
		t.Errorf("Schema = %v, want the backoff to start again at 1s", err)
	}
}

// During an outage the registry is asked about once per backoff however
// often Schema is called, and recovery is noticed within the 10s cap. The
// fake clock runs 60s in 100ms steps, 20 calls per step, over real sockets.
func TestRegistryOutageNotHammered(t *testing.T) {
	for _, outage := range []string{"503", "closed"} {
		t.Run(outage, func(t *testing.T) {
			var down atomic.Bool
			down.Store(true)
			var requests func() int
			var url string
			switch outage {
			case "503":
				f := newFakeRegistry(t)
				f.seedShared(t)
				f.Intercept(func(w http.ResponseWriter, _ *http.Request) bool {
					if !down.Load() {
						return false
					}
					w.WriteHeader(http.StatusServiceUnavailable)
					return true
				})
				path := fmt.Sprintf("/schemas/ids/%d", stockV1ID)
				requests = func() int { return f.count(path) }
				url = f.URL()
			case "closed":
				// Connections are closed on accept while down, and answered
				// by the registry once it is back.
				f := newFakeRegistry(t)
				f.seedShared(t)
				var accepted atomic.Int32
				ln := newFlakyListener(t, &down, &accepted)
				srv := &http.Server{Handler: f.Handler()}
				served := make(chan struct{})
				go func() {
					defer close(served)
					_ = srv.Serve(ln)
				}()
				t.Cleanup(func() {
					_ = srv.Close()
					<-served
				})
				requests = func() int { return int(accepted.Load()) }
				url = "http://" + ln.Addr().String()
			}
			r := newTestRegistry(t, Config{URL: url})
			clock := withClock(r)

			var wg sync.WaitGroup
			for range 600 {
				for range 20 {
					wg.Go(func() {
						_, err := r.Schema(t.Context(), stockV1ID)
						if !isTransient(err) {
							t.Errorf("during the outage: Schema = %v, want a transient error", err)
						}
					})
				}
				wg.Wait()
				clock.Advance(100 * time.Millisecond)
			}
			// Asked at 0, 1, 3, 7, 15, 25, 35, 45 and 55s.
			if n := requests(); n < 8 || n > 10 {
				t.Errorf("%d requests in 60s of outage, want 9", n)
			}

			down.Store(false)
			recovered := time.Duration(0)
			for ; ; recovered += 100 * time.Millisecond {
				_, err := r.Schema(t.Context(), stockV1ID)
				if err == nil {
					break
				}
				if recovered > maxRetry {
					t.Fatalf("still failing %s after recovery: %v", recovered, err)
				}
				clock.Advance(100 * time.Millisecond)
			}
			t.Logf("recovery noticed after %s", recovered)
		})
	}
}

// flakyListener accepts connections, closing them at once while down.
type flakyListener struct {
	net.Listener
	down     *atomic.Bool
	accepted *atomic.Int32
}

func newFlakyListener(t *testing.T, down *atomic.Bool, accepted *atomic.Int32) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &flakyListener{Listener: ln, down: down, accepted: accepted}
}

func (l *flakyListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || !l.down.Load() {
			return c, err
		}
		l.accepted.Add(1)
		_ = c.Close()
	}
}
