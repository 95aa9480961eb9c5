package bq

import (
	"context"
	"errors"
	"math"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/civil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestAppendAllTypesRoundTrip(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("types")
	if err := tbl.EnsureSchema(t.Context(), typicalSchema()); err != nil {
		t.Fatal(err)
	}
	full := typicalRow()
	sparse := map[string]any{"id": 7, "created": int64(0), "weight": math.NaN(), "price": nil, "lines": []any{}}
	res, err := tbl.Append(t.Context(), encode(t, tbl, full, sparse))
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(t, res); err != nil {
		t.Fatal(err)
	}
	select {
	case <-res.Done():
	default:
		t.Error("Done() not closed after Wait returned")
	}

	rows := readTable(t, s, "types")
	if len(rows) != 2 {
		t.Fatalf("read %d rows, want 2", len(rows))
	}
	slices.SortFunc(rows, func(a, b map[string]bigquery.Value) int { return int(b["id"].(int64) - a["id"].(int64)) })
	got := rows[0]
	rat := func(s string) *big.Rat { r, _ := new(big.Rat).SetString(s); return r }
	checks := map[string]func(bigquery.Value) bool{
		"id":    func(v bigquery.Value) bool { return v == int64(42) },
		"name":  func(v bigquery.Value) bool { return v == "Ünïcode wärehouse" },
		"price": func(v bigquery.Value) bool { r, ok := v.(*big.Rat); return ok && r.Cmp(rat("-123.45")) == 0 },
		"big": func(v bigquery.Value) bool {
			r, ok := v.(*big.Rat)
			return ok && r.Cmp(rat("12345678901234567890.123456789012345678")) == 0
		},
		"weight": func(v bigquery.Value) bool { return v == 2.5 },
		"active": func(v bigquery.Value) bool { return v == true },
		"created": func(v bigquery.Value) bool {
			ts, ok := v.(time.Time)
			return ok && ts.Equal(time.UnixMicro(1_700_000_000_123_456))
		},
		"day": func(v bigquery.Value) bool { return v == civil.DateOf(time.Unix(19700*86400, 0).UTC()) },
		"at":  func(v bigquery.Value) bool { return v == civil.Time{Hour: 15, Minute: 4, Second: 5} },
		"local": func(v bigquery.Value) bool {
			return v == civil.DateTime{Date: civil.Date{Year: 2006, Month: 1, Day: 2}, Time: civil.Time{Hour: 15, Minute: 4, Second: 5}}
		},
		"payload": func(v bigquery.Value) bool { b, ok := v.([]byte); return ok && string(b) == "\x00\x01\x02\xff" },
		"tags": func(v bigquery.Value) bool {
			l, ok := v.([]bigquery.Value)
			return ok && len(l) == 2 && l[0] == "a" && l[1] == "b"
		},
		// A map loader gives records as maps too.
		"address": func(v bigquery.Value) bool {
			m, ok := v.(map[string]bigquery.Value)
			return ok && len(m) == 2 && m["street"] == "Main St" && m["zip"] == int64(1234)
		},
		"lines": func(v bigquery.Value) bool {
			l, ok := v.([]bigquery.Value)
			if !ok || len(l) != 2 {
				return false
			}
			a, _ := l[0].(map[string]bigquery.Value)
			b, _ := l[1].(map[string]bigquery.Value)
			return len(a) == 2 && a["sku"] == "X-1" && a["qty"] == int64(3) && len(b) == 2 && b["sku"] == "Y-2" && b["qty"] == nil
		},
	}
	for name, ok := range checks {
		if !ok(got[name]) {
			t.Errorf("full row: %s = %#v", name, got[name])
		}
	}

	sp := rows[1]
	if sp["id"] != int64(7) || sp["name"] != nil || sp["price"] != nil || sp["address"] != nil {
		t.Errorf("sparse row: %v", sp)
	}
	if f, ok := sp["weight"].(float64); !ok || !math.IsNaN(f) {
		t.Errorf("sparse row: weight = %#v, want NaN", sp["weight"])
	}
	if ts, ok := sp["created"].(time.Time); !ok || !ts.Equal(time.Unix(0, 0)) {
		t.Errorf("sparse row: created = %#v, want the epoch", sp["created"])
	}
}

func TestAppendPicksUpNewSchema(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("growing")
	v1 := bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED"), col("name", bigquery.StringFieldType, "")}
	if err := tbl.EnsureSchema(t.Context(), v1); err != nil {
		t.Fatal(err)
	}
	res, err := tbl.Append(t.Context(), encode(t, tbl, map[string]any{"id": 1, "name": "a"}, map[string]any{"id": 2}))
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(t, res); err != nil {
		t.Fatal(err)
	}

	v2 := append(bigquery.Schema{}, v1...)
	v2 = append(v2, col("note", bigquery.StringFieldType, ""), col("meta", bigquery.RecordFieldType, "", col("k", bigquery.StringFieldType, "")),
		col("odd-name ü", bigquery.StringFieldType, "")) // not a proto identifier: sent via the column_name annotation
	if err := tbl.EnsureSchema(t.Context(), v2); err != nil {
		t.Fatal(err)
	}
	res, err = tbl.Append(t.Context(), encode(t, tbl,
		map[string]any{"id": 3, "note": "new column"},
		map[string]any{"id": 4, "name": "d", "meta": map[string]any{"k": "v"}, "odd-name ü": "odd"},
	))
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(t, res); err != nil {
		t.Fatal(err)
	}

	byID := map[int64]map[string]bigquery.Value{}
	for _, r := range readTable(t, s, "growing") {
		byID[r["id"].(int64)] = r
	}
	if len(byID) != 4 || s.RowCount(testProject, testDataset, "growing") != 4 {
		t.Fatalf("rows = %v, want ids 1-4 once each", byID)
	}
	if byID[3]["note"] != "new column" {
		t.Errorf("row 3 note = %#v: the write path dropped the new column", byID[3]["note"])
	}
	if m, _ := byID[4]["meta"].(map[string]bigquery.Value); len(m) != 1 || m["k"] != "v" {
		t.Errorf("row 4 meta = %#v", byID[4]["meta"])
	}
	if byID[4]["odd-name ü"] != "odd" {
		t.Errorf("row 4 odd-name ü = %#v", byID[4]["odd-name ü"])
	}
	if byID[1]["name"] != "a" || byID[1]["note"] != nil {
		t.Errorf("row 1 = %v", byID[1])
	}
}

func TestAppendDuringSchemaDelay(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("lagging")
	v1 := bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED")}
	if err := tbl.EnsureSchema(t.Context(), v1); err != nil {
		t.Fatal(err)
	}
	if _, causes := appendUntilWritten(t, tbl, []map[string]any{{"id": 0}}, 10*time.Second); len(causes) != 0 {
		t.Fatalf("append before any delay was retried: %v", causes)
	}

	const delay = 1500 * time.Millisecond
	s.SetSchemaDelay(delay)
	start := time.Now()
	if err := tbl.EnsureSchema(t.Context(), append(bigquery.Schema{}, v1[0], col("note", bigquery.StringFieldType, ""))); err != nil {
		t.Fatal(err)
	}
	rows := []map[string]any{{"id": 1, "note": "x"}, {"id": 2, "note": "y"}, {"id": 3}}
	retried, causes := appendUntilWritten(t, tbl, rows, 20*time.Second)
	if retried == 0 {
		t.Fatal("rows with the new column were accepted before the write path could see it")
	}
	if took := time.Since(start); took < delay {
		t.Errorf("rows written after %v, before the %v delay ended", took, delay)
	}
	t.Logf("retried %d times; first cause: %v", retried, causes[0])

	// A table created while the write path lags: its stream is NOT_FOUND
	// for a while, which must come back as Retry too.
	fresh := c.Table("fresh")
	if err := fresh.EnsureSchema(t.Context(), v1); err != nil {
		t.Fatal(err)
	}
	retried, causes = appendUntilWritten(t, fresh, []map[string]any{{"id": 1}, {"id": 2}}, 20*time.Second)
	if retried == 0 {
		t.Fatal("rows of a new table were accepted before the write path could see it")
	}
	t.Logf("new table: retried %d times; first cause: %v", retried, causes[0])

	if n := s.RowCount(testProject, testDataset, "lagging"); n != 4 {
		t.Errorf("lagging has %d rows, want 4 (each once)", n)
	}
	if n := s.RowCount(testProject, testDataset, "fresh"); n != 2 {
		t.Errorf("fresh has %d rows, want 2", n)
	}
	notes := map[int64]bigquery.Value{}
	for _, r := range readTable(t, s, "lagging") {
		notes[r["id"].(int64)] = r["note"]
	}
	if notes[1] != "x" || notes[2] != "y" || notes[3] != nil {
		t.Errorf("notes = %v", notes)
	}
}

func TestAppendRejectsOnlyBadRows(t *testing.T) {
	s := newFake(t)
	// Columns made outside bqsink with limits BigQuery enforces, which it
	// names in row_errors: the encoder knows nothing of them.
	schema := bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		{Name: "amount", Type: bigquery.NumericFieldType, Precision: 5, Scale: 2},
		{Name: "reference", Type: bigquery.StringFieldType, MaxLength: 10},
	}
	if err := restClient(t, s).Dataset(testDataset).Table("money").Create(t.Context(), &bigquery.TableMetadata{Schema: schema}); err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, s)
	tbl := c.Table("money")
	if err := tbl.EnsureSchema(t.Context(), bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED")}); err != nil {
		t.Fatal(err)
	}
	// A value that does not fit its column is refused before sending,
	// naming the column, and is no class to retry.
	_, err := tbl.Encode(map[string]any{"id": 4, "amount": 1.5})
	if err == nil || !strings.Contains(err.Error(), `"amount"`) || errors.Is(err, ErrUnknownColumn) || errors.Is(err, ErrRowTooLarge) {
		t.Fatalf("Encode of a float NUMERIC: %v, want a permanent error naming the column", err)
	}
	maps := []map[string]any{
		{"id": 0, "amount": "1.50"},
		{"id": 1, "amount": "-999.99"},
		{"id": 2, "amount": "123456.7"}, // fits NUMERIC, not NUMERIC(5,2)
		{"id": 3},
		{"id": 4, "reference": "abcdefghijkl"}, // 12 characters in a STRING(10)
	}
	rows := encode(t, tbl, maps...)
	res, err := tbl.Append(t.Context(), rows)
	if err != nil {
		t.Fatal(err)
	}
	ae := appendErr(t, wait(t, res))
	if len(ae.Rejected) != 2 || !errors.Is(ae.Rejected[2], ErrRowRejected) || !errors.Is(ae.Rejected[4], ErrRowRejected) {
		t.Fatalf("Rejected = %v, want rows 2 and 4 wrapping ErrRowRejected", ae.Rejected)
	}
	const want = "Field reference: STRING(10) has maximum length 10 but got a value with length 12"
	if !strings.Contains(ae.Rejected[4].Error(), want) {
		t.Errorf("rejection %q does not carry BigQuery's message %q", ae.Rejected[4], want)
	}
	t.Logf("BigQuery's rejections: %v; %v", ae.Rejected[2], ae.Rejected[4])
	if !slices.Equal(ae.Retry, []int{0, 1, 3}) || !errors.Is(ae.Err, ErrRowRejected) {
		t.Fatalf("Retry = %v, cause %v; want [0 1 3], the failed request's other rows, and ErrRowRejected", ae.Retry, ae.Err)
	}
	if n := s.RowCount(testProject, testDataset, "money"); n != 0 {
		t.Fatalf("%d rows written by a request BigQuery refused", n)
	}

	var retry []Row
	for _, i := range ae.Retry {
		retry = append(retry, rows[i])
	}
	res, err = tbl.Append(t.Context(), retry)
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(t, res); err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, r := range readTable(t, s, "money") {
		ids = append(ids, r["id"].(int64))
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []int64{0, 1, 3}) {
		t.Errorf("ids written = %v, want [0 1 3] once each", ids)
	}
}

func TestAppendSplitsLargeBatches(t *testing.T) {
	s := newFake(t)
	const limit = 16 << 10
	c := newTestClient(t, s, func(c *Config) { c.MaxRequestBytes = limit })
	tbl := c.Table("big")
	if err := tbl.EnsureSchema(t.Context(), bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED"), col("blob", bigquery.StringFieldType, "")}); err != nil {
		t.Fatal(err)
	}
	// A row that cannot fit any request is refused by Encode.
	_, err := tbl.Encode(map[string]any{"id": 17, "blob": strings.Repeat("y", limit)})
	if !errors.Is(err, ErrRowTooLarge) || !strings.Contains(err.Error(), "max_request_bytes") {
		t.Fatalf("Encode of a huge row: %v, want ErrRowTooLarge naming max_request_bytes", err)
	}
	const n = 300
	maps := make([]map[string]any, n)
	for i := range maps {
		maps[i] = map[string]any{"id": i, "blob": strings.Repeat("x", 500)}
	}
	rows := encode(t, tbl, maps...)

	// Fail the first request (in its response; the connection stays up):
	// only its rows come back for retry, which shows the batch was split and
	// that the other requests stand on their own.
	s.FailAppends(1, codes.ResourceExhausted)
	res, err := tbl.Append(t.Context(), rows)
	if err != nil {
		t.Fatal(err)
	}
	ae := appendErr(t, wait(t, res))
	if len(ae.Rejected) != 0 {
		t.Fatalf("Rejected = %v, want none", ae.Rejected)
	}
	if len(ae.Retry) == 0 || len(ae.Retry) > limit/500 || ae.Retry[0] != 0 {
		t.Fatalf("Retry = %v, want the rows of the first request only", ae.Retry)
	}
	if got, want := s.RowCount(testProject, testDataset, "big"), n-len(ae.Retry); got != want {
		t.Fatalf("%d rows written, want %d", got, want)
	}
	var retry []Row
	for _, i := range ae.Retry {
		retry = append(retry, rows[i])
	}
	appendRowsUntilWritten(t, tbl, retry, 20*time.Second)

	seen := map[int64]int{}
	for _, r := range readTable(t, s, "big") {
		seen[r["id"].(int64)]++
	}
	for i := range int64(n) {
		if seen[i] != 1 {
			t.Errorf("row %d written %d times, want once", i, seen[i])
		}
	}
}

func TestAppendQuotaExhaustedIsRetry(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("quota")
	if err := tbl.EnsureSchema(t.Context(), bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED")}); err != nil {
		t.Fatal(err)
	}
	rows := encode(t, tbl, map[string]any{"id": 1}, map[string]any{"id": 2}, map[string]any{"id": 3})
	s.FailAppends(1, codes.ResourceExhausted)
	res, err := tbl.Append(t.Context(), rows)
	if err != nil {
		t.Fatal(err)
	}
	ae := appendErr(t, wait(t, res))
	if len(ae.Rejected) != 0 || !slices.Equal(ae.Retry, []int{0, 1, 2}) {
		t.Fatalf("Rejected %v Retry %v, want all rows to retry", ae.Rejected, ae.Retry)
	}
	if status.Code(ae.Err) != codes.ResourceExhausted {
		t.Errorf("cause = %v, want RESOURCE_EXHAUSTED", ae.Err)
	}
	if n := s.RowCount(testProject, testDataset, "quota"); n != 0 {
		t.Fatalf("%d rows written by a failed request", n)
	}
	res, err = tbl.Append(t.Context(), rows)
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(t, res); err != nil {
		t.Fatal(err)
	}
	if n := s.RowCount(testProject, testDataset, "quota"); n != 3 {
		t.Errorf("%d rows, want 3", n)
	}
}

func TestAppendAfterClose(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("closing")
	if err := tbl.EnsureSchema(t.Context(), bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED")}); err != nil {
		t.Fatal(err)
	}
	if err := appendRows(t, tbl, map[string]any{"id": 1}); err != nil {
		t.Fatal(err)
	}
	row := encode(t, tbl, map[string]any{"id": 2})
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := tbl.Append(t.Context(), row); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v, want ErrClosed", err)
	}
	if n := s.RowCount(testProject, testDataset, "closing"); n != 1 {
		t.Errorf("%d rows, want 1", n)
	}
}

func TestAppendEmpty(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("empty")
	if err := tbl.EnsureSchema(t.Context(), bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED")}); err != nil {
		t.Fatal(err)
	}
	res, err := tbl.Append(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := wait(t, res); err != nil {
		t.Fatalf("empty append: %v", err)
	}
	// Only bad rows: nothing is sent, the Result is done at once.
	res, err = tbl.Append(t.Context(), []Row{{}})
	if err != nil {
		t.Fatal(err)
	}
	ae := appendErr(t, wait(t, res))
	if len(ae.Rejected) != 1 || len(ae.Retry) != 0 || ae.Err != ae.Rejected[0] {
		t.Errorf("got %+v, want row 0 rejected and it as the cause", ae)
	}
}

func TestAppendConnectionLossIsRetry(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("flaky")
	if err := tbl.EnsureSchema(t.Context(), bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED")}); err != nil {
		t.Fatal(err)
	}
	rows := []map[string]any{{"id": 1}, {"id": 2}}
	// UNAVAILABLE ends the AppendRows stream, like a lost backend.
	s.FailAppends(1, codes.Unavailable)
	res, err := tbl.Append(t.Context(), encode(t, tbl, rows...))
	if err != nil {
		t.Fatal(err)
	}
	ae := appendErr(t, wait(t, res))
	if len(ae.Rejected) != 0 || !slices.Equal(ae.Retry, []int{0, 1}) || status.Code(ae.Err) != codes.Unavailable {
		t.Fatalf("got %+v, want both rows to retry with UNAVAILABLE", ae)
	}
	// The next append reconnects.
	appendUntilWritten(t, tbl, rows, 20*time.Second)
	if n := s.RowCount(testProject, testDataset, "flaky"); n != 2 {
		t.Errorf("%d rows, want 2", n)
	}
}

func TestCloseEndsPendingResults(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("slow")
	if err := tbl.EnsureSchema(t.Context(), bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED")}); err != nil {
		t.Fatal(err)
	}
	s.SetAppendLatency(time.Minute)
	res, err := tbl.Append(t.Context(), encode(t, tbl, map[string]any{"id": 1}, map[string]any{"id": 2}))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-res.Done():
		t.Fatal("result done before the server answered")
	default:
	}
	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ae := appendErr(t, wait(t, res))
	if !slices.Equal(ae.Retry, []int{0, 1}) || len(ae.Rejected) != 0 || !errors.Is(ae.Err, ErrClosed) {
		t.Errorf("got %+v, want both rows to retry, cause ErrClosed", ae)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Close and the pending result took %v", took)
	}
	s.SetAppendLatency(0)
}

func TestConcurrentAppends(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("busy")
	if err := tbl.EnsureSchema(t.Context(), bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED")}); err != nil {
		t.Fatal(err)
	}
	const writers, appends, perAppend = 8, 30, 3
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for a := range appends {
				if a%10 == 5 {
					// Now and then the stream breaks under everyone.
					s.FailAppends(1, codes.Unavailable)
				}
				var rows []Row
				for r := range perAppend {
					row, err := tbl.Encode(map[string]any{"id": (w*appends+a)*perAppend + r})
					if err != nil {
						t.Error(err)
						return
					}
					rows = append(rows, row)
				}
				if err := appendPatiently(t.Context(), tbl, rows); err != nil {
					t.Errorf("writer %d append %d: %v", w, a, err)
					return
				}
			}
		})
	}
	wg.Wait()
	seen := map[int64]int{}
	for _, r := range readTable(t, s, "busy") {
		seen[r["id"].(int64)]++
	}
	for id := range int64(writers * appends * perAppend) {
		if seen[id] != 1 {
			t.Errorf("id %d written %d times, want once", id, seen[id])
		}
	}
}

// appendPatiently appends rows, re-appending the Retry rows until all are
// written; an error says why it gave up. Safe off the test goroutine.
func appendPatiently(ctx context.Context, tbl *Table, rows []Row) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		res, err := tbl.Append(ctx, rows)
		if err != nil {
			return err
		}
		err = res.Wait(ctx)
		var ae *AppendError
		switch {
		case err == nil:
			return nil
		case !errors.As(err, &ae) || len(ae.Rejected) > 0:
			return err
		}
		next := make([]Row, 0, len(ae.Retry))
		for _, i := range ae.Retry {
			next = append(next, rows[i])
		}
		rows = next
	}
}
