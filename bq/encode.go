package bq

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"unicode/utf8"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"cloud.google.com/go/bigquery/storage/managedwriter/adapt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// encoder turns rows (the row value contract) into serialized proto2
// messages for one version of a table's schema. It is immutable once built,
// so appends share it freely; a schema change builds a new one.
type encoder struct {
	schema bigquery.Schema               // the table schema it was built from
	dp     *descriptorpb.DescriptorProto // self-contained descriptor for the wire
	dpSize int                           // its encoded size, part of every request budget
	root   *msgPlan
}

type msgPlan struct {
	md       protoreflect.MessageDescriptor
	path     string                // the record's dotted path; "" for the row
	byName   map[string]*fieldPlan // exact column name
	byLower  map[string]*fieldPlan // lower-cased, as BigQuery names are case-insensitive
	required []*fieldPlan
}

type fieldPlan struct {
	path     string // dotted column path for errors
	fd       protoreflect.FieldDescriptor
	typ      bigquery.FieldType // canonical
	repeated bool
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
// naming such a column are rejected as unknown.
func newEncoder(schema bigquery.Schema) (*encoder, error) {
	writable := writableSchema(schema)
	if len(writable) == 0 {
		return nil, fmt.Errorf("table has no column bq can write")
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
	return &encoder{schema: schema, dp: dp, dpSize: proto.Size(dp), root: root}, nil
}

var writableTypes = map[bigquery.FieldType]bool{
	bigquery.BooleanFieldType: true, bigquery.IntegerFieldType: true, bigquery.FloatFieldType: true,
	bigquery.StringFieldType: true, bigquery.BytesFieldType: true, bigquery.NumericFieldType: true,
	bigquery.BigNumericFieldType: true, bigquery.DateFieldType: true, bigquery.TimeFieldType: true,
	bigquery.DateTimeFieldType: true, bigquery.TimestampFieldType: true, bigquery.RecordFieldType: true,
	bigquery.GeographyFieldType: true, bigquery.JSONFieldType: true,
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
		md:      md,
		path:    strings.TrimSuffix(prefix, "."),
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
			fd:       fd,
			typ:      f.Type,
			repeated: f.Repeated,
			required: f.Required && !f.Repeated,
		}
		if f.Type == bigquery.RecordFieldType {
			sub, err := newMsgPlan(fd.Message(), f.Schema, fp.path+".")
			if err != nil {
				return nil, err
			}
			fp.sub = sub
		}
		p.byName[f.Name] = fp
		p.byLower[strings.ToLower(f.Name)] = fp
		if fp.required {
			p.required = append(p.required, fp)
		}
	}
	return p, nil
}

// encode serializes one row. Every problem is an error naming the column;
// it never panics on bad input.
func (e *encoder) encode(row map[string]any) ([]byte, error) {
	msg := dynamicpb.NewMessage(e.root.md)
	if err := e.root.fill(msg, row); err != nil {
		return nil, err
	}
	// fill checked REQUIRED columns with better messages than proto's.
	b, err := proto.MarshalOptions{AllowPartial: true}.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("marshal row: %w", err)
	}
	return b, nil
}

func (p *msgPlan) lookup(name string) *fieldPlan {
	if f, ok := p.byName[name]; ok {
		return f
	}
	return p.byLower[strings.ToLower(name)]
}

func (p *msgPlan) fill(msg *dynamicpb.Message, row map[string]any) error {
	var unknown []string
	for name, v := range row {
		f := p.lookup(name)
		if f == nil {
			unknown = append(unknown, name)
			continue
		}
		if v == nil {
			continue
		}
		if msg.Has(f.fd) {
			return fmt.Errorf("column %q: given twice (names differ only in case)", f.path)
		}
		if err := f.set(msg, v); err != nil {
			return err
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		if p.path != "" {
			return fmt.Errorf("record %q: unknown column %q", p.path, unknown[0])
		}
		return fmt.Errorf("unknown column %q", unknown[0])
	}
	for _, f := range p.required {
		if !msg.Has(f.fd) {
			return fmt.Errorf("column %q: REQUIRED but missing or null", f.path)
		}
	}
	return nil
}

func (f *fieldPlan) set(msg *dynamicpb.Message, v any) error {
	if !f.repeated {
		if f.sub != nil {
			m, ok := v.(map[string]any)
			if !ok {
				return fmt.Errorf("column %q: RECORD wants map[string]any, got %T", f.path, v)
			}
			sub, ok := msg.Mutable(f.fd).Message().(*dynamicpb.Message)
			if !ok {
				return fmt.Errorf("column %q: record is not a dynamic message", f.path)
			}
			return f.sub.fill(sub, m)
		}
		pv, err := f.scalar(v)
		if err != nil {
			return err
		}
		msg.Set(f.fd, pv)
		return nil
	}
	arr, ok := v.([]any)
	if !ok {
		return fmt.Errorf("column %q: REPEATED wants []any, got %T", f.path, v)
	}
	if len(arr) == 0 {
		return nil
	}
	list := msg.Mutable(f.fd).List()
	for i, el := range arr {
		if el == nil {
			return fmt.Errorf("column %q: element %d is null; BigQuery arrays cannot hold NULL", f.path, i)
		}
		if f.sub != nil {
			m, ok := el.(map[string]any)
			if !ok {
				return fmt.Errorf("column %q: element %d: RECORD wants map[string]any, got %T", f.path, i, el)
			}
			ev := list.NewElement()
			sub, ok := ev.Message().(*dynamicpb.Message)
			if !ok {
				return fmt.Errorf("column %q: record is not a dynamic message", f.path)
			}
			if err := f.sub.fill(sub, m); err != nil {
				return fmt.Errorf("element %d: %w", i, err)
			}
			list.Append(ev)
			continue
		}
		pv, err := f.scalar(el)
		if err != nil {
			return fmt.Errorf("element %d: %w", i, err)
		}
		list.Append(pv)
	}
	return nil
}

// Limits BigQuery enforces, checked here so a bad value is rejected with a
// clear message instead of failing the whole request.
const (
	minDate      = -719162            // 0001-01-01 in days since the epoch
	maxDate      = 2932896            // 9999-12-31
	minTimestamp = -62135596800000000 // 0001-01-01 00:00:00 UTC in µs
	maxTimestamp = 253402300799999999 // 9999-12-31 23:59:59.999999 UTC in µs
)

func (f *fieldPlan) scalar(v any) (protoreflect.Value, error) {
	switch f.typ {
	case bigquery.BooleanFieldType:
		if b, ok := v.(bool); ok {
			return protoreflect.ValueOfBool(b), nil
		}
	case bigquery.IntegerFieldType:
		if n, ok := asInt64(v); ok {
			return protoreflect.ValueOfInt64(n), nil
		}
		return protoreflect.Value{}, f.mismatch("an integer (int64, int, int32)", v)
	case bigquery.FloatFieldType:
		switch x := v.(type) {
		case float64:
			return protoreflect.ValueOfFloat64(x), nil
		case float32:
			return protoreflect.ValueOfFloat64(float64(x)), nil
		}
	case bigquery.StringFieldType, bigquery.GeographyFieldType, bigquery.JSONFieldType:
		if s, ok := v.(string); ok {
			if !utf8.ValidString(s) {
				return protoreflect.Value{}, fmt.Errorf("column %q: %s is not valid UTF-8", f.path, f.typ)
			}
			return protoreflect.ValueOfString(s), nil
		}
	case bigquery.BytesFieldType:
		if b, ok := v.([]byte); ok {
			return protoreflect.ValueOfBytes(b), nil
		}
	case bigquery.NumericFieldType, bigquery.BigNumericFieldType:
		if s, ok := v.(string); ok {
			maxInt := 29 // NUMERIC: precision 38, scale 9
			if f.typ == bigquery.BigNumericFieldType {
				maxInt = 39 // BIGNUMERIC: 76.76 digits, scale 38; BigQuery judges the top digit
			}
			if !validDecimal(s, maxInt) {
				return protoreflect.Value{}, fmt.Errorf("column %q: %q is not a %s (a decimal with at most %d integer digits)", f.path, s, f.typ, maxInt)
			}
			return protoreflect.ValueOfString(s), nil
		}
	case bigquery.DateFieldType:
		if n, ok := asInt64(v); ok {
			if n < minDate || n > maxDate {
				return protoreflect.Value{}, fmt.Errorf("column %q: DATE %d days since 1970-01-01 is outside 0001-01-01..9999-12-31", f.path, n)
			}
			return protoreflect.ValueOfInt32(int32(n)), nil
		}
		return protoreflect.Value{}, f.mismatch("int32 days since 1970-01-01", v)
	case bigquery.TimeFieldType:
		if s, ok := v.(string); ok {
			if !validTime(s) {
				return protoreflect.Value{}, fmt.Errorf("column %q: %q is not a TIME (HH:MM:SS[.ffffff])", f.path, s)
			}
			return protoreflect.ValueOfString(s), nil
		}
	case bigquery.DateTimeFieldType:
		if s, ok := v.(string); ok {
			if !validDateTime(s) {
				return protoreflect.Value{}, fmt.Errorf("column %q: %q is not a DATETIME (YYYY-MM-DD HH:MM:SS[.ffffff])", f.path, s)
			}
			return protoreflect.ValueOfString(s), nil
		}
	case bigquery.TimestampFieldType:
		if n, ok := asInt64(v); ok {
			if n < minTimestamp || n > maxTimestamp {
				return protoreflect.Value{}, fmt.Errorf("column %q: TIMESTAMP %dµs is outside 0001-01-01..9999-12-31", f.path, n)
			}
			return protoreflect.ValueOfInt64(n), nil
		}
		return protoreflect.Value{}, f.mismatch("int64 microseconds since the epoch", v)
	}
	return protoreflect.Value{}, f.mismatch(wantGo[f.typ], v)
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
