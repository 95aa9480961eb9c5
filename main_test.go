package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
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
	if code := run([]string{"-config", "config.yaml", "-check"}); code != 0 {
		t.Errorf("-check on config.yaml exited %d", code)
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

// -check must list every problem, each under its full key, so a user fixes
// the file in one go.
func TestCheckListsEveryProblemByKey(t *testing.T) {
	p := writeConfig(t, `
kafka:
  brokers: []
  topics: ["^orders(", "a.b", "a_b"]
  start_offset: middle
  session_timeout: -1s
schema_registry: {url: "ftp://sr"}
bigquery: {dataset: "bad-name!"}
batch: {max_records: -5}
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
	if code := run([]string{"-config", p, "-check"}); code != 1 {
		t.Errorf("-check exited %d, want 1", code)
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

	// A reference in a comment is documentation, not a value.
	p = writeConfig(t, `
# set ${BQSINK_TEST_IN_COMMENT} to ...
kafka: {brokers: ["${BQSINK_TEST_UNSET_A}"], group_id: "${BQSINK_TEST_UNSET_B}"} # or ${BQSINK_TEST_IN_COMMENT}
`)
	_, err = loadConfig(p)
	if err == nil || !strings.HasSuffix(err.Error(), ": BQSINK_TEST_UNSET_A, BQSINK_TEST_UNSET_B") {
		t.Fatalf("want exactly the two unset variables named, got %v", err)
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
	for _, want := range []string{"schema_registry.passwd: unknown key (line 3)", "bigquery.grpc_endpont: unknown key (line 7)", "batchs: unknown key (line 8)"} {
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
	for _, want := range []string{`"max_buffered_bytes":134217728`, `"append_timeout":"20s"`, `"policy":"dlq"`, `"password":"[redacted]"`} {
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
