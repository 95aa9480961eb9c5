package schema

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// Subjects and IDs the fake registry is seeded with (see
// testdata/README.md of the shared schemas).
const (
	addressSubject   = "com.huub.types.Address"
	warehouseSubject = "com.huub.types.Warehouse"
	addressID        = 1
	warehouseID      = 2
	deliveryID       = 3
	stockV1ID        = 10
	stockV2ID        = 11
)

// fakeRegistry is srfake's registry over HTTP, counting requests per path.
type fakeRegistry struct {
	*srfake.Registry
	mu   sync.Mutex
	hits map[string]int
}

func newFakeRegistry(t *testing.T, opts ...srfake.Option) *fakeRegistry {
	t.Helper()
	f := &fakeRegistry{Registry: srfake.New(opts...), hits: make(map[string]int)}
	t.Cleanup(f.Close)
	f.Intercept(func(_ http.ResponseWriter, r *http.Request) bool {
		f.mu.Lock()
		f.hits[r.URL.Path]++
		f.mu.Unlock()
		return false
	})
	return f
}

func (f *fakeRegistry) count(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits[path]
}

// seedShared registers the shared schemas under their subjects, with the
// references the shared README describes.
func (f *fakeRegistry) seedShared(t *testing.T) {
	t.Helper()
	text := func(name string) string {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	address := sr.SchemaReference{Name: "com.huub.types.Address", Subject: addressSubject, Version: 1}
	warehouse := sr.SchemaReference{Name: "com.huub.types.Warehouse", Subject: warehouseSubject, Version: 1}
	f.SeedSchema(addressSubject, 1, addressID, sr.Schema{Schema: text("com.huub.types.Address.avsc")})
	f.SeedSchema(warehouseSubject, 1, warehouseID, sr.Schema{
		Schema: text("com.huub.types.Warehouse.avsc"), References: []sr.SchemaReference{address},
	})
	f.SeedSchema("deliveries-value", 1, deliveryID, sr.Schema{
		Schema: text("delivery_created.avsc"), References: []sr.SchemaReference{warehouse, address},
	})
	f.SeedSchema("sms_physical_stock_updated_topic-value", 1, stockV1ID, sr.Schema{Schema: text("sms_physical_stock_updates.v1.avsc")})
	f.SeedSchema("sms_physical_stock_updated_topic-value", 2, stockV2ID, sr.Schema{Schema: text("sms_physical_stock_updates.v2.avsc")})
}

// fakeClock is a Registry's clock, moved by the test, so that backoffs pass
// without sleeping. Only the backoff reads it; HTTP timeouts run in real
// time.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

// withClock gives r a fake clock. Call it before r's first request.
func withClock(r *Registry) *fakeClock {
	c := &fakeClock{now: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	r.now = c.Now
	return c
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newTestRegistry(t *testing.T, cfg Config) *Registry {
	t.Helper()
	r, err := NewRegistry(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// gate holds requests for one path until released, telling the test when
// the first one arrived.
type gate struct {
	path    string
	arrived chan struct{}
	once    sync.Once
	release chan struct{}
}

func newGate(f *fakeRegistry, path string) *gate {
	g := &gate{path: path, arrived: make(chan struct{}), release: make(chan struct{})}
	f.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != g.path {
			return false
		}
		g.once.Do(func() { close(g.arrived) })
		select {
		case <-g.release:
			return false // let srfake answer
		case <-r.Context().Done():
			return true
		}
	})
	return g
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/vnd.schemaregistry.v1+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func TestRegistryFetchesEachIDOnce(t *testing.T) {
	f := newFakeRegistry(t)
	f.seedShared(t)
	g := newGate(f, fmt.Sprintf("/schemas/ids/%d", stockV2ID))
	r := newTestRegistry(t, Config{URL: f.URL()})

	const callers = 50
	var ready, done sync.WaitGroup
	results := make([]*Schema, callers)
	errs := make([]error, callers)
	for i := range callers {
		ready.Add(1)
		done.Go(func() {
			ready.Done()
			results[i], errs[i] = r.Schema(t.Context(), stockV2ID)
		})
	}
	ready.Wait()
	<-g.arrived
	close(g.release)
	done.Wait()

	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if results[i] != results[0] {
			t.Fatalf("caller %d got a different *Schema", i)
		}
	}
	if _, err := r.Schema(t.Context(), stockV2ID); err != nil {
		t.Fatal(err)
	}
	if n := f.count(g.path); n != 1 {
		t.Errorf("%d requests for one schema ID, want 1", n)
	}
	// Its history check too: the subject versions and the previous version.
	for _, p := range []string{g.path + "/versions", "/subjects/sms_physical_stock_updated_topic-value/versions/1"} {
		if n := f.count(p); n != 1 {
			t.Errorf("%s requested %d times, want 1", p, n)
		}
	}
	assertColumns(t, results[0].Columns(), stockV2Columns())
	if results[0].ID() != stockV2ID {
		t.Errorf("ID() = %d", results[0].ID())
	}
}

func TestRegistryReferences(t *testing.T) {
	f := newFakeRegistry(t)
	f.seedShared(t)
	r := newTestRegistry(t, Config{URL: f.URL()})

	s, err := r.Schema(t.Context(), deliveryID)
	if err != nil {
		t.Fatal(err)
	}
	assertColumns(t, s.Columns(), deliveryColumns())

	// Records decode with types from all three subjects.
	var g golden
	for _, x := range goldens() {
		if x.name == "delivery" {
			g = x
		}
	}
	row, err := s.Decode(encode(t, parseFiles(t, g.files...), g.record))
	if err != nil {
		t.Fatal(err)
	}
	sortMapEntries(row, "attributes")
	assertRow(t, row, g.row)

	// Address is reached twice (directly and through Warehouse) yet fetched once.
	addressPath := "/subjects/" + addressSubject + "/versions/1"
	warehousePath := "/subjects/" + warehouseSubject + "/versions/1"
	if n := f.count(addressPath); n != 1 {
		t.Errorf("Address fetched %d times, want 1", n)
	}
	if n := f.count(warehousePath); n != 1 {
		t.Errorf("Warehouse fetched %d times, want 1", n)
	}

	// Another schema referencing Address reuses the cached text.
	w, err := r.Schema(t.Context(), warehouseID)
	if err != nil {
		t.Fatal(err)
	}
	assertColumns(t, w.Columns(), warehouseColumns())
	if n := f.count(addressPath); n != 1 {
		t.Errorf("Address fetched %d times after a second resolution, want 1", n)
	}
}

func TestRegistryMissingReference(t *testing.T) {
	f := newFakeRegistry(t)
	f.seedShared(t)
	var missing atomic.Bool
	missing.Store(true)
	f.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if !missing.Load() || r.URL.Path != "/subjects/"+addressSubject+"/versions/1" {
			return false
		}
		writeJSON(w, http.StatusNotFound, map[string]any{"error_code": 40402, "message": "Version 1 not found."})
		return true
	})
	r := newTestRegistry(t, Config{URL: f.URL()})
	clock := withClock(r)

	_, err := r.Schema(t.Context(), deliveryID)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Schema = %v, want ErrNotFound", err)
	}
	for _, w := range []string{`subject "com.huub.types.Warehouse" version 1 -> subject "com.huub.types.Address" version 1`, "40402"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}

	// Remembered for the backoff, even once the version is back; then the
	// schema resolves.
	missing.Store(false)
	addressPath := "/subjects/" + addressSubject + "/versions/1"
	if _, err := r.Schema(t.Context(), deliveryID); !errors.Is(err, ErrNotFound) || f.count(addressPath) != 1 {
		t.Fatalf("within the backoff: %v after %d requests, want the remembered ErrNotFound after 1", err, f.count(addressPath))
	}
	clock.Advance(firstRetry)
	if _, err := r.Schema(t.Context(), deliveryID); err != nil {
		t.Fatalf("after the reference reappeared: %v", err)
	}
}

func TestRegistryReferenceCycle(t *testing.T) {
	f := newFakeRegistry(t)
	// srfake refuses to register a cycle, so answer for one by hand.
	record := func(name, field, typ string) string {
		return fmt.Sprintf(`{"type":"record","name":%q,"fields":[{"name":%q,"type":%q}]}`, name, field, typ)
	}
	ref := func(name, subject string) []map[string]any {
		return []map[string]any{{"name": name, "subject": subject, "version": 1}}
	}
	f.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		case "/schemas/ids/100":
			writeJSON(w, http.StatusOK, map[string]any{"schema": record("Root", "b", "B"), "references": ref("B", "b")})
		case "/subjects/b/versions/1":
			writeJSON(w, http.StatusOK, map[string]any{"subject": "b", "version": 1, "id": 101, "schema": record("B", "c", "C"), "references": ref("C", "c")})
		case "/subjects/c/versions/1":
			writeJSON(w, http.StatusOK, map[string]any{"subject": "c", "version": 1, "id": 102, "schema": record("C", "b", "B"), "references": ref("B", "b")})
		default:
			return false
		}
		return true
	})
	r := newTestRegistry(t, Config{URL: f.URL()})

	for range 2 {
		_, err := r.Schema(t.Context(), 100)
		if !errors.Is(err, ErrUnsupported) {
			t.Fatalf("Schema = %v, want ErrUnsupported", err)
		}
		want := `reference cycle subject "b" version 1 -> subject "c" version 1 -> subject "b" version 1`
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not show the cycle %q", err, want)
		}
	}
	if n := f.count("/schemas/ids/100"); n != 1 {
		t.Errorf("unsupported schema fetched %d times, want 1 (cached)", n)
	}
}

func TestRegistryTransientErrors(t *testing.T) {
	f := newFakeRegistry(t)
	f.seedShared(t)
	var calls atomic.Int32
	f.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		switch calls.Add(1) {
		case 1:
			writeJSON(w, http.StatusInternalServerError, map[string]any{"error_code": 50001, "message": "store error"})
		case 2:
			// A proxy in front of the registry, not the registry: no JSON body.
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte("<html>no route</html>"))
		case 3:
			w.WriteHeader(http.StatusBadGateway)
		default:
			return false
		}
		return true
	})
	r := newTestRegistry(t, Config{URL: f.URL()})
	clock := withClock(r)

	for i, want := range []string{
		"fetch schema 10: registry error 50001: store error; not asked again for 1s",
		"fetch schema 10: 404 Not Found; not asked again for 2s",
		"fetch schema 10: 502 Bad Gateway; not asked again for 4s",
	} {
		_, err := r.Schema(t.Context(), stockV1ID)
		if !isTransient(err) || err.Error() != want {
			t.Fatalf("attempt %d: Schema = %v, want the transient error %q", i+1, err, want)
		}
		clock.Advance(retryDelay(i + 1))
	}
	if _, err := r.Schema(t.Context(), stockV1ID); err != nil {
		t.Fatalf("after the registry recovered: %v", err)
	}
}

func TestRegistryUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	r := newTestRegistry(t, Config{URL: url})
	_, err := r.Schema(t.Context(), 1)
	if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnsupported) {
		t.Fatalf("Schema = %v, want a transient error", err)
	}
}

func TestRegistryTimeout(t *testing.T) {
	f := newFakeRegistry(t)
	f.seedShared(t)
	newGate(f, fmt.Sprintf("/schemas/ids/%d", stockV1ID)) // never released
	r := newTestRegistry(t, Config{URL: f.URL(), Timeout: 100 * time.Millisecond})

	start := time.Now()
	_, err := r.Schema(t.Context(), stockV1ID)
	if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnsupported) {
		t.Fatalf("Schema = %v, want a transient error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timed out after %s, want about 100ms", d)
	}
}

func TestRegistryUnsupportedIsCached(t *testing.T) {
	f := newFakeRegistry(t)
	f.SeedSchema("nulls-value", 1, 20, sr.Schema{Schema: `{"type":"record","name":"N","fields":[{"name":"nothing","type":"null"}]}`})
	f.SeedSchema("proto-value", 1, 21, sr.Schema{Type: sr.TypeProtobuf, Schema: `syntax = "proto3"; message M { int32 x = 1; }`})
	f.SeedSchema("bad-value", 1, 22, sr.Schema{Schema: `{"type":"record","name":"B","fields":[{"name":"x","type":"nosuchtype"}]}`})
	r := newTestRegistry(t, Config{URL: f.URL()})

	for _, tt := range []struct {
		id   int
		want string
	}{{20, "nothing"}, {21, "PROTOBUF"}, {22, "nosuchtype"}} {
		for range 2 {
			_, err := r.Schema(t.Context(), tt.id)
			if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Schema(%d) = %v, want ErrUnsupported mentioning %q", tt.id, err, tt.want)
			}
		}
		if n := f.count(fmt.Sprintf("/schemas/ids/%d", tt.id)); n != 1 {
			t.Errorf("schema %d fetched %d times, want 1 (cached)", tt.id, n)
		}
	}
}

func TestRegistryContextCancel(t *testing.T) {
	f := newFakeRegistry(t)
	f.seedShared(t)
	g := newGate(f, fmt.Sprintf("/schemas/ids/%d", stockV1ID))
	r := newTestRegistry(t, Config{URL: f.URL()})

	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		select {
		case <-g.arrived:
			cancel()
		case <-ctx.Done():
		}
	}()
	_, err := r.Schema(ctx, stockV1ID)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Schema = %v, want context.Canceled", err)
	}

	// The shared fetch goes on and serves the next caller.
	close(g.release)
	s, err := r.Schema(t.Context(), stockV1ID)
	if err != nil {
		t.Fatal(err)
	}
	assertColumns(t, s.Columns(), stockV1Columns())
	if n := f.count(g.path); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

// With schema_registry.password_file, the basic auth password is the
// file's, read again when it changes: once the registry and the file both
// hold a new one, the next request (Check or a schema fetch) sends it.
// Gone later, the file's last password is still sent, with a warning that
// names the key and the file; no log line holds a password.
func TestRegistryBasicAuthPasswordFile(t *testing.T) {
	f := newFakeRegistry(t)
	f.seedShared(t)
	var valid, seen atomic.Value
	valid.Store("password-1")
	f.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		user, pass, _ := r.BasicAuth()
		seen.Store(pass)
		if user == "user" && pass == valid.Load().(string) {
			return false
		}
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error_code":401,"message":"Unauthorized"}`))
		return true
	})
	path := filepath.Join(t.TempDir(), "password")
	writeFile(t, path, []byte("password-1\n"))
	core, logs := observer.New(zap.InfoLevel)
	r, err := NewRegistry(Config{URL: f.URL(), Username: "user", PasswordFile: path}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := r.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if _, err := r.Schema(ctx, stockV1ID); err != nil {
		t.Fatalf("Schema: %v", err)
	}

	// Rotated in the registry only: refused, naming the keys to fix.
	valid.Store("password-2")
	err = r.Check(ctx)
	const want = "schema_registry.username/password_file: the registry refused the credentials (HTTP 401)"
	if !errors.Is(err, ErrUnauthorized) || err.Error() != want {
		t.Errorf("Check with the old password = %v, want %q", err, want)
	}
	// And in the file: the next requests send the new one.
	writeFile(t, path, []byte("password-2\n"))
	if err := r.Check(ctx); err != nil {
		t.Fatalf("Check after the rotation: %v (sent %q)", err, seen.Load())
	}
	if _, err := r.Schema(ctx, stockV2ID); err != nil {
		t.Fatalf("Schema after the rotation: %v (sent %q)", err, seen.Load())
	}

	// Gone: the last password read is still sent.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := r.Check(ctx); err != nil || seen.Load() != "password-2" {
			t.Fatalf("Check without the file: %v (sent %q)", err, seen.Load())
		}
	}
	warned := logs.FilterLevelExact(zap.WarnLevel).All()
	if len(warned) != 1 || warned[0].ContextMap()["key"] != "schema_registry.password_file" || warned[0].ContextMap()["file"] != path {
		t.Errorf("warnings %v: want one, naming the key and the file", warned)
	}
	for _, e := range logs.All() {
		if line := fmt.Sprint(e.Message, e.ContextMap()); strings.Contains(line, "password-") {
			t.Errorf("a log line holds a password: %s", line)
		}
	}
}

func TestRegistryBasicAuth(t *testing.T) {
	f := newFakeRegistry(t, srfake.WithAuth("Basic "+base64.StdEncoding.EncodeToString([]byte("user:secret"))))
	f.seedShared(t)

	r := newTestRegistry(t, Config{URL: f.URL(), Username: "user", Password: "secret"})
	if _, err := r.Schema(t.Context(), stockV1ID); err != nil {
		t.Fatalf("with credentials: %v", err)
	}
	r = newTestRegistry(t, Config{URL: f.URL() + "/"})
	_, err := r.Schema(t.Context(), stockV1ID)
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("without credentials: Schema = %v, want ErrUnauthorized", err)
	}
}
