package bq

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/bqsink/bqsink/integration/bqfake"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Every new connection to a table's default stream is preceded by a lookup
// of the stream, which goccy's emulator requires (bqfake's
// RequireStreamLookup); explicit streams need none.
func TestDefaultStreamLookedUpOnEachConnection(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	s, err := bqfake.New(bqfake.Dataset(testProject, testDataset), bqfake.Logger(zap.New(core)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	s.RequireStreamLookup(true)
	c := newTestClient(t, s)
	tbl := c.Table("looked")
	if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
		t.Fatal(err)
	}
	lookups := func(name string) int {
		n := 0
		for _, e := range logs.FilterMessage("get write stream").All() {
			if e.ContextMap()["stream"] == name {
				n++
			}
		}
		return n
	}
	if err := appendRows(t, tbl, map[string]any{"id": 1}); err != nil {
		t.Fatalf("append with the lookup required: %v", err)
	}
	if err := appendRows(t, tbl, map[string]any{"id": 2}); err != nil {
		t.Fatal(err)
	}
	if n := lookups(tbl.def.name); n != 1 {
		t.Fatalf("%d lookups for one connection, want 1", n)
	}
	// The connection breaks; the next one is looked up again.
	s.FailAppends(1, codes.Unavailable)
	if ae := appendErr(t, appendRows(t, tbl, map[string]any{"id": 3})); status.Code(ae.Err) != codes.Unavailable {
		t.Fatalf("got %+v, want the row to retry after UNAVAILABLE", ae)
	}
	appendUntilWritten(t, tbl, []map[string]any{{"id": 3}}, 20*time.Second)
	if n := lookups(tbl.def.name); n != 2 {
		t.Errorf("%d lookups for two connections, want 2", n)
	}
	if n := s.RowCount(testProject, testDataset, "looked"); n != 3 {
		t.Errorf("%d rows, want 3", n)
	}

	st, err := tbl.CreateStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if r, err := st.Append(t.Context(), encode(t, tbl, map[string]any{"id": 4}), 0); err != nil {
		t.Fatal(err)
	} else if err := wait(t, r); err != nil {
		t.Fatal(err)
	}
	if n := lookups(st.Name()); n != 0 {
		t.Errorf("%d lookups of an explicit stream, want 0", n)
	}
}

// A lookup BigQuery refuses fails the rows as the first append on the
// connection would have: NOT_FOUND and PERMISSION_DENIED after a read of
// the table, others transient with their class; UNIMPLEMENTED (a server
// without GetWriteStream) does not stop appends.
func TestDefaultStreamLookupRefused(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	for _, tc := range []struct {
		code  codes.Code
		class error // nil: transient
	}{
		{codes.Unimplemented, nil},
		{codes.Unavailable, nil},
		{codes.Unknown, nil},
		{codes.NotFound, nil}, // the table is there: the write path lags
		{codes.PermissionDenied, ErrPermissionDenied},
		{codes.Unauthenticated, ErrPermissionDenied},
	} {
		t.Run(tc.code.String(), func(t *testing.T) {
			tbl := c.Table("lookup_" + strings.ToLower(tc.code.String()))
			if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
				t.Fatal(err)
			}
			s.FailUnary(1, tc.code)
			defer s.FailUnary(0, codes.OK)
			err := appendRows(t, tbl, map[string]any{"id": 1}, map[string]any{"id": 2})
			if tc.code == codes.Unimplemented {
				if err != nil {
					t.Fatalf("append after an UNIMPLEMENTED lookup: %v", err)
				}
				if n := s.RowCount(testProject, testDataset, tbl.table); n != 2 {
					t.Fatalf("%d rows, want 2", n)
				}
				return
			}
			ae := appendErr(t, err)
			t.Logf("cause: %v", ae.Err)
			if !slices.Equal(ae.Retry, []int{0, 1}) || len(ae.Rejected) != 0 {
				t.Fatalf("got %+v, want both rows to retry", ae)
			}
			if status.Code(ae.Err) != tc.code || !strings.Contains(ae.Err.Error(), "look up write stream "+tbl.def.name) {
				t.Errorf("cause %v, want the lookup's %s", ae.Err, tc.code)
			}
			for _, class := range []error{ErrPermissionDenied, ErrTableNotFound, ErrDatasetNotFound} {
				if errors.Is(ae.Err, class) != (class == tc.class) {
					t.Errorf("errors.Is(cause, %v) = %v", class, !(class == tc.class))
				}
			}
			appendUntilWritten(t, tbl, []map[string]any{{"id": 1}, {"id": 2}}, 20*time.Second)
			if n := s.RowCount(testProject, testDataset, tbl.table); n != 2 {
				t.Errorf("%d rows, want 2", n)
			}
		})
	}
}

// A table deleted before a connection is opened is found by the lookup
// that precedes it (NOT_FOUND), which leads to the read of the table that
// an append answered NOT_FOUND leads to: recreated with auto_create_tables,
// else ErrTableNotFound. The lookup is required, so the append alone could
// not find out.
func TestTableDeletedBeforeNewConnection(t *testing.T) {
	for _, autoCreate := range []bool{true, false} {
		name := map[bool]string{true: "auto-create on", false: "auto-create off"}[autoCreate]
		t.Run(name, func(t *testing.T) {
			s := newFake(t)
			s.RequireStreamLookup(true)
			c := newTestClient(t, s, func(c *Config) { c.AutoCreateTables = autoCreate })
			if err := restClient(t, s).Dataset(testDataset).Table("doomed").Create(t.Context(), &bigquery.TableMetadata{Schema: idSchema}); err != nil {
				t.Fatal(err)
			}
			tbl := c.Table("doomed")
			if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
				t.Fatal(err)
			}
			rows := encode(t, tbl, map[string]any{"id": 1})
			if err := restClient(t, s).Dataset(testDataset).Table("doomed").Delete(t.Context()); err != nil {
				t.Fatal(err)
			}
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
				if err := tbl.EnsureSchema(t.Context(), idSchema); !errors.Is(err, ErrTableNotFound) {
					t.Fatalf("EnsureSchema after the delete: %v, want ErrTableNotFound", err)
				}
				if err := restClient(t, s).Dataset(testDataset).Table("doomed").Create(t.Context(), &bigquery.TableMetadata{Schema: idSchema}); err != nil {
					t.Fatal(err)
				}
				if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
					t.Fatal(err)
				}
			} else if errors.Is(ae.Err, ErrTableNotFound) || !strings.Contains(ae.Err.Error(), "recreated") {
				t.Fatalf("cause %v, want a transient one saying the table was recreated", ae.Err)
			}
			appendRowsUntilWritten(t, tbl, rows, 20*time.Second)
			if got := readTable(t, s, "doomed"); len(got) != 1 || got[0]["id"] != int64(1) {
				t.Errorf("table holds %v, want the row appended after the delete", got)
			}
		})
	}
}
