package schema

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/sr/srfake"
)

// A registry refusing the credentials is ErrUnauthorized, however it says
// so (srfake's JSON body, or a proxy's plain text, which srclient reports
// with the status text only), never a record's error class, and it is not
// asked again before the backoff.
func TestRegistryUnauthorized(t *testing.T) {
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("user:secret"))
	var plainHits atomic.Int32
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		plainHits.Add(1)
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte("Unauthorized"))
	}))
	t.Cleanup(plain.Close)

	path := fmt.Sprintf("/schemas/ids/%d", stockV1ID)
	tests := []struct {
		name string
		cfg  func(url string) Config
		url  string
		hits func() int
		want string
	}{
		{
			name: "no credentials",
			cfg:  func(url string) Config { return Config{URL: url} },
			want: "schema 10: schema_registry.username/password: the registry refused the credentials (HTTP 401; none are set); not asked again for ",
		},
		{
			name: "wrong credentials",
			cfg:  func(url string) Config { return Config{URL: url, Username: "user", Password: "hunter2"} },
			want: "schema 10: schema_registry.username/password: the registry refused the credentials (HTTP 403); not asked again for ",
		},
		{
			name: "plain text 401",
			cfg:  func(url string) Config { return Config{URL: url, Username: "user", Password: "hunter2"} },
			url:  plain.URL,
			hits: func() int { return int(plainHits.Load()) },
			want: "schema 10: schema_registry.username/password: the registry refused the credentials (HTTP 401); not asked again for ",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, hits := tt.url, tt.hits
			if url == "" {
				f := newFakeRegistry(t, srfake.WithAuth(basic))
				f.seedShared(t)
				url, hits = f.URL(), func() int { return f.count(path) }
			}
			r := newTestRegistry(t, tt.cfg(url))
			clock := withClock(r)
			for i, backoff := range []string{"1s", "1s", "2s"} {
				_, err := r.Schema(t.Context(), stockV1ID)
				if !errors.Is(err, ErrUnauthorized) || isTransient(err) || errors.Is(err, ErrNotFound) {
					t.Fatalf("call %d: Schema = %v, want ErrUnauthorized only", i+1, err)
				}
				if want := tt.want + backoff; err.Error() != want {
					t.Errorf("call %d: Schema =\n%v\nwant\n%s", i+1, err, want)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("Schema = %v reveals the password", err)
				}
				if i == 1 {
					clock.Advance(firstRetry)
				}
			}
			// The second call was answered from memory.
			if n := hits(); n != 2 {
				t.Errorf("%d requests for 3 calls, want 2", n)
			}
		})
	}
}

// A refusal anywhere in a load, fetching a reference or the subject
// versions of the rename check, is ErrUnauthorized too, not a missing
// reference or a skipped check.
func TestRegistryUnauthorizedDuringLoad(t *testing.T) {
	for _, refused := range []string{
		"/subjects/" + addressSubject + "/versions/1",
		fmt.Sprintf("/schemas/ids/%d/versions", deliveryID),
	} {
		t.Run(refused, func(t *testing.T) {
			f := newFakeRegistry(t)
			f.seedShared(t)
			f.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path != refused {
					return false
				}
				writeJSON(w, http.StatusForbidden, map[string]any{"error_code": 40301, "message": "User cannot access the resource."})
				return true
			})
			r := newTestRegistry(t, Config{URL: f.URL()})
			_, err := r.Schema(t.Context(), deliveryID)
			if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "(HTTP 403") {
				t.Fatalf("Schema = %v, want ErrUnauthorized", err)
			}
		})
	}
}

// Requests in flight are capped at maxRequests, and a load that cannot get a
// slot gives up after the HTTP timeout instead of queueing in srclient's
// semaphore behind every other stuck request: with 200 distinct IDs against
// a registry that never answers, every call ends within about two timeouts.
func TestRegistryRequestsInFlightBounded(t *testing.T) {
	f := newFakeRegistry(t)
	const timeout = 300 * time.Millisecond
	var early atomic.Int32 // requests arrived before any could have timed out
	start := time.Now()
	f.Intercept(func(_ http.ResponseWriter, r *http.Request) bool {
		if time.Since(start) < timeout {
			early.Add(1)
		}
		<-r.Context().Done() // silent until the client gives up
		return true
	})
	r := newTestRegistry(t, Config{URL: f.URL(), Timeout: timeout})

	const ids = 200
	errs := make([]error, ids)
	took := make([]time.Duration, ids)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			start := time.Now()
			_, errs[i] = r.Schema(t.Context(), 1000+i)
			took[i] = time.Since(start)
		})
	}
	wg.Wait()

	busy := 0
	for i, err := range errs {
		if !isTransient(err) {
			t.Fatalf("schema %d: %v, want a transient error", 1000+i, err)
		}
		if strings.Contains(err.Error(), "registry busy: 16 requests already in flight for 300ms") {
			busy++
		}
		if took[i] > 2*timeout+time.Second {
			t.Errorf("schema %d: answered after %s, want about 2×%s at most", 1000+i, took[i], timeout)
		}
	}
	if n := early.Load(); n > maxRequests {
		t.Errorf("%d requests in flight at once, want %d at most", n, maxRequests)
	}
	if busy == 0 {
		t.Error("no load gave up waiting for a request slot")
	}
	t.Logf("%d in flight at first; %d of %d loads found the registry busy", early.Load(), busy, ids)
}
