package sink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"go.uber.org/zap"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
)

// changeDecoder is what a decoder of an upsert table needs beyond rows: how
// records carry their changes, the table's primary key, and the DELETE rows
// built from keys.
type changeDecoder struct {
	spec schema.ChangeSpec
	// at is the config key prefix of the table's settings
	// ("tables.<topic>." or "table_defaults."), for messages.
	at     string
	keys   *primaryKeys
	opts   bq.TableOptions // as configured; PrimaryKey empty when it comes from the key schema
	keySet bool            // opts carry the table's key

	rows    map[*schema.Schema]changeRow // ChangeRow of each writer schema
	trans   transcoders[*schema.ChangeTranscoder]
	deletes transcoders[*schema.Transcoder] // of keys into DELETE rows

	// last are the highest leading sequence sections of the partition's
	// changes so far: a tombstone has no position of its own, and comes
	// right after the change it follows (Debezium's delete event, or the
	// key's last version), which a stale change delivered late may not be.
	last    [schema.MaxSequenceSections]uint64
	lastLen int

	warnOnce func(text string) // once per table and text
	truncate func()            // a truncate event, counted and warned about
}

type changeRow struct {
	s   *schema.Schema
	err error
}

// primaryKeys are the tables' primary keys once known: configured, or
// taken from the first record key's schema. Every worker of a table sets
// the same key on it, so that a rebalance never creates a worker that
// forgets it. Goroutine-safe.
type primaryKeys struct {
	mu sync.Mutex
	m  map[string][]string
}

func (p *primaryKeys) get(table string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.m[table]
}

// setIfUnset records key for table unless one is known, and returns the
// table's key.
func (p *primaryKeys) setIfUnset(table string, key []string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if k, ok := p.m[table]; ok {
		return k
	}
	if p.m == nil {
		p.m = map[string][]string{}
	}
	p.m[table] = key
	return key
}

// changeSpec is s's upsert settings as package schema takes them.
func (s TableSettings) changeSpec() schema.ChangeSpec {
	spec := schema.ChangeSpec{}
	if s.Envelope == EnvelopeDebezium {
		spec.Envelope = schema.EnvelopeDebezium
	}
	switch s.Sequence.Word() {
	case SequenceDebezium:
		spec.DebeziumSequence = true
	case "":
		spec.SequenceFields = s.Sequence
	}
	return spec
}

// rowSchema returns the schema of the table's rows for writer schema s.
func (c *changeDecoder) rowSchema(s *schema.Schema) (*schema.Schema, error) {
	if r, ok := c.rows[s]; ok {
		return r.s, r.err
	}
	row, err := s.ChangeRow(c.spec)
	if err != nil {
		err = fmt.Errorf("%senvelope, %ssequence: %w", c.at, c.at, err)
	}
	if c.rows == nil {
		c.rows = map[*schema.Schema]changeRow{}
	}
	c.rows[s] = changeRow{row, err}
	return row, err
}

// advance makes secs the partition's last position unless it is older: a
// stale change delivered late must not date the tombstones after it.
func (c *changeDecoder) advance(secs []uint64) {
	if len(secs) == 0 {
		return
	}
	var next bq.Sequence
	var prev bq.Sequence
	next, _ = bq.NewSequence(secs...)
	prev, _ = bq.NewSequence(c.last[:c.lastLen]...)
	if c.lastLen == 0 || bq.CompareSequence(next, prev) > 0 {
		c.lastLen = copy(c.last[:], secs)
	}
}

// keyed decodes r's key: its schema and Avro body. A key that is missing or
// not in the registry's wire format comes back as a rejection reason.
func (d *decoder) keyed(ctx context.Context, it item) (*schema.Schema, []byte, string, error) {
	r := it.rec
	if len(r.Key) == 0 {
		return nil, nil, reasonKey, errors.New("the record has no key: an upsert table's changes are keyed by it")
	}
	id, body, err := schema.Split(r.Key)
	if err != nil {
		return nil, nil, reasonKey, fmt.Errorf("key: %w", err)
	}
	sch, reason, err := d.writerSchema(ctx, id)
	if reason != "" {
		return nil, nil, reasonKey, fmt.Errorf("key: %w", err)
	}
	return sch, body, "", err
}

// primaryKey makes sure the table's options carry its primary key before
// the table is first ensured: the configured one, else the fields of the
// key schema.
func (d *decoder) primaryKey(keySchema *schema.Schema) {
	c := d.change
	if c.keySet {
		return // a table's key never changes once known
	}
	name := d.table.Name()
	key := c.keys.get(name)
	if key == nil {
		key = c.opts.PrimaryKey
		if len(key) == 0 && keySchema != nil {
			for _, col := range keySchema.Columns() {
				key = append(key, col.Name)
			}
		}
		if len(key) == 0 {
			return
		}
		key = c.keys.setIfUnset(name, key)
	}
	if !slices.Equal(c.opts.PrimaryKey, key) {
		c.opts.PrimaryKey = key
		d.table.SetOptions(c.opts)
	}
	c.keySet = true
}

// decodeChange turns a record of an upsert table into its change: an
// UPSERT or DELETE row with its sequence number.
func (d *decoder) decodeChange(ctx context.Context, it item, id int, sch *schema.Schema, body []byte) (item, error) {
	c, r := d.change, it.rec
	reject := func(reason string, id int, err error) (item, error) {
		it.rej = &rejection{rec: r, reason: reason, err: err, schemaID: id}
		return it, nil
	}
	keySch, keyBody, reason, err := d.keyed(ctx, it)
	if reason != "" {
		return reject(reason, id, err)
	} else if err != nil {
		return it, err
	}
	sch = d.writeAs(sch)
	row, err := c.rowSchema(sch)
	if err != nil {
		return reject(reasonUnsupportedSchema, id, err)
	}
	d.primaryKey(keySch)
	pair := schemaPair{value: row}
	if d.meta != "" {
		pair.key = keySch
	}
	for range 2 {
		if err := d.ensure(ctx, pair); err != nil {
			if errors.Is(err, bq.ErrIncompatible) {
				if plain := d.plainIfTableHas(ctx, sch, pair, c.rowSchema); plain != nil {
					sch = plain
					pair.value, _ = c.rowSchema(plain)
					continue
				}
			}
			if retry := d.ensureFailed(err); retry != nil {
				return it, retry
			}
			return reject(reasonIncompatible, id, err)
		}
		f := d.table.Format()
		tc, err := c.trans.get(sch, f, func() (*schema.ChangeTranscoder, error) {
			tc, err := sch.ChangeTranscoder(f.Columns(), d.meta, c.spec)
			if err != nil {
				return nil, fmt.Errorf("table %s: %w", d.table.Name(), err)
			}
			return tc, nil
		})
		if errors.Is(err, schema.ErrTableMismatch) {
			delete(d.ensured, pair)
			continue
		} else if err != nil {
			return reject(reasonIncompatible, id, err)
		}
		var extra []byte
		if d.meta != "" {
			if extra, err = d.metadata(f, r, pair.key, keyBody); err != nil {
				return reject(reasonKey, id, fmt.Errorf("key: %w", err))
			}
		}
		b, ch, err := tc.Append(d.rowBuf(), body, extra)
		switch {
		case errors.Is(err, schema.ErrDecode):
			return reject(reasonDecode, id, err)
		case err != nil:
			return reject(reasonEncode, id, err)
		}
		if ch.Op == schema.OpTruncate {
			it.truncate = true
			c.truncate()
			return it, nil
		}
		if ch.NoPosition != "" {
			c.warnOnce(ch.NoPosition)
		}
		c.advance(ch.Sequence())
		if ch.NeedKey {
			// A delete event without its before image: the key names the row.
			if b, err = d.deleteRow(f, keySch, keyBody); err != nil {
				return reject(reasonKey, id, err)
			}
		}
		return d.finishChange(it, f, b, ch.Op == schema.OpDelete, ch.Sequence(), id)
	}
	return reject(reasonIncompatible, id, fmt.Errorf("table %s does not take the columns of schema %d after ensuring it twice", d.table.Name(), id))
}

// decodeDelete turns a tombstone of an upsert table into the DELETE of its
// key.
func (d *decoder) decodeDelete(ctx context.Context, it item) (item, error) {
	c, r := d.change, it.rec
	reject := func(reason string, err error) (item, error) {
		it.rej = &rejection{rec: r, reason: reason, err: err}
		return it, nil
	}
	keySch, keyBody, reason, err := d.keyed(ctx, it)
	if reason != "" {
		return reject(reason, fmt.Errorf("tombstone: %w", err))
	} else if err != nil {
		return it, err
	}
	d.primaryKey(keySch)
	// The table may not be known yet (a tombstone first after a start): the
	// key's columns are enough to find, or create, it.
	pair := schemaPair{value: keySch}
	if d.meta != "" {
		pair.key = keySch
	}
	if err := d.ensure(ctx, pair); err != nil {
		if retry := d.ensureFailed(err); retry != nil {
			return it, retry
		}
		return reject(reasonIncompatible, err)
	}
	f := d.table.Format()
	b, err := d.deleteRow(f, keySch, keyBody)
	if err != nil {
		return reject(reasonKey, fmt.Errorf("tombstone: %w", err))
	}
	// A tombstone has no position of its own: it comes right after the
	// change it follows.
	return d.finishChange(it, f, b, true, c.last[:c.lastLen], keySch.ID())
}

// deleteRow transcodes a key into the row of a DELETE: its key columns.
func (d *decoder) deleteRow(f *bq.Format, keySch *schema.Schema, keyBody []byte) ([]byte, error) {
	tc, err := d.change.deletes.get(keySch, f, func() (*schema.Transcoder, error) {
		tc, err := keySch.Transcoder(f.Columns(), "")
		if err != nil {
			return nil, fmt.Errorf("key schema %d does not fit table %s: %w", keySch.ID(), d.table.Name(), err)
		}
		return tc, nil
	})
	if err != nil {
		return nil, err
	}
	b, err := tc.Append(d.rowBuf(), keyBody, nil)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	return b, nil
}

// finishChange appends the change type and sequence number (leading, then
// the record's offset) to row bytes b and makes the item's row. The Kafka offset ends every sequence number,
// so that a record read again never overwrites what came after it.
func (d *decoder) finishChange(it item, f *bq.Format, b []byte, del bool, leading []uint64, id int) (item, error) {
	r := it.rec
	var secs [schema.MaxSequenceSections + 1]uint64
	n := copy(secs[:], leading)
	secs[n] = uint64(r.Offset)
	seq, err := bq.NewSequence(secs[:n+1]...)
	if err != nil {
		return it, err // cannot happen: at most four sections
	}
	b = f.AppendChange(b, del, seq)
	d.keep(b)
	it.row, err = d.table.Row(f, b[:len(b):len(b)])
	switch {
	case err == nil:
		it.change, it.seq = true, seq
	case errors.Is(err, bq.ErrRowTooLarge):
		it.rej = &rejection{rec: r, reason: reasonRowTooLarge, err: err, schemaID: id}
	default:
		it.rej = &rejection{rec: r, reason: reasonEncode, err: err, schemaID: id}
	}
	return it, nil
}

// newChangeDecoder is the change decoder of topic's table, or nil when the
// table appends.
func (s *Sink) newChangeDecoder(topic, table string, settings TableSettings, opts bq.TableOptions, log *zap.Logger) *changeDecoder {
	if settings.Mode != ModeUpsert {
		return nil
	}
	at := "table_defaults."
	if own := s.cfg.Tables[topic]; own.Mode != "" {
		at = "tables." + topic + "."
	}
	if k := s.primaryKeys.get(table); k != nil {
		opts.PrimaryKey = k
	}
	return &changeDecoder{
		spec: settings.changeSpec(), at: at, keys: &s.primaryKeys, opts: opts,
		warnOnce: func(text string) {
			if s.once(table + "\x00" + text) {
				log.Warn("changes of this table carry no source position; they are ordered by their Kafka offset alone",
					zap.String("why", text), zap.String("key", at+"sequence"))
			}
		},
		truncate: func() {
			s.metrics.truncates.WithLabelValues(topic).Inc()
			if s.once(table + "\x00truncate") {
				log.Warn("a truncate event cannot be applied through change data capture: the table keeps its rows; truncate it by hand if it must follow (counted in bqsink_truncates_skipped_total)",
					zap.String("topic", topic))
			}
		},
	}
}

// once reports whether key is seen for the first time.
func (s *Sink) once(key string) bool {
	_, seen := s.warned.LoadOrStore(key, true)
	return !seen
}

// supersede reports whether a change with sequence next replaces one with
// prev for the same key in a batch: the later one wins, as BigQuery would
// apply them; ties cannot happen, as offsets end sequences.
func supersede(prev, next bq.Sequence) bool { return bq.CompareSequence(next, prev) >= 0 }
