package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/bqsink/bqsink/internal/testcert"
	"github.com/bqsink/bqsink/sink"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	return writeFile(t, t.TempDir(), "config.yaml", body)
}

// writeFile writes body to dir/name and returns its path.
func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The committed config.yaml is what a user starts from and what the demo's
// -serve stack answers to: it must load and pass -check as it is.
func TestCommittedConfigLoads(t *testing.T) {
	cfg, err := Load("../../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.TableFor("sms_physical_stock_updated_topic"); got != "sms_physical_stock_updates" {
		t.Errorf("table for the seed topic = %q", got)
	}
	if cfg.BigQuery.Endpoint != "http://localhost:9050" || cfg.BigQuery.GRPCEndpoint != "localhost:9060" {
		t.Errorf("config.yaml must point at the demo stack, got %q %q", cfg.BigQuery.Endpoint, cfg.BigQuery.GRPCEndpoint)
	}
}

func TestMinimalConfigGetsDefaults(t *testing.T) {
	p := writeConfig(t, `
kafka: {brokers: [k:9092], group_id: g, topics: [orders.v1]}
schema_registry: {url: "http://sr:8081"}
bigquery: {project: p, dataset: d}
`)
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.BigQuery.AutoCreateTables || !cfg.BigQuery.AutoUpdateSchema {
		t.Error("auto_create_tables and auto_update_schema default to true")
	}
	if cfg.HTTP.Listen != ":8080" || cfg.Log.Level != "info" {
		t.Errorf("http/log defaults: %q %q", cfg.HTTP.Listen, cfg.Log.Level)
	}
	if got := cfg.TableFor("orders.v1"); got != "orders_v1" {
		t.Errorf("default table = %q, want orders_v1", got)
	}
}

// -check must list every problem in one pass, each under its full key, on
// its own line, in the order of the file, so a user fixes it in one go:
// unknown keys, values of the wrong type and what Validate refuses,
// together; keys missing from the file last.
func TestCheckListsEveryProblemByKey(t *testing.T) {
	p := writeConfig(t, `
kafka:
  brokers: []
  topics: ["^orders(", "a.b", "a_b"]
  start_offset: middle
  session_timeout: -1s
  brokerz: [k:9092]
schema_registry: {url: "ftp://sr"}
bigquery: {dataset: "bad-name!", auto_create_tables: maybe}
batch: {max_records: lots, max_wait: 1sec}
http: {listen: "nope"}
log: {level: loud}
`)
	_, err := Load(p)
	if err == nil {
		t.Fatal("want an error")
	}
	for _, key := range []string{
		"kafka.brokers", "kafka.group_id", "kafka.topics[0]", "a.b, a_b", "kafka.start_offset",
		"kafka.session_timeout", "schema_registry.url", "bigquery.project", "bigquery.dataset",
		"batch.max_records", "http.listen", "log.level",
	} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s:\n%v", key, err)
		}
	}
	want := p + `: 15 problems:
  kafka.brokers: required (line 3)
  kafka.topics: a.b, a_b all map to table "a_b"; name their tables under the tables key (line 4)
  kafka.topics[0]: bad regular expression: error parsing regexp: missing closing ): ` + "`^orders(`" + ` (line 4)
  kafka.start_offset: "middle" is not earliest or latest (line 5)
  kafka.session_timeout: must not be negative (line 6)
  kafka.brokerz: unknown key (line 7; did you mean kafka.brokers?)
  schema_registry.url: scheme must be http or https, got "ftp" (line 8)
  bigquery.dataset: "bad-name!" must be 1-1024 letters, digits or underscores (line 9)
  bigquery.auto_create_tables: want true or false, got "maybe" (line 9)
  batch.max_records: want an integer, got "lots" (line 10)
  batch.max_wait: "1sec" is not a duration (line 10; write 1s, 500ms, 5m)
  http.listen: "nope" is not host:port (line 11)
  log.level: "loud" is not debug, info, warn or error (line 12)
  bigquery.project: required
  kafka.group_id: required
`
	if got := err.Error() + "\n"; got != want {
		t.Errorf("-check prints\n%s\nwant\n%s", got, want)
	}
}

func TestUnknownKeyRejected(t *testing.T) {
	p := writeConfig(t, `
kafka: {brokers: [k:9092], group_id: g, topics: [t], batch_size: 10}
schema_registry: {url: "http://sr"}
bigquery: {project: p, dataset: d}
`)
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), "batch_size") {
		t.Fatalf("want an error naming batch_size, got %v", err)
	}
}

func TestEnvExpansion(t *testing.T) {
	t.Setenv("BQSINK_TEST_BROKER", "kafka-1:9092")
	t.Setenv("BQSINK_TEST_EMPTY", "")
	t.Setenv("BQSINK_TEST_RECORDS", "250")
	p := writeConfig(t, `
kafka: {brokers: ["${BQSINK_TEST_BROKER}"], group_id: "${BQSINK_TEST_GROUP:-sinkers}", topics: [t], commit_interval: "${BQSINK_TEST_EMPTY:-3s}"}
schema_registry: {url: "http://sr", username: u, password: "${BQSINK_TEST_EMPTY:-pw}"}
bigquery: {project: p, dataset: d}
batch: {max_records: "${BQSINK_TEST_RECORDS}"}
`)
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Kafka.Brokers[0] != "kafka-1:9092" || cfg.Kafka.GroupID != "sinkers" || cfg.Kafka.CommitInterval != 3*time.Second {
		t.Errorf("expanded wrong: %+v", cfg.Kafka)
	}
	if cfg.Batch.MaxRecords != 250 {
		t.Errorf("${VAR} holding a number must decode into an int key, quoted or not: got %d", cfg.Batch.MaxRecords)
	}

	// A reference in a comment is documentation, not a value. An unset
	// variable is named with the key and line that use it.
	p = writeConfig(t, `
# set ${BQSINK_TEST_IN_COMMENT} to ...
kafka: {brokers: ["${BQSINK_TEST_UNSET_A}"], group_id: "${BQSINK_TEST_UNSET_B}-${BQSINK_TEST_UNSET_C}"} # or ${BQSINK_TEST_IN_COMMENT}
`)
	_, err = Load(p)
	for _, want := range []string{
		"kafka.brokers[0]: environment variable BQSINK_TEST_UNSET_A is not set (line 3; write ${BQSINK_TEST_UNSET_A:-default} if it may be unset)",
		"kafka.group_id: environment variables BQSINK_TEST_UNSET_B, BQSINK_TEST_UNSET_C are not set (line 3; write ${NAME:-default} for one that may be unset)",
	} {
		if err == nil || !strings.Contains(err.Error(), want+"\n") {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if err != nil && (strings.Contains(err.Error(), "IN_COMMENT") || strings.Contains(err.Error(), "kafka.group_id: required")) {
		t.Errorf("a comment was expanded, or a key with an unset variable reported as missing too:\n%v", err)
	}
}

// Values are expanded after parsing: whatever a variable holds is taken as
// it is, never read as YAML. A password with " #" used to lose its tail to
// the comment rule, and one starting with * failed as an alias.
func TestEnvValuesAreNeverYAML(t *testing.T) {
	for _, pw := range []string{"abc #def", "*star", "a: b", "&anchor", "- dash", "[x", "{y", `quote"d`, "it's", "!tag", "%pct", "@at", "`tick", "|pipe", ">gt", "#hash", "123", "true", "null", "$x ${", "multi\nline"} {
		t.Run(pw, func(t *testing.T) {
			t.Setenv("BQSINK_TEST_PW", pw)
			for _, ref := range []string{`${BQSINK_TEST_PW}`, `"${BQSINK_TEST_PW}"`, `'${BQSINK_TEST_PW}'`} {
				p := writeConfig(t, `
kafka: {brokers: [k:9092], group_id: g, topics: [t]}
schema_registry:
  url: http://sr
  username: u
  password: `+ref+`
bigquery: {project: p, dataset: d}
`)
				cfg, err := Load(p)
				if err != nil {
					t.Fatalf("password: %s: %v", ref, err)
				}
				if got := cfg.SchemaRegistry.Password; got != pw {
					t.Errorf("password: %s with %q loaded as %q", ref, pw, got)
				}
			}
		})
	}
}

// Unknown keys are refused, each named by its full key and line.
func TestUnknownKeysNamedWithLine(t *testing.T) {
	p := writeConfig(t, `
kafka: {brokers: [k:9092], group_id: g, topics: [t]}
schema_registry: {url: "http://sr", passwd: x}
bigquery:
  project: p
  dataset: d
  grpc_endpont: x:1
batchs: {max_records: 1}
`)
	_, err := Load(p)
	for _, want := range []string{
		"schema_registry.passwd: unknown key (line 3; did you mean schema_registry.password?)",
		"bigquery.grpc_endpont: unknown key (line 7; did you mean bigquery.grpc_endpoint?)",
		"batchs: unknown key (line 8; did you mean batch?)",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
}

func TestSummaryRedactsSecrets(t *testing.T) {
	var c File
	c.SchemaRegistry.URL = "https://user:hunter2@sr.example.com"
	c.SchemaRegistry.Username = "user"
	c.SchemaRegistry.Password = "s3cret-pw"
	c.BigQuery.Endpoint = "https://bq:pa55@bq.example.com"
	b, err := json.Marshal(c.Summary()) // what zap.Any writes
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	for _, secret := range []string{"hunter2", "s3cret-pw", "pa55"} {
		if strings.Contains(got, secret) {
			t.Errorf("summary leaks %q: %s", secret, got)
		}
	}
	// The summary shows what runs: keys as in the file, defaults filled in.
	for _, want := range []string{`"max_buffered_bytes":67108864`, `"append_timeout":"20s"`, `"policy":"dlq"`, `"password":"[redacted]"`} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %s: %s", want, got)
		}
	}
}

// Every key the code reads is documented in config.yaml and in the README's
// configuration table: an undocumented key does not exist for operators.
// configProblems loads body and returns its problems as -check prints them.
func configProblems(t *testing.T, body string) []string {
	t.Helper()
	_, err := Load(writeConfig(t, body))
	var ce *configError
	if !errors.As(err, &ce) {
		t.Fatalf("want a *configError, got %v", err)
	}
	var got []string
	for _, p := range ce.problems {
		got = append(got, p.String())
	}
	return got
}

const (
	validKafka = "kafka: {brokers: [k:9092], group_id: g, topics: [t]}\n"
	validSR    = `schema_registry: {url: "http://sr"}` + "\n"
	validBQ    = "bigquery: {project: p, dataset: d}\n"
)

// Each kind of config error, word for word: the key, what is wrong, the
// line, and a hint where one helps. A value that cannot be decoded is
// reported once: not again as a missing key.
func TestConfigErrorMessages(t *testing.T) {
	t.Setenv("BQSINK_TEST_WAIT", "1sec")
	dir := t.TempDir()
	for _, c := range []struct {
		name, body string
		want       []string
	}{
		{"unknown key close to a known one", validKafka + validSR + validBQ + "batch: {max_recods: 5}",
			[]string{"batch.max_recods: unknown key (line 4; did you mean batch.max_records?)"}},
		{"unknown key misspelt", "kafka:\n  brokerz: [k:9092]\n  group_id: g\n  topics: [t]\n" + validSR + validBQ,
			[]string{"kafka.brokerz: unknown key (line 2; did you mean kafka.brokers?)", "kafka.brokers: required"}},
		{"unknown key, the start of a known one", validKafka + validSR + validBQ + "errors: {dlq: x}",
			[]string{"errors.dlq: unknown key (line 4; did you mean errors.dlq_topic?)"}},
		{"unknown key of another section", validKafka + validSR + validBQ + `listen: ":9090"`,
			[]string{"listen: unknown key (line 4; did you mean http.listen?)"}},
		{"unknown key like nothing", validKafka + validSR + validBQ + "batch: {size: 5}",
			[]string{"batch.size: unknown key (line 4)"}},
		{"integer", validKafka + validSR + validBQ + "batch: {max_records: lots}",
			[]string{`batch.max_records: want an integer, got "lots" (line 4)`}},
		{"integer out of range", validKafka + validSR + validBQ + "batch: {max_records: 99999999999999999999}",
			[]string{`batch.max_records: want an integer from -9223372036854775808 to 9223372036854775807, got "99999999999999999999" (line 4)`}},
		{"byte size", validKafka + validSR + validBQ + "memory: {max_buffered_bytes: 128MiB}",
			[]string{`memory.max_buffered_bytes: want an integer, got "128MiB" (line 4; a number of bytes: 8388608 is 8 MiB)`}},
		{"duration", validKafka + validSR + validBQ + "batch: {max_wait: 1sec}",
			[]string{`batch.max_wait: "1sec" is not a duration (line 4; write 1s, 500ms, 5m)`}},
		{"duration without a unit", validKafka + validSR + validBQ + "shutdown_timeout: 30",
			[]string{`shutdown_timeout: "30" is not a duration (line 4; write 1s, 500ms, 5m)`}},
		{"duration from the environment", validKafka + validSR + validBQ + `batch: {max_wait: "${BQSINK_TEST_WAIT}"}`,
			[]string{`batch.max_wait: "1sec" is not a duration (line 4; write 1s, 500ms, 5m)`}},
		{"boolean", validKafka + validSR + "bigquery: {project: p, dataset: d, auto_update_schema: sometimes}",
			[]string{`bigquery.auto_update_schema: want true or false, got "sometimes" (line 3)`}},
		{"list", `kafka: {brokers: "k:9092", group_id: g, topics: [t]}` + "\n" + validSR + validBQ,
			[]string{`kafka.brokers: want a list, got "k:9092" (line 1; write [a, b], or one "- a" line per entry)`}},
		{"string", "kafka: {brokers: [k:9092], group_id: {a: b}, topics: [t, [u]]}\n" + validSR + validBQ,
			[]string{"kafka.group_id: want a string, got a mapping (line 1)", "kafka.topics[1]: want a string, got a list (line 1)"}},
		{"section", validKafka + validSR + validBQ + "batch: 5",
			[]string{`batch: want a mapping of keys to values, got "5" (line 4)`}},
		{"section missing its keys", "kafka: localhost:9092\n" + validSR + validBQ,
			[]string{`kafka: want a mapping of keys to values, got "localhost:9092" (line 1)`}},
		{"map", validKafka + validSR + validBQ + "tables: [a, b]",
			[]string{"tables: want a mapping, got a list (line 4)"}},
		{"key given twice", validKafka + validSR + validBQ + "batch: {max_records: 5}\nbatch: {max_wait: 2s}",
			[]string{"batch: given twice (line 5; first on line 4)"}},
		{"unset variable", validKafka + `schema_registry: {url: "http://sr", username: u, password: "${BQSINK_TEST_UNSET_PW}"}` + "\n" + validBQ,
			[]string{"schema_registry.password: environment variable BQSINK_TEST_UNSET_PW is not set (line 2; write ${BQSINK_TEST_UNSET_PW:-default} if it may be unset)"}},
		{"credentials file missing", validKafka + validSR + "bigquery: {project: p, dataset: d, credentials_file: /nonexistent/sa.json}",
			[]string{`bigquery.credentials_file: "/nonexistent/sa.json" does not exist (line 3)`}},
		{"credentials file a directory", validKafka + validSR + "bigquery: {project: p, dataset: d, credentials_file: " + dir + "}",
			[]string{`bigquery.credentials_file: "` + dir + `" is a directory, not a file (line 3)`}},
		{"not a mapping", "- kafka\n- bigquery",
			[]string{"want a mapping of keys to values, got a list (line 1)"}},
		{"empty", "# nothing yet\n",
			[]string{"bigquery.dataset: required", "bigquery.project: required", "kafka.brokers: required", "kafka.group_id: required", "kafka.topics: required", "schema_registry.url: required"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := configProblems(t, c.body)
			if !slices.Equal(got, c.want) {
				t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(c.want, "\n  "))
			}
		})
	}

	// Not YAML at all, and no file: one line each.
	_, err := Load(writeConfig(t, "kafka: [\n"))
	if err == nil || !strings.Contains(err.Error(), "config.yaml: not valid YAML: line 1: did not find expected node content") {
		t.Errorf("broken YAML: %v", err)
	}
	_, err = Load("/nonexistent/bqsink.yaml")
	if err == nil || err.Error() != `-config: "/nonexistent/bqsink.yaml" does not exist` {
		t.Errorf("missing config file: %v", err)
	}
}

// What YAML writes for numbers, booleans and anchors keeps working now that
// main decodes every scalar itself.
func TestConfigValueForms(t *testing.T) {
	p := writeConfig(t, validSR+`
timeouts: &t {session_timeout: 20s}
kafka:
  <<: *t
  brokers: [k:9092]
  group_id: g
  topics: [t]
  commit_interval: 0
bigquery: {project: p, dataset: d, auto_create_tables: no, auto_update_schema: False, max_request_bytes: 1e6}
batch: {max_records: 1_000, max_bytes: 0x100000, max_inflight: "8"}
tables: {t: tt}
shutdown_timeout: 1m30s
`)
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), "timeouts: unknown key (line 3)") {
		t.Fatalf("want only the anchor's own key refused, got %v", err)
	}
	p = writeConfig(t, validSR+`
kafka:
  <<: {session_timeout: 20s, group_id: merged}
  brokers: [k:9092]
  group_id: g
  topics: [t]
  commit_interval: 0
bigquery: {project: p, dataset: d, auto_create_tables: no, auto_update_schema: False, max_request_bytes: 1e6}
batch: {max_records: 1_000, max_bytes: 0x100000, max_inflight: "8"}
tables: {t: tt}
shutdown_timeout: 1m30s
`)
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	k, bq, b := cfg.Kafka, cfg.BigQuery, cfg.Batch
	if k.SessionTimeout != 20*time.Second || k.GroupID != "g" || k.CommitInterval != 0 ||
		bq.AutoCreateTables || bq.AutoUpdateSchema || bq.MaxRequestBytes != 1_000_000 ||
		b.MaxRecords != 1000 || b.MaxBytes != 1<<20 || b.MaxInflight != 8 ||
		cfg.Tables["t"].Table != "tt" || cfg.ShutdownTimeout != 90*time.Second {
		t.Errorf("decoded wrong: %+v", cfg)
	}
}

// The issue's own example of upsert mode loads as written: sequence takes
// a word or a list of fields.
func TestUpsertTablesLoad(t *testing.T) {
	p := writeConfig(t, validKafka+validSR+validBQ+`
tables:
  inventory.public.products:
    table: products
    mode: upsert
    primary_key: [id]
    envelope: debezium
    sequence: debezium
    max_staleness: 15m
  entities: {mode: upsert, sequence: [meta.version]}
`)
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	dbz := cfg.Tables["inventory.public.products"]
	if dbz.Mode != "upsert" || !slices.Equal(dbz.PrimaryKey, []string{"id"}) || dbz.Envelope != "debezium" ||
		!slices.Equal(dbz.Sequence, sink.Sequence{"debezium"}) || dbz.MaxStaleness != 15*time.Minute {
		t.Errorf("products decoded as %+v", dbz)
	}
	if got := cfg.Tables["entities"].Sequence; !slices.Equal(got, sink.Sequence{"meta.version"}) {
		t.Errorf("entities sequence %q", got)
	}
	p = writeConfig(t, validKafka+validSR+validBQ+"tables: {t: {mode: upsert, sequence: {a: b}}}\n")
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "tables.t.sequence: want a list") {
		t.Errorf("a mapping as sequence: %v", err)
	}
}

// Every string key ending in _file names a file that must be readable,
// wherever it sits: the packages add such keys (TLS, tokens) and main
// finds them by their name.
func TestFileKeysMustBeReadable(t *testing.T) {
	type tlsConfig struct {
		Enabled bool   `yaml:"enabled"`
		CAFile  string `yaml:"ca_file"`
	}
	var v struct {
		Kafka struct {
			TLS  *tlsConfig `yaml:"tls"`
			SASL struct {
				TokenFile string `yaml:"token_file"`
			} `yaml:"sasl"`
		} `yaml:"kafka"`
		Registry struct {
			TLS tlsConfig `yaml:"tls"`
		} `yaml:"schema_registry"`
	}
	ok := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ok, []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(`
kafka:
  tls: {enabled: true, ca_file: /nonexistent/ca.pem}
  sasl: {token_file: /nonexistent/token}
schema_registry:
  tls: {ca_file: `+ok+`}
`), &doc); err != nil {
		t.Fatal(err)
	}
	d := decoder{lookup: os.LookupEnv, lines: map[string]*yaml.Node{}}
	rv := reflect.ValueOf(&v).Elem()
	d.decode(doc.Content[0], rv, "")
	d.checkFiles(rv, "")
	var got []string
	for _, p := range sortProblems(d.problems) {
		got = append(got, p.String())
	}
	want := []string{
		`kafka.tls.ca_file: "/nonexistent/ca.pem" does not exist (line 3)`,
		`kafka.sasl.token_file: "/nonexistent/token" does not exist (line 4)`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	// A file the process may not read is named with the uid that tried.
	if os.Getuid() == 0 {
		t.Log("running as root: every file is readable, the permission case is not tested")
		return
	}
	secret := filepath.Join(t.TempDir(), "sa.json")
	if err := os.WriteFile(secret, []byte("{}"), 0o000); err != nil {
		t.Fatal(err)
	}
	got = configProblems(t, validKafka+validSR+"bigquery: {project: p, dataset: d, credentials_file: "+secret+"}")
	want = []string{fmt.Sprintf(`bigquery.credentials_file: %q cannot be read by uid %d: permission denied (line 3)`, secret, os.Getuid())}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// The startup log shows the config with its keys as in the file: a tables
// entry in the long form is logged as its keys, not as Go's field names,
// so it can be pasted back.
func TestSummaryKeysAreTheFilesKeys(t *testing.T) {
	p := writeConfig(t, validKafka+validSR+validBQ+`
tables:
  orders:
    table: orders_v1
    partitioning: {type: day, expiration: 400d}
    clustering: [customer]
    labels: {team: sales}
`)
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(cfg.Summary())
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	for _, want := range []string{`"orders":{`, `"table":"orders_v1"`, `"partitioning":{`, `"type":"day"`, `"expiration":"400d"`,
		`"clustering":["customer"]`, `"labels":{"team":"sales"}`, `"description":""`} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %s: %s", want, got)
		}
	}
	for _, goName := range []string{`"Table"`, `"Partitioning"`, `"Labels"`, `"TableSettings"`} {
		if strings.Contains(got, goName) {
			t.Errorf("summary shows the Go field name %s: %s", goName, got)
		}
	}
	// What the summary logs loads as a config again.
	var again map[string]any
	if err := json.Unmarshal(b, &again); err != nil {
		t.Fatal(err)
	}
	tables, _ := yaml.Marshal(map[string]any{"tables": again["tables"]})
	if _, err := Load(writeConfig(t, validKafka+validSR+validBQ+string(tables))); err != nil {
		t.Errorf("the logged tables do not load: %v\n%s", err, tables)
	}
}

// -check reads what the files hold, as the daemon does at its start: a CA
// file that is not PEM, a client key that is not its certificate's, a
// credentials file that is not one, an empty token file are each named
// with their key and line, not found only at the first connection.
func TestCheckReadsWhatFilesHold(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string { return writeFile(t, dir, name, body) }
	notPEM := write("ca.pem", "a certificate, surely\n")
	empty := write("token", "\n")
	notCreds := write("sa.json", `{"type": "api_key"}`)
	ca, other := testcert.NewCA(t, "ca"), testcert.NewCA(t, "other")
	_, cert, _ := ca.ClientFiles(t)
	_, _, otherKey := other.ClientFiles(t)
	got := configProblems(t, fmt.Sprintf(`
kafka:
  brokers: [k:9092]
  group_id: g
  topics: [t]
  tls: {enabled: true, ca_file: %s}
  sasl: {mechanism: oauthbearer, token_file: %s}
schema_registry:
  url: https://sr
  tls: {ca_file: %s, cert_file: %s, key_file: %s}
bigquery: {project: p, dataset: d, credentials_file: %s}
`, notPEM, empty, ca.File, cert, otherKey, notCreds))
	want := []string{
		fmt.Sprintf("kafka.tls.ca_file: %s holds no PEM certificate (line 6)", notPEM),
		fmt.Sprintf("kafka.sasl.token_file: %q is empty: it holds no token (line 7)", empty),
		fmt.Sprintf("schema_registry.tls.cert_file, key_file: %s, %s: tls: private key does not match public key (line 10)", cert, otherKey),
		fmt.Sprintf("bigquery.credentials_file: %s: unsupported credentials type \"api_key\" (line 11)", notCreds),
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	// The same keys with good files pass.
	_, goodCert, goodKey := ca.ClientFiles(t)
	token := write("good-token", "eyJhbGciOi...\n")
	if _, err := Load(writeConfig(t, fmt.Sprintf(`
kafka:
  brokers: [k:9092]
  group_id: g
  topics: [t]
  tls: {enabled: true, ca_file: %s}
  sasl: {mechanism: oauthbearer, token_file: %s}
schema_registry:
  url: https://sr
  tls: {ca_file: %s, cert_file: %s, key_file: %s}
bigquery: {project: p, dataset: d}
`, ca.File, token, ca.File, goodCert, goodKey))); err != nil {
		t.Errorf("good files: %v", err)
	}
}

// The password files: -check refuses a password set twice (password and
// password_file), a file missing, and a file holding nothing but a line
// ending, each named with its key and line; a file whose password is a
// space is not empty.
func TestCheckPasswordFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string { return writeFile(t, dir, name, body) }
	empty, missing := write("empty", "\r\n"), filepath.Join(dir, "missing")
	got := configProblems(t, fmt.Sprintf(`
kafka:
  brokers: [k:9092]
  group_id: g
  topics: [t]
  sasl: {mechanism: scram-sha-512, username: u, password: p, password_file: %s}
schema_registry:
  url: https://sr
  username: u
  password_file: %s
bigquery: {project: p, dataset: d}
`, empty, missing))
	want := []string{
		"kafka.sasl.password_file: set together with kafka.sasl.password: set one of them (line 6)",
		fmt.Sprintf("kafka.sasl.password_file: %q is empty: it holds no password (line 6)", empty),
		fmt.Sprintf("schema_registry.password_file: %q does not exist (line 10)", missing),
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	got = configProblems(t, fmt.Sprintf(`
kafka:
  brokers: [k:9092]
  group_id: g
  topics: [t]
  sasl: {mechanism: scram-sha-512, username: u, password_file: %s}
schema_registry:
  url: https://sr
  password_file: %s
bigquery: {project: p, dataset: d}
`, write("good", "secret\n"), empty))
	want = []string{
		fmt.Sprintf("schema_registry.password_file: %q is empty: it holds no password (line 9)", empty),
		"schema_registry.username: required when password_file is set",
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	cfg, err := Load(writeConfig(t, fmt.Sprintf(`
kafka:
  brokers: [k:9092]
  group_id: g
  topics: [t]
  sasl: {mechanism: scram-sha-512, username: u, password_file: %s}
schema_registry:
  url: https://sr
  username: u
  password_file: %s
bigquery: {project: p, dataset: d}
`, write("good", "secret\n"), write("space", " \n"))))
	if err != nil {
		t.Fatalf("good files: %v", err)
	}
	// The files' paths are no secret: the startup log shows them.
	summary := fmt.Sprint(cfg.Summary())
	if !strings.Contains(summary, filepath.Join(dir, "good")) || strings.Contains(summary, "secret") {
		t.Errorf("summary %s: want the password file's path, not the password", summary)
	}
}
