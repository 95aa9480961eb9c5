package itest

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/bqsink/bqsink/integration/stack"
)

const (
	// EOFallbackMsg is the warning of a window written at least once.
	EOFallbackMsg = "exactly-once not kept for a window; writing it at least once"
	// EOFallbacks is the counter of those windows, by topic and reason.
	EOFallbacks = "bqsink_exactly_once_fallbacks_total"
)

// CommitWithMetadata commits offsets for group (which must have no live
// member) as a tool would, replacing their metadata.
func CommitWithMetadata(t *testing.T, e *Env, group string, at map[int32]int64, meta string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	os := kadm.Offsets{}
	for p, o := range at {
		os.Add(kadm.Offset{Topic: stack.StockTopic, Partition: p, At: o, LeaderEpoch: -1, Metadata: meta})
	}
	resps, err := AdminClient(t, e).CommitOffsets(ctx, group, os)
	if err == nil {
		err = resps.Error()
	}
	if err != nil {
		t.Fatalf("commit %v with metadata %q for %s: %v", at, meta, group, err)
	}
}
