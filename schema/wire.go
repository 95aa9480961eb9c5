package schema

import (
	"encoding/binary"
	"fmt"
)

// wireHeader is the Confluent framing: magic byte 0 and a big-endian
// 4-byte schema ID.
const wireHeader = 5

// Framed reports whether b can be in the Confluent wire format: magic byte
// 0 and a whole header. Split says what is wrong with one that is not; a
// caller for whom most values are not framed (raw Kafka keys) asks this
// first, which costs nothing.
func Framed(b []byte) bool { return len(b) >= wireHeader && b[0] == 0 }

// Split separates a Kafka record value in the Confluent wire format into the
// writer schema ID and the Avro binary body. body aliases value. Errors wrap
// ErrWireFormat and say what is wrong (empty value, too short, wrong magic
// byte). It does no I/O and is safe for concurrent use.
func Split(value []byte) (id int, body []byte, err error) {
	switch {
	case len(value) == 0:
		return 0, nil, fmt.Errorf("%w: empty value", ErrWireFormat)
	case value[0] != 0:
		return 0, nil, fmt.Errorf("%w: magic byte %d, want 0", ErrWireFormat, value[0])
	case len(value) < wireHeader:
		return 0, nil, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrWireFormat, len(value), wireHeader)
	}
	return int(binary.BigEndian.Uint32(value[1:wireHeader])), value[wireHeader:], nil
}
