package bq

import (
	"context"
	"errors"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/bqsink/bqsink/integration/bqfake"
	"github.com/bqsink/bqsink/integration/netfault"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/api/googleapi"
	"google.golang.org/grpc/codes"
)

// Short bounds for fault tests; slack is what a bounded wait may overrun
// them by on a loaded machine.
const (
	shortTimeout       = 300 * time.Millisecond
	shortAppendTimeout = 500 * time.Millisecond
	slack              = 2 * time.Second
)

func shortTimeouts(c *Config) { c.Timeout, c.AppendTimeout = shortTimeout, shortAppendTimeout }

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// proxy puts a netfault proxy in front of target.
func proxy(t *testing.T, target string) *netfault.Proxy {
	t.Helper()
	p, err := netfault.Listen(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// within runs f and fails the test if it takes longer than d.
func within[T any](t *testing.T, d time.Duration, what string, f func() T) T {
	t.Helper()
	start := time.Now()
	v := f()
	if took := time.Since(start); took > d {
		t.Fatalf("%s took %v, want at most %v", what, took, d)
	}
	return v
}

// eventually polls f until it is true or d passes.
func eventually(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.After(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !f() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}

// noGoroutinesLeft fails the test if a goroutine bq starts is still
// running; call it after the only Client of the test is closed.
func noGoroutinesLeft(t *testing.T) {
	t.Helper()
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "bqsink/bq.(*stream)") || strings.Contains(g, "bqsink/bq.(*Table).runLookup") {
			t.Errorf("goroutine outlived Close:\n%s", g)
		}
	}
}

var idSchema = bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED")}

func TestCheck(t *testing.T) {
	s := newFake(t)
	tests := []struct {
		name  string
		setup func(*Config)
		fault func()
		class error  // nil: transient
		ok    bool   // Check must succeed
		text  string // must appear in the error
	}{
		{name: "ok", ok: true},
		{name: "dataset missing", setup: func(c *Config) { c.Dataset = "nope" }, class: ErrDatasetNotFound,
			text: "bigquery.dataset: dataset proj:nope not found"},
		{name: "access denied", fault: func() { s.FailREST(1, http.StatusForbidden) }, class: ErrPermissionDenied,
			text: "bigquery.credentials_file: permission denied: "},
		{name: "credentials refused by the Storage Write API", fault: func() { s.FailUnary(1, codes.Unauthenticated) },
			class: ErrPermissionDenied, text: "bigquery.credentials_file: permission denied: the Storage Write API refused"},
		{name: "REST endpoint closed", setup: func(c *Config) { c.Endpoint = "http://" + closedPort(t) },
			text: "bigquery.endpoint http://"},
		{name: "REST endpoint silent", fault: func() { s.SetRESTLatency(time.Hour) }, text: "no answer within timeout 300ms"},
		{name: "gRPC endpoint closed", setup: func(c *Config) { c.GRPCEndpoint = closedPort(t) },
			text: "(Storage Write API): "},
		{name: "gRPC endpoint black-holed", setup: func(c *Config) {
			p := proxy(t, s.GRPCEndpoint())
			if err := p.Freeze(); err != nil {
				t.Fatal(err)
			}
			c.GRPCEndpoint = p.Addr()
		}, text: "(Storage Write API): no answer within 300ms"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestClient(t, s, shortTimeouts, func(c *Config) {
				if tc.setup != nil {
					tc.setup(c)
				}
			})
			if tc.fault != nil {
				tc.fault()
			}
			defer s.FailREST(0, 0)
			defer s.FailUnary(0, codes.OK)
			defer s.SetRESTLatency(0)
			err := within(t, shortTimeout*2+slack, "Check", func() error { return c.Check(t.Context()) })
			t.Logf("Check: %v", err)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("Check succeeded")
			}
			for _, class := range []error{ErrDatasetNotFound, ErrPermissionDenied} {
				if errors.Is(err, class) != (class == tc.class) {
					t.Errorf("errors.Is(err, %v) = %v", class, !(class == tc.class))
				}
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error does not say %q", tc.text)
			}
		})
	}
}

func TestRESTCallsBounded(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s, shortTimeouts)
	tbl := c.Table("slowrest")
	s.SetRESTLatency(time.Hour)
	defer s.SetRESTLatency(0)
	err := within(t, shortTimeout+slack, "EnsureSchema", func() error { return tbl.EnsureSchema(t.Context(), idSchema) })
	if err == nil || !strings.Contains(err.Error(), "read table proj.ds.slowrest: no answer within timeout 300ms") {
		t.Fatalf("EnsureSchema against a silent REST API: %v, want a timeout naming the call and table", err)
	}
	if errors.Is(err, ErrPermissionDenied) || errors.Is(err, ErrTableNotFound) {
		t.Errorf("a timeout has a permanent class: %v", err)
	}

	// A black-holed REST connection, not merely a slow server.
	p := proxy(t, strings.TrimPrefix(s.RESTEndpoint(), "http://"))
	if err := p.Freeze(); err != nil {
		t.Fatal(err)
	}
	frozen := newTestClient(t, s, shortTimeouts, func(c *Config) { c.Endpoint = "http://" + p.Addr() })
	err = within(t, shortTimeout+slack, "EnsureSchema", func() error { return frozen.Table("t").EnsureSchema(t.Context(), idSchema) })
	if err == nil || !strings.Contains(err.Error(), "no answer within timeout") {
		t.Fatalf("EnsureSchema against a black hole: %v", err)
	}
}

func TestEnsureSchemaErrorClasses(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	s.FailREST(1, http.StatusForbidden)
	err := c.Table("denied").EnsureSchema(t.Context(), idSchema)
	s.FailREST(0, 0)
	if !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("403 accessDenied: %v, want ErrPermissionDenied", err)
	}
	s.FailREST(1, http.StatusUnauthorized)
	err = c.Table("denied").EnsureSchema(t.Context(), idSchema)
	s.FailREST(0, 0)
	if !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("401: %v, want ErrPermissionDenied", err)
	}
	err = c.Table("otherds.t").EnsureSchema(t.Context(), idSchema)
	if !errors.Is(err, ErrDatasetNotFound) || errors.Is(err, ErrTableNotFound) {
		t.Fatalf("table in a missing dataset: %v, want ErrDatasetNotFound", err)
	}
}

func TestRESTClass(t *testing.T) {
	gerr := func(code int, reason, msg string) error {
		return &googleapi.Error{Code: code, Message: msg, Errors: []googleapi.ErrorItem{{Reason: reason}}}
	}
	for _, tc := range []struct {
		err  error
		want error
	}{
		{gerr(401, "authError", ""), ErrPermissionDenied},
		{gerr(403, "accessDenied", ""), ErrPermissionDenied},
		{gerr(403, "rateLimitExceeded", ""), nil},
		{gerr(403, "quotaExceeded", ""), nil},
		{gerr(403, "userRateLimitExceeded", ""), nil},
		{gerr(404, "notFound", "Not found: Dataset p:d"), ErrDatasetNotFound},
		{gerr(404, "notFound", "Not found: Table p:d.t"), nil},
		{gerr(500, "backendError", ""), nil},
		{errors.New("connection refused"), nil},
	} {
		if got := restClass(tc.err); got != tc.want {
			t.Errorf("restClass(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestStreamOpenBounded(t *testing.T) {
	s := newFake(t)
	black := proxy(t, s.GRPCEndpoint())
	if err := black.Freeze(); err != nil {
		t.Fatal(err)
	}
	for name, endpoint := range map[string]string{"closed port": closedPort(t), "black hole": black.Addr()} {
		t.Run(name, func(t *testing.T) {
			c := newTestClient(t, s, shortTimeouts, func(c *Config) { c.GRPCEndpoint = endpoint })
			tbl := c.Table("unreachable")
			if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
				t.Fatal(err)
			}
			rows := encode(t, tbl, map[string]any{"id": 1}, map[string]any{"id": 2})
			err := within(t, shortTimeout+slack, "Append and its Result", func() error {
				res, err := tbl.Append(t.Context(), rows)
				if err != nil {
					t.Fatalf("Append: %v", err)
				}
				return wait(t, res)
			})
			ae := appendErr(t, err)
			if !slices.Equal(ae.Retry, []int{0, 1}) || len(ae.Rejected) != 0 {
				t.Fatalf("got %+v, want both rows to retry", ae)
			}
			t.Logf("cause: %v", ae.Err)
			// The lookup of the default stream meets the black hole first.
			if name == "black hole" && !strings.Contains(ae.Err.Error(), "within timeout 300ms") {
				t.Errorf("cause %q does not name the timeout", ae.Err)
			}
		})
	}
}

func TestAppendCallerGivesUpDuringOpen(t *testing.T) {
	s := newFake(t)
	black := proxy(t, s.GRPCEndpoint())
	if err := black.Freeze(); err != nil {
		t.Fatal(err)
	}
	// A long Timeout: only the caller's context can end the open early.
	c := newTestClient(t, s, func(c *Config) { c.GRPCEndpoint, c.Timeout = black.Addr(), time.Minute })
	tbl := c.Table("t")
	if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
		t.Fatal(err)
	}
	rows := encode(t, tbl, map[string]any{"id": 1})
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	err := within(t, slack, "Append", func() error {
		_, err := tbl.Append(ctx, rows)
		return err
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append whose context ended while opening: %v, want its context's error", err)
	}

	// A caller waiting for the send slot leaves promptly too.
	done := make(chan error, 1)
	go func() {
		_, err := tbl.Append(t.Context(), rows) // holds the slot for up to a minute
		done <- err
	}()
	eventually(t, 5*time.Second, "the first append to hold the send slot", func() bool { return len(tbl.def.sendMu) == 1 })
	ctx2, cancel2 := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel2()
	err = within(t, slack, "a waiting Append", func() error {
		_, err := tbl.Append(ctx2, rows)
		return err
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting Append: %v, want its context's error", err)
	}
	// Close ends the open under way at once.
	within(t, slack, "Close", func() error { return c.Close() })
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("Append cut off by Close: %v, want ErrClosed", err)
	}
	noGoroutinesLeft(t)
}

func TestStreamFrozenMidStream(t *testing.T) {
	s := newFake(t)
	p := proxy(t, s.GRPCEndpoint())
	c := newTestClient(t, s, shortTimeouts, func(c *Config) { c.GRPCEndpoint = p.Addr() })
	tbl := c.Table("frozen")
	if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
		t.Fatal(err)
	}
	if err := appendRows(t, tbl, map[string]any{"id": 1}); err != nil {
		t.Fatal(err)
	}
	if err := p.Freeze(); err != nil {
		t.Fatal(err)
	}
	// Two appends in flight on the frozen stream: both end, with their rows
	// to retry, once the oldest has waited append_timeout.
	var results []*Result
	for id := 2; id <= 3; id++ {
		res, err := tbl.Append(t.Context(), encode(t, tbl, map[string]any{"id": id}))
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, res)
	}
	for _, res := range results {
		err := within(t, shortAppendTimeout+slack, "a Result on a frozen stream", func() error { return wait(t, res) })
		ae := appendErr(t, err)
		if !slices.Equal(ae.Retry, []int{0}) || !strings.Contains(ae.Err.Error(), "no answer from the Storage Write API within append_timeout 500ms") {
			t.Fatalf("got %+v, want the row to retry, naming append_timeout", ae)
		}
	}
	if err := p.Pass(); err != nil {
		t.Fatal(err)
	}
	appendUntilWritten(t, tbl, []map[string]any{{"id": 2}, {"id": 3}}, 20*time.Second)
	// What the frozen connection held reaches BigQuery after all: rows 2
	// and 3 may be written twice (at-least-once), never lost.
	seen := map[int64]int{}
	for _, r := range readTable(t, s, "frozen") {
		seen[r["id"].(int64)]++
	}
	if seen[1] != 1 || seen[2] < 1 || seen[2] > 2 || seen[3] < 1 || seen[3] > 2 {
		t.Errorf("rows written %v, want id 1 once, ids 2 and 3 once or twice", seen)
	}
}

func TestAppendTimeoutAndRecovery(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s, shortTimeouts)
	tbl := c.Table("hung")
	if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
		t.Fatal(err)
	}
	// BigQuery takes the request and never answers.
	s.SetAppendLatency(time.Hour)
	res, err := tbl.Append(t.Context(), encode(t, tbl, map[string]any{"id": 1}))
	if err != nil {
		t.Fatal(err)
	}
	ae := appendErr(t, within(t, shortAppendTimeout+slack, "a Result BigQuery never answers", func() error { return wait(t, res) }))
	if !slices.Equal(ae.Retry, []int{0}) || !strings.Contains(ae.Err.Error(), "append_timeout") {
		t.Fatalf("got %+v, want the row to retry, naming append_timeout", ae)
	}
	s.SetAppendLatency(0)
	appendUntilWritten(t, tbl, []map[string]any{{"id": 1}}, 20*time.Second)
	if n := s.RowCount(testProject, testDataset, "hung"); n != 1 {
		t.Errorf("%d rows, want 1", n)
	}
}

func TestCloseWhileEndpointHangs(t *testing.T) {
	s := newFake(t)
	p := proxy(t, s.GRPCEndpoint())
	// Long timeouts: only Close can end the pending append early.
	c := newTestClient(t, s, func(c *Config) { c.GRPCEndpoint, c.Timeout, c.AppendTimeout = p.Addr(), time.Minute, time.Minute })
	tbl := c.Table("t")
	if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
		t.Fatal(err)
	}
	if err := appendRows(t, tbl, map[string]any{"id": 1}); err != nil {
		t.Fatal(err)
	}
	if err := p.Freeze(); err != nil {
		t.Fatal(err)
	}
	res, err := tbl.Append(t.Context(), encode(t, tbl, map[string]any{"id": 2}))
	if err != nil {
		t.Fatal(err)
	}
	if err := within(t, slack, "Close", func() error { return c.Close() }); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-res.Done():
	default:
		t.Fatal("Close returned with a Result pending")
	}
	if ae := appendErr(t, wait(t, res)); !slices.Equal(ae.Retry, []int{0}) || !errors.Is(ae.Err, ErrClosed) {
		t.Fatalf("got %+v, want the row to retry with ErrClosed", ae)
	}
	noGoroutinesLeft(t)
}

func TestTableDeletedWhileWriting(t *testing.T) {
	for _, autoCreate := range []bool{true, false} {
		name := map[bool]string{true: "auto-create on", false: "auto-create off"}[autoCreate]
		t.Run(name, func(t *testing.T) {
			s := newFake(t)
			c := newTestClient(t, s, func(c *Config) { c.AutoCreateTables = autoCreate })
			if !autoCreate {
				if err := restClient(t, s).Dataset(testDataset).Table("doomed").Create(t.Context(), &bigquery.TableMetadata{Schema: idSchema}); err != nil {
					t.Fatal(err)
				}
			}
			tbl := c.Table("doomed")
			if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
				t.Fatal(err)
			}
			if err := appendRows(t, tbl, map[string]any{"id": 1}); err != nil {
				t.Fatal(err)
			}
			if err := restClient(t, s).Dataset(testDataset).Table("doomed").Delete(t.Context()); err != nil {
				t.Fatal(err)
			}
			rows := encode(t, tbl, map[string]any{"id": 2}) // the schema is still known
			res, err := tbl.Append(t.Context(), rows)
			if err != nil {
				t.Fatal(err)
			}
			ae := appendErr(t, wait(t, res))
			t.Logf("cause: %v", ae.Err)
			if !slices.Equal(ae.Retry, []int{0}) {
				t.Fatalf("Retry = %v, want [0]", ae.Retry)
			}
			if !autoCreate {
				if !errors.Is(ae.Err, ErrTableNotFound) {
					t.Fatalf("cause %v, want ErrTableNotFound", ae.Err)
				}
				// EnsureSchema no longer claims the table has its columns.
				if err := tbl.EnsureSchema(t.Context(), idSchema); !errors.Is(err, ErrTableNotFound) {
					t.Fatalf("EnsureSchema after the delete: %v, want ErrTableNotFound", err)
				}
				// An operator recreates it; the write path takes a while to
				// see it, which is no reason to report it missing again.
				s.SetSchemaDelay(500 * time.Millisecond)
				if err := restClient(t, s).Dataset(testDataset).Table("doomed").Create(t.Context(), &bigquery.TableMetadata{Schema: idSchema}); err != nil {
					t.Fatal(err)
				}
				if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
					t.Fatal(err)
				}
				_, causes := appendRowsUntilWritten(t, tbl, rows, 20*time.Second)
				for _, cause := range causes {
					if errors.Is(cause, ErrTableNotFound) {
						t.Fatalf("table reported missing after EnsureSchema found it: %v", cause)
					}
				}
				return
			}
			if errors.Is(ae.Err, ErrTableNotFound) || !strings.Contains(ae.Err.Error(), "recreated") {
				t.Fatalf("cause %v, want a transient one saying the table was recreated", ae.Err)
			}
			equalShape(t, tableMetadata(t, s, "doomed").Schema, idSchema)
			appendRowsUntilWritten(t, tbl, rows, 20*time.Second)
			if got := readTable(t, s, "doomed"); len(got) != 1 || got[0]["id"] != int64(2) {
				t.Errorf("recreated table holds %v, want the row appended after the delete", got)
			}
		})
	}
}

func TestNotFoundLookupRate(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	s, err := bqfake.New(bqfake.Dataset(testProject, testDataset), bqfake.Logger(zap.New(core)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	c := newTestClient(t, s)
	tbl := c.Table("lagging")
	// The write path sees the new table only a while after it is created:
	// every append meanwhile is answered NOT_FOUND.
	s.SetSchemaDelay(time.Second)
	if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
		t.Fatal(err)
	}
	reads := func() int {
		n := 0
		for _, e := range logs.FilterMessage("rest").All() {
			if f := e.ContextMap(); f["method"] == "GET" && strings.HasSuffix(f["path"].(string), "/tables/lagging") {
				n++
			}
		}
		return n
	}
	before := reads()
	retried, causes := appendUntilWritten(t, tbl, []map[string]any{{"id": 1}}, 20*time.Second)
	if retried < 2 {
		t.Fatalf("retried %d times, want several NOT_FOUND answers", retried)
	}
	for _, cause := range causes {
		if permanent(cause) {
			t.Fatalf("NOT_FOUND while the write path catches up has class: %v", cause)
		}
	}
	if got := reads() - before; got != 1 {
		t.Errorf("%d table reads for %d NOT_FOUND answers, want exactly 1 within %v", got, retried, lookupInterval)
	}
}

func TestPermissionDeniedOverGRPC(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("guarded")
	if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
		t.Fatal(err)
	}
	for _, code := range []codes.Code{codes.PermissionDenied, codes.Unauthenticated} {
		s.FailAppends(1, code)
		ae := appendErr(t, appendRows(t, tbl, map[string]any{"id": 1}))
		if !errors.Is(ae.Err, ErrPermissionDenied) || !slices.Equal(ae.Retry, []int{0}) {
			t.Fatalf("%s: got %+v, want the row to retry with ErrPermissionDenied", code, ae)
		}
	}
	if err := appendRows(t, tbl, map[string]any{"id": 1}); err != nil {
		t.Fatal(err)
	}
}

func TestAppendMixedSchemaVersions(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("versions")
	v1 := bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED")}
	if err := tbl.EnsureSchema(t.Context(), v1); err != nil {
		t.Fatal(err)
	}
	old := encode(t, tbl, map[string]any{"id": 1}, map[string]any{"id": 2})
	if _, err := tbl.Encode(map[string]any{"id": 3, "note": "x"}); !errors.Is(err, ErrUnknownColumn) {
		t.Fatalf("Encode with a column the table lacks: %v, want ErrUnknownColumn", err)
	}
	if _, err := tbl.Encode(map[string]any{"id": 3, "rec": map[string]any{"x": 1}}); !errors.Is(err, ErrUnknownColumn) {
		t.Fatalf("Encode with an unknown record: %v, want ErrUnknownColumn", err)
	}
	v2 := append(bigquery.Schema{}, v1[0], col("note", bigquery.StringFieldType, ""))
	if err := tbl.EnsureSchema(t.Context(), v2); err != nil {
		t.Fatal(err)
	}
	fresh := encode(t, tbl, map[string]any{"id": 3, "note": "x"})
	// v1, v2, v1: three requests on one stream, each switch carrying its
	// descriptor.
	if err := func() error {
		res, err := tbl.Append(t.Context(), []Row{old[0], fresh[0], old[1]})
		if err != nil {
			return err
		}
		return wait(t, res)
	}(); err != nil {
		t.Fatal(err)
	}
	notes := map[int64]bigquery.Value{}
	for _, r := range readTable(t, s, "versions") {
		notes[r["id"].(int64)] = r["note"]
	}
	if len(notes) != 3 || notes[1] != nil || notes[2] != nil || notes[3] != "x" {
		t.Errorf("rows %v, want ids 1-3 with only 3 noted", notes)
	}
}

func TestCallerContextEndingAfterAppendIsHarmless(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("t")
	if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
		t.Fatal(err)
	}
	// The sent requests are BigQuery's to answer: a caller cancelling its
	// context once Append returned must not tear the stream down.
	s.SetAppendLatency(50 * time.Millisecond)
	var results []*Result
	for id := range 20 {
		ctx, cancel := context.WithCancel(t.Context())
		res, err := tbl.Append(ctx, encode(t, tbl, map[string]any{"id": id}))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, res)
	}
	for i, res := range results {
		if err := wait(t, res); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
}
