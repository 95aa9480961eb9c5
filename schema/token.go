package schema

import (
	"fmt"
	"net/http"

	"github.com/bqsink/bqsink/internal/tokenfile"
)

// bearerTransport sends the token file's current token with every request.
type bearerTransport struct {
	base  http.RoundTripper
	token *tokenfile.File
}

func (t bearerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	token, err := t.token.Token()
	if err != nil {
		err = fmt.Errorf("schema_registry.bearer_token_file: %w", err)
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+token)
	return t.base.RoundTrip(req)
}

// basicTransport sends basic auth with every request, the password being
// what the password file holds now.
type basicTransport struct {
	base     http.RoundTripper
	username string
	password *tokenfile.Password
}

func (t basicTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	password, err := t.password.Value()
	if err != nil { // only before the first read, which NewRegistry does
		err = fmt.Errorf("schema_registry.password_file: %w", err)
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	req = req.Clone(req.Context())
	req.SetBasicAuth(t.username, password)
	return t.base.RoundTrip(req)
}
