package main

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
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
