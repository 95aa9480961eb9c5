package integration

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
)

// Tables as users configure them (issue 10): the real binary creates each
// table with the partitioning, clustering, description and labels its
// tables: entry or table_defaults say, read back through the BigQuery Go
// client; a setting that does not fit the schema stops only its topic; an
// existing table is written as it is, with one warning when its layout
// differs; rows of expired partitions are acknowledged and dropped by
// BigQuery; and -check names every bad setting with its line.
//
// Each test runs one daemon against a stack of its own, serving several
// topics (each with its own table settings) at once, so they run in
// parallel.

// tablesWarning is the start of the warning for an existing table whose
// layout differs from the configuration.
const tablesWarning = "the table exists with other partitioning or clustering than configured"

// tablesEnv is a stack whose topics all carry stock updates.
type tablesEnv struct {
	*itest.Env
	topics []string
	bq     *bigquery.Client
}

// newTablesEnv starts a stack with topics of the given partitions and the
// stock schemas registered, and a BigQuery client on its REST endpoint.
func newTablesEnv(t *testing.T, partitions int32, topics ...string) *tablesEnv {
	t.Helper()
	st, err := stack.Start(stack.Options{Partitions: partitions, Topics: topics})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	schemas, err := st.RegisterStock()
	if err != nil {
		t.Fatal(err)
	}
	c, err := bigquery.NewClient(t.Context(), stack.Project, option.WithEndpoint(st.BigQuery.RESTEndpoint()), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &tablesEnv{Env: &itest.Env{T: t, St: st, Schemas: schemas}, topics: topics, bq: c}
}

// config is the daemon config consuming every topic of te (and regex
// subscriptions, if given) as group, with tables set as given.
func (te *tablesEnv) config(group string, tables map[string]any, extraTopics ...string) *itest.DaemonConfig {
	return itest.NewDaemonConfig(te.Env, group).
		Set("kafka.topics", append(slices.Clone(te.topics), extraTopics...)).
		Set("tables", tables)
}

// produceTo writes updates to topic, each with the schema of its version.
func (te *tablesEnv) produceTo(topic string, us []stack.StockUpdate) {
	te.T.Helper()
	recs := make([]*kgo.Record, 0, len(us))
	for _, u := range us {
		r, err := te.Schemas.Record(u)
		if err != nil {
			te.T.Fatal(err)
		}
		r.Topic = topic
		recs = append(recs, r)
	}
	if err := te.St.Produce(te.T.Context(), recs...); err != nil {
		te.T.Fatal(err)
	}
}

// waitCommittedAll waits until group committed every record of each topic.
func (te *tablesEnv) waitCommittedAll(group string, topics ...string) {
	te.T.Helper()
	for _, topic := range topics {
		itest.WaitAllCommitted(te.T, te.St, group, topic, 60*time.Second)
	}
}

// v2Updates are n stock updates, all of version 2, whose adjusted_at (set
// on all but every tenth) lies in the last hour, so that no partition of
// a table expiring after a day or more has expired.
func v2Updates(n int, seed uint64) []stack.StockUpdate {
	now := time.Now().UTC()
	us := stack.StockUpdates(n, seed)
	for i := range us {
		u := &us[i]
		u.V2 = true
		if u.Reason == "" {
			u.Reason = "COUNT"
		}
		u.AdjustedAt = nil
		if i%10 != 9 {
			at := now.Add(-time.Duration(i%3600) * time.Second).Truncate(time.Millisecond)
			u.AdjustedAt = &at
		}
	}
	return us
}

// v1Updates are n stock updates, all of version 1 (no adjusted_at).
func v1Updates(n int, seed uint64) []stack.StockUpdate {
	us := stack.StockUpdates(n, seed)
	for i := range us {
		us[i].V2, us[i].AdjustedAt, us[i].UnitCost, us[i].Reason = false, nil, nil, ""
	}
	return us
}

// tableLayout is what the settings become on a BigQuery table, as
// the Go client's TableMetadata reports it.
type tableLayout struct {
	Partitioning  string // type, "" for none
	Field         string // "" for ingestion time
	Expiration    time.Duration
	RequireFilter bool
	Clustering    []string
	Description   string
	Labels        map[string]string
}

func layoutOf(md *bigquery.TableMetadata) tableLayout {
	l := tableLayout{RequireFilter: md.RequirePartitionFilter, Description: md.Description}
	if tp := md.TimePartitioning; tp != nil {
		l.Partitioning, l.Field, l.Expiration = string(tp.Type), tp.Field, tp.Expiration
	}
	if md.Clustering != nil && len(md.Clustering.Fields) > 0 {
		l.Clustering = md.Clustering.Fields
	}
	if len(md.Labels) > 0 {
		l.Labels = md.Labels
	}
	return l
}

func (l tableLayout) String() string {
	return fmt.Sprintf("{partitioning %q field %q expiration %v require_filter %v clustering %q description %q labels %v}",
		l.Partitioning, l.Field, l.Expiration, l.RequireFilter, l.Clustering, l.Description, l.Labels)
}

// readBack is a table read through the Go client: its metadata and rows.
type readBack struct {
	md   *bigquery.TableMetadata
	rows []map[string]bigquery.Value
}

// read reads a table of the stack's dataset through the Go client.
func (te *tablesEnv) read(table string) readBack {
	te.T.Helper()
	ctx := te.T.Context()
	ref := te.bq.Dataset(stack.Dataset).Table(table)
	md, err := ref.Metadata(ctx)
	if err != nil {
		te.T.Fatalf("table %s: %v", table, err)
	}
	out := readBack{md: md}
	it := ref.Read(ctx)
	for {
		row := map[string]bigquery.Value{}
		err := it.Next(&row)
		if errors.Is(err, iterator.Done) {
			return out
		}
		if err != nil {
			te.T.Fatalf("read %s: %v", table, err)
		}
		out.rows = append(out.rows, row)
	}
}

// exists reports whether the table exists, per the Go client.
func (te *tablesEnv) exists(table string) bool {
	te.T.Helper()
	_, err := te.bq.Dataset(stack.Dataset).Table(table).Metadata(te.T.Context())
	var gerr *googleapi.Error
	if errors.As(err, &gerr) && gerr.Code == http.StatusNotFound {
		return false
	}
	if err != nil {
		te.T.Fatalf("table %s: %v", table, err)
	}
	return true
}

// checkRows requires the rows to be exactly one per update, by EAN and
// timestamp.
func checkRows(t *testing.T, table string, rows []map[string]bigquery.Value, us []stack.StockUpdate) {
	t.Helper()
	want := map[string]int{}
	for _, u := range us {
		want[itest.Key(u.EAN, u.Timestamp)]++
	}
	got := map[string]int{}
	for _, r := range rows {
		ean, _ := r["ean"].(string)
		ts, _ := r["timestamp"].(int64)
		got[itest.Key(ean, ts)]++
	}
	if maps.Equal(got, want) {
		return
	}
	var missing, extra []string
	for k, n := range want {
		if got[k] < n {
			missing = append(missing, k)
		}
	}
	for k, n := range got {
		if want[k] < n {
			extra = append(extra, k)
		}
	}
	t.Errorf("%s: %d rows for %d updates; missing %d %v, unexpected or duplicated %d %v",
		table, len(rows), len(us), len(missing), firstN(missing, 5), len(extra), firstN(extra, 5))
}

// columnNames lists a schema's top-level columns.
func columnNames(s bigquery.Schema) []string {
	var out []string
	for _, f := range s {
		out = append(out, f.Name)
	}
	return out
}

// hasColumns reports whether s has every named top-level column.
func hasColumns(s bigquery.Schema, names ...string) bool {
	have := columnNames(s)
	for _, n := range names {
		if !slices.Contains(have, n) {
			return false
		}
	}
	return true
}

// unexpectedProblems lists the daemon's warn-and-above lines (and non-JSON
// lines) whose level and message contain none of allowed.
func unexpectedProblems(d *itest.Daemon, allowed ...string) map[string]int {
	out := map[string]int{}
	for p, n := range d.Problems() {
		ok := false
		for _, a := range allowed {
			if strings.Contains(p, a) {
				ok = true
			}
		}
		if !ok {
			out[p] = n
		}
	}
	return out
}

// Every partitioning type, with a field and by ingestion time, with
// expiration and require_filter, clustering, description and labels, from
// a topic's own entry, from table_defaults (short form, regex-matched
// topic) and from both key by key (labels replace the defaults' as a
// whole; an empty clustering list means none): each table is created exactly as
// configured, as the Go client's metadata reports it, and takes every row.
// Field-partitioned tables are created from v2 records (the field is v2's
// adjusted_at); v1 records follow once they exist and land too (in the
// __NULL__ partition).
func TestTablesCreatedAsConfigured(t *testing.T) {
	t.Parallel()
	type tc struct {
		topic, table string
		entry        any // the topic's tables: entry; nil: none
		want         tableLayout
	}
	defaults := tableLayout{Partitioning: "DAY", Expiration: 400 * 24 * time.Hour, Clustering: []string{"ean"},
		Description: "created by bqsink", Labels: map[string]string{"owner": "bqsink", "env": "test"}}
	cases := []tc{
		{"t_hour_field", "t_hour_field", map[string]any{
			"partitioning": map[string]any{"type": "hour", "field": "adjusted_at"},
			"clustering":   []string{"warehouse_id"},
			"description":  "hourly by adjustment",
			"labels":       map[string]any{"team": "supply"},
		}, tableLayout{Partitioning: "HOUR", Field: "adjusted_at", Clustering: []string{"warehouse_id"},
			Description: "hourly by adjustment", Labels: map[string]string{"team": "supply"}}},
		{"t_day_field", "stock_by_day", map[string]any{
			"table":        "stock_by_day",
			"partitioning": map[string]any{"type": "day", "field": "adjusted_at", "expiration": "400d", "require_filter": true},
			"clustering":   []string{"warehouse_id", "variant_id"},
			"description":  "Physical stock updates from SMS",
			"labels":       map[string]any{"team": "supply"},
		}, tableLayout{Partitioning: "DAY", Field: "adjusted_at", Expiration: 400 * 24 * time.Hour, RequireFilter: true,
			Clustering: []string{"warehouse_id", "variant_id"}, Description: "Physical stock updates from SMS", Labels: map[string]string{"team": "supply"}}},
		{"t_month_field", "kafka.stock_by_month", map[string]any{
			"table":        stack.Dataset + ".stock_by_month",
			"partitioning": map[string]any{"type": "month", "field": "adjusted_at", "expiration": "36h"},
		}, tableLayout{Partitioning: "MONTH", Field: "adjusted_at", Expiration: 36 * time.Hour,
			Clustering: defaults.Clustering, Description: defaults.Description, Labels: defaults.Labels}},
		{"t_year_field", "t_year_field", map[string]any{
			"partitioning": map[string]any{"type": "year", "field": "adjusted_at", "require_filter": true},
			"clustering":   []string{"variant_id", "warehouse_id", "reason", "adjusted_at"},
		}, tableLayout{Partitioning: "YEAR", Field: "adjusted_at", RequireFilter: true,
			Clustering: []string{"variant_id", "warehouse_id", "reason", "adjusted_at"}, Description: defaults.Description, Labels: defaults.Labels}},
		{"t_hour_ingest", "t_hour_ingest", map[string]any{
			"partitioning": map[string]any{"type": "hour", "expiration": "48h"},
			"labels":       map[string]any{"cost-center": "c_42"},
		}, tableLayout{Partitioning: "HOUR", Expiration: 48 * time.Hour, Clustering: defaults.Clustering,
			Description: defaults.Description, Labels: map[string]string{"cost-center": "c_42"}}},
		{"t_day_ingest", "t_day_ingest", map[string]any{
			"partitioning": map[string]any{"type": "DAY", "require_filter": true},
			"clustering":   []string{"warehouse_id", "variant_id", "ean", "reference"},
		}, tableLayout{Partitioning: "DAY", RequireFilter: true, Clustering: []string{"warehouse_id", "variant_id", "ean", "reference"},
			Description: defaults.Description, Labels: defaults.Labels}},
		{"t_month_ingest", "t_month_ingest", map[string]any{
			"partitioning": map[string]any{"type": "month"},
			"description":  "monthly",
		}, tableLayout{Partitioning: "MONTH", Clustering: defaults.Clustering, Description: "monthly", Labels: defaults.Labels}},
		// An empty clustering list in the entry wins over table_defaults'.
		{"t_year_ingest", "t_year_ingest", map[string]any{
			"partitioning": map[string]any{"type": "year", "expiration": "3650d"},
			"clustering":   []string{},
		}, tableLayout{Partitioning: "YEAR", Expiration: 3650 * 24 * time.Hour, Description: defaults.Description, Labels: defaults.Labels}},
		// The short form takes every setting from table_defaults.
		{"t_short", "stock_short", "stock_short", defaults},
		// A topic without an entry, as a regex subscription finds it.
		{"t_rx_one", "t_rx_one", nil, defaults},
	}
	var topics []string
	tables := map[string]any{}
	for _, c := range cases {
		topics = append(topics, c.topic)
		if c.entry != nil {
			tables[c.topic] = c.entry
		}
	}
	te := newTablesEnv(t, 2, topics...)
	te.topics = slices.DeleteFunc(slices.Clone(topics), func(s string) bool { return strings.HasPrefix(s, "t_rx_") })
	cfg := te.config("tables-created", tables, "^t_rx_.*").
		Set("table_defaults", map[string]any{
			"partitioning": map[string]any{"type": "day", "expiration": "400d"},
			"clustering":   []string{"ean"},
			"description":  "created by bqsink",
			"labels":       map[string]any{"owner": "bqsink", "env": "test"},
		})
	if code, out := itest.CheckConfig(t, cfg); code != 0 {
		t.Fatalf("-check: exit %d\n%s", code, out)
	}

	// v2 first, so that every table is created from a schema with
	// adjusted_at; then v1 records.
	produced := map[string][]stack.StockUpdate{}
	for i, c := range cases {
		us := v2Updates(40, uint64(100+i))
		te.produceTo(c.topic, us)
		produced[c.topic] = us
	}
	d := itest.StartDaemon(t, cfg)
	te.waitCommittedAll("tables-created", topics...)
	for i, c := range cases {
		us := v1Updates(20, uint64(200+i))
		te.produceTo(c.topic, us)
		produced[c.topic] = append(produced[c.topic], us...)
	}
	te.waitCommittedAll("tables-created", topics...)
	if st := d.Shutdown(15 * time.Second); st.Code != 0 {
		t.Fatalf("shutdown: %v", st)
	}

	for _, c := range cases {
		t.Run(c.topic, func(t *testing.T) {
			name := strings.TrimPrefix(c.table, stack.Dataset+".")
			rb := te.read(name)
			if got := layoutOf(rb.md); !reflect.DeepEqual(got, c.want) {
				t.Errorf("table %s:\n got %v\nwant %v", name, got, c.want)
			}
			if !hasColumns(rb.md.Schema, "adjusted_at", "unit_cost", "reason", "warehouse_id", "variant_id") {
				t.Errorf("table %s columns %v", name, columnNames(rb.md.Schema))
			}
			checkRows(t, name, rb.rows, produced[c.topic])
		})
	}
	if p := unexpectedProblems(d); len(p) > 0 {
		t.Errorf("the daemon warned: %v", p)
	}
	if n := te.St.BigQuery.ExpiredRows(stack.Project, stack.Dataset, "stock_by_month"); n != 0 {
		t.Errorf("%d rows of stock_by_month expired", n)
	}
}

// A table setting that does not fit the schema (a partitioning field that
// is missing or a STRING column, a clustering column that is missing, and,
// as the README documents, a field of v2 when the first record is v1) is a
// configuration error of that table only: its topic's partitions stop
// without creating the table or dead-lettering anything, the daemon names
// the key and the column at error, once (it repeats once a minute), and
// /readyz fails naming each table; meanwhile the good topic's rows, also
// those produced after the failure showed, all land and are committed. A
// SIGTERM still ends the daemon with 0, leaving the stalled records
// uncommitted, and once the settings are fixed a restart writes them all.
func TestTablesConfigErrorStallsOnlyItsTopic(t *testing.T) {
	t.Parallel()
	const group = "tables-config-error"
	type badCase struct {
		topic  string
		v1     bool // its records are v1 (no adjusted_at)
		entry  map[string]any
		phrase string // in the error
		fixed  map[string]any
		want   tableLayout // as fixed
	}
	dayOnAdjusted := map[string]any{"type": "day", "field": "adjusted_at"}
	bad := []badCase{
		{"bad_missing", false, map[string]any{"partitioning": map[string]any{"type": "day", "field": "adjusted_on"}},
			`tables.bad_missing.partitioning.field "adjusted_on" is not a top-level column`,
			map[string]any{"partitioning": dayOnAdjusted}, tableLayout{Partitioning: "DAY", Field: "adjusted_at"}},
		{"bad_string", false, map[string]any{"partitioning": map[string]any{"type": "day", "field": "warehouse_name"}},
			`tables.bad_string.partitioning.field "warehouse_name" is STRING`,
			map[string]any{"partitioning": dayOnAdjusted}, tableLayout{Partitioning: "DAY", Field: "adjusted_at"}},
		{"bad_cluster", false, map[string]any{"clustering": []string{"warehouse_id", "colour"}},
			`tables.bad_cluster.clustering: "colour" is not a top-level column`,
			map[string]any{"clustering": []string{"warehouse_id"}}, tableLayout{Clustering: []string{"warehouse_id"}}},
		{"v1_first", true, map[string]any{"partitioning": dayOnAdjusted},
			`tables.v1_first.partitioning.field "adjusted_at" is not a top-level column`,
			map[string]any{"partitioning": map[string]any{"type": "day"}}, tableLayout{Partitioning: "DAY"}},
	}
	topics := []string{"good"}
	goodEntry := map[string]any{"partitioning": dayOnAdjusted, "clustering": []string{"warehouse_id", "variant_id"}}
	tables := map[string]any{"good": goodEntry}
	fixedTables := map[string]any{"good": goodEntry}
	for _, b := range bad {
		topics = append(topics, b.topic)
		tables[b.topic] = b.entry
		fixedTables[b.topic] = b.fixed
	}
	te := newTablesEnv(t, 2, topics...)

	good := v2Updates(60, 1)
	te.produceTo("good", good)
	badProduced := map[string][]stack.StockUpdate{}
	for i, b := range bad {
		us := v2Updates(30, uint64(10+i))
		if b.v1 {
			us = v1Updates(30, uint64(10+i))
		}
		te.produceTo(b.topic, us)
		badProduced[b.topic] = us
	}
	d := itest.StartDaemon(t, te.config(group, tables))

	// Each bad table is reported at error naming the key and the column.
	for _, b := range bad {
		table := stack.Project + "." + stack.Dataset + "." + b.topic
		l := d.WaitLog(30*time.Second, "the error of "+b.topic, func(l itest.LogLine) bool {
			return l.Level == "error" && l.Str("target") == table
		})
		if l.Str("stage") != "table" || !strings.Contains(l.Str("error"), b.phrase) ||
			!strings.HasPrefix(l.Msg, "needs an operator") {
			t.Errorf("%s: logged %s: %q stage %q error %q; want stage table, an error containing %q",
				b.topic, l.Level, l.Msg, l.Str("stage"), l.Str("error"), b.phrase)
		}
	}
	// The good topic keeps flowing while they fail.
	more := v2Updates(40, 2)
	te.produceTo("good", more)
	good = append(good, more...)
	te.waitCommittedAll(group, "good")

	// /readyz fails at once, naming every bad table and only those.
	var body string
	itest.WaitUntil(t, 20*time.Second, func() string { return "/readyz naming every bad table; last: " + body }, func() bool {
		var code int
		code, body = d.Get("/readyz")
		if code != http.StatusServiceUnavailable {
			return false
		}
		for _, b := range bad {
			if !strings.Contains(body, stack.Project+"."+stack.Dataset+"."+b.topic) {
				return false
			}
		}
		return true
	})
	if strings.Contains(body, stack.Project+"."+stack.Dataset+".good") {
		t.Errorf("/readyz names the good table: %s", body)
	}

	checkStalled := func(when string) {
		t.Helper()
		for _, b := range bad {
			if te.exists(b.topic) {
				t.Errorf("%s: table %s was created", when, b.topic)
			}
			o, err := te.St.GroupOffsets(t.Context(), group, b.topic)
			if err != nil {
				t.Fatal(err)
			}
			if lag := o.Lag(); lag != int64(len(badProduced[b.topic])) {
				t.Errorf("%s: %s: lag %d, want all %d records uncommitted (committed %v)", when, b.topic, lag, len(badProduced[b.topic]), o.Committed)
			}
		}
	}
	checkStalled("while running")
	for _, b := range bad {
		table := stack.Project + "." + stack.Dataset + "." + b.topic
		lines := d.LogsMatching(func(l itest.LogLine) bool { return l.Level == "error" && l.Str("target") == table })
		if len(lines) != 1 {
			t.Errorf("%s: %d error lines within a minute, want 1 (repeated once a minute)", b.topic, len(lines))
		}
	}
	for _, m := range []string{"bqsink_records_rejected_total", "bqsink_records_dead_lettered_total"} {
		if n := d.Metric(m); n != 0 {
			t.Errorf("%s = %v, want 0", m, n)
		}
	}
	rb := te.read("good")
	checkRows(t, "good", rb.rows, good)
	want := tableLayout{Partitioning: "DAY", Field: "adjusted_at", Clustering: []string{"warehouse_id", "variant_id"}}
	if got := layoutOf(rb.md); !reflect.DeepEqual(got, want) {
		t.Errorf("table good:\n got %v\nwant %v", got, want)
	}
	if p := unexpectedProblems(d, "error: needs an operator: table fails"); len(p) > 0 {
		t.Errorf("other problems logged: %v", p)
	}
	// SIGTERM ends it cleanly though partitions hold records they cannot
	// write; those stay uncommitted for the next run.
	st := d.Shutdown(15 * time.Second)
	t.Logf("exited %v after SIGTERM", st)
	checkStalled("after shutdown")

	// The operator fixes the settings: a restart writes every record.
	d2 := itest.StartDaemon(t, te.config(group, fixedTables))
	te.waitCommittedAll(group, topics...)
	for _, b := range bad {
		rb := te.read(b.topic)
		checkRows(t, b.topic, rb.rows, badProduced[b.topic])
		if got := layoutOf(rb.md); !reflect.DeepEqual(got, b.want) {
			t.Errorf("table %s as fixed:\n got %v\nwant %v", b.topic, got, b.want)
		}
	}
	if p := unexpectedProblems(d2); len(p) > 0 {
		t.Errorf("the fixed run warned: %v", p)
	}
	d2.Shutdown(15 * time.Second)
	dl, err := te.St.ReadTopic(t.Context(), group+".dlq")
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 0 {
		t.Errorf("%d records dead-lettered, want none", len(dl))
	}
}

// stockV1Columns is the table bqsink makes of the v1 stock schema.
func stockV1Columns() bigquery.Schema {
	return bigquery.Schema{
		col("timestamp", bigquery.IntegerFieldType, "REQUIRED"),
		col("process_reference", bigquery.StringFieldType, "NULLABLE"),
		col("variant_id", bigquery.IntegerFieldType, "REQUIRED"),
		col("warehouse_id", bigquery.IntegerFieldType, "REQUIRED"),
		col("warehouse_name", bigquery.StringFieldType, "REQUIRED"),
		col("huubclient_id", bigquery.IntegerFieldType, "REQUIRED"),
		col("ean", bigquery.StringFieldType, "REQUIRED"),
		col("reference", bigquery.StringFieldType, "REQUIRED"),
		col("sales_channel_type", bigquery.StringFieldType, "REQUIRED"),
		col("delta", bigquery.IntegerFieldType, "REQUIRED"),
		col("stock_after_adjust", bigquery.IntegerFieldType, "REQUIRED"),
	}
}

// An existing table is written as it is: one whose partitioning or
// clustering differs from the configuration gets one warning naming both
// (and only one, though several partitions and two schema versions meet
// it), one that matches gets none, and all take every row. Schema
// evolution works on partitioned and clustered tables, existing or
// created by bqsink: v1 records first, then v2 records add their columns,
// and the layout stays.
func TestTablesExistingLayoutWarnsOnceAndEvolves(t *testing.T) {
	t.Parallel()
	const group = "tables-existing"
	clusterBoth := []string{"warehouse_id", "variant_id"}
	type tc struct {
		topic   string
		existed *bigquery.TableMetadata // created beforehand; nil: by bqsink
		entry   map[string]any
		want    tableLayout
		warning map[string]string // the warning's fields; nil: none
	}
	cases := []tc{
		{"ex_plain", &bigquery.TableMetadata{Schema: stockV1Columns()},
			map[string]any{"partitioning": map[string]any{"type": "day", "field": "adjusted_at"}, "clustering": clusterBoth},
			tableLayout{},
			map[string]string{"configured_partitioning": "DAY on adjusted_at", "table_partitioning": "none",
				"configured_clustering": "warehouse_id, variant_id", "table_clustering": "none"}},
		{"ex_clustered", &bigquery.TableMetadata{Schema: stockV1Columns(),
			TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.DayPartitioningType},
			Clustering:       &bigquery.Clustering{Fields: []string{"variant_id"}}},
			map[string]any{"partitioning": map[string]any{"type": "day"}, "clustering": clusterBoth},
			tableLayout{Partitioning: "DAY", Clustering: []string{"variant_id"}},
			map[string]string{"configured_partitioning": "DAY on ingestion time", "table_partitioning": "DAY on ingestion time",
				"configured_clustering": "warehouse_id, variant_id", "table_clustering": "variant_id"}},
		{"ex_same", &bigquery.TableMetadata{Schema: stockV1Columns(),
			TimePartitioning: &bigquery.TimePartitioning{Type: bigquery.MonthPartitioningType, Expiration: 400 * 24 * time.Hour},
			Clustering:       &bigquery.Clustering{Fields: clusterBoth}, Description: "made by hand"},
			map[string]any{"partitioning": map[string]any{"type": "month", "expiration": "400d"}, "clustering": clusterBoth,
				"description": "not applied", "labels": map[string]any{"not": "applied"}},
			tableLayout{Partitioning: "MONTH", Expiration: 400 * 24 * time.Hour, Clustering: clusterBoth, Description: "made by hand"},
			nil},
		{"evolving", nil,
			map[string]any{"partitioning": map[string]any{"type": "day", "require_filter": true}, "clustering": clusterBoth,
				"description": "evolves", "labels": map[string]any{"team": "supply"}},
			tableLayout{Partitioning: "DAY", RequireFilter: true, Clustering: clusterBoth, Description: "evolves", Labels: map[string]string{"team": "supply"}},
			nil},
	}
	var topics []string
	tables := map[string]any{}
	for _, c := range cases {
		topics = append(topics, c.topic)
		tables[c.topic] = c.entry
	}
	te := newTablesEnv(t, 3, topics...)
	for _, c := range cases {
		if c.existed != nil {
			if err := te.bq.Dataset(stack.Dataset).Table(c.topic).Create(t.Context(), c.existed); err != nil {
				t.Fatalf("create %s: %v", c.topic, err)
			}
		}
	}
	produced := map[string][]stack.StockUpdate{}
	for i, c := range cases {
		us := v1Updates(45, uint64(300+i))
		te.produceTo(c.topic, us)
		produced[c.topic] = us
	}
	d := itest.StartDaemon(t, te.config(group, tables))
	te.waitCommittedAll(group, topics...)
	for i, c := range cases {
		us := v2Updates(45, uint64(400+i))
		te.produceTo(c.topic, us)
		produced[c.topic] = append(produced[c.topic], us...)
	}
	te.waitCommittedAll(group, topics...)

	for _, c := range cases {
		t.Run(c.topic, func(t *testing.T) {
			rb := te.read(c.topic)
			if got := layoutOf(rb.md); !reflect.DeepEqual(got, c.want) {
				t.Errorf("layout:\n got %v\nwant %v", got, c.want)
			}
			if !hasColumns(rb.md.Schema, "adjusted_at", "unit_cost", "reason") {
				t.Errorf("v2's columns not added: %v", columnNames(rb.md.Schema))
			}
			checkRows(t, c.topic, rb.rows, produced[c.topic])
			table := stack.Project + "." + stack.Dataset + "." + c.topic
			if n := len(d.LogsMatching(func(l itest.LogLine) bool { return l.Msg == "updated table schema" && l.Str("table") == table })); n != 1 {
				t.Errorf("%d \"updated table schema\" lines, want 1", n)
			}
			warns := d.LogsMatching(func(l itest.LogLine) bool { return strings.HasPrefix(l.Msg, tablesWarning) && l.Str("table") == table })
			switch {
			case c.warning == nil && len(warns) > 0:
				t.Errorf("warned %d times: %s", len(warns), warns[0].Raw)
			case c.warning != nil && len(warns) != 1:
				t.Errorf("warned %d times, want once", len(warns))
			}
			if len(warns) > 0 && c.warning != nil {
				if warns[0].Level != "warn" {
					t.Errorf("warning at %s", warns[0].Level)
				}
				for k, v := range c.warning {
					if got := warns[0].Str(k); got != v {
						t.Errorf("warning's %s = %q, want %q", k, got, v)
					}
				}
			}
		})
	}
	if p := unexpectedProblems(d, tablesWarning); len(p) > 0 {
		t.Errorf("other problems logged: %v", p)
	}
	d.Shutdown(15 * time.Second)
}

// Rows whose partitioning column is older than the partition expiration:
// BigQuery takes them without an error and drops them, so the daemon
// acknowledges and commits them like any other (nothing dead-lettered or
// rejected, no warning), and the table shows only the rest: the fresh
// rows and those with a NULL adjusted_at (the __NULL__ partition, which
// never expires).
func TestTablesRowsOfExpiredPartitionsAreCommittedAndDropped(t *testing.T) {
	t.Parallel()
	const group, topic = "tables-expired", "expiring"
	te := newTablesEnv(t, 2, topic)
	cfg := te.config(group, map[string]any{topic: map[string]any{
		"partitioning": map[string]any{"type": "day", "field": "adjusted_at", "expiration": "1d"},
	}})
	us := v2Updates(90, 7)
	now := time.Now().UTC()
	var kept, expired []stack.StockUpdate
	for i := range us {
		switch {
		case i == 0: // the first is fresh: v2 creates the table either way
			kept = append(kept, us[i])
		case i%3 == 1:
			old := now.Add(-time.Duration(10+i%20) * 24 * time.Hour).Truncate(time.Millisecond)
			us[i].AdjustedAt = &old
			expired = append(expired, us[i])
		case i%3 == 2:
			us[i].AdjustedAt = nil
			kept = append(kept, us[i])
		default:
			kept = append(kept, us[i])
		}
	}
	te.produceTo(topic, us)
	d := itest.StartDaemon(t, cfg)
	te.waitCommittedAll(group, topic)

	if n := te.St.BigQuery.ExpiredRows(stack.Project, stack.Dataset, topic); n != len(expired) {
		t.Errorf("ExpiredRows = %d, want %d", n, len(expired))
	}
	rb := te.read(topic)
	checkRows(t, topic, rb.rows, kept)
	want := tableLayout{Partitioning: "DAY", Field: "adjusted_at", Expiration: 24 * time.Hour}
	if got := layoutOf(rb.md); !reflect.DeepEqual(got, want) {
		t.Errorf("layout:\n got %v\nwant %v", got, want)
	}
	table := stack.Project + "." + stack.Dataset + "." + topic
	if n := d.Metric("bqsink_rows_written_total", "table", table); n != float64(len(us)) {
		t.Errorf("bqsink_rows_written_total = %v, want %d (every row acknowledged)", n, len(us))
	}
	for _, m := range []string{"bqsink_records_rejected_total", "bqsink_records_dead_lettered_total"} {
		if n := d.Metric(m); n != 0 {
			t.Errorf("%s = %v, want 0", m, n)
		}
	}
	dl, err := te.St.ReadTopic(t.Context(), group+".dlq")
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 0 {
		t.Errorf("%d records dead-lettered, want none", len(dl))
	}
	if p := unexpectedProblems(d); len(p) > 0 {
		t.Errorf("the daemon warned: %v", p)
	}
	d.Shutdown(15 * time.Second)
}

// -check refuses bad table settings without a schema, each under its key
// with its line: an unknown partitioning type, five clustering columns,
// the metadata column's timestamp as partitioning field, an expiration
// that is not a duration, and a label key BigQuery refuses; and it exits 1.
func TestTablesCheckNamesEachBadSetting(t *testing.T) {
	t.Parallel()
	bin := itest.DaemonBinary(t)
	const cfg = `kafka:
  brokers: [127.0.0.1:9092]
  group_id: g
  topics: [a, b, c, d]
schema_registry: {url: "http://127.0.0.1:8081"}
bigquery: {project: p, dataset: d}
metadata_column: _kafka
tables:
  a:
    partitioning: {type: week, field: adjusted_at}
  b:
    clustering: [warehouse_id, variant_id, ean, reference, delta]
  c:
    partitioning:
      type: day
      field: _kafka.timestamp
  d:
    table: d_table
    partitioning: {type: day, expiration: 4OOd}
table_defaults:
  labels: {Team: supply}
`
	path := filepath.Join(t.TempDir(), "bad-tables.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-config", path, "-check")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatal(err)
	}
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("-check exited %d, want 1", code)
	}
	if stdout.Len() != 0 {
		t.Errorf("-check wrote to stdout: %s", stdout.String())
	}
	want := path + `: 5 problems:
  tables.a.partitioning.type: "week" is not hour, day, month or year (line 10)
  tables.b.clustering: 5 columns; BigQuery clusters on at most 4 (line 12)
  tables.c.partitioning.field: "_kafka.timestamp" is inside the metadata column; BigQuery partitions only on top-level columns: partition by ingestion time (leave field empty), which follows the records' arrival, or on a timestamp field of the records (line 16)
  tables.d.partitioning.expiration: "4OOd" is not a number of days (write 400d, or a duration such as 36h) (line 19)
  table_defaults.labels.Team: key: lowercase letters, digits, _ and -, starting with a letter, at most 63 characters (line 21)
`
	if stderr.String() != want {
		t.Errorf("-check printed\n%s\nwant\n%s", stderr.String(), want)
	}
}

// Many tables, few connections (issue 17): the real binary subscribes to
// 30 topics by a regular expression and writes each to the table of its
// name; every record lands in its own table, and BigQuery never sees more
// Storage Write connections than bigquery.max_connections, which the
// daemon's bqsink_storage_write_connections reports.
func TestTablesManyShareFewConnections(t *testing.T) {
	t.Parallel()
	const group, tables, perTopic, pool = "tables-many", 30, 20, 2
	var topics []string
	for i := range tables {
		topics = append(topics, fmt.Sprintf("many_%02d", i))
	}
	te := newTablesEnv(t, 1, topics...)
	produced := map[string][]stack.StockUpdate{}
	for i, topic := range topics {
		produced[topic] = v2Updates(perTopic, uint64(100+i))
		te.produceTo(topic, produced[topic])
	}
	cfg := itest.NewDaemonConfig(te.Env, group).
		Set("kafka.topics", []string{"^many_[0-9]+$"}).
		Set("bigquery.max_connections", pool)
	d := itest.StartDaemon(t, cfg)
	te.waitCommittedAll(group, topics...)
	for _, topic := range topics {
		rows := te.St.BigQuery.Rows(stack.Project, stack.Dataset, topic)
		if len(rows) != perTopic {
			t.Fatalf("table %s holds %d rows, want its topic's %d", topic, len(rows), perTopic)
		}
		want := map[string]bool{}
		for _, u := range produced[topic] {
			want[u.EAN] = true
		}
		for _, r := range rows {
			if !want[fmt.Sprint(r["ean"])] {
				t.Fatalf("table %s holds a row of another topic: %v", topic, r)
			}
		}
	}
	if _, peak := te.St.BigQuery.Connections(); peak > pool || peak < 1 {
		t.Errorf("BigQuery saw %d Storage Write connections at once for %d tables, want 1 to max_connections %d", peak, tables, pool)
	}
	if n := d.Metric("bqsink_storage_write_connections"); n < 1 || n > pool {
		t.Errorf("bqsink_storage_write_connections = %v, want 1 to %d", n, pool)
	}
	d.Terminate()
	if st := d.Wait(30 * time.Second); st.Code != 0 {
		t.Errorf("exit %+v after SIGTERM, want 0", st)
	}
}
