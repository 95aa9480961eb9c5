package bqfake_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"

	"github.com/bqsink/bqsink/integration/bqfake"
)

// layoutSchema has a column of every kind the layout rules care about.
var layoutSchema = bigquery.Schema{
	{Name: "id", Type: bigquery.IntegerFieldType, Required: true},
	{Name: "ts", Type: bigquery.TimestampFieldType},
	{Name: "day", Type: bigquery.DateFieldType, Required: true},
	{Name: "at", Type: bigquery.DateTimeFieldType},
	{Name: "warehouse_id", Type: bigquery.StringFieldType},
	{Name: "variant_id", Type: bigquery.IntegerFieldType},
	{Name: "amount", Type: bigquery.NumericFieldType},
	{Name: "big", Type: bigquery.BigNumericFieldType},
	{Name: "flag", Type: bigquery.BooleanFieldType},
	{Name: "geo", Type: bigquery.GeographyFieldType},
	{Name: "price", Type: bigquery.FloatFieldType},
	{Name: "raw", Type: bigquery.BytesFieldType},
	{Name: "clock", Type: bigquery.TimeFieldType},
	{Name: "payload", Type: bigquery.JSONFieldType},
	{Name: "tags", Type: bigquery.StringFieldType, Repeated: true},
	{Name: "hits", Type: bigquery.TimestampFieldType, Repeated: true},
	{Name: "rec", Type: bigquery.RecordFieldType, Schema: bigquery.Schema{
		{Name: "inner_ts", Type: bigquery.TimestampFieldType},
		{Name: "inner_s", Type: bigquery.StringFieldType},
	}},
}

const day = 24 * time.Hour

func manyLabels(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("k%02d", i)] = "v"
	}
	return m
}

// checkLayout compares what the Go client reads back with what was asked.
func checkLayout(t *testing.T, got *bigquery.TableMetadata, want bigquery.TableMetadata) {
	t.Helper()
	if !reflect.DeepEqual(got.TimePartitioning, want.TimePartitioning) {
		t.Errorf("TimePartitioning = %+v, want %+v", got.TimePartitioning, want.TimePartitioning)
	}
	if !reflect.DeepEqual(got.Clustering, want.Clustering) {
		t.Errorf("Clustering = %+v, want %+v", got.Clustering, want.Clustering)
	}
	if got.RequirePartitionFilter != want.RequirePartitionFilter {
		t.Errorf("RequirePartitionFilter = %v, want %v", got.RequirePartitionFilter, want.RequirePartitionFilter)
	}
	if got.Description != want.Description {
		t.Errorf("Description = %q, want %q", got.Description, want.Description)
	}
	if !reflect.DeepEqual(got.Labels, want.Labels) {
		t.Errorf("Labels = %v, want %v", got.Labels, want.Labels)
	}
}

func TestTableLayoutRoundTrip(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	cases := []struct {
		name string
		md   bigquery.TableMetadata
		// wantRequire is the top-level requirement read back.
		wantRequire bool
	}{
		{name: "daily on a TIMESTAMP, expiring, clustered, required filter", md: bigquery.TableMetadata{
			TimePartitioning:       &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType, Field: "ts", Expiration: 400 * day},
			Clustering:             &bigquery.Clustering{Fields: []string{"warehouse_id", "variant_id"}},
			RequirePartitionFilter: true,
			Description:            "Physical stock updates from SMS",
			Labels:                 map[string]string{"team": "supply", "tier": ""},
		}, wantRequire: true},
		{name: "hourly on a TIMESTAMP", md: bigquery.TableMetadata{
			TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.HourPartitioningType, Field: "ts", Expiration: 48 * time.Hour},
		}},
		{name: "hourly on a DATETIME", md: bigquery.TableMetadata{
			TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.HourPartitioningType, Field: "at"},
		}},
		{name: "daily on a DATE", md: bigquery.TableMetadata{
			TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType, Field: "day"},
		}},
		{name: "monthly on a DATE", md: bigquery.TableMetadata{
			TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.MonthPartitioningType, Field: "day", Expiration: 730 * day},
			Clustering:       &bigquery.Clustering{Fields: []string{"flag", "amount", "big", "geo"}},
		}},
		{name: "yearly on a DATETIME", md: bigquery.TableMetadata{
			TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.YearPartitioningType, Field: "at"},
		}},
		{name: "ingestion time, daily", md: bigquery.TableMetadata{
			TimePartitioning:       &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType},
			RequirePartitionFilter: true,
		}, wantRequire: true},
		{name: "ingestion time, hourly, expiring", md: bigquery.TableMetadata{
			TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.HourPartitioningType, Expiration: 6 * time.Hour},
		}},
		{name: "ingestion time, monthly and yearly types", md: bigquery.TableMetadata{
			TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.YearPartitioningType},
		}},
		{name: "deprecated timePartitioning.requirePartitionFilter", md: bigquery.TableMetadata{
			TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType, Field: "ts", RequirePartitionFilter: true},
		}, wantRequire: true},
		{name: "clustering without partitioning", md: bigquery.TableMetadata{
			Clustering: &bigquery.Clustering{Fields: []string{"ts", "day", "at", "id"}},
		}},
		{name: "labels at the limits", md: bigquery.TableMetadata{
			Labels: func() map[string]string {
				m := manyLabels(62)
				m["équipe"] = "été"
				m[strings.Repeat("k", 63)] = strings.Repeat("9", 63)
				return m
			}(),
		}},
		{name: "nothing", md: bigquery.TableMetadata{}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tbl := c.Dataset(dsID).Table(fmt.Sprintf("t%d", i))
			md := tc.md
			md.Schema = layoutSchema
			if err := tbl.Create(t.Context(), &md); err != nil {
				t.Fatalf("create: %v", err)
			}
			got, err := tbl.Metadata(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			want := tc.md
			want.RequirePartitionFilter = tc.wantRequire
			checkLayout(t, got, want)
		})
	}

	// On the wire, as BigQuery's REST API: int64 as a JSON string.
	status, res := rawREST(t, srv, http.MethodGet, "/projects/proj/datasets/ds/tables/t0", nil)
	if status != http.StatusOK {
		t.Fatalf("GET t0: %d %v", status, res)
	}
	tp, _ := res["timePartitioning"].(map[string]any)
	if tp["type"] != "DAY" || tp["field"] != "ts" || tp["expirationMs"] != "34560000000" {
		t.Errorf("timePartitioning = %#v, want type DAY, field ts, expirationMs \"34560000000\"", tp)
	}
	if _, echoed := tp["requirePartitionFilter"]; echoed {
		t.Errorf("timePartitioning.requirePartitionFilter echoed although it was set at the top level: %#v", tp)
	}
	if res["requirePartitionFilter"] != true {
		t.Errorf("requirePartitionFilter = %#v, want true", res["requirePartitionFilter"])
	}
	cl, _ := res["clustering"].(map[string]any)
	if !reflect.DeepEqual(cl["fields"], []any{"warehouse_id", "variant_id"}) {
		t.Errorf("clustering = %#v", res["clustering"])
	}

	// tables.list carries the layout too.
	status, list := rawREST(t, srv, http.MethodGet, "/projects/proj/datasets/ds/tables", nil)
	if status != http.StatusOK {
		t.Fatalf("list: %d %v", status, list)
	}
	tables, _ := list["tables"].([]any)
	first, _ := tables[0].(map[string]any)
	if ref, _ := first["tableReference"].(map[string]any); ref["tableId"] != "t0" || first["timePartitioning"] == nil || first["clustering"] == nil || first["labels"] == nil {
		t.Errorf("tables.list entry = %#v, want t0 with its layout", first)
	}
}

func TestTableLayoutRefused(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	part := func(typ bigquery.TimePartitioningType, field string) *bigquery.TimePartitioning {
		return &bigquery.TimePartitioning{Type: typ, Field: field}
	}
	cluster := func(fields ...string) *bigquery.Clustering { return &bigquery.Clustering{Fields: fields} }
	cases := []struct {
		name string
		md   bigquery.TableMetadata
		want string
	}{
		{"partitioning field missing", bigquery.TableMetadata{TimePartitioning: part(bigquery.DayPartitioningType, "adjusted_at")},
			"The field specified for partitioning cannot be found in the schema."},
		{"partitioning field inside a RECORD", bigquery.TableMetadata{TimePartitioning: part(bigquery.DayPartitioningType, "rec.inner_ts")},
			"The field specified for partitioning can only be a top-level field."},
		{"partitioning field named like a RECORD subfield", bigquery.TableMetadata{TimePartitioning: part(bigquery.DayPartitioningType, "inner_ts")},
			"The field specified for partitioning cannot be found in the schema."},
		{"partitioning on a STRING", bigquery.TableMetadata{TimePartitioning: part(bigquery.DayPartitioningType, "warehouse_id")},
			"The field specified for time partitioning can only be of type TIMESTAMP, DATE or DATETIME. The type found is: STRING."},
		{"partitioning on an INTEGER", bigquery.TableMetadata{TimePartitioning: part(bigquery.DayPartitioningType, "id")},
			"The field specified for time partitioning can only be of type TIMESTAMP, DATE or DATETIME. The type found is: INTEGER."},
		{"partitioning on a RECORD", bigquery.TableMetadata{TimePartitioning: part(bigquery.MonthPartitioningType, "rec")},
			"The field specified for time partitioning can only be of type TIMESTAMP, DATE or DATETIME. The type found is: RECORD."},
		{"partitioning on a REPEATED TIMESTAMP", bigquery.TableMetadata{TimePartitioning: part(bigquery.DayPartitioningType, "hits")},
			"The field specified for time partitioning can only be NULLABLE or REQUIRED. The mode found is: REPEATED."},
		{"hourly partitioning on a DATE", bigquery.TableMetadata{TimePartitioning: part(bigquery.HourPartitioningType, "day")},
			"The field specified for hourly partitioning can only be of type TIMESTAMP or DATETIME. The type found is: DATE."},
		{"unknown partitioning type", bigquery.TableMetadata{TimePartitioning: part("WEEK", "ts")},
			"Invalid value for timePartitioning.type: WEEK. The supported types are DAY, HOUR, MONTH and YEAR."},
		{"negative partition expiration", bigquery.TableMetadata{TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType, Field: "ts", Expiration: -time.Hour}},
			"Invalid value for timePartitioning.expirationMs: -3600000. It cannot be negative."},
		{"partition filter without partitioning", bigquery.TableMetadata{RequirePartitionFilter: true},
			"Either interval partition or range partition should be specified."},
		{"five clustering fields", bigquery.TableMetadata{Clustering: cluster("id", "ts", "day", "at", "warehouse_id")},
			"Too many clustering fields: 5. At most 4 clustering fields are allowed."},
		{"clustering field missing", bigquery.TableMetadata{Clustering: cluster("warehouse_id", "variant")},
			"The field specified for clustering cannot be found in the schema. Invalid field: variant."},
		{"clustering field inside a RECORD", bigquery.TableMetadata{Clustering: cluster("rec.inner_s")},
			"Fields specified for clustering can only be top-level fields. Invalid field: rec.inner_s."},
		{"clustering field named like a RECORD subfield", bigquery.TableMetadata{Clustering: cluster("inner_s")},
			"The field specified for clustering cannot be found in the schema. Invalid field: inner_s."},
		{"clustering on a FLOAT", bigquery.TableMetadata{Clustering: cluster("id", "price")},
			"Field price has type FLOAT, which is not supported for clustering."},
		{"clustering on a RECORD", bigquery.TableMetadata{Clustering: cluster("rec")},
			"Field rec has type RECORD, which is not supported for clustering."},
		{"clustering on JSON", bigquery.TableMetadata{Clustering: cluster("payload")},
			"Field payload has type JSON, which is not supported for clustering."},
		{"clustering on BYTES", bigquery.TableMetadata{Clustering: cluster("raw")},
			"Field raw has type BYTES, which is not supported for clustering."},
		{"clustering on TIME", bigquery.TableMetadata{Clustering: cluster("clock")},
			"Field clock has type TIME, which is not supported for clustering."},
		{"clustering on a REPEATED STRING", bigquery.TableMetadata{Clustering: cluster("tags")},
			"Fields specified for clustering can only be NULLABLE or REQUIRED. Invalid field: tags."},
		{"label key with an uppercase letter", bigquery.TableMetadata{Labels: map[string]string{"Team": "supply"}},
			`Label key "Team" has invalid characters.`},
		{"label key starting with a digit", bigquery.TableMetadata{Labels: map[string]string{"1team": "supply"}},
			`Label key "1team" has invalid characters.`},
		{"label key starting with a dash", bigquery.TableMetadata{Labels: map[string]string{"-team": "supply"}},
			`Label key "-team" has invalid characters.`},
		{"label key with a dot", bigquery.TableMetadata{Labels: map[string]string{"team.name": "supply"}},
			`Label key "team.name" has invalid characters.`},
		{"label key of 64 characters", bigquery.TableMetadata{Labels: map[string]string{strings.Repeat("k", 64): "v"}},
			`Label key "` + strings.Repeat("k", 64) + `" has invalid characters.`},
		{"label value with an uppercase letter", bigquery.TableMetadata{Labels: map[string]string{"team": "Supply"}},
			`Label value "Supply" has invalid characters.`},
		{"label value with a space", bigquery.TableMetadata{Labels: map[string]string{"team": "supply chain"}},
			`Label value "supply chain" has invalid characters.`},
		{"label value of 64 characters", bigquery.TableMetadata{Labels: map[string]string{"team": strings.Repeat("v", 64)}},
			`Label value "` + strings.Repeat("v", 64) + `" has invalid characters.`},
		{"65 labels", bigquery.TableMetadata{Labels: manyLabels(65)},
			"Too many labels: 65. A table can have at most 64 labels."},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tbl := c.Dataset(dsID).Table(fmt.Sprintf("bad%d", i))
			md := tc.md
			md.Schema = layoutSchema
			err := tbl.Create(t.Context(), &md)
			ge := googleAPIError(t, err)
			if ge.Code != http.StatusBadRequest || len(ge.Errors) != 1 || ge.Errors[0].Reason != "invalid" || ge.Message != tc.want {
				t.Fatalf("got %d %v (%+v),\nwant 400 invalid %q", ge.Code, ge.Message, ge.Errors, tc.want)
			}
			if _, err := tbl.Metadata(t.Context()); googleAPIError(t, err).Code != http.StatusNotFound {
				t.Fatalf("the refused table exists: %v", err)
			}
		})
	}
}

// What the Go client cannot send: a timePartitioning without type.
func TestTableLayoutRefusedRaw(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	status, res := rawREST(t, srv, http.MethodPost, "/projects/proj/datasets/ds/tables", map[string]any{
		"tableReference":   map[string]any{"tableId": "t"},
		"schema":           map[string]any{"fields": []any{map[string]any{"name": "ts", "type": "TIMESTAMP"}}},
		"timePartitioning": map[string]any{"field": "ts"},
	})
	if status != http.StatusBadRequest || errorMessage(res) != "Missing required field: timePartitioning.type" {
		t.Fatalf("timePartitioning without type: %d %v", status, res)
	}
}

func TestTableLayoutPatch(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	ctx := t.Context()
	tbl := c.Dataset(dsID).Table("t")
	want := bigquery.TableMetadata{
		TimePartitioning:       &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType, Field: "ts", Expiration: 400 * day},
		Clustering:             &bigquery.Clustering{Fields: []string{"warehouse_id"}},
		RequirePartitionFilter: true,
		Description:            "stock",
		Labels:                 map[string]string{"team": "supply", "env": "dev"},
	}
	md := want
	md.Schema = layoutSchema
	if err := tbl.Create(ctx, &md); err != nil {
		t.Fatal(err)
	}

	update := func(t *testing.T, u bigquery.TableMetadataToUpdate) *bigquery.TableMetadata {
		t.Helper()
		got, err := tbl.Update(ctx, u, "")
		if err != nil {
			t.Fatalf("update: %v", err)
		}
		return got
	}

	// A patch that only sends a schema keeps the layout.
	evolved := append(layoutSchema[:len(layoutSchema):len(layoutSchema)], &bigquery.FieldSchema{Name: "region", Type: bigquery.StringFieldType})
	got := update(t, bigquery.TableMetadataToUpdate{Schema: evolved})
	if !sameSchema(got.Schema, evolved) {
		t.Fatalf("schema = %v", describe(got.Schema))
	}
	checkLayout(t, got, want)

	// Description, labels and clustering may change; clustering may use the
	// column the same patch adds.
	evolved = append(evolved[:len(evolved):len(evolved)], &bigquery.FieldSchema{Name: "zone", Type: bigquery.StringFieldType})
	u := bigquery.TableMetadataToUpdate{
		Schema:      evolved,
		Description: "Physical stock updates",
		Clustering:  &bigquery.Clustering{Fields: []string{"zone", "variant_id"}},
	}
	u.SetLabel("team", "logistics")
	u.SetLabel("owner", "ops")
	u.DeleteLabel("env")
	got = update(t, u)
	want.Description = "Physical stock updates"
	want.Clustering = &bigquery.Clustering{Fields: []string{"zone", "variant_id"}}
	want.Labels = map[string]string{"team": "logistics", "owner": "ops"}
	checkLayout(t, got, want)

	// The expiration may change. The Go client sends the deprecated
	// timePartitioning.requirePartitionFilter as false with it, which does
	// not clear the top-level requirement.
	got = update(t, bigquery.TableMetadataToUpdate{TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType, Field: "ts", Expiration: 30 * day}})
	want.TimePartitioning.Expiration = 30 * day
	checkLayout(t, got, want)
	got = update(t, bigquery.TableMetadataToUpdate{TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType}})
	want.TimePartitioning.Expiration = 0
	checkLayout(t, got, want)

	got = update(t, bigquery.TableMetadataToUpdate{RequirePartitionFilter: false})
	want.RequirePartitionFilter = false
	checkLayout(t, got, want)
	got = update(t, bigquery.TableMetadataToUpdate{Clustering: &bigquery.Clustering{}})
	want.Clustering = nil
	checkLayout(t, got, want)

	before, err := tbl.Metadata(ctx)
	if err != nil {
		t.Fatal(err)
	}
	badLabel := bigquery.TableMetadataToUpdate{}
	badLabel.SetLabel("Owner", "ops")
	refused := []struct {
		name string
		u    bigquery.TableMetadataToUpdate
		want string
	}{
		{"partitioning type", bigquery.TableMetadataToUpdate{TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.HourPartitioningType, Field: "ts"}},
			"Cannot change partitioning/clustering spec."},
		{"partitioning field", bigquery.TableMetadataToUpdate{TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType, Field: "at"}},
			"Cannot change partitioning/clustering spec."},
		{"clustering on a FLOAT", bigquery.TableMetadataToUpdate{Clustering: &bigquery.Clustering{Fields: []string{"price"}}},
			"Field price has type FLOAT, which is not supported for clustering."},
		{"five clustering fields", bigquery.TableMetadataToUpdate{Clustering: &bigquery.Clustering{Fields: []string{"id", "ts", "day", "at", "zone"}}},
			"Too many clustering fields: 5. At most 4 clustering fields are allowed."},
		{"clustering on a missing column", bigquery.TableMetadataToUpdate{Clustering: &bigquery.Clustering{Fields: []string{"country"}}},
			"The field specified for clustering cannot be found in the schema. Invalid field: country."},
		{"invalid label", badLabel, `Label key "Owner" has invalid characters.`},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tbl.Update(ctx, tc.u, "")
			if ge := googleAPIError(t, err); ge.Code != http.StatusBadRequest || ge.Errors[0].Reason != "invalid" || ge.Message != tc.want {
				t.Fatalf("got %d %q, want 400 invalid %q", ge.Code, ge.Message, tc.want)
			}
		})
	}
	// Removing the partitioning is refused too (the Go client cannot send
	// it; a raw tables.patch can).
	status, res := rawREST(t, srv, http.MethodPatch, "/projects/proj/datasets/ds/tables/t", map[string]any{"timePartitioning": nil})
	if status != http.StatusBadRequest || errorMessage(res) != "Cannot change partitioned table to non partitioned table." {
		t.Fatalf("removing the partitioning: %d %v", status, res)
	}
	after, err := tbl.Metadata(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.ETag != before.ETag {
		t.Fatal("a refused patch changed the table")
	}
	checkLayout(t, after, want)

	// A table without partitioning cannot gain it, nor require a filter.
	plain := createTable(t, c, "plain", layoutSchema)
	for _, tc := range []struct {
		u    bigquery.TableMetadataToUpdate
		want string
	}{
		{bigquery.TableMetadataToUpdate{TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType, Field: "ts"}},
			"Cannot convert non partitioned table to partitioned table."},
		{bigquery.TableMetadataToUpdate{RequirePartitionFilter: true},
			"Either interval partition or range partition should be specified."},
	} {
		_, err := plain.Update(ctx, tc.u, "")
		if ge := googleAPIError(t, err); ge.Code != http.StatusBadRequest || ge.Message != tc.want {
			t.Fatalf("got %d %q, want 400 %q", ge.Code, ge.Message, tc.want)
		}
	}
	// ... but it can be clustered.
	if got, err := plain.Update(ctx, bigquery.TableMetadataToUpdate{Clustering: &bigquery.Clustering{Fields: []string{"geo"}}}, ""); err != nil || got.Clustering == nil || got.Clustering.Fields[0] != "geo" {
		t.Fatalf("clustering an unpartitioned table: %v %+v", err, got)
	}
}

func TestTableLayoutDeprecatedRequireFilter(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	tbl := c.Dataset(dsID).Table("t")
	tp := &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType, Field: "ts", RequirePartitionFilter: true}
	if err := tbl.Create(t.Context(), &bigquery.TableMetadata{Schema: layoutSchema, TimePartitioning: tp}); err != nil {
		t.Fatal(err)
	}
	// Set through the deprecated field, it is cleared through it too.
	got, err := tbl.Update(t.Context(), bigquery.TableMetadataToUpdate{TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType}}, "")
	if err != nil {
		t.Fatal(err)
	}
	if got.RequirePartitionFilter || got.TimePartitioning.RequirePartitionFilter {
		t.Fatalf("after clearing: %v %+v", got.RequirePartitionFilter, got.TimePartitioning)
	}
	got, err = tbl.Update(t.Context(), bigquery.TableMetadataToUpdate{TimePartitioning: tp}, "")
	if err != nil {
		t.Fatal(err)
	}
	if !got.RequirePartitionFilter || !got.TimePartitioning.RequirePartitionFilter {
		t.Fatalf("after setting: %v %+v", got.RequirePartitionFilter, got.TimePartitioning)
	}
}

// tables.update replaces the resource: settings it omits are cleared, but
// the schema and the partitioning cannot be dropped and are kept.
func TestTablesUpdateReplaces(t *testing.T) {
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	tbl := c.Dataset(dsID).Table("t")
	md := &bigquery.TableMetadata{
		Schema:                 layoutSchema,
		TimePartitioning:       &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType, Field: "ts", Expiration: day},
		Clustering:             &bigquery.Clustering{Fields: []string{"warehouse_id"}},
		RequirePartitionFilter: true,
		Description:            "old",
		Labels:                 map[string]string{"team": "supply"},
	}
	if err := tbl.Create(t.Context(), md); err != nil {
		t.Fatal(err)
	}
	status, res := rawREST(t, srv, http.MethodPut, "/projects/proj/datasets/ds/tables/t", map[string]any{
		"description": "new",
		"labels":      map[string]any{"owner": "ops"},
	})
	if status != http.StatusOK {
		t.Fatalf("tables.update: %d %v", status, res)
	}
	got, err := tbl.Metadata(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	checkLayout(t, got, bigquery.TableMetadata{
		TimePartitioning: md.TimePartitioning,
		Description:      "new",
		Labels:           map[string]string{"owner": "ops"},
	})
	if !sameSchema(got.Schema, layoutSchema) {
		t.Fatalf("schema = %v", describe(got.Schema))
	}
	status, res = rawREST(t, srv, http.MethodPut, "/projects/proj/datasets/ds/tables/t", map[string]any{"timePartitioning": nil})
	if status != http.StatusBadRequest || errorMessage(res) != "Cannot change partitioned table to non partitioned table." {
		t.Fatalf("tables.update without partitioning: %d %v", status, res)
	}
}

// expiryCase is a table partitioned on one column, and for each row the
// value of that column: now, in the partition before now's (which has not
// expired), and in a partition that has.
type expiryCase struct {
	name                   string
	partitioning           bigquery.TimePartitioning
	current, previous, old any
}

func TestExpiredPartitionRows(t *testing.T) {
	awayFromHourBoundary(t)
	now := time.Now().UTC()
	us := func(t time.Time) any { return t.UnixMicro() }
	days := func(t time.Time) any { return int32(t.Unix() / 86400) }
	civil := func(t time.Time) any { return t.Format("2006-01-02 15:04:05") }
	y, m, d := now.Date()
	cases := []expiryCase{
		// A DAY partition with a 24 h expiration expires at midnight UTC the
		// day after it ended: yesterday's rows stay until tonight.
		{"daily on a TIMESTAMP", bigquery.TimePartitioning{Type: bigquery.DayPartitioningType, Field: "ts", Expiration: day},
			us(now), us(now.Add(-day)), us(now.Add(-3 * day))},
		{"hourly on a DATETIME", bigquery.TimePartitioning{Type: bigquery.HourPartitioningType, Field: "at", Expiration: time.Hour},
			civil(now), civil(now.Add(-time.Hour)), civil(now.Add(-3 * time.Hour))},
		{"monthly on a DATE", bigquery.TimePartitioning{Type: bigquery.MonthPartitioningType, Field: "day", Expiration: 31 * day},
			days(now), days(time.Date(y, m-1, 1, 0, 0, 0, 0, time.UTC)), days(now.Add(-100 * day))},
		{"yearly on a TIMESTAMP", bigquery.TimePartitioning{Type: bigquery.YearPartitioningType, Field: "ts", Expiration: 400 * day},
			us(now), us(time.Date(y-1, 6, d, 0, 0, 0, 0, time.UTC)), us(now.AddDate(-3, 0, 0))},
	}
	schema := bigquery.Schema{
		{Name: "id", Type: bigquery.IntegerFieldType, Required: true},
		{Name: "ts", Type: bigquery.TimestampFieldType},
		{Name: "day", Type: bigquery.DateFieldType},
		{Name: "at", Type: bigquery.DateTimeFieldType},
	}
	srv := newServer(t, bqfake.Dataset(project, dsID))
	c := restClient(t, srv)
	mw := writeClient(t, srv)
	msgDesc, dp := descriptorFor(t, schema)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("t%d", i)
			tbl := c.Dataset(dsID).Table(name)
			tp := tc.partitioning
			if err := tbl.Create(t.Context(), &bigquery.TableMetadata{Schema: schema, TimePartitioning: &tp}); err != nil {
				t.Fatal(err)
			}
			col := tp.Field
			row := func(id int64, v any) []byte {
				m := newMsg(t, msgDesc).set("id", id)
				if v != nil {
					m.set(col, v)
				}
				return m.bytes()
			}
			// BigQuery accepts the append; the expired row is not kept.
			appendDefault(t, mw, name, dp, [][]byte{row(1, tc.current), row(2, tc.previous), row(3, tc.old), row(4, nil)})
			// An append of expired rows only succeeds as well.
			appendDefault(t, mw, name, dp, [][]byte{row(5, tc.old)})

			var ids []int64
			for _, r := range readAll(t, tbl) {
				ids = append(ids, r[0].(int64))
			}
			if !reflect.DeepEqual(ids, []int64{1, 2, 4}) {
				t.Fatalf("rows read back: ids %v, want [1 2 4] (3 and 5 are in an expired partition; 4 in __NULL__)", ids)
			}
			md, err := tbl.Metadata(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if md.NumRows != 3 || srv.RowCount(project, dsID, name) != 3 || srv.ExpiredRows(project, dsID, name) != 2 {
				t.Fatalf("numRows %d, RowCount %d, ExpiredRows %d; want 3, 3, 2", md.NumRows, srv.RowCount(project, dsID, name), srv.ExpiredRows(project, dsID, name))
			}
		})
	}

	t.Run("a shorter expiration expires existing partitions at once", func(t *testing.T) {
		tbl := c.Dataset(dsID).Table("t0")
		// Yesterday's partition ended at midnight UTC: an expiration shorter
		// than the time since expires it (an hour, unless it is not yet one
		// in the morning).
		sinceMidnight := time.Since(time.Now().UTC().Truncate(24 * time.Hour))
		if sinceMidnight < 2*time.Second {
			time.Sleep(2 * time.Second)
			sinceMidnight += 2 * time.Second
		}
		expiration := min(time.Hour, sinceMidnight/2)
		if _, err := tbl.Update(t.Context(), bigquery.TableMetadataToUpdate{
			TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType, Field: "ts", Expiration: expiration},
		}, ""); err != nil {
			t.Fatal(err)
		}
		if rows := readAll(t, tbl); len(rows) != 2 || srv.ExpiredRows(project, dsID, "t0") != 3 {
			t.Fatalf("after the patch: %v, %d expired; want rows 1 and 4, 3 expired", rows, srv.ExpiredRows(project, dsID, "t0"))
		}
	})

	t.Run("no expiration, or ingestion time, keeps every row", func(t *testing.T) {
		for name, tp := range map[string]*bigquery.TimePartitioning{
			"forever":   {Type: bigquery.DayPartitioningType, Field: "ts"},
			"ingestion": {Type: bigquery.DayPartitioningType, Expiration: time.Hour},
		} {
			tbl := c.Dataset(dsID).Table(name)
			if err := tbl.Create(t.Context(), &bigquery.TableMetadata{Schema: schema, TimePartitioning: tp}); err != nil {
				t.Fatal(err)
			}
			old := newMsg(t, msgDesc).set("id", int64(1)).set("ts", now.Add(-30*day).UnixMicro()).bytes()
			appendDefault(t, mw, name, dp, [][]byte{old})
			if n := len(readAll(t, tbl)); n != 1 || srv.ExpiredRows(project, dsID, name) != 0 {
				t.Fatalf("%s: %d rows, %d expired; want 1, 0", name, n, srv.ExpiredRows(project, dsID, name))
			}
		}
	})
}

// awayFromHourBoundary waits out the last seconds of a UTC hour, so that a
// test's partitions do not age between its append and its read.
func awayFromHourBoundary(t *testing.T) {
	t.Helper()
	if left := time.Until(time.Now().Truncate(time.Hour).Add(time.Hour)); left < 10*time.Second {
		time.Sleep(left + time.Second)
	}
}

// rawREST calls the REST API without the Go client, for what it cannot
// send (a null timePartitioning, tables.update) or to see the JSON itself.
func rawREST(t *testing.T, srv *bqfake.Server, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, srv.RESTEndpoint()+"/bigquery/v2"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s %s: decode: %v", method, path, err)
	}
	return resp.StatusCode, out
}

func errorMessage(res map[string]any) string {
	e, _ := res["error"].(map[string]any)
	msg, _ := e["message"].(string)
	return msg
}
