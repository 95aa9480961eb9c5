package bq

import (
	"context"
	"errors"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/bqsink/bqsink/integration/bqfake"
	"go.uber.org/zap/zaptest"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
)

const (
	testProject = "proj"
	testDataset = "ds"
)

func newFake(t testing.TB) *bqfake.Server {
	t.Helper()
	s, err := bqfake.New(bqfake.Dataset(testProject, testDataset))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func newTestClient(t testing.TB, s *bqfake.Server, edits ...func(*Config)) *Client {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Project, cfg.Dataset = testProject, testDataset
	cfg.Endpoint, cfg.GRPCEndpoint = s.RESTEndpoint(), s.GRPCEndpoint()
	// BigQuery's default; against a GRPCEndpoint the default is a
	// connection per table, which tests ask for by setting 0 back.
	cfg.MaxConnections = DefaultMaxConnections
	for _, e := range edits {
		e(&cfg)
	}
	c, err := NewClient(t.Context(), cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// restClient is a plain BigQuery client for checking what bq did.
func restClient(t *testing.T, s *bqfake.Server) *bigquery.Client {
	t.Helper()
	c, err := bigquery.NewClient(t.Context(), testProject, option.WithEndpoint(s.RESTEndpoint()), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func tableMetadata(t *testing.T, s *bqfake.Server, table string) *bigquery.TableMetadata {
	t.Helper()
	md, err := restClient(t, s).Dataset(testDataset).Table(table).Metadata(t.Context())
	if err != nil {
		t.Fatalf("metadata of %s: %v", table, err)
	}
	return md
}

// readTable reads every row back with the real client's tabledata.list.
func readTable(t *testing.T, s *bqfake.Server, table string) []map[string]bigquery.Value {
	t.Helper()
	it := restClient(t, s).Dataset(testDataset).Table(table).Read(t.Context())
	var rows []map[string]bigquery.Value
	for {
		row := map[string]bigquery.Value{}
		err := it.Next(&row)
		if errors.Is(err, iterator.Done) {
			return rows
		}
		if err != nil {
			t.Fatalf("read %s: %v", table, err)
		}
		rows = append(rows, row)
	}
}

// wait waits for r with a deadline, so a hung append fails the test.
func wait(t *testing.T, r *Result) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := r.Wait(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("append result not done after 30s")
	}
	return err
}

func appendErr(t *testing.T, err error) *AppendError {
	t.Helper()
	var ae *AppendError
	if !errors.As(err, &ae) {
		t.Fatalf("err = %v, want *AppendError", err)
	}
	return ae
}

// encode encodes rows for tbl, failing the test on any error.
func encode(t *testing.T, tbl *Table, rows ...map[string]any) []Row {
	t.Helper()
	out := make([]Row, len(rows))
	for i, r := range rows {
		var err error
		if out[i], err = tbl.Encode(r); err != nil {
			t.Fatalf("encode row %d: %v", i, err)
		}
	}
	return out
}

// appendRows encodes and appends rows and waits for the outcome.
func appendRows(t *testing.T, tbl *Table, rows ...map[string]any) error {
	t.Helper()
	res, err := tbl.Append(t.Context(), encode(t, tbl, rows...))
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	return wait(t, res)
}

// appendUntilWritten encodes and appends rows, re-appending only the Retry
// rows until everything is written, and fails on any rejection. It returns
// how many attempts came back with rows to retry.
func appendUntilWritten(t *testing.T, tbl *Table, maps []map[string]any, deadline time.Duration) (retried int, causes []error) {
	t.Helper()
	rows := encode(t, tbl, maps...)
	return appendRowsUntilWritten(t, tbl, rows, deadline)
}

// appendRowsUntilWritten is appendUntilWritten for encoded rows.
func appendRowsUntilWritten(t *testing.T, tbl *Table, rows []Row, deadline time.Duration) (retried int, causes []error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), deadline)
	defer cancel()
	for {
		res, err := tbl.Append(ctx, rows)
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
		err = res.Wait(ctx)
		if err == nil {
			return retried, causes
		}
		ae := appendErr(t, err)
		if len(ae.Rejected) > 0 {
			t.Fatalf("rows rejected: %v", ae.Rejected)
		}
		retried++
		causes = append(causes, ae.Err)
		next := make([]Row, 0, len(ae.Retry))
		for _, i := range ae.Retry {
			next = append(next, rows[i])
		}
		rows = next
		select {
		case <-time.After(50 * time.Millisecond): // poll: the server's lag is time-based
		case <-ctx.Done():
			t.Fatalf("rows still not written after %v; last cause: %v", deadline, ae.Err)
		}
	}
}

// streamNow returns the stream the writer's last request went on, or nil.
// Call it between the writer's appends.
func (w *writer) streamNow() *stream {
	cn := w.own
	if cn == nil {
		cn = w.conn
	}
	if cn == nil {
		return nil
	}
	return cn.cur.Load()
}
