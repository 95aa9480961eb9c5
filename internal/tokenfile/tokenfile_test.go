package tokenfile

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A token rotated in place is the one returned next; an emptied or missing
// file is an error naming it, never an empty token.
func TestTokenReadAgainWhenTheFileChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	write := func(s string, mod time.Time) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
	f := &File{Path: path}
	now := time.Now()
	write("token-1\n", now)
	if got, err := f.Token(); err != nil || got != "token-1" {
		t.Fatalf("Token() = %q, %v", got, err)
	}
	write("token-2\n", now.Add(time.Second))
	if got, err := f.Token(); err != nil || got != "token-2" {
		t.Fatalf("after rotation Token() = %q, %v", got, err)
	}
	write(" \n", now.Add(2*time.Second))
	if _, err := f.Token(); err == nil {
		t.Fatal("an empty file gave no error")
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Token(); err == nil {
		t.Fatal("a missing file gave no error")
	}
}
