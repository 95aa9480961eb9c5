package schema

// ChangeTranscoder's reference: the reference decoder (Decode, or its lax
// mode over a Debezium envelope, decode_oracle_test.go) into the row value
// contract, and the change worked out from the decoded values, with the
// standard library's JSON and strconv for the source position. Its rows go
// through bq's encoder as the transcoder's reference rows do.

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"cloud.google.com/go/bigquery"
	"github.com/hamba/avro/v2"
)

// DecodeChange decodes body under spec into the row written (nil when the
// change has none) and the change. Errors are as ChangeTranscoder.Append's
// that wrap ErrDecode; the row's REQUIRED columns are the encoder's to
// check.
func (s *Schema) DecodeChange(body []byte, spec ChangeSpec) (map[string]any, Change, error) {
	if spec.Envelope == EnvelopeNone {
		row, err := s.Decode(body)
		if err != nil {
			return nil, Change{}, err
		}
		ch := Change{Op: OpUpsert, SeqLen: len(spec.SequenceFields)}
		if v, ok := row["__deleted"]; ok && oracleDeletedField(s.writer) && (v == "true" || v == true) {
			ch.Op = OpDelete
		}
		for i, path := range spec.SequenceFields {
			v, millis := oracleSequenceValue(s.writer, row, strings.Split(path, "."))
			if millis {
				v /= 1000 // the row holds microseconds
			}
			if v < 0 {
				return nil, Change{}, fmt.Errorf("%w: schema %d: %s: sequence value %d is negative", ErrDecode, s.id, path, v)
			}
			ch.Seq[i] = uint64(v)
		}
		return row, ch, nil
	}

	oe := oracleEnvelopeFor(s)
	d := oe.pool.Get().(*decoder)
	defer func() {
		d.reset(nil)
		oe.pool.Put(d)
	}()
	d.reset(body)
	d.lax = true
	bad := func(err error) (map[string]any, Change, error) {
		return nil, Change{}, fmt.Errorf("%w: schema %d: %v", ErrDecode, s.id, err)
	}
	vals := make(map[string]any)
	imageErr := make(map[string]error)
	for _, f := range oe.fields {
		d.laxErr = nil
		v, err := f.dec(d)
		if err != nil {
			return bad(at(err, f.name))
		}
		vals[f.name] = v
		if f.name == "before" || f.name == "after" {
			imageErr[f.name] = d.laxErr
		}
	}
	if d.r.Peek(); d.r.Error == nil {
		return bad(fail("trailing bytes after the record"))
	}
	op, ok := vals["op"].(string)
	if !ok {
		return bad(fail("op is null"))
	}
	var ch Change
	image := ""
	switch op {
	case "c", "r", "u":
		if vals["after"] == nil {
			return bad(fail("op %q has no after image", op))
		}
		ch.Op, image = OpUpsert, "after"
	case "d":
		ch.Op = OpDelete
		if vals["before"] == nil {
			ch.NeedKey = true
		} else {
			image = "before"
		}
	case "t":
		ch.Op = OpTruncate
	default:
		return bad(fail("op %q is not a row change", op))
	}
	var row map[string]any
	if image != "" {
		if err := imageErr[image]; err != nil {
			return bad(at(err, image))
		}
		row = vals[image].(map[string]any)
	}
	if spec.DebeziumSequence {
		oe.position(&ch, vals["source"])
	}
	return row, ch, nil
}

// oracleDeletedField: the value's __deleted is a string mapping to STRING
// or a boolean, or a union of null and one.
func oracleDeletedField(w *avro.RecordSchema) bool {
	for _, f := range w.Fields() {
		if f.Name() == "__deleted" {
			p, ok := nonNull(f.Type()).(*avro.PrimitiveSchema)
			return ok && (p.Type() == avro.Boolean || p.Type() == avro.String && connectDecoder(p) == nil)
		}
	}
	return false
}

// nonNull resolves references and a union of null and one type.
func nonNull(a avro.Schema) avro.Schema {
	if ref, ok := a.(*avro.RefSchema); ok {
		a = ref.Schema()
	}
	if u, ok := a.(*avro.UnionSchema); ok {
		var kept []avro.Schema
		for _, t := range u.Types() {
			if t.Type() != avro.Null {
				kept = append(kept, t)
			}
		}
		if len(kept) == 1 {
			return nonNull(kept[0])
		}
	}
	return a
}

// oracleSequenceValue finds the value at path in row (0 for NULL on the
// way) and whether its field is a timestamp-millis.
func oracleSequenceValue(w *avro.RecordSchema, row map[string]any, path []string) (int64, bool) {
	rec := w
	var v any = row
	millis := false
	for _, seg := range path {
		var ft avro.Schema
		for _, f := range rec.Fields() {
			if f.Name() == seg {
				ft = nonNull(f.Type())
			}
		}
		if r, ok := ft.(*avro.RecordSchema); ok {
			rec = r
		}
		if p, ok := ft.(*avro.PrimitiveSchema); ok && p.Logical() != nil {
			millis = p.Logical().Type() == avro.TimestampMillis
		}
		m, _ := v.(map[string]any)
		v = m[seg]
	}
	n, _ := v.(int64)
	return n, millis
}

// oracleEnvelope is the decoders of a Debezium envelope's fields, and which
// source fields a position may be read from.
type oracleEnvelope struct {
	fields []fieldDecoder
	pool   sync.Pool
	source string // the source record's full name
	// sourceField: for each position field of source, whether it has the
	// type it is read from: STRING for connector, sequence and file,
	// INTEGER for lsn, pos and row.
	sourceField map[string]bool
}

var oracleEnvelopes sync.Map // *Schema -> *oracleEnvelope

func oracleEnvelopeFor(s *Schema) *oracleEnvelope {
	if oe, ok := oracleEnvelopes.Load(s); ok {
		return oe.(*oracleEnvelope)
	}
	oe := &oracleEnvelope{sourceField: map[string]bool{}}
	for _, f := range s.writer.Fields() {
		oe.fields = append(oe.fields, fieldDecoder{name: f.Name(), dec: decoderOf(f.Type())})
		if f.Name() != "source" {
			continue
		}
		src, ok := nonNull(f.Type()).(*avro.RecordSchema)
		if !ok {
			continue
		}
		oe.source = src.FullName()
		var cols bigquery.Schema
		for _, c := range s.columns {
			if c.Name == "source" {
				cols = c.Schema
			}
		}
		for _, sf := range src.Fields() {
			p, ok := nonNull(sf.Type()).(*avro.PrimitiveSchema)
			if !ok {
				continue
			}
			var typ bigquery.FieldType
			for _, c := range cols {
				if c.Name == sf.Name() {
					typ = c.Type
				}
			}
			switch sf.Name() {
			case "connector", "sequence", "file":
				oe.sourceField[sf.Name()] = p.Type() == avro.String && typ == bigquery.StringFieldType
			case "lsn", "pos", "row":
				oe.sourceField[sf.Name()] = (p.Type() == avro.Int || p.Type() == avro.Long) && typ == bigquery.IntegerFieldType
			}
		}
	}
	oe.pool.New = func() any { return &decoder{r: avro.NewReader(nil, 0)} }
	got, _ := oracleEnvelopes.LoadOrStore(s, oe)
	return got.(*oracleEnvelope)
}

var lsnText = regexp.MustCompile(`^"[0-9]+"$`)

// position is DebeziumSequence's reading of the source record.
func (oe *oracleEnvelope) position(ch *Change, source any) {
	if oe.source == "" {
		ch.NoPosition = "no source"
		return
	}
	src, _ := source.(map[string]any)
	str := func(name string) (string, bool) {
		v, ok := src[name].(string)
		return v, ok && oe.sourceField[name]
	}
	num := func(name string) (int64, bool) {
		v, ok := src[name].(int64)
		return v, ok && oe.sourceField[name] && v >= 0
	}
	connector, ok := str("connector")
	switch {
	case !ok:
		ch.NoPosition = "null connector"
	case connector == "postgresql":
		if seq, ok := str("sequence"); ok {
			var elems []json.RawMessage
			if json.Unmarshal([]byte(seq), &elems) != nil || len(elems) != 2 {
				ch.NoPosition = "bad sequence"
				return
			}
			for i, e := range elems {
				if string(e) == "null" {
					continue
				}
				var err error
				if !lsnText.Match(e) {
					err = fmt.Errorf("not a string of digits")
				} else {
					ch.Seq[i], err = strconv.ParseUint(strings.Trim(string(e), `"`), 10, 64)
				}
				if err != nil {
					ch.Seq = [MaxSequenceSections]uint64{}
					ch.NoPosition = "bad sequence"
					return
				}
			}
			ch.SeqLen = 2
			return
		}
		if lsn, ok := num("lsn"); ok {
			ch.Seq[0], ch.SeqLen = uint64(lsn), 1
			return
		}
		ch.NoPosition = "no lsn"
	case connector == "mysql" || connector == "mariadb":
		file, okf := str("file")
		pos, okp := num("pos")
		row, okr := num("row")
		if !okf || !okp || !okr {
			ch.NoPosition = "no binlog position"
			return
		}
		dot := strings.LastIndex(file, ".")
		n, err := strconv.ParseUint(file[dot+1:], 10, 64)
		if dot < 0 || err != nil {
			ch.NoPosition = "bad binlog file"
			return
		}
		ch.Seq = [MaxSequenceSections]uint64{n, uint64(pos), uint64(row)}
		ch.SeqLen = 3
	default:
		ch.NoPosition = "other connector"
	}
}
