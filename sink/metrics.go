package sink

import "github.com/prometheus/client_golang/prometheus"

// metrics are the sink's Prometheus series. Every name is documented in the
// README's Monitoring section.
type metrics struct {
	consumed      *prometheus.CounterVec   // topic
	rejected      *prometheus.CounterVec   // topic, reason
	written       *prometheus.CounterVec   // table
	retries       *prometheus.CounterVec   // table, stage
	appendSeconds *prometheus.HistogramVec // table
	batchRows     prometheus.Histogram
	inflight      prometheus.Gauge
	partitions    prometheus.Gauge
	commits       *prometheus.CounterVec // result
	stalled       prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		consumed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_records_consumed_total",
			Help: "Kafka records handed to a partition worker.",
		}, []string{"topic"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_records_rejected_total",
			Help: "Records that can never be written, by reason; their offsets are committed.",
		}, []string{"topic", "reason"}),
		written: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_rows_written_total",
			Help: "Rows BigQuery acknowledged.",
		}, []string{"table"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_retries_total",
			Help: "Transient failures that were retried, by stage (schema, table, append).",
		}, []string{"table", "stage"}),
		appendSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bqsink_append_seconds",
			Help:    "Time from sending an append to BigQuery's answer.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"table"}),
		batchRows: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bqsink_batch_rows",
			Help:    "Rows per flushed batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bqsink_appends_inflight",
			Help: "Appends sent and not yet answered.",
		}),
		partitions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bqsink_partitions_assigned",
			Help: "Partitions this member owns.",
		}),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_commits_total",
			Help: "Offset commits, by result (ok, error).",
		}, []string{"result"}),
		stalled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bqsink_partitions_stalled",
			Help: "Partitions holding unacknowledged records with no progress for longer than stall_timeout.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.consumed, m.rejected, m.written, m.retries, m.appendSeconds, m.batchRows, m.inflight, m.partitions, m.commits, m.stalled} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
