package schema

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"cloud.google.com/go/bigquery"
	"github.com/hamba/avro/v2"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protowire"
)

// ErrTableMismatch: Schema.Transcoder cannot write this writer schema's
// rows into the given table columns: a field has no column, or maps to a
// column of another type or mode (REPEATED or not), or the extra column is
// not a top-level column. The message names the field path and both sides.
// It is about the pair (writer schema, table schema), not a record: once the
// table holds the writer's columns, compiling again succeeds.
var ErrTableMismatch = errors.New("writer schema does not match the table")

// Transcoder turns Avro binary bodies of one writer schema into the
// protobuf wire bytes of rows of one table schema: the message BigQuery's
// Storage Write API takes for that table (as built by bq.NewFormat), fields
// in field-number order, without any Go value per field in between. Its
// tests hold its output, byte for byte, to a reference that decodes the
// body into the row value contract and encodes that with bq's encoder. A
// body that does not decode fails with ErrDecode, a row the table cannot
// take (a NULL in a REQUIRED column) with an error naming the column. It is
// immutable and safe for concurrent use; Append allocates nothing when dst
// has room.
type Transcoder struct {
	id    int
	root  *recPlan
	spans sync.Pool // *[]int, scratch of records written out of order
}

// Transcoder compiles a transcoder from s to table, the target table's
// writable columns in protobuf field-number order (field i+1 is table[i],
// recursively for RECORD sub-fields), with canonical legacy type names
// (INTEGER, FLOAT, BOOLEAN, STRING, BYTES, NUMERIC, BIGNUMERIC, DATE, TIME,
// DATETIME, TIMESTAMP, RECORD, GEOGRAPHY, JSON): exactly what bq's
// Format.Columns() returns. extra names one top-level column of table that
// the caller writes itself (the Kafka metadata column), or "".
//
// Every field of the writer must have a column, matched case-insensitively
// as BigQuery names are, of the type and REPEATED-ness the field maps to
// (Columns); otherwise, or when extra is not a top-level column (or is also
// a writer field), the error wraps ErrTableMismatch. Columns the writer
// lacks are left NULL. A REQUIRED column the writer lacks, or may leave
// NULL, is not an error here: Append fails for rows that leave it NULL.
func (s *Schema) Transcoder(table bigquery.Schema, extra string) (*Transcoder, error) {
	if s.writer == nil {
		return nil, fmt.Errorf("schema %d: no writer schema to transcode from", s.id)
	}
	c := &tcompiler{id: s.id, mapper: &mapper{id: s.id, logger: zap.NewNop(), plain: s.plain}}
	extraIdx := -1
	if extra != "" {
		if extraIdx = lookupColumn(table, extra); extraIdx < 0 {
			return nil, fmt.Errorf("%w: schema %d: extra column %q is not a top-level column of the table (%s)", ErrTableMismatch, s.id, extra, columnNames(table))
		}
	}
	fields := make([]wfield, len(s.writer.Fields()))
	for i, f := range s.writer.Fields() {
		fields[i] = wfield{name: f.Name(), typ: f.Type()}
	}
	root, err := c.record(fields, "", table, "", extraIdx)
	if err != nil {
		return nil, err
	}
	t := &Transcoder{id: s.id, root: root}
	t.spans.New = func() any { return new([]int) }
	return t, nil
}

// Append decodes body (one Avro binary value of s, without the 5-byte wire
// header) and appends the row's message bytes (no length prefix) to dst.
// extraField, when non-nil, is the complete encoded field of the extra
// column (key, length, message) and is placed at that column's position in
// field-number order; nil means the column is NULL.
//
// A body that does not decode fails with an error wrapping ErrDecode that
// names the field path, e.g. `lines[2].weight_kg: body ends early`. A row
// the table cannot take (a NULL for a REQUIRED column; the first one met
// in reading order) fails with an error naming the column that does not
// wrap ErrDecode, e.g. `column "a.b": REQUIRED but missing or null`; it is
// reported only once the whole body has decoded, so a body that does not
// decode always fails with ErrDecode. On error dst is returned as it was
// given. Arbitrary input returns an error, never panics.
func (t *Transcoder) Append(dst, body, extraField []byte) ([]byte, error) {
	start := len(dst)
	st := tstate{buf: body, t: t}
	out, err := t.root.run(&st, dst, extraField)
	if err == nil && st.pos < len(body) {
		err = fail("trailing bytes after the record")
	}
	if st.spans != nil {
		*st.spans = (*st.spans)[:0]
		t.spans.Put(st.spans)
	}
	if err != nil {
		return dst[:start], fmt.Errorf("%w: schema %d: %v", ErrDecode, t.id, err)
	}
	if st.enc != nil {
		return dst[:start], st.enc
	}
	return out, nil
}

// run is Append on a state: the whole body is one row (ChangeTranscoder's
// EnvelopeNone; Append keeps its own copy, a call shorter).
func (t *Transcoder) run(st *tstate, dst, extra []byte) ([]byte, error) {
	start := len(dst)
	out, err := t.root.run(st, dst, extra)
	if err == nil && st.pos < len(st.buf) {
		err = fail("trailing bytes after the record")
	}
	t.release(st)
	if err != nil {
		return dst[:start], fmt.Errorf("%w: schema %d: %v", ErrDecode, t.id, err)
	}
	if st.enc != nil {
		return dst[:start], st.enc
	}
	return out, nil
}

// release returns the state's scratch to the pool.
func (t *Transcoder) release(st *tstate) {
	if st.spans != nil {
		*st.spans = (*st.spans)[:0]
		t.spans.Put(st.spans)
		st.spans = nil
	}
}

// ---- compiled plan ----

// kind is how a node reads its Avro value and what it writes.
type kind uint8

const (
	kBool kind = iota
	kInt
	kLong
	kFloat
	kDouble
	kBytes
	kString
	kFixed
	kEnum
	kDate
	kTimeMillis
	kTimeMicros
	kTimestampMillis
	kTimestampMicros
	kLocalTimestampMillis
	kLocalTimestampMicros
	kDecimalBytes
	kDecimalFixed
	kRecord // also a map entry, an array-of-arrays item and a union branch
	kArray
	kMap
	kUnion // several non-null branches: a RECORD with one field set

	// Kafka Connect and Debezium types without an Avro logical type
	// (connect.go).
	kTimeNanos           // io.debezium.time.NanoTime
	kLocalTimestampNanos // io.debezium.time.NanoTimestamp
	kZonedTimestamp      // io.debezium.time.ZonedTimestamp
	kVarDecimal          // io.debezium.data.VariableScaleDecimal

	kCapture // ChangeTranscoder: elem reads and writes, the value is kept (change.go)
)

// node reads one Avro value and appends its protobuf encoding: the key
// (tag) and value of one field, or of one element of a repeated field, or a
// bare value inside a packed run.
type node struct {
	kind kind
	tag  []byte // the encoded key; empty for an element of a packed run

	// opt: the value is a union of null and this type, read as the index
	// of one of branches, null being the index of null (or -1).
	opt      bool
	branches int
	null     int

	size      int      // kFixed, kDecimalFixed
	symbols   [][]byte // kEnum: each symbol's length-prefixed bytes
	nsymbols  int
	precision int // decimals
	scale     int
	maxBytes  int

	rec    *recPlan   // kRecord; kMap: the entry
	elem   *node      // kArray; kCapture: the node read
	packed bool       // kArray: elements written as one length-delimited run
	union  []*recPlan // kUnion: per branch, nil for null
	slot   slot       // kCapture: where the value goes
}

// recPlan writes one message: a record's fields, read in writer order and
// written in field-number order.
type recPlan struct {
	fields []*tfield // writer order

	// reorder: the writer order is not the field-number order, so fields
	// are written in writer order and then moved; order lists writer field
	// indices in field-number order, -1 standing for the extra column.
	reorder bool
	order   []int

	extraAt  int   // in order: the extra column goes before fields[extraAt]; -1 none
	extraErr error // the extra column is REQUIRED: a row without it fails with this

	// missErr: a REQUIRED column no writer field fills, so every row fails.
	missErr error
}

type tfield struct {
	name    string // the writer's name, a segment of decode error paths
	idx     int    // column index: field number - 1
	node    *node
	missErr error // the column is REQUIRED: a NULL value fails the row with this
}

// wfield is a field of a record being compiled: a record's field, a map
// entry's key or value, a union branch, an array-of-arrays' items.
type wfield struct {
	name string
	typ  avro.Schema
}

type tcompiler struct {
	id     int
	mapper *mapper // for the writer's column shapes, exactly as Columns has them
}

func (c *tcompiler) mismatch(format string, args ...any) error {
	return fmt.Errorf("%w: schema %d: %s", ErrTableMismatch, c.id, fmt.Sprintf(format, args...))
}

// record compiles the writer fields of one message against table, the
// columns of that message; tprefix is the dotted table path of the message
// plus "." (bq's column paths), wpath the writer path.
func (c *tcompiler) record(fields []wfield, wpath string, table bigquery.Schema, tprefix string, extraIdx int) (*recPlan, error) {
	p := &recPlan{extraAt: -1}
	used := make([]bool, len(table))
	inOrder := true
	last := -1
	for _, wf := range fields {
		path := join(wpath, wf.name)
		idx := lookupColumn(table, wf.name)
		if idx < 0 {
			where := "the table"
			if tprefix != "" {
				where = fmt.Sprintf("record %q", strings.TrimSuffix(tprefix, "."))
			}
			return nil, c.mismatch("field %s: %s has no column %q (it has %s)", path, where, wf.name, columnNames(table))
		}
		col := table[idx]
		if idx == extraIdx {
			return nil, c.mismatch("field %s: column %q is the extra column the caller writes", path, col.Name)
		}
		if used[idx] {
			return nil, c.mismatch("field %s: column %q is taken by another field", path, col.Name)
		}
		used[idx] = true
		tpath := tprefix + col.Name
		n, err := c.value(wf.typ, path, col, tpath, fieldTag(idx, col))
		if err != nil {
			return nil, err
		}
		f := &tfield{name: wf.name, idx: idx, node: n}
		if col.Required && !col.Repeated {
			f.missErr = missingError(tpath)
		}
		p.fields = append(p.fields, f)
		if idx < last {
			inOrder = false
		}
		last = idx
	}
	for i, col := range table {
		if !used[i] && i != extraIdx && col != nil && col.Required && !col.Repeated {
			p.missErr = missingError(tprefix + col.Name)
			break
		}
	}
	if extraIdx >= 0 && table[extraIdx].Required && !table[extraIdx].Repeated {
		p.extraErr = missingError(tprefix + table[extraIdx].Name)
	}
	if inOrder {
		if extraIdx >= 0 {
			p.extraAt = len(p.fields)
			for i, f := range p.fields {
				if f.idx > extraIdx {
					p.extraAt = i
					break
				}
			}
		}
		return p, nil
	}
	p.reorder = true
	for i := range p.fields {
		p.order = append(p.order, i)
	}
	if extraIdx >= 0 {
		p.order = append(p.order, -1)
	}
	colOf := func(i int) int {
		if i < 0 {
			return extraIdx
		}
		return p.fields[i].idx
	}
	slices.SortFunc(p.order, func(a, b int) int { return colOf(a) - colOf(b) })
	return p, nil
}

// value compiles the Avro type a written into column col (tpath its bq
// path) with key tag, checking that the writer's column shape matches.
func (c *tcompiler) value(a avro.Schema, wpath string, col *bigquery.FieldSchema, tpath string, tag []byte) (*node, error) {
	w, err := c.mapper.mapType(wpath, a)
	if err != nil {
		return nil, fmt.Errorf("schema %d: %v", c.id, err) // cannot happen for a compiled schema
	}
	if w.typ != canonicalType(col.Type) || w.repeated != col.Repeated {
		return nil, c.mismatch("field %s: the writer's %s maps to %s, but table column %q is %s",
			wpath, typeName(a), shapeName(w.typ, w.repeated, w.nullable), tpath, shapeName(canonicalType(col.Type), col.Repeated, !col.Required))
	}
	return c.node(a, wpath, col, tpath, tag)
}

// node builds the node of a, whose shape is known to match col.
func (c *tcompiler) node(a avro.Schema, wpath string, col *bigquery.FieldSchema, tpath string, tag []byte) (*node, error) {
	switch a := a.(type) {
	case *avro.RefSchema:
		return c.node(a.Schema(), wpath, col, tpath, tag)
	case *avro.PrimitiveSchema:
		return primitiveNode(a, tag, c.mapper.plain), nil
	case *avro.RecordSchema:
		if !c.mapper.plain && isVariableScaleDecimal(a) {
			return &node{kind: kVarDecimal, tag: tag}, nil
		}
		fields := make([]wfield, len(a.Fields()))
		for i, f := range a.Fields() {
			fields[i] = wfield{name: f.Name(), typ: f.Type()}
		}
		p, err := c.record(fields, wpath, col.Schema, tpath+".", -1)
		if err != nil {
			return nil, err
		}
		return &node{kind: kRecord, tag: tag, rec: p}, nil
	case *avro.EnumSchema:
		n := &node{kind: kEnum, tag: tag, nsymbols: len(a.Symbols())}
		for _, s := range a.Symbols() {
			n.symbols = append(n.symbols, protowire.AppendString(nil, s))
		}
		return n, nil
	case *avro.FixedSchema:
		if d, ok := a.Logical().(*avro.DecimalLogicalSchema); ok {
			n := decimalNode(kDecimalFixed, d.Precision(), d.Scale(), tag)
			n.size = a.Size()
			return n, nil
		}
		return &node{kind: kFixed, tag: tag, size: a.Size()}, nil
	case *avro.ArraySchema:
		n := &node{kind: kArray, tag: tag, packed: packable(canonicalType(col.Type))}
		elemTag := tag
		if n.packed {
			elemTag = nil
		}
		item, err := c.mapper.mapType(wpath+"[]", a.Items())
		if err != nil {
			return nil, fmt.Errorf("schema %d: %v", c.id, err)
		}
		if item.repeated {
			// An array of arrays: each item is a RECORD holding the inner
			// array in its field "items".
			p, err := c.record([]wfield{{name: "items", typ: a.Items()}}, wpath+"[]", col.Schema, tpath+".", -1)
			if err != nil {
				return nil, err
			}
			n.elem = &node{kind: kRecord, tag: elemTag, rec: p}
			return n, nil
		}
		elemCol := &bigquery.FieldSchema{Name: col.Name, Type: col.Type, Schema: col.Schema}
		if n.elem, err = c.value(a.Items(), wpath+"[]", elemCol, tpath, elemTag); err != nil {
			return nil, err
		}
		return n, nil
	case *avro.MapSchema:
		fields := []wfield{{name: "key", typ: avro.NewPrimitiveSchema(avro.String, nil)}, {name: "value", typ: a.Values()}}
		p, err := c.record(fields, wpath, col.Schema, tpath+".", -1)
		if err != nil {
			return nil, err
		}
		return &node{kind: kMap, tag: tag, rec: p}, nil
	case *avro.UnionSchema:
		types := a.Types()
		null := -1
		var branches []int
		for i, t := range types {
			if t.Type() == avro.Null {
				null = i
			} else {
				branches = append(branches, i)
			}
		}
		if len(branches) == 1 {
			n, err := c.node(types[branches[0]], wpath, col, tpath, tag)
			if err != nil {
				return nil, err
			}
			n.opt, n.branches, n.null = true, len(types), null
			return n, nil
		}
		n := &node{kind: kUnion, tag: tag, union: make([]*recPlan, len(types))}
		for _, i := range branches {
			p, err := c.record([]wfield{{name: branchName(types[i]), typ: types[i]}}, wpath, col.Schema, tpath+".", -1)
			if err != nil {
				return nil, err
			}
			n.union[i] = p
		}
		return n, nil
	}
	return nil, fmt.Errorf("schema %d: field %s: Avro type %s has no BigQuery mapping", c.id, wpath, a.Type())
}

// primitiveNode mirrors mapper.primitive; plain as mapper.plain.
func primitiveNode(s *avro.PrimitiveSchema, tag []byte, plain bool) *node {
	switch connectKindIf(!plain, s) {
	case connectDate:
		return &node{kind: kDate, tag: tag}
	case connectTimeMillis:
		return &node{kind: kTimeMillis, tag: tag}
	case connectTimeMicros:
		return &node{kind: kTimeMicros, tag: tag}
	case connectTimeNanos:
		return &node{kind: kTimeNanos, tag: tag}
	case connectTimestampMillis:
		return &node{kind: kTimestampMillis, tag: tag}
	case connectLocalMillis:
		return &node{kind: kLocalTimestampMillis, tag: tag}
	case connectLocalMicros:
		return &node{kind: kLocalTimestampMicros, tag: tag}
	case connectLocalNanos:
		return &node{kind: kLocalTimestampNanos, tag: tag}
	case connectZoned:
		return &node{kind: kZonedTimestamp, tag: tag}
	case connectJSON:
		return &node{kind: kString, tag: tag} // JSON travels as a string
	case connectDecimal:
		p, sc, _ := connectDecimalParams(s)
		return decimalNode(kDecimalBytes, p, sc, tag)
	}
	var logical avro.LogicalType
	if l := s.Logical(); l != nil {
		logical = l.Type()
	}
	k := kString
	switch s.Type() {
	case avro.Boolean:
		k = kBool
	case avro.Int:
		switch logical {
		case avro.Date:
			k = kDate
		case avro.TimeMillis:
			k = kTimeMillis
		default:
			k = kInt
		}
	case avro.Long:
		switch logical {
		case avro.TimeMicros:
			k = kTimeMicros
		case avro.TimestampMillis:
			k = kTimestampMillis
		case avro.TimestampMicros:
			k = kTimestampMicros
		case avro.LocalTimestampMillis:
			k = kLocalTimestampMillis
		case avro.LocalTimestampMicros:
			k = kLocalTimestampMicros
		default:
			k = kLong
		}
	case avro.Float:
		k = kFloat
	case avro.Double:
		k = kDouble
	case avro.Bytes:
		if d, ok := s.Logical().(*avro.DecimalLogicalSchema); ok {
			return decimalNode(kDecimalBytes, d.Precision(), d.Scale(), tag)
		}
		k = kBytes
	}
	return &node{kind: k, tag: tag}
}

func decimalNode(k kind, p, scale int, tag []byte) *node {
	// The most bytes a value of p digits needs once redundant sign bytes are
	// stripped: checking it first keeps a hostile length from costing a long
	// conversion.
	return &node{kind: k, tag: tag, precision: p, scale: scale, maxBytes: (p*3322/1000+1)/8 + 2}
}

// lookupColumn finds name among cols as bq's encoder does: the exact name,
// else case-insensitively (the last such column).
func lookupColumn(cols bigquery.Schema, name string) int {
	for i, c := range cols {
		if c != nil && c.Name == name {
			return i
		}
	}
	found := -1
	lower := strings.ToLower(name)
	for i, c := range cols {
		if c != nil && strings.ToLower(c.Name) == lower {
			found = i
		}
	}
	return found
}

func columnNames(cols bigquery.Schema) string {
	names := make([]string, 0, len(cols))
	for _, c := range cols {
		if c != nil {
			names = append(names, strconv.Quote(c.Name))
		}
	}
	if len(names) == 0 {
		return "no columns"
	}
	return strings.Join(names, ", ")
}

// canonicalType maps standard SQL type names to the legacy ones.
func canonicalType(t bigquery.FieldType) bigquery.FieldType {
	switch strings.ToUpper(string(t)) {
	case "INT64", "INTEGER":
		return bigquery.IntegerFieldType
	case "FLOAT64", "FLOAT":
		return bigquery.FloatFieldType
	case "BOOL", "BOOLEAN":
		return bigquery.BooleanFieldType
	case "STRUCT", "RECORD":
		return bigquery.RecordFieldType
	case "DECIMAL", "NUMERIC":
		return bigquery.NumericFieldType
	case "BIGDECIMAL", "BIGNUMERIC":
		return bigquery.BigNumericFieldType
	}
	return bigquery.FieldType(strings.ToUpper(string(t)))
}

func shapeName(typ bigquery.FieldType, repeated, nullable bool) string {
	switch {
	case repeated:
		return "REPEATED " + string(typ)
	case nullable:
		return "NULLABLE " + string(typ)
	}
	return "REQUIRED " + string(typ)
}

// typeName describes an Avro type briefly for messages.
func typeName(a avro.Schema) string {
	switch a := a.(type) {
	case *avro.RefSchema:
		return typeName(a.Schema())
	case avro.NamedSchema:
		return string(a.Type()) + " " + a.FullName()
	case *avro.PrimitiveSchema:
		if l := a.Logical(); l != nil {
			if d, ok := l.(*avro.DecimalLogicalSchema); ok {
				return fmt.Sprintf("%s decimal(%d,%d)", a.Type(), d.Precision(), d.Scale())
			}
			return string(a.Type()) + " " + string(l.Type())
		}
		if name, _ := a.Prop(connectName).(string); name != "" {
			return string(a.Type()) + " " + name
		}
	case *avro.UnionSchema:
		names := make([]string, len(a.Types()))
		for i, t := range a.Types() {
			names[i] = typeName(t)
		}
		return "union [" + strings.Join(names, ", ") + "]"
	}
	return string(a.Type())
}

// packable reports whether a REPEATED column of typ is packed, as the
// descriptor bq builds says (proto2 scalars of varint and fixed wire types).
func packable(typ bigquery.FieldType) bool {
	switch typ {
	case bigquery.BooleanFieldType, bigquery.IntegerFieldType, bigquery.FloatFieldType,
		bigquery.DateFieldType, bigquery.TimestampFieldType:
		return true
	}
	return false
}

// fieldTag is the encoded key of column idx: field number idx+1 and the
// wire type of one value of it (bytes for a packed run).
func fieldTag(idx int, col *bigquery.FieldSchema) []byte {
	typ := canonicalType(col.Type)
	wt := protowire.BytesType
	if !col.Repeated || !packable(typ) {
		switch typ {
		case bigquery.BooleanFieldType, bigquery.IntegerFieldType, bigquery.DateFieldType, bigquery.TimestampFieldType:
			wt = protowire.VarintType
		case bigquery.FloatFieldType:
			wt = protowire.Fixed64Type
		}
	}
	return protowire.AppendVarint(nil, protowire.EncodeTag(protowire.Number(idx+1), wt))
}

// missingError is the error for a REQUIRED column left NULL, worded as bq's.
func missingError(path string) error {
	return fmt.Errorf("column %q: REQUIRED but missing or null", path)
}

// ---- running ----

// tstate is one Append call: the body being read and what is pending.
type tstate struct {
	buf []byte
	pos int
	t   *Transcoder
	// enc is the first reason, in reading order, the table cannot take the
	// row (a NULL for a REQUIRED column); Append returns it once the whole
	// body has decoded.
	enc   error
	spans *[]int // field offsets of records written out of order
	// change: what a ChangeTranscoder's kCapture nodes read from the row
	// on the way. A value, not a pointer: the state's contents escape (into
	// errors), so a pointer to the caller's stack would cost an allocation.
	change rowCapture
}

func errEarly() error { return fail("body ends early") }

// decodeError is a body that does not decode and the path to the value
// that failed, innermost segment first (it is built while unwinding).
type decodeError struct {
	rev []string
	msg string
}

func (e *decodeError) Error() string { return e.path() + ": " + e.msg }

func (e *decodeError) path() string {
	var b strings.Builder
	for i := len(e.rev) - 1; i >= 0; i-- {
		s := e.rev[i]
		if b.Len() > 0 && s[0] != '[' {
			b.WriteByte('.')
		}
		b.WriteString(s)
	}
	if b.Len() == 0 {
		return "(top level)"
	}
	return b.String()
}

func fail(format string, args ...any) error {
	return &decodeError{msg: fmt.Sprintf(format, args...)}
}

// at prefixes the path of err with a field name or "[i]".
func at(err error, segment string) error {
	if de, ok := err.(*decodeError); ok {
		de.rev = append(de.rev, segment)
	}
	return err
}

// BigQuery's DATE, DATETIME and TIMESTAMP ranges: 0001-01-01 to 9999-12-31.
const (
	minDate   = -719162 // days from 1970-01-01 to 0001-01-01
	maxDate   = 2932896 // days from 1970-01-01 to 9999-12-31
	minMicros = -62135596800000000
	maxMicros = 253402300799999999
	dayMicros = 86400000000
)

// readLong reads an Avro long as hamba/avro's Reader does from a byte slice: at
// most 10 bytes, extra high bits dropped, and a varint that does not end
// within them (or the body) reads as the body ending early.
func (st *tstate) readLong() (int64, error) {
	i := st.pos
	if i < len(st.buf) {
		if b := st.buf[i]; b < 0x80 {
			st.pos = i + 1
			return int64(b>>1) ^ -int64(b&1), nil
		}
	}
	var v uint64
	for s := uint(0); s < 70 && i < len(st.buf); s += 7 {
		b := st.buf[i]
		i++
		v |= uint64(b&0x7f) << s
		if b < 0x80 {
			st.pos = i
			return int64(v>>1) ^ -int64(v&1), nil
		}
	}
	st.pos = len(st.buf)
	return 0, errEarly()
}

// readInt reads an Avro int: as readLong, with at most 5 bytes into 32 bits.
func (st *tstate) readInt() (int32, error) {
	i := st.pos
	if i < len(st.buf) {
		if b := st.buf[i]; b < 0x80 {
			st.pos = i + 1
			return int32(b>>1) ^ -int32(b&1), nil
		}
	}
	var v uint32
	for s := uint(0); s < 35 && i < len(st.buf); s += 7 {
		b := st.buf[i]
		i++
		v |= uint32(b&0x7f) << s
		if b < 0x80 {
			st.pos = i
			return int32((v >> 1) ^ -(v & 1)), nil
		}
	}
	st.pos = len(st.buf)
	return 0, errEarly()
}

// take returns the next n bytes of the body (a fixed, a float or double).
func (st *tstate) take(n int) ([]byte, error) {
	if n > len(st.buf)-st.pos {
		return nil, errEarly()
	}
	b := st.buf[st.pos : st.pos+n]
	st.pos += n
	return b, nil
}

// bytes reads a length-prefixed bytes or string value. The length is
// checked against what is left of the body before anything is taken.
func (st *tstate) bytes() ([]byte, error) {
	n, err := st.readLong()
	if err != nil {
		return nil, err
	}
	if uint64(n) > uint64(len(st.buf)-st.pos) { // a negative n too
		if n < 0 || n > int64(len(st.buf)) {
			return nil, fail("length %d does not fit in a %d-byte body", n, len(st.buf))
		}
		return nil, errEarly()
	}
	b := st.buf[st.pos : st.pos+int(n)]
	st.pos += int(n)
	return b, nil
}

// blockCount reads an array or map block header: the item count, negative
// when a byte size follows (which is not needed). Every value takes at
// least one byte, so a count over what is left of the body is refused
// before any item is read.
func (st *tstate) blockCount() (int, error) {
	n, err := st.readLong()
	if err != nil {
		return 0, err
	}
	if n < 0 {
		if _, err := st.readLong(); err != nil {
			return 0, err
		}
		n = -n
	}
	if uint64(n) > uint64(len(st.buf)-st.pos) { // math.MinInt64 stays negative
		return 0, fail("block of %d items cannot fit in the rest of a %d-byte body", n, len(st.buf))
	}
	return int(n), nil
}

func (st *tstate) unionIndex(branches int) (int, error) {
	i, err := st.readLong()
	if err != nil {
		return 0, err
	}
	if i < 0 || i >= int64(branches) {
		return 0, fail("union branch %d out of range, the union has %d", i, branches)
	}
	return int(i), nil
}

// run reads the message's fields and appends them in field-number order,
// extra (root only) in its place, and records in st.enc, unless the row
// already has one, why the table cannot take the message.
func (p *recPlan) run(st *tstate, dst, extra []byte) ([]byte, error) {
	if p.reorder {
		return p.runReordered(st, dst, extra)
	}
	for i, f := range p.fields {
		if i == p.extraAt {
			dst = append(dst, extra...)
		}
		var null bool
		var err error
		dst, null, err = f.node.run(st, dst)
		if err != nil {
			return dst, at(err, f.name)
		}
		if null && f.missErr != nil && st.enc == nil {
			st.enc = f.missErr
		}
	}
	if p.extraAt == len(p.fields) {
		dst = append(dst, extra...)
	}
	p.finish(st, extra)
	return dst, nil
}

// finish records, unless the row already has an encoding error, the
// message's own: a REQUIRED column no writer field fills, or the REQUIRED
// extra column the caller left NULL.
func (p *recPlan) finish(st *tstate, extra []byte) {
	switch {
	case st.enc != nil:
	case p.missErr != nil:
		st.enc = p.missErr
	case extra == nil && p.extraErr != nil:
		st.enc = p.extraErr
	}
}

// runReordered writes the fields in writer order, then moves them into
// field-number order.
func (p *recPlan) runReordered(st *tstate, dst, extra []byte) ([]byte, error) {
	if st.spans == nil {
		st.spans = st.t.spans.Get().(*[]int)
	}
	base := len(*st.spans)
	body := len(dst)
	for _, f := range p.fields {
		*st.spans = append(*st.spans, len(dst))
		var null bool
		var err error
		dst, null, err = f.node.run(st, dst)
		if err != nil {
			*st.spans = (*st.spans)[:base]
			return dst, at(err, f.name)
		}
		if null && f.missErr != nil && st.enc == nil {
			st.enc = f.missErr
		}
	}
	*st.spans = append(*st.spans, len(dst))
	starts := (*st.spans)[base:]
	mid := len(dst)
	for _, i := range p.order {
		if i < 0 {
			dst = append(dst, extra...)
		} else {
			dst = append(dst, dst[starts[i]:starts[i+1]]...)
		}
	}
	n := copy(dst[body:], dst[mid:])
	dst = dst[:body+n]
	*st.spans = (*st.spans)[:base]
	p.finish(st, extra)
	return dst, nil
}

// beginLen reserves one byte for the length of what follows; endLen writes
// it, widening it when needed.
func beginLen(b []byte) ([]byte, int) {
	return append(b, 0), len(b) + 1
}

func endLen(b []byte, start int) []byte {
	n := len(b) - start
	if n < 0x80 {
		b[start-1] = byte(n)
		return b
	}
	k := protowire.SizeVarint(uint64(n))
	for range k - 1 {
		b = append(b, 0)
	}
	copy(b[start-1+k:], b[start:start+n])
	protowire.AppendVarint(b[:start-1], uint64(n))
	return b
}

// appendTag appends the node's key: most are one byte, and appending a
// slice costs a call.
func (n *node) appendTag(b []byte) []byte {
	switch len(n.tag) {
	case 0:
		return b
	case 1:
		return append(b, n.tag[0])
	}
	return append(b, n.tag...)
}

func appendFixed64(b []byte, v uint64) []byte {
	return append(b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24), byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56))
}

func appendVarint(b []byte, v uint64) []byte {
	switch {
	case v < 1<<7:
		return append(b, byte(v))
	case v < 1<<14:
		return append(b, byte(v)|0x80, byte(v>>7))
	}
	return protowire.AppendVarint(b, v)
}

// run reads one value of n and appends it; null reports a NULL (nothing
// written). Errors are decode errors (*decodeError), with the path below n.
func (n *node) run(st *tstate, dst []byte) ([]byte, bool, error) {
	if n.opt {
		i, err := st.unionIndex(n.branches)
		if err != nil {
			return dst, false, err
		}
		if i == n.null {
			return dst, true, nil
		}
	}
	switch n.kind {
	case kBool:
		if st.pos >= len(st.buf) {
			return dst, false, errEarly()
		}
		b := st.buf[st.pos]
		st.pos++
		if b > 1 {
			return dst, false, fail("avro: ReadBool: invalid bool")
		}
		return append(n.appendTag(dst), b), false, nil

	case kInt:
		v, err := st.readInt()
		if err != nil {
			return dst, false, err
		}
		return appendVarint(n.appendTag(dst), uint64(int64(v))), false, nil

	case kLong:
		v, err := st.readLong()
		if err != nil {
			return dst, false, err
		}
		return appendVarint(n.appendTag(dst), uint64(v)), false, nil

	case kFloat:
		b, err := st.take(4)
		if err != nil {
			return dst, false, err
		}
		f := math.Float32frombits(uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24)
		return appendFixed64(n.appendTag(dst), math.Float64bits(float64(f))), false, nil

	case kDouble:
		b, err := st.take(8)
		if err != nil {
			return dst, false, err
		}
		return append(n.appendTag(dst), b...), false, nil

	case kBytes, kString:
		b, err := st.bytes()
		if err != nil {
			return dst, false, err
		}
		if n.kind == kString && !utf8.Valid(b) {
			return dst, false, fail("string is not valid UTF-8")
		}
		dst = appendVarint(n.appendTag(dst), uint64(len(b)))
		return append(dst, b...), false, nil

	case kFixed:
		b, err := st.take(n.size)
		if err != nil {
			return dst, false, err
		}
		dst = appendVarint(n.appendTag(dst), uint64(len(b)))
		return append(dst, b...), false, nil

	case kEnum:
		i, err := st.readInt()
		if err != nil {
			return dst, false, err
		}
		if i < 0 || int(i) >= n.nsymbols {
			return dst, false, fail("enum index %d out of range, the enum has %d symbols", i, n.nsymbols)
		}
		return append(n.appendTag(dst), n.symbols[i]...), false, nil

	case kDate:
		v, err := st.readInt()
		if err != nil {
			return dst, false, err
		}
		if v < minDate || v > maxDate {
			return dst, false, fail("date %d days from 1970-01-01 is outside BigQuery's 0001-01-01..9999-12-31", v)
		}
		return appendVarint(n.appendTag(dst), uint64(int64(v))), false, nil

	case kTimeMillis:
		v, err := st.readInt()
		if err != nil {
			return dst, false, err
		}
		us := int64(v) * 1000
		if us < 0 || us >= dayMicros {
			return dst, false, fail("time-millis %d is not a time of day", v)
		}
		return appendTimeOfDay(append(n.appendTag(dst), 15), us), false, nil

	case kTimeMicros:
		v, err := st.readLong()
		if err != nil {
			return dst, false, err
		}
		if v < 0 || v >= dayMicros {
			return dst, false, fail("time-micros %d is not a time of day", v)
		}
		return appendTimeOfDay(append(n.appendTag(dst), 15), v), false, nil

	case kTimestampMillis:
		v, err := st.readLong()
		if err != nil {
			return dst, false, err
		}
		if v < minMicros/1000 || v > maxMicros/1000 {
			return dst, false, fail("timestamp-millis %d is outside BigQuery's years 1..9999", v)
		}
		return appendVarint(n.appendTag(dst), uint64(v*1000)), false, nil

	case kTimestampMicros:
		v, err := st.readLong()
		if err != nil {
			return dst, false, err
		}
		if v < minMicros || v > maxMicros {
			return dst, false, fail("timestamp-micros %d is outside BigQuery's years 1..9999", v)
		}
		return appendVarint(n.appendTag(dst), uint64(v)), false, nil

	case kLocalTimestampMillis:
		v, err := st.readLong()
		if err != nil {
			return dst, false, err
		}
		if v < minMicros/1000 || v > maxMicros/1000 {
			return dst, false, fail("local-timestamp-millis %d is outside BigQuery's years 1..9999", v)
		}
		return appendDateTime(append(n.appendTag(dst), 26), v*1000), false, nil

	case kLocalTimestampMicros:
		v, err := st.readLong()
		if err != nil {
			return dst, false, err
		}
		if v < minMicros || v > maxMicros {
			return dst, false, fail("local-timestamp-micros %d is outside BigQuery's years 1..9999", v)
		}
		return appendDateTime(append(n.appendTag(dst), 26), v), false, nil

	case kDecimalBytes, kDecimalFixed:
		var b []byte
		var err error
		if n.kind == kDecimalBytes {
			b, err = st.bytes()
		} else {
			b, err = st.take(n.size)
		}
		if err != nil {
			return dst, false, err
		}
		b = trimSign(b)
		if len(b) > n.maxBytes {
			return dst, false, fail("decimal of %d bytes exceeds precision %d", len(b), n.precision)
		}
		dst, err = n.appendDecimal(n.appendTag(dst), b)
		return dst, false, err

	case kTimeNanos, kLocalTimestampNanos, kZonedTimestamp, kVarDecimal:
		return n.runConnect(st, dst)

	case kCapture:
		start := st.pos
		dst, null, err := n.elem.run(st, dst)
		if err != nil || null {
			return dst, null, err
		}
		return dst, false, st.capture(n, start)

	case kRecord:
		var start int
		dst, start = beginLen(n.appendTag(dst))
		dst, err := n.rec.run(st, dst, nil)
		if err != nil {
			return dst, false, err
		}
		return endLen(dst, start), false, nil

	case kUnion:
		i, err := st.unionIndex(len(n.union))
		if err != nil {
			return dst, false, err
		}
		p := n.union[i]
		if p == nil {
			return dst, true, nil
		}
		var start int
		dst, start = beginLen(n.appendTag(dst))
		if dst, err = p.run(st, dst, nil); err != nil {
			return dst, false, err
		}
		return endLen(dst, start), false, nil

	case kArray:
		return n.runArray(st, dst)

	case kMap:
		return n.runMap(st, dst)
	}
	return dst, false, fail("internal error: unknown node kind %d", n.kind)
}

func (n *node) runArray(st *tstate, dst []byte) ([]byte, bool, error) {
	count, start := 0, -1
	for {
		blk, err := st.blockCount()
		if err != nil {
			return dst, false, at(err, "["+strconv.Itoa(count)+"]")
		}
		if blk == 0 {
			break
		}
		if n.packed && start < 0 {
			dst, start = beginLen(n.appendTag(dst))
		}
		for range blk {
			clean := st.enc == nil
			var null bool
			dst, null, err = n.elem.run(st, dst)
			if err == nil && null {
				err = fail("NULL array element: BigQuery arrays cannot hold NULL")
			}
			if err != nil {
				return dst, false, at(err, "["+strconv.Itoa(count)+"]")
			}
			if clean && st.enc != nil {
				st.enc = fmt.Errorf("element %d: %w", count, st.enc)
			}
			count++
		}
	}
	if start >= 0 {
		dst = endLen(dst, start)
	}
	return dst, false, nil
}

func (n *node) runMap(st *tstate, dst []byte) ([]byte, bool, error) {
	count := 0
	for {
		blk, err := st.blockCount()
		if err != nil {
			return dst, false, at(err, "["+strconv.Itoa(count)+"]")
		}
		if blk == 0 {
			break
		}
		for range blk {
			clean := st.enc == nil
			var start int
			dst, start = beginLen(n.appendTag(dst))
			if dst, err = n.rec.run(st, dst, nil); err != nil {
				return dst, false, at(err, "["+strconv.Itoa(count)+"]")
			}
			dst = endLen(dst, start)
			if clean && st.enc != nil {
				st.enc = fmt.Errorf("element %d: %w", count, st.enc)
			}
			count++
		}
	}
	return dst, false, nil
}

// appendTimeOfDay appends microseconds after midnight as "15:04:05.000000".
func appendTimeOfDay(b []byte, us int64) []byte {
	h, m, s, f := us/3600000000, us/60000000%60, us/1000000%60, us%1000000
	b = append(b, byte('0'+h/10), byte('0'+h%10), ':', byte('0'+m/10), byte('0'+m%10), ':', byte('0'+s/10), byte('0'+s%10), '.')
	return appendFrac6(b, f)
}

func appendFrac6(b []byte, f int64) []byte {
	return append(b, byte('0'+f/100000), byte('0'+f/10000%10), byte('0'+f/1000%10), byte('0'+f/100%10), byte('0'+f/10%10), byte('0'+f%10))
}

// appendDateTime appends a wall-clock time in microseconds from 1970-01-01
// 00:00 (years 1..9999) as "2006-01-02 15:04:05.000000".
func appendDateTime(b []byte, us int64) []byte {
	days := us / dayMicros
	if us%dayMicros < 0 {
		days--
	}
	rem := us - days*dayMicros
	// Civil date from days since 1970-01-01 (H. Hinnant's algorithm); days
	// is at least minDate, so z is not negative.
	z := days + 719468
	era := z / 146097
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	d := doy - (153*mp+2)/5 + 1
	m := mp + 3
	if mp >= 10 {
		m = mp - 9
	}
	y := yoe + era*400
	if m <= 2 {
		y++
	}
	b = append(b, byte('0'+y/1000), byte('0'+y/100%10), byte('0'+y/10%10), byte('0'+y%10), '-',
		byte('0'+m/10), byte('0'+m%10), '-', byte('0'+d/10), byte('0'+d%10), ' ')
	return appendTimeOfDay(b, rem)
}

// trimSign drops leading bytes that only repeat the sign.
func trimSign(b []byte) []byte {
	for len(b) > 1 && (b[0] == 0 && b[1]&0x80 == 0 || b[0] == 0xff && b[1]&0x80 != 0) {
		b = b[1:]
	}
	return b
}

// decimalDigits renders the magnitude of the two's-complement big-endian
// value b in decimal into buf (from its end) and returns the digits and the
// sign (false for zero). It allocates only for values over 160 bytes.
func decimalDigits(buf []byte, b []byte) ([]byte, bool) {
	neg := len(b) > 0 && b[0]&0x80 != 0
	if len(b) <= 8 {
		var u uint64
		for _, c := range b {
			u = u<<8 | uint64(c)
		}
		if neg && len(b) < 8 {
			u |= ^uint64(0) << (8 * len(b))
		}
		if neg {
			u = -u
		}
		i := len(buf)
		for u >= 10 {
			i--
			buf[i] = byte('0' + u%10)
			u /= 10
		}
		i--
		buf[i] = byte('0' + u)
		return buf[i:], neg
	}
	var limbBuf [20]uint64
	var limbs []uint64
	if n := (len(b) + 7) / 8; n <= len(limbBuf) {
		limbs = limbBuf[:n]
	} else {
		limbs = make([]uint64, n)
	}
	for k := range b {
		limbs[k/8] |= uint64(b[len(b)-1-k]) << (8 * (k % 8))
	}
	if neg {
		if r := len(b) % 8; r != 0 {
			limbs[len(limbs)-1] |= ^uint64(0) << (8 * r)
		}
		carry := uint64(1)
		for i := range limbs {
			limbs[i], carry = bits.Add64(^limbs[i], 0, carry)
		}
	}
	if need := len(b)*241/100 + 21; need > len(buf) {
		buf = make([]byte, need)
	}
	top := len(limbs) - 1
	for top >= 0 && limbs[top] == 0 {
		top--
	}
	i := len(buf)
	const chunk = 10000000000000000000 // 10^19
	for top >= 0 {
		var r uint64
		for j := top; j >= 0; j-- {
			limbs[j], r = bits.Div64(r, limbs[j], chunk)
		}
		for top >= 0 && limbs[top] == 0 {
			top--
		}
		if top < 0 {
			for r > 0 {
				i--
				buf[i] = byte('0' + r%10)
				r /= 10
			}
			break
		}
		for range 19 {
			i--
			buf[i] = byte('0' + r%10)
			r /= 10
		}
	}
	if i == len(buf) {
		i--
		buf[i] = '0'
	}
	return buf[i:], neg
}

// appendDecimalText appends the exact decimal text of digits (of a value
// with that sign) with scale fraction digits, e.g. "-123.4500".
func appendDecimalText(dst, digits []byte, neg bool, scale int) []byte {
	if neg {
		dst = append(dst, '-')
	}
	switch {
	case scale == 0:
		return append(dst, digits...)
	case len(digits) <= scale:
		dst = append(dst, '0', '.')
		for range scale - len(digits) {
			dst = append(dst, '0')
		}
		return append(dst, digits...)
	}
	dst = append(dst, digits[:len(digits)-scale]...)
	dst = append(dst, '.')
	return append(dst, digits[len(digits)-scale:]...)
}

// appendDecimal appends the length-prefixed exact text of the decimal whose
// sign-trimmed unscaled value is b, or fails if it has more digits than
// the precision.
func (n *node) appendDecimal(dst, b []byte) ([]byte, error) {
	var buf [160]byte
	digits, neg := decimalDigits(buf[:], b)
	count := len(digits)
	if count == 1 && digits[0] == '0' {
		count, neg = 0, false
	}
	if count > n.precision {
		return dst, fail("decimal %s has %d digits, more than its precision %d", appendDecimalText(nil, digits, neg, n.scale), count, n.precision)
	}
	size := len(digits)
	switch {
	case n.scale == 0:
	case len(digits) <= n.scale:
		size = 2 + n.scale
	default:
		size++
	}
	if neg {
		size++
	}
	dst = appendVarint(dst, uint64(size))
	return appendDecimalText(dst, digits, neg, n.scale), nil
}
