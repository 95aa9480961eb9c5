package bq

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/managedwriter"
	"go.uber.org/zap"
	"google.golang.org/api/googleapi"
)

// maxPatchTries bounds EnsureSchema's read-merge-patch loop when other
// writers keep changing the table under it.
const maxPatchTries = 10

// Table is one BigQuery table: its schema as this process knows it and its
// default write stream. Get it from Client.Table. Goroutine-safe.
type Table struct {
	c       *Client
	project string
	dataset string
	table   string
	nameErr error // malformed name; every method returns it
	ref     *bigquery.Table
	log     *zap.Logger

	// schemaSem serializes EnsureSchema and schema loads, honouring ctx.
	schemaSem chan struct{}
	known     map[fingerprint]bool // want-schemas known to be contained; guarded by schemaSem

	enc atomic.Pointer[encoder] // built from the table's latest known schema

	// sendMu (capacity 1) serializes sends so each request carries the
	// descriptor its rows were encoded with. A channel rather than a mutex
	// so that a caller whose context ends stops waiting for it.
	sendMu  chan struct{}
	sentEnc *encoder // encoder whose descriptor the stream last got; guarded by sendMu

	streamMu sync.Mutex // guards stream, so Close never waits on a send
	stream   *managedwriter.ManagedStream

	// beforePatch, if set (tests only), runs between reading the table and
	// patching it, to interleave a concurrent writer deterministically.
	beforePatch func()
}

func newTable(c *Client, dataset, table string, nameErr error) *Table {
	t := &Table{
		sendMu:    make(chan struct{}, 1),
		c:         c,
		project:   c.cfg.Project,
		dataset:   dataset,
		table:     table,
		nameErr:   nameErr,
		schemaSem: make(chan struct{}, 1),
		known:     make(map[fingerprint]bool),
	}
	if nameErr == nil {
		t.ref = c.rest.DatasetInProject(t.project, dataset).Table(table)
	}
	t.log = c.logger.With(zap.String("table", t.Name()))
	return t
}

// Name returns "project.dataset.table", for logs.
func (t *Table) Name() string {
	return t.project + "." + t.dataset + "." + t.table
}

func (t *Table) lockSchema(ctx context.Context) error {
	select {
	case t.schemaSem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (t *Table) unlockSchema() { <-t.schemaSem }

// EnsureSchema makes the table able to take rows of want. A missing table is
// created with want (config auto_create_tables; else an error wrapping
// ErrTableNotFound). An existing one gets want's missing columns as NULLABLE
// (REPEATED stays REPEATED, records recursively) and REQUIRED columns relaxed
// where want has them NULLABLE or lacks them; nothing is ever dropped. The
// patch is conditional on the table's etag and retried on conflict, so
// processes evolving one table concurrently lose no column.
//
// A type change or REPEATED change fails with *IncompatibleError and leaves
// the table untouched; a needed change with auto_update_schema off fails
// with an error wrapping ErrIncompatible. Both are permanent. Other errors
// (network, quota) are worth retrying.
//
// Once want is known to fit, later calls with an equal want return nil
// without calling BigQuery. Calls on one Table run one at a time; later
// Appends encode with the table's new schema.
func (t *Table) EnsureSchema(ctx context.Context, want bigquery.Schema) error {
	if t.nameErr != nil {
		return t.nameErr
	}
	if len(want) == 0 {
		return fmt.Errorf("ensure schema of %s: empty schema", t.Name())
	}
	fp := schemaFingerprint(want)
	if err := t.lockSchema(ctx); err != nil {
		return err
	}
	defer t.unlockSchema()
	if t.known[fp] {
		return nil
	}
	for range maxPatchTries {
		md, err := t.ref.Metadata(ctx)
		if httpStatus(err) == http.StatusNotFound {
			if !t.c.cfg.AutoCreateTables {
				return fmt.Errorf("table %s: %w (auto_create_tables is off)", t.Name(), ErrTableNotFound)
			}
			switch err := t.ref.Create(ctx, &bigquery.TableMetadata{Schema: want}); {
			case err == nil:
				t.log.Info("created table", zap.Int("columns", len(want)))
			case httpStatus(err) == http.StatusConflict:
				// A concurrent creator won; read what it made.
			default:
				return fmt.Errorf("create table %s: %w", t.Name(), err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("read table %s: %w", t.Name(), err)
		}
		merged, changes, err := mergeSchema(t.Name(), md.Schema, want)
		if err != nil {
			return err
		}
		if len(changes) == 0 {
			if err := t.useSchema(md.Schema); err != nil {
				return err
			}
			t.known[fp] = true
			return nil
		}
		if !t.c.cfg.AutoUpdateSchema {
			return fmt.Errorf("table %s column %q: needs %s but auto_update_schema is off: %w",
				t.Name(), changes[0].Column, changes[0].What, ErrIncompatible)
		}
		if t.beforePatch != nil {
			t.beforePatch()
		}
		updated, err := t.ref.Update(ctx, bigquery.TableMetadataToUpdate{Schema: merged}, md.ETag)
		if httpStatus(err) == http.StatusPreconditionFailed {
			continue // someone changed it since we read it: re-read, re-merge
		}
		if err != nil {
			return fmt.Errorf("patch table %s schema: %w", t.Name(), err)
		}
		t.log.Info("updated table schema", zap.Stringers("changes", changes))
		if err := t.useSchema(updated.Schema); err != nil {
			return err
		}
		t.known[fp] = true
		return nil
	}
	return fmt.Errorf("patch table %s schema: still changing under us after %d tries", t.Name(), maxPatchTries)
}

// useSchema makes s the schema new Appends encode with. Callers hold
// schemaSem.
func (t *Table) useSchema(s bigquery.Schema) error {
	if cur := t.enc.Load(); cur != nil && schemaFingerprint(cur.schema) == schemaFingerprint(s) {
		return nil
	}
	enc, err := newEncoder(s)
	if err != nil {
		return fmt.Errorf("table %s: %w", t.Name(), err)
	}
	t.enc.Store(enc)
	return nil
}

// encoder returns the current encoder, reading the table's schema the first
// time if EnsureSchema never ran.
func (t *Table) encoder(ctx context.Context) (*encoder, error) {
	if enc := t.enc.Load(); enc != nil {
		return enc, nil
	}
	if err := t.lockSchema(ctx); err != nil {
		return nil, err
	}
	defer t.unlockSchema()
	if enc := t.enc.Load(); enc != nil {
		return enc, nil
	}
	md, err := t.ref.Metadata(ctx)
	if httpStatus(err) == http.StatusNotFound {
		return nil, fmt.Errorf("table %s: %w", t.Name(), ErrTableNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read table %s: %w", t.Name(), err)
	}
	if err := t.useSchema(md.Schema); err != nil {
		return nil, err
	}
	return t.enc.Load(), nil
}

// openStream returns the table's default-stream writer, creating it with
// enc's descriptor on first use. Callers hold sendMu.
func (t *Table) openStream(enc *encoder) (*managedwriter.ManagedStream, error) {
	t.streamMu.Lock()
	ms := t.stream
	t.streamMu.Unlock()
	if ms != nil {
		return ms, nil
	}
	if t.c.closed.Load() {
		return nil, ErrClosed
	}
	// The stream retains its context for its connections: the Client's,
	// not this call's, so one short Append does not break later ones.
	ms, err := t.c.write.NewManagedStream(t.c.ctx,
		managedwriter.WithType(managedwriter.DefaultStream),
		managedwriter.WithDestinationTable(managedwriter.TableParentFromParts(t.project, t.dataset, t.table)),
		managedwriter.WithSchemaDescriptor(enc.dp),
	)
	if err != nil {
		return nil, fmt.Errorf("open write stream for %s: %w", t.Name(), err)
	}
	t.streamMu.Lock()
	if t.c.closed.Load() {
		t.streamMu.Unlock()
		_ = ms.Close() // nothing was sent on it
		return nil, ErrClosed
	}
	t.stream = ms
	t.streamMu.Unlock()
	t.sentEnc = enc
	t.log.Debug("opened write stream")
	return ms, nil
}

func (t *Table) closeStream() error {
	t.streamMu.Lock()
	ms := t.stream
	t.stream = nil
	t.streamMu.Unlock()
	if ms == nil {
		return nil
	}
	if err := ms.Close(); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("close write stream for %s: %w", t.Name(), err)
	}
	return nil
}

// httpStatus returns the HTTP status of a REST error, or 0.
func httpStatus(err error) int {
	var gerr *googleapi.Error
	if errors.As(err, &gerr) {
		return gerr.Code
	}
	return 0
}
