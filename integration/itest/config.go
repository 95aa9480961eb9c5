package itest

import (
	"context"
	"errors"
	"github.com/bqsink/bqsink/bq"
	"maps"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"gopkg.in/yaml.v3"

	"github.com/bqsink/bqsink/integration/stack"
)

// DaemonConfig is a bqsink config file under construction, held as a YAML
// document of nested maps: a test sets any key, including keys this harness
// has never heard of, and a key set twice keeps the last value. It is not
// goroutine-safe.
type DaemonConfig struct {
	// T is the test the config fails and writes its file for; a parallel
	// subtest sharing its parent's stack sets its own.
	T   *testing.T
	doc map[string]any
	raw []string
	env map[string]string
}

// NewDaemonConfig points a daemon at e's stack, consuming the stock topic as
// group into the stock table, with the small batch, commit and session
// settings the in-process tests use (stack.SinkConfig). http.listen is left
// unset: StartDaemon gives each process a free port unless a test sets it.
//
// It also creates the group's dead-letter topic, <group>.dlq, if missing:
// with errors.policy dlq the daemon requires it at startup.
func NewDaemonConfig(e *Env, group string) *DaemonConfig {
	e.T.Helper()
	if err := e.St.CreateTopic(e.T.Context(), group+".dlq", 1); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		e.T.Fatal(err)
	}
	return DaemonConfigNoDLQ(e, group)
}

// DaemonConfigNoDLQ is NewDaemonConfig without creating the dead-letter
// topic.
func DaemonConfigNoDLQ(e *Env, group string) *DaemonConfig {
	return &DaemonConfig{
		T:   e.T,
		env: map[string]string{},
		doc: map[string]any{
			"kafka": map[string]any{
				"brokers":           e.St.Brokers(),
				"group_id":          group,
				"topics":            []string{stack.StockTopic},
				"session_timeout":   "6s", // kfake's minimum
				"rebalance_timeout": "10s",
				"commit_interval":   "200ms",
			},
			"schema_registry": map[string]any{"url": e.St.RegistryURL()},
			"bigquery": map[string]any{
				"project":       stack.Project,
				"dataset":       stack.Dataset,
				"endpoint":      e.St.BigQuery.RESTEndpoint(),
				"grpc_endpoint": e.St.BigQuery.GRPCEndpoint(),
				// The test server shares connections as BigQuery does:
				// run BigQuery's default, not the emulators' one.
				"max_connections": bq.DefaultMaxConnections,
			},
			"tables":               map[string]any{stack.StockTopic: stack.StockTable},
			"batch":                map[string]any{"max_records": 500, "max_wait": "100ms"},
			"log":                  map[string]any{"level": "info"},
			"unknown_schema_grace": "300ms",
			"shutdown_timeout":     "10s",
		},
	}
}

// Set sets a dotted key ("kafka.session_timeout") to v, creating the maps
// on the way. A time.Duration is written as a Go duration string.
func (c *DaemonConfig) Set(key string, v any) *DaemonConfig {
	parts := strings.Split(key, ".")
	m := c.doc
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = v
	return c
}

// Get is the value at a dotted key, or nil.
func (c *DaemonConfig) Get(key string) any {
	var v any = c.doc
	for _, p := range strings.Split(key, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// Unset removes a dotted key, so the daemon's default applies.
func (c *DaemonConfig) Unset(key string) *DaemonConfig {
	parts := strings.Split(key, ".")
	m := c.doc
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			return c
		}
		m = next
	}
	delete(m, parts[len(parts)-1])
	return c
}

// Merge deep-merges m into the document: maps merge key by key, anything
// else replaces what was there.
func (c *DaemonConfig) Merge(m map[string]any) *DaemonConfig {
	mergeInto(c.doc, m)
	return c
}

// MergeYAML parses text as a YAML mapping and merges it like Merge.
func (c *DaemonConfig) MergeYAML(text string) *DaemonConfig {
	c.T.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(text), &m); err != nil {
		c.T.Fatalf("mergeYAML: %v\n%s", err, text)
	}
	return c.Merge(m)
}

// AppendRaw appends text verbatim after the rendered document, for tests
// of what the daemon makes of a file as written (duplicate keys, bad YAML).
func (c *DaemonConfig) AppendRaw(text string) *DaemonConfig {
	c.raw = append(c.raw, text)
	return c
}

// SetEnv adds a variable to the daemon's environment, for ${VAR} in values.
func (c *DaemonConfig) SetEnv(name, value string) *DaemonConfig {
	c.env[name] = value
	return c
}

func mergeInto(dst, src map[string]any) {
	for k, v := range src {
		sm, sok := v.(map[string]any)
		dm, dok := dst[k].(map[string]any)
		if sok && dok {
			mergeInto(dm, sm)
			continue
		}
		dst[k] = v
	}
}

// Render is the config file's text.
func (c *DaemonConfig) Render() []byte {
	c.T.Helper()
	out, err := yaml.Marshal(durationsAsText(c.doc))
	if err != nil {
		c.T.Fatalf("render config: %v", err)
	}
	for _, r := range c.raw {
		out = append(out, '\n')
		out = append(out, r...)
	}
	return out
}

// Clone is a deep copy, so that a start can add http.listen without the
// next start inheriting the port.
func (c *DaemonConfig) Clone() *DaemonConfig {
	return &DaemonConfig{T: c.T, doc: deepCopy(c.doc).(map[string]any), raw: append([]string(nil), c.raw...), env: maps.Clone(c.env)}
}

func deepCopy(v any) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = deepCopy(v)
	}
	return out
}

func durationsAsText(v any) any {
	switch v := v.(type) {
	case time.Duration:
		return v.String()
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = durationsAsText(e)
		}
		return out
	}
	return v
}

// WriteConfig writes c to a new file in the test's temp dir.
func (c *DaemonConfig) WriteConfig() string {
	c.T.Helper()
	f, err := os.CreateTemp(c.T.TempDir(), "config-*.yaml")
	if err != nil {
		c.T.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(c.Render()); err != nil {
		c.T.Fatal(err)
	}
	return f.Name()
}

// CheckConfig runs `bqsink -config FILE -check` and returns its exit code
// and combined output.
func CheckConfig(t *testing.T, c *DaemonConfig) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, DaemonBinary(t), "-config", c.WriteConfig(), "-check")
	cmd.Env = processEnv(c.env)
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("-check: %v", err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

func processEnv(extra map[string]string) []string {
	env := os.Environ()
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	return env
}
