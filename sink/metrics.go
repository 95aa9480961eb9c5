package sink

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a record can never be written; they label
// bqsink_records_rejected_total and bqsink_records_dead_lettered_total and
// are the bqsink.reason header of its dead-letter record.
const (
	reasonWireFormat        = "wire_format"         // not magic byte 0 + 4-byte schema ID + body
	reasonSchemaNotFound    = "schema_not_found"    // the registry does not know its schema ID (after unknown_schema_grace)
	reasonUnsupportedSchema = "unsupported_schema"  // its schema has no BigQuery mapping
	reasonIncompatible      = "incompatible_schema" // its schema changed in a way the table cannot absorb
	reasonDecode            = "decode"              // its body does not decode under its schema
	reasonEncode            = "encode"              // its row does not fit the table's columns
	reasonRowTooLarge       = "row_too_large"       // its row alone exceeds BigQuery's request limit
	reasonBigQuery          = "bigquery_rejected"   // BigQuery refused the row
	reasonKey               = "key"                 // upsert tables: its key is missing, or does not decode where the change needs it
)

var reasons = []string{reasonWireFormat, reasonSchemaNotFound, reasonUnsupportedSchema, reasonIncompatible,
	reasonDecode, reasonEncode, reasonRowTooLarge, reasonBigQuery, reasonKey}

// metrics are the sink's Prometheus series. Every name is documented in the
// README's Monitoring section. Values derived from state (partitions,
// stalls, buffered bytes, appends in flight) are computed when scraped, by
// scrapeCollector.
type metrics struct {
	consumed      *prometheus.CounterVec   // topic
	rejected      *prometheus.CounterVec   // topic, reason
	deadLettered  *prometheus.CounterVec   // topic, reason
	tombstones    *prometheus.CounterVec   // topic
	written       *prometheus.CounterVec   // table
	retries       *prometheus.CounterVec   // stage
	appendSeconds *prometheus.HistogramVec // table
	appendedBytes *prometheus.CounterVec   // table
	lastWrite     *prometheus.GaugeVec     // table
	freshness     *prometheus.HistogramVec // table
	batchRows     prometheus.Histogram
	commits       *prometheus.CounterVec // result
	rebalances    *prometheus.CounterVec // event
	eoFallbacks   *prometheus.CounterVec // topic, reason
	eoExisting    *prometheus.CounterVec // topic
	superseded    *prometheus.CounterVec // topic
	truncates     *prometheus.CounterVec // topic
}

func newMetrics() *metrics {
	return &metrics{
		consumed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_records_consumed_total",
			Help: "Kafka records handed to a partition worker.",
		}, []string{"topic"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_records_rejected_total",
			Help: "Records that can never be written, by reason; errors.policy decides what follows.",
		}, []string{"topic", "reason"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_records_dead_lettered_total",
			Help: "Rejected records the dead-letter topic acknowledged, by reason.",
		}, []string{"topic", "reason"}),
		eoFallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_exactly_once_fallbacks_total",
			Help: "Times exactly-once could not be kept for a window of a partition and a new write stream took over, by reason; rows of that window may be written twice.",
		}, []string{"topic", "reason"}),
		eoExisting: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_exactly_once_rows_existing_total",
			Help: "Rows appended again (after a restart, rebalance or lost answer) that BigQuery already held at their stream offset, and so did not write twice.",
		}, []string{"topic"}),
		superseded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_changes_superseded_total",
			Help: "Upsert tables: changes not sent because a later change of the same key was in the same batch (BigQuery would apply only the later one).",
		}, []string{"topic"}),
		truncates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_truncates_skipped_total",
			Help: "Upsert tables: Debezium truncate events, which change data capture cannot apply; the table keeps its rows.",
		}, []string{"topic"}),
		tombstones: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_tombstones_total",
			Help: "Records with a null value (tombstones): no row, offset committed.",
		}, []string{"topic"}),
		written: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_rows_written_total",
			Help: "Rows BigQuery acknowledged.",
		}, []string{"table"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_retries_total",
			Help: "Failed attempts that were retried, by stage (schema, table, append, dead_letter, commit, fetch).",
		}, []string{"stage"}),
		appendSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bqsink_append_seconds",
			Help:    "Time from sending an append to BigQuery's answer.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"table"}),
		appendedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_appended_bytes_total",
			Help: "Bytes of encoded rows BigQuery acknowledged.",
		}, []string{"table"}),
		lastWrite: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bqsink_table_last_write_timestamp_seconds",
			Help: "When BigQuery last acknowledged rows for the table (unix seconds).",
		}, []string{"table"}),
		freshness: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bqsink_freshness_seconds",
			Help:    "End-to-end delay per row: when its batch was delivered minus the Kafka record's timestamp.",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 17),
		}, []string{"table"}),
		batchRows: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bqsink_batch_rows",
			Help:    "Rows per flushed batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_commits_total",
			Help: "Offset commits, by result (ok, error).",
		}, []string{"result"}),
		rebalances: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bqsink_rebalances_total",
			Help: "Partitions changing hands in this member, by event (assigned, revoked, lost): one per callback that moved any.",
		}, []string{"event"}),
	}
}

// register registers the counters and the gauges s computes when scraped.
func (m *metrics) register(reg prometheus.Registerer, s *Sink) error {
	for _, st := range stages {
		m.retries.WithLabelValues(st)
	}
	for _, r := range []string{"ok", "error"} {
		m.commits.WithLabelValues(r)
	}
	for _, e := range []string{"assigned", "revoked", "lost"} {
		m.rebalances.WithLabelValues(e)
	}
	cs := []prometheus.Collector{
		m.consumed, m.rejected, m.deadLettered, m.tombstones, m.written, m.retries, m.appendSeconds, m.appendedBytes,
		m.lastWrite, m.freshness, m.batchRows, m.commits, m.rebalances, m.eoFallbacks, m.eoExisting, m.superseded, m.truncates, scrapeCollector{s},
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// initTable starts a table's counters at zero.
func (m *metrics) initTable(table string) {
	m.written.WithLabelValues(table)
	m.appendedBytes.WithLabelValues(table)
}

// initTopic starts a topic's counters at zero, so that alerts see them
// before the first event.
func (m *metrics) initTopic(topic string) {
	m.consumed.WithLabelValues(topic)
	m.tombstones.WithLabelValues(topic)
	m.eoExisting.WithLabelValues(topic)
	m.superseded.WithLabelValues(topic)
	m.truncates.WithLabelValues(topic)
	for _, r := range reasons {
		m.rejected.WithLabelValues(topic, r)
		m.deadLettered.WithLabelValues(topic, r)
	}
}

// The series computed from state when scraped, by scrapeCollector.
var (
	assignedDesc = prometheus.NewDesc("bqsink_partitions_assigned", "Partitions this member owns.", nil, nil)
	stalledDesc  = prometheus.NewDesc("bqsink_partitions_stalled",
		"Partitions holding unacknowledged records with no progress, or with records they cannot fetch, for longer than stall_timeout.", nil, nil)
	inflightDesc = prometheus.NewDesc("bqsink_appends_inflight",
		"Batches sent to BigQuery and not yet delivered (answered, their rejections dead-lettered).", nil, nil)
	pausedDesc = prometheus.NewDesc("bqsink_partitions_paused",
		"Partitions whose fetching is paused because they hold their share of memory.max_buffered_bytes.", nil, nil)
	bufferedDesc = prometheus.NewDesc("bqsink_buffered_bytes",
		"Memory held for records fetched and not yet acknowledged (records and their rows); capped by memory.max_buffered_bytes.", nil, nil)
	bufferedPeakDesc  = prometheus.NewDesc("bqsink_buffered_bytes_peak", "The highest bqsink_buffered_bytes since the start.", nil, nil)
	bufferedLimitDesc = prometheus.NewDesc("bqsink_buffered_bytes_limit", "memory.max_buffered_bytes.", nil, nil)
	stageFailingDesc  = prometheus.NewDesc("bqsink_stage_failing",
		"Targets (tables, registry, topics) whose calls in this stage are failing now.", []string{"stage"}, nil)
	lagDesc = prometheus.NewDesc("bqsink_partition_lag",
		"Records of an owned partition not committed yet: its end offset minus the group's committed offset, each the newest of what the client saw and what the brokers said at the last refresh (every 15s).",
		[]string{"topic", "partition"}, nil)
	groupLagDesc = prometheus.NewDesc("bqsink_group_lag",
		"The group's records of the topic not committed yet, summed over its partitions whoever owns them, as the brokers said at the last refresh (every 15s); every member reports it.",
		[]string{"topic"}, nil)
	connectionsDesc = prometheus.NewDesc("bqsink_storage_write_connections",
		"Storage Write connections (AppendRows calls) open: the tables' shared ones, at most bigquery.max_connections per region and kind of table, plus one per exactly-once stream writing.", nil, nil)
	committedDesc = prometheus.NewDesc("bqsink_partition_committed_offset",
		"The group's committed offset of the partition: the next record to read after a restart.",
		[]string{"topic", "partition"}, nil)

	scrapeDescs = []*prometheus.Desc{assignedDesc, stalledDesc, inflightDesc, pausedDesc, bufferedDesc, bufferedPeakDesc,
		bufferedLimitDesc, stageFailingDesc, lagDesc, groupLagDesc, committedDesc, connectionsDesc}
)

// scrapeCollector computes the gauges that describe state when scraped, as
// const metrics: partitions, stalls, appends in flight, paused partitions,
// memory, failing stages, and each assigned partition's lag and committed
// offset and the group's lag (from what the client knows and the last lag
// refresh: no request to Kafka per scrape). It takes none of the locks the
// poll loop, the group callbacks and the workers hold: it reads the
// published set of workers (Sink.owned), the workers', the memory budget's
// and health's atomics, the last lag snapshot, and the consumer's committed
// offsets (under franz-go's own lock, never held across a request). So a
// scrape never waits on a rebalance, a poll or a worker.
type scrapeCollector struct{ s *Sink }

func (c scrapeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range scrapeDescs {
		ch <- d
	}
}

func (c scrapeCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(assignedDesc, float64(s.flow.parts.Load()))
	gauge(stalledDesc, float64(len(s.stalled())))
	gauge(inflightDesc, float64(s.inflight()))
	gauge(pausedDesc, float64(s.paused()))
	gauge(bufferedDesc, float64(s.flow.used.Load()))
	gauge(bufferedPeakDesc, float64(s.flow.peak.Load()))
	gauge(bufferedLimitDesc, float64(s.flow.cap))
	connections := 0
	if wh := s.whScraped.Load(); wh != nil { // nil until the sink starts
		connections = wh.Connections()
	}
	gauge(connectionsDesc, float64(connections))
	for _, st := range stages {
		gauge(stageFailingDesc, float64(s.health.failingStage(st)), st)
	}
	offsets := s.partitionOffsets()
	for _, p := range offsets {
		labels := []string{p.tp.topic, strconv.Itoa(int(p.tp.partition))}
		gauge(committedDesc, float64(p.committed), labels...)
		if p.hwm >= 0 {
			gauge(lagDesc, float64(p.lag()), labels...)
		}
	}
	for topic, n := range s.groupLagOf(offsets) {
		gauge(groupLagDesc, float64(n), topic)
	}
}

// inflight counts the batches sent and not yet acknowledged.
func (s *Sink) inflight() int64 {
	var n int64
	for _, w := range s.ownedWorkers() {
		n += w.inflight.Load()
	}
	return n
}

// paused counts the partitions holding their share of memory.
func (s *Sink) paused() int {
	n := 0
	for _, w := range s.ownedWorkers() {
		if w.paused.Load() {
			n++
		}
	}
	return n
}
