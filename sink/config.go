package sink

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/internal/keys"
	"github.com/bqsink/bqsink/schema"
)

// Config is bqsink's configuration below the process level (HTTP and
// logging belong to main): where records come from, how they are decoded,
// where they go and how failures are handled. main reads it from the top
// level of the YAML file. Keys declares every key: its default, its doc
// and its checks. Zero values mean the defaults, except the booleans that
// default to true: start from DefaultConfig.
type Config struct {
	Kafka          KafkaConfig   `yaml:"kafka"`
	SchemaRegistry schema.Config `yaml:"schema_registry"`
	BigQuery       bq.Config     `yaml:"bigquery"`
	// Tables routes a topic to a table ("table" in bigquery.dataset, or
	// "dataset.table") and says how it is created. A topic not listed goes
	// to DefaultTable(topic).
	Tables map[string]TableRoute `yaml:"tables"`
	// TableDefaults are the creation settings of every topic's table where
	// its entry under Tables does not set them, including topics matched by
	// a regular expression.
	TableDefaults TableSettings `yaml:"table_defaults"`
	Batch         BatchConfig   `yaml:"batch"`
	Errors        ErrorsConfig  `yaml:"errors"`
	Memory        MemoryConfig  `yaml:"memory"`
	// ShutdownTimeout bounds how long Run spends flushing and committing
	// after its context ends; writes still unanswered then are
	// abandoned uncommitted and are read again by the next owner.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// StallTimeout is how long a partition may hold unacknowledged records
	// without progress, or have records it cannot fetch, or a stage may
	// fail without a success, before Ready reports it.
	StallTimeout time.Duration `yaml:"stall_timeout"`
	// UnknownSchemaGrace is how long records whose schema ID the registry
	// does not know are retried before they are rejected: a
	// registry replica may lag behind a schema registered a moment ago.
	// The grace runs once per ID, from the first record that carried it.
	UnknownSchemaGrace time.Duration `yaml:"unknown_schema_grace"`
	// MetadataColumn, when set, adds a NULLABLE RECORD column of that name
	// holding each row's Kafka topic, partition, offset, timestamp, key and
	// headers (empty: no column).
	MetadataColumn string `yaml:"metadata_column"`
}

// DefaultConfig returns a Config with every default of Keys, the
// booleans that default to true included (auto_create_tables,
// auto_update_schema, dlq_create): read a config file over it.
func DefaultConfig() Config {
	var c Config
	keys.ApplyDefaults(&c, Keys(), true)
	return c
}

// KafkaConfig says which cluster, group and topics to consume.
type KafkaConfig struct {
	Brokers []string `yaml:"brokers"`
	GroupID string   `yaml:"group_id"`
	// Topics to consume; an entry starting with ^ is a regular expression
	// matched against every topic in the cluster.
	Topics   []string `yaml:"topics"`
	ClientID string   `yaml:"client_id"`
	// InstanceID turns on static membership (for StatefulSets): a restarted
	// member keeps its partitions without a rebalance. Empty is right under
	// a Deployment scaled by KEDA.
	InstanceID string `yaml:"instance_id"`
	// StartOffset is where a partition with no committed offset starts:
	// "earliest" (default) or "latest".
	StartOffset string `yaml:"start_offset"`
	// IsolationLevel is IsolationReadCommitted (default): records of
	// transactions that were aborted, or are still open, are never read;
	// or IsolationReadUncommitted: every record is read, aborted ones
	// included.
	IsolationLevel   string        `yaml:"isolation_level"`
	SessionTimeout   time.Duration `yaml:"session_timeout"`
	RebalanceTimeout time.Duration `yaml:"rebalance_timeout"`
	// CommitInterval bounds how long a failed commit waits for its retry:
	// acknowledged offsets are committed at once, one commit in flight at
	// a time, and also on revoke and on shutdown.
	CommitInterval time.Duration `yaml:"commit_interval"`
	// FetchMaxWait is how long a broker may hold a fetch open waiting for
	// data (its default is the Java consumer's). A partition resumed
	// after backpressure is fetched again only once the fetch in flight
	// returns, so a long wait shows up as latency there.
	FetchMaxWait time.Duration `yaml:"fetch_max_wait"`
	// RequestTimeout bounds each offset commit, dead-letter write and
	// admin request. A call that runs out is retried and
	// reported, never waited for without end.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// LogLevel is the level from which franz-go's own log lines are
	// written (default "warn"; "info" shows every rebalance step and
	// connection, "debug" every request).
	LogLevel string `yaml:"log_level"`
	// TLS and SASL secure the connections of both Kafka clients, the
	// consumer and the one for admin requests and dead letters.
	TLS  KafkaTLSConfig  `yaml:"tls"`
	SASL KafkaSASLConfig `yaml:"sasl"`
}

// KafkaTLSConfig turns on TLS to the brokers. With only Enabled set, the
// brokers' certificates are verified against the system's roots and the
// name dialed. The files are read when the first connection is made; one
// that cannot be read fails it, and so the startup check, naming the key
// and the file. Replacing them takes a restart.
type KafkaTLSConfig struct {
	Enabled bool `yaml:"enabled"`
	// CAFile holds the PEM certificates of the CAs that sign the brokers'
	// certificates, used instead of the system's roots (Aiven, Strimzi,
	// a company CA).
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile hold a PEM client certificate and its key, for
	// brokers that authenticate clients by certificate (mutual TLS); set
	// both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name the brokers' certificates must hold, when it
	// is not the host dialed.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any certificate a broker shows, leaving
	// the connection open to whoever sits in between: for tests.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// SASL mechanisms of kafka.sasl.mechanism.
const (
	SASLPlain       = "plain"
	SASLScramSHA256 = "scram-sha-256"
	SASLScramSHA512 = "scram-sha-512"
	SASLOAuthBearer = "oauthbearer"
	SASLAWSMSKIAM   = "aws-msk-iam"
)

// KafkaSASLConfig authenticates to the brokers with SASL. Zero means none.
type KafkaSASLConfig struct {
	// Mechanism is SASLPlain, SASLScramSHA256, SASLScramSHA512 (each with
	// Username, and Password or PasswordFile), SASLOAuthBearer (with
	// TokenFile) or SASLAWSMSKIAM (credentials from the default AWS chain:
	// environment, shared files and AWS_PROFILE, web identity, container
	// or instance role; the region from the broker's host name, else
	// AWS_REGION).
	Mechanism string `yaml:"mechanism"`
	Username  string `yaml:"username"`
	Password  string `yaml:"password"`
	// PasswordFile holds the password instead of Password (a Kubernetes
	// Secret mounted as a volume); one trailing line ending is not part of
	// it. New reads it, and fails if it is missing or empty; it is read
	// again whenever it changes (another file, modification time or
	// size), so a password rotated in the file is used by the next
	// connection or re-authentication. Once read, a file gone or emptied
	// keeps the last password in use, with a warning.
	PasswordFile string `yaml:"password_file"`
	// TokenFile holds the OAuth bearer token of oauthbearer. It is read
	// for every authentication, again whenever it changes (modification
	// time or size), so a token rotated in place is used by the next
	// connection or re-authentication.
	TokenFile string `yaml:"token_file"`
	// AllowPlaintext lets plain and oauthbearer send their secret, and
	// aws-msk-iam its signed request, without kafka.tls.enabled. Without
	// it, such a config is refused.
	AllowPlaintext bool `yaml:"allow_plaintext"`
}

// BatchConfig bounds a partition's batch; whichever limit is hit first
// flushes it.
type BatchConfig struct {
	MaxRecords int           `yaml:"max_records"` // rows
	MaxBytes   int           `yaml:"max_bytes"`   // of encoded rows
	MaxWait    time.Duration `yaml:"max_wait"`    // after the batch's first record
	// MaxInflight bounds the appends a partition has sent and not yet seen
	// answered. When it is reached the partition stops reading
	// and, once its share of memory is used, fetching pauses for it.
	MaxInflight int `yaml:"max_inflight"`
}

// Isolation levels of kafka.isolation_level.
const (
	IsolationReadCommitted   = "read_committed"
	IsolationReadUncommitted = "read_uncommitted"
)

// Policies for records that can never be written.
const (
	PolicyDLQ  = "dlq"  // produce them to the dead-letter topic, then commit past them
	PolicySkip = "skip" // log and count them, then commit past them
	PolicyFail = "fail" // commit everything before the first one and stop with an error
)

// ErrorsConfig says what happens to a record that can never be written.
type ErrorsConfig struct {
	// Policy is PolicyDLQ (default), PolicySkip or PolicyFail. An outage
	// of the registry or of BigQuery never counts: only the record itself.
	Policy string `yaml:"policy"`
	// DLQTopic is the dead-letter topic (default "<group_id>.dlq"). When
	// Policy is dlq, Run checks at startup that it exists.
	DLQTopic string `yaml:"dlq_topic"`
	// DLQCreate lets Run create a missing dead-letter topic at startup
	// (true in DefaultConfig), with the brokers' default partitions and
	// replication and a max.message.bytes that takes the source topics'
	// records. If the brokers refuse, Run fails naming what to create.
	// False: a missing topic fails the start.
	DLQCreate bool `yaml:"dlq_create"`
}

// MemoryConfig bounds what the sink holds in memory.
type MemoryConfig struct {
	// MaxBufferedBytes caps the memory holding records fetched and not yet
	// acknowledged, across all partitions: their Kafka bytes, their
	// encoded rows and the client's fetch buffers.
	// Fetching stops when it is reached and resumes as BigQuery
	// acknowledges rows. A single record larger than the cap is still
	// processed, alone.
	MaxBufferedBytes int64 `yaml:"max_buffered_bytes"`
}

// minMaxBufferedBytes is the smallest memory.max_buffered_bytes taken.
const minMaxBufferedBytes = 4 << 20

// WithDefaults returns c with every zero field set to its default (see
// Keys), the registry's and BigQuery's sections included: the
// configuration New runs with. Booleans are left as they are: start from
// DefaultConfig for theirs.
func (c Config) WithDefaults() Config {
	keys.ApplyDefaults(&c, Keys(), false)
	if c.Errors.DLQTopic == "" {
		c.Errors.DLQTopic = c.Kafka.GroupID + ".dlq"
	}
	c.BigQuery.MaxConnections = c.BigQuery.WithDefaults().MaxConnections
	return c
}

// Validate reports every bad key, one error each, named by its YAML path
// below the top level ("kafka.brokers: required"). The registry and
// BigQuery sections are validated by their packages and prefixed here.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, a...)))
	}
	for i, b := range c.Kafka.Brokers {
		if strings.TrimSpace(b) == "" {
			bad(fmt.Sprintf("kafka.brokers[%d]", i), "empty")
		}
	}
	for i, t := range c.Kafka.Topics {
		switch {
		case t == "":
			bad(fmt.Sprintf("kafka.topics[%d]", i), "empty")
		case strings.HasPrefix(t, "^"):
			if _, err := regexp.Compile(t); err != nil {
				bad(fmt.Sprintf("kafka.topics[%d]", i), "bad regular expression: %v", err)
			}
		}
	}
	errs = append(errs, c.Kafka.TLS.problems()...)
	errs = append(errs, c.Kafka.SASL.problems(c.Kafka.TLS.Enabled)...)
	errs = append(errs, keys.Validate(c, Keys())...)
	if d := c.WithDefaults(); d.Errors.Policy == PolicyDLQ && d.Kafka.GroupID != "" && consumes(d.Kafka.Topics, d.Errors.DLQTopic) {
		bad("errors.dlq_topic", "%q is also consumed (kafka.topics): dead-lettered records would come back", d.Errors.DLQTopic)
	}
	errs = append(errs, c.tableProblems()...)
	errs = append(errs, c.tableCollisions()...)
	errs = append(errs, prefixed("schema_registry.", c.SchemaRegistry.Validate())...)
	errs = append(errs, prefixed("bigquery.", c.BigQuery.Validate())...)
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	// A required key of the BigQuery and registry sections is declared in
	// Keys and checked by its package too: say it once.
	errs = slices.CompactFunc(errs, func(a, b error) bool { return a.Error() == b.Error() })
	return errors.Join(errs...)
}

// prefixed splits a joined error into its parts, each prefixed with its
// section, so every problem is named by its full key.
func prefixed(prefix string, err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var parts []error
		for _, e := range j.Unwrap() {
			parts = append(parts, prefixed(prefix, e)...)
		}
		return parts
	}
	return []error{fmt.Errorf("%s%w", prefix, err)}
}

var kafkaTopicName = regexp.MustCompile(`^[A-Za-z0-9._\-]{1,249}$`)

var tableName = regexp.MustCompile(`^([A-Za-z0-9_]+\.)?[A-Za-z0-9_\-]+$`)

// validTable accepts "table" and "dataset.table" as BigQuery names them:
// each part at most 1024 characters.
func validTable(s string) bool {
	if !tableName.MatchString(s) {
		return false
	}
	for part := range strings.SplitSeq(s, ".") {
		if len(part) > 1024 {
			return false
		}
	}
	return true
}

var columnName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,299}$`)

var notTableChar = regexp.MustCompile(`[^A-Za-z0-9_]`)

// DefaultTable is the table a topic goes to when Config.Tables does not name
// one: the topic with every character outside [A-Za-z0-9_] replaced by _.
func DefaultTable(topic string) string {
	return notTableChar.ReplaceAllString(topic, "_")
}

// TableFor returns the table a topic's records go to.
func (c Config) TableFor(topic string) string {
	if r, ok := c.Tables[topic]; ok && r.Table != "" {
		return r.Table
	}
	return DefaultTable(topic)
}

// consumes reports whether topic is one of topics or matched by one of
// their regular expressions.
func consumes(topics []string, topic string) bool {
	for _, t := range topics {
		if t == topic {
			return true
		}
		if strings.HasPrefix(t, "^") {
			if re, err := regexp.Compile(t); err == nil && re.MatchString(topic) {
				return true
			}
		}
	}
	return false
}

// literalTopics are the configured topics that are not regular expressions:
// the ones that must exist at startup.
func (c Config) literalTopics() []string {
	var out []string
	for _, t := range c.Kafka.Topics {
		if !strings.HasPrefix(t, "^") {
			out = append(out, t)
		}
	}
	return out
}

// tableCollisions finds literal topics whose default table names collide
// ("orders.v1" and "orders_v1"): their records would silently share a table.
// Routing several topics to one table on purpose is done through Tables and
// is not reported.
func (c Config) tableCollisions() []error {
	byTable := map[string][]string{}
	for _, t := range c.literalTopics() {
		if r, explicit := c.Tables[t]; explicit && r.Table != "" {
			continue
		}
		byTable[DefaultTable(t)] = append(byTable[DefaultTable(t)], t)
	}
	var errs []error
	for table, topics := range byTable {
		if len(topics) > 1 {
			sort.Strings(topics)
			errs = append(errs, fmt.Errorf("kafka.topics: %s all map to table %q; name their tables under the tables key", strings.Join(topics, ", "), table))
		}
	}
	return errs
}

// problems lists the bad kafka.tls keys.
func (t KafkaTLSConfig) problems() []error {
	var errs []error
	if !t.Enabled {
		for _, k := range t.Files().SetKeys("kafka.tls.") {
			errs = append(errs, fmt.Errorf("%s: set, but kafka.tls.enabled is false", k))
		}
	}
	return append(errs, t.Files().Problems("kafka.tls.")...)
}

// problems lists the bad kafka.sasl keys; tls says whether kafka.tls is on.
func (s KafkaSASLConfig) problems(tls bool) []error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("kafka.sasl.%s: %s", key, fmt.Sprintf(format, a...)))
	}
	m := s.Mechanism
	switch m {
	case "":
		for _, k := range []struct {
			key   string
			isSet bool
		}{{"username", s.Username != ""}, {"password", s.Password != ""}, {"password_file", s.PasswordFile != ""}, {"token_file", s.TokenFile != ""}} {
			if k.isSet {
				bad("mechanism", "required when kafka.sasl.%s is set", k.key)
			}
		}
		return errs
	case SASLPlain, SASLScramSHA256, SASLScramSHA512:
		if s.Username == "" {
			bad("username", "required with mechanism %s", m)
		}
		switch {
		case s.Password == "" && s.PasswordFile == "":
			bad("password", "required with mechanism %s (or kafka.sasl.password_file)", m)
		case s.Password != "" && s.PasswordFile != "":
			bad("password_file", "set together with kafka.sasl.password: set one of them")
		}
		if s.TokenFile != "" {
			bad("token_file", "not used with mechanism %s (only oauthbearer)", m)
		}
	case SASLOAuthBearer, SASLAWSMSKIAM:
		if s.Username != "" {
			bad("username", "not used with mechanism %s", m)
		}
		if s.Password != "" {
			bad("password", "not used with mechanism %s", m)
		}
		if s.PasswordFile != "" {
			bad("password_file", "not used with mechanism %s", m)
		}
		if m == SASLOAuthBearer && s.TokenFile == "" {
			bad("token_file", "required with mechanism oauthbearer")
		}
		if m == SASLAWSMSKIAM && s.TokenFile != "" {
			bad("token_file", "not used with mechanism aws-msk-iam (only oauthbearer)")
		}
	default:
		bad("mechanism", "%q is not plain, scram-sha-256, scram-sha-512, oauthbearer or aws-msk-iam", m)
		return errs
	}
	if !tls && !s.AllowPlaintext && m != SASLScramSHA256 && m != SASLScramSHA512 {
		what := map[string]string{SASLPlain: "the password", SASLOAuthBearer: "the token", SASLAWSMSKIAM: "its signed request (replayable for 15 minutes)"}[m]
		bad("mechanism", "%s would send %s unencrypted: set kafka.tls.enabled, or kafka.sasl.allow_plaintext: true to accept that", m, what)
	}
	return errs
}
