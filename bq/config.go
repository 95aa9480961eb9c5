package bq

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"
)

// Defaults of the timeouts.
const (
	defaultTimeout       = 10 * time.Second
	defaultAppendTimeout = 20 * time.Second
)

// defaultMaxRequestBytes is the default cap on one AppendRows request: 9 MiB
// leaves room under BigQuery's 10 MB limit for the descriptor and framing.
const defaultMaxRequestBytes = 9 << 20

// maxRequestBytesLimit is BigQuery's AppendRows request size limit.
const maxRequestBytesLimit = 10_000_000

// Config configures a Client. Main composes it under the `bigquery:` key.
// Zero values mean defaults, except the two bools: start from DefaultConfig.
type Config struct {
	// Project is the Google Cloud project holding the dataset. Required.
	Project string `yaml:"project"`
	// Dataset is the dataset for table names without a dot. Required. It must
	// exist: bq never creates datasets.
	Dataset string `yaml:"dataset"`
	// Location is the BigQuery location (e.g. "EU") given to the REST client;
	// empty lets BigQuery use the dataset's.
	Location string `yaml:"location"`
	// Endpoint overrides the REST endpoint (test server, emulator), e.g.
	// "http://127.0.0.1:9050". Setting it turns authentication off for REST.
	Endpoint string `yaml:"endpoint"`
	// GRPCEndpoint overrides the Storage Write API host:port. The connection
	// is then plaintext and unauthenticated.
	GRPCEndpoint string `yaml:"grpc_endpoint"`
	// CredentialsFile is a JSON credentials file (service account, authorized
	// user, impersonated service account or external account). Empty means
	// Application Default Credentials. Ignored by the clients whose endpoint
	// is overridden.
	CredentialsFile string `yaml:"credentials_file"`
	// AutoCreateTables lets EnsureSchema create a missing table (default
	// true). When false a missing table is an error wrapping ErrTableNotFound.
	AutoCreateTables bool `yaml:"auto_create_tables"`
	// AutoUpdateSchema lets EnsureSchema add columns and relax REQUIRED ones
	// (default true). When false a needed change is an error wrapping
	// ErrIncompatible.
	AutoUpdateSchema bool `yaml:"auto_update_schema"`
	// MaxRequestBytes caps one AppendRows request (default 9 MiB, at most
	// 10000000). Bigger appends are split, never rejected; only a single row
	// that cannot fit is rejected.
	MaxRequestBytes int `yaml:"max_request_bytes"`
	// Timeout bounds each REST call (read, create or patch a table, read the
	// dataset), each Storage Write stream open and each send on it (default
	// 10s). A call that takes longer fails, saying so, and is retried later
	// by the caller; the Google client's own retries happen within it. A send
	// includes writing the request to the network: raise it if requests of
	// max_request_bytes take longer than that to upload.
	Timeout time.Duration `yaml:"timeout"`
	// AppendTimeout bounds the wait for BigQuery's answer to an append
	// request, counted from its send (default 20s). Past it the stream is torn
	// down and every request still unanswered on it comes back for retry;
	// BigQuery may have written some of those rows already, so a retry can
	// duplicate them (at-least-once). The next append opens a new stream.
	AppendTimeout time.Duration `yaml:"append_timeout"`
	// Delivery is DeliveryAtLeastOnce (the default, also for "") or
	// DeliveryExactlyOnce. bq itself offers both kinds of stream whatever
	// it says (Table.Append, Table.CreateStream); the caller picks by it.
	Delivery string `yaml:"delivery"`
	// MaxConnections bounds the Storage Write connections (AppendRows
	// calls) that the default streams of all tables share, per region and
	// per kind of table (plain rows; changes), whatever the table count:
	// BigQuery allows 1,000 concurrent connections per project and region
	// (10,000 in the US and EU multi-regions). A pool opens another only
	// while each one it has is saturated. 0 means the default: 4 against
	// BigQuery; against a GRPCEndpoint (an emulator or test server), a
	// connection per table, since goccy's bigquery-emulator decodes every
	// request of a connection with its first schema and so cannot share
	// one. Explicit streams (exactly-once) never share: each has its own.
	MaxConnections int `yaml:"max_connections"`
}

// Delivery guarantees, the values of Config.Delivery.
const (
	// DeliveryAtLeastOnce writes through the table's default stream: a
	// retried append may write rows twice.
	DeliveryAtLeastOnce = "at_least_once"
	// DeliveryExactlyOnce writes through explicit COMMITTED streams at
	// stream offsets (Stream), so that a retried append writes nothing
	// twice.
	DeliveryExactlyOnce = "exactly_once"
)

// ExactlyOnce reports whether Delivery asks for exactly-once.
func (c Config) ExactlyOnce() bool { return c.Delivery == DeliveryExactlyOnce }

// DefaultConfig returns the defaults: tables created and evolved
// automatically, requests capped at 9 MiB, 10s per call, 20s per append
// answer. Project and Dataset stay empty.
func DefaultConfig() Config {
	return Config{
		AutoCreateTables: true,
		AutoUpdateSchema: true,
		MaxRequestBytes:  defaultMaxRequestBytes,
		Timeout:          defaultTimeout,
		AppendTimeout:    defaultAppendTimeout,
	}
}

// Validate returns nil, or one error per bad key joined with errors.Join;
// each message starts with the yaml key, e.g. "project: required".
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf(key+": "+format, args...))
	}
	if c.Project == "" {
		bad("project", "required")
	}
	switch {
	case c.Dataset == "":
		bad("dataset", "required")
	case !validDatasetID(c.Dataset):
		bad("dataset", "%q must be 1-1024 letters, digits or underscores", c.Dataset)
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("endpoint", "%q is not an http(s) URL", c.Endpoint)
		}
	}
	if c.GRPCEndpoint != "" {
		if _, port, err := net.SplitHostPort(c.GRPCEndpoint); err != nil || port == "" {
			bad("grpc_endpoint", "%q is not host:port", c.GRPCEndpoint)
		}
	}
	if c.MaxRequestBytes < 0 || c.MaxRequestBytes > maxRequestBytesLimit {
		bad("max_request_bytes", "%d is outside 0 (default %d) to %d", c.MaxRequestBytes, defaultMaxRequestBytes, maxRequestBytesLimit)
	}
	if c.Timeout < 0 {
		bad("timeout", "%v is negative (0 means the default %v)", c.Timeout, defaultTimeout)
	}
	if c.MaxConnections < 0 {
		bad("max_connections", "%d is negative (0 means the default)", c.MaxConnections)
	}
	if c.AppendTimeout < 0 {
		bad("append_timeout", "%v is negative (0 means the default %v)", c.AppendTimeout, defaultAppendTimeout)
	}
	switch c.Delivery {
	case "", DeliveryAtLeastOnce, DeliveryExactlyOnce:
	default:
		bad("delivery", "%q is not %s or %s", c.Delivery, DeliveryAtLeastOnce, DeliveryExactlyOnce)
	}
	return errors.Join(errs...)
}

// WithDefaults returns c with its zero durations and sizes set to their
// defaults, as the Client uses them (the bools cannot be told from unset:
// see DefaultConfig).
func (c Config) WithDefaults() Config {
	c.Timeout, c.AppendTimeout, c.MaxRequestBytes = c.timeout(), c.appendTimeout(), c.maxRequestBytes()
	if c.Delivery == "" {
		c.Delivery = DeliveryAtLeastOnce
	}
	c.MaxConnections = c.maxConnections() // 0 stays 0 against a GRPCEndpoint: a connection per table
	return c
}

// DefaultMaxConnections is Config.MaxConnections's default against
// BigQuery; the README's Performance section says how it was chosen.
const DefaultMaxConnections = 4

// maxConnections is the pool size, 0 when each table has a connection of
// its own.
func (c Config) maxConnections() int {
	switch {
	case c.MaxConnections > 0:
		return c.MaxConnections
	case c.GRPCEndpoint != "":
		return 0
	}
	return DefaultMaxConnections
}

func (c Config) pooling() bool { return c.maxConnections() > 0 }

func (c Config) timeout() time.Duration {
	if c.Timeout == 0 {
		return defaultTimeout
	}
	return c.Timeout
}

func (c Config) appendTimeout() time.Duration {
	if c.AppendTimeout == 0 {
		return defaultAppendTimeout
	}
	return c.AppendTimeout
}

func (c Config) maxRequestBytes() int {
	if c.MaxRequestBytes == 0 {
		return defaultMaxRequestBytes
	}
	return c.MaxRequestBytes
}

func validDatasetID(s string) bool {
	if len(s) > 1024 {
		return false
	}
	for _, r := range s {
		if !isIdentRune(r) {
			return false
		}
	}
	return s != ""
}

func isIdentRune(r rune) bool {
	return r == '_' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9')
}

// CheckFiles reads the files the config names and reports what a Client
// would refuse in them: a credentials file that is not JSON or of a type
// BigQuery's clients do not take. It is for `bqsink -check`; NewClient
// reads the file itself. Errors start with the key ("credentials_file:").
func (c Config) CheckFiles() error {
	if c.CredentialsFile == "" || (c.Endpoint != "" && c.GRPCEndpoint != "") {
		return nil
	}
	_, err := credentialsOption(c.CredentialsFile)
	return err
}
