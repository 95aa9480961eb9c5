// Package crash runs the real binary through kills, rebalances and a
// zombie owner while records flow, and counts the rows of every produced
// (topic, partition, offset): at least once, nothing is lost and the
// duplicates a kill costs stay bounded (crash_test.go, rebalance_test.go);
// exactly once, nothing is lost or written twice, across kills,
// rebalances, a zombie and every documented fallback (exactlyonce_test.go).
//
// The tests that stream thousands of records a second run one after the
// other, at moments drawn from the test's seed (BQSINK_TEST_SEED replays
// them); the exactly-once fallback tests, small stacks mostly waiting, run
// in parallel after them. go test runs this package at the same time as
// the other integration packages.
package crash

import (
	"testing"

	"github.com/bqsink/bqsink/integration/itest"
)

// TestMain removes the daemon binary built for this run, if any.
func TestMain(m *testing.M) { itest.Main(m) }
