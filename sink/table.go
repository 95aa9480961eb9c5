package sink

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
)

// table is a destination table shared by the workers of every partition
// routed to it. It remembers which writer schemas the table already holds,
// so that the per-record path asks BigQuery nothing once a schema is known.
type table struct {
	bq *bq.Table

	mu      sync.Mutex
	ensured map[schemaPair]ensured
}

// schemaPair identifies what a row's columns come from: the value's writer
// schema and, with a metadata column, the key's (0 for a raw key).
type schemaPair struct{ value, key int }

type ensured struct {
	err error // nil, or why rows of this schema cannot be written
	at  time.Time
}

// recheckIncompatible is how long an incompatible schema is remembered: an
// operator may fix the table by hand, and that must not need a restart.
const recheckIncompatible = time.Minute

// ensure makes the table able to hold rows of sch (and, when meta names a
// metadata column, that column with the key decoded by key, or raw when key
// is nil): created, or evolved by adding the new columns. Transient failures
// are not remembered, so the next record tries again.
func (t *table) ensure(ctx context.Context, sch, key *schema.Schema, meta string) error {
	id := schemaPair{value: sch.ID()}
	if key != nil {
		id.key = key.ID()
	}
	t.mu.Lock()
	e, known := t.ensured[id]
	t.mu.Unlock()
	if known && (e.err == nil || time.Since(e.at) < recheckIncompatible) {
		return e.err
	}
	err := t.ensureColumns(ctx, sch, key, meta)
	if err == nil || errors.Is(err, bq.ErrIncompatible) || errors.Is(err, errMetadataCollides) {
		t.mu.Lock()
		if t.ensured == nil {
			t.ensured = map[schemaPair]ensured{}
		}
		t.ensured[id] = ensured{err: err, at: time.Now()}
		t.mu.Unlock()
	}
	return err
}

func (t *table) ensureColumns(ctx context.Context, sch, key *schema.Schema, meta string) error {
	cols := sch.Columns()
	if meta != "" {
		for _, c := range cols {
			// BigQuery column names are case-insensitive.
			if strings.EqualFold(c.Name, meta) {
				return fmt.Errorf("schema %d field %q: %w %q", sch.ID(), c.Name, errMetadataCollides, meta)
			}
		}
		cols = append(cols, metadataColumn(meta, key))
	}
	return t.bq.EnsureSchema(ctx, cols)
}
