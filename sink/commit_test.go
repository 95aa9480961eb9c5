package sink

import (
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// An older watermark must never replace a newer one: committing it would
// rewind the group and re-deliver acknowledged records.
func TestMarkOnlyMovesForward(t *testing.T) {
	c := commits{marks: map[string]map[int32]kgo.EpochOffset{}}
	c.mark("t", 0, kgo.EpochOffset{Offset: 10}, "m10")
	c.mark("t", 0, kgo.EpochOffset{Offset: 7}, "m7")
	c.mark("t", 1, kgo.EpochOffset{Offset: 3}, "")
	got, meta := c.takeWithMeta(map[string][]int32{"t": {0}})
	if got["t"][0].Offset != 10 {
		t.Fatalf("mark went backwards: %v", got)
	}
	if meta["t"][0] != "m10" {
		t.Fatalf("the metadata of offset 10 is %q, want the one marked with it", meta["t"][0])
	}
	if _, still := c.marks["t"][0]; still {
		t.Fatal("take must remove what it returns")
	}
	// A failed commit puts its marks back, but not over a newer one.
	c.mark("t", 1, kgo.EpochOffset{Offset: 9}, "")
	c.restore(map[string]map[int32]kgo.EpochOffset{"t": {1: {Offset: 3}, 0: {Offset: 10}}}, nil)
	all := c.take(nil)
	if all["t"][1].Offset != 9 || all["t"][0].Offset != 10 {
		t.Fatalf("restore: %v", all)
	}
	if len(c.take(nil)) != 0 {
		t.Fatal("take(nil) must empty the marks")
	}
}

// A new exactly-once stream is committed at the next flight's first
// record: over a pending mark at that offset (the flight before, not
// committed yet) its metadata names the new stream; a fresh partition gets
// the mark itself.
func TestClaimNamesTheNewStream(t *testing.T) {
	c := commits{marks: map[string]map[int32]kgo.EpochOffset{}}
	c.mark("t", 0, kgo.EpochOffset{Offset: 50}, "bqsink-eo/1 old 50 50 rc")
	c.claim("t", 0, kgo.EpochOffset{Offset: 50}, "bqsink-eo/1 new 0 50 rc")
	c.claim("t", 1, kgo.EpochOffset{Offset: 0}, "bqsink-eo/1 fresh 0 0 rc")
	got, meta := c.takeWithMeta(nil)
	if got["t"][0].Offset != 50 || meta["t"][0] != "bqsink-eo/1 new 0 50 rc" {
		t.Errorf("partition 0: %v %q; want 50 with the new stream", got["t"][0], meta["t"][0])
	}
	if got["t"][1].Offset != 0 || meta["t"][1] != "bqsink-eo/1 fresh 0 0 rc" {
		t.Errorf("partition 1: %v %q; want 0 with the fresh stream", got["t"][1], meta["t"][1])
	}
}

func TestBackoffGrowsAndIsCapped(t *testing.T) {
	for attempt := 1; attempt < 40; attempt++ {
		d := backoff(attempt)
		lo := min(100*time.Millisecond<<min(attempt-1, 9), 15*time.Second) / 2
		if d < lo || d > 15*time.Second {
			t.Fatalf("attempt %d: backoff %s outside [%s, 15s]", attempt, d, lo)
		}
	}
}

// A commit pairs each offset with the metadata marked with it: metadata of
// a newer mark sent with an older offset makes exactly-once's next owner
// fall back for nothing (or continue a stream at the wrong offset).
func TestTakeWithMetaPairsOffsetAndMetadata(t *testing.T) {
	c := commits{marks: map[string]map[int32]kgo.EpochOffset{}}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := int64(1); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			c.mark("t", 0, kgo.EpochOffset{Offset: i}, strconv.FormatInt(i, 10))
		}
	}()
	takes, mismatches := 0, 0
	for deadline := time.Now().Add(time.Second); takes < 1000 && time.Now().Before(deadline); {
		offsets, meta := c.takeWithMeta(nil)
		eo, ok := offsets["t"][0]
		if !ok {
			continue
		}
		takes++
		if m := meta["t"][0]; m != strconv.FormatInt(eo.Offset, 10) {
			mismatches++
			if mismatches == 1 {
				t.Errorf("offset %d taken with the metadata %q of another mark", eo.Offset, m)
			}
		}
	}
	close(stop)
	<-done
	t.Logf("%d takes, %d with another mark's metadata", takes, mismatches)
}
