package integration

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

// The rejection log of the real binary: nothing is sampled away. Each
// rejected record has a line of its own, or, past 10 lines per partition in
// 10s, is counted in that partition's summary line for the window, whose
// first_offset and last_offset bound it.

const rejectLogRecords = 2000

// rejectLogRun produces rejectLogRecords records without the wire format
// to a one-partition stock topic, starts the daemon on them and waits until
// it committed them all (so all are in the dead-letter topic).
func rejectLogRun(t *testing.T, group string) (*itest.Env, *itest.Daemon, []*kgo.Record) {
	t.Helper()
	// Built before producing: the records' timestamps must be recent when
	// they reach the dead-letter topic (see TestBadInputOldRecordIsDeadLettered).
	itest.DaemonBinary(t)
	e := itest.NewEnvPartitions(t, 1)
	recs := make([]*kgo.Record, rejectLogRecords)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: stack.StockTopic, Key: []byte(strconv.Itoa(i)), Value: []byte(fmt.Sprintf("not avro %d", i))}
	}
	if err := e.St.Produce(t.Context(), recs...); err != nil {
		t.Fatal(err)
	}
	d := itest.StartDaemon(t, itest.NewDaemonConfig(e, group))
	start := time.Now()
	itest.WaitAllCommitted(t, e.St, group, stack.StockTopic, 90*time.Second)
	t.Logf("%d records committed %v after the daemon started", len(recs), time.Since(start).Round(time.Millisecond))
	return e, d, recs
}

// daemonRejectLines are the rejection lines the daemon wrote so far; a
// line of any message with a "stacktrace" field counts as a stack trace.
func daemonRejectLines(d *itest.Daemon) rejectLines {
	var out rejectLines
	for _, l := range d.Logs() {
		if !l.JSON {
			continue
		}
		if _, ok := l.Fields[logStackKey]; ok {
			out.stacks++
		}
		fields := make(map[string]any, len(l.Fields))
		for k, v := range l.Fields {
			fields[k] = v
		}
		switch l.Msg {
		case msgRejected:
			out.single = append(out.single, fields)
		case msgSummary:
			out.summaries = append(out.summaries, fields)
		}
	}
	return out
}

func rejectLogWantFor(recs []*kgo.Record) rejectLogWant {
	w := rejectLogWant{topic: stack.StockTopic, partition: 0,
		table: stack.Project + "." + stack.Dataset + "." + stack.StockTable, policy: "dlq"}
	for _, r := range recs {
		w.records = append(w.records, rejectionWant{offset: r.Offset, reason: "wire_format"})
	}
	return w
}

// checkDeadLettered checks that every record is in group's dead-letter
// topic once, as wire_format, with the version the daemon logged at start.
func checkDeadLettered(t *testing.T, e *itest.Env, d *itest.Daemon, group string, recs []*kgo.Record) {
	t.Helper()
	version := d.WaitLog(time.Second, "starting", itest.MsgIs("starting")).Str("version")
	dls, err := e.St.ReadTopic(t.Context(), group+".dlq")
	if err != nil {
		t.Fatal(err)
	}
	byOffset := indexDeadLetters(t, dls, stack.StockTopic)
	bad := 0
	for _, r := range recs {
		got := byOffset[r.Offset]
		if len(got) != 1 {
			t.Errorf("offset %d: %d dead-letter records, want 1", r.Offset, len(got))
			continue
		}
		if bad < 3 && (got[0].one(sink.HeaderReason) != "wire_format" || got[0].one(sink.HeaderVersion) != version ||
			string(got[0].rec.Value) != string(r.Value) || len(got[0].bq[sink.HeaderSchemaID]) != 0) {
			bad++
			t.Errorf("offset %d: dead letter %q with headers %v, want the record's value as wire_format from version %q, no schema_id",
				r.Offset, got[0].rec.Value, got[0].bq, version)
		}
	}
	if len(dls) != len(recs) {
		t.Errorf("%d dead-letter records, want %d", len(dls), len(recs))
	}
}

// While the daemon runs, every one of 2000 rejected offsets shows up in
// its logs once (on its own line or in a summary's range, the counts
// adding up to 2000), no line carries a stack trace, and all 2000 are in
// the dead-letter topic.
func TestRejectLogAccountsForEveryRecord(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the daemon binary through a 10s log window")
	}
	t.Parallel() // mostly waiting out the log window; a stack of its own
	const group = "g-rejectlog"
	e, d, recs := rejectLogRun(t, group)
	for _, m := range []string{"bqsink_records_rejected_total", "bqsink_records_dead_lettered_total"} {
		if got := d.Metric(m, "reason", "wire_format"); got != rejectLogRecords {
			t.Errorf("%s{reason=wire_format} = %v, want %d", m, got, rejectLogRecords)
		}
	}
	start := time.Now()
	lines := checkRejectLogs(t, func() rejectLines { return daemonRejectLines(d) }, rejectLogWantFor(recs), 30*time.Second)
	t.Logf("%d lines of their own and %d summaries (counts %v) account for the %d rejections, %v after everything was committed",
		len(lines.single), len(lines.summaries), summaryCounts(lines), rejectLogRecords, time.Since(start).Round(time.Millisecond))
	d.Shutdown(15 * time.Second)
	checkDeadLettered(t, e, d, group, recs)
}

// The same 2000 records, but the daemon is stopped (SIGTERM) as soon as
// they are all committed, before the 10s window of the rejections past the
// first 10 ends: the summary of that window must still be written, or
// those rejections are in no log line at all.
func TestRejectLogSummaryWrittenAtShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the daemon binary")
	}
	const group = "g-rejectlog-stop"
	e, d, recs := rejectLogRun(t, group)
	st := d.Shutdown(15 * time.Second)
	lines := checkRejectLogs(t, func() rejectLines { return daemonRejectLines(d) }, rejectLogWantFor(recs), 0)
	t.Logf("stopped (%v); %d lines of their own and %d summaries (counts %v) for the %d rejections",
		st, len(lines.single), len(lines.summaries), summaryCounts(lines), rejectLogRecords)
	checkDeadLettered(t, e, d, group, recs)
}

func summaryCounts(lines rejectLines) []int64 {
	var out []int64
	for _, s := range lines.summaries {
		n, _ := logInt(s["count"])
		out = append(out, n)
	}
	return out
}
