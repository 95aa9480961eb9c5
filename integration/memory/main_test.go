// Package memory proves memory.max_buffered_bytes and what the README says
// a pod needs: the sink's accounting never passes the cap, a stalled table
// does not starve healthy ones, a member stopped at the cap holds its
// partitions until its shutdown commit, and a 90 MiB record is rejected
// within the memory budget; BenchmarkBacklogMemory measures the daemon's
// RSS and CPU per record as it reads a large backlog.
//
// Its tests bound the sink's throughput under the cap and measure the
// daemon's RSS, so make test runs this package on its own, after the
// others, and the tests that stream records run one after the other.
package memory

import (
	"testing"

	"github.com/bqsink/bqsink/integration/itest"
)

// TestMain removes the daemon binary built for this run, if any.
func TestMain(m *testing.M) { itest.Main(m) }
