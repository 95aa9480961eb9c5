package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/sr"
	"gopkg.in/yaml.v3"

	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

// The test binary serves as the launcher too, as the harness's binary does.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "-launch" {
		os.Exit(launchMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// What the launcher starts reports its own peak RSS, not this process's
// (which a direct child of a vfork would inherit), its exit code, and the
// signal that ended it.
func TestLaunchReportsChildNotParent(t *testing.T) {
	ballast := make([]byte, 300<<20)
	for i := 0; i < len(ballast); i += 4096 { // one byte a page makes it resident
		ballast[i] = 1
	}
	dir := t.TempDir()
	c, err := launch(t.Context(), "sh", filepath.Join(dir, "log"), os.Environ(), "sh", "-c", "exit 3")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := c.wait(t.Context(), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Exit != 3 || rep.Signal != "" {
		t.Fatalf("exit %d signal %q, want 3", rep.Exit, rep.Signal)
	}
	if rep.MaxRSSKiB <= 0 || rep.MaxRSSKiB > 150<<10 {
		t.Fatalf("ru_maxrss %d KiB: want the child's own (with %d MiB held here)", rep.MaxRSSKiB, len(ballast)>>20)
	}

	c, err = launch(t.Context(), "sleep", filepath.Join(dir, "log2"), os.Environ(), "sleep", "30")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := procStatusKiB(c.pid, "VmHWM"); err != nil {
		t.Fatalf("pid %d reported is not running: %v", c.pid, err)
	}
	c.signal(syscall.SIGTERM)
	if rep, err = c.wait(t.Context(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if rep.Signal != syscall.SIGTERM.String() || rep.Exit != 128+int(syscall.SIGTERM) {
		t.Fatalf("exit %d signal %q after SIGTERM", rep.Exit, rep.Signal)
	}
	ballast[0] = 0 // held until here
}

func TestFreshnessPercentiles(t *testing.T) {
	var s []time.Duration
	for i := 100; i >= 1; i-- {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	f := freshnessOf(s, time.Second)
	if f.Count != 100 || f.P50Ms != 50 || f.P99Ms != 99 || f.MaxMs != 100 || f.TargetMs != 1250 {
		t.Fatalf("%+v", f)
	}
	if s[0] != 100*time.Millisecond {
		t.Fatal("freshnessOf sorted its input")
	}
}

func TestSetFlags(t *testing.T) {
	var s setFlags
	for _, kv := range []string{"batch.max_wait=200ms", "batch.max_records=500", "kafka.topics=[a, b]"} {
		if err := s.Set(kv); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Set("novalue"); err == nil {
		t.Fatal("a flag without = was taken")
	}
	doc := map[string]any{"batch": map[string]any{"max_bytes": 1}}
	for _, kv := range s {
		setKey(doc, kv.key, kv.value)
	}
	b := doc["batch"].(map[string]any)
	if b["max_wait"] != "200ms" || b["max_records"] != 500 || b["max_bytes"] != 1 {
		t.Fatalf("batch = %v", b)
	}
	if topics := doc["kafka"].(map[string]any)["topics"].([]any); len(topics) != 2 {
		t.Fatalf("topics = %v", topics)
	}
	if v, ok := s.lookup("batch.max_wait"); !ok || v != "200ms" {
		t.Fatalf("lookup = %v, %v", v, ok)
	}
}

// -keyed records carry a key in the wire format under <topic>-key whose
// fields hold the value's values, unique per record; without it, the keys
// are what they were (raw strings) and no key subject is registered.
func TestKeyedRecords(t *testing.T) {
	const n = 2000
	for _, name := range []string{"seed", "delivery"} {
		t.Run(name, func(t *testing.T) {
			fx := fixtures[name]
			st, err := stack.Start(stack.Options{Topics: []string{fx.topic}})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			reg, err := sr.NewClient(sr.URLs(st.RegistryURL()))
			if err != nil {
				t.Fatal(err)
			}
			plain, err := fx.register(st, n, 7, false)
			if err != nil {
				t.Fatal(err)
			}
			if r, err := plain(0); err != nil || len(r.Key) == 0 || r.Key[0] == 0 {
				t.Fatalf("unkeyed record 0: key %q, %v: want a raw string", r.Key, err)
			}
			if _, err := reg.SchemaByVersion(t.Context(), fx.topic+"-key", -1); err == nil {
				t.Fatalf("%s-key registered without -keyed", fx.topic)
			}

			rec, err := fx.register(st, n, 7, true)
			if err != nil {
				t.Fatal(err)
			}
			fields := fx.keyFields()
			if len(fields) == 0 {
				t.Fatal("no key fields")
			}
			key, err := reg.SchemaByVersion(t.Context(), fx.topic+"-key", -1)
			if err != nil {
				t.Fatal(err)
			}
			schemas := map[uint32]avro.Schema{}
			decode := func(b []byte) map[string]any {
				t.Helper()
				if len(b) < 5 || b[0] != 0 {
					t.Fatalf("%x: not in the wire format", b)
				}
				id := binary.BigEndian.Uint32(b[1:5])
				s, ok := schemas[id]
				if !ok {
					if s, err = fetchSchema(t.Context(), reg, int(id)); err != nil {
						t.Fatal(err)
					}
					schemas[id] = s
				}
				var m map[string]any
				if err := avro.Unmarshal(s, b[5:], &m); err != nil {
					t.Fatal(err)
				}
				return m
			}
			seen := map[string]int{}
			for i := range n {
				r, err := rec(i)
				if err != nil {
					t.Fatal(err)
				}
				if id := binary.BigEndian.Uint32(r.Key[1:5]); int(id) != key.ID {
					t.Fatalf("record %d: key schema %d, want %s-key's %d", i, id, fx.topic, key.ID)
				}
				k, v := decode(r.Key), decode(r.Value)
				if len(k) != len(fields) {
					t.Fatalf("record %d: key %v, want fields %v", i, k, fields)
				}
				for _, f := range fields {
					if k[f] != v[f] {
						t.Fatalf("record %d: key %s = %v, value's %v", i, f, k[f], v[f])
					}
				}
				if j, dup := seen[string(r.Key)]; dup {
					t.Fatalf("records %d and %d have the same key", j, i)
				}
				seen[string(r.Key)] = i
				// The same value (as bytes, but for the order of a map's
				// entries: DeliveryCreated's attributes follow Go's map order).
				if r2, _ := plain(i); len(r2.Value) != len(r.Value) || !reflect.DeepEqual(decode(r2.Value), v) {
					t.Fatalf("record %d: -keyed changed the value", i)
				}
			}
		})
	}
}

// -mode upsert routes the table with mode: upsert and no primary key (the
// key schema's fields); append keeps the short form.
func TestDaemonConfigMode(t *testing.T) {
	st, err := stack.Start(stack.Options{Topics: []string{stack.StockTopic}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, mode := range []string{sink.ModeAppend, sink.ModeUpsert} {
		h := &harness{o: options{mode: mode}, fx: fixtures["seed"], st: st, tmp: t.TempDir()}
		path, err := h.daemonConfig("g", nil, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		text, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Tables map[string]any `yaml:"tables"`
		}
		if err := yaml.Unmarshal(text, &doc); err != nil {
			t.Fatal(err)
		}
		got := doc.Tables[stack.StockTopic]
		var want any = stack.StockTable
		if mode == sink.ModeUpsert {
			want = map[string]any{"table": stack.StockTable, "mode": "upsert"}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: tables.%s = %#v, want %#v", mode, stack.StockTopic, got, want)
		}
	}
}

func TestParseSuperseded(t *testing.T) {
	text := `# HELP bqsink_changes_superseded_total Upsert tables: ...
# TYPE bqsink_changes_superseded_total counter
bqsink_changes_superseded_total{topic="a"} 3
bqsink_changes_superseded_total{topic="b"} 1.2e+06
bqsink_changes_superseded_totalx{topic="c"} 9
`
	for topic, want := range map[string]int{"a": 3, "b": 1_200_000} {
		if got, err := parseSuperseded(text, topic); err != nil || got != want {
			t.Fatalf("%s: %d, %v; want %d", topic, got, err, want)
		}
	}
	if _, err := parseSuperseded(text, "c"); err == nil {
		t.Fatal("a topic without the metric was read")
	}
}
