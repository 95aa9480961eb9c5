// Package itest is the harness the integration test packages share. It
// builds the daemon once per test binary and runs it as a child process
// (DaemonConfig renders its config, StartDaemon starts it, Daemon signals
// it and reads its log lines, probes and metrics), starts a local stack
// for a test (Env) and the real sink in the test's process (StartSink),
// streams records into the stack in the background (Stream) and checks
// that every record has a row (CheckCoverage). Like net/http/httptest, its
// helpers take the test's *testing.T and fail the test when something
// they need goes wrong.
//
// A test package that starts the daemon calls Main from its TestMain, so
// that the binary is removed when the tests end.
package itest

import (
	"net"
	"testing"
	"time"
)

// FreeAddr is a loopback address with a port free at the time of the call.
func FreeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// WaitUntil polls cond every 20ms until it holds, failing the test after
// within with what() (called then, so it can report the last state seen).
func WaitUntil(t *testing.T, within time.Duration, what func() string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("waited %v for %s", within, what())
		case <-t.Context().Done():
			t.Fatalf("test ended waiting for %s", what())
		}
	}
}

// SkipShortParallel skips a test that mostly waits (a fault window, a
// session timeout, a retry backoff) under -short, and otherwise runs it in
// parallel with the package's other parallel tests.
func SkipShortParallel(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("fault test: waits out fault windows of tens of seconds")
	}
	t.Parallel()
}

// WaitFor polls cond every 20ms until it holds, failing the test after d
// with what.
func WaitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(d)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
