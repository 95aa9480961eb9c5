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
