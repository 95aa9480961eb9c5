package schema

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// tokenFile is a bearer token kept in a file, read again whenever the file
// changes (its modification time or size), so a token rotated in place is
// used from the next request on. Safe for concurrent use.
type tokenFile struct {
	path string

	mu    sync.Mutex
	mod   time.Time
	size  int64
	token string
}

// get returns the file's token, reading the file if it changed since the
// last read. An unreadable or empty file is an error naming the key and the
// file.
func (f *tokenFile) get() (string, error) {
	fi, err := os.Stat(f.path)
	if err != nil {
		return "", fmt.Errorf("schema_registry.bearer_token_file: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.token != "" && fi.ModTime().Equal(f.mod) && fi.Size() == f.size {
		return f.token, nil
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return "", fmt.Errorf("schema_registry.bearer_token_file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("schema_registry.bearer_token_file: %s is empty", f.path)
	}
	f.token, f.mod, f.size = token, fi.ModTime(), fi.Size()
	return token, nil
}

// bearerTransport sends the token file's current token with every request.
type bearerTransport struct {
	base  http.RoundTripper
	token *tokenFile
}

func (t bearerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	token, err := t.token.get()
	if err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+token)
	return t.base.RoundTrip(req)
}
