package schema

import (
	"fmt"
	"slices"
	"strings"

	"cloud.google.com/go/bigquery"
	"github.com/hamba/avro/v2"
	"go.uber.org/zap"
)

// BigQuery limits that Avro names and docs do not share.
const (
	maxColumnName  = 300
	maxDescription = 1024 // characters; longer descriptions fail the table update
)

// reservedPrefixes may not start a BigQuery column name (compared
// case-insensitively).
var reservedPrefixes = [...]string{"_TABLE_", "_FILE_", "_PARTITION", "_ROW_TIMESTAMP", "__ROOT__", "_COLON_"}

// column is what one Avro type becomes: the shape of a BigQuery column (its
// name and description belong to the enclosing field).
type column struct {
	typ      bigquery.FieldType
	fields   bigquery.Schema // RECORD only
	repeated bool
	nullable bool   // NULLABLE rather than REQUIRED; never set together with repeated
	doc      string // the named type's doc, used when the field has none
}

func (c column) field(name, doc string) *bigquery.FieldSchema {
	if doc == "" {
		doc = c.doc
	}
	return &bigquery.FieldSchema{
		Name:        name,
		Description: description(doc),
		Type:        c.typ,
		Schema:      c.fields,
		Repeated:    c.repeated,
		Required:    !c.repeated && !c.nullable,
	}
}

// compile maps a parsed writer schema to BigQuery columns and keeps it for
// Transcoder. Errors wrap ErrUnsupported.
func compile(id int, root avro.Schema, logger *zap.Logger) (*Schema, error) {
	if ref, ok := root.(*avro.RefSchema); ok {
		root = ref.Schema()
	}
	rec, ok := root.(*avro.RecordSchema)
	if !ok {
		return nil, fmt.Errorf("%w: schema %d: top-level type is %s, want a record (its fields become the columns)", ErrUnsupported, id, root.Type())
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	m := &mapper{id: id, logger: logger}
	c, err := m.record("", rec)
	if err != nil {
		return nil, fmt.Errorf("%w: schema %d: %v", ErrUnsupported, id, err)
	}
	return &Schema{id: id, columns: c.fields, writer: rec}, nil
}

type mapper struct {
	id     int
	logger *zap.Logger
	plain  bool     // Connect's types map as their base types (Schema.WithoutConnectTypes)
	stack  []string // full names of the records being mapped, outermost first
}

func (m *mapper) mapType(path string, s avro.Schema) (column, error) {
	switch s := s.(type) {
	case *avro.RefSchema:
		return m.mapType(path, s.Schema())
	case *avro.NullSchema:
		return column{}, fmt.Errorf("field %s: type null alone has no BigQuery column (it could only ever hold NULL)", path)
	case *avro.PrimitiveSchema:
		return m.primitive(path, s), nil
	case *avro.RecordSchema:
		if !m.plain && isVariableScaleDecimal(s) {
			return column{typ: bigquery.BigNumericFieldType, doc: s.Doc()}, nil
		}
		return m.record(path, s)
	case *avro.EnumSchema:
		return column{typ: bigquery.StringFieldType, doc: s.Doc()}, nil
	case *avro.FixedSchema:
		return m.fixed(path, s)
	case *avro.ArraySchema:
		return m.array(path, s)
	case *avro.MapSchema:
		return m.mapOf(path, s)
	case *avro.UnionSchema:
		return m.union(path, s)
	}
	return column{}, fmt.Errorf("field %s: Avro type %s has no BigQuery mapping", path, s.Type())
}

func (m *mapper) record(path string, s *avro.RecordSchema) (column, error) {
	name := s.FullName()
	if i := slices.Index(m.stack, name); i >= 0 {
		chain := strings.Join(append(slices.Clone(m.stack[i:]), name), " -> ")
		return column{}, fmt.Errorf("field %s: recursive type %s (%s): a BigQuery table has a fixed depth", orRoot(path), name, chain)
	}
	if len(s.Fields()) == 0 {
		return column{}, fmt.Errorf("field %s: record %s has no fields; a BigQuery RECORD needs at least one", orRoot(path), name)
	}
	m.stack = append(m.stack, name)
	defer func() { m.stack = m.stack[:len(m.stack)-1] }()

	fields := make(bigquery.Schema, 0, len(s.Fields()))
	seen := make(map[string]string, len(s.Fields()))
	for _, f := range s.Fields() {
		if err := checkName(f.Name(), seen); err != nil {
			return column{}, fmt.Errorf("record %s: %w", name, err)
		}
		c, err := m.mapType(join(path, f.Name()), f.Type())
		if err != nil {
			return column{}, err
		}
		fields = append(fields, c.field(f.Name(), f.Doc()))
	}
	return column{typ: bigquery.RecordFieldType, fields: fields, doc: s.Doc()}, nil
}

func (m *mapper) primitive(path string, s *avro.PrimitiveSchema) column {
	switch connectKindIf(!m.plain, s) {
	case connectDate:
		return column{typ: bigquery.DateFieldType}
	case connectTimeMillis, connectTimeMicros, connectTimeNanos:
		return column{typ: bigquery.TimeFieldType}
	case connectTimestampMillis, connectZoned:
		return column{typ: bigquery.TimestampFieldType}
	case connectLocalMillis, connectLocalMicros, connectLocalNanos:
		return column{typ: bigquery.DateTimeFieldType}
	case connectJSON:
		return column{typ: bigquery.JSONFieldType}
	case connectDecimal:
		p, sc, _ := connectDecimalParams(s)
		return m.decimal(path, p, sc)
	}
	// hamba/avro leaves Logical nil for unknown logical types and for known
	// ones on the wrong base type: both map as the base type, as the Avro
	// spec asks.
	var logical avro.LogicalType
	if l := s.Logical(); l != nil {
		logical = l.Type()
	}
	switch s.Type() {
	case avro.Boolean:
		return column{typ: bigquery.BooleanFieldType}
	case avro.Int:
		switch logical {
		case avro.Date:
			return column{typ: bigquery.DateFieldType}
		case avro.TimeMillis:
			return column{typ: bigquery.TimeFieldType}
		}
		return column{typ: bigquery.IntegerFieldType}
	case avro.Long:
		switch logical {
		case avro.TimeMicros:
			return column{typ: bigquery.TimeFieldType}
		case avro.TimestampMillis, avro.TimestampMicros:
			return column{typ: bigquery.TimestampFieldType}
		case avro.LocalTimestampMillis, avro.LocalTimestampMicros:
			return column{typ: bigquery.DateTimeFieldType}
		}
		return column{typ: bigquery.IntegerFieldType}
	case avro.Float, avro.Double:
		return column{typ: bigquery.FloatFieldType}
	case avro.Bytes:
		if d, ok := s.Logical().(*avro.DecimalLogicalSchema); ok {
			return m.decimal(path, d.Precision(), d.Scale())
		}
		return column{typ: bigquery.BytesFieldType}
	default: // avro.String; uuid and unknown logical types stay strings
		return column{typ: bigquery.StringFieldType}
	}
}

func (m *mapper) fixed(path string, s *avro.FixedSchema) (column, error) {
	size := s.Size()
	if size == 0 {
		// Every value we accept takes at least one byte: that bounds how many
		// array items a body can claim (see tstate.blockCount).
		return column{}, fmt.Errorf("field %s: fixed %s has size 0 and carries no data", path, s.FullName())
	}
	if d, ok := s.Logical().(*avro.DecimalLogicalSchema); ok {
		return m.decimal(path, d.Precision(), d.Scale()), nil
	}
	// duration (fixed 12) lands here too, as its raw bytes.
	return column{typ: bigquery.BytesFieldType}, nil
}

// decimal picks the narrowest BigQuery type that holds every value of
// decimal(precision, scale), as BigQuery's Avro loading does. The column
// keeps no precision/scale parameters (neither does BigQuery's loading): a
// parameterised column would need an ALTER each time a schema version widens
// the decimal, and the transcoder already rejects values over the precision.
func (m *mapper) decimal(path string, p, s int) column {
	typ := bigquery.StringFieldType
	switch {
	case p <= 38 && s <= 9 && p-s <= 29:
		typ = bigquery.NumericFieldType
	case s <= 38 && p-s <= 38:
		typ = bigquery.BigNumericFieldType
	default:
		m.logger.Warn("decimal too wide for BIGNUMERIC, writing it as a STRING column",
			zap.Int("schema_id", m.id), zap.String("field", path),
			zap.Int("precision", p), zap.Int("scale", s))
	}
	return column{typ: typ}
}

func (m *mapper) array(path string, s *avro.ArraySchema) (column, error) {
	item, err := m.mapType(path+"[]", s.Items())
	if err != nil {
		return column{}, err
	}
	if item.repeated {
		// BigQuery has no array of arrays: each inner array becomes a RECORD
		// holding it in a REPEATED field "items".
		inner := item.field("items", "")
		item = column{typ: bigquery.RecordFieldType, fields: bigquery.Schema{inner}}
	}
	return column{typ: item.typ, fields: item.fields, repeated: true, doc: item.doc}, nil
}

func (m *mapper) mapOf(path string, s *avro.MapSchema) (column, error) {
	val, err := m.mapType(path+".value", s.Values())
	if err != nil {
		return column{}, err
	}
	fields := bigquery.Schema{
		{Name: "key", Type: bigquery.StringFieldType, Required: true},
		val.field("value", ""),
	}
	return column{typ: bigquery.RecordFieldType, fields: fields, repeated: true}, nil
}

func (m *mapper) union(path string, s *avro.UnionSchema) (column, error) {
	types := s.Types()
	null := -1
	var branches []int
	for i, t := range types {
		if t.Type() == avro.Null {
			null = i
		} else {
			branches = append(branches, i)
		}
	}
	switch len(branches) {
	case 0:
		return column{}, fmt.Errorf("field %s: a union of null alone has no BigQuery column (it could only ever hold NULL)", path)
	case 1:
		c, err := m.mapType(path, types[branches[0]])
		if err != nil {
			return column{}, err
		}
		// A REPEATED column cannot be NULLABLE: null becomes the empty array.
		c.nullable = null >= 0 && !c.repeated
		return c, nil
	}

	// Several non-null branches: a RECORD with one field per branch, at most
	// one of them set, as BigQuery's Avro loading does.
	fields := make(bigquery.Schema, 0, len(branches))
	seen := make(map[string]string, len(branches))
	for _, i := range branches {
		name := branchName(types[i])
		if err := checkName(name, seen); err != nil {
			return column{}, fmt.Errorf("field %s: union branch: %w", path, err)
		}
		c, err := m.mapType(join(path, name), types[i])
		if err != nil {
			return column{}, err
		}
		f := c.field(name, "")
		f.Required = false
		fields = append(fields, f)
	}
	return column{typ: bigquery.RecordFieldType, fields: fields, nullable: null >= 0}, nil
}

// branchName names the RECORD field of a union branch: the primitive type
// name ("long" even under a logical type), "array" or "map", or the short
// name of a named type.
func branchName(s avro.Schema) string {
	if ref, ok := s.(*avro.RefSchema); ok {
		return ref.Schema().Name()
	}
	if named, ok := s.(avro.NamedSchema); ok {
		return named.Name()
	}
	return string(s.Type())
}

// checkName reports whether name is a usable BigQuery column name that does
// not clash with the names already in seen (lower-cased name -> name).
func checkName(name string, seen map[string]string) error {
	if !validName(name) {
		return fmt.Errorf("name %q is not a BigQuery column name (letters, digits and _, not starting with a digit)", name)
	}
	if len(name) > maxColumnName {
		return fmt.Errorf("name %q is longer than BigQuery's %d characters", name, maxColumnName)
	}
	upper := strings.ToUpper(name)
	for _, p := range reservedPrefixes {
		if strings.HasPrefix(upper, p) {
			return fmt.Errorf("name %q starts with %s, reserved by BigQuery", name, p)
		}
	}
	lower := strings.ToLower(name)
	if other, dup := seen[lower]; dup {
		return fmt.Errorf("names %q and %q differ only in case; BigQuery column names are case-insensitive", other, name)
	}
	seen[lower] = name
	return nil
}

// validName checks [A-Za-z_][A-Za-z0-9_]*. hamba/avro enforces the same for
// Avro names unless avro.SkipNameValidation is set, so we check anyway.
func validName(name string) bool {
	if name == "" {
		return false
	}
	for i, c := range []byte(name) {
		switch {
		case c == '_', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

func description(doc string) string {
	n := 0
	for i := range doc {
		if n == maxDescription {
			return doc[:i]
		}
		n++
	}
	return doc
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func orRoot(path string) string {
	if path == "" {
		return "(top level)"
	}
	return path
}
