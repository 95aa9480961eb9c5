package bq

import (
	"errors"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
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

// CheckSettings reports an existing table's other layout without waiting
// for a row (bqsink calls it at startup), once; a missing table is fine.
func TestCheckSettingsWarnsOnceForAnExistingTable(t *testing.T) {
	s := newFake(t)
	core, logs := observer.New(zap.WarnLevel)
	cfg := DefaultConfig()
	cfg.Project, cfg.Dataset = testProject, testDataset
	cfg.Endpoint, cfg.GRPCEndpoint = s.RESTEndpoint(), s.GRPCEndpoint()
	c, err := NewClient(t.Context(), cfg, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := restClient(t, s).Dataset(testDataset).Table("plain").Create(t.Context(), &bigquery.TableMetadata{Schema: optionsSchema()}); err != nil {
		t.Fatal(err)
	}
	opts := TableOptions{Partitioning: &Partitioning{Type: "DAY", Field: "at"}, Clustering: []string{"id"}}
	for _, name := range []string{"plain", "not_yet_created"} {
		tbl := c.Table(name)
		tbl.SetOptions(opts)
		for range 2 {
			if err := tbl.CheckSettings(t.Context()); err != nil {
				t.Fatalf("CheckSettings(%s): %v", name, err)
			}
		}
	}
	warns := logs.FilterMessageSnippet("other partitioning or clustering").All()
	if len(warns) != 1 {
		t.Fatalf("%d warnings, want 1 (for the existing table, once): %v", len(warns), warns)
	}
	f := warns[0].ContextMap()
	if f["configured_partitioning"] != "DAY on at" || f["table_partitioning"] != "none" || f["configured_clustering"] != "id" || f["table_clustering"] != "none" {
		t.Errorf("warning fields %v", f)
	}
}
