package sink

import (
	"context"
	"errors"
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
	ensured map[int]ensured // by schema ID
}

type ensured struct {
	err error // nil, or why rows of this schema cannot be written
	at  time.Time
}

// recheckIncompatible is how long an incompatible schema is remembered: an
// operator may fix the table by hand, and that must not need a restart.
const recheckIncompatible = time.Minute

// ensure makes the table able to hold rows of sch: created, or evolved by
// adding its new columns. Transient failures are not remembered, so the
// next record tries again.
func (t *table) ensure(ctx context.Context, sch *schema.Schema) error {
	t.mu.Lock()
	e, known := t.ensured[sch.ID()]
	t.mu.Unlock()
	if known && (e.err == nil || time.Since(e.at) < recheckIncompatible) {
		return e.err
	}
	err := t.bq.EnsureSchema(ctx, sch.Columns())
	if err == nil || errors.Is(err, bq.ErrIncompatible) {
		t.mu.Lock()
		if t.ensured == nil {
			t.ensured = map[int]ensured{}
		}
		t.ensured[sch.ID()] = ensured{err: err, at: time.Now()}
		t.mu.Unlock()
	}
	return err
}
