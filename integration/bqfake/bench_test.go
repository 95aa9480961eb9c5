package bqfake_test

import (
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"cloud.google.com/go/bigquery/storage/managedwriter"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bqsink/bqsink/integration/bqfake"
)

// benchSchema is a table as bqsink makes it with metadata_column: _kafka.
var benchSchema = bigquery.Schema{
	{Name: "ean", Type: bigquery.StringFieldType, Required: true},
	{Name: "delta", Type: bigquery.IntegerFieldType},
	{Name: "_kafka", Type: bigquery.RecordFieldType, Schema: bigquery.Schema{
		{Name: "topic", Type: bigquery.StringFieldType},
		{Name: "offset", Type: bigquery.IntegerFieldType},
		{Name: "timestamp", Type: bigquery.TimestampFieldType},
	}},
}

// Bench mode counts rows without keeping them, checks the writer descriptor
// once per stream rather than per request, and reads each row's
// _kafka.timestamp to record its freshness at acknowledgement.
func TestBenchCountsRowsAndFreshness(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	srv.SetBench(&bqfake.BenchOptions{Freshness: "_kafka.timestamp"})
	createTable(t, restClient(t, srv), "t", benchSchema)
	md, dp := descriptorFor(t, benchSchema)
	ms := mustOpen(t, writeClient(t, srv), "t", managedwriter.DefaultStream, dp)

	age := 2 * time.Second
	stamp := time.Now().Add(-age).UnixMicro()
	row := func(i int, withTimestamp bool) []byte {
		m := newMsg(t, md).set("ean", "560000000000").set("delta", int64(i))
		k := m.sub("_kafka").set("topic", "stock").set("offset", int64(i))
		if withTimestamp {
			k.set("timestamp", stamp)
		}
		return m.bytes()
	}
	const requests, perRequest = 5, 40
	sent := time.Now()
	for r := range requests {
		rows := make([][]byte, perRequest)
		for i := range rows {
			rows[i] = row(r*perRequest+i, !(r == requests-1 && i == 0))
		}
		ok(t, send(t, ms, rows))
	}
	elapsed := time.Since(sent)

	if n := srv.RowCount(project, dsID, "t"); n != requests*perRequest {
		t.Fatalf("RowCount = %d, want %d", n, requests*perRequest)
	}
	if rows := srv.Rows(project, dsID, "t"); len(rows) != 0 {
		t.Fatalf("bench mode kept %d rows", len(rows))
	}
	st := srv.BenchStats()
	if st.Requests != requests || st.Rows != requests*perRequest {
		t.Fatalf("BenchStats counted %d requests, %d rows; want %d, %d", st.Requests, st.Rows, requests, requests*perRequest)
	}
	if st.Checks != 1 {
		t.Fatalf("descriptor checked %d times for one stream, want once", st.Checks)
	}
	if st.NoTimestamp != 1 || len(st.Freshness) != requests*perRequest-1 {
		t.Fatalf("%d freshness samples, %d rows without a timestamp; want %d and 1", len(st.Freshness), st.NoTimestamp, requests*perRequest-1)
	}
	for _, f := range st.Freshness {
		// Microseconds survive: the stamp is µs, the acknowledgement came
		// within elapsed of sending.
		if f < age || f > age+elapsed+time.Second {
			t.Fatalf("freshness %v, want between %v and %v", f, age, age+elapsed+time.Second)
		}
	}

	// Off again: rows are decoded and kept as before.
	srv.SetBench(nil)
	ok(t, send(t, ms, [][]byte{row(999, true)}))
	if rows := srv.Rows(project, dsID, "t"); len(rows) != 1 {
		t.Fatalf("after bench mode: %d rows kept, want 1", len(rows))
	}
	if n := srv.RowCount(project, dsID, "t"); n != requests*perRequest+1 {
		t.Fatalf("RowCount = %d, want %d", n, requests*perRequest+1)
	}
}

// A descriptor that does not fit the table is refused on the first request
// of its stream, as without bench mode, and nothing is counted.
func TestBenchRejectsMismatchedDescriptor(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	srv.SetBench(&bqfake.BenchOptions{})
	createTable(t, restClient(t, srv), "t", bigquery.Schema{{Name: "id", Type: bigquery.IntegerFieldType}})
	mw := writeClient(t, srv)

	md, dp := descriptorFor(t, bigquery.Schema{
		{Name: "id", Type: bigquery.IntegerFieldType},
		{Name: "extra", Type: bigquery.StringFieldType},
	})
	ms := mustOpen(t, mw, "t", managedwriter.DefaultStream, dp)
	err := failsWith(t, send(t, ms, [][]byte{newMsg(t, md).set("id", int64(1)).bytes()}), codes.InvalidArgument)
	if !strings.Contains(err.Error(), "extra fields: 'extra'") {
		t.Fatalf("error %q does not name the extra field", err)
	}
	if code := storageErrorCode(t, err); code != storagepb.StorageError_SCHEMA_MISMATCH_EXTRA_FIELDS {
		t.Fatalf("StorageError code = %s", code)
	}
	// Still refused: a failed check is not remembered as passed.
	failsWith(t, send(t, ms, [][]byte{newMsg(t, md).set("id", int64(2)).bytes()}), codes.InvalidArgument)

	md2, dp2 := descriptorFor(t, bigquery.Schema{{Name: "id", Type: bigquery.StringFieldType}})
	ms2 := mustOpen(t, mw, "t", managedwriter.DefaultStream, dp2)
	err = failsWith(t, send(t, ms2, [][]byte{newMsg(t, md2).set("id", "1").bytes()}), codes.InvalidArgument)
	if !strings.Contains(err.Error(), "mismatched") {
		t.Fatalf("error %q does not report the type mismatch of id", err)
	}
	if n := srv.RowCount(project, dsID, "t"); n != 0 {
		t.Fatalf("%d rows counted", n)
	}
	if st := srv.BenchStats(); st.Rows != 0 || st.Requests != 0 || st.Checks != 0 {
		t.Fatalf("BenchStats = %+v after refusals", st)
	}

	// A stream whose descriptor fits is counted, and COMMITTED streams
	// keep their offsets; PENDING streams are refused.
	md3, dp3 := descriptorFor(t, bigquery.Schema{{Name: "id", Type: bigquery.IntegerFieldType}})
	cs := mustOpen(t, mw, "t", managedwriter.CommittedStream, dp3)
	one := [][]byte{newMsg(t, md3).set("id", int64(1)).bytes()}
	if off := ok(t, send(t, cs, one, managedwriter.WithOffset(0))); off != 0 {
		t.Fatalf("offset %d, want 0", off)
	}
	failsWith(t, send(t, cs, one, managedwriter.WithOffset(0)), codes.AlreadyExists)
	if off := ok(t, send(t, cs, one)); off != 1 {
		t.Fatalf("offset %d, want 1", off)
	}
	if n := srv.RowCount(project, dsID, "t"); n != 2 {
		t.Fatalf("%d rows counted, want 2", n)
	}
	_, err = openStream(t.Context(), mw, "t", managedwriter.PendingStream, dp3)
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("PENDING stream in bench mode: %v, want FAILED_PRECONDITION", err)
	}
}

// SetRowRate caps the rows acknowledged per second over all connections:
// rows counted in bench mode never run ahead of the rate, and the cap
// removed, requests are answered at once again.
func TestRowRate(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	srv.SetBench(&bqfake.BenchOptions{})
	createTable(t, restClient(t, srv), "t", benchSchema)
	md, dp := descriptorFor(t, benchSchema)
	mw := writeClient(t, srv)
	// Two connections (two writer clients' streams would do as well): the
	// cap is the server's, not a connection's.
	a := mustOpen(t, mw, "t", managedwriter.DefaultStream, dp)
	b := mustOpen(t, writeClient(t, srv), "t", managedwriter.DefaultStream, dp)
	rows := make([][]byte, 100)
	for i := range rows {
		rows[i] = newMsg(t, md).set("ean", "560000000000").set("delta", int64(i)).bytes()
	}

	const rate, requests = 1000, 8 // 800 rows: at least 0.8 s
	srv.SetRowRate(rate)
	began := time.Now()
	var results []*managedwriter.AppendResult
	for i := range requests {
		ms := a
		if i%2 == 1 {
			ms = b
		}
		results = append(results, send(t, ms, rows))
	}
	// While they are answered, rows counted stay within the rate.
	for srv.RowCount(project, dsID, "t") < requests*len(rows) {
		n, limit := srv.RowCount(project, dsID, "t"), rate*time.Since(began).Seconds()
		if float64(n) > limit+float64(len(rows)) { // a request's rows count at once
			t.Fatalf("%d rows counted %v after the first request: more than %d/s", n, time.Since(began), rate)
		}
		if time.Since(began) > 10*time.Second {
			t.Fatalf("%d rows counted after 10s", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, r := range results {
		ok(t, r)
	}
	if took, least := time.Since(began), time.Duration(requests*len(rows))*time.Second/rate; took < least-10*time.Millisecond {
		t.Fatalf("%d rows answered in %v at %d rows/s, want at least %v", requests*len(rows), took, rate, least)
	}
	if st := srv.BenchStats(); st.Rows != requests*int64(len(rows)) {
		t.Fatalf("BenchStats counted %d rows", st.Rows)
	}

	srv.SetRowRate(0)
	began = time.Now()
	for range 5 {
		ok(t, send(t, a, rows))
	}
	if took := time.Since(began); took > 400*time.Millisecond {
		t.Fatalf("without a cap, 5 appends took %v", took)
	}
}
