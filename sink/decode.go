package sink

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
)

// item is one record after decoding: a row ready to append, a rejection,
// a tombstone or a control record. Every record becomes exactly one item,
// so that its offset is acknowledged in order whatever its fate.
type item struct {
	rec       *kgo.Record
	row       bq.Row     // when rej is nil and the record is not a tombstone or control record
	rej       *rejection // the record can never be written
	tombstone bool       // null value: no row, nothing to report
	control   bool       // a transaction marker: no row, nothing to report
	truncate  bool       // upsert mode: Debezium's truncate event, which no change expresses
	charge    int64      // bytes accounted for the record and its row

	// Upsert mode: row is a change of the row keyed by the record's key,
	// ordered by seq; a batch keeps the latest change of a key only.
	change bool
	seq    bq.Sequence
}

// rejection is a record that can never be written, and why.
type rejection struct {
	rec      *kgo.Record
	reason   string // one of the reason* constants
	err      error
	schemaID int // the record's writer schema ID, 0 if it has none
}

// stageError is a failure worth retrying: the registry or BigQuery did not
// answer, or answered that an operator must fix something (config).
type stageError struct {
	stage, target string
	config        bool
	err           error
}

func (e *stageError) Error() string { return e.stage + " " + e.target + ": " + e.err.Error() }
func (e *stageError) Unwrap() error { return e.err }

// recheckIncompatible is how long a schema the table cannot absorb is
// remembered: an operator may fix the table by hand, and that must not need
// a restart.
const recheckIncompatible = time.Minute

// decoder turns one partition's records into rows of its table: wire
// format, writer schema from the registry, Avro decode, the table made able
// to hold the schema, the row encoded for the table. Only its partition's
// decode stage uses it.
type decoder struct {
	reg      *schema.Registry
	registry string // the registry's name in logs
	table    *bq.Table
	meta     string // metadata column, or ""
	grace    func(id int) bool
	log      *zap.Logger

	// ensured remembers the schema pairs the table is known to hold (err
	// nil) or known not to be able to hold, so that the per-record path
	// asks BigQuery nothing once a schema is known.
	ensured map[schemaPair]ensured

	rows  transcoders[*schema.Transcoder] // of values into rows
	arena []byte                          // the chunk rows are transcoded into; see rowBuf

	keys     transcoders[*schema.Transcoder] // of keys into the metadata column's key RECORD
	metaAt   *metaAt                         // the metadata RECORD's layout in the current format
	metaVals bq.Fields                       // its values, reused row after row
	metaBuf  []byte                          // its encoding, reused row after row

	change *changeDecoder // upsert mode; nil appends

	// plain marks the writer schemas written without Kafka Connect's
	// types (writeAs); warnPlain says whether to warn for a schema ID.
	plain     map[*schema.Schema]bool
	warnPlain func(id int) bool
}

// schemaPair identifies what a row's columns come from: the value's writer
// schema and, with a metadata column, the key's (nil for a raw key).
type schemaPair struct{ value, key *schema.Schema }

type ensured struct {
	err error // nil, or why rows of this pair can never be written
	at  time.Time
}

// decode returns the record's item, or a *stageError when it must be
// retried. It never panics: a bug hit by one record's bytes rejects that
// record only.
func (d *decoder) decode(ctx context.Context, r *kgo.Record) (it item, err error) {
	it.rec = r
	defer func() {
		if p := recover(); p != nil {
			d.log.Error("panic decoding a record; rejecting it", zap.String("topic", r.Topic), zap.Int32("partition", r.Partition),
				zap.Int64("offset", r.Offset), zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
			it, err = item{rec: r, rej: &rejection{rec: r, reason: reasonDecode, err: fmt.Errorf("panic decoding record: %v", p)}}, nil
		}
	}()
	if r.Attrs.IsControl() {
		// A transaction's commit or abort marker: not data, but its offset
		// is the partition's, and must be committed past.
		it.control = true
		return it, nil
	}
	if r.Value == nil {
		if d.change != nil {
			return d.decodeDelete(ctx, it)
		}
		it.tombstone = true
		return it, nil
	}
	reject := func(reason string, id int, err error) (item, error) {
		it.rej = &rejection{rec: r, reason: reason, err: err, schemaID: id}
		return it, nil
	}
	id, body, err := schema.Split(r.Value)
	if err != nil {
		return reject(reasonWireFormat, 0, err)
	}
	sch, reason, err := d.writerSchema(ctx, id)
	if reason != "" {
		return reject(reason, id, err)
	} else if err != nil {
		return it, err
	}
	if d.change != nil {
		return d.decodeChange(ctx, it, id, sch, body)
	}
	sch = d.writeAs(sch)
	pair := schemaPair{value: sch}
	var key []byte // the key's Avro body when its schema is pair.key
	if d.meta != "" {
		if pair.key, key, err = d.keySchema(ctx, r); err != nil {
			return it, &stageError{stage: stageSchema, target: d.registry, config: registryNeedsOperator(err), err: err}
		}
	}
	for range 2 {
		if err := d.ensure(ctx, pair); err != nil {
			if errors.Is(err, bq.ErrIncompatible) {
				if plain := d.plainIfTableHas(ctx, sch, pair, func(p *schema.Schema) (*schema.Schema, error) { return p, nil }); plain != nil {
					sch, pair.value = plain, plain
					continue
				}
			}
			if retry := d.ensureFailed(err); retry != nil {
				return it, retry
			}
			return reject(reasonIncompatible, id, err)
		}
		f := d.table.Format()
		tc, err := d.transcoder(pair.value, f)
		if errors.Is(err, schema.ErrTableMismatch) {
			// The table lost or retyped a column since it was ensured
			// (recreated by hand, say): ensure it again once.
			delete(d.ensured, pair)
			continue
		} else if err != nil {
			return reject(reasonIncompatible, id, err)
		}
		var extra []byte
		if d.meta != "" {
			extra, err = d.metadata(f, r, pair.key, key)
			if errors.Is(err, errKeyUndecodable) {
				// Keep the key raw, as for a key without a schema.
				pair.key, key = nil, nil
				continue
			} else if err != nil {
				delete(d.ensured, pair)
				continue
			}
		}
		b, err := tc.Append(d.rowBuf(), body, extra)
		switch {
		case errors.Is(err, schema.ErrDecode):
			return reject(reasonDecode, id, err)
		case err != nil:
			return reject(reasonEncode, id, err)
		}
		d.keep(b)
		it.row, err = d.table.Row(f, b[:len(b):len(b)])
		switch {
		case err == nil:
			return it, nil
		case errors.Is(err, bq.ErrRowTooLarge):
			return reject(reasonRowTooLarge, id, err)
		default:
			return reject(reasonEncode, id, err)
		}
	}
	return reject(reasonIncompatible, id, fmt.Errorf("table %s does not take the columns of schema %d after ensuring it twice", d.table.Name(), id))
}

// writeAs returns the schema to write records of writer schema s with: s,
// or its variant without Kafka Connect's types once the table turned out
// to hold them as their base types (plainIfTableHas).
func (d *decoder) writeAs(s *schema.Schema) *schema.Schema {
	if d.plain[s] {
		return s.WithoutConnectTypes()
	}
	return s
}

// plainIfTableHas is for a writer schema s whose columns the table cannot
// take (pair, the columns of rowOf(s), failed with ErrIncompatible): if s
// has Kafka Connect's or Debezium's types and the table holds them as their
// base types, as an earlier bqsink created it (a MicroTimestamp as
// INTEGER), it returns the variant of s to write with from now on, and
// warns once. Otherwise nil: the records are incompatible.
func (d *decoder) plainIfTableHas(ctx context.Context, s *schema.Schema, pair schemaPair, rowOf func(*schema.Schema) (*schema.Schema, error)) *schema.Schema {
	p := s.WithoutConnectTypes()
	if p == s {
		return nil
	}
	row, err := rowOf(p)
	if err != nil {
		return nil
	}
	pair.value = row
	if d.ensure(ctx, pair) != nil {
		return nil
	}
	if d.plain == nil {
		d.plain = map[*schema.Schema]bool{}
	}
	d.plain[s] = true
	if d.warnPlain(s.ID()) {
		d.log.Warn("the table holds this schema's Kafka Connect types (connect.name) as their base types, as bqsink created tables before it knew them; writing them so: recreate the table, or its columns, for DATE, TIME, DATETIME, TIMESTAMP, BIGNUMERIC and JSON columns",
			zap.Int("schema_id", s.ID()))
	}
	return p
}

// writerSchema resolves schema ID id. A record that can never be written
// because of it comes back as a rejection reason with its error; a failure
// to retry as a *stageError.
func (d *decoder) writerSchema(ctx context.Context, id int) (*schema.Schema, string, error) {
	sch, err := d.reg.Schema(ctx, id)
	switch {
	case errors.Is(err, schema.ErrNotFound) && d.grace(id):
		return nil, "", &stageError{stage: stageSchema, target: fmt.Sprintf("schema ID %d", id),
			err: fmt.Errorf("%w (waiting unknown_schema_grace before rejecting its records)", err)}
	case errors.Is(err, schema.ErrNotFound):
		return nil, reasonSchemaNotFound, err
	case errors.Is(err, schema.ErrUnsupported):
		return nil, reasonUnsupportedSchema, err
	case errors.Is(err, schema.ErrIncompatible):
		return nil, reasonIncompatible, err
	case err != nil:
		return nil, "", &stageError{stage: stageSchema, target: d.registry, config: registryNeedsOperator(err), err: err}
	}
	return sch, "", nil
}

// transcoders caches transcoders (T) compiled for one table format. Only
// the current format's are kept: a schema change of the table makes the
// old ones unreachable.
type transcoders[T any] struct {
	format *bq.Format
	m      map[*schema.Schema]T
}

// get returns the transcoder of s for f, compiling it once per pair.
func (c *transcoders[T]) get(s *schema.Schema, f *bq.Format, compile func() (T, error)) (T, error) {
	if f != c.format {
		clear(c.m)
		c.format = f
	}
	if tc, ok := c.m[s]; ok {
		return tc, nil
	}
	tc, err := compile()
	if err != nil {
		return tc, err
	}
	if c.m == nil {
		c.m = make(map[*schema.Schema]T)
	}
	c.m[s] = tc
	return tc, nil
}

// transcoder returns the transcoder of rows of s for format f.
func (d *decoder) transcoder(s *schema.Schema, f *bq.Format) (*schema.Transcoder, error) {
	return d.rows.get(s, f, func() (*schema.Transcoder, error) {
		tc, err := s.Transcoder(f.Columns(), d.meta)
		if err != nil {
			return nil, fmt.Errorf("table %s: %w", d.table.Name(), err)
		}
		return tc, nil
	})
}

// rowArena is the size of the chunks rows are transcoded into: one
// allocation serves hundreds of rows, and a chunk is small enough that the
// rows of one partition pin little beyond themselves.
const rowArena = 64 << 10

// rowBuf returns the free tail of the current chunk, as an empty slice for
// Append. A row that outgrows it is allocated by Append on its own.
func (d *decoder) rowBuf() []byte {
	if cap(d.arena)-len(d.arena) < rowArena/16 {
		d.arena = make([]byte, 0, rowArena)
	}
	return d.arena[len(d.arena):]
}

// keep marks b, just appended to rowBuf's tail, as taken: its bytes are
// never written again. A row that did not fit the chunk was allocated
// apart and takes nothing from it.
func (d *decoder) keep(b []byte) {
	tail := d.arena[len(d.arena):cap(d.arena)]
	if len(b) > 0 && len(b) <= len(tail) && &tail[0] == &b[0] {
		d.arena = d.arena[:len(d.arena)+len(b)]
	}
}

// registryNeedsOperator reports whether a registry error lasts until someone
// changes the credentials or the TLS settings.
func registryNeedsOperator(err error) bool {
	return errors.Is(err, schema.ErrUnauthorized) || errors.Is(err, schema.ErrTLS)
}

// needsOperator reports whether a BigQuery error will last until someone
// changes the configuration, the credentials or the dataset.
func needsOperator(err error) bool {
	return errors.Is(err, bq.ErrTableNotFound) || errors.Is(err, bq.ErrDatasetNotFound) || errors.Is(err, bq.ErrPermissionDenied) ||
		errors.Is(err, bq.ErrTableConfig)
}

// ensureFailed classifies a failure of ensure: nil when the records can
// never be written to the table as it is (they are rejected as
// incompatible), else the table-stage failure to retry.
func (d *decoder) ensureFailed(err error) error {
	if errors.Is(err, bq.ErrIncompatible) || errors.Is(err, errMetadataCollides) {
		return nil
	}
	return &stageError{stage: stageTable, target: d.table.Name(), config: needsOperator(err), err: err}
}

// ensure makes the table able to hold rows of pair: created, or evolved by
// adding the new columns. Transient failures are not remembered, so the
// next attempt asks again.
func (d *decoder) ensure(ctx context.Context, pair schemaPair) error {
	if e, ok := d.ensured[pair]; ok && (e.err == nil || time.Since(e.at) < recheckIncompatible) {
		return e.err
	}
	cols := pair.value.Columns()
	if d.meta != "" {
		for _, c := range cols {
			// BigQuery column names are case-insensitive.
			if strings.EqualFold(c.Name, d.meta) {
				err := fmt.Errorf("schema %d field %q: %w %q", pair.value.ID(), c.Name, errMetadataCollides, d.meta)
				d.remember(pair, err)
				return err
			}
		}
		cols = append(cols, metadataColumn(d.meta, pair.key))
	}
	err := d.table.EnsureSchema(ctx, cols)
	if err == nil || errors.Is(err, bq.ErrIncompatible) {
		d.remember(pair, err)
	}
	return err
}

func (d *decoder) remember(pair schemaPair, err error) {
	if d.ensured == nil {
		d.ensured = map[schemaPair]ensured{}
	}
	d.ensured[pair] = ensured{err: err, at: time.Now()}
}

// maxUnknownIDs bounds the unknown schema IDs remembered for their
// grace before old ones are forgotten.
const maxUnknownIDs = 1024

// withinUnknownGrace reports whether a schema ID the registry does not know
// is still within unknown_schema_grace of the first record that carried it.
func (s *Sink) withinUnknownGrace(id int) bool {
	s.unknownMu.Lock()
	defer s.unknownMu.Unlock()
	now := time.Now()
	first, seen := s.unknown[id]
	if !seen {
		if s.unknown == nil {
			s.unknown = map[int]time.Time{}
		}
		if len(s.unknown) >= maxUnknownIDs {
			// Garbage bytes that happen to start with 0 carry random IDs:
			// forget the ones whose grace ended long ago.
			for k, t := range s.unknown {
				if now.Sub(t) > 2*s.cfg.UnknownSchemaGrace {
					delete(s.unknown, k)
				}
			}
		}
		first = now
		s.unknown[id] = first
	}
	return now.Sub(first) < s.cfg.UnknownSchemaGrace
}
