package schema_test

import (
	"encoding/binary"
	"testing"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
)

// benchCase is one writer schema with a Kafka record value in the wire
// format and the table format it is written to (the writer's columns).
type benchCase struct {
	name  string
	s     *schema.Schema
	f     *bq.Format
	tc    *schema.Transcoder
	value []byte
}

// benchCases are the stock-update v1 and v2 schemas and the nested
// DeliveryCreated schema (with its Address and Warehouse references), each
// with its golden record (golden_test.go).
func benchCases(b *testing.B) []benchCase {
	b.Helper()
	want := map[string]string{"stock v1": "stock_v1", "stock v2": "stock_v2", "delivery": "delivery"}
	bodies := schema.GoldenBodiesForTest(b)
	var out []benchCase
	for _, sch := range loadSchemas(b) {
		name, ok := want[sch.name]
		if !ok {
			continue
		}
		f, err := bq.NewFormat(sch.s.Columns())
		if err != nil {
			b.Fatal(err)
		}
		tc, err := sch.s.Transcoder(f.Columns(), "")
		if err != nil {
			b.Fatal(err)
		}
		body := bodies[sch.name]
		value := binary.BigEndian.AppendUint32([]byte{0}, uint32(sch.s.ID()))
		out = append(out, benchCase{name: name, s: sch.s, f: f, tc: tc, value: append(value, body...)})
	}
	return out
}

// BenchmarkTranscode: the wire header split and Append into a reused
// buffer, the sink's per-record path. It must not allocate.
func BenchmarkTranscode(b *testing.B) {
	for _, c := range benchCases(b) {
		b.Run(c.name, func(b *testing.B) {
			var buf []byte
			b.ReportAllocs()
			b.SetBytes(int64(len(c.value)))
			for b.Loop() {
				_, body, err := schema.Split(c.value)
				if err != nil {
					b.Fatal(err)
				}
				if buf, err = c.tc.Append(buf[:0], body, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecodeEncodeReference: the same records through the
// transcoder's reference: Decode into the row value contract, then bq's
// encoder (encodeRow). The daemon's path before the transcoder was the same
// decode and one bq encode per row; encodeRow's call per column costs a
// little more.
func BenchmarkDecodeEncodeReference(b *testing.B) {
	for _, c := range benchCases(b) {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(c.value)))
			for b.Loop() {
				_, body, err := schema.Split(c.value)
				if err != nil {
					b.Fatal(err)
				}
				row, err := c.s.Decode(body)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := encodeRow(c.f, row); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
