package schema

// The reference decoder's Kafka Connect and Debezium types (see
// decode_oracle_test.go): its own reading of connect.name, through
// hamba/avro's Reader, the standard library's time and math/big, and a
// regular expression for ZonedTimestamp; none of the transcoder's code.

import (
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hamba/avro/v2"
)

// connectDecoder returns the decoder of a primitive type whose connect.name
// changes its mapping, or nil.
func connectDecoder(s *avro.PrimitiveSchema) decodeFunc {
	if s.Logical() != nil {
		return nil // an Avro logical type our parser knows wins
	}
	name, _ := s.Prop("connect.name").(string)
	type key struct {
		t    avro.Type
		name string
	}
	switch (key{s.Type(), name}) {
	case key{avro.Int, "io.debezium.time.Date"}, key{avro.Int, "org.apache.kafka.connect.data.Date"}:
		return decodeDate
	case key{avro.Int, "io.debezium.time.Time"}, key{avro.Int, "org.apache.kafka.connect.data.Time"}:
		return decodeTimeMillis
	case key{avro.Long, "io.debezium.time.MicroTime"}:
		return decodeTimeMicros
	case key{avro.Long, "io.debezium.time.NanoTime"}:
		return decodeNanoTime
	case key{avro.Long, "org.apache.kafka.connect.data.Timestamp"}:
		return decodeTimestampMillis
	case key{avro.Long, "io.debezium.time.Timestamp"}:
		return decodeLocalTimestampMillis
	case key{avro.Long, "io.debezium.time.MicroTimestamp"}:
		return decodeLocalTimestampMicros
	case key{avro.Long, "io.debezium.time.NanoTimestamp"}:
		return decodeNanoTimestamp
	case key{avro.String, "io.debezium.time.ZonedTimestamp"}:
		return decodeZonedTimestamp
	case key{avro.String, "io.debezium.data.Json"}:
		return decodeString // a JSON column takes the text as a string
	case key{avro.Bytes, "org.apache.kafka.connect.data.Decimal"}:
		params, _ := s.Prop("connect.parameters").(map[string]any)
		scaleText, _ := params["scale"].(string)
		scale, err := strconv.ParseInt(scaleText, 10, 32)
		if err != nil || scale < 0 || scale > 1000 {
			return nil // not a usable decimal: its bytes
		}
		precision := scale + 38 // the widest BIGNUMERIC takes
		if text, ok := params["connect.decimal.precision"].(string); ok {
			if p, err := strconv.ParseInt(text, 10, 32); err == nil && p >= 1 && p <= 1000 {
				precision = p
			}
		}
		return decimalDecoder((*decoder).bytes, int(precision), int(scale))
	}
	return nil
}

func decodeNanoTime(d *decoder) (any, error) {
	v := d.r.ReadLong()
	if err := d.readErr(); err != nil {
		return nil, err
	}
	if v < 0 || v >= 24*int64(time.Hour) {
		return d.invalid(fail("nano-time %d is not a time of day", v), nil)
	}
	return d.checked(timeOfDay(int64(time.Duration(v).Truncate(time.Microsecond)/time.Microsecond), "nano-time", v))
}

func decodeNanoTimestamp(d *decoder) (any, error) {
	v := d.r.ReadLong()
	if err := d.readErr(); err != nil {
		return nil, err
	}
	// Formatting cuts the fraction; for times before 1970 too, since a
	// time.Time's fraction counts up from its second.
	var b [26]byte
	return string(time.Unix(0, v).UTC().AppendFormat(b[:0], "2006-01-02 15:04:05.000000")), nil
}

// zoned is Debezium's ZonedTimestamp text: Java's ISO_OFFSET_DATE_TIME.
var zoned = regexp.MustCompile(`^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(?:Z|([+-])(\d{2}):(\d{2})(?::(\d{2}))?)$`)

func decodeZonedTimestamp(d *decoder) (any, error) {
	b, err := d.bytes()
	if err != nil {
		return nil, err
	}
	us, ok := parseZonedReference(string(b))
	if !ok {
		return d.invalid(fail("zoned timestamp %q is not an ISO-8601 date-time with offset", b), nil)
	}
	if us < minMicros || us > maxMicros {
		return d.invalid(fail("zoned timestamp %q is outside BigQuery's years 1..9999", b), nil)
	}
	return us, nil
}

func parseZonedReference(s string) (int64, bool) {
	m := zoned.FindStringSubmatch(s)
	if m == nil {
		return 0, false
	}
	n := func(i int) int {
		if m[i] == "" {
			return 0
		}
		v, _ := strconv.Atoi(m[i])
		return v
	}
	y, mo, day, h, mi, sec := n(1), n(2), n(3), n(4), n(5), n(6)
	if h > 23 || mi > 59 || sec > 59 || n(10) > 59 || n(11) > 59 {
		return 0, false
	}
	local := time.Date(y, time.Month(mo), day, h, mi, sec, 0, time.UTC)
	if local.Year() != y || int(local.Month()) != mo || local.Day() != day {
		return 0, false // no such day: time.Date moved it
	}
	offset := n(9)*3600 + n(10)*60 + n(11)
	if offset > 18*3600 {
		return 0, false
	}
	if m[8] == "-" {
		offset = -offset
	}
	frac := 0
	if m[7] != "" {
		frac, _ = strconv.Atoi((m[7] + "00000000")[:9])
	}
	return local.Add(-time.Duration(offset)*time.Second).Unix()*1000000 + int64(frac/1000), true
}

// oracleVariableScaleDecimal recognises io.debezium.data.VariableScaleDecimal
// as README's mapping table describes it.
func oracleVariableScaleDecimal(r *avro.RecordSchema) bool {
	name, _ := r.Prop("connect.name").(string)
	if name != "io.debezium.data.VariableScaleDecimal" && r.FullName() != "io.debezium.data.VariableScaleDecimal" {
		return false
	}
	plain := func(a avro.Schema, t avro.Type) bool {
		if ref, ok := a.(*avro.RefSchema); ok {
			a = ref.Schema()
		}
		p, ok := a.(*avro.PrimitiveSchema)
		return ok && p.Type() == t && p.Logical() == nil && connectDecoder(p) == nil
	}
	f := r.Fields()
	return len(f) == 2 && f[0].Name() == "scale" && plain(f[0].Type(), avro.Int) && f[1].Name() == "value" && plain(f[1].Type(), avro.Bytes)
}

// decodeVariableScaleDecimal decodes {scale, value} into the exact decimal
// text BIGNUMERIC takes, with scale fraction digits (zeros appended for a
// negative scale).
func decodeVariableScaleDecimal(d *decoder) (any, error) {
	scale := d.r.ReadInt()
	if err := d.readErr(); err != nil {
		return nil, at(err, "scale")
	}
	b, err := d.bytes()
	if err != nil {
		return nil, at(err, "value")
	}
	if scale > 38 {
		return d.invalid(fail("variable-scale decimal has scale %d, more than BIGNUMERIC's 38", scale), nil)
	}
	v := new(big.Int).SetBytes(b)
	if len(b) > 0 && b[0]&0x80 != 0 {
		v.Sub(v, new(big.Int).Lsh(big.NewInt(1), uint(8*len(b))))
	}
	if v.Sign() == 0 {
		if scale <= 0 {
			return "0", nil
		}
		return "0." + strings.Repeat("0", int(scale)), nil
	}
	limit := new(big.Int).Exp(big.NewInt(10), big.NewInt(38+int64(scale)), nil) // |v| / 10^scale < 10^38
	if scale < 0 && -int64(scale) > 38 || scale >= 0 && new(big.Int).Abs(v).Cmp(limit) >= 0 {
		return d.invalid(fail("variable-scale decimal does not fit BIGNUMERIC"), nil)
	}
	if scale < 0 {
		v.Mul(v, new(big.Int).Exp(big.NewInt(10), big.NewInt(-int64(scale)), nil))
		if new(big.Int).Abs(v).Cmp(new(big.Int).Exp(big.NewInt(10), big.NewInt(38), nil)) >= 0 {
			return d.invalid(fail("variable-scale decimal does not fit BIGNUMERIC"), nil)
		}
		return v.String(), nil
	}
	r := new(big.Rat).SetFrac(v, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(scale)), nil))
	return r.FloatString(int(scale)), nil
}
