package bqfake_test

import (
	"bytes"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bqsink/bqsink/integration/bqfake"
)

func TestRequireStreamLookup(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{{Name: "n", Type: bigquery.IntegerFieldType}}
	createTable(t, c, "t", schema)
	createTable(t, c, "free", schema)
	md, dp := descriptorFor(t, schema)
	wc := rawClient(t, srv)
	row := [][]byte{newMsg(t, md).set("n", int64(1)).bytes()}
	def := parentOf("t") + "/streams/_default"
	lookup := func(name string) error {
		_, err := wc.GetWriteStream(t.Context(), &storagepb.GetWriteStreamRequest{Name: name})
		return err
	}

	// Off (the default): no lookup needed.
	wantAcked(t, dial(t, wc, dp).append(parentOf("free")+"/streams/_default", -1, row))

	srv.RequireStreamLookup(true)
	cn := dial(t, wc, dp)
	cn.send(def, -1, row)
	_, err := cn.recv()
	if status.Code(err) != codes.Unknown || status.Convert(err).Message() != "failed to append rows: failed to get stream from "+def {
		t.Fatalf("append to a default stream nobody looked up: %v, want goccy's UNKNOWN", err)
	}
	// A lookup that finds no table registers nothing.
	if err := lookup(parentOf("later") + "/streams/_default"); status.Code(err) != codes.NotFound {
		t.Fatalf("lookup of a missing table: %v, want NOT_FOUND", err)
	}
	createTable(t, c, "later", schema)
	cn = dial(t, wc, dp)
	cn.send(parentOf("later")+"/streams/_default", -1, row)
	if _, err := cn.recv(); status.Code(err) != codes.Unknown {
		t.Fatalf("append after a lookup that failed: %v, want UNKNOWN", err)
	}

	// One lookup, on no particular connection, lets every connection write
	// to that stream, for good: the table deleted and recreated too.
	if err := lookup(def); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		wantAcked(t, dial(t, wc, dp).append(def, -1, row))
	}
	if err := c.Dataset(dsID).Table("t").Delete(t.Context()); err != nil {
		t.Fatal(err)
	}
	createTable(t, c, "t", schema)
	wantAcked(t, dial(t, wc, dp).append(def, -1, row))
	// Explicit streams are registered by their creation.
	ws := createCommitted(t, wc, "free")
	wantWritten(t, dial(t, wc, dp).append(ws.GetName(), 0, row), 0)

	srv.RequireStreamLookup(false)
	wantAcked(t, dial(t, wc, dp).append(parentOf("later")+"/streams/_default", -1, row))
	if n := srv.RowCount(project, dsID, "t"); n != 1 {
		t.Fatalf("%d rows in the recreated table, want 1", n)
	}
}

func TestStallReads(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{{Name: "b", Type: bigquery.BytesFieldType}}
	createTable(t, c, "t", schema)
	md, dp := descriptorFor(t, schema)
	wc := rawClient(t, srv)
	def := parentOf("t") + "/streams/_default"
	small := [][]byte{newMsg(t, md).set("b", []byte{1}).bytes()}
	big := [][]byte{newMsg(t, md).set("b", bytes.Repeat([]byte{2}, 1<<20)).bytes()}

	cn := dial(t, wc, dp)
	wantAcked(t, cn.append(def, -1, small))
	// A request sent before the stall is answered during it.
	srv.SetAppendLatency(300 * time.Millisecond)
	before := srv.AppendsReceived()
	cn.send(def, -1, small)
	eventually(t, 5*time.Second, "the request to be read", func() bool { return srv.AppendsReceived() == before+1 })
	srv.StallReads(true)
	if resp, err := cn.recv(); err != nil {
		t.Fatalf("answer to a request read before the stall: %v", err)
	} else if resp.GetError() != nil {
		t.Fatalf("answer to a request read before the stall: %v", resp.GetError())
	}
	srv.SetAppendLatency(0)

	// Requests sent now are not read: the sender soon blocks.
	const n = 64
	var sent atomic.Int64
	sendDone := make(chan error, 1)
	go func() {
		for range n {
			req := &storagepb.AppendRowsRequest{Rows: &storagepb.AppendRowsRequest_ProtoRows{
				ProtoRows: &storagepb.AppendRowsRequest_ProtoData{Rows: &storagepb.ProtoRows{SerializedRows: big}}}}
			if err := cn.rpc.Send(req); err != nil {
				sendDone <- err
				return
			}
			sent.Add(1)
		}
		sendDone <- nil
	}()
	var last int64 = -1
	eventually(t, 20*time.Second, "Send to block", func() bool {
		time.Sleep(300 * time.Millisecond)
		cur := sent.Load()
		stuck := cur == last
		last = cur
		return stuck
	})
	t.Logf("%d requests of 1 MiB sent before Send blocked", sent.Load())
	if got := sent.Load(); got == n {
		t.Fatalf("all %d requests of 1 MiB sent while reads were stalled", n)
	}
	// The connection was back to waiting for a request when the stall
	// began, or about to be: at most one more is read.
	if rows, read := srv.RowCount(project, dsID, "t"), srv.AppendsReceived(); rows > 3 || read > before+2 {
		t.Fatalf("%d rows written and %d requests read while stalled, want at most 3 and %d", rows, read, before+2)
	}

	srv.StallReads(false)
	if err := <-sendDone; err != nil {
		t.Fatalf("send after reads resumed: %v", err)
	}
	for i := range n {
		resp, err := cn.recv()
		if err != nil || resp.GetError() != nil {
			t.Fatalf("answer %d after reads resumed: %v %v", i, err, resp.GetError())
		}
	}
	if rows := srv.RowCount(project, dsID, "t"); rows != 2+n {
		t.Fatalf("%d rows, want %d", rows, 2+n)
	}
}

// wantAcked fails unless resp acknowledges an append to the default stream.
func wantAcked(t *testing.T, resp *storagepb.AppendRowsResponse) {
	t.Helper()
	if e := resp.GetError(); e != nil || resp.GetAppendResult() == nil {
		t.Fatalf("append failed: %v", resp)
	}
}
