package tokenfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// A password file's content is the password, less one trailing line
// ending: spaces are the password's own.
func TestReadPasswordTrimsOneLineEnding(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]string{
		"secret":        "secret",
		"secret\n":      "secret",
		"secret\r\n":    "secret",
		" secret \n":    " secret ",
		"secret\n\n":    "secret\n",
		"pass: #word\n": "pass: #word",
	} {
		path := filepath.Join(dir, "password")
		write(t, path, content, time.Now())
		if got, err := ReadPassword(path); err != nil || got != want {
			t.Errorf("ReadPassword of %q = %q, %v; want %q", content, got, err, want)
		}
	}
	for _, content := range []string{"", "\n", "\r\n"} {
		path := filepath.Join(dir, "password")
		write(t, path, content, time.Now())
		if _, err := ReadPassword(path); err == nil || err.Error() != path+" is empty: it holds no password" {
			t.Errorf("ReadPassword of %q: %v, want it empty", content, err)
		}
	}
}

// At startup, a file missing or empty is an error naming it.
func TestPasswordFirstReadMustSucceed(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	if _, err := (&Password{Path: missing}).Value(); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	write(t, empty, "\n", time.Now())
	if _, err := (&Password{Path: empty}).Value(); err == nil || !strings.Contains(err.Error(), empty+" is empty") {
		t.Errorf("empty file: %v", err)
	}
}

// A password rotated in the file is the one returned next, whether the
// file is rewritten in place or replaced as a Kubernetes Secret's volume
// does (even with the same size and modification time). A file that
// disappears or empties later keeps the last password, with one warning
// per problem naming the key and file; the password never reaches the log.
func TestPasswordReadAgainWhenTheFileChanges(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	dir := t.TempDir()
	path := filepath.Join(dir, "password")
	now := time.Now()
	write(t, path, "password-1\n", now)
	p := &Password{Path: path, Key: "kafka.sasl.password_file", Log: zap.New(core)}
	value := func(want string) {
		t.Helper()
		for range 2 { // the second from what was read
			if got, err := p.Value(); err != nil || got != want {
				t.Fatalf("Value() = %q, %v; want %q", got, err, want)
			}
		}
	}
	value("password-1")

	write(t, path, "password-22", now.Add(time.Second))
	value("password-22")

	// Replaced by another file of the same size and time, as a Secret's
	// volume swaps its files.
	next := filepath.Join(dir, "next")
	write(t, next, "password-33", now.Add(time.Second))
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	value("password-33")
	if n := logs.FilterLevelExact(zapcore.InfoLevel).Len(); n != 2 {
		t.Errorf("%d lines for the 2 rotations, want 2", n)
	}

	// Gone: the last password stays, one warning however often it is asked.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	value("password-33")
	value("password-33")
	// Emptied: a new problem, a new warning.
	write(t, path, "\n", now.Add(2*time.Second))
	value("password-33")
	warnings := logs.FilterLevelExact(zapcore.WarnLevel).All()
	if len(warnings) != 2 {
		t.Fatalf("%d warnings, want one for the missing file and one for the empty one: %v", len(warnings), warnings)
	}
	for i, want := range []string{"no such file", "is empty"} {
		f := warnings[i].ContextMap()
		if f["key"] != "kafka.sasl.password_file" || f["file"] != path || !strings.Contains(f["error"].(string), want) {
			t.Errorf("warning %d: %s %v; want the key, the file and %q", i, warnings[i].Message, f, want)
		}
	}

	// Written again: read, and said so.
	write(t, path, "password-4\n", now.Add(3*time.Second))
	value("password-4")
	if n := logs.FilterLevelExact(zapcore.InfoLevel).Len(); n != 3 {
		t.Errorf("%d lines saying the file was read again, want 3", n)
	}
	for _, e := range logs.All() {
		line := e.Message
		for k, v := range e.ContextMap() {
			line += " " + k + "=" + toString(v)
		}
		if strings.Contains(line, "password-") {
			t.Errorf("a log line holds a password: %s", line)
		}
	}
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return ""
}

func write(t *testing.T, path, s string, mod time.Time) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mod, mod); err != nil {
		t.Fatal(err)
	}
}
