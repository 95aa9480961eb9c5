package bqfake_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	storage "cloud.google.com/go/bigquery/storage/apiv1"
	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"cloud.google.com/go/bigquery/storage/managedwriter"
	"cloud.google.com/go/bigquery/storage/managedwriter/adapt"
	"cloud.google.com/go/civil"
	"github.com/googleapis/gax-go/v2/apierror"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/bqsink/bqsink/integration/bqfake"
)

func parentOf(table string) string { return managedwriter.TableParentFromParts(project, dsID, table) }

func openStream(ctx context.Context, mw *managedwriter.Client, table string, typ managedwriter.StreamType, dp *descriptorpb.DescriptorProto, opts ...managedwriter.WriterOption) (*managedwriter.ManagedStream, error) {
	all := append([]managedwriter.WriterOption{
		managedwriter.WithDestinationTable(parentOf(table)),
		managedwriter.WithType(typ),
		managedwriter.WithSchemaDescriptor(dp),
	}, opts...)
	return mw.NewManagedStream(ctx, all...)
}

func mustOpen(t *testing.T, mw *managedwriter.Client, table string, typ managedwriter.StreamType, dp *descriptorpb.DescriptorProto, opts ...managedwriter.WriterOption) *managedwriter.ManagedStream {
	t.Helper()
	ms, err := openStream(t.Context(), mw, table, typ, dp, opts...)
	if err != nil {
		t.Fatalf("open %s stream on %s: %v", typ, table, err)
	}
	t.Cleanup(func() { _ = ms.Close() })
	return ms
}

func send(t *testing.T, ms *managedwriter.ManagedStream, rows [][]byte, opts ...managedwriter.AppendOption) *managedwriter.AppendResult {
	t.Helper()
	r, err := ms.AppendRows(t.Context(), rows, opts...)
	if err != nil {
		t.Fatalf("send append: %v", err)
	}
	return r
}

// ok waits for an append to succeed and returns its offset.
func ok(t *testing.T, r *managedwriter.AppendResult) int64 {
	t.Helper()
	off, err := r.GetResult(t.Context())
	if err != nil {
		t.Fatalf("append failed: %v", err)
	}
	return off
}

// failsWith waits for an append to fail with code and returns the error.
func failsWith(t *testing.T, r *managedwriter.AppendResult, code codes.Code) error {
	t.Helper()
	_, err := r.GetResult(t.Context())
	if status.Code(err) != code {
		t.Fatalf("append result: got %v, want code %s", err, code)
	}
	return err
}

func appendDefault(t *testing.T, mw *managedwriter.Client, table string, dp *descriptorpb.DescriptorProto, rows [][]byte) {
	t.Helper()
	ok(t, send(t, mustOpen(t, mw, table, managedwriter.DefaultStream, dp), rows))
}

func storageErrorCode(t *testing.T, err error) storagepb.StorageError_StorageErrorCode {
	t.Helper()
	apiErr, isAPI := apierror.FromError(err)
	if !isAPI {
		t.Fatalf("not an APIError: %v", err)
	}
	se := &storagepb.StorageError{}
	if err := apiErr.Details().ExtractProtoMessage(se); err != nil {
		t.Fatalf("no StorageError detail in %v: %v", err, err)
	}
	return se.GetCode()
}

func days(y int, m time.Month, d int) int32 {
	return int32(time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Unix() / 86400)
}

func rat(s string) *big.Rat {
	r, _ := new(big.Rat).SetString(s)
	return r
}

// sameValue compares values read through the client: *big.Rat by value, NaN
// equal to NaN, times by instant, nil and empty slices alike.
func sameValue(a, b bigquery.Value) bool {
	switch av := a.(type) {
	case *big.Rat:
		bv, ok := b.(*big.Rat)
		return ok && av.Cmp(bv) == 0
	case float64:
		bv, ok := b.(float64)
		return ok && (av == bv || math.IsNaN(av) && math.IsNaN(bv))
	case time.Time:
		bv, ok := b.(time.Time)
		return ok && av.Equal(bv) && bv.Location() == time.UTC
	case []bigquery.Value:
		bv, ok := b.([]bigquery.Value)
		if !ok || len(av) != len(bv) {
			return false
		}
		for i := range av {
			if !sameValue(av[i], bv[i]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}

func TestAppendRoundTripsEveryType(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{
		{Name: "b", Type: bigquery.BooleanFieldType},
		{Name: "i", Type: bigquery.IntegerFieldType, Required: true},
		{Name: "f", Type: bigquery.FloatFieldType},
		{Name: "s", Type: bigquery.StringFieldType},
		{Name: "by", Type: bigquery.BytesFieldType},
		{Name: "n", Type: bigquery.NumericFieldType},
		{Name: "bn", Type: bigquery.BigNumericFieldType},
		{Name: "d", Type: bigquery.DateFieldType},
		{Name: "tm", Type: bigquery.TimeFieldType},
		{Name: "dt", Type: bigquery.DateTimeFieldType},
		{Name: "ts", Type: bigquery.TimestampFieldType},
		{Name: "rec", Type: bigquery.RecordFieldType, Schema: bigquery.Schema{
			{Name: "x", Type: bigquery.IntegerFieldType},
			{Name: "tags", Type: bigquery.StringFieldType, Repeated: true},
			{Name: "inner", Type: bigquery.RecordFieldType, Schema: bigquery.Schema{
				{Name: "y", Type: bigquery.StringFieldType},
			}},
		}},
		{Name: "ints", Type: bigquery.IntegerFieldType, Repeated: true},
		{Name: "recs", Type: bigquery.RecordFieldType, Repeated: true, Schema: bigquery.Schema{
			{Name: "k", Type: bigquery.StringFieldType},
			{Name: "v", Type: bigquery.FloatFieldType},
		}},
	}
	tbl := createTable(t, c, "all", schema)
	md, dp := descriptorFor(t, schema)

	const bigNum = "-12345678901234567890123456789012345678.12345678901234567890123456789012345678"
	ts := time.Date(2024, 3, 1, 12, 0, 0, 123456000, time.UTC)
	full := newMsg(t, md).
		set("b", true).set("i", int64(-42)).set("f", 3.25).set("s", "héllo ✓").
		set("by", []byte{0, 1, 2, 255}).set("n", "-123.4500").set("bn", bigNum).
		set("d", days(2024, 2, 29)).set("tm", "15:04:05.123456").
		set("dt", "2024-02-29 23:59:58.000001").set("ts", ts.UnixMicro()).
		add("ints", int64(1), int64(2), int64(3))
	rec := full.sub("rec").set("x", int64(7)).add("tags", "a", "b")
	rec.sub("inner").set("y", "deep")
	full.addMsg("recs").set("k", "k1").set("v", 1.5)
	full.addMsg("recs").set("k", "k2")

	nulls := newMsg(t, md).set("i", int64(0))

	edges := newMsg(t, md).set("i", int64(math.MaxInt64)).set("f", math.NaN()).
		set("n", "99999999999999999999999999999.999999999").
		set("d", days(1, 1, 1)).set("tm", "00:00:00").set("dt", "0001-01-01T00:00:00").
		set("ts", time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC).UnixMicro()).
		set("by", []byte{})

	mw := writeClient(t, srv)
	appendDefault(t, mw, "all", dp, [][]byte{full.bytes(), nulls.bytes(), edges.bytes()})

	want := [][]bigquery.Value{
		{
			true, int64(-42), 3.25, "héllo ✓", []byte{0, 1, 2, 255}, rat("-123.45"), rat(bigNum),
			civil.Date{Year: 2024, Month: 2, Day: 29}, civil.Time{Hour: 15, Minute: 4, Second: 5, Nanosecond: 123456000},
			civil.DateTime{Date: civil.Date{Year: 2024, Month: 2, Day: 29}, Time: civil.Time{Hour: 23, Minute: 59, Second: 58, Nanosecond: 1000}},
			ts,
			[]bigquery.Value{int64(7), []bigquery.Value{"a", "b"}, []bigquery.Value{"deep"}},
			[]bigquery.Value{int64(1), int64(2), int64(3)},
			[]bigquery.Value{[]bigquery.Value{"k1", 1.5}, []bigquery.Value{"k2", nil}},
		},
		{nil, int64(0), nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, []bigquery.Value(nil), []bigquery.Value(nil)},
		{
			nil, int64(math.MaxInt64), math.NaN(), nil, []byte{}, rat("99999999999999999999999999999.999999999"), nil,
			civil.Date{Year: 1, Month: 1, Day: 1}, civil.Time{},
			civil.DateTime{Date: civil.Date{Year: 1, Month: 1, Day: 1}},
			time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC),
			nil, []bigquery.Value(nil), []bigquery.Value(nil),
		},
	}
	got := readAll(t, tbl)
	if len(got) != len(want) {
		t.Fatalf("read %d rows, want %d", len(got), len(want))
	}
	for r := range want {
		for i, f := range schema {
			if !sameValue(want[r][i], got[r][i]) {
				t.Errorf("row %d column %s: got %#v, want %#v", r, f.Name, got[r][i], want[r][i])
			}
		}
	}

	// The debugging view holds the project's row value contract types.
	stored := srv.Rows(project, dsID, "all")
	if srv.RowCount(project, dsID, "all") != 3 || len(stored) != 3 {
		t.Fatalf("RowCount = %d, len(Rows) = %d, want 3", srv.RowCount(project, dsID, "all"), len(stored))
	}
	wantStored := map[string]any{
		"n": "-123.45", "d": days(2024, 2, 29), "tm": "15:04:05.123456",
		"dt": "2024-02-29 23:59:58.000001", "ts": ts.UnixMicro(), "i": int64(-42),
	}
	for k, v := range wantStored {
		if !reflect.DeepEqual(stored[0][k], v) {
			t.Errorf("Rows()[0][%q] = %#v, want %#v", k, stored[0][k], v)
		}
	}
	if _, present := stored[1]["b"]; present || !reflect.DeepEqual(stored[1]["ints"], []any{}) {
		t.Errorf("Rows()[1] = %#v, want NULL b and empty ints", stored[1])
	}
}

func TestAppendProto3WrapperDescriptor(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{
		{Name: "i", Type: bigquery.IntegerFieldType},
		{Name: "s", Type: bigquery.StringFieldType},
	}
	tbl := createTable(t, c, "t", schema)
	ss, err := adapt.BQSchemaToStorageTableSchema(schema)
	if err != nil {
		t.Fatal(err)
	}
	d, err := adapt.StorageSchemaToProto3Descriptor(ss, "root")
	if err != nil {
		t.Fatal(err)
	}
	md := d.(protoreflect.MessageDescriptor)
	dp, err := adapt.NormalizeDescriptor(md)
	if err != nil {
		t.Fatal(err)
	}
	row := newMsg(t, md)
	row.sub("i").set("value", int64(5))
	appendDefault(t, writeClient(t, srv), "t", dp, [][]byte{row.bytes()})
	got := readAll(t, tbl)
	if len(got) != 1 || got[0][0] != int64(5) || got[0][1] != nil {
		t.Fatalf("read %v, want [[5 <nil>]]", got)
	}
}

func TestRowErrorsRejectWholeRequest(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{
		{Name: "id", Type: bigquery.IntegerFieldType, Required: true},
		{Name: "n", Type: bigquery.NumericFieldType},
		{Name: "d", Type: bigquery.DateFieldType},
		{Name: "tm", Type: bigquery.TimeFieldType},
		{Name: "dt", Type: bigquery.DateTimeFieldType},
		{Name: "s", Type: bigquery.StringFieldType},
		{Name: "rec", Type: bigquery.RecordFieldType, Schema: bigquery.Schema{
			{Name: "r", Type: bigquery.IntegerFieldType, Required: true},
		}},
	}
	createTable(t, c, "t", schema)
	md, dp := descriptorFor(t, schema)
	ms := mustOpen(t, writeClient(t, srv), "t", managedwriter.DefaultStream, dp)
	good := func() msg { return newMsg(t, md).set("id", int64(1)) }

	cases := []struct {
		name  string
		row   msg
		field string
	}{
		{"missing required", newMsg(t, md).set("n", "1"), "id"},
		{"missing nested required", func() msg { m := good(); m.sub("rec"); return m }(), "rec.r"},
		{"invalid numeric", good().set("n", "12abc"), "n"},
		{"numeric out of range", good().set("n", "1e29"), "n"},
		{"date out of range", good().set("d", int32(3000000)), "d"},
		{"invalid time", good().set("tm", "24:00:00"), "tm"},
		{"invalid datetime", good().set("dt", "2023-02-29 00:00:00"), "dt"},
		{"invalid utf-8", good().set("s", "\xff"), "s"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := send(t, ms, [][]byte{good().bytes(), tc.row.bytes()})
			failsWith(t, r, codes.InvalidArgument)
			resp, _ := r.FullResponse(t.Context())
			errs := resp.GetRowErrors()
			if len(errs) != 1 || errs[0].GetIndex() != 1 || errs[0].GetCode() != storagepb.RowError_FIELDS_ERROR ||
				!strings.Contains(errs[0].GetMessage(), "Field "+tc.field+":") {
				t.Fatalf("row errors = %v, want one FIELDS_ERROR at index 1 naming %q", errs, tc.field)
			}
		})
	}

	r := send(t, ms, [][]byte{good().bytes(), good().set("n", "x").bytes(), good().bytes(), newMsg(t, md).bytes()})
	failsWith(t, r, codes.InvalidArgument)
	resp, _ := r.FullResponse(t.Context())
	if errs := resp.GetRowErrors(); len(errs) != 2 || errs[0].GetIndex() != 1 || errs[1].GetIndex() != 3 {
		t.Fatalf("row errors = %v, want indexes 1 and 3", errs)
	}
	if n := srv.RowCount(project, dsID, "t"); n != 0 {
		t.Fatalf("%d rows written, want none from requests with row errors", n)
	}
	ok(t, send(t, ms, [][]byte{good().bytes()}))
	if n := srv.RowCount(project, dsID, "t"); n != 1 {
		t.Fatalf("%d rows after a good append, want 1", n)
	}
}

func TestNumericRoundingAndRange(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{
		{Name: "n", Type: bigquery.NumericFieldType},
		{Name: "p", Type: bigquery.NumericFieldType, Precision: 5, Scale: 2},
		{Name: "bn", Type: bigquery.BigNumericFieldType},
	}
	tbl := createTable(t, c, "t", schema)
	md, dp := descriptorFor(t, schema)
	ms := mustOpen(t, writeClient(t, srv), "t", managedwriter.DefaultStream, dp)

	// Extra digits round half away from zero, BigQuery's default rounding mode.
	ok(t, send(t, ms, [][]byte{
		newMsg(t, md).set("n", "1.0000000005").set("p", "123.455").set("bn", "5.7896044618658097711785492504343953926634992332820282019728792003956564819967e38").bytes(),
		newMsg(t, md).set("n", "-1.0000000005").set("p", "-0.004").bytes(),
	}))
	got := readAll(t, tbl)
	want := [][]bigquery.Value{
		{rat("1.000000001"), rat("123.46"), rat("578960446186580977117854925043439539266.34992332820282019728792003956564819967")},
		{rat("-1.000000001"), rat("0"), nil},
	}
	for r := range want {
		for i := range want[r] {
			if !sameValue(got[r][i], want[r][i]) {
				t.Errorf("row %d %s = %v, want %v", r, schema[i].Name, got[r][i], want[r][i])
			}
		}
	}

	for field, v := range map[string]string{"p": "999.995", "bn": "5.7896044618658097711785492504343953926634992332820282019728792003956564819968e38"} {
		r := send(t, ms, [][]byte{newMsg(t, md).set(field, v).bytes()})
		failsWith(t, r, codes.InvalidArgument)
		resp, _ := r.FullResponse(t.Context())
		if errs := resp.GetRowErrors(); len(errs) != 1 || !strings.Contains(errs[0].GetMessage(), "Field "+field+":") {
			t.Errorf("%s = %s: row errors %v, want one naming %s", field, v, errs, field)
		}
	}
}

func TestWriterSchemaMismatch(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	createTable(t, c, "t", bigquery.Schema{{Name: "id", Type: bigquery.IntegerFieldType}})
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

	md2, dp2 := descriptorFor(t, bigquery.Schema{{Name: "id", Type: bigquery.StringFieldType}})
	ms2 := mustOpen(t, mw, "t", managedwriter.DefaultStream, dp2)
	err = failsWith(t, send(t, ms2, [][]byte{newMsg(t, md2).set("id", "1").bytes()}), codes.InvalidArgument)
	if !strings.Contains(err.Error(), "mismatched") || !strings.Contains(err.Error(), "id") {
		t.Fatalf("error %q does not report the type mismatch of id", err)
	}
	if n := srv.RowCount(project, dsID, "t"); n != 0 {
		t.Fatalf("%d rows written", n)
	}
}

func TestSchemaDelay(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	mw := writeClient(t, srv)
	const delay = time.Second
	srv.SetSchemaDelay(delay)

	v1 := bigquery.Schema{{Name: "id", Type: bigquery.IntegerFieldType}}
	tbl := createTable(t, c, "t", v1)
	if _, err := tbl.Metadata(t.Context()); err != nil {
		t.Fatalf("REST must see a new table at once: %v", err)
	}
	md1, dp1 := descriptorFor(t, v1)
	if _, err := openStream(t.Context(), mw, "t", managedwriter.DefaultStream, dp1); status.Code(err) != codes.NotFound {
		t.Fatalf("write path before the delay: got %v, want NOT_FOUND", err)
	}
	var ms1 *managedwriter.ManagedStream
	eventually(t, 3*delay, "the new table to reach the write path", func() bool {
		var err error
		ms1, err = openStream(t.Context(), mw, "t", managedwriter.DefaultStream, dp1)
		return err == nil
	})
	t.Cleanup(func() { _ = ms1.Close() })
	ok(t, send(t, ms1, [][]byte{newMsg(t, md1).set("id", int64(1)).bytes()}))

	v2 := append(v1[:1:1], &bigquery.FieldSchema{Name: "note", Type: bigquery.StringFieldType})
	if _, err := tbl.Update(t.Context(), bigquery.TableMetadataToUpdate{Schema: v2}, ""); err != nil {
		t.Fatalf("patch: %v", err)
	}
	if md, err := tbl.Metadata(t.Context()); err != nil || len(md.Schema) != 2 {
		t.Fatalf("REST must see the patch at once: %v", err)
	}
	md2, dp2 := descriptorFor(t, v2)
	ms2 := mustOpen(t, mw, "t", managedwriter.DefaultStream, dp2)
	withNote := func() [][]byte { return [][]byte{newMsg(t, md2).set("id", int64(2)).set("note", "n").bytes()} }
	err := failsWith(t, send(t, ms2, withNote()), codes.InvalidArgument)
	if !strings.Contains(err.Error(), "note") {
		t.Fatalf("refusal %q does not name the new column", err)
	}
	r := send(t, ms1, [][]byte{newMsg(t, md1).set("id", int64(3)).bytes()})
	ok(t, r)
	if us, _ := r.UpdatedSchema(t.Context()); us != nil {
		t.Fatalf("updated_schema before the write path saw the change: %v", us)
	}

	eventually(t, 3*delay, "the patched column to be accepted", func() bool {
		_, err := send(t, ms2, withNote()).GetResult(t.Context())
		return err == nil
	})
	r = send(t, ms1, [][]byte{newMsg(t, md1).set("id", int64(4)).bytes()})
	ok(t, r)
	us, _ := r.UpdatedSchema(t.Context())
	if fs := us.GetFields(); len(fs) != 2 || fs[1].GetName() != "note" {
		t.Fatalf("updated_schema = %v, want the patched schema", us)
	}
}

func TestUpdateSchemaDescriptorMidConnection(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts []option.ClientOption
	}{
		{"simplex", nil},
		{"multiplex", []option.ClientOption{managedwriter.WithMultiplexing()}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			srv := newServer(t, bqfake.Dataset(project, dsID))
			c := restClient(t, srv)
			mw := writeClient(t, srv, mode.opts...)
			v1 := bigquery.Schema{{Name: "id", Type: bigquery.IntegerFieldType, Required: true}}
			tbl := createTable(t, c, "t", v1)
			md1, dp1 := descriptorFor(t, v1)
			ms := mustOpen(t, mw, "t", managedwriter.DefaultStream, dp1)
			r := send(t, ms, [][]byte{newMsg(t, md1).set("id", int64(1)).bytes()})
			ok(t, r)
			if us, _ := r.UpdatedSchema(t.Context()); us != nil {
				t.Fatalf("unexpected updated_schema %v", us)
			}
			// A second writer: with multiplexing both share one connection,
			// so the schema change below travels on it without a reconnect.
			other := createTable(t, c, "u", v1)
			msOther := mustOpen(t, mw, "u", managedwriter.DefaultStream, dp1)
			ok(t, send(t, msOther, [][]byte{newMsg(t, md1).set("id", int64(10)).bytes()}))

			v2 := append(v1[:1:1], &bigquery.FieldSchema{Name: "note", Type: bigquery.StringFieldType})
			if _, err := tbl.Update(t.Context(), bigquery.TableMetadataToUpdate{Schema: v2}, ""); err != nil {
				t.Fatal(err)
			}
			r = send(t, ms, [][]byte{newMsg(t, md1).set("id", int64(2)).bytes()})
			ok(t, r)
			us, _ := r.UpdatedSchema(t.Context())
			if fs := us.GetFields(); len(fs) != 2 || fs[1].GetName() != "note" || fs[1].GetMode() != storagepb.TableFieldSchema_NULLABLE {
				t.Fatalf("updated_schema = %v, want id + NULLABLE note", us)
			}

			md2, dp2 := descriptorFor(t, v2)
			r = send(t, ms, [][]byte{newMsg(t, md2).set("id", int64(3)).set("note", "hi").bytes()}, managedwriter.UpdateSchemaDescriptor(dp2))
			ok(t, r)
			ok(t, send(t, msOther, [][]byte{newMsg(t, md1).set("id", int64(11)).bytes()}))
			r = send(t, ms, [][]byte{newMsg(t, md2).set("id", int64(4)).set("note", "again").bytes()})
			ok(t, r)
			if us, _ := r.UpdatedSchema(t.Context()); us != nil {
				t.Fatalf("updated_schema after the client adopted it: %v", us)
			}
			if got := readAll(t, other); !reflect.DeepEqual(got, [][]bigquery.Value{{int64(10)}, {int64(11)}}) {
				t.Fatalf("other table read %v", got)
			}

			got := readAll(t, tbl)
			want := [][]bigquery.Value{{int64(1), nil}, {int64(2), nil}, {int64(3), "hi"}, {int64(4), "again"}}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("read %v, want %v", got, want)
			}
		})
	}
}

func TestExplicitStreams(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{{Name: "n", Type: bigquery.IntegerFieldType}}
	tbl := createTable(t, c, "t", schema)
	md, dp := descriptorFor(t, schema)
	mw := writeClient(t, srv)
	rows := func(ns ...int64) [][]byte {
		var out [][]byte
		for _, n := range ns {
			out = append(out, newMsg(t, md).set("n", n).bytes())
		}
		return out
	}
	count := func() int { return len(readAll(t, tbl)) }

	t.Run("committed offsets", func(t *testing.T) {
		ms := mustOpen(t, mw, "t", managedwriter.CommittedStream, dp)
		if off := ok(t, send(t, ms, rows(0, 1), managedwriter.WithOffset(0))); off != 0 {
			t.Fatalf("offset = %d, want 0", off)
		}
		err := failsWith(t, send(t, ms, rows(9), managedwriter.WithOffset(1)), codes.AlreadyExists)
		if code := storageErrorCode(t, err); code != storagepb.StorageError_OFFSET_ALREADY_EXISTS {
			t.Fatalf("StorageError = %s", code)
		}
		err = failsWith(t, send(t, ms, rows(9), managedwriter.WithOffset(5)), codes.OutOfRange)
		if code := storageErrorCode(t, err); code != storagepb.StorageError_OFFSET_OUT_OF_RANGE {
			t.Fatalf("StorageError = %s", code)
		}
		if off := ok(t, send(t, ms, rows(2), managedwriter.WithOffset(2))); off != 2 {
			t.Fatalf("offset = %d, want 2", off)
		}
		if off := ok(t, send(t, ms, rows(3))); off != 3 {
			t.Fatalf("offset without WithOffset = %d, want 3", off)
		}
		if n, err := ms.Finalize(t.Context()); err != nil || n != 4 {
			t.Fatalf("finalize = %d, %v; want 4 rows", n, err)
		}
		failsWith(t, send(t, ms, rows(4)), codes.InvalidArgument)
		if got := count(); got != 4 {
			t.Fatalf("%d rows visible, want 4", got)
		}
	})

	t.Run("pending", func(t *testing.T) {
		ms := mustOpen(t, mw, "t", managedwriter.PendingStream, dp)
		ok(t, send(t, ms, rows(10, 11)))
		if got := count(); got != 4 {
			t.Fatalf("pending rows visible before commit: %d rows", got)
		}
		req := &storagepb.BatchCommitWriteStreamsRequest{Parent: parentOf("t"), WriteStreams: []string{ms.StreamName()}}
		resp, err := mw.BatchCommitWriteStreams(t.Context(), req)
		if err != nil || len(resp.GetStreamErrors()) != 1 || resp.GetStreamErrors()[0].GetCode() != storagepb.StorageError_INVALID_STREAM_STATE {
			t.Fatalf("commit before finalize = %v, %v; want INVALID_STREAM_STATE", resp, err)
		}
		if _, err := ms.Finalize(t.Context()); err != nil {
			t.Fatal(err)
		}
		resp, err = mw.BatchCommitWriteStreams(t.Context(), req)
		if err != nil || resp.GetCommitTime() == nil || len(resp.GetStreamErrors()) != 0 {
			t.Fatalf("commit = %v, %v", resp, err)
		}
		if got := count(); got != 6 {
			t.Fatalf("%d rows visible after commit, want 6", got)
		}
		resp, err = mw.BatchCommitWriteStreams(t.Context(), req)
		if err != nil || len(resp.GetStreamErrors()) != 1 || resp.GetStreamErrors()[0].GetCode() != storagepb.StorageError_STREAM_ALREADY_COMMITTED {
			t.Fatalf("second commit = %v, %v", resp, err)
		}
	})

	t.Run("buffered", func(t *testing.T) {
		ms := mustOpen(t, mw, "t", managedwriter.BufferedStream, dp)
		ok(t, send(t, ms, rows(20, 21, 22)))
		if got := count(); got != 6 {
			t.Fatalf("buffered rows visible before flush: %d rows", got)
		}
		if off, err := ms.FlushRows(t.Context(), 1); err != nil || off != 1 {
			t.Fatalf("flush = %d, %v", off, err)
		}
		if got := count(); got != 8 {
			t.Fatalf("%d rows visible after flushing offset 1, want 8", got)
		}
		if _, err := ms.FlushRows(t.Context(), 5); status.Code(err) != codes.OutOfRange {
			t.Fatalf("flush past the end: %v", err)
		}
	})
}

func TestFailAppends(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{{Name: "n", Type: bigquery.IntegerFieldType}}
	mw := writeClient(t, srv)
	md, dp := descriptorFor(t, schema)
	row := [][]byte{newMsg(t, md).set("n", int64(1)).bytes()}

	cases := []struct {
		code     codes.Code
		retries  bool
		wantCode codes.Code // of the first append
		attempts int
	}{
		{codes.ResourceExhausted, true, codes.OK, 2},
		{codes.Unavailable, true, codes.OK, 2},
		{codes.Unavailable, false, codes.Unavailable, 1},
		{codes.InvalidArgument, true, codes.InvalidArgument, 1},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprintf("%s retries=%v", tc.code, tc.retries), func(t *testing.T) {
			table := fmt.Sprintf("t%d", i)
			createTable(t, c, table, schema)
			ms := mustOpen(t, mw, table, managedwriter.DefaultStream, dp, managedwriter.EnableWriteRetries(tc.retries))
			srv.FailAppends(1, tc.code)
			r := send(t, ms, row)
			_, err := r.GetResult(t.Context())
			if status.Code(err) != tc.wantCode {
				t.Fatalf("first append: got %v, want %s", err, tc.wantCode)
			}
			if n, _ := r.TotalAttempts(t.Context()); n != tc.attempts {
				t.Fatalf("attempts = %d, want %d", n, tc.attempts)
			}
			// The fault is used up and the writer recovers (reconnecting if
			// the stream ended).
			ok(t, send(t, ms, row))
			want := 1
			if tc.wantCode == codes.OK {
				want = 2
			}
			if n := srv.RowCount(project, dsID, table); n != want {
				t.Fatalf("%d rows written, want %d", n, want)
			}
		})
	}
}

func TestAppendLatency(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{{Name: "n", Type: bigquery.IntegerFieldType}}
	createTable(t, c, "t", schema)
	md, dp := descriptorFor(t, schema)
	ms := mustOpen(t, writeClient(t, srv), "t", managedwriter.DefaultStream, dp)
	row := [][]byte{newMsg(t, md).set("n", int64(1)).bytes()}
	ok(t, send(t, ms, row)) // connect before timing

	const latency = 300 * time.Millisecond
	srv.SetAppendLatency(latency)
	start := time.Now()
	var results []*managedwriter.AppendResult
	for range 4 {
		results = append(results, send(t, ms, row))
	}
	short, cancel := context.WithTimeout(t.Context(), latency/4)
	defer cancel()
	if _, err := results[0].GetResult(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("result before the latency passed: %v", err)
	}
	for _, r := range results {
		ok(t, r)
	}
	elapsed := time.Since(start)
	if elapsed < latency {
		t.Fatalf("appends acknowledged after %v, before the %v latency", elapsed, latency)
	}
	// Pipelined requests wait concurrently; serially they would take 4x.
	if elapsed > 3*latency+latency/2 {
		t.Fatalf("4 pipelined appends took %v; latency is not overlapping", elapsed)
	}
}

func TestCloseEndsEverything(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{{Name: "n", Type: bigquery.IntegerFieldType}}
	createTable(t, c, "t", schema)
	md, dp := descriptorFor(t, schema)
	ms := mustOpen(t, writeClient(t, srv), "t", managedwriter.DefaultStream, dp)
	row := [][]byte{newMsg(t, md).set("n", int64(1)).bytes()}
	ok(t, send(t, ms, row))

	srv.Close()
	srv.Close()
	// Bounded: the clients would keep retrying a refused connection.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if r, err := ms.AppendRows(ctx, row); err == nil {
		if _, err := r.GetResult(ctx); err == nil {
			t.Fatal("append succeeded after Close")
		}
	}
	ctx, cancel = context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := c.Dataset(dsID).Metadata(ctx); err == nil {
		t.Fatal("REST call succeeded after Close")
	}
}

func TestMaxLengthRowErrors(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{
		{Name: "reference", Type: bigquery.StringFieldType, MaxLength: 10},
		{Name: "b", Type: bigquery.BytesFieldType, MaxLength: 2},
	}
	createTable(t, c, "t", schema)
	md, dp := descriptorFor(t, schema)
	ms := mustOpen(t, writeClient(t, srv), "t", managedwriter.DefaultStream, dp)

	fits := newMsg(t, md).set("reference", "ünïcødé-10").set("b", []byte{1, 2}) // 10 characters, more bytes
	ok(t, send(t, ms, [][]byte{fits.bytes()}))
	for _, tc := range []struct {
		row  msg
		want string
	}{
		{newMsg(t, md).set("reference", "abcdefghijkl"), "Field reference: STRING(10) has maximum length 10 but got a value with length 12"},
		{newMsg(t, md).set("b", []byte{1, 2, 3}), "Field b: BYTES(2) has maximum length 2 but got a value with length 3"},
	} {
		r := send(t, ms, [][]byte{fits.bytes(), tc.row.bytes()})
		failsWith(t, r, codes.InvalidArgument)
		resp, _ := r.FullResponse(t.Context())
		errs := resp.GetRowErrors()
		if len(errs) != 1 || errs[0].GetIndex() != 1 || errs[0].GetMessage() != tc.want {
			t.Fatalf("row errors = %v, want index 1: %q", errs, tc.want)
		}
	}
	if n := srv.RowCount(project, dsID, "t"); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
}

func TestFailUnary(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{{Name: "n", Type: bigquery.IntegerFieldType}}
	createTable(t, c, "t", schema)
	wc, err := storage.NewBigQueryWriteClient(t.Context(),
		option.WithEndpoint(srv.GRPCEndpoint()), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wc.Close() })
	req := &storagepb.GetWriteStreamRequest{Name: parentOf("t") + "/streams/_default"}

	srv.FailUnary(1, codes.Unauthenticated)
	if _, err := wc.GetWriteStream(t.Context(), req); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("injected failure: %v, want UNAUTHENTICATED", err)
	}
	if _, err := wc.GetWriteStream(t.Context(), req); err != nil {
		t.Fatalf("after the injected failure: %v", err)
	}
	// A table that does not exist: NOT_FOUND.
	req.Name = parentOf("missing") + "/streams/_default"
	if _, err := wc.GetWriteStream(t.Context(), req); status.Code(err) != codes.NotFound {
		t.Fatalf("missing table: %v, want NOT_FOUND", err)
	}
}
