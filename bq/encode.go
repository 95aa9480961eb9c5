package bq

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"unicode/utf8"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"cloud.google.com/go/bigquery/storage/managedwriter/adapt"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// encoder is one version of a table's schema as rows are written to it:
// the wire descriptor of its rows (proto2 messages, field i+1 for column i)
// and the plans Format.AppendColumn encodes a column from (a value of the
// row value contract, such as the Kafka metadata column) into that wire
// format directly. Rows themselves come as bytes from a transcoder (package
// schema). It is immutable once built apart from its scratch pool, so
// appends share it freely; a schema change builds a new one.
type encoder struct {
	schema  bigquery.Schema               // the table schema it was built from
	dp      *descriptorpb.DescriptorProto // self-contained descriptor for the wire
	dpSize  int                           // its encoded size, part of every request budget
	root    *msgPlan
	scratch sync.Pool // *encodeState, so concurrent AppendColumn calls do not share slots
	format  *Format   // its exported face

	// change: rows are changes to a table with a primary key, and the
	// descriptor has the pseudo-columns _CHANGE_TYPE and
	// _CHANGE_SEQUENCE_NUMBER as fields changeNum and sequenceNum, right
	// after the columns' (see change.go).
	change                 bool
	changeNum, sequenceNum protowire.Number
	changeTag, sequenceTag uint64 // their keys, as length-delimited fields
}

// encodeState is one AppendColumn call's scratch, reused across calls.
type encodeState struct {
	slots []any // stack of per-record column values, for records whose keys are not exact column names
}

type msgPlan struct {
	path    string                // the record's dotted path; "" for the row
	fields  []*fieldPlan          // in schema (= field number) order
	byName  map[string]*fieldPlan // exact column name
	byLower map[string]*fieldPlan // lower-cased, as BigQuery names are case-insensitive
}

type fieldPlan struct {
	path     string             // dotted column path for errors
	name     string             // column name as in the schema
	idx      int                // index in msgPlan.fields
	tag      uint64             // encoded key of one value: field number and wire type (bytes when packed)
	typ      bigquery.FieldType // canonical
	repeated bool
	packed   bool // repeated scalars written as one length-delimited run, as the descriptor says
	required bool
	sub      *msgPlan // RECORD
}

// wireTypes are the contract's overrides of adapt's default proto types: the
// string forms need no client-side conversion and BigQuery accepts them.
var wireTypes = []adapt.ProtoConversionOption{
	adapt.WithProtoMapping(adapt.ProtoMapping{FieldType: storagepb.TableFieldSchema_NUMERIC, Type: descriptorpb.FieldDescriptorProto_TYPE_STRING}),
	adapt.WithProtoMapping(adapt.ProtoMapping{FieldType: storagepb.TableFieldSchema_BIGNUMERIC, Type: descriptorpb.FieldDescriptorProto_TYPE_STRING}),
	adapt.WithProtoMapping(adapt.ProtoMapping{FieldType: storagepb.TableFieldSchema_TIME, Type: descriptorpb.FieldDescriptorProto_TYPE_STRING}),
	adapt.WithProtoMapping(adapt.ProtoMapping{FieldType: storagepb.TableFieldSchema_DATETIME, Type: descriptorpb.FieldDescriptorProto_TYPE_STRING}),
}

// newEncoder builds the descriptor and encoding plan for a table schema.
// Columns of types bq cannot write (INTERVAL, RANGE, ...) are left out of
// the descriptor: BigQuery matches proto fields to columns by name, and rows
// naming such a column are rejected as unknown. With change, the
// descriptor ends with the CDC pseudo-columns, which BigQuery reads from
// the writer's descriptor and never from the table's schema.
func newEncoder(schema bigquery.Schema, change bool) (*encoder, error) {
	writable := writableSchema(schema)
	if len(writable) == 0 {
		return nil, fmt.Errorf("table has no column bq can write")
	}
	if change {
		for _, name := range []string{changeTypeColumn, changeSequenceColumn} {
			if f := topLevel(writable, name); f != nil {
				return nil, fmt.Errorf("column %q has the name of a change pseudo-column", f.Name)
			}
		}
	}
	ts, err := adapt.BQSchemaToStorageTableSchema(writable)
	if err != nil {
		return nil, fmt.Errorf("convert schema: %w", err)
	}
	d, err := adapt.StorageSchemaToProtoDescriptorWithOptions(ts, "root", wireTypes...)
	if err != nil {
		return nil, fmt.Errorf("build proto descriptor: %w", err)
	}
	md, ok := d.(protoreflect.MessageDescriptor)
	if !ok {
		return nil, fmt.Errorf("build proto descriptor: got %T, want a message descriptor", d)
	}
	dp, err := adapt.NormalizeDescriptor(md)
	if err != nil {
		return nil, fmt.Errorf("normalize proto descriptor: %w", err)
	}
	root, err := newMsgPlan(md, writable, "")
	if err != nil {
		return nil, err
	}
	enc := &encoder{schema: schema, dp: dp, root: root}
	if change {
		// adapt numbers the columns 1..n; the pseudo-columns follow.
		enc.change = true
		enc.changeNum = protowire.Number(len(writable) + 1)
		enc.sequenceNum = enc.changeNum + 1
		enc.changeTag = protowire.EncodeTag(enc.changeNum, protowire.BytesType)
		enc.sequenceTag = protowire.EncodeTag(enc.sequenceNum, protowire.BytesType)
		dp.Field = append(dp.Field, pseudoColumn(changeTypeColumn, enc.changeNum), pseudoColumn(changeSequenceColumn, enc.sequenceNum))
	}
	enc.dpSize = proto.Size(dp)
	enc.format = &Format{enc: enc, columns: writable}
	return enc, nil
}

// pseudoColumn is the descriptor field of a CDC pseudo-column: an optional
// string, as BigQuery documents both.
func pseudoColumn(name string, num protowire.Number) *descriptorpb.FieldDescriptorProto {
	return &descriptorpb.FieldDescriptorProto{
		Name:   proto.String(name),
		Number: proto.Int32(int32(num)),
		Label:  descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
		Type:   descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(),
	}
}

var writableTypes = map[bigquery.FieldType]bool{
	bigquery.BooleanFieldType: true, bigquery.IntegerFieldType: true, bigquery.FloatFieldType: true,
	bigquery.StringFieldType: true, bigquery.BytesFieldType: true, bigquery.NumericFieldType: true,
	bigquery.BigNumericFieldType: true, bigquery.DateFieldType: true, bigquery.TimeFieldType: true,
	bigquery.DateTimeFieldType: true, bigquery.TimestampFieldType: true, bigquery.RecordFieldType: true,
	bigquery.GeographyFieldType: true, bigquery.JSONFieldType: true,
}

// protoKinds is the proto kind each writable type has in the descriptor;
// appendScalar writes exactly these, so newEncoder refuses a descriptor that
// disagrees rather than send bytes BigQuery would misread.
var protoKinds = map[bigquery.FieldType]protoreflect.Kind{
	bigquery.BooleanFieldType: protoreflect.BoolKind, bigquery.IntegerFieldType: protoreflect.Int64Kind,
	bigquery.FloatFieldType: protoreflect.DoubleKind, bigquery.StringFieldType: protoreflect.StringKind,
	bigquery.BytesFieldType: protoreflect.BytesKind, bigquery.NumericFieldType: protoreflect.StringKind,
	bigquery.BigNumericFieldType: protoreflect.StringKind, bigquery.DateFieldType: protoreflect.Int32Kind,
	bigquery.TimeFieldType: protoreflect.StringKind, bigquery.DateTimeFieldType: protoreflect.StringKind,
	bigquery.TimestampFieldType: protoreflect.Int64Kind, bigquery.RecordFieldType: protoreflect.MessageKind,
	bigquery.GeographyFieldType: protoreflect.StringKind, bigquery.JSONFieldType: protoreflect.StringKind,
}

// writableSchema copies s with canonical type names, without the columns
// (and empty records) bq cannot write.
func writableSchema(s bigquery.Schema) bigquery.Schema {
	var out bigquery.Schema
	for _, f := range s {
		if f == nil {
			continue
		}
		t := canonicalType(f.Type)
		if !writableTypes[t] {
			continue
		}
		nf := *f
		nf.Type = t
		nf.Schema = nil
		if t == bigquery.RecordFieldType {
			nf.Schema = writableSchema(f.Schema)
			if len(nf.Schema) == 0 {
				continue
			}
		}
		out = append(out, &nf)
	}
	return out
}

func newMsgPlan(md protoreflect.MessageDescriptor, s bigquery.Schema, prefix string) (*msgPlan, error) {
	p := &msgPlan{
		path:    strings.TrimSuffix(prefix, "."),
		fields:  make([]*fieldPlan, 0, len(s)),
		byName:  make(map[string]*fieldPlan, len(s)),
		byLower: make(map[string]*fieldPlan, len(s)),
	}
	for i, f := range s {
		// adapt numbers fields 1..n in schema order.
		fd := md.Fields().ByNumber(protoreflect.FieldNumber(i + 1))
		if fd == nil {
			return nil, fmt.Errorf("proto descriptor lacks field %d for column %q", i+1, prefix+f.Name)
		}
		fp := &fieldPlan{
			path:     prefix + f.Name,
			name:     f.Name,
			idx:      i,
			typ:      f.Type,
			repeated: f.Repeated,
			required: f.Required && !f.Repeated,
		}
		if want := protoKinds[f.Type]; fd.Kind() != want || fd.IsList() != f.Repeated || fd.IsMap() {
			return nil, fmt.Errorf("proto field %s for column %q is %v %v, want %s as %v", fd.Name(), fp.path, fd.Cardinality(), fd.Kind(), f.Type, want)
		}
		wt := protowire.BytesType
		switch fd.Kind() {
		case protoreflect.BoolKind, protoreflect.Int32Kind, protoreflect.Int64Kind:
			wt = protowire.VarintType
		case protoreflect.DoubleKind:
			wt = protowire.Fixed64Type
		}
		if fd.IsPacked() {
			fp.packed = true
			wt = protowire.BytesType
		}
		fp.tag = protowire.EncodeTag(fd.Number(), wt)
		if f.Type == bigquery.RecordFieldType {
			sub, err := newMsgPlan(fd.Message(), f.Schema, fp.path+".")
			if err != nil {
				return nil, err
			}
			fp.sub = sub
		}
		p.fields = append(p.fields, fp)
		p.byName[f.Name] = fp
		p.byLower[strings.ToLower(f.Name)] = fp
	}
	return p, nil
}

func (p *msgPlan) lookup(name string) *fieldPlan {
	if f, ok := p.byName[name]; ok {
		return f
	}
	var buf [64]byte
	if lower, ok := asciiLower(buf[:0], name); ok {
		return p.byLower[string(lower)] // no allocation: the compiler looks up the bytes in place
	}
	return p.byLower[strings.ToLower(name)]
}

// asciiLower appends s lower-cased to dst, as strings.ToLower would, if s
// is ASCII; most column names are, and this spares a row one allocation per
// key that differs in case.
func asciiLower(dst []byte, s string) ([]byte, bool) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= utf8.RuneSelf {
			return nil, false
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst, true
}

// appendMsg appends the fields of one message (a record, or the row) to b,
// in field number order. Every problem is an error naming the column; it
// never panics on bad input. Errors rank as the dynamicpb encoder's did: a
// bad value first, then an unknown column, then a missing REQUIRED one.
func (p *msgPlan) appendMsg(st *encodeState, b []byte, row map[string]any) ([]byte, error) {
	if 2*len(row) < len(p.fields) {
		// A sparse row: walking its keys beats probing every column.
		return p.appendMsgByKeys(st, b, row)
	}
	start := len(b)
	found := 0
	var missing *fieldPlan
	for _, f := range p.fields {
		v, ok := row[f.name]
		if ok {
			found++
		}
		if v == nil {
			if f.required && missing == nil {
				missing = f
			}
			continue
		}
		var err error
		if b, err = f.appendValue(st, b, v); err != nil {
			return b, err
		}
	}
	if found != len(row) {
		// A key is not an exact column name: unknown, or differs in case.
		return p.appendMsgByKeys(st, b[:start], row)
	}
	if missing != nil {
		return b, missing.missingErr()
	}
	return b, nil
}

// appendMsgByKeys is appendMsg resolving each key of row case-insensitively.
// It keeps the values in st.slots so fields are still written in order.
func (p *msgPlan) appendMsgByKeys(st *encodeState, b []byte, row map[string]any) ([]byte, error) {
	base := len(st.slots)
	st.slots = append(st.slots, make([]any, len(p.fields))...)
	// Records below this one push onto st.slots and may move it; this
	// level's values stay readable through slots all the same.
	slots := st.slots[base:]
	unknown, hasUnknown := "", false
	for name, v := range row {
		f := p.lookup(name)
		if f == nil {
			if !hasUnknown || name < unknown {
				unknown, hasUnknown = name, true
			}
			continue
		}
		if v == nil {
			continue
		}
		if slots[f.idx] != nil {
			return b, fmt.Errorf("column %q: given twice (names differ only in case)", f.path)
		}
		if arr, ok := v.([]any); ok && f.repeated && len(arr) == 0 {
			continue // writes nothing, so a later spelling may still set the column
		}
		slots[f.idx] = v
	}
	for i, f := range p.fields {
		if v := slots[i]; v != nil {
			var err error
			if b, err = f.appendValue(st, b, v); err != nil {
				return b, err
			}
		}
	}
	if hasUnknown {
		if p.path != "" {
			return b, &unknownColumnError{fmt.Sprintf("record %q: unknown column %q", p.path, unknown)}
		}
		return b, &unknownColumnError{fmt.Sprintf("unknown column %q", unknown)}
	}
	for i, f := range p.fields {
		if f.required && slots[i] == nil {
			return b, f.missingErr()
		}
	}
	st.slots = st.slots[:base] // AppendColumn clears the values it leaves
	return b, nil
}

// unknownColumnError is a row naming a column the schema lacks; it is
// ErrUnknownColumn without that text in its message.
type unknownColumnError struct{ msg string }

func (e *unknownColumnError) Error() string        { return e.msg }
func (e *unknownColumnError) Is(target error) bool { return target == ErrUnknownColumn }

func (f *fieldPlan) missingErr() error {
	return fmt.Errorf("column %q: REQUIRED but missing or null", f.path)
}

// appendValue appends column f holding the non-nil value v.
func (f *fieldPlan) appendValue(st *encodeState, b []byte, v any) ([]byte, error) {
	if !f.repeated {
		if f.sub != nil {
			if msg, ok := v.(Message); ok {
				return protowire.AppendBytes(f.appendTag(b), msg), nil
			}
			if fs, ok := v.(Fields); ok {
				return f.appendFields(st, b, fs)
			}
			m, ok := v.(map[string]any)
			if !ok {
				return b, fmt.Errorf("column %q: RECORD wants map[string]any, got %T", f.path, v)
			}
			return f.appendRecord(st, b, m)
		}
		return f.appendScalar(f.appendTag(b), v)
	}
	arr, ok := v.([]any)
	if !ok {
		return b, fmt.Errorf("column %q: REPEATED wants []any, got %T", f.path, v)
	}
	if len(arr) == 0 {
		return b, nil
	}
	var start int
	if f.packed {
		b, start = beginLen(f.appendTag(b))
	}
	for i, el := range arr {
		if el == nil {
			return b, fmt.Errorf("column %q: element %d is null; BigQuery arrays cannot hold NULL", f.path, i)
		}
		var err error
		switch {
		case f.sub != nil:
			if msg, ok := el.(Message); ok {
				b = protowire.AppendBytes(f.appendTag(b), msg)
				continue
			}
			m, ok := el.(map[string]any)
			if !ok {
				return b, fmt.Errorf("column %q: element %d: RECORD wants map[string]any, got %T", f.path, i, el)
			}
			b, err = f.appendRecord(st, b, m)
		case f.packed:
			b, err = f.appendScalar(b, el)
		default:
			b, err = f.appendScalar(f.appendTag(b), el)
		}
		if err != nil {
			return b, fmt.Errorf("element %d: %w", i, err)
		}
	}
	if f.packed {
		b = endLen(b, start)
	}
	return b, nil
}

// appendTag appends the field's key; most fit one byte, and AppendVarint
// is too large to inline.
func (f *fieldPlan) appendTag(b []byte) []byte {
	if f.tag < 0x80 {
		return append(b, byte(f.tag))
	}
	return protowire.AppendVarint(b, f.tag)
}

// appendRecord appends one RECORD value as a length-delimited message.
func (f *fieldPlan) appendRecord(st *encodeState, b []byte, m map[string]any) ([]byte, error) {
	b, start := beginLen(f.appendTag(b))
	b, err := f.sub.appendMsg(st, b, m)
	if err != nil {
		return b, err
	}
	return endLen(b, start), nil
}

// appendFields appends one RECORD value given by position.
func (f *fieldPlan) appendFields(st *encodeState, b []byte, fs Fields) ([]byte, error) {
	if len(fs) > len(f.sub.fields) {
		return b, fmt.Errorf("column %q: %d values for a RECORD of %d columns", f.path, len(fs), len(f.sub.fields))
	}
	b, start := beginLen(f.appendTag(b))
	for i, sf := range f.sub.fields {
		var v any
		if i < len(fs) {
			v = fs[i]
		}
		if v == nil {
			if sf.required {
				return b, sf.missingErr()
			}
			continue
		}
		var err error
		if b, err = sf.appendValue(st, b, v); err != nil {
			return b, err
		}
	}
	return endLen(b, start), nil
}

// beginLen reserves one byte for the length of what follows, which fits
// most records; endLen widens it when it does not.
func beginLen(b []byte) ([]byte, int) {
	return append(b, 0), len(b) + 1
}

// endLen writes the length of b[start:] before it, shifting it right if the
// length needs more than the reserved byte.
func endLen(b []byte, start int) []byte {
	n := len(b) - start
	if n < 0x80 {
		b[start-1] = byte(n)
		return b
	}
	k := protowire.SizeVarint(uint64(n))
	b = append(b, make([]byte, k-1)...)
	copy(b[start-1+k:], b[start:start+n])
	protowire.AppendVarint(b[:start-1], uint64(n)) // fills b[start-1:start-1+k] in place
	return b
}

// Limits BigQuery enforces, checked here so a bad value is rejected with a
// clear message instead of failing the whole request.
const (
	minDate      = -719162            // 0001-01-01 in days since the epoch
	maxDate      = 2932896            // 9999-12-31
	minTimestamp = -62135596800000000 // 0001-01-01 00:00:00 UTC in µs
	maxTimestamp = 253402300799999999 // 9999-12-31 23:59:59.999999 UTC in µs
)

// appendScalar validates v for column f and appends its wire value (without
// the key); protoKinds fixes the proto kind each type is written as.
func (f *fieldPlan) appendScalar(b []byte, v any) ([]byte, error) {
	switch f.typ {
	case bigquery.BooleanFieldType:
		if x, ok := v.(bool); ok {
			return protowire.AppendVarint(b, protowire.EncodeBool(x)), nil
		}
	case bigquery.IntegerFieldType:
		if n, ok := asInt64(v); ok {
			return protowire.AppendVarint(b, uint64(n)), nil
		}
		return b, f.mismatch("an integer (int64, int, int32)", v)
	case bigquery.FloatFieldType:
		switch x := v.(type) {
		case float64:
			return protowire.AppendFixed64(b, math.Float64bits(x)), nil
		case float32:
			return protowire.AppendFixed64(b, math.Float64bits(float64(x))), nil
		}
	case bigquery.StringFieldType, bigquery.GeographyFieldType, bigquery.JSONFieldType:
		if s, ok := v.(string); ok {
			if !utf8.ValidString(s) {
				return b, fmt.Errorf("column %q: %s is not valid UTF-8", f.path, f.typ)
			}
			return protowire.AppendString(b, s), nil
		}
	case bigquery.BytesFieldType:
		if x, ok := v.([]byte); ok {
			return protowire.AppendBytes(b, x), nil
		}
	case bigquery.NumericFieldType, bigquery.BigNumericFieldType:
		if s, ok := v.(string); ok {
			maxInt := 29 // NUMERIC: precision 38, scale 9
			if f.typ == bigquery.BigNumericFieldType {
				maxInt = 39 // BIGNUMERIC: 76.76 digits, scale 38; BigQuery judges the top digit
			}
			if !validDecimal(s, maxInt) {
				return b, fmt.Errorf("column %q: %q is not a %s (a decimal with at most %d integer digits)", f.path, s, f.typ, maxInt)
			}
			return protowire.AppendString(b, s), nil
		}
	case bigquery.DateFieldType:
		if n, ok := asInt64(v); ok {
			if n < minDate || n > maxDate {
				return b, fmt.Errorf("column %q: DATE %d days since 1970-01-01 is outside 0001-01-01..9999-12-31", f.path, n)
			}
			// An int32 is a sign-extended varint, like an int64.
			return protowire.AppendVarint(b, uint64(n)), nil
		}
		return b, f.mismatch("int32 days since 1970-01-01", v)
	case bigquery.TimeFieldType:
		if s, ok := v.(string); ok {
			if !validTime(s) {
				return b, fmt.Errorf("column %q: %q is not a TIME (HH:MM:SS[.ffffff])", f.path, s)
			}
			return protowire.AppendString(b, s), nil
		}
	case bigquery.DateTimeFieldType:
		if s, ok := v.(string); ok {
			if !validDateTime(s) {
				return b, fmt.Errorf("column %q: %q is not a DATETIME (YYYY-MM-DD HH:MM:SS[.ffffff])", f.path, s)
			}
			return protowire.AppendString(b, s), nil
		}
	case bigquery.TimestampFieldType:
		if n, ok := asInt64(v); ok {
			if n < minTimestamp || n > maxTimestamp {
				return b, fmt.Errorf("column %q: TIMESTAMP %dµs is outside 0001-01-01..9999-12-31", f.path, n)
			}
			return protowire.AppendVarint(b, uint64(n)), nil
		}
		return b, f.mismatch("int64 microseconds since the epoch", v)
	}
	return b, f.mismatch(wantGo[f.typ], v)
}

var wantGo = map[bigquery.FieldType]string{
	bigquery.BooleanFieldType:    "bool",
	bigquery.FloatFieldType:      "float64",
	bigquery.StringFieldType:     "string",
	bigquery.GeographyFieldType:  "string",
	bigquery.JSONFieldType:       "string",
	bigquery.BytesFieldType:      "[]byte",
	bigquery.NumericFieldType:    "a decimal string",
	bigquery.BigNumericFieldType: "a decimal string",
	bigquery.TimeFieldType:       "a string HH:MM:SS.ffffff",
	bigquery.DateTimeFieldType:   "a string YYYY-MM-DD HH:MM:SS.ffffff",
}

func (f *fieldPlan) mismatch(want string, v any) error {
	return fmt.Errorf("column %q: %s wants %s, got %T", f.path, f.typ, want, v)
}

func asInt64(v any) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case int:
		return int64(x), true
	case int32:
		return int64(x), true
	case int16:
		return int64(x), true
	case int8:
		return int64(x), true
	case uint32:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint8:
		return int64(x), true
	case uint64:
		if x <= math.MaxInt64 {
			return int64(x), true
		}
	case uint:
		if uint64(x) <= math.MaxInt64 {
			return int64(x), true
		}
	}
	return 0, false
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// validDecimal accepts [+-]digits[.digits][e[+-]digits] with at least one
// mantissa digit. Without an exponent the value may have at most maxInt
// significant integer digits; with one, BigQuery judges the range.
func validDecimal(s string, maxInt int) bool {
	i := 0
	if i < len(s) && (s[i] == '-' || s[i] == '+') {
		i++
	}
	digits, intDigits := 0, 0
	leading := true
	for i < len(s) && isDigit(s[i]) {
		if s[i] != '0' || !leading {
			leading = false
			intDigits++
		}
		digits++
		i++
	}
	if i < len(s) && s[i] == '.' {
		i++
		for i < len(s) && isDigit(s[i]) {
			digits++
			i++
		}
	}
	if digits == 0 {
		return false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '-' || s[i] == '+') {
			i++
		}
		start := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		return i == len(s) && i > start && i-start <= 4
	}
	return i == len(s) && intDigits <= maxInt
}

// num parses s[i:i+n] as an n-digit number, or -1.
func num(s string, i, n int) int {
	if i+n > len(s) {
		return -1
	}
	v := 0
	for _, c := range []byte(s[i : i+n]) {
		if !isDigit(c) {
			return -1
		}
		v = v*10 + int(c-'0')
	}
	return v
}

// validTime accepts HH:MM:SS with an optional fraction of 1-6 digits.
func validTime(s string) bool {
	if len(s) < 8 || s[2] != ':' || s[5] != ':' {
		return false
	}
	h, m, sec := num(s, 0, 2), num(s, 3, 2), num(s, 6, 2)
	if h < 0 || h > 23 || m < 0 || m > 59 || sec < 0 || sec > 59 {
		return false
	}
	if len(s) == 8 {
		return true
	}
	frac := s[9:]
	return s[8] == '.' && len(frac) >= 1 && len(frac) <= 6 && num(frac, 0, len(frac)) >= 0
}

// validDateTime accepts YYYY-MM-DD, a space or 'T', then a TIME.
func validDateTime(s string) bool {
	if len(s) < 19 || s[4] != '-' || s[7] != '-' || (s[10] != ' ' && s[10] != 'T') {
		return false
	}
	y, mo, d := num(s, 0, 4), num(s, 5, 2), num(s, 8, 2)
	if y < 1 || mo < 1 || mo > 12 || d < 1 || d > daysIn(y, mo) {
		return false
	}
	return validTime(s[11:])
}

func daysIn(y, m int) int {
	switch m {
	case 2:
		if y%4 == 0 && (y%100 != 0 || y%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	default:
		return 31
	}
}
