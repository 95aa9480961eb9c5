package schema

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Check makes one light request to the registry (GET /config, its global
// compatibility level, which any valid credentials may read) to find a wrong
// URL or refused credentials at startup. It returns nil when the registry
// answers with a JSON object. It returns an error wrapping ErrUnauthorized
// when the registry answers HTTP 401 or 403, naming the keys holding the
// credentials, and one wrapping ErrTLS when the TLS handshake fails
// verification on either side, naming the schema_registry.tls key to fix;
// any other error is transient and names schema_registry.url
// with its password redacted: no answer within the timeout or before ctx
// ended (the error then wraps ctx's), unreachable, an error status, or an
// answer that is not a schema registry's. Check waits at most the configured
// timeout, or until ctx ends, and leaves no request running when it
// returns. It does not touch what Schema caches or remembers. Safe for
// concurrent use.
func (r *Registry) Check(ctx context.Context) error {
	start := time.Now()
	reqCtx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	noAnswer := func(err error) error {
		if errors.Is(err, errAbandoned) { // while waiting for a request slot
			err = context.Cause(reqCtx)
		}
		if ctx.Err() != nil { // the caller's, not our timeout
			return fmt.Errorf("%s: no answer within %s: %w", r.where, roundUp(time.Since(start)), err)
		}
		return fmt.Errorf("%s: no answer within %s: %w", r.where, r.timeout, err)
	}
	if err := r.acquire(reqCtx.Done()); err != nil {
		return noAnswer(err)
	}
	defer r.release()
	req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, r.url+"/config", nil)
	if err != nil { // not reached: Validate parsed the URL; err would quote its password
		return fmt.Errorf("%s: cannot make a request to it", r.where)
	}
	r.auth(req)
	req.Header.Set("Accept", "application/vnd.schemaregistry.v1+json, application/json")
	resp, err := r.httpClient.Do(req)
	if err != nil {
		var st *statusError
		switch {
		case errors.As(err, &st):
			return r.refused(st.code)
		case r.tlsRefused(err) != nil:
			return r.tlsRefused(err)
		case reqCtx.Err() != nil || isTimeout(err):
			return noAnswer(err)
		}
		return fmt.Errorf("%s: unreachable: %w", r.where, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return noAnswer(err)
	}
	switch {
	case resp.StatusCode >= 500:
		return fmt.Errorf("%s: the registry answered %s: %q", r.where, resp.Status, snippet(body))
	case resp.StatusCode/100 != 2:
		return fmt.Errorf("%s: GET /config answered %s: %q; is this a schema registry's base URL?", r.where, resp.Status, snippet(body))
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return fmt.Errorf("%s: GET /config answered %s with %q, not a schema registry's JSON; is this its base URL?", r.where, resp.Status, snippet(body))
	}
	return nil
}

// isTimeout reports whether err is a network timeout, as http.Client's
// Timeout produces.
func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// snippet is the start of an answer's body, for an error message.
func snippet(body []byte) string {
	const limit = 200
	if len(body) > limit {
		return string(body[:limit]) + "…"
	}
	return string(body)
}
