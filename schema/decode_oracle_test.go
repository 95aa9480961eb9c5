package schema

// The reference decoder: the transcoder's oracle in tests, and nothing
// else. It decodes an Avro body into the row value contract (column name to
// Go value, NULL an absent key, map[string]any for a RECORD, []any for a
// REPEATED column), which bq's encoder turns into the same protobuf bytes
// Transcoder writes directly. It reads through hamba/avro's Reader and
// builds its own tree of decoders per schema, so it shares no reading code
// with the transcoder (only the error type, fail and at, and BigQuery's
// ranges). It was the daemon's path before the transcoder; the daemon no
// longer builds it.

import (
	"errors"
	"fmt"
	"io"
	"math/big"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/hamba/avro/v2"
)

// Decode decodes an Avro binary body written with s into a row keyed by
// column name, holding values as the row value contract says (NULL is an
// absent key). The whole body must be consumed. Errors wrap ErrDecode and
// name the field path; arbitrary input returns an error, never panics.
// Strings and bytes in the row share one allocation the size of body, and
// body itself is not retained.
func (s *Schema) Decode(body []byte) (map[string]any, error) {
	od := oracleFor(s)
	d := od.pool.Get().(*decoder)
	d.reset(body)
	v, err := od.root(d)
	if err == nil {
		if d.r.Peek(); d.r.Error == nil {
			err = fail("trailing bytes after the record")
		}
	}
	d.reset(nil)
	od.pool.Put(d)
	if err != nil {
		return nil, fmt.Errorf("%w: schema %d: %v", ErrDecode, s.id, err)
	}
	return v.(map[string]any), nil
}

// oracleDecoder is the decoder tree of one Schema and its pooled readers.
type oracleDecoder struct {
	root decodeFunc
	pool sync.Pool // *decoder, each owning a reusable *avro.Reader
}

var oracleDecoders sync.Map // *Schema -> *oracleDecoder, built on first use

func oracleFor(s *Schema) *oracleDecoder {
	if od, ok := oracleDecoders.Load(s); ok {
		return od.(*oracleDecoder)
	}
	od := &oracleDecoder{root: decoderOf(s.writer)}
	od.pool.New = func() any { return &decoder{r: avro.NewReader(nil, 0)} }
	got, _ := oracleDecoders.LoadOrStore(s, od)
	return got.(*oracleDecoder)
}

// decoderOf builds the decoder of a, an Avro type of a compiled schema (so
// one mapper.mapType accepts: no recursion, no null alone), making the
// values mapper's columns hold.
func decoderOf(a avro.Schema) decodeFunc {
	switch a := a.(type) {
	case *avro.RefSchema:
		return decoderOf(a.Schema())
	case *avro.PrimitiveSchema:
		return primitiveDecoder(a)
	case *avro.RecordSchema:
		if oracleVariableScaleDecimal(a) {
			return decodeVariableScaleDecimal
		}
		fields := make([]fieldDecoder, len(a.Fields()))
		for i, f := range a.Fields() {
			fields[i] = fieldDecoder{name: f.Name(), dec: decoderOf(f.Type())}
		}
		return recordDecoder(fields)
	case *avro.EnumSchema:
		return enumDecoder(a.Symbols())
	case *avro.FixedSchema:
		size := a.Size()
		if d, ok := a.Logical().(*avro.DecimalLogicalSchema); ok {
			return decimalDecoder(func(d *decoder) ([]byte, error) { return d.fixed(size) }, d.Precision(), d.Scale())
		}
		return fixedDecoder(size) // duration too, as its raw bytes
	case *avro.ArraySchema:
		item := decoderOf(a.Items())
		if repeatedType(a.Items()) {
			// An array of arrays (or maps): each item is a RECORD holding
			// the inner one in its field "items".
			item = wrapDecoder("items", item)
		}
		return arrayDecoder(item)
	case *avro.MapSchema:
		return mapDecoder(decoderOf(a.Values()))
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
			b := types[branches[0]]
			return optionalDecoder(len(types), null, decoderOf(b), repeatedType(b))
		}
		decs := make([]branchDecoder, len(types))
		for _, i := range branches {
			decs[i] = branchDecoder{name: branchName(types[i]), dec: decoderOf(types[i])}
		}
		return unionDecoder(decs)
	}
	panic(fmt.Sprintf("no decoder for Avro type %s", a.Type()))
}

// repeatedType reports whether a maps to a REPEATED column: an array or a
// map, or a union of null and one of them.
func repeatedType(a avro.Schema) bool {
	switch a := a.(type) {
	case *avro.RefSchema:
		return repeatedType(a.Schema())
	case *avro.ArraySchema, *avro.MapSchema:
		return true
	case *avro.UnionSchema:
		var branch avro.Schema
		for _, t := range a.Types() {
			if t.Type() != avro.Null {
				if branch != nil {
					return false // several branches: a RECORD
				}
				branch = t
			}
		}
		return branch != nil && repeatedType(branch)
	}
	return false
}

// primitiveDecoder mirrors mapper.primitive.
func primitiveDecoder(s *avro.PrimitiveSchema) decodeFunc {
	if dec := connectDecoder(s); dec != nil {
		return dec
	}
	var logical avro.LogicalType
	if l := s.Logical(); l != nil {
		logical = l.Type()
	}
	switch s.Type() {
	case avro.Boolean:
		return decodeBool
	case avro.Int:
		switch logical {
		case avro.Date:
			return decodeDate
		case avro.TimeMillis:
			return decodeTimeMillis
		}
		return decodeInt
	case avro.Long:
		switch logical {
		case avro.TimeMicros:
			return decodeTimeMicros
		case avro.TimestampMillis:
			return decodeTimestampMillis
		case avro.TimestampMicros:
			return decodeTimestampMicros
		case avro.LocalTimestampMillis:
			return decodeLocalTimestampMillis
		case avro.LocalTimestampMicros:
			return decodeLocalTimestampMicros
		}
		return decodeLong
	case avro.Float:
		return decodeFloat
	case avro.Double:
		return decodeDouble
	case avro.Bytes:
		if d, ok := s.Logical().(*avro.DecimalLogicalSchema); ok {
			return decimalDecoder((*decoder).bytes, d.Precision(), d.Scale())
		}
		return decodeBytes
	default: // avro.String; uuid and unknown logical types stay strings
		return decodeString
	}
}

// decodeFunc decodes one Avro value into its row value. A NULL is an untyped
// nil. Errors are *decodeError.
type decodeFunc func(d *decoder) (any, error)

// decoder is the state of one Decode call.
type decoder struct {
	r *avro.Reader
	// size is the body length. Every value we accept takes at least one
	// byte, so it also bounds the array items and map entries left to read.
	size  int
	items int
	// arena backs every string and bytes value of the row: one allocation
	// per record, sized to the body, so a length prefix can never make us
	// allocate more than the body holds. Parts handed out are never written
	// again.
	arena []byte
	grown bool

	// lax: the body is a change envelope (DecodeChange) whose parts are
	// only read past unless they are the row written. A value BigQuery
	// cannot store does not stop the reading: the first such error is kept
	// in laxErr and a stand-in value is returned.
	lax    bool
	laxErr error
}

// invalid reports a value BigQuery cannot store: the error, or in lax mode
// the stand-in (the value as read, where there is one) after noting it.
func (d *decoder) invalid(err error, standIn any) (any, error) {
	if !d.lax {
		return nil, err
	}
	if d.laxErr == nil {
		d.laxErr = err
	}
	if standIn == nil {
		standIn = "(invalid)"
	}
	return standIn, nil
}

func (d *decoder) reset(body []byte) {
	d.r.Reset(body)
	d.r.Error = nil // Reset keeps the previous record's error
	d.size, d.items = len(body), len(body)
	d.arena, d.grown = nil, false
	d.lax, d.laxErr = false, nil
}

// readErr turns the reader's sticky error, if any, into a decodeError.
func (d *decoder) readErr() error {
	err := d.r.Error
	if err == nil {
		return nil
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fail("body ends early")
	}
	return fail("%v", err)
}

// length reads a non-negative count or length prefix.
func (d *decoder) length() (int, error) {
	n := d.r.ReadLong()
	if err := d.readErr(); err != nil {
		return 0, err
	}
	if n < 0 || n > int64(d.size) {
		return 0, fail("length %d does not fit in a %d-byte body", n, d.size)
	}
	return int(n), nil
}

// take reads the next n bytes into a fresh part of the arena.
func (d *decoder) take(n int) ([]byte, error) {
	if n == 0 {
		return []byte{}, nil
	}
	if !d.grown {
		d.arena, d.grown = make([]byte, d.size), true
	}
	if n > len(d.arena) {
		return nil, fail("length %d runs past the end of the body", n)
	}
	b := d.arena[:n:n]
	d.arena = d.arena[n:]
	d.r.Read(b)
	if err := d.readErr(); err != nil {
		return nil, err
	}
	return b, nil
}

func (d *decoder) bytes() ([]byte, error) {
	n, err := d.length()
	if err != nil {
		return nil, err
	}
	return d.take(n)
}

func (d *decoder) fixed(size int) ([]byte, error) { return d.take(size) }

// blockCount reads an array or map block header: the item count, negative
// when a byte size follows (which we do not need).
func (d *decoder) blockCount() (int, error) {
	n := d.r.ReadLong()
	if n < 0 {
		d.r.ReadLong()
		n = -n
	}
	if err := d.readErr(); err != nil {
		return 0, err
	}
	if n < 0 || n > int64(d.items) {
		return 0, fail("block of %d items cannot fit in the rest of a %d-byte body", n, d.size)
	}
	d.items -= int(n)
	return int(n), nil
}

func (d *decoder) unionIndex(branches int) (int, error) {
	i := d.r.ReadLong()
	if err := d.readErr(); err != nil {
		return 0, err
	}
	if i < 0 || i >= int64(branches) {
		return 0, fail("union branch %d out of range, the union has %d", i, branches)
	}
	return int(i), nil
}

func decodeBool(d *decoder) (any, error) {
	v := d.r.ReadBool()
	if err := d.readErr(); err != nil {
		return nil, err
	}
	return v, nil
}

func decodeInt(d *decoder) (any, error) {
	v := d.r.ReadInt()
	if err := d.readErr(); err != nil {
		return nil, err
	}
	return int64(v), nil
}

func decodeLong(d *decoder) (any, error) {
	v := d.r.ReadLong()
	if err := d.readErr(); err != nil {
		return nil, err
	}
	return v, nil
}

func decodeFloat(d *decoder) (any, error) {
	v := d.r.ReadFloat()
	if err := d.readErr(); err != nil {
		return nil, err
	}
	return float64(v), nil
}

func decodeDouble(d *decoder) (any, error) {
	v := d.r.ReadDouble()
	if err := d.readErr(); err != nil {
		return nil, err
	}
	return v, nil
}

func decodeBytes(d *decoder) (any, error) {
	b, err := d.bytes()
	if err != nil {
		return nil, err
	}
	return b, nil
}

func decodeString(d *decoder) (any, error) {
	b, err := d.bytes()
	if err != nil {
		return nil, err
	}
	if !utf8.Valid(b) {
		return d.invalid(fail("string is not valid UTF-8"), string(b))
	}
	if len(b) == 0 {
		return "", nil
	}
	// b is a part of the arena that nothing writes again.
	return unsafe.String(&b[0], len(b)), nil
}

func fixedDecoder(size int) decodeFunc {
	return func(d *decoder) (any, error) {
		b, err := d.fixed(size)
		if err != nil {
			return nil, err
		}
		return b, nil
	}
}

func enumDecoder(symbols []string) decodeFunc {
	return func(d *decoder) (any, error) {
		i := d.r.ReadInt()
		if err := d.readErr(); err != nil {
			return nil, err
		}
		if i < 0 || int(i) >= len(symbols) {
			return nil, fail("enum index %d out of range, the enum has %d symbols", i, len(symbols))
		}
		return symbols[i], nil
	}
}

func decodeDate(d *decoder) (any, error) {
	v := d.r.ReadInt()
	if err := d.readErr(); err != nil {
		return nil, err
	}
	if v < minDate || v > maxDate {
		return d.invalid(fail("date %d days from 1970-01-01 is outside BigQuery's 0001-01-01..9999-12-31", v), nil)
	}
	return v, nil
}

func decodeTimeMillis(d *decoder) (any, error) {
	v := d.r.ReadInt()
	if err := d.readErr(); err != nil {
		return nil, err
	}
	return d.checked(timeOfDay(int64(v)*1000, "time-millis", int64(v)))
}

func decodeTimeMicros(d *decoder) (any, error) {
	v := d.r.ReadLong()
	if err := d.readErr(); err != nil {
		return nil, err
	}
	return d.checked(timeOfDay(v, "time-micros", v))
}

// checked passes a value on, or its error through invalid.
func (d *decoder) checked(v any, err error) (any, error) {
	if err != nil {
		return d.invalid(err, nil)
	}
	return v, nil
}

// timeOfDay formats microseconds after midnight as BigQuery TIME
// "15:04:05.000000".
func timeOfDay(us int64, logical string, raw int64) (any, error) {
	if us < 0 || us >= dayMicros {
		return nil, fail("%s %d is not a time of day", logical, raw)
	}
	var b [15]byte
	put2 := func(i int, v int64) { b[i], b[i+1] = byte('0'+v/10), byte('0'+v%10) }
	put2(0, us/3600000000)
	b[2] = ':'
	put2(3, us/60000000%60)
	b[5] = ':'
	put2(6, us/1000000%60)
	b[8] = '.'
	frac := us % 1000000
	for i := 14; i > 8; i-- {
		b[i] = byte('0' + frac%10)
		frac /= 10
	}
	return string(b[:]), nil
}

func decodeTimestampMillis(d *decoder) (any, error) {
	v := d.r.ReadLong()
	if err := d.readErr(); err != nil {
		return nil, err
	}
	if v < minMicros/1000 || v > maxMicros/1000 {
		return d.invalid(fail("timestamp-millis %d is outside BigQuery's years 1..9999", v), nil)
	}
	return v * 1000, nil
}

func decodeTimestampMicros(d *decoder) (any, error) {
	v := d.r.ReadLong()
	if err := d.readErr(); err != nil {
		return nil, err
	}
	if v < minMicros || v > maxMicros {
		return d.invalid(fail("timestamp-micros %d is outside BigQuery's years 1..9999", v), nil)
	}
	return v, nil
}

func decodeLocalTimestampMillis(d *decoder) (any, error) {
	v := d.r.ReadLong()
	if err := d.readErr(); err != nil {
		return nil, err
	}
	if v < minMicros/1000 || v > maxMicros/1000 {
		return d.invalid(fail("local-timestamp-millis %d is outside BigQuery's years 1..9999", v), nil)
	}
	return dateTime(v * 1000), nil
}

func decodeLocalTimestampMicros(d *decoder) (any, error) {
	v := d.r.ReadLong()
	if err := d.readErr(); err != nil {
		return nil, err
	}
	if v < minMicros || v > maxMicros {
		return d.invalid(fail("local-timestamp-micros %d is outside BigQuery's years 1..9999", v), nil)
	}
	return dateTime(v), nil
}

// dateTime formats a wall-clock time (microseconds from 1970-01-01 00:00,
// no zone) as BigQuery DATETIME.
func dateTime(us int64) string {
	var b [26]byte
	return string(time.UnixMicro(us).UTC().AppendFormat(b[:0], "2006-01-02 15:04:05.000000"))
}

// decimalDecoder decodes a decimal from its big-endian two's-complement
// unscaled value into the exact decimal string, never through a float.
func decimalDecoder(raw func(*decoder) ([]byte, error), precision, scale int) decodeFunc {
	// A value of precision digits needs at most this many bytes once
	// redundant sign bytes are stripped; checking it first keeps a hostile
	// length from costing a huge big.Int conversion.
	maxBytes := (precision*3322/1000+1)/8 + 2
	return func(d *decoder) (any, error) {
		b, err := raw(d)
		if err != nil {
			return nil, err
		}
		b = trimSign(b)
		if len(b) > maxBytes {
			return d.invalid(fail("decimal of %d bytes exceeds precision %d", len(b), precision), nil)
		}
		s, digits := decimalText(b, scale)
		if digits > precision {
			return d.invalid(fail("decimal %s has %d digits, more than its precision %d", s, digits, precision), nil)
		}
		return s, nil
	}
}

// decimalText renders the two's-complement big-endian unscaled value b with
// scale fraction digits, and counts the digits of the unscaled value.
func decimalText(b []byte, scale int) (string, int) {
	var buf [48]byte
	var digits []byte
	neg := len(b) > 0 && b[0]&0x80 != 0
	if len(b) <= 8 {
		var u uint64
		for _, c := range b {
			u = u<<8 | uint64(c)
		}
		if neg && len(b) < 8 {
			u |= ^uint64(0) << (8 * len(b)) // sign-extend
		}
		if neg {
			u = -u // two's complement magnitude; right for math.MinInt64 too
		}
		digits = strconv.AppendUint(buf[:0], u, 10)
	} else {
		n := new(big.Int).SetBytes(b)
		if neg {
			n.Sub(n, new(big.Int).Lsh(big.NewInt(1), uint(8*len(b))))
			n.Neg(n)
		}
		digits = n.Append(buf[:0], 10)
	}
	count := len(digits)
	if count == 1 && digits[0] == '0' {
		count, neg = 0, false
	}

	var out strings.Builder
	out.Grow(len(digits) + scale + 3)
	if neg {
		out.WriteByte('-')
	}
	if scale == 0 {
		out.Write(digits)
		return out.String(), count
	}
	if len(digits) <= scale {
		out.WriteString("0.")
		for range scale - len(digits) {
			out.WriteByte('0')
		}
		out.Write(digits)
		return out.String(), count
	}
	out.Write(digits[:len(digits)-scale])
	out.WriteByte('.')
	out.Write(digits[len(digits)-scale:])
	return out.String(), count
}

type fieldDecoder struct {
	name string
	dec  decodeFunc
}

func recordDecoder(fields []fieldDecoder) decodeFunc {
	return func(d *decoder) (any, error) {
		row := make(map[string]any, len(fields))
		for i := range fields {
			v, err := fields[i].dec(d)
			if err != nil {
				return nil, at(err, fields[i].name)
			}
			if v != nil {
				row[fields[i].name] = v
			}
		}
		return row, nil
	}
}

func arrayDecoder(item decodeFunc) decodeFunc {
	return func(d *decoder) (any, error) {
		out := []any{}
		for {
			n, err := d.blockCount()
			if err != nil {
				return nil, at(err, "["+strconv.Itoa(len(out))+"]")
			}
			if n == 0 {
				return out, nil
			}
			out = growAny(out, n)
			for range n {
				v, err := item(d)
				if err == nil && v == nil {
					v, err = d.invalid(fail("NULL array element: BigQuery arrays cannot hold NULL"), nil)
				}
				if err != nil {
					return nil, at(err, "["+strconv.Itoa(len(out))+"]")
				}
				out = append(out, v)
			}
		}
	}
}

// mapDecoder decodes an Avro map as BigQuery does: an array of key/value
// records, in the order the entries were written.
func mapDecoder(value decodeFunc) decodeFunc {
	return func(d *decoder) (any, error) {
		out := []any{}
		for {
			n, err := d.blockCount()
			if err != nil {
				return nil, at(err, "["+strconv.Itoa(len(out))+"]")
			}
			if n == 0 {
				return out, nil
			}
			out = growAny(out, n)
			for range n {
				k, err := decodeString(d)
				if err != nil {
					return nil, at(at(err, "key"), "["+strconv.Itoa(len(out))+"]")
				}
				v, err := value(d)
				if err != nil {
					return nil, at(at(err, "value"), "["+strconv.Itoa(len(out))+"]")
				}
				entry := map[string]any{"key": k}
				if v != nil {
					entry["value"] = v
				}
				out = append(out, entry)
			}
		}
	}
}

func growAny(s []any, n int) []any {
	if cap(s)-len(s) >= n {
		return s
	}
	grown := make([]any, len(s), len(s)+n)
	copy(grown, s)
	return grown
}

func wrapDecoder(name string, dec decodeFunc) decodeFunc {
	return func(d *decoder) (any, error) {
		v, err := dec(d)
		if err != nil {
			return nil, at(err, name)
		}
		return map[string]any{name: v}, nil
	}
}

// optionalDecoder decodes a union of null and one other type. A REPEATED
// column cannot be NULL, so for arrays and maps null becomes empty.
func optionalDecoder(branches, null int, dec decodeFunc, repeated bool) decodeFunc {
	return func(d *decoder) (any, error) {
		i, err := d.unionIndex(branches)
		if err != nil {
			return nil, err
		}
		if i == null {
			if repeated {
				return []any{}, nil
			}
			return nil, nil
		}
		return dec(d)
	}
}

type branchDecoder struct {
	name string
	dec  decodeFunc // nil for the null branch
}

// unionDecoder decodes a union of several non-null types into a record with
// the chosen branch's field set, or NULL for the null branch.
func unionDecoder(branches []branchDecoder) decodeFunc {
	return func(d *decoder) (any, error) {
		i, err := d.unionIndex(len(branches))
		if err != nil {
			return nil, err
		}
		b := branches[i]
		if b.dec == nil {
			return nil, nil
		}
		v, err := b.dec(d)
		if err != nil {
			return nil, at(err, b.name)
		}
		return map[string]any{b.name: v}, nil
	}
}
