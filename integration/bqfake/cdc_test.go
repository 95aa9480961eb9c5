package bqfake_test

import (
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"cloud.google.com/go/bigquery/storage/managedwriter"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/bqsink/bqsink/integration/bqfake"
)

// cdcSchema is the table most CDC tests use: keyed by id, with a REQUIRED
// non-key column that a DELETE may leave out.
var cdcSchema = bigquery.Schema{
	{Name: "id", Type: bigquery.IntegerFieldType, Required: true},
	{Name: "name", Type: bigquery.StringFieldType},
	{Name: "amount", Type: bigquery.IntegerFieldType, Required: true},
}

// createKeyed creates a table with a primary key over REST.
func createKeyed(t *testing.T, c *bigquery.Client, name string, schema bigquery.Schema, key ...string) *bigquery.Table {
	t.Helper()
	tbl := c.Dataset(dsID).Table(name)
	md := &bigquery.TableMetadata{Schema: schema, TableConstraints: &bigquery.TableConstraints{PrimaryKey: &bigquery.PrimaryKey{Columns: key}}}
	if err := tbl.Create(t.Context(), md); err != nil {
		t.Fatalf("create table %s: %v", name, err)
	}
	return tbl
}

// cdcDescriptor is the writer schema of schema plus the CDC pseudo-columns,
// both STRING, as a CDC writer sends it.
func cdcDescriptor(t *testing.T, schema bigquery.Schema) (protoreflect.MessageDescriptor, *descriptorpb.DescriptorProto) {
	t.Helper()
	withPseudo := append(slices.Clone(schema),
		&bigquery.FieldSchema{Name: "_CHANGE_TYPE", Type: bigquery.StringFieldType},
		&bigquery.FieldSchema{Name: "_CHANGE_SEQUENCE_NUMBER", Type: bigquery.StringFieldType})
	return descriptorFor(t, withPseudo)
}

// cdcRows builds rows of cdcSchema's writer schema.
type cdcRows struct {
	t  *testing.T
	md protoreflect.MessageDescriptor
}

// upsert is an UPSERT of id with name (empty: absent) and amount; seq is
// the sequence number ("": none).
func (r cdcRows) upsert(id int64, name string, amount int64, seq string) []byte {
	m := newMsg(r.t, r.md).set("id", id).set("amount", amount).set("_CHANGE_TYPE", "UPSERT")
	if name != "" {
		m.set("name", name)
	}
	if seq != "" {
		m.set("_CHANGE_SEQUENCE_NUMBER", seq)
	}
	return m.bytes()
}

// del is a DELETE of id carrying only the key.
func (r cdcRows) del(id int64, seq string) []byte {
	m := newMsg(r.t, r.md).set("id", id).set("_CHANGE_TYPE", "DELETE")
	if seq != "" {
		m.set("_CHANGE_SEQUENCE_NUMBER", seq)
	}
	return m.bytes()
}

// plain is a row without change type.
func (r cdcRows) plain(id int64, name string, amount int64) []byte {
	return newMsg(r.t, r.md).set("id", id).set("name", name).set("amount", amount).bytes()
}

// applied reads the table through tabledata.list as id -> [name, amount]
// and fails on a key that appears twice.
func applied(t *testing.T, tbl *bigquery.Table) map[int64][]bigquery.Value {
	t.Helper()
	out := make(map[int64][]bigquery.Value)
	for _, row := range readAll(t, tbl) {
		id := row[0].(int64)
		if _, dup := out[id]; dup {
			t.Fatalf("key %d appears twice in %v", id, readAll(t, tbl))
		}
		out[id] = row[1:]
	}
	return out
}

func wantApplied(t *testing.T, tbl *bigquery.Table, want map[int64][]bigquery.Value) {
	t.Helper()
	if got := applied(t, tbl); !reflect.DeepEqual(got, want) {
		t.Fatalf("applied state = %v, want %v", got, want)
	}
}

// rowErrorsOf waits for an append to fail with row errors and returns their
// messages by row index.
func rowErrorsOf(t *testing.T, r *managedwriter.AppendResult) map[int64]string {
	t.Helper()
	failsWith(t, r, codes.InvalidArgument)
	resp, _ := r.FullResponse(t.Context())
	out := make(map[int64]string)
	for _, e := range resp.GetRowErrors() {
		out[e.GetIndex()] = e.GetMessage()
	}
	return out
}

func TestPrimaryKeyAndMaxStalenessRoundTrip(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	ctx := t.Context()
	schema := bigquery.Schema{
		{Name: "id", Type: bigquery.IntegerFieldType, Required: true},
		{Name: "region", Type: bigquery.StringFieldType},
		{Name: "v", Type: bigquery.StringFieldType},
	}
	tbl := c.Dataset(dsID).Table("t")
	err := tbl.Create(ctx, &bigquery.TableMetadata{
		Schema:           schema,
		TableConstraints: &bigquery.TableConstraints{PrimaryKey: &bigquery.PrimaryKey{Columns: []string{"id"}}},
		MaxStaleness:     &bigquery.IntervalValue{Minutes: 15},
	})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	md, err := tbl.Metadata(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pk := md.TableConstraints; pk == nil || pk.PrimaryKey == nil || !slices.Equal(pk.PrimaryKey.Columns, []string{"id"}) {
		t.Fatalf("tableConstraints read back = %+v", pk)
	}
	if md.MaxStaleness == nil || md.MaxStaleness.String() != "0-0 0 0:15:0" {
		t.Fatalf("maxStaleness read back = %v, want 0-0 0 0:15:0", md.MaxStaleness)
	}

	// A patch of the description keeps both; a patch of each changes it.
	md, err = tbl.Update(ctx, bigquery.TableMetadataToUpdate{Description: "d"}, md.ETag)
	if err != nil || md.TableConstraints == nil || md.MaxStaleness == nil {
		t.Fatalf("unrelated patch lost the key or staleness: %+v, %v", md, err)
	}
	_, err = tbl.Update(ctx, bigquery.TableMetadataToUpdate{
		TableConstraints: &bigquery.TableConstraints{PrimaryKey: &bigquery.PrimaryKey{Columns: []string{"id", "region"}}},
		MaxStaleness:     &bigquery.IntervalValue{Hours: 2, Minutes: 30},
	}, md.ETag)
	if err != nil {
		t.Fatalf("patch key and staleness: %v", err)
	}
	md, err = tbl.Metadata(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := md.TableConstraints.PrimaryKey.Columns; !slices.Equal(got, []string{"id", "region"}) {
		t.Fatalf("patched key = %v", got)
	}
	if got := md.MaxStaleness.String(); got != "0-0 0 2:30:0" {
		t.Fatalf("patched maxStaleness = %s", got)
	}
	// A key naming a missing column is refused on patch too, and nothing
	// changes.
	_, err = tbl.Update(ctx, bigquery.TableMetadataToUpdate{
		TableConstraints: &bigquery.TableConstraints{PrimaryKey: &bigquery.PrimaryKey{Columns: []string{"nope"}}},
	}, "")
	if ge := googleAPIError(t, err); ge.Code != http.StatusBadRequest || !strings.Contains(ge.Message, "Invalid field: nope") {
		t.Fatalf("patch with a missing key column: %v", err)
	}
	if md, _ := tbl.Metadata(ctx); !slices.Equal(md.TableConstraints.PrimaryKey.Columns, []string{"id", "region"}) {
		t.Fatalf("refused patch changed the key to %v", md.TableConstraints.PrimaryKey.Columns)
	}
}

func TestPrimaryKeyRefused(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{
		{Name: "id", Type: bigquery.IntegerFieldType},
		{Name: "tags", Type: bigquery.StringFieldType, Repeated: true},
		{Name: "rec", Type: bigquery.RecordFieldType, Schema: bigquery.Schema{{Name: "x", Type: bigquery.StringFieldType}}},
	}
	for i := range 17 {
		schema = append(schema, &bigquery.FieldSchema{Name: "c" + string(rune('a'+i)), Type: bigquery.StringFieldType})
	}
	var seventeen []string
	for _, f := range schema[3:] {
		seventeen = append(seventeen, f.Name)
	}
	for _, tc := range []struct {
		key  []string
		want string
	}{
		{[]string{"id", "missing"}, "The field specified for primary key cannot be found in the schema. Invalid field: missing."},
		{[]string{"rec.x"}, "Fields specified for primary key can only be top-level fields. Invalid field: rec.x."},
		{[]string{"tags"}, "Fields specified for primary key can only be NULLABLE or REQUIRED. Invalid field: tags."},
		{[]string{"id", "ID"}, "Duplicate field in primary key: ID."},
		{seventeen, "Too many primary key columns: 17. At most 16 columns are allowed in a primary key."},
	} {
		err := c.Dataset(dsID).Table("t").Create(t.Context(), &bigquery.TableMetadata{
			Schema:           schema,
			TableConstraints: &bigquery.TableConstraints{PrimaryKey: &bigquery.PrimaryKey{Columns: tc.key}},
		})
		if ge := googleAPIError(t, err); ge.Code != http.StatusBadRequest || ge.Message != tc.want {
			t.Fatalf("key %v: got %v, want 400 %q", tc.key, err, tc.want)
		}
	}
	// Sixteen columns, in any case, are fine.
	createKeyed(t, c, "t", schema, append([]string{"ID"}, seventeen[:15]...)...)
}

func TestCDCUpsertsAndDeletesApplyPerKey(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	tbl := createKeyed(t, c, "t", cdcSchema, "id")
	md, dp := cdcDescriptor(t, cdcSchema)
	rows := cdcRows{t, md}
	mw := writeClient(t, srv)

	// Rows written without CDC are appended as they come, duplicates too:
	// BigQuery does not enforce keys.
	appendDefault(t, mw, "t", dp, [][]byte{rows.plain(1, "plain", 1), rows.plain(1, "dup", 1), rows.plain(9, "kept", 9)})
	if n := srv.RowCount(project, dsID, "t"); n != 3 {
		t.Fatalf("%d plain rows, want 3", n)
	}

	ms := mustOpen(t, mw, "t", managedwriter.DefaultStream, dp)
	ok(t, send(t, ms, [][]byte{rows.upsert(1, "a", 10, ""), rows.upsert(2, "b", 20, ""), rows.upsert(3, "c", 30, "")}))
	wantApplied(t, tbl, map[int64][]bigquery.Value{
		1: {"a", int64(10)}, 2: {"b", int64(20)}, 3: {"c", int64(30)}, 9: {"kept", int64(9)},
	})
	// An UPSERT replaces the whole row: the absent name becomes NULL. A
	// DELETE carries only the key, though amount is REQUIRED; a DELETE of
	// an unknown key changes nothing. Lower-case change types are accepted.
	lower := newMsg(t, md).set("id", int64(3)).set("_CHANGE_TYPE", "delete").bytes()
	ok(t, send(t, ms, [][]byte{rows.upsert(1, "", 11, ""), rows.del(2, ""), lower, rows.del(4, "")}))
	want := map[int64][]bigquery.Value{1: {nil, int64(11)}, 9: {"kept", int64(9)}}
	wantApplied(t, tbl, want)
	if n := srv.RowCount(project, dsID, "t"); n != 2 {
		t.Fatalf("RowCount = %d, want 2", n)
	}
	if got := srv.Rows(project, dsID, "t"); len(got) != 2 || got[0]["id"] != int64(1) || got[0]["amount"] != int64(11) || got[1]["id"] != int64(9) {
		t.Fatalf("Rows = %v", got)
	}
	if tm, err := tbl.Metadata(t.Context()); err != nil || tm.NumRows != 2 {
		t.Fatalf("numRows = %v, %v; want 2", tm.NumRows, err)
	}
	wantStates := []bqfake.KeyState{
		{Key: []any{int64(1)}}, {Key: []any{int64(2)}, Deleted: true},
		{Key: []any{int64(3)}, Deleted: true}, {Key: []any{int64(4)}, Deleted: true},
	}
	if got := srv.KeyStates(project, dsID, "t"); !reflect.DeepEqual(got, wantStates) {
		t.Fatalf("KeyStates = %+v, want %+v", got, wantStates)
	}
	// A deleted key comes back with an UPSERT.
	ok(t, send(t, ms, [][]byte{rows.upsert(2, "again", 21, "")}))
	want[2] = []bigquery.Value{"again", int64(21)}
	wantApplied(t, tbl, want)
}

func TestCDCSequenceNumbersOrderChanges(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	tbl := createKeyed(t, c, "t", cdcSchema, "id")
	md, dp := cdcDescriptor(t, cdcSchema)
	rows := cdcRows{t, md}
	ms := mustOpen(t, writeClient(t, srv), "t", managedwriter.DefaultStream, dp)
	steps := []struct {
		rows [][]byte
		want map[int64][]bigquery.Value
	}{
		// Sections compare as unsigned 64-bit numbers: as a signed number
		// FFFFFFFFFFFFFFFF would be -1, below 1.
		{[][]byte{rows.upsert(1, "high", 1, "FFFFFFFFFFFFFFFF")}, map[int64][]bigquery.Value{1: {"high", int64(1)}}},
		{[][]byte{rows.upsert(1, "low", 2, "1")}, map[int64][]bigquery.Value{1: {"high", int64(1)}}},
		// Section by section, not as text ("A" > "1F" as text) and in
		// either case.
		{[][]byte{rows.upsert(2, "1F", 1, "1f")}, nil},
		{[][]byte{rows.upsert(2, "A", 2, "A")}, nil},
		{[][]byte{rows.upsert(3, "1/FFFF", 1, "1/FFFF")}, nil},
		{[][]byte{rows.upsert(3, "2/0", 2, "2/0")}, nil},
		// A missing section is lower: 2 < 2/0 < 2/0/1.
		{[][]byte{rows.upsert(3, "2", 3, "2")}, nil},
		{[][]byte{rows.upsert(3, "2/0/1", 4, "2/0/1")}, map[int64][]bigquery.Value{
			1: {"high", int64(1)}, 2: {"1F", int64(1)}, 3: {"2/0/1", int64(4)},
		}},
		// A DELETE with a lower number loses; with an equal one, the later
		// arrival wins; the tombstone then holds off lower upserts.
		{[][]byte{rows.del(1, "FFFFFFFFFFFFFFFE")}, nil},
		{[][]byte{rows.del(1, "ffffffffffffffff")}, nil},
		{[][]byte{rows.upsert(1, "stale", 5, "FFFFFFFFFFFFFFF0")}, map[int64][]bigquery.Value{
			2: {"1F", int64(1)}, 3: {"2/0/1", int64(4)},
		}},
		// The same first section with one more wins over the tombstone.
		{[][]byte{rows.upsert(1, "newer", 6, "FFFFFFFFFFFFFFFF/0")}, map[int64][]bigquery.Value{
			1: {"newer", int64(6)}, 2: {"1F", int64(1)}, 3: {"2/0/1", int64(4)},
		}},
	}
	for i, step := range steps {
		ok(t, send(t, ms, step.rows))
		if step.want != nil {
			if got := applied(t, tbl); !reflect.DeepEqual(got, step.want) {
				t.Fatalf("after step %d: applied state = %v, want %v", i, got, step.want)
			}
		}
	}
	states := srv.KeyStates(project, dsID, "t")
	if len(states) != 3 || states[0].Sequence != "FFFFFFFFFFFFFFFF/0" || states[2].Sequence != "2/0/1" || states[0].Deleted {
		t.Fatalf("KeyStates = %+v", states)
	}
}

func TestCDCTiesGoToTheLaterArrivalButFirstWithinARequest(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	md, dp := cdcDescriptor(t, cdcSchema)
	rows := cdcRows{t, md}
	mw := writeClient(t, srv)

	t.Run("without sequence numbers", func(t *testing.T) {
		tbl := createKeyed(t, c, "noseq", cdcSchema, "id")
		ms := mustOpen(t, mw, "noseq", managedwriter.DefaultStream, dp)
		ok(t, send(t, ms, [][]byte{rows.upsert(1, "first", 1, "")}))
		ok(t, send(t, ms, [][]byte{rows.upsert(1, "second", 2, "")}))
		// The same key twice in one request: the first row wins.
		ok(t, send(t, ms, [][]byte{rows.upsert(2, "a", 1, ""), rows.upsert(3, "x", 1, ""), rows.upsert(2, "b", 2, "")}))
		ok(t, send(t, ms, [][]byte{rows.del(3, ""), rows.upsert(3, "back", 3, "")}))
		wantApplied(t, tbl, map[int64][]bigquery.Value{1: {"second", int64(2)}, 2: {"a", int64(1)}})
	})
	t.Run("with sequence numbers", func(t *testing.T) {
		tbl := createKeyed(t, c, "seq", cdcSchema, "id")
		ms := mustOpen(t, mw, "seq", managedwriter.DefaultStream, dp)
		ok(t, send(t, ms, [][]byte{rows.upsert(1, "first", 1, "5")}))
		ok(t, send(t, ms, [][]byte{rows.upsert(1, "second", 2, "5")}))
		ok(t, send(t, ms, [][]byte{rows.upsert(2, "a", 1, "7"), rows.upsert(2, "b", 2, "7")}))
		// Within a request too, a higher number beats the first row.
		ok(t, send(t, ms, [][]byte{rows.upsert(3, "lower", 1, "1"), rows.upsert(3, "higher", 2, "2"), rows.upsert(3, "tie", 3, "2")}))
		wantApplied(t, tbl, map[int64][]bigquery.Value{1: {"second", int64(2)}, 2: {"a", int64(1)}, 3: {"higher", int64(2)}})
	})
}

func TestCDCRequiresAPrimaryKeyAndTheDefaultStream(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	createTable(t, c, "nokey", cdcSchema)
	createKeyed(t, c, "keyed", cdcSchema, "id")
	md, dp := cdcDescriptor(t, cdcSchema)
	rows := cdcRows{t, md}
	mw := writeClient(t, srv)

	ms := mustOpen(t, mw, "nokey", managedwriter.DefaultStream, dp)
	err := failsWith(t, send(t, ms, [][]byte{rows.upsert(1, "a", 1, "")}), codes.InvalidArgument)
	if !strings.Contains(err.Error(), "The table proj:ds.nokey does not have a primary key, which is required for CDC") {
		t.Fatalf("CDC on a table without key: %v", err)
	}
	// The same writer schema without change types writes plain rows.
	ok(t, send(t, ms, [][]byte{rows.plain(1, "a", 1)}))
	if n := srv.RowCount(project, dsID, "nokey"); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}

	for _, typ := range []managedwriter.StreamType{managedwriter.CommittedStream, managedwriter.PendingStream} {
		ms := mustOpen(t, mw, "keyed", typ, dp)
		err := failsWith(t, send(t, ms, [][]byte{rows.upsert(1, "a", 1, "")}), codes.InvalidArgument)
		if !strings.Contains(err.Error(), "only supported on the _default stream") || storageErrorCode(t, err) != storagepb.StorageError_INVALID_STREAM_TYPE {
			t.Fatalf("CDC on a %s stream: %v", typ, err)
		}
	}
	if n := srv.RowCount(project, dsID, "keyed"); n != 0 {
		t.Fatalf("%d rows written by refused requests", n)
	}
}

func TestCDCAndPlainRowsDoNotShareAConnection(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	tbl := createKeyed(t, c, "t", cdcSchema, "id")
	md, dp := cdcDescriptor(t, cdcSchema)
	rows := cdcRows{t, md}
	mw := writeClient(t, srv)

	cdc := mustOpen(t, mw, "t", managedwriter.DefaultStream, dp)
	ok(t, send(t, cdc, [][]byte{rows.upsert(1, "a", 1, "")}))
	err := failsWith(t, send(t, cdc, [][]byte{rows.plain(2, "plain", 2)}), codes.InvalidArgument)
	if !strings.Contains(err.Error(), "The given value is not a valid CHANGE_TYPE in upsert mode: INSERT") {
		t.Fatalf("plain row after CDC rows: %v", err)
	}
	ok(t, send(t, cdc, [][]byte{rows.upsert(3, "c", 3, "")})) // the connection stays in upsert mode

	plain := mustOpen(t, mw, "t", managedwriter.DefaultStream, dp)
	ok(t, send(t, plain, [][]byte{rows.plain(4, "plain", 4)}))
	err = failsWith(t, send(t, plain, [][]byte{rows.upsert(5, "e", 5, "")}), codes.InvalidArgument)
	if !strings.Contains(err.Error(), "The given value is not a valid CHANGE_TYPE in insert mode: UPSERT") {
		t.Fatalf("CDC row after plain rows: %v", err)
	}

	// One request mixing both on a fresh connection fails as a whole.
	mixed := mustOpen(t, mw, "t", managedwriter.DefaultStream, dp)
	err = failsWith(t, send(t, mixed, [][]byte{rows.upsert(6, "f", 6, ""), rows.plain(7, "g", 7)}), codes.InvalidArgument)
	if !strings.Contains(err.Error(), "not a valid CHANGE_TYPE") {
		t.Fatalf("mixed request: %v", err)
	}
	wantApplied(t, tbl, map[int64][]bigquery.Value{1: {"a", int64(1)}, 3: {"c", int64(3)}, 4: {"plain", int64(4)}})
}

func TestCDCRowErrors(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	tbl := createKeyed(t, c, "t", cdcSchema, "id")
	md, dp := cdcDescriptor(t, cdcSchema)
	rows := cdcRows{t, md}
	ms := mustOpen(t, writeClient(t, srv), "t", managedwriter.DefaultStream, dp)
	good := rows.upsert(1, "a", 1, "")

	for _, typ := range []string{"INSERT", "upsert!", "MERGE"} {
		bad := newMsg(t, md).set("id", int64(2)).set("amount", int64(2)).set("_CHANGE_TYPE", typ).bytes()
		errs := rowErrorsOf(t, send(t, ms, [][]byte{good, bad}))
		if len(errs) != 1 || !strings.Contains(errs[1], "not a valid CHANGE_TYPE") {
			t.Fatalf("_CHANGE_TYPE %q: row errors %v", typ, errs)
		}
	}
	for _, seq := range []string{"xyz", "1/2/3/4/5", "12345678901234567", "1//2", "/1", "0x1F", "-1", "+1", "1 "} {
		errs := rowErrorsOf(t, send(t, ms, [][]byte{good, rows.upsert(2, "b", 2, seq)}))
		if len(errs) != 1 || !strings.HasPrefix(errs[1], "Field _CHANGE_SEQUENCE_NUMBER: Invalid value") {
			t.Fatalf("sequence %q: row errors %v", seq, errs)
		}
	}
	onlySeq := newMsg(t, md).set("id", int64(2)).set("amount", int64(2)).set("_CHANGE_SEQUENCE_NUMBER", "1").bytes()
	if errs := rowErrorsOf(t, send(t, ms, [][]byte{good, onlySeq})); len(errs) != 1 || !strings.Contains(errs[1], "must also set _CHANGE_TYPE") {
		t.Fatalf("sequence without change type: row errors %v", errs)
	}
	// An UPSERT replaces the whole row, so REQUIRED columns still apply.
	noAmount := newMsg(t, md).set("id", int64(2)).set("_CHANGE_TYPE", "UPSERT").bytes()
	if errs := rowErrorsOf(t, send(t, ms, [][]byte{good, noAmount})); len(errs) != 1 || errs[1] != "Field amount: REQUIRED field has no value" {
		t.Fatalf("UPSERT without a REQUIRED column: row errors %v", errs)
	}
	if n := srv.RowCount(project, dsID, "t"); n != 0 {
		t.Fatalf("%d rows written by failed requests", n)
	}

	// Sixteen hex digits in four sections are the most a number may hold.
	ok(t, send(t, ms, [][]byte{rows.upsert(1, "a", 1, "FFFFFFFFFFFFFFFF/0/0/0")}))
	// Once the table has rows with sequence numbers, every CDC row needs
	// one.
	errs := rowErrorsOf(t, send(t, ms, [][]byte{rows.upsert(2, "b", 2, "1"), rows.del(1, "")}))
	if len(errs) != 1 || !strings.Contains(errs[1], "every row with _CHANGE_TYPE must carry one") {
		t.Fatalf("CDC row without sequence number: row errors %v", errs)
	}
	wantApplied(t, tbl, map[int64][]bigquery.Value{1: {"a", int64(1)}})
}

func TestCDCWriterSchemaPseudoColumns(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	createKeyed(t, c, "t", cdcSchema, "id")
	mw := writeClient(t, srv)

	// The pseudo-columns are STRING; other names stay extra fields.
	for _, tc := range []struct {
		extra bigquery.FieldSchema
		want  string
	}{
		{bigquery.FieldSchema{Name: "_CHANGE_TYPE", Type: bigquery.IntegerFieldType}, "The proto field mismatched with BigQuery field at _CHANGE_TYPE"},
		{bigquery.FieldSchema{Name: "_CHANGE_TIMESTAMP", Type: bigquery.StringFieldType}, "extra fields: '_CHANGE_TIMESTAMP'"},
	} {
		_, dp := descriptorFor(t, append(slices.Clone(cdcSchema), &tc.extra))
		ms := mustOpen(t, mw, "t", managedwriter.DefaultStream, dp)
		md, _ := descriptorFor(t, cdcSchema)
		err := failsWith(t, send(t, ms, [][]byte{newMsg(t, md).set("id", int64(1)).set("amount", int64(1)).bytes()}), codes.InvalidArgument)
		if !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("writer schema with %s %s: %v, want %q", tc.extra.Name, tc.extra.Type, err, tc.want)
		}
	}
}

func TestCDCCompositeAndNullKeys(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	schema := bigquery.Schema{
		{Name: "tenant", Type: bigquery.StringFieldType},
		{Name: "id", Type: bigquery.IntegerFieldType},
		{Name: "v", Type: bigquery.StringFieldType},
	}
	tbl := createKeyed(t, c, "t", schema, "tenant", "ID")
	md, dp := cdcDescriptor(t, schema)
	row := func(tenant string, id int64, v, typ string) []byte {
		m := newMsg(t, md).set("id", id).set("_CHANGE_TYPE", typ)
		if tenant != "" {
			m.set("tenant", tenant)
		}
		if v != "" {
			m.set("v", v)
		}
		return m.bytes()
	}
	ms := mustOpen(t, writeClient(t, srv), "t", managedwriter.DefaultStream, dp)
	ok(t, send(t, ms, [][]byte{row("a", 1, "a1", "UPSERT"), row("b", 1, "b1", "UPSERT"), row("", 1, "null1", "UPSERT")}))
	// NULL key values match each other.
	ok(t, send(t, ms, [][]byte{row("", 1, "null1'", "UPSERT"), row("b", 1, "", "DELETE")}))
	got := readAll(t, tbl)
	want := [][]bigquery.Value{{"a", int64(1), "a1"}, {nil, int64(1), "null1'"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("applied state = %v, want %v", got, want)
	}
}
