// Package fault tests that the real binary keeps its promises when the
// network or a service fails under it. For each fault, records flow while
// the fault is injected; the daemon must warn naming the stage and target
// within 30s (the figure is logged), count the retries, fail /readyz once
// the fault outlasts stall_timeout, log "recovered" once healed, and lose
// nothing (every produced record has a row, by the metadata column). A
// SIGTERM during the fault ends the process within shutdown_timeout plus a
// second, and a fresh daemon then completes everything. A start that
// cannot succeed ends within 10s with an error line naming the config key
// to fix, and a SIGTERM during the start is a clean stop.
//
// Most of their time is spent waiting out fault windows, whose length is
// what they test, so they run in parallel; with two CPUs go test runs only
// two at once, so `-parallel 8` (make test) shortens a run of all of them
// considerably. go test runs this package at the same time as the other
// integration packages.
package fault

import (
	"testing"

	"github.com/bqsink/bqsink/integration/itest"
)

// TestMain removes the daemon binary built for this run, if any.
func TestMain(m *testing.M) { itest.Main(m) }
