package schema

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestSplit(t *testing.T) {
	tests := []struct {
		name    string
		value   []byte
		id      int
		body    []byte
		wantErr string
	}{
		{name: "empty", value: nil, wantErr: "empty value"},
		{name: "wrong magic byte", value: []byte{1, 0, 0, 0, 7, 2}, wantErr: "magic byte 1"},
		{name: "plain JSON, not framed", value: []byte(`{"a":1}`), wantErr: "magic byte 123"},
		{name: "short header", value: []byte{0, 0, 0}, wantErr: "3 bytes, shorter than the 5-byte header"},
		{name: "header only", value: []byte{0, 0, 0, 0, 7}, id: 7, body: []byte{}},
		{name: "big-endian ID and body", value: []byte{0, 0, 1, 0, 2, 0xaa, 0xbb}, id: 65538, body: []byte{0xaa, 0xbb}},
		{name: "largest ID", value: []byte{0, 0xff, 0xff, 0xff, 0xff, 1}, id: 1<<32 - 1, body: []byte{1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, body, err := Split(tt.value)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrWireFormat) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Split = %d, %x, %v; want ErrWireFormat mentioning %q", id, body, err, tt.wantErr)
				}
				return
			}
			if err != nil || id != tt.id || !bytes.Equal(body, tt.body) {
				t.Fatalf("Split = %d, %x, %v; want %d, %x", id, body, err, tt.id, tt.body)
			}
		})
	}
}

// Framed agrees with Split on which values are in the wire format.
func TestFramedAgreesWithSplit(t *testing.T) {
	for _, b := range [][]byte{nil, {}, {0}, {0, 0, 0, 0}, {0, 0, 0, 0, 1}, {1, 0, 0, 0, 1}, {0, 0, 0, 0, 1, 2, 3}, []byte("5601234567890")} {
		_, _, err := Split(b)
		if Framed(b) != (err == nil) {
			t.Errorf("Framed(%x) = %v, Split's error %v", b, Framed(b), err)
		}
	}
}
