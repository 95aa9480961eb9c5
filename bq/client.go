// Package bq keeps BigQuery tables in shape and writes rows to them through
// the Storage Write API's default stream. It knows BigQuery, not Kafka nor
// Avro: rows arrive as the protobuf wire bytes of the table's Format,
// written by a transcoder (package schema); Format.AppendColumn encodes a
// column the transcoder leaves to its caller from a value of the row value
// contract (map[string]any per RECORD, []any per REPEATED column).
//
// A Client owns the REST client (table metadata) and the Storage Write
// client (appends). Client.Table hands out one *Table per table; a Table
// evolves its schema with EnsureSchema, makes Rows of row bytes with Row
// and writes them with Append, whose Result says per row whether it was
// written, rejected for good, or must be retried.
//
// Appends to the default streams of different tables share Storage Write
// connections: a pool per region and kind of table (plain rows; changes)
// of at most Config.MaxConnections, grown only while its connections are
// saturated, so a process writing hundreds of tables holds a handful of
// connections. Explicit streams (CreateStream, OpenStream) have one each,
// as BigQuery multiplexes default streams only.
//
// A table with a primary key (TableOptions.PrimaryKey) mirrors its source
// through BigQuery's change data capture: its rows are changes, UPSERT or
// DELETE of the row with their key, ordered by an optional Sequence, which
// Format.AppendChange writes as the pseudo-columns BigQuery reads.
//
// Every network call is bounded: REST calls, stream lookups, opens and
// sends by Config.Timeout, the wait for an append's answer by
// Config.AppendTimeout.
// Errors carry a class (ErrPermissionDenied, ErrDatasetNotFound, ...) for
// errors.Is; an error without one is transient.
package bq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cloud.google.com/go/bigquery"
	storage "cloud.google.com/go/bigquery/storage/apiv1"
	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"github.com/googleapis/gax-go/v2"
	"go.uber.org/zap"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

// writeKeepalive pings the Storage Write connection every 30 s while
// streams are open (Google's front ends accept that rate) and drops it if a
// ping is not acknowledged within 10 s: this is what detects a half-open
// connection; the append timeout only resets the stream on it.
var writeKeepalive = keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}

// noRetry disables the generated client's retries: bq bounds and retries
// calls itself.
var noRetry = gax.WithRetry(nil)

// Client talks to BigQuery for one project. It is goroutine-safe.
type Client struct {
	cfg    Config
	logger *zap.Logger
	rest   *bigquery.Client
	write  *storage.BigQueryWriteClient

	// ctx is the parent of every stream and table lookup; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	wg     sync.WaitGroup // every goroutine bq starts; Close waits for them
	closed atomic.Bool

	mu     sync.Mutex // guards tables, pools and, with closed, wg.Add
	tables map[string]*Table
	pools  map[poolKey]*pool

	open atomic.Int64 // AppendRows calls open (Connections)
}

// NewClient builds the REST and Storage Write clients after validating cfg.
// It dials nothing itself; the libraries connect lazily. ctx is the parent
// of the write streams, so pass one that lives as long as the Client (Close
// ends them either way). A nil logger means zap.NewNop(). It fails on an
// invalid config or an unreadable credentials file.
func NewClient(ctx context.Context, cfg Config, logger *zap.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bigquery config: %w", err)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	var creds option.ClientOption
	if cfg.CredentialsFile != "" && (cfg.Endpoint == "" || cfg.GRPCEndpoint == "") {
		o, err := credentialsOption(cfg.CredentialsFile)
		if err != nil {
			return nil, err
		}
		creds = o
	}
	var restOpts, writeOpts []option.ClientOption
	switch {
	case cfg.Endpoint != "":
		restOpts = append(restOpts, option.WithEndpoint(cfg.Endpoint), option.WithoutAuthentication())
	case creds != nil:
		restOpts = append(restOpts, creds)
	}
	switch {
	case cfg.GRPCEndpoint != "":
		writeOpts = append(writeOpts,
			option.WithEndpoint(cfg.GRPCEndpoint),
			option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	case creds != nil:
		writeOpts = append(writeOpts, creds)
	}
	writeOpts = append(writeOpts, option.WithGRPCDialOption(grpc.WithKeepaliveParams(writeKeepalive)))

	cctx, cancel := context.WithCancel(ctx)
	rest, err := bigquery.NewClient(cctx, cfg.Project, restOpts...)
	if err != nil {
		cancel()
		return nil, clientErr(cfg, "REST", err)
	}
	rest.Location = cfg.Location
	write, err := storage.NewBigQueryWriteClient(cctx, writeOpts...)
	if err != nil {
		cancel()
		_ = rest.Close()
		return nil, clientErr(cfg, "Storage Write", err)
	}
	return &Client{
		cfg:    cfg,
		logger: logger,
		rest:   rest,
		write:  write,
		ctx:    cctx,
		cancel: cancel,
		tables: make(map[string]*Table),
		pools:  make(map[poolKey]*pool),
	}, nil
}

// clientErr explains a client that could not be built: what fails there
// is finding or reading credentials, so the message names the key.
func clientErr(cfg Config, api string, err error) error {
	if cfg.CredentialsFile == "" {
		return fmt.Errorf("bigquery.credentials_file is empty and Application Default Credentials cannot be used for the %s API: %w", api, withClass(err, ErrPermissionDenied))
	}
	return fmt.Errorf("bigquery.credentials_file %s: %s API client: %w", cfg.CredentialsFile, api, withClass(err, ErrPermissionDenied))
}

// credentialsOption loads a JSON credentials file of a type BigQuery clients
// use; the type is named explicitly, as google.golang.org/api recommends.
func credentialsOption(path string) (option.ClientOption, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("credentials_file: %w", err)
	}
	var f struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("credentials_file %s: not JSON: %w", path, err)
	}
	switch t := option.CredentialsType(f.Type); t {
	case option.ServiceAccount, option.AuthorizedUser, option.ImpersonatedServiceAccount, option.ExternalAccount:
		return option.WithAuthCredentialsJSON(t, data), nil
	default:
		return nil, fmt.Errorf("credentials_file %s: unsupported credentials type %q", path, f.Type)
	}
}

// Check verifies at startup that BigQuery is reachable and the dataset
// readable: it reads the dataset over REST, then asks the Storage Write API
// about a stream of a table that need not exist. Any answer from the
// Storage Write endpoint proves it reachable, whatever its code (emulators
// answer UNKNOWN or UNIMPLEMENTED where BigQuery says NOT_FOUND or
// PERMISSION_DENIED, and rights are judged per table on append); only no
// answer (UNAVAILABLE, a timeout, ctx ending) or UNAUTHENTICATED fails.
// Each step is bounded by Timeout and ctx. Errors name the config key to
// fix and wrap ErrDatasetNotFound (no such dataset) or ErrPermissionDenied
// (credentials refused or lacking a permission); any other error is
// transient (network, timeout, 5xx).
func (c *Client) Check(ctx context.Context) error {
	if c.closed.Load() {
		return ErrClosed
	}
	ds := c.cfg.Project + ":" + c.cfg.Dataset
	err := c.call(ctx, "read dataset "+ds, func(ctx context.Context) error {
		_, err := c.rest.DatasetInProject(c.cfg.Project, c.cfg.Dataset).Metadata(ctx)
		return err
	})
	switch {
	case err == nil:
	case httpStatus(err) == 404 && !errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("bigquery.dataset: dataset %s not found: %w", ds, withClass(err, ErrDatasetNotFound))
	case errors.Is(err, ErrPermissionDenied):
		return fmt.Errorf("bigquery.credentials_file: permission denied: %s may not read dataset %s: %w", c.credentials(c.cfg.Endpoint != ""), ds, err)
	default:
		return fmt.Errorf("bigquery.endpoint %s (REST API): %w", c.restEndpoint(), err)
	}

	probe := fmt.Sprintf("projects/%s/datasets/%s/tables/_bqsink_probe/streams/_default", c.cfg.Project, c.cfg.Dataset)
	pctx, cancel := context.WithTimeout(ctx, c.cfg.timeout())
	defer cancel()
	_, err = c.write.GetWriteStream(pctx, &storagepb.GetWriteStreamRequest{Name: probe}, noRetry)
	endpoint := fmt.Sprintf("bigquery.grpc_endpoint %s (Storage Write API)", c.grpcEndpoint())
	switch code := status.Code(err); code {
	case codes.OK:
		return nil
	case codes.Unauthenticated:
		return fmt.Errorf("bigquery.credentials_file: permission denied: the Storage Write API refused %s: %w", c.credentials(c.cfg.GRPCEndpoint != ""), withClass(err, ErrPermissionDenied))
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("%s: no answer in time: %w", endpoint, err)
		case pctx.Err() != nil:
			return fmt.Errorf("%s: no answer within %v: %w", endpoint, c.cfg.timeout(), err)
		case c.closed.Load():
			return ErrClosed // Close shut the connection under the probe
		case code == codes.Unavailable:
			return fmt.Errorf("%s: unreachable: %w", endpoint, err)
		case code == codes.DeadlineExceeded:
			// The server's own deadline, or a front end's that gave up on
			// the backend: nothing proves the service works.
			return fmt.Errorf("%s: timed out: %w", endpoint, err)
		}
		// CANCELLED while ctx is alive is the server's word.
		fallthrough
	default:
		c.logger.Debug("the Storage Write API answered the startup probe",
			zap.String("stream", probe), zap.Stringer("code", code), zap.String("message", status.Convert(err).Message()))
		return nil
	}
}

// credentials describes what authenticates calls to an API whose endpoint
// may be overridden (which turns authentication off).
func (c *Client) credentials(overridden bool) string {
	switch {
	case overridden:
		return "unauthenticated calls (the endpoint is overridden)"
	case c.cfg.CredentialsFile != "":
		return "the credentials in " + c.cfg.CredentialsFile
	}
	return "Application Default Credentials"
}

// restEndpoint names the REST endpoint for messages, without a password
// the URL may carry.
func (c *Client) restEndpoint() string {
	if c.cfg.Endpoint == "" {
		return "https://bigquery.googleapis.com"
	}
	if u, err := url.Parse(c.cfg.Endpoint); err == nil {
		return u.Redacted()
	}
	return "(unparsable)" // Validate refuses these
}

func (c *Client) grpcEndpoint() string {
	if c.cfg.GRPCEndpoint != "" {
		return c.cfg.GRPCEndpoint
	}
	return "bigquerystorage.googleapis.com:443"
}

// call runs one REST call under Timeout. Its error names what (the call and
// its table or dataset), says if the call timed out, keeps the Google
// client's last error, and carries the error's class.
func (c *Client) call(ctx context.Context, what string, f func(context.Context) error) error {
	tctx, cancel := context.WithTimeout(ctx, c.cfg.timeout())
	defer cancel()
	err := f(tctx)
	switch {
	case err == nil:
		return nil
	case ctx.Err() == nil && tctx.Err() != nil:
		// The client retries some failures until its context ends; its
		// message then carries the last one.
		return fmt.Errorf("%s: no answer within timeout %v: %w", what, c.cfg.timeout(), err)
	}
	return fmt.Errorf("%s: %w", what, withClass(err, restClass(err)))
}

// Close ends the write streams and both clients. Appends still waiting for
// an answer end with their rows in Retry and cause ErrClosed; await Results
// before closing to keep what BigQuery acknowledged. It waits for every
// goroutine bq started, which all end promptly once cancelled. Idempotent;
// later calls return nil.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return nil
	}
	c.closed.Store(true) // under mu: no goroutine starts after this
	c.mu.Unlock()

	c.cancel()
	c.wg.Wait()
	var errs []error
	if err := c.write.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close storage write client: %w", err))
	}
	if err := c.rest.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close REST client: %w", err))
	}
	return errors.Join(errs...)
}

// goOwned runs f in a goroutine Close waits for; false (f not run) once
// closed.
func (c *Client) goOwned(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

// Table returns the table named "table" (in the configured dataset) or
// "dataset.table". The same name always gives the same *Table. A malformed
// name gives a Table whose methods return the error. Goroutine-safe.
func (c *Client) Table(name string) *Table {
	dataset, table, err := c.splitName(name)
	key := dataset + "." + table
	if err != nil {
		key = "\x00" + name // never collides with a valid name
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.tables[key]; ok {
		return t
	}
	t := newTable(c, dataset, table, err)
	c.tables[key] = t
	return t
}

func (c *Client) splitName(name string) (dataset, table string, err error) {
	parts := strings.Split(name, ".")
	switch len(parts) {
	case 1:
		dataset, table = c.cfg.Dataset, parts[0]
	case 2:
		dataset, table = parts[0], parts[1]
	default:
		return "", "", fmt.Errorf("table name %q: want \"table\" or \"dataset.table\"", name)
	}
	if !validDatasetID(dataset) {
		return "", "", fmt.Errorf("table name %q: bad dataset %q", name, dataset)
	}
	if table == "" || len(table) > 1024 || strings.ContainsAny(table, "/`") {
		return "", "", fmt.Errorf("table name %q: bad table id %q", name, table)
	}
	return dataset, table, nil
}
