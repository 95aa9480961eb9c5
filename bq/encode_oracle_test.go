package bq

// The row encoder: a whole row of the row value contract (column name to
// value, NULL an absent key) encoded as a Format's message. It was the
// production path before the transcoder (package schema) wrote row bytes
// itself; now only the tests use it, to make rows and as half of the
// transcoder's reference (schema's tests encode the reference's rows
// column by column through AppendColumn, which shares appendMsg with it).

import (
	"fmt"
	"sync"
)

// rowBufs holds encode's scratch buffers (*[]byte).
var rowBufs sync.Pool

// maxPooledBuf keeps one huge row from pinning its buffer in the pool.
const maxPooledBuf = 1 << 20

// encode serializes one row: one allocation, its bytes. Every problem is
// an error naming the column; it never panics on bad input. Fields are
// written in field number order.
func (e *encoder) encode(row map[string]any) ([]byte, error) {
	st, _ := e.scratch.Get().(*encodeState)
	if st == nil {
		st = &encodeState{}
	}
	buf, _ := rowBufs.Get().(*[]byte)
	if buf == nil {
		buf = new([]byte)
	}
	b, err := e.root.appendMsg(st, (*buf)[:0], row)
	var out []byte
	if err == nil {
		out = make([]byte, len(b))
		copy(out, b)
	}
	if cap(b) <= maxPooledBuf {
		*buf = b
		rowBufs.Put(buf)
	}
	clear(st.slots[:cap(st.slots)]) // drop row values an error left behind
	st.slots = st.slots[:0]
	e.scratch.Put(st)
	return out, err
}

// Encode encodes row (the row value contract: column name to value, NULL
// an absent key) as this format's message. Errors name the column: a value
// that does not fit its column, a missing REQUIRED value, or an unknown
// column (wrapping ErrUnknownColumn).
func (f *Format) Encode(row map[string]any) ([]byte, error) { return f.enc.encode(row) }

// Encode encodes row with the table's current schema, as EnsureSchema last
// left it, and makes it a Row: Format().Encode, then Row.
//
// Errors: ErrNoSchema if EnsureSchema never succeeded for this table;
// ErrUnknownColumn if the row names a column the known schema lacks;
// ErrRowTooLarge if the row alone cannot fit a request under
// max_request_bytes; any other error names the column.
func (t *Table) Encode(row map[string]any) (Row, error) {
	if t.nameErr != nil {
		return Row{}, t.nameErr
	}
	enc := t.enc.Load()
	if enc == nil {
		return Row{}, fmt.Errorf("encode a row for %s: %w: call EnsureSchema first", t.Name(), ErrNoSchema)
	}
	b, err := enc.encode(row)
	if err != nil {
		return Row{}, err
	}
	return t.row(enc, b)
}
