package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// dashboard mirrors the parts of a Grafana dashboard JSON model that
// deploy/monitoring/dashboard.json uses. It is decoded strictly, so a
// misspelt "targets" or "legendFormat" fails; panel options and field
// configs, whose shape depends on the panel plugin, are kept raw.
type dashboard struct {
	UID           string   `json:"uid"`
	Title         string   `json:"title"`
	Description   string   `json:"description"`
	Tags          []string `json:"tags"`
	Editable      bool     `json:"editable"`
	GraphTooltip  int      `json:"graphTooltip"`
	Refresh       string   `json:"refresh"`
	SchemaVersion int      `json:"schemaVersion"`
	Time          struct {
		From string `json:"from"`
		To   string `json:"to"`
	} `json:"time"`
	Timezone   string `json:"timezone"`
	Templating struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []json.RawMessage `json:"list"`
	} `json:"annotations"`
	Panels []panel `json:"panels"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type variable struct {
	Name       string          `json:"name"`
	Label      string          `json:"label"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"` // a string for a datasource variable, {query, refId} for a query variable
	Datasource *datasourceRef  `json:"datasource,omitempty"`
	Definition string          `json:"definition,omitempty"`
	Refresh    int             `json:"refresh,omitempty"`
	Sort       int             `json:"sort,omitempty"`
	Current    map[string]any  `json:"current"`
	Hide       int             `json:"hide"`
	IncludeAll bool            `json:"includeAll,omitempty"`
	AllValue   string          `json:"allValue,omitempty"`
	Multi      bool            `json:"multi,omitempty"`
}

type panel struct {
	ID          int            `json:"id"`
	Type        string         `json:"type"`
	Title       string         `json:"title"`
	Description string         `json:"description,omitempty"`
	Datasource  *datasourceRef `json:"datasource,omitempty"`
	GridPos     struct {
		H int `json:"h"`
		W int `json:"w"`
		X int `json:"x"`
		Y int `json:"y"`
	} `json:"gridPos"`
	Targets     []target        `json:"targets,omitempty"`
	FieldConfig json.RawMessage `json:"fieldConfig,omitempty"`
	Options     json.RawMessage `json:"options,omitempty"`
	Collapsed   bool            `json:"collapsed,omitempty"`
	Panels      []panel         `json:"panels,omitempty"`
}

type target struct {
	RefID        string         `json:"refId"`
	Expr         string         `json:"expr"`
	LegendFormat string         `json:"legendFormat"`
	Datasource   *datasourceRef `json:"datasource,omitempty"`
	Instant      bool           `json:"instant,omitempty"`
	Format       string         `json:"format,omitempty"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile("monitoring/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var d dashboard
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("monitoring/dashboard.json: %v", err)
	}
	if dec.More() {
		t.Fatal("monitoring/dashboard.json: more than one JSON value")
	}
	return d
}

// grafanaVars are the values the Grafana variables take when a dashboard
// query is parsed as PromQL. An unknown $variable is an error: a typo
// would leave the panel empty.
var grafanaVars = map[string]string{
	"__rate_interval": "2m",
	"__interval":      "30s",
	"__range":         "6h",
	"namespace":       "bqsink",
	"pod":             ".*",
}

var grafanaVar = regexp.MustCompile(`\$\{?(\w+)\}?`)

func substitute(expr string) (string, error) {
	var bad []string
	out := grafanaVar.ReplaceAllStringFunc(expr, func(m string) string {
		name := grafanaVar.FindStringSubmatch(m)[1]
		v, ok := grafanaVars[name]
		if !ok {
			bad = append(bad, m)
		}
		return v
	})
	if len(bad) > 0 {
		return "", fmt.Errorf("unknown Grafana variables %v", bad)
	}
	return out, nil
}

// query is one PromQL expression of the dashboard or the rules, named by
// where it is.
type query struct {
	where string
	expr  parser.Expr
}

var promql = parser.NewParser(parser.Options{})

// dashboardQueries parses every target of the dashboard, and the selector
// of each label_values() variable query, checking the panels' structure on
// the way: unique ids and refIds, the datasource variable everywhere, the
// grid within 24 columns.
func dashboardQueries(t *testing.T) []query {
	t.Helper()
	d := readDashboard(t)
	var out []query
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
			RefID string `json:"refId"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Errorf("variable %s: query: %v", v.Name, err)
			continue
		}
		m := regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`).FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q: want label_values(selector, label)", v.Name, q.Query)
			continue
		}
		sel, err := substitute(m[1])
		if err == nil {
			var e parser.Expr
			if e, err = promql.ParseExpr(sel); err == nil {
				out = append(out, query{"variable " + v.Name, e})
			}
		}
		if err != nil {
			t.Errorf("variable %s: %v", v.Name, err)
		}
	}
	for _, name := range []string{"datasource", "namespace", "pod"} {
		if !vars[name] {
			t.Errorf("dashboard: no variable %s", name)
		}
	}
	ids := map[int]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
			}
			ids[p.ID] = true
			if p.GridPos.X < 0 || p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H <= 0 {
				t.Errorf("panel %q: gridPos %+v outside the 24 columns", p.Title, p.GridPos)
			}
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q: no targets", p.Title)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				where := fmt.Sprintf("panel %q target %s", p.Title, tg.RefID)
				if refs[tg.RefID] || tg.RefID == "" {
					t.Errorf("%s: refId empty or used twice", where)
				}
				refs[tg.RefID] = true
				s, err := substitute(tg.Expr)
				if err != nil {
					t.Errorf("%s: %v", where, err)
					continue
				}
				e, err := promql.ParseExpr(s)
				if err != nil {
					t.Errorf("%s: %s: %v", where, tg.Expr, err)
					continue
				}
				out = append(out, query{where, e})
			}
		}
	}
	walk(d.Panels)
	return out
}

// ruleQueries parses every rule's expression, after checking the rule
// groups with Prometheus' own rules-file validation (rulefmt: names,
// durations, labels, annotation templates, expressions).
func ruleQueries(t *testing.T) []query {
	t.Helper()
	d := monitoringFiles(t)
	b, err := yaml.Marshal(map[string]any{"groups": d.rule.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	if _, errs := rulefmt.Parse(b, false, model.UTF8Validation, promql, slog.New(slog.NewTextHandler(io.Discard, nil))); len(errs) > 0 {
		for _, err := range errs {
			t.Errorf("PrometheusRule %s: %v", d.rule.Metadata.Name, err)
		}
	}
	var out []query
	for _, g := range d.rule.Spec.Groups {
		for _, r := range g.Rules {
			where := fmt.Sprintf("rule %s/%s", g.Name, r.Alert+r.Record)
			e, err := promql.ParseExpr(r.Expr)
			if err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			out = append(out, query{where, e})
			if r.Alert != "" && (r.Labels["severity"] == "" || r.Annotations["summary"] == "") {
				t.Errorf("%s: every alert needs a severity label and a summary", where)
			}
		}
	}
	return out
}

// externalMetrics are the series the dashboard and rules read that bqsink
// does not export, with where they come from.
var externalMetrics = map[string]string{
	"up":                                 "Prometheus, per scrape target",
	"kube_pod_container_resource_limits": "kube-state-metrics",
	"kube_pod_container_status_ready":    "kube-state-metrics",
}

// targetLabels are the labels Prometheus adds to every series it scrapes
// through the ServiceMonitor.
var targetLabels = []string{"job", "namespace", "pod", "instance", "service", "endpoint", "container"}

// uses is a metric a query reads and the labels it expects it to have.
type uses map[string]map[string]bool

// metricUses lists the metrics an expression reads, with the label names
// its matchers and aggregations over them rely on.
func metricUses(e parser.Expr) uses {
	out := uses{}
	names := func(n parser.Node) []string {
		var ns []string
		parser.Inspect(n, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				for _, m := range vs.LabelMatchers {
					if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual && !slices.Contains(ns, m.Value) {
						ns = append(ns, m.Value)
					}
				}
			}
			return nil
		})
		return ns
	}
	note := func(metric string, ls ...string) {
		if out[metric] == nil {
			out[metric] = map[string]bool{}
		}
		for _, l := range ls {
			out[metric][l] = true
		}
	}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			for _, name := range names(n) {
				note(name)
				for _, m := range n.LabelMatchers {
					if m.Name != model.MetricNameLabel {
						note(name, m.Name)
					}
				}
			}
		case *parser.AggregateExpr:
			if !n.Without {
				for _, name := range names(n.Expr) {
					note(name, n.Grouping...)
				}
			}
		}
		return nil
	})
	return out
}

// TestQueriesParse parses every PromQL expression of the dashboard and the
// rules with Prometheus' parser.
func TestQueriesParse(t *testing.T) {
	qs := append(dashboardQueries(t), ruleQueries(t)...)
	if len(qs) == 0 {
		t.Fatal("no queries")
	}
	t.Logf("%d expressions parse", len(qs))
}

// TestDashboardCovers checks that the dashboard shows what an operator
// needs: every bqsink metric the brief of the dashboard names.
func TestDashboardCovers(t *testing.T) {
	used := uses{}
	for _, q := range dashboardQueries(t) {
		for m := range metricUses(q.expr) {
			used[m] = nil
		}
	}
	for _, m := range []string{
		"bqsink_rows_written_total", "bqsink_partition_lag", "bqsink_group_lag", "bqsink_freshness_seconds_bucket",
		"bqsink_records_rejected_total", "bqsink_records_dead_lettered_total", "bqsink_retries_total",
		"bqsink_append_seconds_bucket", "bqsink_rebalances_total", "bqsink_buffered_bytes",
		"bqsink_buffered_bytes_limit", "process_resident_memory_bytes", "kube_pod_container_resource_limits",
		"bqsink_table_last_write_timestamp_seconds", "bqsink_appended_bytes_total", "bqsink_build_info",
		"bqsink_stage_failing", "bqsink_partitions_stalled",
	} {
		if _, ok := used[m]; !ok {
			t.Errorf("the dashboard does not show %s", m)
		}
	}
}

// TestMetricsExportedByDaemon starts the local stack and the daemon built
// from the parent module, scrapes its /metrics, and checks that every
// metric the dashboard and the rules read is exported (a histogram as
// name_bucket, name_sum and name_count), with the labels the queries match
// and group by. Series from elsewhere (kube-state-metrics, Prometheus' up)
// are listed in externalMetrics.
func TestMetricsExportedByDaemon(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the local stack and the daemon")
	}
	used := uses{}
	for _, q := range append(dashboardQueries(t), ruleQueries(t)...) {
		for m, ls := range metricUses(q.expr) {
			if used[m] == nil {
				used[m] = map[string]bool{}
			}
			maps.Copy(used[m], ls)
		}
	}
	for m := range externalMetrics {
		if _, ok := used[m]; !ok {
			t.Errorf("externalMetrics lists %s, which no query reads", m)
		}
	}
	var want []string
	for m := range used {
		if _, ext := externalMetrics[m]; !ext {
			want = append(want, m)
		}
	}
	slices.Sort(want)
	got := scrapeRunningDaemon(t, want)
	for _, m := range want {
		ls, ok := got[m]
		if !ok {
			t.Errorf("%s is read by the dashboard or the rules but the daemon does not export it", m)
			continue
		}
		for l := range used[m] {
			if !ls[l] && !slices.Contains(targetLabels, l) {
				t.Errorf("%s has no label %q (it has %v)", m, l, slices.Sorted(maps.Keys(ls)))
			}
		}
	}
	t.Logf("%d metrics read by the dashboard and rules, all exported: %s", len(want), strings.Join(want, " "))
}
