package bq

import (
	"fmt"

	"cloud.google.com/go/bigquery"
)

// Format is the wire format of rows for one version of a table's schema:
// the protobuf message BigQuery receives, with field i+1 for column i of
// Columns (recursively for RECORD columns). Rows are built by other code (a
// transcoder writing this message; AppendColumn for a column it leaves to
// its caller) and made Rows by Table.Row. A Format is immutable and
// goroutine-safe; a schema change makes a new one.
//
// The format of a table with a primary key is a change format (Change):
// its message has two more fields after the columns, the pseudo-columns
// _CHANGE_TYPE (field len(Columns())+1) and _CHANGE_SEQUENCE_NUMBER
// (len(Columns())+2), which AppendChange writes at the end of each row.
type Format struct {
	enc     *encoder
	columns bigquery.Schema // writable columns, canonical types, field order
}

// NewFormat builds the wire format of plain rows of schema (see
// NewChangeFormat for changes). Columns of types bq cannot write (INTERVAL,
// RANGE, ...) are left out: BigQuery leaves them NULL. It fails only if no
// column can be written.
func NewFormat(schema bigquery.Schema) (*Format, error) {
	enc, err := newEncoder(schema, false)
	if err != nil {
		return nil, err
	}
	return enc.format, nil
}

// Columns returns the columns a row of this format holds, in field-number
// order (field i+1 is column i, recursively), with canonical type names
// (INTEGER, FLOAT, BOOLEAN, RECORD, ...). A change format's pseudo-columns
// are not columns and are not listed. The result is shared: do not modify
// it.
func (f *Format) Columns() bigquery.Schema { return f.columns }

// Fields is a RECORD value given by position, accepted by AppendColumn in
// place of a map[string]any: Fields[i] is the value of the record's i-th
// column in Columns' order (nil, or a missing tail, is NULL). It spares
// building and hashing a map per value where the caller knows the
// record's layout, as for a column it writes on every row. More values
// than columns is an error naming the column.
type Fields []any

// Message is the encoded content of a RECORD value (its fields, without
// key or length), accepted by AppendColumn in place of a map[string]any
// for a RECORD column and written as is. It lets a caller build part of a
// value with a faster encoder of its own.
type Message []byte

// AppendColumn appends the complete encoded field (key, length, value) of
// the top-level column name holding v, the form a transcoder takes for a
// column it does not write itself. v follows the row value contract (a
// RECORD is a map[string]any of column name to value, NULL an absent key;
// a REPEATED column a []any); a nil v appends nothing (NULL). Errors name
// the column: a value that does not fit its column, a missing REQUIRED
// value, or an unknown column (wrapping ErrUnknownColumn).
func (f *Format) AppendColumn(dst []byte, name string, v any) ([]byte, error) {
	col := f.enc.root.lookup(name)
	if col == nil {
		return dst, &unknownColumnError{fmt.Sprintf("unknown column %q", name)}
	}
	if v == nil {
		return dst, nil
	}
	st, _ := f.enc.scratch.Get().(*encodeState)
	if st == nil {
		st = &encodeState{}
	}
	dst, err := col.appendValue(st, dst, v)
	clear(st.slots[:cap(st.slots)])
	st.slots = st.slots[:0]
	f.enc.scratch.Put(st)
	return dst, err
}

// Format returns the table's format now, as EnsureSchema last left it, or
// nil if EnsureSchema never succeeded for this table. It is a change format
// (Format.Change) when the table's options have a primary key.
func (t *Table) Format() *Format {
	if enc := t.enc.Load(); enc != nil {
		return enc.format
	}
	return nil
}

// Row makes b, a message of format f encoded by the caller, a Row of this
// table. b is not copied: it must not change while a Result of an Append
// it was passed to is pending.
//
// A row of a change format (f.Change(), a table with a primary key) must
// end with its change type (Format.AppendChange): Row reads the row's
// top-level fields and refuses one without exactly one _CHANGE_TYPE of
// UPSERT or DELETE, or with an invalid _CHANGE_SEQUENCE_NUMBER, as BigQuery
// would append it as a plain row. The format's kind must also be the
// table's (see SetOptions): the first Row or EnsureSchema fixes it.
//
// Errors: ErrNoSchema if f is nil; ErrRowTooLarge if the row alone cannot
// fit a request under max_request_bytes; ErrTableConfig if f is of the
// other kind than the table; an error naming the problem for a change row
// without a valid change type, which is the caller's bug (retrying does not
// help).
func (t *Table) Row(f *Format, b []byte) (Row, error) {
	if t.nameErr != nil {
		return Row{}, t.nameErr
	}
	if f == nil {
		return Row{}, fmt.Errorf("row for %s: %w: call EnsureSchema first", t.Name(), ErrNoSchema)
	}
	if k := kindOf(f.enc.change); !t.fixKind(k) {
		return Row{}, fmt.Errorf("row for %s: %w", t.Name(), t.kindErr(k, "the row's Format"))
	}
	if f.enc.change {
		if err := f.enc.checkChange(b); err != nil {
			return Row{}, fmt.Errorf("change row for %s: %w", t.Name(), err)
		}
	}
	return t.row(f.enc, b)
}
