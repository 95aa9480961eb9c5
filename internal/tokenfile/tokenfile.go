// Package tokenfile reads a credential kept in a file (a Kubernetes
// projected volume or Secret volume, a sidecar's output), a token (File)
// or a password (Password), and reads it again whenever the file changes,
// so that a credential rotated in place is used without a restart.
package tokenfile

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// File is a token file. Create it with its path; the zero value's Token
// fails. Safe for concurrent use.
type File struct {
	Path string

	mu    sync.Mutex
	mod   time.Time
	size  int64
	token string
}

// Token returns the file's token, with surrounding white space trimmed,
// reading the file again when its modification time or size changed since
// the last read. A file that cannot be read, or holds nothing, is an error
// naming it.
func (f *File) Token() (string, error) {
	fi, err := os.Stat(f.Path)
	if err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.token != "" && fi.ModTime().Equal(f.mod) && fi.Size() == f.size {
		return f.token, nil
	}
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return "", err
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("%s is empty", f.Path)
	}
	f.token, f.mod, f.size = token, fi.ModTime(), fi.Size()
	return token, nil
}
