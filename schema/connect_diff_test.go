package schema_test

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hamba/avro/v2"

	"github.com/bqsink/bqsink/schema"
)

// The random bodies of Kafka Connect and Debezium types (see gen in
// transcode_diff_test.go): valid values across each type's range, and with
// probability bad the invalid ones the reference rejects.

// isVSD recognises io.debezium.data.VariableScaleDecimal by name.
func isVSD(r *avro.RecordSchema) bool {
	name, _ := r.Prop("connect.name").(string)
	return (name == "io.debezium.data.VariableScaleDecimal" || r.FullName() == "io.debezium.data.VariableScaleDecimal") && len(r.Fields()) == 2
}

// variableScaleDecimal writes {scale, value}: a scale of 0..38 (or
// negative) and a value whose integer part fits BIGNUMERIC; when bad, a
// scale over 38 or an integer part too long.
func (g *gen) variableScaleDecimal(b []byte) []byte {
	scale := int64(g.r.IntN(39))
	switch g.r.IntN(8) {
	case 0:
		scale = -int64(g.r.IntN(40))
	case 1:
		scale = 38
	}
	maxDigits := 38 + scale // a negative scale's zeros count as integer digits
	if maxDigits < 0 {
		maxDigits = 0
	}
	if g.isBad() {
		if g.r.IntN(2) == 0 {
			scale = 39 + int64(g.r.IntN(1000))
		} else {
			maxDigits += 1 + int64(g.r.IntN(3))
		}
	}
	digits := g.r.Int64N(maxDigits + 1)
	if g.r.IntN(3) == 0 {
		digits = maxDigits
	}
	v := new(big.Int)
	for i := range digits {
		d := int64(g.r.IntN(10))
		if i == 0 && d == 0 {
			d = 1
		}
		v.Mul(v, big.NewInt(10)).Add(v, big.NewInt(d))
	}
	if g.r.IntN(2) == 0 {
		v.Neg(v)
	}
	n := (v.BitLen()+8)/8 + g.r.IntN(2) // sometimes a redundant sign byte
	tc := new(big.Int).Set(v)
	if v.Sign() < 0 {
		tc.Add(tc, new(big.Int).Lsh(big.NewInt(1), uint(8*n)))
	}
	b = zz(b, scale)
	return append(zz(b, int64(n)), tc.FillBytes(make([]byte, n))...)
}

// connect writes a value of a type whose connect.name changes its mapping;
// false for any other type.
func (g *gen) connect(b []byte, a *avro.PrimitiveSchema) ([]byte, bool) {
	if a.Logical() != nil {
		return b, false
	}
	name, _ := a.Prop("connect.name").(string)
	bad := g.isBad()
	in := func(lo, hi, floor, ceil int64) int64 {
		if bad {
			return g.outside(lo, hi, floor, ceil)
		}
		return g.int64In(lo, hi)
	}
	switch a.Type() {
	case avro.Int:
		switch name {
		case "io.debezium.time.Date", "org.apache.kafka.connect.data.Date":
			return zz(b, in(minDate, maxDate, math.MinInt32, math.MaxInt32)), true
		case "io.debezium.time.Time", "org.apache.kafka.connect.data.Time":
			return zz(b, in(0, dayMicros/1000-1, math.MinInt32, math.MaxInt32)), true
		}
	case avro.Long:
		switch name {
		case "io.debezium.time.MicroTime":
			return zz(b, in(0, dayMicros-1, math.MinInt64, math.MaxInt64)), true
		case "io.debezium.time.NanoTime":
			return zz(b, in(0, dayMicros*1000-1, math.MinInt64, math.MaxInt64)), true
		case "io.debezium.time.Timestamp", "org.apache.kafka.connect.data.Timestamp":
			return zz(b, in(minMicros/1000, maxMicros/1000, math.MinInt64, math.MaxInt64)), true
		case "io.debezium.time.MicroTimestamp":
			return zz(b, in(minMicros, maxMicros, math.MinInt64, math.MaxInt64)), true
		case "io.debezium.time.NanoTimestamp":
			return zz(b, g.anyInt(64)), true // every value is in range
		}
	case avro.String:
		switch name {
		case "io.debezium.time.ZonedTimestamp":
			s := g.zoned(bad)
			return append(zz(b, int64(len(s))), s...), true
		case "io.debezium.data.Json":
			if bad {
				return g.str(b), true // perhaps invalid UTF-8
			}
			s := []string{`{}`, `{"a":[1,2.5,{"b":null}],"c":"é"}`, `[true,false]`, `"x"`, `12345678901234567890`}[g.r.IntN(5)]
			return append(zz(b, int64(len(s))), s...), true
		}
	case avro.Bytes:
		if name == "org.apache.kafka.connect.data.Decimal" {
			params, _ := a.Prop("connect.parameters").(map[string]any)
			scaleText, _ := params["scale"].(string)
			scale, err := strconv.Atoi(scaleText)
			if err != nil || scale < 0 {
				return b, false
			}
			precision := scale + 38
			if p, err := strconv.Atoi(fmt.Sprint(params["connect.decimal.precision"])); err == nil && p > 0 {
				precision = p
			}
			return g.decimal(b, precision, 0), true
		}
	}
	return b, false
}

// zoned returns a ZonedTimestamp: an instant in BigQuery's range written
// with a random offset, with or without seconds and fraction digits; or
// when bad, text that is not one or an instant out of range.
func (g *gen) zoned(bad bool) string {
	if bad {
		return []string{
			"2024-02-30T00:00:00Z", "2024-03-01 10:15:30Z", "+10000-01-01T00:00:00Z", "2024-03-01T10:15:30",
			"2024-03-01T24:00:00Z", "2024-03-01T10:15:30.1234567890Z", "2024-03-01T10:15:30+19:00", "0000-01-01T00:00:00Z",
			"9999-12-31T23:59:59.999999-00:01", "2024-03-01T10:15:30.Z", "2024-13-01T10:15Z", "2024-03-01t10:15:30z", "",
		}[g.r.IntN(13)]
	}
	us := g.int64In(minMicros+19*3600*1000000, maxMicros-19*3600*1000000)
	offset := time.Duration(g.r.IntN(18*3600+1)-9*3600) * time.Second
	if g.r.IntN(3) == 0 {
		offset = offset.Truncate(15 * time.Minute)
	}
	if offset < 0 && offset > -time.Minute {
		offset = -offset // Go writes "+00:00:-19" for these
	}
	t := time.UnixMicro(us).In(time.FixedZone("", int(offset/time.Second)))
	if g.r.IntN(4) == 0 {
		t = t.Add(time.Duration(g.r.IntN(1000))) // nanoseconds, cut on reading
	}
	layout := []string{
		"2006-01-02T15:04:05.999999999Z07:00:00", "2006-01-02T15:04:05.000000Z07:00", "2006-01-02T15:04:05Z07:00",
		"2006-01-02T15:04:05.000Z07:00", "2006-01-02T15:04Z07:00",
	}[g.r.IntN(5)]
	switch layout {
	case "2006-01-02T15:04Z07:00":
		t = t.Truncate(time.Minute)
	case "2006-01-02T15:04:05Z07:00":
		t = t.Truncate(time.Second)
	case "2006-01-02T15:04:05.000Z07:00":
		t = t.Truncate(time.Millisecond)
	case "2006-01-02T15:04:05.000000Z07:00":
		t = t.Truncate(time.Microsecond)
	}
	return t.Format(layout)
}

// TestConnectErrors: each kind of bad Debezium value fails with ErrDecode
// and a message naming the field and the problem; the reference fails too.
func TestConnectErrors(t *testing.T) {
	str := func(s string) []byte { return append(zz(nil, int64(len(s))), s...) }
	vsd := `{"type":"record","name":"VariableScaleDecimal","namespace":"io.debezium.data","fields":[{"name":"scale","type":"int"},{"name":"value","type":"bytes"}],"connect.name":"io.debezium.data.VariableScaleDecimal"}`
	big38 := new(big.Int).Exp(big.NewInt(10), big.NewInt(38), nil).Bytes() // 39 digits
	tests := []struct {
		name, typ string
		body      []byte
		want      string
	}{
		{"zoned text", `{"type":"string","connect.name":"io.debezium.time.ZonedTimestamp"}`, str("2024-03-01 10:15:30Z"),
			`f: zoned timestamp "2024-03-01 10:15:30Z" is not an ISO-8601 date-time with offset (2006-01-02T15:04:05.999999999Z or +07:00)`},
		{"zoned range", `["null",{"type":"string","connect.name":"io.debezium.time.ZonedTimestamp"}]`, append([]byte{2}, str("0000-12-31T23:59:59Z")...),
			`f: zoned timestamp "0000-12-31T23:59:59Z" is outside BigQuery's years 1..9999`},
		{"zoned offset", `{"type":"string","connect.name":"io.debezium.time.ZonedTimestamp"}`, str("2024-03-01T10:15:30+18:01"), `is not an ISO-8601 date-time`},
		{"nano time", `{"type":"long","connect.name":"io.debezium.time.NanoTime"}`, zz(nil, dayMicros*1000), `f: nano-time 86400000000000 is not a time of day`},
		{"time 24:00", `{"type":"int","connect.name":"io.debezium.time.Time"}`, zz(nil, 86400000), `f: time-millis 86400000 is not a time of day`},
		{"micro time negative", `{"type":"long","connect.name":"io.debezium.time.MicroTime"}`, zz(nil, -1), `f: time-micros -1 is not a time of day`},
		{"date", `{"type":"int","connect.name":"io.debezium.time.Date"}`, zz(nil, maxDate+1), `f: date 2932897 days`},
		{"vsd scale", vsd, append(zz(nil, 39), 2, 1), `f: variable-scale decimal has scale 39; BIGNUMERIC holds at most 38 fraction digits`},
		{"vsd digits", vsd, append(append(zz(nil, 0), zz(nil, int64(len(big38)))...), big38...), `f: variable-scale decimal with 39 integer digits does not fit BIGNUMERIC (at most 38)`},
		{"vsd negative scale", `["null",` + vsd + `]`, append([]byte{2}, append(zz(nil, -38), 2, 2)...), `f: variable-scale decimal with 39 integer digits`},
		{"vsd truncated", vsd, zz(nil, 3), `f.value: body ends early`},
		{"json UTF-8", `{"type":"string","connect.name":"io.debezium.data.Json"}`, []byte{2, 0xff}, `f: string is not valid UTF-8`},
		{"decimal without logical type", `{"type":"bytes","connect.parameters":{"scale":"2","connect.decimal.precision":"3"},"connect.name":"org.apache.kafka.connect.data.Decimal"}`,
			[]byte{4, 0x27, 0x10}, `f: decimal 100.00 has 5 digits, more than its precision 3`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sch := compileText(t, `{"type":"record","name":"R","fields":[{"name":"f","type":`+tt.typ+`}]}`)
			tg := newTarget(t, sch, variant{name: tt.name, table: sch.s.Columns()})
			tg.compare(t, tt.body, nil, nil)
			_, err := tg.tc.Append(nil, tt.body, nil)
			if !errors.Is(err, schema.ErrDecode) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Append error %v, want ErrDecode with %s", err, tt.want)
			}
		})
	}
}
