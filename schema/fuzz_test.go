package schema

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"unicode/utf8"
)

func FuzzSplit(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0, 1, 2, 3})
	f.Add([]byte{1, 0, 0, 0, 1})
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, value []byte) {
		id, body, err := Split(value)
		if err != nil {
			if !errors.Is(err, ErrWireFormat) {
				t.Fatalf("error %v does not wrap ErrWireFormat", err)
			}
			return
		}
		if len(value) < 5 || value[0] != 0 {
			t.Fatalf("accepted %x", value)
		}
		if id != int(binary.BigEndian.Uint32(value[1:5])) || !bytes.Equal(body, value[5:]) {
			t.Fatalf("Split(%x) = %d, %x", value, id, body)
		}
	})
}

// FuzzDecode feeds arbitrary bodies to the golden schemas (the first
// argument picks one). Decode, the transcoder's reference, must never
// panic, must fail only with ErrDecode, and a row it returns must hold only
// row-contract values.
func FuzzDecode(f *testing.F) {
	gs := goldens()
	schemas := make([]*Schema, len(gs))
	for i, g := range gs {
		schemas[i] = compileFiles(f, g.files...)
		f.Add(uint8(i), encode(f, parseFiles(f, g.files...), g.record))
	}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		s := schemas[int(which)%len(schemas)]
		row, err := s.Decode(body)
		if err != nil {
			if !errors.Is(err, ErrDecode) {
				t.Fatalf("error %v does not wrap ErrDecode", err)
			}
			return
		}
		if err := checkValue(row); err != nil {
			t.Fatal(err)
		}
	})
}

// checkValue reports a value outside the row value contract.
func checkValue(v any) error {
	switch v := v.(type) {
	case bool, int64, int32, float64, []byte:
		return nil
	case string:
		if !utf8.ValidString(v) {
			return fmt.Errorf("invalid UTF-8 string %q", v)
		}
		return nil
	case map[string]any:
		for k, x := range v {
			if x == nil {
				return fmt.Errorf("key %q holds nil; NULL must be an absent key", k)
			}
			if err := checkValue(x); err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
		}
		return nil
	case []any:
		for i, x := range v {
			if x == nil {
				return fmt.Errorf("[%d] is NULL", i)
			}
			if err := checkValue(x); err != nil {
				return fmt.Errorf("[%d]: %w", i, err)
			}
		}
		return nil
	}
	return fmt.Errorf("value %#v of type %T is not in the row contract", v, v)
}
