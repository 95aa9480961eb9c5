package schema

import (
	"fmt"
	"time"
)

// How long a failed fetch is remembered: firstRetry after the first failure
// of a key, twice as long after each consecutive one, at most maxRetry.
const (
	firstRetry = time.Second
	maxRetry   = 10 * time.Second
)

// failure is the latest failed fetch of one key (ErrNotFound,
// ErrUnauthorized or transient), remembered so that no request for the key
// is made before until.
type failure struct {
	err   error
	until time.Time
	count int // consecutive failures
}

// retryDelay is the backoff after the count-th consecutive failure.
func retryDelay(count int) time.Duration {
	d := firstRetry
	for i := 1; i < count && d < maxRetry; i++ {
		d *= 2
	}
	return min(d, maxRetry)
}

// remembered returns the failure of key and the time left before a request
// may be made for it again, or a nil error when one may be made now.
func (r *Registry) remembered(key string) (time.Duration, error) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.failures[key]
	if !ok || !now.Before(f.until) {
		return 0, nil
	}
	return f.until.Sub(now), f.err
}

// fail remembers err as the latest failure of key and returns how long no
// request will be made for key. A failure whose backoff ended more than
// maxRetry ago counts as forgotten: the next one starts again at firstRetry.
// Forgotten failures of all keys are dropped every maxRetry, so a stream of
// distinct unknown IDs does not grow the map without bound.
func (r *Registry) fail(key string, err error) time.Duration {
	now := r.now()
	forgotten := func(f failure) bool { return now.Sub(f.until) > maxRetry }
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.swept) >= maxRetry {
		for k, f := range r.failures {
			if forgotten(f) {
				delete(r.failures, k)
			}
		}
		r.swept = now
	}
	f := r.failures[key]
	if forgotten(f) {
		f.count = 0
	}
	f.count++
	f.err = err
	d := retryDelay(f.count)
	f.until = now.Add(d)
	r.failures[key] = f
	return d
}

// notAsked marks a remembered failure with how long it stays remembered,
// keeping its class.
func notAsked(err error, left time.Duration) error {
	return fmt.Errorf("%w; not asked again for %s", err, roundUp(left))
}

// roundUp rounds d up to whole seconds, or to tenths below a second, so the
// time left reads "4s" or "300ms", never "0s".
func roundUp(d time.Duration) time.Duration {
	unit := time.Second
	if d < time.Second {
		unit = 100 * time.Millisecond
	}
	return (d + unit - 1) / unit * unit
}
