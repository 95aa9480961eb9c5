package schema

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/sr/srfake"
)

func TestRegistryCheck(t *testing.T) {
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("user:secret"))
	handler := func(status int, body string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	withUser := func(url string) string { return strings.Replace(url, "http://", "http://bob:hunter2@", 1) }
	// closed is closed once the table's servers are listening: closed
	// first, its port went to one of them, and "unreachable" reached it.
	closed := httptest.NewServer(http.NotFoundHandler())
	silent := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	t.Cleanup(silent.Close)

	tests := []struct {
		name         string
		cfg          Config
		unauthorized bool
		want         string // exact message; "" means nil, a trailing "…" a prefix
	}{
		{name: "registry", cfg: Config{URL: newFakeRegistry(t).URL()}},
		{
			name: "registry with credentials",
			cfg:  Config{URL: newFakeRegistry(t, srfake.WithAuth(basic)).URL(), Username: "user", Password: "secret"},
		},
		{
			name: "no credentials", cfg: Config{URL: newFakeRegistry(t, srfake.WithAuth(basic)).URL()}, unauthorized: true,
			want: "schema_registry.username/password: the registry refused the credentials (HTTP 401; none are set)",
		},
		{
			name: "wrong credentials", unauthorized: true,
			cfg:  Config{URL: newFakeRegistry(t, srfake.WithAuth(basic)).URL(), Username: "user", Password: "hunter2"},
			want: "schema_registry.username/password: the registry refused the credentials (HTTP 403)",
		},
		{
			name: "plain 401", cfg: Config{URL: handler(http.StatusUnauthorized, "go away"), Username: "user", Password: "hunter2"}, unauthorized: true,
			want: "schema_registry.username/password: the registry refused the credentials (HTTP 401)",
		},
		{
			name: "refused user info", cfg: Config{URL: withUser(handler(http.StatusForbidden, "go away"))}, unauthorized: true,
			want: "schema_registry.url user info: the registry refused the credentials (HTTP 403)",
		},
		{
			name: "503", cfg: Config{URL: handler(http.StatusServiceUnavailable, "down for maintenance")},
			want: `schema_registry.url URL: the registry answered 503 Service Unavailable: "down for maintenance"`,
		},
		{
			name: "not the registry's base URL", cfg: Config{URL: withUser(handler(http.StatusNotFound, "<html>no route</html>"))},
			want: `schema_registry.url URL: GET /config answered 404 Not Found: "<html>no route</html>"; is this a schema registry's base URL?`,
		},
		{
			name: "not a registry", cfg: Config{URL: handler(http.StatusOK, "<html>welcome</html>")},
			want: `schema_registry.url URL: GET /config answered 200 OK with "<html>welcome</html>", not a schema registry's JSON; is this its base URL?`,
		},
		{
			name: "unreachable", cfg: Config{URL: withUser(closed.URL)},
			want: `schema_registry.url URL: unreachable: Get "http://bob:***@` + strings.TrimPrefix(closed.URL, "http://") + `/config": dial tcp …`,
		},
		{
			name: "silent", cfg: Config{URL: silent.URL, Timeout: 200 * time.Millisecond},
			want: `schema_registry.url URL: no answer within 200ms: Get "` + silent.URL + `/config": …`,
		},
	}
	closed.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRegistry(t, tt.cfg)
			start := time.Now()
			err := r.Check(t.Context())
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Check took %s", d)
			}
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Check = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Check = nil, want an error")
			}
			t.Log(err)
			if got := errors.Is(err, ErrUnauthorized); got != tt.unauthorized {
				t.Errorf("errors.Is(%v, ErrUnauthorized) = %t, want %t", err, got, tt.unauthorized)
			}
			if errors.Is(err, ErrNotFound) {
				t.Errorf("Check = %v, a record error class", err)
			}
			want := strings.Replace(tt.want, "URL", strings.Replace(tt.cfg.URL, "hunter2", "xxxxx", 1), 1)
			if prefix, ok := strings.CutSuffix(want, "…"); ok {
				if !strings.HasPrefix(err.Error(), prefix) {
					t.Errorf("Check =\n%v\nwant prefix\n%s", err, prefix)
				}
			} else if err.Error() != want {
				t.Errorf("Check =\n%v\nwant\n%s", err, want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("Check = %v reveals the password", err)
			}
		})
	}
}

// Check stops waiting when ctx ends, well before the HTTP timeout, and its
// request ends with it.
func TestRegistryCheckHonoursContext(t *testing.T) {
	arrived, ended := make(chan struct{}, 1), make(chan struct{}, 1)
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		arrived <- struct{}{}
		<-r.Context().Done()
		ended <- struct{}{}
	}))
	t.Cleanup(srv.Close)
	r := newTestRegistry(t, Config{URL: srv.URL, Timeout: time.Minute})

	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-arrived
		cancel()
	}()
	start := time.Now()
	err := r.Check(ctx)
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "schema_registry.url "+srv.URL+": no answer within ") {
		t.Fatalf("Check = %v, want context.Canceled naming the URL", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Check returned after %s", d)
	}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Error("the request is still running after Check returned")
	}

	// An ended ctx: no request at all.
	if err := r.Check(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Check with an ended ctx = %v, want context.Canceled", err)
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}
