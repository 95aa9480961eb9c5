package schema

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// maxRequests bounds the registry requests in flight. srclient holds a
// semaphore of this weight around each request, acquired with
// context.Background(): a request that reached it with all of it taken would
// wait for as many HTTP timeouts as there are requests queued ahead. Ours is
// taken first, with a bounded wait, so srclient's never blocks.
const maxRequests = 16

var errAbandoned = errors.New("abandoned")

// acquire takes a request slot, waiting at most the HTTP timeout or until
// done is closed (a nil done: never), when it returns errAbandoned. Every
// acquire that returns nil is paired with a release.
func (r *Registry) acquire(done <-chan struct{}) error {
	select {
	case r.slots <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(r.timeout)
	defer t.Stop()
	select {
	case r.slots <- struct{}{}:
		return nil
	case <-t.C:
		return fmt.Errorf("registry busy: %d requests already in flight for %s", maxRequests, r.timeout)
	case <-done:
		return errAbandoned
	}
}

func (r *Registry) release() { <-r.slots }

// call makes one srclient request in a request slot, so it waits at most the
// HTTP timeout for the slot and the HTTP timeout for the answer.
func call[T any](r *Registry, request func() (T, error)) (T, error) {
	if err := r.acquire(nil); err != nil {
		var zero T
		return zero, err
	}
	defer r.release()
	return request()
}

// statusTransport turns an HTTP 401 or 403 answer into a *statusError.
// srclient keeps the status only when the body is the registry's JSON error
// (and otherwise returns just the status text); a RoundTrip error reaches
// its caller wrapped in a *url.Error, typed.
type statusTransport struct{ base http.RoundTripper }

func (t statusTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil || (resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden) {
		return resp, err
	}
	// Drain a little so the connection can be reused; the request's deadline
	// bounds the read.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	_ = resp.Body.Close()
	return nil, &statusError{code: resp.StatusCode}
}

// statusError is an HTTP answer refusing the request's credentials.
type statusError struct{ code int }

func (e *statusError) Error() string {
	return fmt.Sprintf("HTTP %d %s", e.code, http.StatusText(e.code))
}
