// Package bq keeps BigQuery tables in shape and writes rows to them through
// the Storage Write API's default stream. It knows BigQuery, not Kafka nor
// Avro: rows arrive as map[string]any per the row value contract.
//
// A Client owns the REST client (table metadata) and the Storage Write
// client (appends). Client.Table hands out one *Table per table; a Table
// evolves its schema with EnsureSchema and writes with Append, whose Result
// says per row whether it was written, rejected for good, or must be retried.
package bq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/managedwriter"
	"go.uber.org/zap"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ErrClosed is returned by Append (and ends pending Results) once the
// Client is closed.
var ErrClosed = errors.New("bq client closed")

// Client talks to BigQuery for one project. It is goroutine-safe.
type Client struct {
	cfg    Config
	logger *zap.Logger
	rest   *bigquery.Client
	write  *managedwriter.Client

	// ctx is retained by the managed streams for their connections; Close
	// cancels it. waitCtx never ends: it reads answers that are already in.
	ctx     context.Context
	cancel  context.CancelFunc
	waitCtx context.Context

	closing chan struct{}  // closed by Close: pending Results stop waiting
	wg      sync.WaitGroup // Result collectors; Close waits for them
	closed  atomic.Bool

	mu     sync.Mutex // guards tables and, with closed, wg.Add
	tables map[string]*Table
}

// NewClient builds the REST and Storage Write clients after validating cfg.
// It dials nothing itself; the libraries connect lazily. ctx is retained for
// the write connections, so pass one that lives as long as the Client (Close
// ends them either way). A nil logger means zap.NewNop().
func NewClient(ctx context.Context, cfg Config, logger *zap.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bigquery config: %w", err)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	var creds []option.ClientOption
	if cfg.CredentialsFile != "" && (cfg.Endpoint == "" || cfg.GRPCEndpoint == "") {
		o, err := credentialsOption(cfg.CredentialsFile)
		if err != nil {
			return nil, err
		}
		creds = append(creds, o)
	}
	restOpts := creds
	if cfg.Endpoint != "" {
		restOpts = []option.ClientOption{option.WithEndpoint(cfg.Endpoint), option.WithoutAuthentication()}
	}
	writeOpts := creds
	if cfg.GRPCEndpoint != "" {
		writeOpts = []option.ClientOption{
			option.WithEndpoint(cfg.GRPCEndpoint),
			option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
		}
	}

	cctx, cancel := context.WithCancel(ctx)
	rest, err := bigquery.NewClient(cctx, cfg.Project, restOpts...)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("bigquery REST client: %w", err)
	}
	rest.Location = cfg.Location
	write, err := managedwriter.NewClient(cctx, cfg.Project, writeOpts...)
	if err != nil {
		cancel()
		_ = rest.Close()
		return nil, fmt.Errorf("bigquery storage write client: %w", err)
	}
	return &Client{
		cfg:     cfg,
		logger:  logger,
		rest:    rest,
		write:   write,
		ctx:     cctx,
		cancel:  cancel,
		waitCtx: context.WithoutCancel(cctx),
		closing: make(chan struct{}),
		tables:  make(map[string]*Table),
	}, nil
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

// Close closes the write streams and both clients; Results still pending
// end with their rows in Retry (ErrClosed or the stream's error). Await
// Results before closing to keep what BigQuery acknowledged. Idempotent;
// later calls return nil.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return nil
	}
	c.closed.Store(true)
	tables := make([]*Table, 0, len(c.tables))
	for _, t := range c.tables {
		tables = append(tables, t)
	}
	c.mu.Unlock()

	var errs []error
	for _, t := range tables {
		if err := t.closeStream(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.write.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close storage write client: %w", err))
	}
	if err := c.rest.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close REST client: %w", err))
	}
	close(c.closing)
	c.cancel()
	c.wg.Wait()
	return errors.Join(errs...)
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

// track registers a Result collector with Close; false once closed.
func (c *Client) track() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return false
	}
	c.wg.Add(1)
	return true
}
