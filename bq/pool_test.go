package bq

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"google.golang.org/grpc/codes"
)

// 200 tables written at once over a pool of 4: every row lands in its own
// table, once, and BigQuery never sees more than 4 connections.
func TestManyTablesShareAPool(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s, func(c *Config) { c.MaxConnections = 4 })
	const tables, appends, rows = 200, 3, 5
	tbls := make([]*Table, tables)
	for i := range tbls {
		tbls[i] = c.Table(fmt.Sprintf("t%03d", i))
		schema := bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED"), col("table", bigquery.StringFieldType, "REQUIRED")}
		if err := tbls[i].EnsureSchema(t.Context(), schema); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, tables)
	for i, tbl := range tbls {
		wg.Go(func() {
			for a := range appends {
				var maps []map[string]any
				for r := range rows {
					maps = append(maps, map[string]any{"id": a*rows + r, "table": tbl.table})
				}
				encoded, err := encodeRows(tbl, maps)
				if err != nil {
					errs <- err
					return
				}
				if err := appendPatiently(t.Context(), tbl, encoded); err != nil {
					errs <- fmt.Errorf("table %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, tbl := range tbls {
		got := readTable(t, s, tbl.table)
		ids := map[int64]bool{}
		for _, r := range got {
			if r["table"] != tbl.table {
				t.Fatalf("%s holds a row of %v", tbl.table, r["table"])
			}
			ids[r["id"].(int64)] = true
		}
		if len(got) != appends*rows || len(ids) != appends*rows {
			t.Fatalf("%s holds %d rows (%d ids), want %d once each", tbl.table, len(got), len(ids), appends*rows)
		}
	}
	if _, peak := s.Connections(); peak > 4 {
		t.Errorf("BigQuery saw %d connections at once, want at most the pool's 4", peak)
	}
	if n := c.Connections(); n > 4 || n < 1 {
		t.Errorf("Client.Connections() = %d, want 1 to 4", n)
	}
}

// The pool opens a connection only when the ones it has are saturated: a
// table appending one request at a time never needs a second.
func TestPoolGrowsOnlyWhenSaturated(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s, func(c *Config) { c.MaxConnections = 4 })
	for i := range 20 {
		tbl := c.Table(fmt.Sprintf("calm%d", i))
		if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
			t.Fatal(err)
		}
		if err := appendRows(t, tbl, map[string]any{"id": i}); err != nil {
			t.Fatal(err)
		}
	}
	if _, peak := s.Connections(); peak != 1 {
		t.Errorf("%d connections for appends one at a time, want 1", peak)
	}

	// Requests piling up unanswered saturate it: more connections open,
	// up to the pool's size.
	s.SetAppendLatency(300 * time.Millisecond)
	tbl := c.Table("busy")
	if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
		t.Fatal(err)
	}
	var results []*Result
	for i := range 4 * loadedRequests * 2 {
		res, err := tbl.Append(t.Context(), encode(t, tbl, map[string]any{"id": i}))
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, res)
	}
	for _, res := range results {
		if err := wait(t, res); err != nil {
			t.Fatal(err)
		}
	}
	if _, peak := s.Connections(); peak < 2 || peak > 4 {
		t.Errorf("%d connections under load, want 2 to 4", peak)
	}
}

// A table whose appends break the connection (BigQuery ends it) costs the
// tables sharing it one broken connection: it is then quarantined on a
// connection of its own within the pool, and the others' appends go
// through, each at the first attempt.
func TestFailingTableDoesNotStallOthers(t *testing.T) {
	for _, tc := range []struct {
		name string
		code codes.Code
		max  int
	}{
		// In-band errors leave the connection up: even one connection
		// keeps the good table going.
		{"answered with an error", codes.InvalidArgument, 1},
		// INTERNAL ends the connection.
		{"ending the connection", codes.Internal, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newFake(t)
			c := newTestClient(t, s, func(c *Config) { c.MaxConnections = tc.max })
			good, bad := c.Table("good"), c.Table("bad")
			for _, tbl := range []*Table{good, bad} {
				if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
					t.Fatal(err)
				}
			}
			// Both on the connection first.
			for _, tbl := range []*Table{good, bad} {
				if err := appendRows(t, tbl, map[string]any{"id": 0}); err != nil {
					t.Fatal(err)
				}
			}
			s.FailTable(testProject, testDataset, "bad", tc.code)
			// The first failure may take the good table's unanswered
			// request with it.
			res, err := bad.Append(t.Context(), encode(t, bad, map[string]any{"id": 1}))
			if err != nil {
				t.Fatal(err)
			}
			if err := wait(t, res); err == nil {
				t.Fatal("the failing table's append went through")
			}
			for i := range 30 {
				resBad, err := bad.Append(t.Context(), encode(t, bad, map[string]any{"id": 100 + i}))
				if err != nil {
					t.Fatal(err)
				}
				resGood, err := good.Append(t.Context(), encode(t, good, map[string]any{"id": 100 + i}))
				if err != nil {
					t.Fatal(err)
				}
				if err := wait(t, resGood); err != nil {
					t.Fatalf("append %d of the good table: %v", i, err)
				}
				if err := wait(t, resBad); err == nil {
					t.Fatalf("append %d of the failing table went through", i)
				}
			}
			if n := s.RowCount(testProject, testDataset, "good"); n != 31 {
				t.Errorf("good holds %d rows, want 31", n)
			}
			if _, peak := s.Connections(); peak > tc.max {
				t.Errorf("%d connections at once, want at most %d", peak, tc.max)
			}
			// Once BigQuery takes its rows again, the table is back with
			// the others.
			s.FailTable(testProject, testDataset, "bad", codes.OK)
			appendUntilWritten(t, bad, []map[string]any{{"id": 1000}}, 20*time.Second)
			if bad.def.suspect.Load() {
				t.Error("the table is still quarantined after an acknowledged append")
			}
		})
	}
}

// On a shared connection the writer schema goes out when the connection
// switches tables or a table's schema changes, not with every request; a
// table whose schema grows writes its new columns while another table goes
// on with its own.
func TestSchemaOnASharedConnection(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s, func(c *Config) { c.MaxConnections = 1 })
	a, b := c.Table("a"), c.Table("b")
	for _, tbl := range []*Table{a, b} {
		if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		if err := appendRows(t, a, map[string]any{"id": i}); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.WriterSchemas(); n != 1 {
		t.Fatalf("%d requests carried a writer schema for 5 appends of one table, want 1", n)
	}
	// a, b, a, b: each switch carries the schema of the table switched to.
	for i := range 2 {
		for _, tbl := range []*Table{b, a} {
			if err := appendRows(t, tbl, map[string]any{"id": 10 + i}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := s.WriterSchemas(); n != 5 {
		t.Fatalf("%d requests carried a writer schema after 4 switches, want 5", n)
	}

	grown := append(bigquery.Schema{}, idSchema...)
	grown = append(grown, col("note", bigquery.StringFieldType, ""))
	if err := a.EnsureSchema(t.Context(), grown); err != nil {
		t.Fatal(err)
	}
	before := s.WriterSchemas()
	if err := appendRows(t, a, map[string]any{"id": 20, "note": "new"}); err != nil {
		t.Fatal(err)
	}
	if err := appendRows(t, a, map[string]any{"id": 21, "note": "again"}); err != nil {
		t.Fatal(err)
	}
	if n := s.WriterSchemas() - before; n != 1 {
		t.Errorf("%d requests carried a writer schema for a's new schema, want 1", n)
	}
	if err := appendRows(t, b, map[string]any{"id": 22}); err != nil {
		t.Fatal(err)
	}
	notes := map[int64]bigquery.Value{}
	for _, r := range readTable(t, s, "a") {
		notes[r["id"].(int64)] = r["note"]
	}
	if notes[20] != "new" || notes[21] != "again" {
		t.Errorf("a's rows after its schema grew: %v, want the new column written", notes)
	}
	if n := s.RowCount(testProject, testDataset, "b"); n != 3 {
		t.Errorf("b holds %d rows, want 3", n)
	}
	if _, peak := s.Connections(); peak != 1 {
		t.Errorf("%d connections, want the pool's 1", peak)
	}
}

// encodeRows is encode for goroutines other than the test's.
func encodeRows(tbl *Table, maps []map[string]any) ([]Row, error) {
	out := make([]Row, len(maps))
	for i, m := range maps {
		var err error
		if out[i], err = tbl.Encode(m); err != nil {
			return nil, fmt.Errorf("encode row %d: %v", i, err)
		}
	}
	return out, nil
}

// Against a grpc_endpoint (an emulator) the default is a connection per
// table: goccy's emulator decodes a connection's requests with its first
// writer schema, so tables must not share one.
func TestEmulatorEndpointGetsAConnectionPerTable(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s, func(c *Config) { c.MaxConnections = 0 })
	a, b := c.Table("a"), c.Table("b")
	for _, tbl := range []*Table{a, b} {
		if err := tbl.EnsureSchema(t.Context(), idSchema); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		for _, tbl := range []*Table{a, b} {
			if err := appendRows(t, tbl, map[string]any{"id": i}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if open, _ := s.Connections(); open != 2 {
		t.Errorf("%d connections for 2 tables, want one each", open)
	}
	if n := s.WriterSchemas(); n != 2 {
		t.Errorf("%d requests carried a writer schema, want one per connection", n)
	}
	// goccy's emulator appends a request that names no stream to any
	// stream it knows, another table's included.
	if n := s.RequestsWithoutStream(); n != 0 {
		t.Errorf("%d requests named no write stream, want every one to name its table's", n)
	}
}
