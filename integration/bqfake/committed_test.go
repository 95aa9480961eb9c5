package bqfake_test

import (
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	storage "cloud.google.com/go/bigquery/storage/apiv1"
	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bqsink/bqsink/integration/bqfake"
)

// rawClient is the generated Storage Write client: one AppendRows call is
// one connection, requests and answers under the test's control.
func rawClient(t *testing.T, srv *bqfake.Server) *storage.BigQueryWriteClient {
	t.Helper()
	wc, err := storage.NewBigQueryWriteClient(t.Context(),
		option.WithEndpoint(srv.GRPCEndpoint()), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wc.Close() })
	return wc
}

// conn is one AppendRows connection.
type conn struct {
	t   *testing.T
	rpc storagepb.BigQueryWrite_AppendRowsClient
	dp  *descriptorpb.DescriptorProto
	// named: streams whose writer schema this connection has sent.
	named map[string]bool
}

func dial(t *testing.T, wc *storage.BigQueryWriteClient, dp *descriptorpb.DescriptorProto) *conn {
	t.Helper()
	rpc, err := wc.AppendRows(t.Context())
	if err != nil {
		t.Fatalf("open AppendRows: %v", err)
	}
	t.Cleanup(func() { _ = rpc.CloseSend() })
	return &conn{t: t, rpc: rpc, dp: dp, named: map[string]bool{}}
}

// send sends rows to stream at off (-1: no offset), with the writer schema
// the first time the connection names the stream.
func (c *conn) send(stream string, off int64, rows [][]byte) {
	c.t.Helper()
	data := &storagepb.AppendRowsRequest_ProtoData{Rows: &storagepb.ProtoRows{SerializedRows: rows}}
	if !c.named[stream] {
		data.WriterSchema = &storagepb.ProtoSchema{ProtoDescriptor: c.dp}
		c.named[stream] = true
	}
	req := &storagepb.AppendRowsRequest{WriteStream: stream, Rows: &storagepb.AppendRowsRequest_ProtoRows{ProtoRows: data}}
	if off >= 0 {
		req.Offset = wrapperspb.Int64(off)
	}
	if err := c.rpc.Send(req); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *conn) recv() (*storagepb.AppendRowsResponse, error) {
	c.t.Helper()
	return c.rpc.Recv()
}

// append sends one request and returns its answer, failing the test if the
// connection ends instead.
func (c *conn) append(stream string, off int64, rows [][]byte) *storagepb.AppendRowsResponse {
	c.t.Helper()
	c.send(stream, off, rows)
	resp, err := c.recv()
	if err != nil {
		c.t.Fatalf("append to %s at %d: connection ended: %v", stream, off, err)
	}
	return resp
}

// wantWritten fails unless resp acknowledges an append at off.
func wantWritten(t *testing.T, resp *storagepb.AppendRowsResponse, off int64) {
	t.Helper()
	if e := resp.GetError(); e != nil {
		t.Fatalf("append at %d failed: %s %s", off, codes.Code(e.GetCode()), e.GetMessage())
	}
	if got := resp.GetAppendResult().GetOffset(); got == nil || got.GetValue() != off {
		t.Fatalf("append result offset %v, want %d", got, off)
	}
}

// wantRefused fails unless resp is an error with code and, unless
// unspecified, a StorageError detail with sc.
func wantRefused(t *testing.T, resp *storagepb.AppendRowsResponse, code codes.Code, sc storagepb.StorageError_StorageErrorCode) {
	t.Helper()
	e := resp.GetError()
	if e == nil {
		t.Fatalf("append succeeded (%v), want %s", resp.GetAppendResult(), code)
	}
	if codes.Code(e.GetCode()) != code {
		t.Fatalf("append failed with %s %q, want %s", codes.Code(e.GetCode()), e.GetMessage(), code)
	}
	if sc == storagepb.StorageError_STORAGE_ERROR_CODE_UNSPECIFIED {
		return
	}
	wantStorageError(t, status.FromProto(e), sc)
}

func wantStorageError(t *testing.T, st *status.Status, sc storagepb.StorageError_StorageErrorCode) {
	t.Helper()
	for _, d := range st.Details() {
		if se, ok := d.(*storagepb.StorageError); ok {
			if se.GetCode() != sc {
				t.Fatalf("StorageError %s, want %s (%v)", se.GetCode(), sc, st.Err())
			}
			return
		}
	}
	t.Fatalf("no StorageError detail in %v, want %s", st.Err(), sc)
}

func createCommitted(t *testing.T, wc *storage.BigQueryWriteClient, table string) *storagepb.WriteStream {
	t.Helper()
	ws, err := wc.CreateWriteStream(t.Context(), &storagepb.CreateWriteStreamRequest{
		Parent:      parentOf(table),
		WriteStream: &storagepb.WriteStream{Type: storagepb.WriteStream_COMMITTED},
	})
	if err != nil {
		t.Fatalf("create COMMITTED stream on %s: %v", table, err)
	}
	return ws
}

func TestCommittedStreamSemantics(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{{Name: "n", Type: bigquery.IntegerFieldType}}
	tbl := createTable(t, c, "t", schema)
	md, dp := descriptorFor(t, schema)
	wc := rawClient(t, srv)
	rows := func(ns ...int64) [][]byte {
		var out [][]byte
		for _, n := range ns {
			out = append(out, newMsg(t, md).set("n", n).bytes())
		}
		return out
	}
	read := func() []int64 {
		var out []int64
		for _, r := range readAll(t, tbl) {
			out = append(out, r[0].(int64))
		}
		return out
	}

	ws := createCommitted(t, wc, "t")
	name := ws.GetName()
	if ws.GetType() != storagepb.WriteStream_COMMITTED || !strings.HasPrefix(name, parentOf("t")+"/streams/") {
		t.Fatalf("created %v", ws)
	}
	if ws.GetCommitTime() == nil || !ws.GetCommitTime().AsTime().Equal(ws.GetCreateTime().AsTime()) {
		t.Fatalf("COMMITTED stream: commit_time %v, want create_time %v", ws.GetCommitTime(), ws.GetCreateTime())
	}
	if len(ws.GetTableSchema().GetFields()) != 1 {
		t.Fatalf("CreateWriteStream returned table_schema %v", ws.GetTableSchema())
	}
	got, err := wc.GetWriteStream(t.Context(), &storagepb.GetWriteStreamRequest{Name: name, View: storagepb.WriteStreamView_FULL})
	if err != nil || got.GetName() != name || got.GetType() != storagepb.WriteStream_COMMITTED || got.GetCommitTime() == nil || len(got.GetTableSchema().GetFields()) != 1 {
		t.Fatalf("GetWriteStream = %v, %v", got, err)
	}

	cn := dial(t, wc, dp)
	wantWritten(t, cn.append(name, 0, rows(0, 1)), 0)
	// Visible on acknowledgement, through REST.
	if got := read(); !reflect.DeepEqual(got, []int64{0, 1}) {
		t.Fatalf("after the acknowledgement the table reads %v", got)
	}
	wantRefused(t, cn.append(name, 0, rows(0, 1)), codes.AlreadyExists, storagepb.StorageError_OFFSET_ALREADY_EXISTS)
	wantRefused(t, cn.append(name, 1, rows(1, 2)), codes.AlreadyExists, storagepb.StorageError_OFFSET_ALREADY_EXISTS)
	wantRefused(t, cn.append(name, 3, rows(3)), codes.OutOfRange, storagepb.StorageError_OFFSET_OUT_OF_RANGE)
	if got := read(); !reflect.DeepEqual(got, []int64{0, 1}) {
		t.Fatalf("refused appends wrote rows: %v", got)
	}
	// The connection stays open after refusals.
	wantWritten(t, cn.append(name, 2, rows(2)), 2)
	wantWritten(t, cn.append(name, -1, rows(3)), 3)
	if n, ok := srv.StreamLength(name); !ok || n != 4 {
		t.Fatalf("StreamLength = %d, %v; want 4", n, ok)
	}

	// A second connection to the same stream continues at its end.
	cn2 := dial(t, wc, dp)
	wantRefused(t, cn2.append(name, 3, rows(3)), codes.AlreadyExists, storagepb.StorageError_OFFSET_ALREADY_EXISTS)
	wantWritten(t, cn2.append(name, 4, rows(4)), 4)

	if ae, oor := srv.OffsetConflicts(); ae != 3 || oor != 1 {
		t.Fatalf("OffsetConflicts = %d, %d; want 3 ALREADY_EXISTS and 1 OUT_OF_RANGE", ae, oor)
	}

	// Finalized behind the writer's back.
	srv.FinalizeStream(name)
	if !srv.StreamFinalized(name) {
		t.Fatal("StreamFinalized = false after FinalizeStream")
	}
	wantRefused(t, cn.append(name, 5, rows(5)), codes.InvalidArgument, storagepb.StorageError_STREAM_FINALIZED)
	wantRefused(t, dial(t, wc, dp).append(name, 5, rows(5)), codes.InvalidArgument, storagepb.StorageError_STREAM_FINALIZED)
	// Finalized wins over a stale offset.
	wantRefused(t, cn2.append(name, 0, rows(0)), codes.InvalidArgument, storagepb.StorageError_STREAM_FINALIZED)
	if _, err := wc.GetWriteStream(t.Context(), &storagepb.GetWriteStreamRequest{Name: name}); err != nil {
		t.Fatalf("GetWriteStream of a finalized stream: %v", err)
	}
	if resp, err := wc.FinalizeWriteStream(t.Context(), &storagepb.FinalizeWriteStreamRequest{Name: name}); err != nil || resp.GetRowCount() != 5 {
		t.Fatalf("FinalizeWriteStream = %v, %v; want 5 rows", resp, err)
	}

	// The RPC finalizes too.
	ws2 := createCommitted(t, wc, "t")
	wantWritten(t, cn.append(ws2.GetName(), 0, rows(10)), 0)
	if resp, err := wc.FinalizeWriteStream(t.Context(), &storagepb.FinalizeWriteStreamRequest{Name: ws2.GetName()}); err != nil || resp.GetRowCount() != 1 {
		t.Fatalf("FinalizeWriteStream = %v, %v; want 1 row", resp, err)
	}
	wantRefused(t, cn.append(ws2.GetName(), 1, rows(11)), codes.InvalidArgument, storagepb.StorageError_STREAM_FINALIZED)

	// Lost: NOT_FOUND everywhere, rows stay.
	ws3 := createCommitted(t, wc, "t")
	wantWritten(t, cn.append(ws3.GetName(), 0, rows(20, 21)), 0)
	srv.LoseStream(ws3.GetName())
	wantRefused(t, cn.append(ws3.GetName(), 2, rows(22)), codes.NotFound, storagepb.StorageError_STREAM_NOT_FOUND)
	wantRefused(t, dial(t, wc, dp).append(ws3.GetName(), 2, rows(22)), codes.NotFound, storagepb.StorageError_STREAM_NOT_FOUND)
	_, err = wc.GetWriteStream(t.Context(), &storagepb.GetWriteStreamRequest{Name: ws3.GetName()})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("GetWriteStream of a lost stream: %v, want NOT_FOUND", err)
	}
	wantStorageError(t, status.Convert(err), storagepb.StorageError_STREAM_NOT_FOUND)
	if _, ok := srv.StreamLength(ws3.GetName()); ok {
		t.Fatal("StreamLength reports a lost stream")
	}
	if got := read(); !reflect.DeepEqual(got, []int64{0, 1, 2, 3, 4, 10, 20, 21}) {
		t.Fatalf("table reads %v", got)
	}

	// The default stream is not listed, nor are other tables' streams.
	createTable(t, c, "other", schema)
	createCommitted(t, wc, "other")
	want := []string{name, ws2.GetName(), ws3.GetName()}
	if got := srv.WriteStreams(project, dsID, "t"); !reflect.DeepEqual(got, want) {
		t.Fatalf("WriteStreams = %v, want %v", got, want)
	}
	if got := srv.WriteStreams(project, dsID, "nothing"); got != nil {
		t.Fatalf("WriteStreams of a table without streams = %v", got)
	}
}

func TestLoseAnswers(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{{Name: "n", Type: bigquery.IntegerFieldType}}
	createTable(t, c, "t", schema)
	md, dp := descriptorFor(t, schema)
	wc := rawClient(t, srv)
	rows := func(ns ...int64) [][]byte {
		var out [][]byte
		for _, n := range ns {
			out = append(out, newMsg(t, md).set("n", n).bytes())
		}
		return out
	}
	name := createCommitted(t, wc, "t").GetName()

	srv.LoseAnswers(1)
	// Both requests reach the server before it processes the first.
	srv.SetAppendLatency(200 * time.Millisecond)
	cn := dial(t, wc, dp)
	cn.send(name, 0, rows(0, 1))
	cn.send(name, 2, rows(2)) // pipelined behind the lost answer: never processed
	if resp, err := cn.recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("answer of a lost request: %v, %v; want the connection to end with UNAVAILABLE", resp, err)
	}
	if n := srv.RowCount(project, dsID, "t"); n != 2 {
		t.Fatalf("%d rows written, want the lost request's 2", n)
	}
	if n := srv.AnswersLost(); n != 1 {
		t.Fatalf("AnswersLost = %d, want 1", n)
	}
	srv.SetAppendLatency(0)
	// The retry on a new connection learns the rows are there.
	cn = dial(t, wc, dp)
	wantRefused(t, cn.append(name, 0, rows(0, 1)), codes.AlreadyExists, storagepb.StorageError_OFFSET_ALREADY_EXISTS)
	wantWritten(t, cn.append(name, 2, rows(2)), 2)

	// A request that fails is processed, and its answer lost, too; on the
	// default stream as well.
	srv.LoseAnswers(2)
	cn = dial(t, wc, dp)
	cn.send(name, 0, rows(0))
	if _, err := cn.recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("lost answer of a refused append: %v, want UNAVAILABLE", err)
	}
	def := dial(t, wc, dp)
	def.send(parentOf("t")+"/streams/_default", -1, rows(30))
	if _, err := def.recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("lost answer on the default stream: %v, want UNAVAILABLE", err)
	}
	if n, lost := srv.RowCount(project, dsID, "t"), srv.AnswersLost(); n != 4 || lost != 3 {
		t.Fatalf("%d rows, %d answers lost; want 4 and 3", n, lost)
	}

	// n <= 0 cancels.
	srv.LoseAnswers(5)
	srv.LoseAnswers(0)
	wantWritten(t, dial(t, wc, dp).append(name, 3, rows(3)), 3)
}

func TestRejectRows(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{{Name: "n", Type: bigquery.IntegerFieldType}}
	createTable(t, c, "t", schema)
	md, dp := descriptorFor(t, schema)
	wc := rawClient(t, srv)
	rows := func(ns ...int64) [][]byte {
		var out [][]byte
		for _, n := range ns {
			out = append(out, newMsg(t, md).set("n", n).bytes())
		}
		return out
	}
	wantRowErrors := func(resp *storagepb.AppendRowsResponse, idx ...int64) {
		t.Helper()
		wantRefused(t, resp, codes.InvalidArgument, storagepb.StorageError_STORAGE_ERROR_CODE_UNSPECIFIED)
		var got []int64
		for _, e := range resp.GetRowErrors() {
			if e.GetCode() != storagepb.RowError_FIELDS_ERROR || !strings.Contains(e.GetMessage(), "RejectRows") {
				t.Fatalf("row error %v", e)
			}
			got = append(got, e.GetIndex())
		}
		if !reflect.DeepEqual(got, idx) {
			t.Fatalf("row errors at %v, want %v", got, idx)
		}
	}
	def := parentOf("t") + "/streams/_default"
	cn := dial(t, wc, dp)

	srv.RejectRows(func(row map[string]any) bool { return row["n"] == int64(2) })
	wantRowErrors(cn.append(def, -1, rows(1, 2, 3, 2)), 1, 3)
	if n := srv.RowCount(project, dsID, "t"); n != 0 {
		t.Fatalf("%d rows written by a request with rejected rows", n)
	}
	if resp := cn.append(def, -1, rows(1, 3)); resp.GetError() != nil {
		t.Fatalf("append without rejected rows: %v", resp.GetError())
	}
	srv.RejectRows(nil)
	if resp := cn.append(def, -1, rows(2)); resp.GetError() != nil {
		t.Fatalf("append after RejectRows(nil): %v", resp.GetError())
	}

	// On a COMMITTED stream, rows are validated before the offset: a row
	// whose fate changed shows even where the offset is already written.
	name := createCommitted(t, wc, "t").GetName()
	wantWritten(t, cn.append(name, 0, rows(5, 6, 7)), 0)
	srv.RejectRows(func(row map[string]any) bool { return row["n"] == int64(6) })
	wantRowErrors(cn.append(name, 0, rows(5, 6, 7)), 1)
	wantRefused(t, cn.append(name, 0, rows(5)), codes.AlreadyExists, storagepb.StorageError_OFFSET_ALREADY_EXISTS)
	wantRefused(t, cn.append(name, 4, rows(8)), codes.OutOfRange, storagepb.StorageError_OFFSET_OUT_OF_RANGE)
	wantWritten(t, cn.append(name, 3, rows(8)), 3)
	srv.RejectRows(nil)

	// The recipe of a row whose fate changes between two attempts: the
	// first attempt is written and its answer lost, the second is refused.
	var mu sync.Mutex
	seen := map[int64]int{}
	srv.RejectRows(func(row map[string]any) bool {
		mu.Lock()
		defer mu.Unlock()
		n := row["n"].(int64)
		seen[n]++
		return n == 10 && seen[n] > 1
	})
	srv.LoseAnswers(1)
	cn.send(name, 4, rows(9, 10, 11))
	if _, err := cn.recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("lost answer: %v", err)
	}
	cn = dial(t, wc, dp)
	wantRowErrors(cn.append(name, 4, rows(9, 10, 11)), 1)
	wantRefused(t, cn.append(name, 4, rows(9, 11)), codes.AlreadyExists, storagepb.StorageError_OFFSET_ALREADY_EXISTS)
	if n, _ := srv.StreamLength(name); n != 7 {
		t.Fatalf("stream length %d, want 7", n)
	}
	var got []int64
	for _, r := range srv.Rows(project, dsID, "t") {
		got = append(got, r["n"].(int64))
	}
	if want := []int64{1, 3, 2, 5, 6, 7, 8, 9, 10, 11}; !reflect.DeepEqual(got, want) {
		t.Fatalf("table holds %v, want %v", got, want)
	}
}

// Explicit streams see schema changes as the default stream does: a table
// the write path cannot see yet has no streams, and a patched schema shows
// in updated_schema once the write path sees it.
func TestCommittedStreamSchemaPropagation(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	wc := rawClient(t, srv)
	const delay = 500 * time.Millisecond
	srv.SetSchemaDelay(delay)
	v1 := bigquery.Schema{{Name: "id", Type: bigquery.IntegerFieldType}}
	tbl := createTable(t, c, "t", v1)
	_, err := wc.CreateWriteStream(t.Context(), &storagepb.CreateWriteStreamRequest{
		Parent: parentOf("t"), WriteStream: &storagepb.WriteStream{Type: storagepb.WriteStream_COMMITTED},
	})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("CreateWriteStream before the table reaches the write path: %v, want NOT_FOUND", err)
	}
	var ws *storagepb.WriteStream
	eventually(t, 4*delay, "the table to reach the write path", func() bool {
		var err error
		ws, err = wc.CreateWriteStream(t.Context(), &storagepb.CreateWriteStreamRequest{
			Parent: parentOf("t"), WriteStream: &storagepb.WriteStream{Type: storagepb.WriteStream_COMMITTED},
		})
		return err == nil
	})
	name := ws.GetName()
	md1, dp1 := descriptorFor(t, v1)
	cn := dial(t, wc, dp1)
	wantWritten(t, cn.append(name, 0, [][]byte{newMsg(t, md1).set("id", int64(1)).bytes()}), 0)

	v2 := append(v1[:1:1], &bigquery.FieldSchema{Name: "note", Type: bigquery.StringFieldType})
	if _, err := tbl.Update(t.Context(), bigquery.TableMetadataToUpdate{Schema: v2}, ""); err != nil {
		t.Fatal(err)
	}
	md2, dp2 := descriptorFor(t, v2)
	resp := cn.append(name, 1, [][]byte{newMsg(t, md1).set("id", int64(2)).bytes()})
	wantWritten(t, resp, 1)
	if resp.GetUpdatedSchema() != nil {
		t.Fatalf("updated_schema before the write path sees the patch: %v", resp.GetUpdatedSchema())
	}
	cn2 := dial(t, wc, dp2)
	wantRefused(t, cn2.append(name, 2, [][]byte{newMsg(t, md2).set("id", int64(3)).set("note", "x").bytes()}),
		codes.InvalidArgument, storagepb.StorageError_SCHEMA_MISMATCH_EXTRA_FIELDS)
	off := int64(2)
	eventually(t, 4*delay, "updated_schema on the explicit stream", func() bool {
		resp := cn.append(name, off, [][]byte{newMsg(t, md1).set("id", off+1).bytes()})
		wantWritten(t, resp, off)
		off++
		return len(resp.GetUpdatedSchema().GetFields()) == 2
	})
	// A new writer schema on a new connection writes the new column to the
	// same stream, at its end.
	wantWritten(t, dial(t, wc, dp2).append(name, off, [][]byte{newMsg(t, md2).set("id", int64(100)).set("note", "x").bytes()}), off)
	rows := readAll(t, tbl)
	if last := rows[len(rows)-1]; !reflect.DeepEqual(last, []bigquery.Value{int64(100), "x"}) {
		t.Fatalf("last row %v", last)
	}
}
