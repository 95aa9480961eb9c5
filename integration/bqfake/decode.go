package bqfake

//lint:file-ignore ST1005 bqfake returns BigQuery's own error messages verbatim (capitalised, some ending in a period), as clients see them from BigQuery.

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	bq "google.golang.org/api/bigquery/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// compileDescriptor turns the writer_schema of an AppendRows request into a
// message descriptor. The DescriptorProto must be self-contained (as
// adapt.NormalizeDescriptor makes it), except for references to well-known
// types such as google.protobuf.Timestamp and the wrapper types.
func compileDescriptor(dp *descriptorpb.DescriptorProto) (protoreflect.MessageDescriptor, error) {
	if dp.GetName() == "" {
		return nil, errors.New("proto descriptor has no message name")
	}
	deps := map[string]bool{}
	var walk func(m *descriptorpb.DescriptorProto)
	walk = func(m *descriptorpb.DescriptorProto) {
		for _, f := range m.GetField() {
			tn := f.GetTypeName()
			if !strings.HasPrefix(tn, ".google.protobuf.") {
				continue
			}
			if d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(tn[1:])); err == nil {
				deps[d.ParentFile().Path()] = true
			}
		}
		for _, n := range m.GetNestedType() {
			walk(n)
		}
	}
	walk(dp)
	fdp := &descriptorpb.FileDescriptorProto{
		Name:        proto.String("bqfake/writer_schema.proto"),
		Syntax:      proto.String("proto2"),
		MessageType: []*descriptorpb.DescriptorProto{dp},
	}
	for d := range deps {
		fdp.Dependency = append(fdp.Dependency, d)
	}
	slices.Sort(fdp.Dependency)
	fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
	if err != nil {
		return nil, err
	}
	return fd.Messages().Get(0), nil
}

// msgPlan maps the columns of one (nested) schema level to the writer
// schema's fields; it is built once per writer schema and table schema.
type msgPlan struct {
	cols []colPlan
	// The CDC pseudo-columns, top level only; nil when the writer schema
	// lacks them.
	changeType, changeSeq protoreflect.FieldDescriptor
}

type colPlan struct {
	col  *bq.TableFieldSchema
	path string                       // dotted column path for messages
	fd   protoreflect.FieldDescriptor // nil: the writer schema lacks the column
	sub  *msgPlan                     // for RECORD columns present in the writer schema
}

// schemaError is a problem of the writer schema as a whole, which fails the
// request rather than single rows.
type schemaError struct {
	extraFields []string // descriptor fields without a column
	msg         string
}

func (e *schemaError) Error() string {
	if len(e.extraFields) > 0 {
		return "Input schema has more fields than BigQuery schema, extra fields: '" + strings.Join(e.extraFields, ",") + "'"
	}
	return e.msg
}

// buildPlan matches descriptor fields to columns by name, case-insensitively
// as BigQuery does, honouring the column_name annotation adapt uses for names
// that are not valid proto identifiers.
func buildPlan(md protoreflect.MessageDescriptor, cols []*bq.TableFieldSchema) (*msgPlan, error) {
	var extras []string
	p, err := buildPlanLevel(md, cols, "", &extras)
	if err != nil {
		return nil, err
	}
	if len(extras) > 0 {
		return nil, &schemaError{extraFields: extras}
	}
	return p, nil
}

func buildPlanLevel(md protoreflect.MessageDescriptor, cols []*bq.TableFieldSchema, prefix string, extras *[]string) (*msgPlan, error) {
	byName := make(map[string]int, len(cols))
	for i, c := range cols {
		byName[strings.ToLower(c.Name)] = i
	}
	assigned := make([]protoreflect.FieldDescriptor, len(cols))
	pseudoFields := map[string]protoreflect.FieldDescriptor{}
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		name := columnName(fd)
		j, ok := byName[strings.ToLower(name)]
		if !ok {
			pseudo := false
			if prefix == "" {
				var err error
				if pseudo, err = pseudoColumn(fd, name, pseudoFields); err != nil {
					return nil, err
				}
			}
			if !pseudo {
				*extras = append(*extras, prefix+name)
			}
			continue
		}
		col := cols[j]
		path := prefix + col.Name
		if assigned[j] != nil {
			return nil, &schemaError{msg: fmt.Sprintf("Field %s appears more than once in the proto schema", path)}
		}
		if err := checkField(fd, col, path); err != nil {
			return nil, err
		}
		assigned[j] = fd
	}
	plan := &msgPlan{cols: make([]colPlan, 0, len(cols)), changeType: pseudoFields[pseudoChangeType], changeSeq: pseudoFields[pseudoChangeSeq]}
	for j, col := range cols {
		cp := colPlan{col: col, path: prefix + col.Name, fd: assigned[j]}
		if cp.fd != nil && col.Type == typeRecord {
			sub, err := buildPlanLevel(cp.fd.Message(), col.Fields, cp.path+".", extras)
			if err != nil {
				return nil, err
			}
			cp.sub = sub
		}
		plan.cols = append(plan.cols, cp)
	}
	return plan, nil
}

// pseudoColumn reports whether a top-level descriptor field without a
// column is one of the CDC pseudo-columns (matched case-insensitively, as
// column names are), recording it in found; they must be STRING fields. A
// table column of the same name takes the field instead.
func pseudoColumn(fd protoreflect.FieldDescriptor, name string, found map[string]protoreflect.FieldDescriptor) (bool, error) {
	var pseudo string
	for _, p := range []string{pseudoChangeType, pseudoChangeSeq} {
		if strings.EqualFold(name, p) {
			pseudo = p
		}
	}
	if pseudo == "" {
		return false, nil
	}
	if found[pseudo] != nil {
		return false, &schemaError{msg: fmt.Sprintf("Field %s appears more than once in the proto schema", pseudo)}
	}
	if fd.IsList() || fd.IsMap() {
		return false, &schemaError{msg: fmt.Sprintf("The proto field mismatched with BigQuery field at %s, the proto field is repeated, BigQuery field mode NULLABLE", pseudo)}
	}
	if fd.Kind() != protoreflect.StringKind {
		return false, &schemaError{msg: fmt.Sprintf("The proto field mismatched with BigQuery field at %s, the proto field type %s, BigQuery field type STRING", pseudo, kindName(fd))}
	}
	found[pseudo] = fd
	return true, nil
}

func columnName(fd protoreflect.FieldDescriptor) string {
	if opts, ok := fd.Options().(*descriptorpb.FieldOptions); ok && opts != nil {
		if n, ok := proto.GetExtension(opts, storagepb.E_ColumnName).(string); ok && n != "" {
			return n
		}
	}
	return string(fd.Name())
}

func checkField(fd protoreflect.FieldDescriptor, col *bq.TableFieldSchema, path string) error {
	if fd.IsMap() || fd.IsList() != (col.Mode == modeRepeated) {
		mode := "non-repeated"
		if fd.IsList() {
			mode = "repeated"
		}
		return &schemaError{msg: fmt.Sprintf("The proto field mismatched with BigQuery field at %s, the proto field is %s, BigQuery field mode %s", path, mode, col.Mode)}
	}
	if !kindAccepted(col.Type, fd) {
		return &schemaError{msg: fmt.Sprintf("The proto field mismatched with BigQuery field at %s, the proto field type %s, BigQuery field type %s", path, kindName(fd), col.Type)}
	}
	return nil
}

func kindName(fd protoreflect.FieldDescriptor) string {
	if fd.Message() != nil {
		return string(fd.Message().FullName())
	}
	return fd.Kind().String()
}

func isSigned(k protoreflect.Kind) bool {
	switch k {
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return true
	}
	return false
}

func isSigned64(k protoreflect.Kind) bool {
	return k == protoreflect.Int64Kind || k == protoreflect.Sint64Kind || k == protoreflect.Sfixed64Kind
}

func isUnsigned(k protoreflect.Kind) bool {
	switch k {
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return true
	}
	return false
}

func isFloat(k protoreflect.Kind) bool {
	return k == protoreflect.FloatKind || k == protoreflect.DoubleKind
}

// isWrapper reports whether a well-known name is one of the google.protobuf
// wrappers BigQuery accepts for scalar columns.
func isWrapper(name string) bool {
	switch name {
	case "DoubleValue", "FloatValue", "Int64Value", "UInt64Value", "Int32Value",
		"UInt32Value", "BoolValue", "StringValue", "BytesValue":
		return true
	}
	return false
}

// wellKnown returns the simple name of a google.protobuf well-known message,
// also when adapt.NormalizeDescriptor inlined it as a nested message named
// "google_protobuf_<Name>", or "" for other messages.
func wellKnown(md protoreflect.MessageDescriptor) string {
	if strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return string(md.Name())
	}
	if n, ok := strings.CutPrefix(string(md.Name()), "google_protobuf_"); ok {
		return n
	}
	return ""
}

// kindAccepted lists the proto types BigQuery documents as valid input for
// each column type (the Storage Write API "data type conversions").
func kindAccepted(typ string, fd protoreflect.FieldDescriptor) bool {
	k := fd.Kind()
	if k == protoreflect.MessageKind || k == protoreflect.GroupKind {
		md := fd.Message()
		wk := wellKnown(md)
		switch {
		case isWrapper(wk):
			value := md.Fields().ByName("value")
			return value != nil && kindAccepted(typ, value)
		case wk == "Timestamp":
			return typ == typeTimestamp && md.Fields().ByName("seconds") != nil && md.Fields().ByName("nanos") != nil
		}
		return typ == typeRecord && wk == ""
	}
	switch typ {
	case typeBoolean:
		return k == protoreflect.BoolKind || isSigned(k) || isUnsigned(k) || k == protoreflect.EnumKind
	case typeInteger:
		return isSigned(k) || isUnsigned(k) || k == protoreflect.EnumKind
	case typeFloat:
		return isFloat(k)
	case typeString, typeGeography, typeJSON:
		return k == protoreflect.StringKind
	case typeBytes:
		return k == protoreflect.BytesKind || k == protoreflect.StringKind
	case typeNumeric, typeBigNumeric:
		return k == protoreflect.StringKind || k == protoreflect.BytesKind || isSigned(k) || isUnsigned(k) || isFloat(k)
	case typeDate:
		return isSigned(k) || k == protoreflect.StringKind
	case typeTime, typeDatetime:
		return isSigned64(k) || k == protoreflect.StringKind
	case typeTimestamp:
		return isSigned64(k) || k == protoreflect.StringKind
	}
	return false
}

// decodeRow parses one serialized row and converts it to the row value
// contract, together with the change its CDC pseudo-columns ask for; an
// error names the offending field and fails only this row. A DELETE needs
// only the key columns (keyCols, lower case): other REQUIRED columns may be
// absent from it.
func decodeRow(plan *msgPlan, md protoreflect.MessageDescriptor, b []byte, keyCols map[string]bool) (map[string]any, change, error) {
	msg := dynamicpb.NewMessage(md)
	if err := (proto.UnmarshalOptions{AllowPartial: true, DiscardUnknown: true}).Unmarshal(b, msg); err != nil {
		return nil, change{}, fmt.Errorf("cannot parse the serialized row as %s: %v", md.FullName(), err)
	}
	ch, err := decodeChange(plan, msg)
	if err != nil {
		return nil, change{}, err
	}
	row := make(map[string]any, len(plan.cols))
	for _, c := range plan.cols {
		if ch.typ == changeDelete && c.col.Mode == modeRequired && !keyCols[strings.ToLower(c.col.Name)] && (c.fd == nil || !msg.Has(c.fd)) {
			continue
		}
		v, err := decodeCol(c, msg)
		if err != nil {
			return nil, change{}, err
		}
		if v != nil {
			row[c.col.Name] = v
		}
	}
	return row, ch, nil
}

// decodeChange reads a row's CDC pseudo-columns. An empty value counts as
// absent, since proto3 cannot tell the two apart.
func decodeChange(plan *msgPlan, msg protoreflect.Message) (change, error) {
	var ch change
	if fd := plan.changeType; fd != nil && msg.Has(fd) && msg.Get(fd).String() != "" {
		typ, err := parseChangeType(msg.Get(fd).String())
		if err != nil {
			return change{}, err
		}
		ch.typ = typ
	}
	if fd := plan.changeSeq; fd != nil && msg.Has(fd) && msg.Get(fd).String() != "" {
		if ch.typ == "" {
			return change{}, errSeqWithoutType
		}
		raw := msg.Get(fd).String()
		seq, err := parseSequence(raw)
		if err != nil {
			return change{}, err
		}
		ch.seq, ch.rawSeq = seq, raw
	}
	return ch, nil
}

func decodeMsg(plan *msgPlan, msg protoreflect.Message) (map[string]any, error) {
	row := make(map[string]any, len(plan.cols))
	for _, c := range plan.cols {
		v, err := decodeCol(c, msg)
		if err != nil {
			return nil, err
		}
		if v != nil {
			row[c.col.Name] = v
		}
	}
	return row, nil
}

func decodeCol(c colPlan, msg protoreflect.Message) (any, error) {
	if c.col.Mode == modeRepeated {
		out := []any{}
		if c.fd == nil {
			return out, nil
		}
		list := msg.Get(c.fd).List()
		for i := range list.Len() {
			v, err := decodeValue(c, list.Get(i))
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	}
	if c.fd == nil || !msg.Has(c.fd) {
		if c.col.Mode == modeRequired {
			return nil, fmt.Errorf("Field %s: REQUIRED field has no value", c.path)
		}
		return nil, nil
	}
	return decodeValue(c, msg.Get(c.fd))
}

func decodeValue(c colPlan, v protoreflect.Value) (any, error) {
	fd := c.fd
	if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
		return scalar(c.col, c.path, fd, v)
	}
	m := v.Message()
	if c.col.Type == typeRecord {
		return decodeMsg(c.sub, m)
	}
	md := m.Descriptor()
	if wellKnown(md) == "Timestamp" {
		secs := m.Get(md.Fields().ByName("seconds")).Int()
		nanos := m.Get(md.Fields().ByName("nanos")).Int()
		if secs < minTimestamp/1000000-1 || secs > maxTimestamp/1000000+1 {
			return nil, fmt.Errorf("Field %s: TIMESTAMP is out of range", c.path)
		}
		us, err := checkTimestamp(secs*1000000 + nanos/1000)
		if err != nil {
			return nil, fmt.Errorf("Field %s: %v", c.path, err)
		}
		return us, nil
	}
	inner := md.Fields().ByName("value")
	return scalar(c.col, c.path, inner, m.Get(inner))
}

// scalar converts one proto value of an accepted kind to the column's
// contract type, checking BigQuery's ranges and formats.
func scalar(col *bq.TableFieldSchema, path string, fd protoreflect.FieldDescriptor, v protoreflect.Value) (any, error) {
	out, err := convertScalar(col, fd.Kind(), v)
	if err != nil {
		return nil, fmt.Errorf("Field %s: %v", path, err)
	}
	return out, nil
}

func convertScalar(col *bq.TableFieldSchema, k protoreflect.Kind, v protoreflect.Value) (any, error) {
	switch col.Type {
	case typeBoolean:
		switch {
		case k == protoreflect.BoolKind:
			return v.Bool(), nil
		case isSigned(k):
			return v.Int() != 0, nil
		case isUnsigned(k):
			return v.Uint() != 0, nil
		default:
			return v.Enum() != 0, nil
		}
	case typeInteger:
		return toInt64(k, v)
	case typeFloat:
		return v.Float(), nil
	case typeString, typeGeography, typeJSON:
		s := v.String()
		if !utf8.ValidString(s) {
			return nil, errors.New("STRING value is not valid UTF-8")
		}
		if n := int64(utf8.RuneCountInString(s)); col.MaxLength > 0 && n > col.MaxLength {
			return nil, fmt.Errorf("%s(%d) has maximum length %d but got a value with length %d", col.Type, col.MaxLength, col.MaxLength, n)
		}
		if col.Type == typeJSON && !json.Valid([]byte(s)) {
			return nil, errors.New("invalid JSON value")
		}
		return s, nil
	case typeBytes:
		var b []byte
		if k == protoreflect.StringKind {
			b = []byte(v.String())
		} else {
			b = slices.Clone(v.Bytes())
		}
		if n := int64(len(b)); col.MaxLength > 0 && n > col.MaxLength {
			return nil, fmt.Errorf("BYTES(%d) has maximum length %d but got a value with length %d", col.MaxLength, col.MaxLength, n)
		}
		if b == nil {
			b = []byte{}
		}
		return b, nil
	case typeNumeric, typeBigNumeric:
		r, err := toRat(col.Type, k, v)
		if err != nil {
			return nil, err
		}
		return fitDecimal(r, decimalSpecOf(col), col.Type)
	case typeDate:
		if k == protoreflect.StringKind {
			return parseDate(v.String())
		}
		return checkDate(v.Int())
	case typeTime:
		if k == protoreflect.StringKind {
			return parseTime(v.String())
		}
		return packedTime(v.Int())
	case typeDatetime:
		if k == protoreflect.StringKind {
			return parseDatetime(v.String())
		}
		return packedDatetime(v.Int())
	case typeTimestamp:
		if k == protoreflect.StringKind {
			us, err := parseTimestamp(v.String())
			if err != nil {
				return nil, err
			}
			return checkTimestamp(us)
		}
		return checkTimestamp(v.Int())
	}
	return nil, fmt.Errorf("unsupported column type %s", col.Type)
}

func toInt64(k protoreflect.Kind, v protoreflect.Value) (int64, error) {
	switch {
	case isSigned(k):
		return v.Int(), nil
	case isUnsigned(k):
		if u := v.Uint(); u > math.MaxInt64 {
			return 0, fmt.Errorf("INTEGER value %d is out of range", u)
		}
		return int64(v.Uint()), nil
	default:
		return int64(v.Enum()), nil
	}
}

func toRat(typ string, k protoreflect.Kind, v protoreflect.Value) (*big.Rat, error) {
	switch {
	case k == protoreflect.StringKind:
		return parseDecimal(v.String())
	case k == protoreflect.BytesKind:
		return packedDecimal(v.Bytes(), typ)
	case isSigned(k):
		return new(big.Rat).SetInt64(v.Int()), nil
	case isUnsigned(k):
		return new(big.Rat).SetInt(new(big.Int).SetUint64(v.Uint())), nil
	default:
		f := v.Float()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("%s value %v is not finite", typ, f)
		}
		// The shortest decimal that round-trips, not the binary expansion.
		return parseDecimal(strconv.FormatFloat(f, 'g', -1, 64))
	}
}
