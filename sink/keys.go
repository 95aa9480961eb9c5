package sink

import (
	"fmt"

	"github.com/bqsink/bqsink/internal/keys"
)

// Keys declares every key of Config, in the order the README's
// Configuration table lists them: its path in the config file, its
// default, what it means, whether it is a secret, and what values it
// takes. Config.WithDefaults, DefaultConfig and Config.Validate derive
// from it, and so do the startup log's redaction, the README's table and
// the checks of config.yaml and deploy/'s example (internal/config). The
// sections of bq.Config and schema.Config check their values in their own
// Validate, which a Client or Registry made without the sink also runs.
func Keys() []keys.Key {
	return []keys.Key{
		{Path: "kafka.brokers", Required: true, Doc: "bootstrap brokers"},
		{Path: "kafka.group_id", Required: true, Doc: "consumer group; every replica uses the same one"},
		{Path: "kafka.topics", Required: true, Doc: "topics to consume; an entry starting with `^` is a regular expression"},
		{Path: "kafka.client_id", Default: "bqsink", Doc: "Kafka client ID"},
		{Path: "kafka.instance_id", Doc: "static membership (StatefulSets); leave empty under KEDA"},
		{Path: "kafka.start_offset", Default: "earliest", Check: keys.OneOf("earliest", "latest"), Doc: "`earliest` or `latest`, for partitions with no committed offset"},
		{Path: "kafka.isolation_level", Default: "read_committed", Check: keys.OneOf(IsolationReadCommitted, IsolationReadUncommitted), Doc: "`read_committed`: records of transactions that were aborted, or are still open, are never read (they never reach BigQuery); `read_uncommitted`: every record is read, aborted ones included. See [Transactional topics](#transactional-topics)"},
		{Path: "kafka.session_timeout", Default: "45s", Check: keys.NotNegative, Doc: "how long the group waits for a silent member before moving its partitions"},
		{Path: "kafka.rebalance_timeout", Default: "60s", Check: keys.NotNegative, Doc: "how long a rebalance may take; a revoked partition gets half of it to finish in-flight writes"},
		{Path: "kafka.commit_interval", Default: "1s", Check: keys.NotNegative, Doc: "acknowledged offsets are committed as soon as BigQuery acknowledged them, one commit in flight at a time (also on revoke and shutdown); this bounds how long a failed commit waits for its retry"},
		{Path: "kafka.fetch_max_wait", Default: "500ms", Check: keys.NotNegative, Doc: "how long a broker may hold a fetch waiting for data; also bounds how soon a partition paused for backpressure is fetched again"},
		{Path: "kafka.log_level", Default: "warn", Check: keys.OneOf("debug", "info", "warn", "error", "none"), Doc: "the level from which the Kafka client's own log lines are written: `debug`, `info` (every rebalance step and connection), `warn`, `error` or `none`"},
		{Path: "kafka.request_timeout", Default: "10s", Check: keys.NotNegative, Doc: "bound on each offset commit, dead-letter write and admin request (startup checks, lag watch); a slower one fails, is reported and retried"},
		{Path: "kafka.tls.enabled", Doc: "TLS to the brokers, for both Kafka clients (consumer; admin and dead letters); certificates are verified against the system's roots and the host dialed unless set below"},
		{Path: "kafka.tls.ca_file", Doc: "PEM CA certificates that sign the brokers' certificates, instead of the system's roots (Aiven, Strimzi, a company CA)"},
		{Path: "kafka.tls.cert_file", Doc: "PEM client certificate for brokers that authenticate clients by certificate (mutual TLS); with `kafka.tls.key_file`"},
		{Path: "kafka.tls.key_file", Doc: "PEM key of `kafka.tls.cert_file`"},
		{Path: "kafka.tls.server_name", Doc: "the name the brokers' certificates must hold, when not the host dialed"},
		{Path: "kafka.tls.insecure_skip_verify", Doc: "accept any broker certificate: for tests only"},
		{Path: "kafka.sasl.mechanism", Doc: "SASL authentication: `plain`, `scram-sha-256`, `scram-sha-512` (with username and password), `oauthbearer` (with `token_file`) or `aws-msk-iam` (credentials from the default AWS chain: environment, `AWS_PROFILE`, web identity, container or instance role; the region from the broker host name, else `AWS_REGION`); empty: none"},
		{Path: "kafka.sasl.username", Doc: "user of `plain` and `scram-*` (Confluent Cloud: the API key)"},
		{Path: "kafka.sasl.password", Secret: true, Doc: "password of `plain` and `scram-*` (Confluent Cloud: the API secret); never logged. Or `password_file`"},
		{Path: "kafka.sasl.password_file", Doc: "file holding the password, instead of `password` (a Kubernetes Secret mounted as a volume); one trailing newline is not part of it. Read again whenever it changes, so a rotated password is used by the next connection or re-authentication; missing or empty at startup fails it, later it keeps the last password read and logs a warning"},
		{Path: "kafka.sasl.token_file", Doc: "file holding the OAuth token of `oauthbearer`; read again whenever it changes, so a rotated token is used by the next connection or re-authentication"},
		{Path: "kafka.sasl.allow_plaintext", Doc: "let `plain`, `oauthbearer` and `aws-msk-iam` send their secret without `kafka.tls.enabled`; without it such a config is refused"},
		{Path: "schema_registry.url", Required: true, SecretURL: true, Doc: "registry base URL (http or https)"},
		{Path: "schema_registry.username", Doc: "basic auth user"},
		{Path: "schema_registry.password", Secret: true, Doc: "basic auth password; never logged. Or `password_file`"},
		{Path: "schema_registry.password_file", Doc: "file holding the basic auth password, instead of `password`; one trailing newline is not part of it. Read again whenever it changes, so a rotated password is used by the next request; missing or empty at startup fails it, later it keeps the last password read and logs a warning"},
		{Path: "schema_registry.bearer_token_file", Doc: "file holding a token sent as `Authorization: Bearer`, instead of basic auth; read again whenever it changes"},
		{Path: "schema_registry.tls.ca_file", Doc: "PEM CA certificates that sign the registry's certificate (https URLs), instead of the system's roots"},
		{Path: "schema_registry.tls.cert_file", Doc: "PEM client certificate for a registry that wants one (mutual TLS); with `schema_registry.tls.key_file`"},
		{Path: "schema_registry.tls.key_file", Doc: "PEM key of `schema_registry.tls.cert_file`"},
		{Path: "schema_registry.tls.server_name", Doc: "the name the registry's certificate must hold, when not the URL's host"},
		{Path: "schema_registry.tls.insecure_skip_verify", Doc: "accept any registry certificate: for tests only"},
		{Path: "schema_registry.timeout", Default: "10s", Doc: "per HTTP call to the registry"},
		{Path: "bigquery.project", Required: true, Doc: "Google Cloud project"},
		{Path: "bigquery.dataset", Required: true, Doc: "dataset for table names without a dataset; must exist"},
		{Path: "bigquery.location", Doc: "BigQuery location for API calls (e.g. `EU`); empty uses the dataset's. Created tables always take the dataset's location"},
		{Path: "bigquery.endpoint", SecretURL: true, Doc: "REST endpoint override (test server, emulator); turns auth off"},
		{Path: "bigquery.grpc_endpoint", Doc: "Storage Write API `host:port` override, plaintext; turns auth off"},
		{Path: "bigquery.credentials_file", Doc: "credentials JSON; empty uses Application Default Credentials"},
		{Path: "bigquery.auto_create_tables", Default: "true", Doc: "create a missing table from the Avro schema"},
		{Path: "bigquery.auto_update_schema", Default: "true", Doc: "add new columns (NULLABLE) and relax REQUIRED ones when a new writer schema arrives"},
		{Path: "bigquery.max_request_bytes", Default: "9437184", Doc: "cap on one AppendRows request (BigQuery's limit is 10 MB); larger appends are split"},
		{Path: "bigquery.timeout", Default: "10s", Doc: "bound on each REST call (read the dataset, read, create or patch a table), each Storage Write stream lookup, open and send; a slower call fails and is retried. Raise it if a `max_request_bytes` request takes longer to upload"},
		{Path: "bigquery.append_timeout", Default: "20s", Doc: "how long an append waits for BigQuery's answer; past it the write stream is reset and its unanswered rows are sent again (BigQuery may already have written some: at-least-once)"},
		{Path: "bigquery.max_connections", Computed: "4; per table with grpc_endpoint", Doc: "Storage Write connections that the tables' default streams share, per region and kind of table (append; upsert), whatever the table count: a pool opens another only while each one it has is saturated. With `grpc_endpoint` set, the default is a connection per table, as goccy's emulator cannot share one; set it to share anyway. Exactly-once streams never share. See [Performance](#performance)"},
		{Path: "bigquery.delivery", Default: "at_least_once", Doc: "`at_least_once`: rows go through the table's default stream, and a retried append may write a row twice. `exactly_once`: each partition writes through its own COMMITTED write stream at stream offsets recorded in the Kafka commit, so every record lands once across crashes, rebalances and retries; see [Exactly-once](#exactly-once)"},
		{Path: "tables", Doc: "`topic: table` or `topic: dataset.table`; unlisted topics go to the topic name with `[^A-Za-z0-9_]` replaced by `_`. The long form `topic: {table: ..., partitioning: ..., clustering: ..., description: ..., labels: ..., mode: ..., primary_key: ..., envelope: ..., sequence: ..., max_staleness: ...}` also says how bqsink creates and writes the table; see [Partitioning and clustering](#partitioning-and-clustering)"},
		{Path: "table_defaults.partitioning", Doc: "time partitioning of the tables bqsink creates, for topics whose `tables:` entry sets none: `type` (`hour`, `day`, `month`, `year`), `field` (a top-level TIMESTAMP, DATE or DATETIME column; empty: ingestion time), `expiration` (`400d`, `36h`; none by default), `require_filter` (`false`)"},
		{Path: "table_defaults.clustering", Doc: "up to four top-level columns to cluster created tables on"},
		{Path: "table_defaults.description", Doc: "description of created tables"},
		{Path: "table_defaults.labels", Doc: "labels of created tables (lowercase letters, digits, `_`, `-`)"},
		{Path: "table_defaults.mode", Default: ModeAppend, Doc: "`append`: every record becomes a row. `upsert`: the table mirrors the topic by primary key, through BigQuery's change data capture: a record is an UPSERT of its row, a tombstone a DELETE of its key; see [Change data capture](#change-data-capture)"},
		{Path: "table_defaults.primary_key", Doc: "upsert mode: the key columns (at most 16); empty takes the fields of the record key's schema (the Kafka key, decoded through the registry)"},
		{Path: "table_defaults.envelope", Default: EnvelopeNone, Doc: "upsert mode: `none`, the value is the row (a string field `__deleted` of `\"true\"`, as Debezium's unwrap transform writes, makes it a DELETE); `debezium`, the value is Debezium's change event (`op`, `before`, `after`, `source`)"},
		{Path: "table_defaults.sequence", Computed: SequenceKafkaOffset, Doc: "upsert mode: what orders a key's changes ahead of the Kafka offset, which always ends the sequence number: `kafka_offset` (nothing more), `debezium` (the source database's log position; PostgreSQL and MySQL) or a list of up to three integer fields of the value"},
		{Path: "table_defaults.max_staleness", Doc: "BigQuery's `max_staleness` option of created tables (e.g. `15m`): how stale a query of an upsert table may read before BigQuery merges pending changes at query time; 0 leaves it unset"},
		{Path: "batch.max_records", Default: "10000", Check: keys.NotNegative, Doc: "rows per partition batch"},
		{Path: "batch.max_bytes", Default: "8388608", Check: keys.NotNegative, Doc: "bytes of encoded rows per partition batch: a batch closes once its rows reach it"},
		{Path: "batch.max_wait", Default: "1s", Check: keys.NotNegative, Doc: "longest a record waits in a batch"},
		{Path: "batch.max_inflight", Default: "4", Check: keys.NotNegative, Doc: "appends per partition awaiting BigQuery before the partition stops reading"},
		{Path: "errors.policy", Default: "dlq", Check: keys.OneOf(PolicyDLQ, PolicySkip, PolicyFail), Doc: "what happens to a record that can never be written: `dlq` writes it to `errors.dlq_topic` and commits past it once Kafka acknowledged it; `skip` logs and counts it and commits past it; `fail` commits everything before it and exits 1 naming it. An outage never counts: only the record itself"},
		{Path: "errors.dlq_topic", Computed: "<group_id>.dlq", Check: checkTopicName, Doc: "the dead-letter topic; with `policy: dlq` it is checked at startup"},
		{Path: "errors.dlq_create", Default: "true", Doc: "with `policy: dlq`, create `errors.dlq_topic` at startup when it does not exist: the brokers' default partition count and replication factor, `max.message.bytes` the largest of the source topics' and the brokers' `message.max.bytes`, plus 64 KiB for bqsink's headers. If the brokers refuse, startup fails naming what to create. `false`: a missing topic fails the start"},
		{Path: "memory.max_buffered_bytes", Default: "67108864", Note: "(64 MiB)", Check: checkMaxBuffered, Doc: "cap on the memory holding records fetched and not yet acknowledged: their bytes, their encoded rows and the client's fetch buffers. Fetching pauses at it and resumes as BigQuery acknowledges. bqsink also sets Go's soft memory limit to this plus 56 MiB unless `GOMEMLIMIT` is set, so peak RSS stays near it plus a fixed overhead. Memory goes to the partitions that have records: each is guaranteed an even part of half of it, the busy ones share the other half (one busy partition among many idle ones gets about half), and a batch closes at a quarter of what its partition may hold. A backlog on every partition splits it evenly, so with many partitions per process a higher cap still gives larger batches (see [Performance](#performance)). At least 4 MiB"},
		{Path: "unknown_schema_grace", Default: "30s", Check: keys.NotNegative, Doc: "records whose schema ID the registry does not know are retried this long, once per ID, before they are rejected: a registry replica may lag behind a new schema"},
		{Path: "metadata_column", Check: checkColumnName, Doc: "when set (e.g. `_kafka`), adds a NULLABLE RECORD column with each row's Kafka origin (see below)"},
		{Path: "shutdown_timeout", Default: "30s", Check: keys.NotNegative, Doc: "time to flush and commit after SIGTERM"},
		{Path: "stall_timeout", Default: "5m", Check: keys.NotNegative, Doc: "`/readyz` fails when a partition holds unacknowledged records this long without progress"},
	}
}

func checkTopicName(v any) string {
	if t := v.(string); t != "" && !kafkaTopicName.MatchString(t) {
		return fmt.Sprintf("%q is not a Kafka topic name (letters, digits, . _ -; at most 249)", t)
	}
	return ""
}

func checkMaxBuffered(v any) string {
	if m := v.(int64); m != 0 && m < minMaxBufferedBytes {
		return fmt.Sprintf("%d is below the minimum of %d (4 MiB)", m, minMaxBufferedBytes)
	}
	return ""
}

func checkColumnName(v any) string {
	if c := v.(string); c != "" && !columnName.MatchString(c) {
		return fmt.Sprintf("%q is not a BigQuery column name (letters, digits, _; not starting with a digit)", c)
	}
	return ""
}
