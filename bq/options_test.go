package bq

import (
	"errors"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
)

func optionsSchema() bigquery.Schema {
	return bigquery.Schema{
		col("id", bigquery.IntegerFieldType, "REQUIRED"),
		col("at", bigquery.TimestampFieldType, "NULLABLE"),
		col("day", bigquery.DateFieldType, "NULLABLE"),
		col("price", bigquery.FloatFieldType, "NULLABLE"),
		col("tags", bigquery.StringFieldType, "REPEATED"),
		col("rec", bigquery.RecordFieldType, "NULLABLE", col("ts", bigquery.TimestampFieldType, "NULLABLE")),
	}
}

// Settings that cannot create a table of the schema are a configuration
// error naming the setting's key and the column, before BigQuery is asked.
func TestCheckOptions(t *testing.T) {
	ok := []TableOptions{
		{},
		{Partitioning: &Partitioning{Type: "DAY"}},
		{Partitioning: &Partitioning{Type: "HOUR", Field: "at"}, Clustering: []string{"id", "DAY"}},
		{Partitioning: &Partitioning{Type: "MONTH", Field: "day"}},
	}
	for _, o := range ok {
		if err := checkOptions(o, optionsSchema()); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
	bad := map[string]TableOptions{
		`tables.t.partitioning.field "missing" is not a top-level column`: {Partitioning: &Partitioning{Type: "DAY", Field: "missing"}, PartitioningKey: "tables.t.partitioning"},
		`partitioning.field "price" is FLOAT`:                             {Partitioning: &Partitioning{Type: "DAY", Field: "price"}},
		`partitioning.type hour on the DATE column "day"`:                 {Partitioning: &Partitioning{Type: "HOUR", Field: "day"}},
		`partitioning.field "rec.ts" is not a top-level column`:           {Partitioning: &Partitioning{Type: "DAY", Field: "rec.ts"}},
		`clustering: "tags" is REPEATED`:                                  {Clustering: []string{"tags"}},
		`table_defaults.clustering: "price" is FLOAT`:                     {Clustering: []string{"price"}, ClusteringKey: "table_defaults.clustering"},
		`clustering: "nope" is not a top-level column`:                    {Clustering: []string{"id", "nope"}},
	}
	for want, o := range bad {
		err := checkOptions(o, optionsSchema())
		if !errors.Is(err, ErrTableConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: %v; want ErrTableConfig saying %s", o, err, want)
		}
	}
}

// A table bq creates has the settings; one that exists keeps its own.
func TestCreateWithOptions(t *testing.T) {
	s := newFake(t)
	c := newTestClient(t, s)
	tbl := c.Table("partitioned")
	tbl.SetOptions(TableOptions{
		Partitioning: &Partitioning{Type: "DAY", Field: "at", Expiration: 400 * 24 * time.Hour, RequireFilter: true},
		Clustering:   []string{"id"},
		Description:  "made by bq",
		Labels:       map[string]string{"team": "supply"},
	})
	if err := tbl.EnsureSchema(t.Context(), optionsSchema()); err != nil {
		t.Fatal(err)
	}
	md := tableMetadata(t, s, "partitioned")
	if md.TimePartitioning == nil || md.TimePartitioning.Type != bigquery.DayPartitioningType || md.TimePartitioning.Field != "at" ||
		md.TimePartitioning.Expiration != 400*24*time.Hour {
		t.Errorf("time partitioning %+v", md.TimePartitioning)
	}
	if md.Clustering == nil || strings.Join(md.Clustering.Fields, ",") != "id" || md.Description != "made by bq" || md.Labels["team"] != "supply" {
		t.Errorf("clustering %+v, description %q, labels %v", md.Clustering, md.Description, md.Labels)
	}

	bad := c.Table("badly_configured")
	bad.SetOptions(TableOptions{Partitioning: &Partitioning{Type: "DAY", Field: "price"}})
	if err := bad.EnsureSchema(t.Context(), optionsSchema()); !errors.Is(err, ErrTableConfig) || !permanent(err) {
		t.Errorf("EnsureSchema with a FLOAT partitioning field: %v, want a permanent ErrTableConfig", err)
	}
}
