package schema

import (
	"strconv"

	"github.com/hamba/avro/v2"
)

// Kafka Connect and Debezium semantic types. Confluent's Avro converter
// (which Debezium's connectors use) names the Connect schema of a value in
// the Avro type's "connect.name" property; for its own logical types
// (org.apache.kafka.connect.data.Date, Time, Timestamp, Decimal) it writes
// the Avro logical type as well, and that is what maps. The names below
// change the mapping only on their base type and only when the type has no
// Avro logical type our parser knows; any other connect.name maps as the
// base type, as an unknown logical type does.
const (
	connectName       = "connect.name"
	connectParameters = "connect.parameters"

	// connect.parameters of org.apache.kafka.connect.data.Decimal.
	connectScale     = "scale"
	connectPrecision = "connect.decimal.precision"

	variableScaleDecimal = "io.debezium.data.VariableScaleDecimal"
)

// connectKind is what a connect.name makes of a primitive type.
type connectKind uint8

const (
	connectNone            connectKind = iota
	connectDate                        // int days since 1970-01-01 -> DATE
	connectTimeMillis                  // int milliseconds of the day -> TIME
	connectTimeMicros                  // long microseconds of the day -> TIME
	connectTimeNanos                   // long nanoseconds of the day -> TIME, cut to microseconds
	connectTimestampMillis             // long milliseconds since the epoch, UTC -> TIMESTAMP
	connectLocalMillis                 // long milliseconds since 1970-01-01 00:00, no zone -> DATETIME
	connectLocalMicros                 // long microseconds, no zone -> DATETIME
	connectLocalNanos                  // long nanoseconds, no zone -> DATETIME, cut to microseconds
	connectZoned                       // string ISO-8601 date-time with offset -> TIMESTAMP
	connectJSON                        // string holding JSON -> JSON
	connectDecimal                     // bytes, a Connect Decimal without an Avro decimal -> NUMERIC/BIGNUMERIC
)

// connectKindIf is connectKindOf(s) when on, else connectNone: for the
// plain mapping (Schema.WithoutConnectTypes).
func connectKindIf(on bool, s *avro.PrimitiveSchema) connectKind {
	if !on {
		return connectNone
	}
	return connectKindOf(s)
}

// connectKindOf says what s's connect.name makes of it, connectNone when it
// changes nothing.
func connectKindOf(s *avro.PrimitiveSchema) connectKind {
	if s.Logical() != nil {
		return connectNone // a known Avro logical type wins
	}
	name, _ := s.Prop(connectName).(string)
	if name == "" {
		return connectNone
	}
	switch s.Type() {
	case avro.Int:
		switch name {
		case "io.debezium.time.Date", "org.apache.kafka.connect.data.Date":
			return connectDate
		case "io.debezium.time.Time", "org.apache.kafka.connect.data.Time":
			return connectTimeMillis
		}
	case avro.Long:
		switch name {
		case "io.debezium.time.MicroTime":
			return connectTimeMicros
		case "io.debezium.time.NanoTime":
			return connectTimeNanos
		case "io.debezium.time.Timestamp":
			return connectLocalMillis
		case "io.debezium.time.MicroTimestamp":
			return connectLocalMicros
		case "io.debezium.time.NanoTimestamp":
			return connectLocalNanos
		case "org.apache.kafka.connect.data.Timestamp":
			return connectTimestampMillis
		}
	case avro.String:
		switch name {
		case "io.debezium.time.ZonedTimestamp":
			return connectZoned
		case "io.debezium.data.Json":
			return connectJSON
		}
	case avro.Bytes:
		if name == "org.apache.kafka.connect.data.Decimal" {
			if _, _, ok := connectDecimalParams(s); ok {
				return connectDecimal
			}
		}
	}
	return connectNone
}

// connectDecimalParams reads the precision and scale of a Connect Decimal
// from its connect.parameters: "scale" (required, not negative, as Avro's
// decimal wants) and "connect.decimal.precision" (optional). Without a
// precision, the widest one whose integer part still fits BIGNUMERIC is
// assumed, scale + 38, so the column is BIGNUMERIC (STRING past scale 38,
// like any decimal too wide for BIGNUMERIC) and a value with more integer
// digits fails to decode.
func connectDecimalParams(s *avro.PrimitiveSchema) (precision, scale int, ok bool) {
	params, _ := s.Prop(connectParameters).(map[string]any)
	text, _ := params[connectScale].(string)
	scale, err := strconv.Atoi(text)
	if err != nil || scale < 0 || scale > maxDecimalParam {
		return 0, 0, false
	}
	if text, ok := params[connectPrecision].(string); ok {
		if p, err := strconv.Atoi(text); err == nil && p > 0 && p <= maxDecimalParam {
			return p, scale, true
		}
	}
	return scale + 38, scale, true
}

// maxDecimalParam bounds a Connect Decimal's precision and scale: far past
// any column type, and small enough that the text of a value stays small.
const maxDecimalParam = 1000

// isVariableScaleDecimal reports whether r is Debezium's
// io.debezium.data.VariableScaleDecimal, a decimal that carries its own
// scale: {scale: int, value: bytes (the two's-complement unscaled value)}.
// It is recognised by its connect.name or its full name (the converter can
// be told to leave connect.* properties out) and must have exactly that
// shape; a record that does not is an ordinary record.
func isVariableScaleDecimal(r *avro.RecordSchema) bool {
	if name, _ := r.Prop(connectName).(string); name != variableScaleDecimal && r.FullName() != variableScaleDecimal {
		return false
	}
	f := r.Fields()
	return len(f) == 2 && f[0].Name() == "scale" && plainPrimitive(f[0].Type(), avro.Int) &&
		f[1].Name() == "value" && plainPrimitive(f[1].Type(), avro.Bytes)
}

// plainPrimitive reports whether a is the primitive type t with no logical
// type and no connect.name that changes its mapping.
func plainPrimitive(a avro.Schema, t avro.Type) bool {
	if ref, ok := a.(*avro.RefSchema); ok {
		a = ref.Schema()
	}
	p, ok := a.(*avro.PrimitiveSchema)
	return ok && p.Type() == t && p.Logical() == nil && connectKindOf(p) == connectNone
}

// runConnect reads one value of a Kafka Connect or Debezium type with no
// Avro logical type of its own and appends it as its column type wants.
func (n *node) runConnect(st *tstate, dst []byte) ([]byte, bool, error) {
	switch n.kind {
	case kTimeNanos:
		v, err := st.readLong()
		if err != nil {
			return dst, false, err
		}
		if v < 0 || v >= dayMicros*1000 {
			return dst, false, fail("nano-time %d is not a time of day", v)
		}
		return appendTimeOfDay(append(n.appendTag(dst), 15), v/1000), false, nil

	case kLocalTimestampNanos:
		v, err := st.readLong()
		if err != nil {
			return dst, false, err
		}
		// Cut to the microsecond it falls in (rounding down, also before
		// 1970). Every int64 of nanoseconds is within years 1677..2262.
		us := v / 1000
		if v%1000 < 0 {
			us--
		}
		return appendDateTime(append(n.appendTag(dst), 26), us), false, nil

	case kZonedTimestamp:
		b, err := st.bytes()
		if err != nil {
			return dst, false, err
		}
		us, ok := parseZoned(b)
		if !ok {
			return dst, false, fail("zoned timestamp %s is not an ISO-8601 date-time with offset (2006-01-02T15:04:05.999999999Z or +07:00)", quoteClip(b))
		}
		if us < minMicros || us > maxMicros {
			return dst, false, fail("zoned timestamp %s is outside BigQuery's years 1..9999", quoteClip(b))
		}
		return appendVarint(n.appendTag(dst), uint64(us)), false, nil

	case kVarDecimal:
		scale, err := st.readInt()
		if err != nil {
			return dst, false, at(err, "scale")
		}
		b, err := st.bytes()
		if err != nil {
			return dst, false, at(err, "value")
		}
		dst, err = appendVarDecimal(n.appendTag(dst), scale, trimSign(b))
		return dst, false, err
	}
	return dst, false, fail("internal error: unknown node kind %d", n.kind)
}

// BIGNUMERIC holds 38 fraction digits and, as the decimal mapping gives
// it, 38 integer digits (BigQuery's own limit is 5.7896…E+38).
const (
	maxBigScale     = 38
	maxBigIntDigits = 38
	// maxVarBytes: the most bytes an unscaled value of 76 digits needs once
	// redundant sign bytes are stripped (as decimalNode computes them).
	maxVarBytes = (76*3322/1000+1)/8 + 2
)

// appendVarDecimal appends the length-prefixed exact text of a
// VariableScaleDecimal: the sign-trimmed unscaled value b times 10^-scale,
// with scale fraction digits (a negative scale appends zeros), or fails
// when BIGNUMERIC cannot hold it.
func appendVarDecimal(dst []byte, scale int32, b []byte) ([]byte, error) {
	if scale > maxBigScale {
		return dst, fail("variable-scale decimal has scale %d; BIGNUMERIC holds at most %d fraction digits", scale, maxBigScale)
	}
	if len(b) > maxVarBytes {
		return dst, fail("variable-scale decimal of %d bytes has more digits than BIGNUMERIC holds", len(b))
	}
	var buf [160]byte
	digits, neg := decimalDigits(buf[:], b)
	zero := len(digits) == 1 && digits[0] == '0'
	if zero {
		neg = false
	}
	if intDigits := len(digits) - int(scale); !zero && intDigits > maxBigIntDigits {
		return dst, fail("variable-scale decimal with %d integer digits does not fit BIGNUMERIC (at most %d)", intDigits, maxBigIntDigits)
	}
	if scale < 0 {
		if zero {
			return append(dst, 1, '0'), nil
		}
		size := len(digits) + int(-scale)
		if neg {
			size++
			dst = append(appendVarint(dst, uint64(size)), '-')
		} else {
			dst = appendVarint(dst, uint64(size))
		}
		dst = append(dst, digits...)
		for range -scale {
			dst = append(dst, '0')
		}
		return dst, nil
	}
	s := int(scale)
	size := len(digits)
	switch {
	case s == 0:
	case len(digits) <= s:
		size = 2 + s
	default:
		size++
	}
	if neg {
		size++
	}
	dst = appendVarint(dst, uint64(size))
	return appendDecimalText(dst, digits, neg, s), nil
}

// parseZoned parses a ZonedTimestamp as Debezium writes it (Java's
// ISO_OFFSET_DATE_TIME): 2006-01-02T15:04[:05[.f…]] then Z or an offset
// ±07:00[:00] of at most 18 hours, with 1 to 9 fraction digits. It returns
// the instant in microseconds since the epoch, the fraction cut to
// microseconds, for years 0000..9999 (whether BigQuery takes it is the
// caller's check).
func parseZoned(b []byte) (int64, bool) {
	n := len(b)
	if n < 17 || b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' {
		return 0, false
	}
	y, mo, d := digitsAt(b, 0, 4), digitsAt(b, 5, 2), digitsAt(b, 8, 2)
	h, mi := digitsAt(b, 11, 2), digitsAt(b, 14, 2)
	if y < 0 || mo < 1 || mo > 12 || d < 1 || d > daysInMonth(y, mo) || h < 0 || h > 23 || mi < 0 || mi > 59 {
		return 0, false
	}
	i := 16
	var sec, ns int64
	if b[i] == ':' {
		if sec = digitsAt(b, i+1, 2); sec < 0 || sec > 59 {
			return 0, false
		}
		i += 3
		if i < n && b[i] == '.' {
			i++
			start := i
			for i < n && b[i] >= '0' && b[i] <= '9' && i-start < 10 {
				ns = ns*10 + int64(b[i]-'0')
				i++
			}
			k := i - start
			if k < 1 || k > 9 {
				return 0, false
			}
			for range 9 - k {
				ns *= 10
			}
		}
	}
	if i >= n {
		return 0, false
	}
	var off int64
	switch b[i] {
	case 'Z':
		i++
	case '+', '-':
		if i+6 > n || b[i+3] != ':' {
			return 0, false
		}
		oh, om := digitsAt(b, i+1, 2), digitsAt(b, i+4, 2)
		if oh < 0 || om < 0 || om > 59 {
			return 0, false
		}
		off = oh*3600 + om*60
		neg := b[i] == '-'
		i += 6
		if i < n && b[i] == ':' {
			os := digitsAt(b, i+1, 2)
			if os < 0 || os > 59 {
				return 0, false
			}
			off += os
			i += 3
		}
		if off > 18*3600 {
			return 0, false
		}
		if neg {
			off = -off
		}
	default:
		return 0, false
	}
	if i != n {
		return 0, false
	}
	secs := daysFromCivil(y, mo, d)*86400 + h*3600 + mi*60 + sec - off
	return secs*1000000 + ns/1000, true
}

// digitsAt parses b[i:i+k] as k decimal digits, or returns -1.
func digitsAt(b []byte, i, k int) int64 {
	if i+k > len(b) {
		return -1
	}
	var v int64
	for _, c := range b[i : i+k] {
		if c < '0' || c > '9' {
			return -1
		}
		v = v*10 + int64(c-'0')
	}
	return v
}

func daysInMonth(y, m int64) int64 {
	switch m {
	case 2:
		if y%4 == 0 && (y%100 != 0 || y%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil is the number of days from 1970-01-01 to y-m-d in the
// proleptic Gregorian calendar (H. Hinnant's algorithm), for y >= 0.
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := y
	if era < 0 {
		era -= 399
	}
	era /= 400
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

// quoteClip quotes b for a message, cut to 64 bytes.
func quoteClip(b []byte) string {
	if len(b) > 64 {
		return strconv.Quote(string(b[:64])) + "…"
	}
	return strconv.Quote(string(b))
}
