package bqfake_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"google.golang.org/api/iterator"

	"github.com/bqsink/bqsink/integration/bqfake"
)

func TestDatasetAndTableLifecycle(t *testing.T) {
	srv := newServer(t)
	c := restClient(t, srv)
	ctx := t.Context()

	ds := c.Dataset(dsID)
	if _, err := ds.Metadata(ctx); googleAPIError(t, err).Code != http.StatusNotFound {
		t.Fatalf("metadata of missing dataset: %v", err)
	}
	if err := ds.Table("t").Create(ctx, &bigquery.TableMetadata{}); googleAPIError(t, err).Code != http.StatusNotFound {
		t.Fatalf("table in missing dataset: %v", err)
	}
	if err := ds.Create(ctx, &bigquery.DatasetMetadata{Description: "d"}); err != nil {
		t.Fatalf("create dataset: %v", err)
	}
	if err := ds.Create(ctx, nil); googleAPIError(t, err).Code != http.StatusConflict {
		t.Fatalf("duplicate dataset: %v", err)
	}
	dmd, err := ds.Metadata(ctx)
	if err != nil {
		t.Fatalf("dataset metadata: %v", err)
	}
	if dmd.FullID != project+":"+dsID || dmd.Description != "d" || dmd.ETag == "" {
		t.Fatalf("dataset metadata = %+v", dmd)
	}

	schema := bigquery.Schema{
		{Name: "id", Type: bigquery.IntegerFieldType, Required: true},
		{Name: "rec", Type: bigquery.RecordFieldType, Schema: bigquery.Schema{
			{Name: "x", Type: bigquery.StringFieldType, Repeated: true},
		}},
	}
	tbl := createTable(t, c, "t", schema)
	if err := tbl.Create(ctx, &bigquery.TableMetadata{Schema: schema}); googleAPIError(t, err).Code != http.StatusConflict {
		t.Fatalf("duplicate table: %v", err)
	}
	md, err := tbl.Metadata(ctx)
	if err != nil {
		t.Fatalf("table metadata: %v", err)
	}
	if md.FullID != project+":"+dsID+".t" || md.ETag == "" || md.Type != bigquery.RegularTable || md.NumRows != 0 {
		t.Fatalf("table metadata = %+v", md)
	}
	if !sameSchema(md.Schema, schema) {
		t.Fatalf("schema read back = %v, want %v", describe(md.Schema), describe(schema))
	}

	bad := bigquery.Schema{{Name: "r", Type: bigquery.RecordFieldType}}
	if err := ds.Table("bad").Create(ctx, &bigquery.TableMetadata{Schema: bad}); googleAPIError(t, err).Code != http.StatusBadRequest {
		t.Fatalf("RECORD without fields: %v", err)
	}

	if err := tbl.Delete(ctx); err != nil {
		t.Fatalf("delete table: %v", err)
	}
	if _, err := tbl.Metadata(ctx); googleAPIError(t, err).Code != http.StatusNotFound {
		t.Fatalf("metadata after delete: %v", err)
	}
	if err := tbl.Delete(ctx); googleAPIError(t, err).Code != http.StatusNotFound {
		t.Fatalf("second delete: %v", err)
	}
}

func TestPatchSchema(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	ctx := t.Context()
	base := bigquery.Schema{
		{Name: "id", Type: bigquery.IntegerFieldType, Required: true},
		{Name: "name", Type: bigquery.StringFieldType, Required: true},
		{Name: "rec", Type: bigquery.RecordFieldType, Schema: bigquery.Schema{
			{Name: "x", Type: bigquery.StringFieldType},
		}},
	}
	tbl := createTable(t, c, "t", base)
	md, err := tbl.Metadata(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Add a top-level and a nested column and relax a REQUIRED one.
	evolved := bigquery.Schema{
		{Name: "id", Type: bigquery.IntegerFieldType, Required: true},
		{Name: "name", Type: bigquery.StringFieldType},
		{Name: "rec", Type: bigquery.RecordFieldType, Schema: bigquery.Schema{
			{Name: "x", Type: bigquery.StringFieldType},
			{Name: "y", Type: bigquery.NumericFieldType},
		}},
		{Name: "tags", Type: bigquery.StringFieldType, Repeated: true},
	}
	md2, err := tbl.Update(ctx, bigquery.TableMetadataToUpdate{Schema: evolved}, md.ETag)
	if err != nil {
		t.Fatalf("compatible patch: %v", err)
	}
	if !sameSchema(md2.Schema, evolved) {
		t.Fatalf("patched schema = %v, want %v", describe(md2.Schema), describe(evolved))
	}
	if md2.ETag == md.ETag {
		t.Fatal("etag did not change on patch")
	}

	// The old etag is stale now.
	_, err = tbl.Update(ctx, bigquery.TableMetadataToUpdate{Description: "x"}, md.ETag)
	if ge := googleAPIError(t, err); ge.Code != http.StatusPreconditionFailed {
		t.Fatalf("stale etag: got %v, want 412", err)
	}

	refused := []struct {
		name   string
		schema bigquery.Schema
		column string
	}{
		{"retype", replace(evolved, 0, &bigquery.FieldSchema{Name: "id", Type: bigquery.StringFieldType, Required: true}), "id"},
		{"drop", evolved[1:], "id"},
		{"rename", replace(evolved, 3, &bigquery.FieldSchema{Name: "labels", Type: bigquery.StringFieldType, Repeated: true}), "tags"},
		{"new required", append(evolved[:4:4], &bigquery.FieldSchema{Name: "must", Type: bigquery.IntegerFieldType, Required: true}), "must"},
		{"tighten", replace(evolved, 1, &bigquery.FieldSchema{Name: "name", Type: bigquery.StringFieldType, Required: true}), "name"},
		{"nested retype", replace(evolved, 2, &bigquery.FieldSchema{Name: "rec", Type: bigquery.RecordFieldType, Schema: bigquery.Schema{
			{Name: "x", Type: bigquery.IntegerFieldType},
			{Name: "y", Type: bigquery.NumericFieldType},
		}}), "rec.x"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tbl.Update(ctx, bigquery.TableMetadataToUpdate{Schema: tc.schema}, "")
			ge := googleAPIError(t, err)
			if ge.Code != http.StatusBadRequest || !strings.Contains(ge.Message, tc.column) {
				t.Fatalf("got %v, want 400 naming %q", err, tc.column)
			}
		})
	}
	md3, err := tbl.Metadata(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if md3.ETag != md2.ETag || !sameSchema(md3.Schema, evolved) {
		t.Fatal("a refused patch changed the table")
	}
}

func TestFailREST(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	ctx := t.Context()

	srv.FailREST(1, http.StatusForbidden)
	_, err := c.Dataset(dsID).Metadata(ctx)
	if ge := googleAPIError(t, err); ge.Code != http.StatusForbidden || len(ge.Errors) != 1 || ge.Errors[0].Reason != "accessDenied" {
		t.Fatalf("injected 403: %v", err)
	}
	if _, err := c.Dataset(dsID).Metadata(ctx); err != nil {
		t.Fatalf("after the injected failure: %v", err)
	}

	// The client retries 503 by itself, so the call succeeds after one retry.
	srv.FailREST(1, http.StatusServiceUnavailable)
	if _, err := c.Dataset(dsID).Metadata(ctx); err != nil {
		t.Fatalf("503 should have been retried: %v", err)
	}
}

func TestTableDataPaging(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{{Name: "n", Type: bigquery.IntegerFieldType}}
	tbl := createTable(t, c, "t", schema)
	md, dp := descriptorFor(t, schema)
	var rows [][]byte
	for i := range 7 {
		rows = append(rows, newMsg(t, md).set("n", int64(i)).bytes())
	}
	appendDefault(t, writeClient(t, srv), "t", dp, rows)

	it := tbl.Read(t.Context())
	it.PageInfo().MaxSize = 3
	var got []int64
	for {
		var row []bigquery.Value
		err := it.Next(&row)
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, row[0].(int64))
	}
	if len(got) != 7 || it.TotalRows != 7 {
		t.Fatalf("read %v (total %d), want 0..6", got, it.TotalRows)
	}
	for i, n := range got {
		if n != int64(i) {
			t.Fatalf("row %d = %d: rows out of order: %v", i, n, got)
		}
	}
}

func replace(s bigquery.Schema, i int, f *bigquery.FieldSchema) bigquery.Schema {
	out := append(bigquery.Schema(nil), s...)
	out[i] = f
	return out
}

func sameSchema(a, b bigquery.Schema) bool { return describe(a) == describe(b) }

// describe renders the parts of a schema BigQuery keeps.
func describe(s bigquery.Schema) string {
	var sb strings.Builder
	for _, f := range s {
		sb.WriteString(f.Name + ":" + string(f.Type))
		if f.Required {
			sb.WriteString("!")
		}
		if f.Repeated {
			sb.WriteString("*")
		}
		if len(f.Schema) > 0 {
			sb.WriteString("{" + describe(f.Schema) + "}")
		}
		sb.WriteString(" ")
	}
	return sb.String()
}

func TestRESTLatency(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	const latency = 300 * time.Millisecond
	srv.SetRESTLatency(latency)

	// A client that gives up first gets nothing.
	short, cancel := context.WithTimeout(t.Context(), latency/3)
	defer cancel()
	if _, err := c.Dataset(dsID).Metadata(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call shorter than the latency: %v, want a deadline error", err)
	}
	start := time.Now()
	if _, err := c.Dataset(dsID).Metadata(t.Context()); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < latency {
		t.Fatalf("answered after %v, before the %v latency", took, latency)
	}
	srv.SetRESTLatency(0)
	start = time.Now()
	if _, err := c.Dataset(dsID).Metadata(t.Context()); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took >= latency {
		t.Fatalf("answered after %v with the latency off", took)
	}

	// Close does not wait for a held response.
	srv.SetRESTLatency(time.Hour)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Dataset(dsID).Metadata(ctx)
		errc <- err
	}()
	eventually(t, 5*time.Second, "the call to reach the server", func() bool { return srv.RESTHeld() > 0 })
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for a held REST response")
	}
	cancel() // the client retries a closed server until its context ends
	if err := <-errc; err == nil {
		t.Fatal("call answered although the server closed")
	}
}

func TestMaxLengthSchema(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{
		{Name: "s", Type: bigquery.StringFieldType, MaxLength: 10},
		{Name: "b", Type: bigquery.BytesFieldType, MaxLength: 4},
	}
	tbl := createTable(t, c, "t", schema)
	md, err := tbl.Metadata(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if md.Schema[0].MaxLength != 10 || md.Schema[1].MaxLength != 4 {
		t.Fatalf("tables.get schema = %+v %+v, want maxLength 10 and 4", md.Schema[0], md.Schema[1])
	}
	err = c.Dataset(dsID).Table("bad").Create(t.Context(), &bigquery.TableMetadata{Schema: bigquery.Schema{
		{Name: "n", Type: bigquery.IntegerFieldType, MaxLength: 3},
	}})
	if ge := googleAPIError(t, err); ge.Code != http.StatusBadRequest || !strings.Contains(ge.Message, "maxLength") {
		t.Fatalf("maxLength on INTEGER: %v, want 400 naming maxLength", err)
	}
}
