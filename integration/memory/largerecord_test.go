package memory

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
)

// largeRecord is the size of the record of TestLargeRecordWithinMemoryBudget:
// Kafka's 100 MiB fetch limit leaves room for little more.
const largeRecord = 90 << 20

// A 90 MiB record between small ones, with the default memory settings:
// its row could never fit a request, so it is rejected from its length
// (row_too_large) without a row being built, dead-lettered whole, and the
// partition moves on. The daemon's peak RSS stays within what the README
// says a pod needs: memory.max_buffered_bytes + 80 MiB + 2 × the largest
// record.
func TestLargeRecordWithinMemoryBudget(t *testing.T) {
	itest.SkipShortParallel(t)
	ctx := t.Context()
	e := itest.NewEnv(t)
	const group, topic, table = "g-large", "large.records", "large_records"
	const topicMax = 100 << 20
	for _, name := range []string{topic, group + ".dlq"} {
		if err := e.St.CreateTopic(ctx, name, 1, stack.MaxMessageBytes(topicMax+64<<10)); err != nil {
			t.Fatal(err)
		}
	}
	cfg := itest.NewDaemonConfig(e, group).Set("kafka.topics", []string{topic}).Set("tables", map[string]any{topic: table})
	d := itest.StartDaemon(t, cfg)

	producer, err := kgo.NewClient(kgo.SeedBrokers(e.St.Brokers()...), kgo.ProducerBatchMaxBytes(topicMax), kgo.ProducerLinger(0),
		kgo.ProducerBatchCompression(kgo.NoCompression()))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	us := stack.StockUpdates(201, 90)
	big := us[100]
	big.V2 = false
	big.WarehouseName = strings.Repeat("w", largeRecord)
	body, err := avro.Marshal(e.Schemas.V1, big)
	if err != nil {
		t.Fatal(err)
	}
	var recs []*kgo.Record
	for i, u := range us {
		r, err := e.Schemas.Record(u)
		if err != nil {
			t.Fatal(err)
		}
		if i == 100 {
			r.Value = stack.WireFormat(e.Schemas.V1ID, body)
		}
		r.Topic = topic
		recs = append(recs, r)
	}
	// One record per request: the large one fills a request of its own.
	for _, r := range recs {
		if err := producer.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatalf("produce %d bytes: %v", len(r.Value), err)
		}
	}
	itest.WaitAllCommitted(t, e.St, group, topic, 60*time.Second)

	rss, err := procStatusBytes(d.Pid(), "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	buffered := d.Metric("bqsink_buffered_bytes_peak")
	limit := d.Metric("bqsink_buffered_bytes_limit")
	dls, err := e.St.ReadTopic(ctx, group+".dlq")
	if err != nil {
		t.Fatal(err)
	}
	d.Shutdown(15 * time.Second)
	itest.LogProblems(t, d)

	mib := func(b float64) string { return fmt.Sprintf("%.0f MiB", b/(1<<20)) }
	t.Logf("a %s record: peak RSS %s, bqsink_buffered_bytes_peak %s (memory.max_buffered_bytes %s)",
		mib(float64(len(recs[100].Value))), mib(rss), mib(buffered), mib(limit))
	if len(dls) != 1 || len(dls[0].Value) != len(recs[100].Value) || header(dls[0], "bqsink.reason") != "row_too_large" {
		t.Fatalf("dead-letter topic: %d records, want the large one whole with reason row_too_large", len(dls))
	}
	if rows := e.St.BigQuery.RowCount(stack.Project, stack.Dataset, table); rows != len(us)-1 {
		t.Errorf("%d rows, want %d: every record but the large one", rows, len(us)-1)
	}
	// What the README promises a pod needs.
	need := limit + 80<<20 + 2*float64(len(recs[100].Value))
	if rss > need {
		t.Errorf("peak RSS %s over what the README says a pod needs, %s (max_buffered_bytes + 80 MiB + 2 × the record)", mib(rss), mib(need))
	}
	if buffered > float64(len(recs[100].Value))+limit {
		t.Errorf("bqsink_buffered_bytes_peak %s: the large record was charged more than once", mib(buffered))
	}
}

// header is the value of a record's header key, "" if it has none.
func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
