package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

// BenchmarkPipeline measures the whole path, Kafka to BigQuery acknowledged
// and committed, on the local stack: one op is 100000 stock updates of both
// versions on a fresh 6-partition topic, read by a fresh sink with the
// production batch defaults. The stack's servers share the machine with the
// sink and each op includes joining the group, so the figure is a floor.
//
//	go test ./integration -run '^$' -bench Pipeline -benchtime 5x
func BenchmarkPipeline(b *testing.B) {
	const perOp = 100000
	ctx := b.Context()
	st, err := stack.Start(stack.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	schemas, err := st.RegisterStock()
	if err != nil {
		b.Fatal(err)
	}
	recs := make([]*kgo.Record, 0, perOp)
	for _, u := range stack.StockUpdates(perOp, 42) {
		r, err := schemas.Record(u)
		if err != nil {
			b.Fatal(err)
		}
		recs = append(recs, r)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		// A topic per op, so every op reads exactly perOp records.
		topic := fmt.Sprintf("bench-%d-%d", b.N, i)
		if err := st.CreateTopic(ctx, topic, 6); err != nil {
			b.Fatal(err)
		}
		batch := make([]*kgo.Record, len(recs))
		for j, r := range recs {
			batch[j] = &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value}
		}
		if err := st.Produce(ctx, batch...); err != nil {
			b.Fatal(err)
		}
		cfg := st.Config(topic, topic)
		cfg.Tables = map[string]sink.TableRoute{topic: sink.Route(stack.StockTable)}
		cfg.Batch = sink.BatchConfig{} // production defaults
		cfg.Kafka.FetchMaxWait = 0     // likewise
		b.StartTimer()

		r := itest.StartSink(ctx, b, st, cfg, zap.NewNop())
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err := st.WaitCommitted(wctx, topic, topic)
		cancel()
		if err != nil {
			b.Fatal(err)
		}

		b.StopTimer()
		if err := r.Stop(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(perOp)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
}
