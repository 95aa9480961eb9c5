package bqfake

import (
	"encoding/base64"
	"fmt"
	"math"
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"time"

	bq "google.golang.org/api/bigquery/v2"
)

// Value ranges BigQuery enforces.
const (
	minDate      = -719162            // 0001-01-01 in days since the epoch
	maxDate      = 2932896            // 9999-12-31
	minTimestamp = -62135596800000000 // 0001-01-01 00:00:00 UTC in µs
	maxTimestamp = 253402300799999999 // 9999-12-31 23:59:59.999999 UTC
)

var (
	decimalRE = regexp.MustCompile(`^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$`)
	timeRE    = regexp.MustCompile(`^(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?$`)
	dateRE    = regexp.MustCompile(`^(\d{4})-(\d{1,2})-(\d{1,2})$`)
)

// decimalSpec is the precision a NUMERIC or BIGNUMERIC column accepts.
type decimalSpec struct {
	scale     int64
	intDigits int64
	bigRange  bool // BIGNUMERIC's binary range instead of intDigits
	halfEven  bool
}

func decimalSpecOf(col *bq.TableFieldSchema) decimalSpec {
	spec := decimalSpec{scale: 9, intDigits: 29}
	if col.Type == typeBigNumeric {
		spec = decimalSpec{scale: 38, bigRange: true}
	}
	if col.Precision > 0 {
		spec = decimalSpec{scale: col.Scale, intDigits: col.Precision - col.Scale}
	}
	spec.halfEven = col.RoundingMode == "ROUND_HALF_EVEN"
	return spec
}

// parseDecimal parses a decimal literal (optionally with exponent) exactly.
func parseDecimal(s string) (*big.Rat, error) {
	if !decimalRE.MatchString(s) {
		return nil, fmt.Errorf("invalid decimal %q", s)
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return nil, fmt.Errorf("invalid decimal %q", s)
	}
	return r, nil
}

// fitDecimal rounds r to the column's scale (half away from zero unless the
// column says ROUND_HALF_EVEN, as BigQuery does) and checks its range. It
// returns the normalized decimal string.
func fitDecimal(r *big.Rat, spec decimalSpec, typ string) (string, error) {
	pow := new(big.Int).Exp(big.NewInt(10), big.NewInt(spec.scale), nil)
	num := new(big.Int).Mul(r.Num(), pow)
	q, m := new(big.Int).QuoRem(num, r.Denom(), new(big.Int))
	if m.Sign() != 0 {
		twice := new(big.Int).Mul(new(big.Int).Abs(m), big.NewInt(2))
		cmp := twice.Cmp(r.Denom())
		if cmp > 0 || (cmp == 0 && (!spec.halfEven || q.Bit(0) == 1)) {
			if num.Sign() < 0 {
				q.Sub(q, big.NewInt(1))
			} else {
				q.Add(q, big.NewInt(1))
			}
		}
	}
	var inRange bool
	if spec.bigRange {
		// BIGNUMERIC holds [-2^255, 2^255-1] / 10^38.
		bound := new(big.Int).Lsh(big.NewInt(1), 255)
		inRange = q.Cmp(bound) < 0 && q.Cmp(new(big.Int).Neg(bound)) >= 0
	} else {
		limit := new(big.Int).Exp(big.NewInt(10), big.NewInt(spec.intDigits+spec.scale), nil)
		inRange = new(big.Int).Abs(q).Cmp(limit) < 0
	}
	if !inRange {
		return "", fmt.Errorf("%s value %s is out of range", typ, r.RatString())
	}
	return formatScaled(q, spec.scale), nil
}

// formatScaled renders q/10^scale with no trailing fractional zeros.
func formatScaled(q *big.Int, scale int64) string {
	neg := q.Sign() < 0
	digits := new(big.Int).Abs(q).String()
	if int64(len(digits)) <= scale {
		digits = strings.Repeat("0", int(scale)-len(digits)+1) + digits
	}
	intPart, frac := digits[:int64(len(digits))-scale], digits[int64(len(digits))-scale:]
	frac = strings.TrimRight(frac, "0")
	out := intPart
	if frac != "" {
		out += "." + frac
	}
	if neg {
		out = "-" + out
	}
	return out
}

// packedDecimal decodes BigQuery's bytes encoding of NUMERIC/BIGNUMERIC: the
// little-endian two's-complement integer of the value times 10^9 (NUMERIC)
// or 10^38 (BIGNUMERIC).
func packedDecimal(b []byte, typ string) (*big.Rat, error) {
	if len(b) == 0 || len(b) > 32 {
		return nil, fmt.Errorf("invalid %s encoding of %d bytes", typ, len(b))
	}
	be := make([]byte, len(b))
	for i, c := range b {
		be[len(b)-1-i] = c
	}
	n := new(big.Int).SetBytes(be)
	if b[len(b)-1]&0x80 != 0 {
		n.Sub(n, new(big.Int).Lsh(big.NewInt(1), uint(8*len(b))))
	}
	scale := int64(9)
	if typ == typeBigNumeric {
		scale = 38
	}
	return new(big.Rat).SetFrac(n, new(big.Int).Exp(big.NewInt(10), big.NewInt(scale), nil)), nil
}

// parseTime parses "HH:MM:SS[.ffffff]" into the canonical "15:04:05.000000".
func parseTime(s string) (string, error) {
	m := timeRE.FindStringSubmatch(s)
	if m == nil {
		return "", fmt.Errorf("invalid TIME %q", s)
	}
	h, _ := strconv.Atoi(m[1])
	mi, _ := strconv.Atoi(m[2])
	sec, _ := strconv.Atoi(m[3])
	frac := m[4] + strings.Repeat("0", 6-len(m[4]))
	if h > 23 || mi > 59 || sec > 59 {
		return "", fmt.Errorf("invalid TIME %q", s)
	}
	return fmt.Sprintf("%02d:%02d:%02d.%s", h, mi, sec, frac), nil
}

// parseDate parses "YYYY-MM-DD" into days since the epoch.
func parseDate(s string) (int32, error) {
	m := dateRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("invalid DATE %q", s)
	}
	y, _ := strconv.Atoi(m[1])
	mo, _ := strconv.Atoi(m[2])
	d, _ := strconv.Atoi(m[3])
	t := time.Date(y, time.Month(mo), d, 0, 0, 0, 0, time.UTC)
	if y < 1 || t.Year() != y || int(t.Month()) != mo || t.Day() != d {
		return 0, fmt.Errorf("invalid DATE %q", s)
	}
	return int32(t.Unix() / 86400), nil
}

// parseDatetime parses "YYYY-MM-DD[ T]HH:MM:SS[.ffffff]" into the canonical
// "2006-01-02 15:04:05.000000".
func parseDatetime(s string) (string, error) {
	i := strings.IndexAny(s, " Tt")
	if i < 0 {
		return "", fmt.Errorf("invalid DATETIME %q", s)
	}
	days, err := parseDate(s[:i])
	if err != nil {
		return "", fmt.Errorf("invalid DATETIME %q", s)
	}
	tm, err := parseTime(s[i+1:])
	if err != nil {
		return "", fmt.Errorf("invalid DATETIME %q", s)
	}
	return formatDate(days) + " " + tm, nil
}

func formatDate(days int32) string {
	return time.Unix(int64(days)*86400, 0).UTC().Format("2006-01-02")
}

// Bit layout of BigQuery's packed civil time encoding (CivilTimeEncoder):
// TIME is H(5) M(6) S(6) µs(20); DATETIME is Y(14) Mo(4) D(5) H(5) M(6) S(6) µs(20).
func packedTime(v int64) (string, error) {
	if v < 0 || v>>37 != 0 {
		return "", fmt.Errorf("invalid packed TIME %d", v)
	}
	micros := v & 0xFFFFF
	sec, mi, h := (v>>20)&0x3F, (v>>26)&0x3F, (v>>32)&0x1F
	if micros > 999999 {
		return "", fmt.Errorf("invalid packed TIME %d", v)
	}
	return parseTime(fmt.Sprintf("%02d:%02d:%02d.%06d", h, mi, sec, micros))
}

func packedDatetime(v int64) (string, error) {
	if v < 0 || v>>60 != 0 {
		return "", fmt.Errorf("invalid packed DATETIME %d", v)
	}
	tm, err := packedTime(v & (1<<37 - 1))
	if err != nil {
		return "", fmt.Errorf("invalid packed DATETIME %d", v)
	}
	d, mo, y := (v>>37)&0x1F, (v>>42)&0xF, (v>>46)&0x3FFF
	days, err := parseDate(fmt.Sprintf("%04d-%02d-%02d", y, mo, d))
	if err != nil {
		return "", fmt.Errorf("invalid packed DATETIME %d", v)
	}
	return formatDate(days) + " " + tm, nil
}

// parseTimestamp accepts the string forms BigQuery documents for TIMESTAMP
// ("2006-01-02 15:04:05[.ffffff][zone]", also with 'T'), returning µs.
func parseTimestamp(s string) (int64, error) {
	layouts := []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999", "2006-01-02T15:04:05.999999999"}
	for _, l := range layouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UnixMicro(), nil
		}
	}
	return 0, fmt.Errorf("invalid TIMESTAMP %q", s)
}

func checkTimestamp(us int64) (int64, error) {
	if us < minTimestamp || us > maxTimestamp {
		return 0, fmt.Errorf("TIMESTAMP %d is out of range", us)
	}
	return us, nil
}

func checkDate(days int64) (int32, error) {
	if days < minDate || days > maxDate {
		return 0, fmt.Errorf("DATE %d is out of range", days)
	}
	return int32(days), nil
}

// restCell renders a stored value in the tabledata.list "f/v" JSON form the
// Go client's value parser expects.
func restCell(v any, col *bq.TableFieldSchema, int64Timestamp bool) any {
	if col.Mode == modeRepeated {
		list, _ := v.([]any)
		out := make([]any, 0, len(list))
		for _, e := range list {
			out = append(out, map[string]any{"v": restScalar(e, col, int64Timestamp)})
		}
		return out
	}
	return restScalar(v, col, int64Timestamp)
}

func restScalar(v any, col *bq.TableFieldSchema, int64Timestamp bool) any {
	if v == nil {
		return nil
	}
	switch col.Type {
	case typeRecord:
		rec, _ := v.(map[string]any)
		return restRecord(rec, col.Fields, int64Timestamp)
	case typeBoolean:
		return strconv.FormatBool(v.(bool))
	case typeInteger:
		return strconv.FormatInt(v.(int64), 10)
	case typeFloat:
		f := v.(float64)
		switch {
		case math.IsInf(f, 1):
			return "Infinity"
		case math.IsInf(f, -1):
			return "-Infinity"
		}
		return strconv.FormatFloat(f, 'g', -1, 64)
	case typeBytes:
		return base64.StdEncoding.EncodeToString(v.([]byte))
	case typeDate:
		return formatDate(v.(int32))
	case typeTime:
		return v.(string)
	case typeDatetime:
		return strings.Replace(v.(string), " ", "T", 1)
	case typeTimestamp:
		us := v.(int64)
		if int64Timestamp {
			return strconv.FormatInt(us, 10)
		}
		// BigQuery's legacy form: seconds as a float in E notation.
		s := strconv.FormatFloat(float64(us)/1e6, 'E', -1, 64)
		mant, exp, _ := strings.Cut(s, "E")
		e, _ := strconv.Atoi(exp)
		return mant + "E" + strconv.Itoa(e)
	default: // STRING, NUMERIC, BIGNUMERIC, GEOGRAPHY, JSON
		return v.(string)
	}
}

func restRecord(rec map[string]any, fields []*bq.TableFieldSchema, int64Timestamp bool) map[string]any {
	cells := make([]any, 0, len(fields))
	for _, f := range fields {
		cells = append(cells, map[string]any{"v": restCell(rec[f.Name], f, int64Timestamp)})
	}
	return map[string]any{"f": cells}
}
