package schema

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"cloud.google.com/go/bigquery"
	"github.com/hamba/avro/v2"
	"go.uber.org/zap"
)

// Envelope says how a record's value carries its change.
type Envelope int

const (
	// EnvelopeNone: the value is the row. It is an upsert, or a delete when
	// the value has a top-level field "__deleted" (a string, or a boolean)
	// holding "true" (true): what Debezium's ExtractNewRecordState transform
	// writes with delete handling "rewrite". The delete's row still carries
	// every column, __deleted included.
	EnvelopeNone Envelope = iota

	// EnvelopeDebezium: the value is a Debezium change event envelope: a
	// record with fields "before" and "after" (each a union of null and the
	// table's Value record), "op" (a string) and, usually, "source",
	// "transaction" and "ts_ms", which are read past (only source's
	// position fields are looked at, see ChangeSpec.DebeziumSequence).
	EnvelopeDebezium
)

func (e Envelope) String() string {
	switch e {
	case EnvelopeNone:
		return "none"
	case EnvelopeDebezium:
		return "debezium"
	}
	return fmt.Sprintf("Envelope(%d)", int(e))
}

// MaxSequenceSections is how many leading sections of a change's sequence
// a ChangeTranscoder reads: BigQuery's _CHANGE_SEQUENCE_NUMBER has at most
// four, which leaves one to the caller.
const MaxSequenceSections = 3

// ChangeSpec configures a ChangeTranscoder: where a record's change and its
// order come from.
type ChangeSpec struct {
	Envelope Envelope

	// SequenceFields, with EnvelopeNone: dotted paths ("a.b") of integer
	// fields of the value whose values, in order, are the leading sections
	// of the change's sequence; at most MaxSequenceSections. Each is an int
	// or a long (or a union of null and one) mapping to INTEGER, or a long
	// timestamp-millis or timestamp-micros; the path may pass through
	// records and unions of null and a record. The section is the raw Avro
	// value; NULL (the field's, or a record's on the path) reads as 0 and a
	// negative value fails the record with ErrDecode. Empty: no sections.
	SequenceFields []string

	// DebeziumSequence, with EnvelopeDebezium: the leading sections are the
	// change's position in the source database's log, read from the
	// envelope's source record by connector (source.connector):
	//
	//   - "postgresql": source.sequence, a JSON array of two LSNs, each a
	//     string of digits or null (read as 0): [last commit LSN, LSN].
	//     Without a sequence (no such field, or null): [source.lsn].
	//   - "mysql" (and "mariadb"): [binlog file number (the digits after the
	//     last '.' of source.file: "mysql-bin.000003" is 3), source.pos,
	//     source.row].
	//
	// Any other connector, or a position that is missing, null, negative or
	// unreadable, gives no sections and says why in Change.NoPosition.
	DebeziumSequence bool
}

// ChangeOp is what a change does to its table's row.
type ChangeOp uint8

const (
	// OpUpsert writes the row: insert it or replace the one with its key.
	OpUpsert ChangeOp = iota + 1
	// OpDelete deletes the row with its key.
	OpDelete
	// OpTruncate: Debezium's op "t", the whole table was truncated. It
	// carries no row.
	OpTruncate
)

// String returns the op as BigQuery's _CHANGE_TYPE spells it ("UPSERT",
// "DELETE"), or "TRUNCATE".
func (o ChangeOp) String() string {
	switch o {
	case OpUpsert:
		return "UPSERT"
	case OpDelete:
		return "DELETE"
	case OpTruncate:
		return "TRUNCATE"
	}
	return fmt.Sprintf("ChangeOp(%d)", uint8(o))
}

// Change is what ChangeTranscoder.Append read from a record besides its row.
type Change struct {
	Op ChangeOp

	// NeedKey: a Debezium delete whose before image is null (the source did
	// not record the old row). Append appended no row bytes; the caller
	// builds the DELETE row from the record's key.
	NeedKey bool

	// Seq[:SeqLen] are the leading sections of the change's sequence, from
	// ChangeSpec.SequenceFields or the Debezium source position.
	Seq    [MaxSequenceSections]uint64
	SeqLen int

	// NoPosition: ChangeSpec.DebeziumSequence was asked for but this record
	// has no position to read (SeqLen is 0); it says why, e.g. for a
	// connector other than postgresql and mysql. It is one of a few texts
	// fixed per ChangeTranscoder, so a caller can warn once per text.
	// Empty otherwise.
	NoPosition string
}

// Sequence returns the leading sections, Seq[:SeqLen].
func (c *Change) Sequence() []uint64 { return c.Seq[:c.SeqLen] }

// ChangeRow returns the schema of a table row for this writer schema under
// spec: for EnvelopeDebezium the envelope's Value record (the type of
// before and after), for EnvelopeNone s itself. Its Columns are what the
// table gets, and its Transcoder writes bodies of the row type alone.
//
// An error wraps ErrEnvelope (and ErrUnsupported: no record of s can be
// written under spec) and names what is wrong: not a Debezium envelope (no
// before, after or op field, or one of another type), before and after of
// different types, a sequence field that is missing or not an integer, a
// spec that mixes the envelopes' options.
func (s *Schema) ChangeRow(spec ChangeSpec) (*Schema, error) {
	shape, err := s.changeShape(spec)
	if err != nil {
		return nil, err
	}
	if shape.value == nil {
		return s, nil
	}
	return &Schema{id: s.id, columns: shape.columns, writer: shape.value, plain: s.plain}, nil
}

// envelopeError is an ErrEnvelope that is also ErrUnsupported.
type envelopeError struct{ msg string }

func (e *envelopeError) Error() string { return ErrEnvelope.Error() + ": " + e.msg }

func (e *envelopeError) Unwrap() error { return ErrEnvelope }

func (e *envelopeError) Is(target error) bool {
	return target == ErrEnvelope || target == ErrUnsupported
}

func (s *Schema) envelopeErr(format string, args ...any) error {
	return &envelopeError{msg: fmt.Sprintf("schema %d: ", s.id) + fmt.Sprintf(format, args...)}
}

// changeShape is what a spec finds in a writer schema.
type changeShape struct {
	// EnvelopeDebezium
	value   *avro.RecordSchema // the row type
	columns bigquery.Schema    // its columns
	before  int                // writer field indexes
	after   int
	op      int
	source  int // -1: none

	// EnvelopeNone
	seq     [][]string // the sequence fields' paths
	deleted int        // the __deleted field, -1 none
}

func (s *Schema) changeShape(spec ChangeSpec) (*changeShape, error) {
	if s.writer == nil {
		return nil, s.envelopeErr("no writer schema")
	}
	switch spec.Envelope {
	case EnvelopeNone:
		if spec.DebeziumSequence {
			return nil, s.envelopeErr("DebeziumSequence needs EnvelopeDebezium")
		}
		return s.plainShape(spec.SequenceFields)
	case EnvelopeDebezium:
		if len(spec.SequenceFields) > 0 {
			return nil, s.envelopeErr("SequenceFields apply to EnvelopeNone; a Debezium envelope's order comes from DebeziumSequence")
		}
		return s.debeziumShape()
	}
	return nil, s.envelopeErr("unknown envelope %v", spec.Envelope)
}

func (s *Schema) plainShape(fields []string) (*changeShape, error) {
	if len(fields) > MaxSequenceSections {
		return nil, s.envelopeErr("%d sequence fields, at most %d", len(fields), MaxSequenceSections)
	}
	shape := &changeShape{deleted: -1, source: -1}
	for i, f := range s.writer.Fields() {
		if f.Name() == deletedField && deletedType(f.Type()) {
			shape.deleted = i
		}
	}
	for _, path := range fields {
		segs := strings.Split(path, ".")
		rec := s.writer
		for i, seg := range segs {
			f := fieldNamed(rec, seg)
			if f == nil {
				return nil, s.envelopeErr("sequence field %q: %s has no field %q", path, recordWhere(segs[:i]), seg)
			}
			t := optional(f.Type())
			if i < len(segs)-1 {
				r, ok := t.(*avro.RecordSchema)
				if !ok || isVariableScaleDecimal(r) {
					return nil, s.envelopeErr("sequence field %q: %s is %s, not a record", path, strings.Join(segs[:i+1], "."), typeName(f.Type()))
				}
				rec = r
				continue
			}
			if !sequenceType(t) {
				return nil, s.envelopeErr("sequence field %q is %s, want an int or long (INTEGER), or a long timestamp-millis or timestamp-micros", path, typeName(f.Type()))
			}
		}
		shape.seq = append(shape.seq, segs)
	}
	return shape, nil
}

func recordWhere(segs []string) string {
	if len(segs) == 0 {
		return "the value"
	}
	return "record " + strings.Join(segs, ".")
}

func fieldNamed(r *avro.RecordSchema, name string) *avro.Field {
	for _, f := range r.Fields() {
		if f.Name() == name {
			return f
		}
	}
	return nil
}

// optional returns the type a union of null and one type holds, or a
// itself, references resolved.
func optional(a avro.Schema) avro.Schema {
	if ref, ok := a.(*avro.RefSchema); ok {
		a = ref.Schema()
	}
	u, ok := a.(*avro.UnionSchema)
	if !ok {
		return a
	}
	var branch avro.Schema
	for _, t := range u.Types() {
		if t.Type() == avro.Null {
			continue
		}
		if branch != nil {
			return a // several branches
		}
		branch = t
	}
	if branch == nil {
		return a
	}
	if ref, ok := branch.(*avro.RefSchema); ok {
		return ref.Schema()
	}
	return branch
}

// sequenceType: an int or long mapping to INTEGER, or a long
// timestamp-millis or timestamp-micros.
func sequenceType(a avro.Schema) bool {
	p, ok := a.(*avro.PrimitiveSchema)
	if !ok || p.Type() != avro.Int && p.Type() != avro.Long {
		return false
	}
	if connectKindOf(p) != connectNone {
		return false
	}
	if l := p.Logical(); l != nil {
		return l.Type() == avro.TimestampMillis || l.Type() == avro.TimestampMicros
	}
	return true
}

const deletedField = "__deleted"

// deletedType: __deleted counts when it is a string or a boolean, or a
// union of null and one.
func deletedType(a avro.Schema) bool {
	p, ok := optional(a).(*avro.PrimitiveSchema)
	return ok && (p.Type() == avro.Boolean || p.Type() == avro.String && stringColumn(p))
}

// stringColumn: a string that maps to STRING (not JSON or TIMESTAMP).
func stringColumn(p *avro.PrimitiveSchema) bool {
	return p.Type() == avro.String && connectKindOf(p) == connectNone
}

// integerColumn: an int or long that maps to INTEGER.
func integerColumn(p *avro.PrimitiveSchema) bool {
	return (p.Type() == avro.Int || p.Type() == avro.Long) && p.Logical() == nil && connectKindOf(p) == connectNone
}

func (s *Schema) debeziumShape() (*changeShape, error) {
	shape := &changeShape{before: -1, after: -1, op: -1, source: -1, deleted: -1}
	for i, f := range s.writer.Fields() {
		switch f.Name() {
		case "before":
			shape.before = i
		case "after":
			shape.after = i
		case "op":
			shape.op = i
		case "source":
			if _, ok := optional(f.Type()).(*avro.RecordSchema); ok {
				shape.source = i
			}
		}
	}
	fields := s.writer.Fields()
	for _, name := range []string{"before", "after", "op"} {
		if fieldNamed(s.writer, name) == nil {
			return nil, s.envelopeErr("%s is not a Debezium envelope: it has no field %q (it has %s)", s.writer.FullName(), name, fieldNames(fields))
		}
	}
	image := func(i int) (*avro.RecordSchema, error) {
		f := fields[i]
		r, ok := optional(f.Type()).(*avro.RecordSchema)
		if !ok || isVariableScaleDecimal(r) {
			return nil, s.envelopeErr("%s is not a Debezium envelope: %s is %s, want a union of null and the row record", s.writer.FullName(), f.Name(), typeName(f.Type()))
		}
		return r, nil
	}
	before, err := image(shape.before)
	if err != nil {
		return nil, err
	}
	after, err := image(shape.after)
	if err != nil {
		return nil, err
	}
	if before != after && (before.FullName() != after.FullName() || before.Fingerprint() != after.Fingerprint()) {
		return nil, s.envelopeErr("%s: before is %s and after is %s; they must be one record type", s.writer.FullName(), typeName(before), typeName(after))
	}
	if p, ok := optional(fields[shape.op].Type()).(*avro.PrimitiveSchema); !ok || p.Type() != avro.String {
		return nil, s.envelopeErr("%s is not a Debezium envelope: op is %s, want a string", s.writer.FullName(), typeName(fields[shape.op].Type()))
	}
	shape.value = after
	// The envelope's columns hold the row's as after's sub-fields: the
	// record is not mapped again (nor its warnings logged twice).
	for _, c := range s.columns {
		if c.Name == "after" {
			shape.columns = cloneColumns(c.Schema)
		}
	}
	if shape.columns == nil {
		m := &mapper{id: s.id, logger: zap.NewNop(), plain: s.plain}
		c, err := m.record("", after)
		if err != nil {
			return nil, s.envelopeErr("%v", err)
		}
		shape.columns = c.fields
	}
	return shape, nil
}

func fieldNames(fields []*avro.Field) string {
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = fmt.Sprintf("%q", f.Name())
	}
	return strings.Join(names, ", ")
}

// ---- the compiled change transcoder ----

// ChangeTranscoder turns Avro bodies of one writer schema into the row
// bytes of one table, as Transcoder does, and says what change each record
// is (ChangeSpec). It is compiled once per (writer schema, table, spec), is
// immutable and safe for concurrent use, and Append allocates nothing when
// dst has room. Its tests hold it to a reference as Transcoder's are.
type ChangeTranscoder struct {
	id   int
	row  *Transcoder // writes the row: the value, or an image of the envelope
	spec ChangeSpec

	// EnvelopeNone: the number of sequence sections.
	nseq int

	// EnvelopeDebezium: the envelope's fields in writer order.
	env        []envField
	noPosition positionTexts
}

// envField is one field of a Debezium envelope.
type envField struct {
	name string
	role envRole
	opt  bool // before, after, op: a union with null
	null int  // its null branch
	n    int  // its branch count
	skip *skipNode
}

type envRole uint8

const (
	roleOther envRole = iota
	roleBefore
	roleAfter
	roleOp
)

// ChangeTranscoder compiles a change transcoder from s to table under spec.
// table and extra are as for Transcoder, with the row type's fields (see
// ChangeRow) as the writer's. An error wraps ErrEnvelope (see ChangeRow)
// or ErrTableMismatch (as Transcoder's).
func (s *Schema) ChangeTranscoder(table bigquery.Schema, extra string, spec ChangeSpec) (*ChangeTranscoder, error) {
	shape, err := s.changeShape(spec)
	if err != nil {
		return nil, err
	}
	spec.SequenceFields = append([]string(nil), spec.SequenceFields...)
	t := &ChangeTranscoder{id: s.id, spec: spec}
	if spec.Envelope == EnvelopeNone {
		if t.row, err = s.Transcoder(table, extra); err != nil {
			return nil, err
		}
		if shape.deleted >= 0 {
			f := t.row.root.fields[shape.deleted]
			f.node = &node{kind: kCapture, elem: f.node, slot: slotDeleted}
		}
		for i, path := range shape.seq {
			if err := captureAt(t.row.root, path, slotSeq0+slot(i)); err != nil {
				return nil, fmt.Errorf("schema %d: sequence field %q: %v", s.id, strings.Join(path, "."), err)
			}
		}
		t.nseq = len(shape.seq)
		return t, nil
	}

	row := &Schema{id: s.id, columns: shape.columns, writer: shape.value, plain: s.plain}
	if t.row, err = row.Transcoder(table, extra); err != nil {
		return nil, err
	}
	srcName := ""
	for i, f := range s.writer.Fields() {
		ef := envField{name: f.Name()}
		switch i {
		case shape.before:
			ef.role = roleBefore
		case shape.after:
			ef.role = roleAfter
		case shape.op:
			ef.role = roleOp
		}
		if ef.role != roleOther {
			if u, ok := f.Type().(*avro.UnionSchema); ok {
				ef.opt, ef.n, ef.null = true, len(u.Types()), -1
				for j, b := range u.Types() {
					if b.Type() == avro.Null {
						ef.null = j
					}
				}
			}
		}
		var slots map[string]slot
		if i == shape.source && spec.DebeziumSequence {
			slots = sourceSlots
			srcName = optional(f.Type()).(*avro.RecordSchema).FullName()
		}
		switch ef.role {
		case roleOp:
		case roleBefore, roleAfter:
			// Read past as Avro alone: the image written is read again by
			// the row transcoder.
			ef.skip = skipOf(optional(f.Type()), nil)
		default:
			ef.skip = skipOf(f.Type(), slots)
		}
		t.env = append(t.env, ef)
	}
	if spec.DebeziumSequence {
		t.noPosition = newPositionTexts(shape.source >= 0, srcName)
	}
	return t, nil
}

// captureAt wraps the node of the writer field at path (writer names) of p
// in a kCapture node writing to sl.
func captureAt(p *recPlan, path []string, sl slot) error {
	for i, seg := range path {
		var f *tfield
		for _, x := range p.fields {
			if x.name == seg {
				f = x
			}
		}
		if f == nil {
			return fmt.Errorf("internal error: no compiled field %q", seg)
		}
		if i == len(path)-1 {
			f.node = &node{kind: kCapture, elem: f.node, slot: sl}
			return nil
		}
		if f.node.kind != kRecord {
			return fmt.Errorf("internal error: field %q is not a record", seg)
		}
		p = f.node.rec
	}
	return nil
}

// Append decodes body (one Avro binary value of the writer schema, without
// the wire header) and appends the row's message bytes to dst, as
// Transcoder.Append does (extraField likewise), and returns what change
// the record is.
//
// With EnvelopeDebezium the row is the after image for op "c", "r" and "u"
// (OpUpsert; a null after fails) and the before image for "d" (OpDelete;
// when before is null nothing is appended and Change.NeedKey is set); op
// "t" is OpTruncate with no row; any other op ("m", a logical decoding
// message) fails naming it. The image written is checked as Transcoder
// checks a row; the rest of the envelope, the other image included, only
// as Avro (lengths, union and enum indexes, booleans).
//
// A body that does not decode, or whose change cannot be read, fails with
// an error wrapping ErrDecode that names the field path, e.g.
// `after.price: decimal of 9 bytes exceeds precision 10`; a row the table
// cannot take fails as with Transcoder. On error dst is returned as given
// and the Change is zero.
func (t *ChangeTranscoder) Append(dst, body, extraField []byte) ([]byte, Change, error) {
	if t.spec.Envelope == EnvelopeNone {
		return t.appendPlain(dst, body, extraField)
	}
	return t.appendDebezium(dst, body, extraField)
}

// slot is where a captured value goes.
type slot uint8

const (
	slotNone slot = iota
	slotDeleted
	slotSeq0 // .. slotSeq0+MaxSequenceSections-1
	slotSeq1
	slotSeq2
	// the Debezium source position
	slotConnector
	slotSequence
	slotLSN
	slotFile
	slotPos
	slotRow
)

// sourceSlots are the source fields a Debezium position is read from.
var sourceSlots = map[string]slot{
	"connector": slotConnector, "sequence": slotSequence, "lsn": slotLSN,
	"file": slotFile, "pos": slotPos, "row": slotRow,
}

// rowCapture is what the kCapture nodes of a row read.
type rowCapture struct {
	deleted bool
	seq     [MaxSequenceSections]uint64
}

// capture reads again the value n.elem just read at start (so it is
// there, and valid), and keeps it.
func (st *tstate) capture(n *node, start int) error {
	base := n.elem
	for base.kind == kCapture { // a field listed twice
		base = base.elem
	}
	b, pos := st.buf, start
	if base.opt {
		_, pos = varintAt(b, pos)
	}
	if n.slot == slotDeleted {
		switch base.kind {
		case kBool:
			st.change.deleted = b[pos] == 1
		case kString:
			size, pos := varintAt(b, pos)
			st.change.deleted = string(b[pos:pos+int(size>>1)]) == "true"
		}
		return nil
	}
	u, _ := varintAt(b, pos)
	v := int64(u>>1) ^ -int64(u&1)
	if base.kind == kInt {
		w := uint32(u) // as readInt: the low 32 bits, then zigzag
		v = int64(int32((w >> 1) ^ -(w & 1)))
	}
	if v < 0 {
		return fail("sequence value %d is negative; sequence sections are unsigned", v)
	}
	st.change.seq[n.slot-slotSeq0] = uint64(v)
	return nil
}

// varintAt reads the (zigzag-encoded, here undecoded) varint at b[pos:],
// one the transcoder has already read successfully.
func varintAt(b []byte, pos int) (uint64, int) {
	var v uint64
	for s := uint(0); s < 70 && pos < len(b); s += 7 {
		c := b[pos]
		pos++
		v |= uint64(c&0x7f) << s
		if c < 0x80 {
			break
		}
	}
	return v, pos
}

func (t *ChangeTranscoder) appendPlain(dst, body, extra []byte) ([]byte, Change, error) {
	st := tstate{buf: body, t: t.row}
	out, err := t.row.run(&st, dst, extra)
	if err != nil {
		return dst, Change{}, err
	}
	ch := Change{Op: OpUpsert, SeqLen: t.nseq, Seq: st.change.seq}
	if st.change.deleted {
		ch.Op = OpDelete
	}
	return out, ch, nil
}

// sourceCapture is the Debezium source position as read: slices of the
// body, nil when absent or null.
type sourceCapture struct {
	connector, sequence, file []byte
	lsn, pos, row             int64
	has                       uint8 // bits: 1 lsn, 2 pos, 4 row
}

func (t *ChangeTranscoder) appendDebezium(dst, body, extra []byte) ([]byte, Change, error) {
	start := len(dst)
	st := tstate{buf: body, t: t.row}
	var src sourceCapture
	var op []byte
	opSet := false
	before, after := -1, -1 // body offsets of the images; -1: null
	var afterErr, afterEnc error
	var err error
	for i := range t.env {
		f := &t.env[i]
		switch f.role {
		case roleOther:
			err = f.skip.skip(&st, &src)
		case roleOp:
			var present bool
			if present, err = f.present(&st); err == nil && present {
				op, err = st.bytes()
				opSet = err == nil
			}
		case roleBefore:
			var present bool
			if present, err = f.present(&st); err == nil && present {
				before = st.pos
				err = f.skip.skip(&st, nil)
			}
		case roleAfter:
			// Most changes write the after image: write it now, and read it
			// again as Avro alone only if that fails (the failure matters
			// only if the op turns out to want it).
			var present bool
			if present, err = f.present(&st); err != nil || !present {
				break
			}
			after = st.pos
			mark := len(dst)
			out, rerr := t.row.root.run(&st, dst, extra)
			if rerr == nil {
				dst, afterEnc = out, st.enc
			} else {
				dst, afterErr = dst[:mark], rerr
				st.pos = after
				err = f.skip.skip(&st, nil)
			}
			st.enc = nil
		}
		if err != nil {
			err = at(err, f.name)
			break
		}
	}
	if err == nil && st.pos < len(body) {
		err = fail("trailing bytes after the record")
	}
	var ch Change
	if err == nil {
		ch, err = t.op(op, opSet, before, after)
	}
	if err == nil {
		switch ch.Op {
		case OpUpsert:
			if afterErr != nil {
				err = at(afterErr, "after")
			} else if afterEnc != nil {
				t.row.release(&st)
				return dst[:start], Change{}, afterEnc
			}
		case OpDelete:
			dst = dst[:start]
			if before >= 0 {
				st.pos, st.enc = before, nil
				if dst, err = t.row.root.run(&st, dst, extra); err != nil {
					err = at(err, "before")
				} else if st.enc != nil {
					t.row.release(&st)
					return dst[:start], Change{}, st.enc
				}
			}
		default:
			dst = dst[:start]
		}
	}
	t.row.release(&st)
	if err != nil {
		return dst[:start], Change{}, fmt.Errorf("%w: schema %d: %v", ErrDecode, t.id, err)
	}
	if t.spec.DebeziumSequence {
		t.position(&ch, &src)
	}
	return dst, ch, nil
}

// present reads an image's or op's union index, if it has one: false for
// null.
func (f *envField) present(st *tstate) (bool, error) {
	if !f.opt {
		return true, nil
	}
	i, err := st.unionIndex(f.n)
	return i != f.null, err
}

// op turns the envelope's op into the change, checking that its image is
// there.
func (t *ChangeTranscoder) op(op []byte, set bool, before, after int) (Change, error) {
	if !set {
		return Change{}, at(fail("op is null"), "op")
	}
	if len(op) == 1 {
		switch op[0] {
		case 'c', 'r', 'u':
			if after < 0 {
				return Change{}, at(fail("op %q has no after image (after is null)", op), "after")
			}
			return Change{Op: OpUpsert}, nil
		case 'd':
			return Change{Op: OpDelete, NeedKey: before < 0}, nil
		case 't':
			return Change{Op: OpTruncate}, nil
		case 'm':
			return Change{}, at(fail(`op "m" is a logical decoding message, not a change of a row`), "op")
		}
	}
	return Change{}, at(fail("op %s is not a Debezium row change (c, r, u, d or t)", quoteClip(op)), "op")
}

// positionTexts are a ChangeTranscoder's Change.NoPosition texts.
type positionTexts struct {
	noSource, noConnector, otherConnector, pgNone, pgSequence, mysqlNone, mysqlFile string
}

func newPositionTexts(hasSource bool, source string) positionTexts {
	const tail = ": the change carries no source position"
	p := positionTexts{
		noConnector:    "source has no connector (null, or not a string field)" + tail,
		otherConnector: fmt.Sprintf("source.connector is neither postgresql nor mysql (source record %s)", source) + tail,
		pgNone:         "postgresql source has neither a sequence nor an lsn" + tail,
		pgSequence:     "postgresql source.sequence is not a JSON array of two LSNs (strings of digits, or null)" + tail,
		mysqlNone:      "mysql source lacks file, pos or row, or one is negative" + tail,
		mysqlFile:      "mysql source.file does not end in a binlog number (as mysql-bin.000003 does)" + tail,
	}
	if !hasSource {
		p.noSource = "the envelope has no source record" + tail
	}
	return p
}

// position fills ch's sequence from the source position, or says why not.
func (t *ChangeTranscoder) position(ch *Change, src *sourceCapture) {
	texts := &t.noPosition
	switch {
	case texts.noSource != "":
		ch.NoPosition = texts.noSource
	case src.connector == nil:
		ch.NoPosition = texts.noConnector
	case string(src.connector) == "postgresql":
		switch {
		case src.sequence != nil:
			a, b, ok := parseLSNPair(src.sequence)
			if !ok {
				ch.NoPosition = texts.pgSequence
				return
			}
			ch.Seq[0], ch.Seq[1], ch.SeqLen = a, b, 2
		case src.has&1 != 0 && src.lsn >= 0:
			ch.Seq[0], ch.SeqLen = uint64(src.lsn), 1
		default:
			ch.NoPosition = texts.pgNone
		}
	case string(src.connector) == "mysql", string(src.connector) == "mariadb":
		if src.file == nil || src.has&6 != 6 || src.pos < 0 || src.row < 0 {
			ch.NoPosition = texts.mysqlNone
			return
		}
		n, ok := binlogNumber(src.file)
		if !ok {
			ch.NoPosition = texts.mysqlFile
			return
		}
		ch.Seq = [MaxSequenceSections]uint64{n, uint64(src.pos), uint64(src.row)}
		ch.SeqLen = 3
	default:
		ch.NoPosition = texts.otherConnector
	}
}

// parseLSNPair parses PostgreSQL's source.sequence, a JSON array of two
// elements, each null (0) or a string of decimal digits (a uint64).
func parseLSNPair(b []byte) (uint64, uint64, bool) {
	i := jsonSpace(b, 0)
	if i >= len(b) || b[i] != '[' {
		return 0, 0, false
	}
	var out [2]uint64
	for k := range out {
		i = jsonSpace(b, i+1)
		v, next, ok := lsnElem(b, i)
		if !ok {
			return 0, 0, false
		}
		out[k] = v
		i = jsonSpace(b, next)
		want := byte(',')
		if k == 1 {
			want = ']'
		}
		if i >= len(b) || b[i] != want {
			return 0, 0, false
		}
	}
	if jsonSpace(b, i+1) != len(b) {
		return 0, 0, false
	}
	return out[0], out[1], true
}

func jsonSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// lsnElem reads null or "digits" at b[i:].
func lsnElem(b []byte, i int) (uint64, int, bool) {
	if bytes.HasPrefix(b[i:], []byte("null")) {
		return 0, i + 4, true
	}
	if i >= len(b) || b[i] != '"' {
		return 0, 0, false
	}
	end := bytes.IndexByte(b[i+1:], '"')
	if end < 0 {
		return 0, 0, false
	}
	v, ok := parseDigits(b[i+1 : i+1+end])
	return v, i + end + 2, ok
}

// parseDigits parses a non-empty string of decimal digits as a uint64.
func parseDigits(b []byte) (uint64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

// binlogNumber is the number after the last '.' of a MySQL binlog file
// name.
func binlogNumber(file []byte) (uint64, bool) {
	i := bytes.LastIndexByte(file, '.')
	if i < 0 {
		return 0, false
	}
	return parseDigits(file[i+1:])
}

// ---- reading past Avro values ----

// skipNode reads past one Avro value, checking only that it is Avro: that
// varints end, lengths and block counts fit in the body, booleans are 0 or
// 1 and union and enum indexes are in range. Strings are not checked for
// UTF-8 nor logical values for range: nothing of them is written.
type skipNode struct {
	kind     skipKind
	size     int         // skFixed: bytes; skEnum: symbols
	fields   []skipField // skRecord
	elem     *skipNode   // skArray items, skMap values
	branches []*skipNode // skUnion
	names    []string    // skUnion of several non-null branches: their names, for paths
	slot     slot        // a source position field to keep
}

type skipField struct {
	name string
	node *skipNode
}

type skipKind uint8

const (
	skNull skipKind = iota
	skBool
	skInt
	skLong
	skFloat
	skDouble
	skBytes // bytes and string
	skFixed
	skEnum
	skRecord
	skArray
	skMap
	skUnion
)

// skipOf builds the skipNode of a. slots name fields of the first record
// reached (through unions) whose values to keep, when of the right type.
func skipOf(a avro.Schema, slots map[string]slot) *skipNode {
	switch a := a.(type) {
	case *avro.RefSchema:
		return skipOf(a.Schema(), slots)
	case *avro.PrimitiveSchema:
		switch a.Type() {
		case avro.Boolean:
			return &skipNode{kind: skBool}
		case avro.Int:
			return &skipNode{kind: skInt}
		case avro.Long:
			return &skipNode{kind: skLong}
		case avro.Float:
			return &skipNode{kind: skFloat}
		case avro.Double:
			return &skipNode{kind: skDouble}
		}
		return &skipNode{kind: skBytes}
	case *avro.RecordSchema:
		n := &skipNode{kind: skRecord}
		for _, f := range a.Fields() {
			child := skipOf(f.Type(), nil)
			if sl, ok := slots[f.Name()]; ok && slotFits(sl, f.Type()) {
				if child.kind == skUnion {
					for _, b := range child.branches {
						if b.kind != skNull {
							b.slot = sl
						}
					}
				} else {
					child.slot = sl
				}
			}
			n.fields = append(n.fields, skipField{name: f.Name(), node: child})
		}
		return n
	case *avro.EnumSchema:
		return &skipNode{kind: skEnum, size: len(a.Symbols())}
	case *avro.FixedSchema:
		return &skipNode{kind: skFixed, size: a.Size()}
	case *avro.ArraySchema:
		return &skipNode{kind: skArray, elem: skipOf(a.Items(), nil)}
	case *avro.MapSchema:
		return &skipNode{kind: skMap, elem: skipOf(a.Values(), nil)}
	case *avro.UnionSchema:
		n := &skipNode{kind: skUnion}
		nonNull := 0
		for _, t := range a.Types() {
			n.branches = append(n.branches, skipOf(t, slots))
			if t.Type() != avro.Null {
				nonNull++
			}
		}
		if nonNull > 1 {
			for _, t := range a.Types() {
				n.names = append(n.names, branchName(t))
			}
		}
		return n
	}
	return &skipNode{kind: skNull} // null
}

// slotFits: the position fields are kept when they are a string (STRING),
// or an int or long (INTEGER), or a union of null and one.
func slotFits(sl slot, a avro.Schema) bool {
	p, ok := optional(a).(*avro.PrimitiveSchema)
	if !ok {
		return false
	}
	switch sl {
	case slotConnector, slotSequence, slotFile:
		return stringColumn(p)
	}
	return integerColumn(p)
}

func (k *skipNode) skip(st *tstate, c *sourceCapture) error {
	// Most varints are one byte: read those here, without a call.
	if p := st.pos; p < len(st.buf) && st.buf[p] < 0x80 {
		switch k.kind {
		case skInt, skLong:
			st.pos = p + 1
			if k.slot != slotNone && c != nil {
				b := st.buf[p]
				c.setInt(k.slot, int64(b>>1)^-int64(b&1))
			}
			return nil
		case skUnion:
			b := st.buf[p]
			if i := int64(b>>1) ^ -int64(b&1); i >= 0 && i < int64(len(k.branches)) {
				st.pos = p + 1
				br := k.branches[i]
				if br.kind == skNull {
					return nil
				}
				err := br.skip(st, c)
				if err != nil && k.names != nil {
					err = at(err, k.names[i])
				}
				return err
			}
		}
	}
	switch k.kind {
	case skNull:
		return nil
	case skBool:
		if st.pos >= len(st.buf) {
			return errEarly()
		}
		b := st.buf[st.pos]
		st.pos++
		if b > 1 {
			return fail("avro: ReadBool: invalid bool")
		}
	case skInt:
		v, err := st.readInt()
		if err != nil {
			return err
		}
		if k.slot != slotNone && c != nil {
			c.setInt(k.slot, int64(v))
		}
	case skLong:
		v, err := st.readLong()
		if err != nil {
			return err
		}
		if k.slot != slotNone && c != nil {
			c.setInt(k.slot, v)
		}
	case skFloat:
		_, err := st.take(4)
		return err
	case skDouble:
		_, err := st.take(8)
		return err
	case skBytes:
		b, err := st.bytes()
		if err != nil {
			return err
		}
		if k.slot != slotNone && c != nil {
			c.setBytes(k.slot, b)
		}
	case skFixed:
		_, err := st.take(k.size)
		return err
	case skEnum:
		i, err := st.readInt()
		if err != nil {
			return err
		}
		if i < 0 || int(i) >= k.size {
			return fail("enum index %d out of range, the enum has %d symbols", i, k.size)
		}
	case skRecord:
		for i := range k.fields {
			if err := k.fields[i].node.skip(st, c); err != nil {
				return at(err, k.fields[i].name)
			}
		}
	case skArray, skMap:
		count := 0
		for {
			blk, err := st.blockCount()
			if err != nil {
				return at(err, "["+strconv.Itoa(count)+"]")
			}
			if blk == 0 {
				return nil
			}
			for range blk {
				if k.kind == skMap {
					if _, err := st.bytes(); err != nil {
						return at(at(err, "key"), "["+strconv.Itoa(count)+"]")
					}
				}
				if err := k.elem.skip(st, c); err != nil {
					return at(err, "["+strconv.Itoa(count)+"]")
				}
				count++
			}
		}
	case skUnion:
		i, err := st.unionIndex(len(k.branches))
		if err != nil {
			return err
		}
		if err := k.branches[i].skip(st, c); err != nil {
			if k.names != nil {
				err = at(err, k.names[i])
			}
			return err
		}
	}
	return nil
}

func (c *sourceCapture) setInt(sl slot, v int64) {
	switch sl {
	case slotLSN:
		c.lsn, c.has = v, c.has|1
	case slotPos:
		c.pos, c.has = v, c.has|2
	case slotRow:
		c.row, c.has = v, c.has|4
	}
}

func (c *sourceCapture) setBytes(sl slot, b []byte) {
	switch sl {
	case slotConnector:
		c.connector = b
	case slotSequence:
		c.sequence = b
	case slotFile:
		c.file = b
	}
}
