package main

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The committed config.yaml is what a user starts from and what the demo's
// -serve stack answers to: it must load and pass -check as it is.
func TestCommittedConfigLoads(t *testing.T) {
	cfg, err := loadConfig("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.TableFor("sms_physical_stock_updated_topic"); got != "sms_physical_stock_updates" {
		t.Errorf("table for the seed topic = %q", got)
	}
	if cfg.BigQuery.Endpoint != "http://localhost:9050" || cfg.BigQuery.GRPCEndpoint != "localhost:9060" {
		t.Errorf("config.yaml must point at the demo stack, got %q %q", cfg.BigQuery.Endpoint, cfg.BigQuery.GRPCEndpoint)
	}
	var stdout, stderr strings.Builder
	if code := run([]string{"-config", "config.yaml", "-check"}, &stdout, &stderr); code != 0 || stdout.String() != "config.yaml: ok\n" {
		t.Errorf("-check on config.yaml exited %d: %s%s", code, stdout.String(), stderr.String())
	}
}

func TestMinimalConfigGetsDefaults(t *testing.T) {
	p := writeConfig(t, `
kafka: {brokers: [k:9092], group_id: g, topics: [orders.v1]}
schema_registry: {url: "http://sr:8081"}
bigquery: {project: p, dataset: d}
`)
	cfg, err := loadConfig(p)
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
	_, err := loadConfig(p)
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
	var stdout, stderr strings.Builder
	if code := run([]string{"-config", p, "-check"}, &stdout, &stderr); code != 1 {
		t.Errorf("-check exited %d, want 1", code)
	}
	want := p + `: 15 problems:
  kafka.brokers: required (line 3)
  kafka.topics: a.b, a_b all map to table "a_b"; name their tables under tables: (line 4)
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
	if stderr.String() != want {
		t.Errorf("-check printed\n%s\nwant\n%s", stderr.String(), want)
	}
	if stdout.String() != "" {
		t.Errorf("-check wrote to stdout: %s", stdout.String())
	}
}

func TestUnknownKeyRejected(t *testing.T) {
	p := writeConfig(t, `
kafka: {brokers: [k:9092], group_id: g, topics: [t], batch_size: 10}
schema_registry: {url: "http://sr"}
bigquery: {project: p, dataset: d}
`)
	_, err := loadConfig(p)
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
	cfg, err := loadConfig(p)
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
	_, err = loadConfig(p)
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
				cfg, err := loadConfig(p)
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
	_, err := loadConfig(p)
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
	var c config
	c.SchemaRegistry.URL = "https://user:hunter2@sr.example.com"
	c.SchemaRegistry.Username = "user"
	c.SchemaRegistry.Password = "s3cret-pw"
	c.BigQuery.Endpoint = "https://bq:pa55@bq.example.com"
	b, err := json.Marshal(c.summary()) // what zap.Any writes
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
func TestEveryConfigKeyIsDocumented(t *testing.T) {
	raw, err := os.ReadFile("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	keys := yamlKeys(reflect.TypeOf(config{}), "")
	if len(keys) < 30 {
		t.Fatalf("found only %d keys: %v", len(keys), keys)
	}
	for _, key := range keys {
		if !hasKey(doc, strings.Split(key, ".")) {
			t.Errorf("config.yaml does not document %s", key)
		}
		if !strings.Contains(string(readme), "| `"+key+"` |") {
			t.Errorf("README's configuration table does not document %s", key)
		}
	}
}

// yamlKeys lists the dotted YAML keys of a config struct's leaves; a map
// (tables) counts as one key.
func yamlKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if opts == "inline" {
			keys = append(keys, yamlKeys(f.Type, prefix)...)
			continue
		}
		if name == "" || name == "-" {
			continue
		}
		if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
			keys = append(keys, yamlKeys(f.Type, prefix+name+".")...)
			continue
		}
		keys = append(keys, prefix+name)
	}
	return keys
}

func hasKey(doc map[string]any, path []string) bool {
	v, ok := doc[path[0]]
	if !ok {
		return false
	}
	if len(path) == 1 {
		return true
	}
	sub, ok := v.(map[string]any)
	return ok && hasKey(sub, path[1:])
}

// configProblems loads body and returns its problems as -check prints them.
func configProblems(t *testing.T, body string) []string {
	t.Helper()
	_, err := loadConfig(writeConfig(t, body))
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
	_, err := loadConfig(writeConfig(t, "kafka: [\n"))
	if err == nil || !strings.Contains(err.Error(), "config.yaml: not valid YAML: line 1: did not find expected node content") {
		t.Errorf("broken YAML: %v", err)
	}
	_, err = loadConfig("/nonexistent/bqsink.yaml")
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
	_, err := loadConfig(p)
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
	cfg, err := loadConfig(p)
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

// A stranger's mistakes on the command line get exit code 2 and a pointer
// to -help; -help and -version answer and exit 0. Nothing starts.
func TestCommandLine(t *testing.T) {
	p := writeConfig(t, validKafka+validSR+validBQ)
	for _, c := range []struct {
		args           []string
		code           int
		stdout, stderr string // a prefix of each
	}{
		{[]string{"-config", p, "extra", "-check"}, 2, "",
			`bqsink: unexpected arguments "extra" "-check": bqsink takes flags only, and reads none after an argument` + "\nusage: bqsink [-config FILE] [-check] | bqsink -version\nRun 'bqsink -help' for more.\n"},
		{[]string{"run"}, 2, "", `bqsink: unexpected argument "run": bqsink takes flags only` + "\n"},
		{[]string{"-chek"}, 2, "", "bqsink: flag provided but not defined: -chek\nusage: "},
		{[]string{"-check=maybe"}, 2, "", `bqsink: invalid boolean value "maybe" for -check: parse error` + "\n"},
		{[]string{"-config"}, 2, "", "bqsink: flag needs an argument: -config\n"},
		{[]string{"-version", "extra"}, 2, "", "bqsink: unexpected argument"},
		{[]string{"-h"}, 0, "Usage:\n  bqsink [-config FILE]", ""},
		{[]string{"-help"}, 0, "Usage:\n", ""},
		{[]string{"--help"}, 0, "Usage:\n", ""},
		{[]string{"-version"}, 0, "bqsink ", ""},
		{[]string{"-config", p, "-check"}, 0, p + ": ok\n", ""},
	} {
		var stdout, stderr strings.Builder
		code := run(c.args, &stdout, &stderr)
		if code != c.code || !strings.HasPrefix(stdout.String(), c.stdout) || (c.stdout == "") != (stdout.Len() == 0) ||
			!strings.HasPrefix(stderr.String(), c.stderr) || (c.stderr == "") != (stderr.Len() == 0) {
			t.Errorf("bqsink %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(c.args, " "), code, c.code, stdout.String(), stderr.String())
		}
	}

	var help strings.Builder
	run([]string{"-help"}, &help, io.Discard)
	for _, want := range []string{
		"  -check         validate the config, print every problem, and exit\n",
		"  -config FILE   the YAML config FILE (default config.yaml)\n",
		"  -version       print the version and exit\n",
		"  -help          print this help and exit\n",
		"Exit codes:\n  0  ", "\n  1  the config is invalid", "\n  2  bad flags or arguments\n",
		"https://github.com/bqsink/bqsink#readme\n",
	} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("-help lacks %q:\n%s", want, help.String())
		}
	}

	var v strings.Builder
	run([]string{"-version"}, &v, io.Discard)
	if !regexp.MustCompile(`^bqsink \S+ \(commit \S+, built \S+, go1\.\S+\)\n$`).MatchString(v.String()) {
		t.Errorf("-version printed %q", v.String())
	}
}

// -version and the metrics say which build runs: what was stamped with
// -ldflags -X, else what Go recorded from the module and the checkout.
func TestDescribeBuild(t *testing.T) {
	vcs := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/bqsink/bqsink", Version: "v0.0.0-20261202011825-c57b7db12345+dirty"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "c57b7db1234567890abcdef1234567890abcdef0"},
			{Key: "vcs.time", Value: "2026-12-02T01:18:25Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	for _, c := range []struct {
		name                  string
		bi                    *debug.BuildInfo
		version, commit, date string
		want                  string
	}{
		{"stamped", vcs, "v1.4.0", "0123456789abcdef0123456789abcdef01234567", "2026-12-03T10:00:00Z",
			"bqsink v1.4.0 (commit 0123456789ab, built 2026-12-03T10:00:00Z, go1.26.8)"},
		{"stamped short commit", nil, "v1.4.0", "0123abc", "", "bqsink v1.4.0 (commit 0123abc, built unknown, " + runtime.Version() + ")"},
		{"from a checkout", vcs, "", "", "",
			"bqsink v0.0.0-20261202011825-c57b7db12345+dirty (commit c57b7db12345-dirty, built 2026-12-02T01:18:25Z, go1.26.8)"},
		{"no version control", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}}, "", "", "",
			"bqsink devel (commit unknown, built unknown, go1.26.8)"},
		{"go install of a release", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.4.0"}}, "", "", "",
			"bqsink v1.4.0 (commit unknown, built unknown, go1.26.8)"},
	} {
		if got := describeBuild(c.bi, c.version, c.commit, c.date).String(); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}
}

func TestBuildInfoMetric(t *testing.T) {
	mfs, err := newRegistry(buildInfo{Version: "v1.4.0", Commit: "0123456789ab", GoVersion: "go1.26.8"}).Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "bqsink_build_info" {
			continue
		}
		m := mf.GetMetric()[0]
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if m.GetGauge().GetValue() != 1 || !maps.Equal(labels, map[string]string{"version": "v1.4.0", "commit": "0123456789ab", "go_version": "go1.26.8"}) {
			t.Errorf("bqsink_build_info = %v %v", m.GetGauge().GetValue(), labels)
		}
		return
	}
	t.Error("no bqsink_build_info")
}

// dockerfile is the Dockerfile as instructions, continuation lines joined,
// comments dropped.
func dockerfile(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	cur := ""
	for line := range strings.SplitSeq(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") || line == "" && cur == "" {
			continue
		}
		if s, ok := strings.CutSuffix(line, "\\"); ok {
			cur += s + " "
			continue
		}
		if cur += line; cur != "" {
			out = append(out, cur)
		}
		cur = ""
	}
	return out
}

// The image runs the static binary as distroless' non-root user, with the
// config expected at /etc/bqsink/config.yaml and none baked in:
// config.yaml points at the local test stack with authentication off.
func TestDockerfile(t *testing.T) {
	var stage string
	var final []string
	args := map[string]string{}
	for _, in := range dockerfile(t) {
		op, rest, _ := strings.Cut(in, " ")
		switch strings.ToUpper(op) {
		case "FROM":
			stage, final = rest, nil
		case "ARG":
			name, def, ok := strings.Cut(rest, "=")
			if !ok {
				t.Errorf("ARG %s has no default", name)
			}
			args[name] = def
		}
		final = append(final, in)
		if strings.Contains(in, "config.yaml") && strings.ToUpper(op) != "ENTRYPOINT" {
			t.Errorf("the image must not carry a config: %s", in)
		}
	}
	if !strings.HasPrefix(stage, "gcr.io/distroless/static") || !strings.HasSuffix(stage, ":nonroot") {
		t.Errorf("final stage FROM %s, want distroless static nonroot", stage)
	}
	var user, entrypoint string
	for _, in := range final[1:] {
		op, rest, _ := strings.Cut(in, " ")
		switch strings.ToUpper(op) {
		case "COPY", "ADD":
			if !strings.HasPrefix(rest, "--from=build /bqsink ") {
				t.Errorf("the final stage copies only the binary: %s", in)
			}
		case "USER":
			user = rest
		case "ENTRYPOINT":
			entrypoint = rest
		}
	}
	// Numeric: Kubernetes' runAsNonRoot cannot check a user name.
	if user != "65532:65532" {
		t.Errorf("USER %q, want 65532:65532 (distroless nonroot)", user)
	}
	var ep []string
	if err := json.Unmarshal([]byte(entrypoint), &ep); err != nil || !slices.Equal(ep, []string{"/bqsink", "-config", "/etc/bqsink/config.yaml"}) {
		t.Errorf("ENTRYPOINT %s, want [\"/bqsink\", \"-config\", \"/etc/bqsink/config.yaml\"]", entrypoint)
	}
	build := dockerBuildCommand(t)
	for _, want := range []string{"CGO_ENABLED=0 go build -trimpath ", "-X main.version=${VERSION}", "-X main.commit=${COMMIT}", "-X main.date=${BUILD_DATE}", "-o /bqsink ."} {
		if !strings.Contains(build, want) {
			t.Errorf("the build command lacks %q: %s", want, build)
		}
	}
	for _, a := range []string{"VERSION", "COMMIT", "BUILD_DATE"} {
		if _, ok := args[a]; !ok {
			t.Errorf("no ARG %s", a)
		}
	}
}

// dockerBuildCommand is the build stage's RUN that builds the binary.
func dockerBuildCommand(t *testing.T) string {
	t.Helper()
	for _, in := range dockerfile(t) {
		if cmd, ok := strings.CutPrefix(in, "RUN "); ok && strings.Contains(cmd, "go build") {
			return cmd
		}
	}
	t.Fatal("no RUN with go build in the Dockerfile")
	return ""
}

// dockerignore reads .dockerignore as Docker does: a path is excluded by
// the last pattern matching it or a directory above it; ! re-includes.
func dockerignore(t *testing.T) func(path string) bool {
	t.Helper()
	raw, err := os.ReadFile(".dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	type rule struct {
		re     *regexp.Regexp
		negate bool
	}
	var rules []rule
	for line := range strings.SplitSeq(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		neg := strings.HasPrefix(line, "!")
		pat := filepath.ToSlash(filepath.Clean(strings.TrimPrefix(strings.TrimPrefix(line, "!"), "/")))
		var re strings.Builder
		for i := 0; i < len(pat); i++ {
			switch {
			case strings.HasPrefix(pat[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(pat[i:], "**"):
				re.WriteString(".*")
				i++
			case pat[i] == '*':
				re.WriteString("[^/]*")
			case pat[i] == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(pat[i : i+1]))
			}
		}
		rules = append(rules, rule{regexp.MustCompile("^" + re.String() + "$"), neg})
	}
	return func(path string) bool {
		excluded := false
		for _, r := range rules {
			for p := path; p != "."; p = filepath.Dir(p) {
				if r.re.MatchString(p) {
					excluded = !r.negate
					break
				}
			}
		}
		return excluded
	}
}

// The Docker build context, as .dockerignore leaves it, holds every file
// the binary is built from and no config or credentials; built with the
// Dockerfile's own command it is a static binary that reports the version
// and commit it was stamped with, on -version and in its first log line.
func TestDockerBuildContext(t *testing.T) {
	ignored := dockerignore(t)
	out, err := exec.Command("go", "list", "-deps", "-f", `{{if not .Standard}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{range .EmbedFiles}} {{.}}{{end}}{{end}}`, ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	needed := []string{"go.mod", "go.sum"}
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		rel, err := filepath.Rel(root, fields[0])
		if err != nil || strings.HasPrefix(rel, "..") {
			continue // another module's
		}
		for _, f := range fields[1:] {
			needed = append(needed, filepath.Join(rel, f))
		}
	}
	for _, f := range needed {
		if ignored(f) {
			t.Errorf(".dockerignore leaves out %s, which the binary is built from: add its directory with !", f)
		}
	}
	for _, f := range []string{".git", "config.yaml", "prod.yaml", "sa.json", "integration/stack/stack.go", "deploy/kustomization.yaml", "main_test.go", "sink/config_test.go", "schema/testdata/x.avsc", "Dockerfile", "README.md"} {
		if !ignored(f) {
			t.Errorf(".dockerignore lets %s into the build context", f)
		}
	}

	if testing.Short() {
		t.Skip("-short: the context is not built")
	}
	ctxDir := t.TempDir()
	err = filepath.WalkDir(".", func(path string, e fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case path == ".git":
			return filepath.SkipDir
		case e.IsDir() || ignored(path):
			return nil
		}
		if strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".json") {
			t.Errorf("build context holds %s", path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		dst := filepath.Join(ctxDir, path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "bqsink")
	cmd := exec.Command("sh", "-c", strings.ReplaceAll(dockerBuildCommand(t), " /bqsink", " "+bin))
	cmd.Dir = ctxDir
	cmd.Env = append(os.Environ(), "VERSION=v9.9.9-test", "COMMIT=0123456789abcdef0123456789abcdef01234567", "BUILD_DATE=2026-12-02T00:00:00Z")
	got, err := cmd.CombinedOutput()
	want := "bqsink v9.9.9-test (commit 0123456789ab, built 2026-12-02T00:00:00Z, " + runtime.Version() + ")\n"
	if err != nil || string(got) != want {
		t.Fatalf("the Dockerfile's build command: %v\n%s\nwant output %q", err, got, want)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary is not static: it has a %v program header", p.Type)
		}
	}
	f.Close()

	// Started, its first line says which build runs.
	cfgPath := writeConfig(t, "kafka: {brokers: [127.0.0.1:1], group_id: g, topics: [t]}\n"+validSR+validBQ+"http: {listen: \"127.0.0.1:0\"}\n")
	daemon := exec.Command(bin, "-config", cfgPath)
	stdout, err := daemon.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = daemon.Process.Signal(syscall.SIGTERM)
		_ = daemon.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(line), &first); err != nil {
		t.Fatal(err)
	}
	if first["msg"] != "starting" || first["version"] != "v9.9.9-test" || first["commit"] != "0123456789ab" || first["go_version"] != runtime.Version() {
		t.Errorf("first log line: %s", line)
	}
}
