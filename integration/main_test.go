// Package integration holds bqsink's end-to-end tests: the real daemon code
// against the local stack (Kafka, Schema Registry, BigQuery test server),
// every hop over real sockets. This package has the pipeline (in process
// and as the real binary), golden schemas and rows, schema changes, bad
// input, dead letters and the rejection log, table layouts, TLS and SASL,
// transactions, lag, lifecycle, metadata and metrics tests, and
// BenchmarkPipeline.
//
// The long suites have packages of their own, so that go test runs their
// binaries at the same time as this one: fault (the network or a service
// failing under the daemon) and crash (kills, rebalances, a zombie owner
// and exactly-once). memory (the memory cap and the daemon's RSS) measures,
// so make test runs it on its own, after the others. What the packages
// share, the daemon process harness, the stack per test and the record
// stream, is in itest.
package integration

import (
	"testing"

	"github.com/bqsink/bqsink/integration/itest"
)

// TestMain removes the daemon binary built for this run, if any.
func TestMain(m *testing.M) { itest.Main(m) }
