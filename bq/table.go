package bq

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"cloud.google.com/go/bigquery"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protowire"
)

// maxPatchTries bounds EnsureSchema's read-merge-patch loop when other
// writers keep changing the table under it.
const maxPatchTries = 10

// lookupInterval is how often, at most, an append answered NOT_FOUND or
// PERMISSION_DENIED makes bq read the table to tell a deleted table from
// the write path lagging behind a create or patch.
const lookupInterval = 10 * time.Second

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

	def *writer // the table's default write stream

	// schemaSem serializes EnsureSchema, honouring ctx.
	schemaSem chan struct{}
	knownMu   sync.Mutex
	known     map[fingerprint]bool // want-schemas known to be contained
	opts      TableOptions         // how to create it; guarded by knownMu
	warned    atomic.Bool          // its settings differ from opts, said once

	enc atomic.Pointer[encoder] // built from the table's latest known schema

	// kind is whether the table's rows are changes (kindChange) or plain
	// rows (kindPlain), fixed by the first successful EnsureSchema or Row
	// (kindUnset before). BigQuery refuses rows with and without change
	// type on one connection; a Table sends all its rows on one (its
	// default stream's, def), so fixing the kind per Table is what keeps
	// them apart. Options saying otherwise later are refused rather than
	// obeyed: switching would need the connection drained and replaced,
	// and a table written both ways is a configuration error anyway.
	kind atomic.Int32

	lookupMu sync.Mutex
	lookup   *lookup // the latest table lookup after a NOT_FOUND

	// beforePatch, if set (tests only), runs between reading the table and
	// patching it, to interleave a concurrent writer deterministically.
	beforePatch func()
}

// Table kinds (Table.kind).
const (
	kindUnset int32 = iota
	kindPlain
	kindChange
)

func kindOf(change bool) int32 {
	if change {
		return kindChange
	}
	return kindPlain
}

func kindName(k int32) string {
	if k == kindChange {
		return "changes (it has a primary key)"
	}
	return "appended rows (no primary key)"
}

// fixKind makes k the table's kind if it has none yet, and reports whether
// the table's kind is k. Once fixed, it only reads: Row and Append call it
// per row, from every goroutine writing to the table.
func (t *Table) fixKind(k int32) bool {
	if cur := t.kind.Load(); cur != kindUnset {
		return cur == k
	}
	t.kind.CompareAndSwap(kindUnset, k)
	return t.kind.Load() == k
}

// kindErr says that rows of kind k, which what is for, cannot be written
// to the table, which takes the other kind; it wraps ErrTableConfig.
func (t *Table) kindErr(k int32, what string) error {
	return fmt.Errorf("%w: table %s takes %s in this process, but %s is for %s; a table takes one or the other on its one connection: give everything writing to it the same primary key setting, and restart",
		ErrTableConfig, t.Name(), kindName(t.kind.Load()), what, kindName(k))
}

func newTable(c *Client, dataset, table string, nameErr error) *Table {
	t := &Table{
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
	// The table's one default-stream writer: one AppendRows connection at
	// a time for all its rows, which kind keeps all changes or all plain.
	t.def = newWriter(t, t.streamPrefix()+"_default", false)
	t.log = c.logger.With(zap.String("table", t.Name()))
	return t
}

// Name returns "project.dataset.table", for logs.
func (t *Table) Name() string {
	return t.project + "." + t.dataset + "." + t.table
}

// EnsureSchema makes the table able to take rows of want. A missing table is
// created with want and the options (SetOptions; config auto_create_tables,
// else an error wrapping ErrTableNotFound). An existing one gets want's
// missing columns as NULLABLE (REPEATED stays REPEATED, records
// recursively) and REQUIRED columns relaxed where want has them NULLABLE or
// lacks them; nothing is ever dropped. The patch is conditional on the
// table's etag and retried on conflict, so processes evolving one table
// concurrently lose no column.
//
// With a primary key in the options the table takes changes (change data
// capture): want's top-level columns other than the key's are taken as
// NULLABLE (a DELETE row carries the key alone), so a REQUIRED one never
// asks a table to tighten and an existing REQUIRED one is relaxed; want
// must have the key columns; and an existing table must be keyed by the
// same columns, else EnsureSchema fails with an error wrapping
// ErrPrimaryKey whose message gives the ALTER TABLE statement to run. The
// Format it leaves is a change format (Format.Change).
//
// A type change or REPEATED change fails with *IncompatibleError and leaves
// the table untouched; a needed change with auto_update_schema off fails
// with an error wrapping ErrIncompatible. Both are permanent, as are errors
// wrapping ErrDatasetNotFound, ErrPermissionDenied, ErrTableConfig (options
// that do not fit want, or that change whether the Table takes changes; see
// SetOptions) or ErrPrimaryKey. Other errors (network, quota, a REST call
// that timed out) are worth retrying. Each REST call is bounded by Timeout.
//
// Once want is known to fit, later calls with an equal want and key return
// nil without calling BigQuery, until an append finds the table deleted.
// Calls on one Table run one at a time; Format then returns the new
// schema's.
func (t *Table) EnsureSchema(ctx context.Context, want bigquery.Schema) error {
	if t.nameErr != nil {
		return t.nameErr
	}
	if len(want) == 0 {
		return fmt.Errorf("ensure schema of %s: empty schema", t.Name())
	}
	select {
	case t.schemaSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-t.schemaSem }()
	o := t.options()
	if k := kindOf(o.change()); t.kind.Load() != kindUnset && t.kind.Load() != k {
		// Before the cache: a cached want says nothing of options that
		// changed since.
		return t.kindErr(k, "its "+o.primaryKeyKey()+" now")
	}
	// The key is part of what is known to fit: another key must be
	// checked against the table.
	fp := wantFingerprint(want, o.PrimaryKey)
	if t.isKnown(fp) {
		return nil
	}
	cw := want
	if o.change() {
		if err := checkKey(o, want); err != nil {
			return fmt.Errorf("table %s: %w", t.Name(), err)
		}
		cw = changeSchema(want, o.PrimaryKey)
	}
	// patched is the change this call made, once BigQuery answered it:
	// the table is read again to see that it kept it.
	var patched []schemaChange
	created := false
	for range maxPatchTries {
		md, err := t.metadata(ctx)
		if httpStatus(err) == http.StatusNotFound && !errors.Is(err, ErrDatasetNotFound) {
			if !t.c.cfg.AutoCreateTables {
				return fmt.Errorf("table %s: %w (auto_create_tables is off)", t.Name(), ErrTableNotFound)
			}
			if err := checkOptions(o, want); err != nil {
				return fmt.Errorf("create table %s: %w", t.Name(), err)
			}
			switch err := t.create(ctx, o, want); {
			case err == nil:
				created = true
				t.log.Info("created table", zap.Int("columns", len(want)), zap.Strings("primary_key", o.PrimaryKey))
			case httpStatus(err) == http.StatusConflict:
				// A concurrent creator won; read what it made.
			default:
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		t.warnIfDifferent(o, md)
		if o.change() {
			if err := checkPrimaryKey(t.Name(), o, md, created); err != nil {
				return err
			}
		}
		merged, changes, err := mergeSchema(t.Name(), md.Schema, cw)
		if err != nil {
			return err
		}
		if len(changes) == 0 {
			if patched != nil {
				t.log.Info("updated table schema", zap.Stringers("changes", patched))
			}
			return t.useSchema(md.Schema, fp, o.change())
		}
		if patched != nil {
			// Rows written now would lose the new columns' values
			// without a word. BigQuery keeps a patch it answered; goccy's
			// bigquery-emulator answers one and keeps nothing.
			return fmt.Errorf("table %s: the schema change %v was answered but the table does not keep it (goccy's bigquery-emulator does not keep added columns: create the table with every column)",
				t.Name(), changes)
		}
		if !t.c.cfg.AutoUpdateSchema {
			return fmt.Errorf("table %s column %q: needs %s but auto_update_schema is off: %w",
				t.Name(), changes[0].Column, changes[0].What, ErrIncompatible)
		}
		if t.beforePatch != nil {
			t.beforePatch()
		}
		err = t.c.call(ctx, "patch table "+t.Name()+" schema", func(ctx context.Context) error {
			_, err := t.ref.Update(ctx, bigquery.TableMetadataToUpdate{Schema: merged}, md.ETag)
			return err
		})
		if httpStatus(err) == http.StatusPreconditionFailed {
			continue // someone changed it since we read it: re-read, re-merge
		}
		if err != nil {
			return err
		}
		patched = changes
	}
	return fmt.Errorf("patch table %s schema: still changing under us after %d tries", t.Name(), maxPatchTries)
}

func (t *Table) metadata(ctx context.Context) (md *bigquery.TableMetadata, err error) {
	err = t.c.call(ctx, "read table "+t.Name(), func(ctx context.Context) error {
		md, err = t.ref.Metadata(ctx)
		return err
	})
	return md, err
}

func (t *Table) create(ctx context.Context, o TableOptions, schema bigquery.Schema) error {
	return t.c.call(ctx, "create table "+t.Name(), func(ctx context.Context) error {
		return t.ref.Create(ctx, o.metadataFor(schema))
	})
}

func (t *Table) isKnown(fp fingerprint) bool {
	t.knownMu.Lock()
	defer t.knownMu.Unlock()
	return t.known[fp]
}

// forget drops what EnsureSchema knows fits, after the table was found
// deleted.
func (t *Table) forget() {
	t.knownMu.Lock()
	defer t.knownMu.Unlock()
	clear(t.known)
}

// useSchema makes s the schema Format describes, as a change format if
// change, and records that the want with fingerprint fp fits it. Callers
// hold schemaSem.
func (t *Table) useSchema(s bigquery.Schema, fp fingerprint, change bool) error {
	if !t.fixKind(kindOf(change)) { // Row fixed the other kind meanwhile
		return t.kindErr(kindOf(change), "its "+t.options().primaryKeyKey())
	}
	if cur := t.enc.Load(); cur == nil || cur.change != change || schemaFingerprint(cur.schema) != schemaFingerprint(s) {
		enc, err := newEncoder(s, change)
		if err != nil {
			return fmt.Errorf("table %s: %w", t.Name(), err)
		}
		t.enc.Store(enc)
	}
	t.knownMu.Lock()
	t.known[fp] = true
	t.knownMu.Unlock()
	// The table exists: a lookup that found it gone is out of date.
	t.lookupMu.Lock()
	if lk := t.lookup; lk != nil && lk.finished {
		lk.verdict = nil
	}
	t.lookupMu.Unlock()
	return nil
}

// Row is one row made by Table.Row: its wire bytes and the schema version
// (Format) they were encoded with. It is immutable and may be appended any
// number of times, to the Table that made it only. The zero Row is
// rejected by Append.
type Row struct {
	b   []byte
	enc *encoder
}

// Size returns the bytes the row holds (its encoded size).
func (r Row) Size() int { return len(r.b) }

func (t *Table) row(enc *encoder, b []byte) (Row, error) {
	limit := t.c.cfg.maxRequestBytes()
	if overhead := t.overhead(enc); overhead+rowWireSize(len(b)) > limit {
		return Row{}, fmt.Errorf("%w: %d bytes encoded; with the request overhead of %d bytes it exceeds max_request_bytes %d",
			ErrRowTooLarge, len(b), overhead, limit)
	}
	return Row{b: b, enc: enc}, nil
}

// overhead is what a request of rows encoded with enc carries besides
// them. Every request may carry the descriptor and stream name: the first
// on a new stream does, and which one that is is not known in advance.
func (t *Table) overhead(enc *encoder) int {
	return enc.dpSize + len(t.def.name) + maxStreamIDLen + requestSlack
}

// rowWireSize is what a row of n bytes adds to a request.
func rowWireSize(n int) int { return protowire.SizeTag(1) + protowire.SizeBytes(n) }

// lookup is one REST read of the table after the write path answered
// NOT_FOUND or PERMISSION_DENIED; appends that need its verdict wait for it.
type lookup struct {
	started  time.Time
	finished bool
	verdict  error         // nil: the table exists (or bq cannot tell)
	waiters  []func(error) // called with the verdict once finished
}

// afterLookup calls done with the verdict of a lookup of the table: the
// one under way, the last one if it started less than lookupInterval ago,
// or a new one. done runs in the caller's goroutine or the lookup's.
func (t *Table) afterLookup(done func(verdict error)) {
	t.lookupMu.Lock()
	lk := t.lookup
	if lk == nil || (lk.finished && time.Since(lk.started) >= lookupInterval) {
		lk = &lookup{started: time.Now()}
		if !t.c.goOwned(func() { t.runLookup(lk) }) {
			t.lookupMu.Unlock()
			done(ErrClosed)
			return
		}
		t.lookup = lk
	}
	if !lk.finished {
		lk.waiters = append(lk.waiters, done)
		t.lookupMu.Unlock()
		return
	}
	verdict := lk.verdict
	t.lookupMu.Unlock()
	done(verdict)
}

func (t *Table) runLookup(lk *lookup) {
	verdict := t.lookupVerdict()
	t.lookupMu.Lock()
	lk.finished, lk.verdict = true, verdict
	waiters := lk.waiters
	lk.waiters = nil
	t.lookupMu.Unlock()
	for _, done := range waiters {
		done(verdict)
	}
}

// lookupVerdict reads the table. If it is gone, EnsureSchema forgets what
// it knew and, with auto_create_tables, bq recreates the table with the
// schema it last knew; the verdict then says so (transient: the rows are
// retried). Without auto_create_tables the verdict wraps ErrTableNotFound.
// nil means the table exists or the read failed: the write path's answer
// stands.
func (t *Table) lookupVerdict() error {
	ctx := t.c.ctx
	_, err := t.metadata(ctx)
	switch {
	case t.c.closed.Load():
		return ErrClosed
	case errors.Is(err, ErrDatasetNotFound):
		t.forget()
		return err
	case httpStatus(err) != http.StatusNotFound || errors.Is(err, context.DeadlineExceeded):
		return nil
	}
	t.forget()
	if !t.c.cfg.AutoCreateTables {
		return fmt.Errorf("table %s was deleted while writing (auto_create_tables is off): %w", t.Name(), ErrTableNotFound)
	}
	enc := t.enc.Load()
	if enc == nil { // rows encoded by another Table were appended to this one
		return fmt.Errorf("table %s: %w (and its schema was never known here)", t.Name(), ErrTableNotFound)
	}
	o := t.options()
	if o.change() != enc.change {
		// Recreated so, it would refuse the rows the Format makes.
		return fmt.Errorf("table %s was deleted while writing, and its options changed since: not recreated: %w", t.Name(), ErrTableNotFound)
	}
	switch err := t.create(ctx, o, enc.schema); {
	case err == nil:
		t.log.Warn("table was deleted while writing; recreated it with the last known schema", zap.Int("columns", len(enc.schema)))
		return fmt.Errorf("table %s was deleted while writing; recreated it", t.Name())
	case httpStatus(err) == http.StatusConflict:
		return fmt.Errorf("table %s was deleted while writing; someone recreated it", t.Name())
	case t.c.closed.Load():
		return ErrClosed
	default:
		return fmt.Errorf("table %s was deleted while writing; recreate it: %w", t.Name(), err)
	}
}
