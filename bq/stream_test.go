package bq

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
)

// The connection to a table's default stream is shared by every caller
// appending to the table. One caller giving up while its request is being
// sent must not end it: requests of others pending on it would end in
// Retry although BigQuery writes them, and be written twice.
func TestCallerGivingUpMidSendLeavesTheStreamAlone(t *testing.T) {
	s := newFake(t)
	const timeout = 30 * time.Second
	c := newTestClient(t, s, func(c *Config) {
		// One connection: the pool would move the next append to a new one
		// while a send is blocked, and this is about the one stream.
		c.MaxConnections = 1
		c.Timeout, c.AppendTimeout = timeout, timeout
		c.MaxRequestBytes = 1 << 20 // one blob per request
	})
	tbl := c.Table("shared")
	schema := bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED"), col("blob", bigquery.BytesFieldType, "")}
	if err := tbl.EnsureSchema(t.Context(), schema); err != nil {
		t.Fatal(err)
	}
	if err := appendRows(t, tbl, map[string]any{"id": 0}); err != nil {
		t.Fatal(err)
	}
	st := tbl.def.streamNow() // set by that append; replaced only if it ends
	blob := bytes.Repeat([]byte{7}, 900<<10)
	var maps []map[string]any
	for id := 100; id < 140; id++ {
		maps = append(maps, map[string]any{"id": id, "blob": blob})
	}
	rowsA := encode(t, tbl, maps...)

	// B's request is read by the server, which answers it after a while.
	s.SetAppendLatency(4 * time.Second)
	before := s.AppendsReceived()
	resB, err := tbl.Append(t.Context(), encode(t, tbl, map[string]any{"id": 1}))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "B's request to be read", func() bool { return s.AppendsReceived() > before })
	// The server reads next to nothing after it: A's sends soon block.
	s.StallReads(true)
	ctxA, cancelA := context.WithCancel(t.Context())
	defer cancelA()
	type outcome struct {
		res *Result
		err error
	}
	doneA := make(chan outcome, 1)
	go func() {
		res, err := tbl.Append(ctxA, rowsA)
		doneA <- outcome{res, err}
	}()
	eventually(t, 20*time.Second, "A's send to be blocked for 500ms", func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.op != nil && st.op.what == "send" && time.Until(st.op.due) < timeout-500*time.Millisecond
	})
	select {
	case <-resB.Done():
		t.Fatal("B was answered before A gave up: the test proves nothing")
	default:
	}

	cancelA()
	start := time.Now()
	var a outcome
	select {
	case a = <-doneA:
	case <-time.After(slack):
		t.Fatalf("A's Append still running %v after its context was cancelled", slack)
	}
	t.Logf("A returned %v after its cancel: %v", time.Since(start), a.err)

	if err := wait(t, resB); err != nil {
		t.Fatalf("B, pending on the stream while A gave up: %v, want written", err)
	}
	if st.ended() != nil {
		t.Errorf("the stream ended: %v", st.ended())
	}
	// A's send is still blocked: the next sender waits for it, within its
	// own context.
	ctxC, cancelC := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancelC()
	err = within(t, slack, "an Append waiting for A's send", func() error {
		_, err := tbl.Append(ctxC, encode(t, tbl, map[string]any{"id": 3}))
		return err
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append while A's send is blocked: %v, want its context's error", err)
	}
	if st.ended() != nil {
		t.Errorf("the stream ended: %v", st.ended())
	}

	// What A sent is BigQuery's to answer; what it did not is in Retry.
	s.SetAppendLatency(0)
	s.StallReads(false)
	var retry []int
	if a.err == nil {
		if ae, ok := wait(t, a.res).(*AppendError); ok {
			if len(ae.Rejected) > 0 {
				t.Fatalf("A's rows rejected: %v", ae.Rejected)
			}
			retry = ae.Retry
		}
	} else {
		retry = seq(0, len(rowsA)) // nothing sent
	}
	t.Logf("A: %d of %d rows to retry", len(retry), len(rowsA))
	if err := appendRows(t, tbl, map[string]any{"id": 2}); err != nil {
		t.Fatalf("append after A gave up: %v", err)
	}
	if tbl.def.streamNow() != st {
		t.Error("the stream was replaced")
	}
	seen := map[int64]int{}
	for _, r := range s.Rows(testProject, testDataset, "shared") {
		seen[r["id"].(int64)]++
	}
	for _, id := range []int64{0, 1, 2} {
		if seen[id] != 1 {
			t.Errorf("id %d written %d times, want once", id, seen[id])
		}
	}
	for i := range rowsA {
		want := 1
		if slices.Contains(retry, i) {
			want = 0
		}
		if got := seen[int64(100+i)]; got != want {
			t.Errorf("A's row %d written %d times, want %d (in Retry: %v)", i, got, want, want == 0)
		}
	}
}

// A send nobody waits for any more is still bounded by Timeout: past it the
// stream ends, and its requests, and those waiting to be sent after it,
// are in Retry.
func TestAbandonedSendStillBoundedByTimeout(t *testing.T) {
	const sendTimeout = 2 * time.Second
	s := newFake(t)
	c := newTestClient(t, s, func(c *Config) {
		// One connection: the pool would move the next append to a new one
		// while a send is blocked, and this is about the one stream.
		c.MaxConnections = 1
		c.Timeout, c.AppendTimeout = sendTimeout, time.Minute
		c.MaxRequestBytes = 1 << 20
	})
	tbl := c.Table("stuck")
	schema := bigquery.Schema{col("id", bigquery.IntegerFieldType, "REQUIRED"), col("blob", bigquery.BytesFieldType, "")}
	if err := tbl.EnsureSchema(t.Context(), schema); err != nil {
		t.Fatal(err)
	}
	if err := appendRows(t, tbl, map[string]any{"id": 0}); err != nil {
		t.Fatal(err)
	}
	st := tbl.def.streamNow()
	s.StallReads(true)
	defer s.StallReads(false)
	blob := bytes.Repeat([]byte{7}, 900<<10)
	var maps []map[string]any
	for id := range 40 {
		maps = append(maps, map[string]any{"id": 100 + id, "blob": blob})
	}
	rowsA := encode(t, tbl, maps...)
	ctxA, cancelA := context.WithCancel(t.Context())
	defer cancelA()
	type outcome struct {
		res *Result
		err error
	}
	doneA := make(chan outcome, 1)
	go func() {
		res, err := tbl.Append(ctxA, rowsA)
		doneA <- outcome{res, err}
	}()
	// Cancelled once one of its sends is stuck (the server reads nothing,
	// and the connection's window is full), however long encoding and the
	// first sends took: a send seen under way may still be one the window
	// takes, and B's small send would then go through and wait for an
	// answer instead.
	var seen *op
	var since time.Time
	eventually(t, 20*time.Second, "A's send to be stuck", func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		switch {
		case st.op == nil || st.op.what != "send":
			seen = nil
			return false
		case st.op != seen:
			seen, since = st.op, time.Now()
			return false
		}
		return time.Since(since) > sendTimeout/5
	})
	cancelA()
	a := <-doneA
	if a.err != nil {
		t.Fatalf("A, cancelled while its send was under way: %v, want a Result", a.err)
	}
	resA := a.res
	start := time.Now()
	resB, err := tbl.Append(t.Context(), encode(t, tbl, map[string]any{"id": 1}))
	if err != nil {
		t.Fatal(err)
	}
	aeB := appendErr(t, within(t, sendTimeout+slack, "B behind a stuck send", func() error { return wait(t, resB) }))
	t.Logf("B after %v: %v", time.Since(start), aeB.Err)
	if !slices.Equal(aeB.Retry, []int{0}) || !strings.Contains(aeB.Err.Error(), "send a write stream for ") || !strings.Contains(aeB.Err.Error(), ": not done within timeout 2s") {
		t.Errorf("B: %+v, want its row to retry, naming the send timeout", aeB)
	}
	// The server read A's first request as the stall began.
	aeA := appendErr(t, wait(t, resA))
	if len(aeA.Retry) < len(maps)-1 || len(aeA.Rejected) > 0 {
		t.Errorf("A: %d rows to retry, want all %d but the first", len(aeA.Retry), len(maps))
	}
	if st.ended() == nil {
		t.Error("the stream outlived a send stuck past Timeout")
	}
}
