package bq

// BigQuery change data capture (CDC): a table with a primary key takes rows
// that are changes to the row of their key, UPSERT or DELETE, optionally
// ordered by a sequence number. BigQuery reads both from pseudo-columns
// the writer's proto descriptor carries after the table's columns
// (_CHANGE_TYPE, _CHANGE_SEQUENCE_NUMBER); they are not columns of the
// table. BigQuery takes changes only on the default stream, in protobuf.
//
// Which tables take changes is fixed per Table (TableOptions.PrimaryKey):
// its rows all carry a change type or none does. As each Table has its own
// default-stream connection, rows with and without a change type never
// share a connection, as BigQuery requires (see Table.kind).

import (
	"cmp"
	"errors"
	"fmt"
	"strings"

	"cloud.google.com/go/bigquery"
	"google.golang.org/protobuf/encoding/protowire"
)

// The pseudo-columns of a change row, and the values of _CHANGE_TYPE.
const (
	changeTypeColumn     = "_CHANGE_TYPE"
	changeSequenceColumn = "_CHANGE_SEQUENCE_NUMBER"
	changeUpsert         = "UPSERT"
	changeDelete         = "DELETE"
)

// BigQuery's limits on primary keys and on _CHANGE_SEQUENCE_NUMBER.
const (
	maxKeyColumns       = 16
	maxSequenceSections = 4
	maxSequenceDigits   = 16 // hex digits per section: one uint64
)

// defaultClusterByKey is how many leading key columns a change table is
// clustered by when no clustering is configured: BigQuery clusters by at
// most four columns, and clustering by the key is what its CDC
// documentation recommends, as applying changes looks rows up by key.
const defaultClusterByKey = 4

// keyTypes are the column types BigQuery accepts in a primary key
// (TABLE_CONSTRAINTS view, "Limitations"): no FLOAT, BYTES, TIME,
// GEOGRAPHY, JSON, RECORD, RANGE or INTERVAL.
var keyTypes = map[bigquery.FieldType]bool{
	bigquery.BigNumericFieldType: true, bigquery.BooleanFieldType: true, bigquery.DateFieldType: true,
	bigquery.DateTimeFieldType: true, bigquery.IntegerFieldType: true, bigquery.NumericFieldType: true,
	bigquery.StringFieldType: true, bigquery.TimestampFieldType: true,
}

// ErrPrimaryKey: the existing table's primary key is not the one its rows
// are written as changes by (it has none, or another). The error's message
// gives the ALTER TABLE statement that fixes it. It is a kind of
// ErrTableConfig (errors.Is(err, ErrTableConfig) is true as well), so it
// is permanent: an operator must alter the table or the configuration.
var ErrPrimaryKey error = &subclassError{msg: "table primary key differs from the configured one", parent: ErrTableConfig}

// subclassError is a class that is also a kind of another class.
type subclassError struct {
	msg    string
	parent error
}

func (e *subclassError) Error() string { return e.msg }
func (e *subclassError) Unwrap() error { return e.parent }

// Sequence is a change's _CHANGE_SEQUENCE_NUMBER: one to four unsigned
// 64-bit sections, written as hex digits separated by "/" (e.g. "1A/FF").
// For changes of one key, BigQuery applies the one with the greatest
// sequence number, comparing section by section (CompareSequence), and
// orders changes without one by when it took them.
//
// The zero Sequence has no section: no sequence number. A Sequence is a
// plain value: making, copying, formatting it into a buffer (Append) and
// comparing it allocate nothing.
type Sequence struct {
	sec [maxSequenceSections]uint64
	n   uint8 // sections in use
}

// NewSequence returns the sequence number of the given sections, most
// significant first. No sections gives the zero Sequence. It fails if
// there are more than four, BigQuery's limit.
func NewSequence(sections ...uint64) (Sequence, error) {
	var q Sequence
	if len(sections) > maxSequenceSections {
		return q, fmt.Errorf("a sequence number of %d sections: BigQuery takes at most %d", len(sections), maxSequenceSections)
	}
	q.n = uint8(copy(q.sec[:], sections))
	return q, nil
}

// Len returns the number of sections, 0 for the zero Sequence.
func (q Sequence) Len() int { return int(q.n) }

// Section returns section i (0 is the most significant). It panics if i
// is not below Len.
func (q Sequence) Section(i int) uint64 { return q.sec[:q.n][i] }

// IsZero reports whether q has no section (no sequence number).
func (q Sequence) IsZero() bool { return q.n == 0 }

// hexDigits are the digits Append writes: upper case, as in BigQuery's
// examples (it reads either case).
const hexDigits = "0123456789ABCDEF"

// Append appends q in BigQuery's form to dst: each section in upper-case
// hex without leading zeros ("0" for zero), separated by "/". The zero
// Sequence appends nothing. It allocates only if dst must grow (the form is
// at most 67 bytes).
func (q Sequence) Append(dst []byte) []byte {
	for i, v := range q.sec[:q.n] {
		if i > 0 {
			dst = append(dst, '/')
		}
		var buf [maxSequenceDigits]byte
		k := len(buf)
		for {
			k--
			buf[k] = hexDigits[v&0xF]
			v >>= 4
			if v == 0 {
				break
			}
		}
		dst = append(dst, buf[k:]...)
	}
	return dst
}

// String returns q as Append writes it; "" for the zero Sequence.
func (q Sequence) String() string {
	var buf [maxSequenceSections * (maxSequenceDigits + 1)]byte
	return string(q.Append(buf[:0]))
}

// ParseSequence parses BigQuery's form of a sequence number: one to four
// sections of one to sixteen hex digits (either case, leading zeros
// allowed), separated by "/". Anything else, the empty string included, is
// an error quoting s.
func ParseSequence(s string) (Sequence, error) { return parseSequence(s) }

// parseSequence is ParseSequence for strings and bytes alike, so that Row
// checks a row's sequence number without copying it.
func parseSequence[T string | []byte](s T) (Sequence, error) {
	var q Sequence
	if len(s) == 0 {
		return q, errors.New("empty sequence number")
	}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '/' {
			continue
		}
		part := s[start:i]
		switch {
		case q.n == maxSequenceSections:
			return Sequence{}, fmt.Errorf("sequence number %q: more than %d sections", s, maxSequenceSections)
		case len(part) == 0:
			return Sequence{}, fmt.Errorf("sequence number %q: an empty section", s)
		case len(part) > maxSequenceDigits:
			return Sequence{}, fmt.Errorf("sequence number %q: a section of more than %d hex digits", s, maxSequenceDigits)
		}
		var v uint64
		for j := 0; j < len(part); j++ {
			d := unhex(part[j])
			if d < 0 {
				return Sequence{}, fmt.Errorf("sequence number %q: %q is not a hex digit", s, part[j])
			}
			v = v<<4 | uint64(d)
		}
		q.sec[q.n] = v
		q.n++
		start = i + 1
	}
	return q, nil
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// CompareSequence returns -1, 0 or +1 as a is less than, equal to or
// greater than b: section by section from the first, each as an unsigned
// number, as BigQuery orders the changes of a key.
//
// BigQuery's documentation asks for sequence numbers of one fixed format
// and does not say how ones of different section counts compare. Here a
// sequence that is a prefix of another (all its sections equal to the
// other's first ones) is less than it, so "A" < "A/0", and the zero
// Sequence is less than any other: the order is total and 0 means equal
// sections. Writers should keep the section count of a table's changes
// fixed rather than rely on this.
func CompareSequence(a, b Sequence) int {
	n := min(a.n, b.n)
	for i := range n {
		if a.sec[i] != b.sec[i] {
			return cmp.Compare(a.sec[i], b.sec[i])
		}
	}
	return cmp.Compare(a.n, b.n)
}

// NewChangeFormat is NewFormat for the rows of a table with a primary key:
// the same columns and field numbers, plus the pseudo-columns
// _CHANGE_TYPE and _CHANGE_SEQUENCE_NUMBER that AppendChange writes. It
// fails where NewFormat does, and if schema has a top-level column of
// either name.
func NewChangeFormat(schema bigquery.Schema) (*Format, error) {
	enc, err := newEncoder(schema, true)
	if err != nil {
		return nil, err
	}
	return enc.format, nil
}

// Change reports whether rows of this format are changes, for a table with
// a primary key: each must end with AppendChange's fields, or Table.Row
// refuses it.
func (f *Format) Change() bool { return f.enc.change }

// AppendChange appends a change row's pseudo-columns to dst, the row's
// bytes (columns written by a transcoder or AppendColumn): _CHANGE_TYPE,
// "DELETE" if del and else "UPSERT", and _CHANGE_SEQUENCE_NUMBER, seq in
// BigQuery's form, unless seq is zero. It allocates only if dst must grow
// (at most 81 bytes are added).
//
// A DELETE row needs its key columns only; BigQuery ignores the others.
//
// It panics if the format is not a change format (Change is false): its
// descriptor lacks the pseudo-columns, and a DELETE written as a plain row
// would be appended as a row instead of deleting one. Such a call is a
// bug of the caller, which confused a table without primary key for one
// with.
func (f *Format) AppendChange(dst []byte, del bool, seq Sequence) []byte {
	e := f.enc
	if !e.change {
		panic("bq: AppendChange on the Format of a table without primary key (Format.Change is false)")
	}
	dst = protowire.AppendVarint(dst, e.changeTag)
	if del {
		dst = protowire.AppendString(dst, changeDelete)
	} else {
		dst = protowire.AppendString(dst, changeUpsert)
	}
	if seq.n > 0 {
		dst = protowire.AppendVarint(dst, e.sequenceTag)
		var start int
		dst, start = beginLen(dst) // the form is at most 67 bytes: its length is one byte
		dst = endLen(seq.Append(dst), start)
	}
	return dst
}

// checkChange reports why b, a row of the change format e, cannot be
// written as a change: it must be a well-formed message at its top level
// and hold exactly one _CHANGE_TYPE, UPSERT or DELETE, and at most one
// valid _CHANGE_SEQUENCE_NUMBER. A row without change type would reach
// BigQuery as a plain row appended to a table that mirrors its source,
// which is never what the writer meant. It walks the top-level fields
// only, skipping values by their length: a few dozen varint reads a row.
func (e *encoder) checkChange(b []byte) error {
	types, seqs := 0, 0
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("not a protobuf message: %w", protowire.ParseError(n))
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return fmt.Errorf("not a protobuf message: field %d: %w", num, protowire.ParseError(m))
		}
		switch num {
		case e.changeNum:
			v, _ := protowire.ConsumeBytes(b)
			if typ != protowire.BytesType || (string(v) != changeUpsert && string(v) != changeDelete) {
				return fmt.Errorf("%s is not %s or %s", changeTypeColumn, changeUpsert, changeDelete)
			}
			types++
		case e.sequenceNum:
			v, _ := protowire.ConsumeBytes(b)
			if typ != protowire.BytesType {
				return fmt.Errorf("%s is not a string", changeSequenceColumn)
			}
			if _, err := parseSequence(v); err != nil {
				return fmt.Errorf("%s: %w", changeSequenceColumn, err)
			}
			seqs++
		}
		b = b[m:]
	}
	switch {
	case types == 0:
		return fmt.Errorf("no %s: a change row ends with Format.AppendChange", changeTypeColumn)
	case types > 1 || seqs > 1:
		return fmt.Errorf("%s or %s given twice", changeTypeColumn, changeSequenceColumn)
	}
	return nil
}

// primaryKeyKey names the primary key setting in errors.
func (o TableOptions) primaryKeyKey() string {
	if o.PrimaryKeyKey == "" {
		return "primary_key"
	}
	return o.PrimaryKeyKey
}

// change reports whether the table's rows are changes (it has a key).
func (o TableOptions) change() bool { return len(o.PrimaryKey) > 0 }

// clustering is the clustering bq creates the table with: the configured
// one, else for a change table its first key columns.
func (o TableOptions) clustering() []string {
	if len(o.Clustering) > 0 || !o.change() {
		return o.Clustering
	}
	return o.PrimaryKey[:min(len(o.PrimaryKey), defaultClusterByKey)]
}

// changeSchema returns schema as a change table needs it: every top-level
// column but the key's NULLABLE (REPEATED stays REPEATED), since a DELETE
// row carries the key alone. Nested columns keep their mode: their record
// is NULL in such a row. schema is not modified; nil entries are dropped.
func changeSchema(schema bigquery.Schema, key []string) bigquery.Schema {
	out := make(bigquery.Schema, 0, len(schema))
	for _, f := range schema {
		if f == nil {
			continue
		}
		if f.Required && !f.Repeated && !containsFold(key, f.Name) {
			nf := *f
			nf.Required = false
			f = &nf
		}
		out = append(out, f)
	}
	return out
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// checkKey reports why o's primary key cannot key a table of schema,
// naming the setting and the column; nil if it can (or o has no key).
func checkKey(o TableOptions, schema bigquery.Schema) error {
	kk := o.primaryKeyKey()
	if len(o.PrimaryKey) > maxKeyColumns {
		return fmt.Errorf("%w: %s: %d columns; BigQuery's primary keys have at most %d", ErrTableConfig, kk, len(o.PrimaryKey), maxKeyColumns)
	}
	for i, name := range o.PrimaryKey {
		if containsFold(o.PrimaryKey[:i], name) {
			return fmt.Errorf("%w: %s: %q is listed twice", ErrTableConfig, kk, name)
		}
		f := topLevel(schema, name)
		switch {
		case f == nil:
			return fmt.Errorf("%w: %s: %q is not a top-level column of the table (columns: %s)", ErrTableConfig, kk, name, columnList(schema))
		case f.Repeated:
			return fmt.Errorf("%w: %s: %q is REPEATED; BigQuery keys on single values", ErrTableConfig, kk, name)
		case !keyTypes[canonicalType(f.Type)]:
			return fmt.Errorf("%w: %s: %q is %s; BigQuery's primary key columns are STRING, INTEGER, NUMERIC, BIGNUMERIC, BOOLEAN, DATE, DATETIME or TIMESTAMP",
				ErrTableConfig, kk, name, canonicalType(f.Type))
		}
	}
	return nil
}

// topLevel returns the top-level column called name (case-insensitively,
// as BigQuery matches names), or nil.
func topLevel(schema bigquery.Schema, name string) *bigquery.FieldSchema {
	for _, f := range schema {
		if f != nil && strings.EqualFold(f.Name, name) {
			return f
		}
	}
	return nil
}

// checkPrimaryKey reports, wrapping ErrPrimaryKey, that the existing table
// md is not keyed by key, with the DDL that would fix it. Key columns
// compare case-insensitively and in any order: the order of a key's columns
// does not change which rows a change applies to. created says this call
// created the table (with the key), so the server dropped it.
func checkPrimaryKey(table string, o TableOptions, md *bigquery.TableMetadata, created bool) error {
	var have []string
	if tc := md.TableConstraints; tc != nil && tc.PrimaryKey != nil {
		have = tc.PrimaryKey.Columns
	}
	if sameColumns(have, o.PrimaryKey) {
		return nil
	}
	ref := "`" + table + "`"
	want := ddlColumns(o.PrimaryKey)
	add := fmt.Sprintf("ALTER TABLE %s ADD PRIMARY KEY (%s) NOT ENFORCED", ref, want)
	var msg string
	switch {
	case len(have) == 0 && created:
		msg = fmt.Sprintf("table %s was created with PRIMARY KEY (%s) but has none: the server did not keep it; bqsink writes changes by (%s) (%s): run %s",
			table, want, want, o.primaryKeyKey(), add)
	case len(have) == 0:
		msg = fmt.Sprintf("table %s has no primary key; bqsink writes changes by (%s) (%s): run %s",
			table, want, o.primaryKeyKey(), add)
	default:
		msg = fmt.Sprintf("table %s has primary key (%s); bqsink writes changes by (%s) (%s): run ALTER TABLE %s DROP PRIMARY KEY; then %s (or set %s to the table's key)",
			table, ddlColumns(have), want, o.primaryKeyKey(), ref, add, o.primaryKeyKey())
	}
	return withClass(errors.New(msg), ErrPrimaryKey)
}

// sameColumns reports whether a and b name the same columns, in any order
// and case.
func sameColumns(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !containsFold(b, x) {
			return false
		}
	}
	return true
}

// ddlColumns lists columns for GoogleSQL DDL, quoting the names that are
// not plain identifiers.
func ddlColumns(cols []string) string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = ddlIdent(c)
	}
	return strings.Join(out, ", ")
}

func ddlIdent(s string) string {
	plain := s != "" && !('0' <= s[0] && s[0] <= '9')
	for _, r := range s {
		if !isIdentRune(r) {
			plain = false
		}
	}
	if plain {
		return s
	}
	return "`" + strings.NewReplacer(`\`, `\\`, "`", "\\`").Replace(s) + "`"
}
