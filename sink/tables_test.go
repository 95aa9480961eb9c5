package sink

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestDaysTakesWholeDaysAndDurations(t *testing.T) {
	for in, want := range map[string]time.Duration{"400d": 400 * 24 * time.Hour, "36h": 36 * time.Hour, "90m": 90 * time.Minute, "0d": 0} {
		var d Days
		if err := d.UnmarshalText([]byte(in)); err != nil || time.Duration(d) != want {
			t.Errorf("%q = %v, %v; want %v", in, time.Duration(d), err, want)
		}
	}
	for _, in := range []string{"4OOd", "-1d", "d", "1w", "1.5d"} {
		var d Days
		if err := d.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q accepted as %v", in, time.Duration(d))
		}
	}
	if b, _ := Days(400 * 24 * time.Hour).MarshalText(); string(b) != "400d" {
		t.Errorf("400 days marshal as %q", b)
	}
}

// A topic's own settings win key by key; table_defaults fill the rest,
// for listed topics and for topics only a regular expression matches.
func TestSettingsForTopicOverDefaults(t *testing.T) {
	c := DefaultConfig()
	c.TableDefaults = TableSettings{
		Partitioning: &PartitioningConfig{Type: "day"},
		Clustering:   []string{"a"},
		Labels:       map[string]string{"team": "data"},
	}
	c.Tables = map[string]TableRoute{
		"orders": {Table: "orders_raw", TableSettings: TableSettings{Clustering: []string{"customer_id", "sku"}, Description: "Orders"}},
	}
	s, keys := c.SettingsFor("orders")
	if s.Partitioning == nil || s.Partitioning.Type != "day" || keys.partitioning != "table_defaults.partitioning" {
		t.Errorf("orders partitioning %v from %s; want the default day from table_defaults.partitioning", s.Partitioning, keys.partitioning)
	}
	if strings.Join(s.Clustering, ",") != "customer_id,sku" || keys.clustering != "tables.orders.clustering" {
		t.Errorf("orders clustering %v from %s; want its own", s.Clustering, keys.clustering)
	}
	if s.Description != "Orders" || s.Labels["team"] != "data" {
		t.Errorf("orders description %q labels %v", s.Description, s.Labels)
	}
	s, _ = c.SettingsFor("matched.by.regex")
	if s.Partitioning == nil || strings.Join(s.Clustering, ",") != "a" || s.Description != "" {
		t.Errorf("an unlisted topic gets %+v, want the defaults", s)
	}
	if c.TableFor("orders") != "orders_raw" || c.TableFor("matched.by.regex") != "matched_by_regex" {
		t.Errorf("TableFor: %q, %q", c.TableFor("orders"), c.TableFor("matched.by.regex"))
	}
	// The long form without table: keeps the default name.
	c.Tables["payments"] = TableRoute{TableSettings: TableSettings{Description: "p"}}
	if c.TableFor("payments") != "payments" {
		t.Errorf("TableFor(payments) = %q", c.TableFor("payments"))
	}
}

func TestTableSettingsProblems(t *testing.T) {
	c := DefaultConfig()
	c.Kafka.Brokers, c.Kafka.GroupID, c.Kafka.Topics = []string{"k:9092"}, "g", []string{"a", "b"}
	c.SchemaRegistry.URL = "http://sr"
	c.BigQuery.Project, c.BigQuery.Dataset = "p", "d"
	c.MetadataColumn = "_kafka"
	c.Tables = map[string]TableRoute{
		"a": {Table: "shared", TableSettings: TableSettings{Partitioning: &PartitioningConfig{Type: "day", Field: "_kafka.timestamp"}}},
		"b": {Table: "shared", TableSettings: TableSettings{Clustering: []string{"x", "y", "z", "w", "v"}}},
	}
	c.TableDefaults.Labels = map[string]string{"Team": "ok", "env": "Prod"}
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate accepted bad table settings")
	}
	for _, want := range []string{
		"tables.a.partitioning.field: \"_kafka.timestamp\" is inside the metadata column",
		"tables.b.clustering: 5 columns",
		"tables: a and b go to table \"shared\" with different",
		"table_defaults.labels.Team: key",
		"table_defaults.labels.env: value \"Prod\"",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() lacks %q:\n%v", want, err)
		}
	}
}

// Upsert mode's keys are checked before anything runs, each problem naming
// its key; what needs the schema (key columns, a sequence field's type) is
// checked when the table is written.
func TestUpsertSettingsProblems(t *testing.T) {
	valid := func() Config {
		c := DefaultConfig()
		c.Kafka.Brokers, c.Kafka.GroupID, c.Kafka.Topics = []string{"k:9092"}, "g", []string{"a"}
		c.SchemaRegistry.URL = "http://sr"
		c.BigQuery.Project, c.BigQuery.Dataset = "p", "d"
		return c
	}
	c := valid()
	c.Tables = map[string]TableRoute{
		"dbz": {TableSettings: TableSettings{Mode: ModeUpsert, Envelope: EnvelopeDebezium, Sequence: Sequence{SequenceDebezium}, MaxStaleness: 15 * time.Minute}},
		"ent": {TableSettings: TableSettings{Mode: ModeUpsert, PrimaryKey: []string{"id", "region"}, Sequence: Sequence{"meta.version"}}},
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate refused good upsert settings: %v", err)
	}
	if s, _ := c.SettingsFor("dbz"); s.Mode != ModeUpsert || s.Sequence.Word() != SequenceDebezium || s.MaxStaleness != 15*time.Minute {
		t.Errorf("SettingsFor(dbz) = %+v", s)
	}
	if s, _ := c.SettingsFor("other"); s.Mode != ModeAppend || s.Sequence.Word() != SequenceKafkaOffset {
		t.Errorf("an unlisted topic gets mode %q sequence %q; want append, kafka_offset", s.Mode, s.Sequence.Word())
	}

	key := make([]string, 17)
	for i := range key {
		key[i] = fmt.Sprintf("c%d", i)
	}
	c = valid()
	c.TableDefaults.Mode = "merge"
	c.Tables = map[string]TableRoute{
		"a": {TableSettings: TableSettings{PrimaryKey: []string{"id"}, Envelope: EnvelopeDebezium}},
		"b": {TableSettings: TableSettings{Mode: ModeUpsert, PrimaryKey: append(key, "c1", "bad-name"), Sequence: Sequence{SequenceDebezium}}},
		"c": {TableSettings: TableSettings{Mode: ModeUpsert, Sequence: Sequence{"a", "b", "c", "d"}, Envelope: "maxwell", MaxStaleness: -time.Second}},
		"d": {TableSettings: TableSettings{Mode: ModeUpsert, Sequence: Sequence{"9lives"}}},
	}
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate accepted bad upsert settings")
	}
	for _, want := range []string{
		`table_defaults.mode: "merge" is not append or upsert`,
		"tables.a.primary_key: only tables with mode: upsert",
		"tables.a.envelope: debezium needs mode: upsert",
		"tables.b.primary_key: 19 columns; BigQuery keys on at most 16",
		`tables.b.primary_key[17]: "c1" is listed twice`,
		`tables.b.primary_key[18]: "bad-name" is not a top-level column name`,
		"tables.b.sequence: debezium takes the source position from Debezium's change events",
		"tables.c.sequence: 4 fields; at most 3",
		`tables.c.envelope: "maxwell" is not none or debezium`,
		"tables.c.max_staleness: negative",
		`tables.d.sequence[0]: "9lives" is not kafka_offset, debezium or a dotted path`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() lacks %q:\n%v", want, err)
		}
	}

	c = valid()
	c.BigQuery.Delivery = "exactly_once"
	c.Tables = map[string]TableRoute{"a": {TableSettings: TableSettings{Mode: ModeUpsert}}}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "tables.a.mode: upsert with bigquery.delivery: exactly_once") {
		t.Errorf("upsert with exactly_once: %v", err)
	}
}
