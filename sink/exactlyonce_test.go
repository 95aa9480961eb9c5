package sink

import (
	"errors"
	"strings"
	"testing"
)

func TestEOMetaRoundTrip(t *testing.T) {
	name := "projects/p/datasets/d/tables/t/streams/Cic2NjY2YjA5LTAwMDAtMjNhMi05MmE2LTNjMjg2ZDUxOWY0MA"
	m := encodeEOMeta(name, 123456789, 987654321)
	if !strings.HasPrefix(m, eoMetaPrefix) {
		t.Fatalf("metadata %q lacks the prefix %q", m, eoMetaPrefix)
	}
	stream, next, at, err := decodeEOMeta(m)
	if err != nil || stream != name || next != 123456789 || at != 987654321 {
		t.Fatalf("decode(%q) = %q, %d, %d, %v; want the stream and offsets encoded", m, stream, next, at, err)
	}
	// Metadata without the Kafka offset (the first form) still reads.
	if _, next, at, err := decodeEOMeta(eoMetaPrefix + name + " 5"); err != nil || next != 5 || at != -1 {
		t.Fatalf("two-field metadata: %d, %d, %v", next, at, err)
	}
	if len(m) > maxEOMeta || maxEOMeta > 4096/2 {
		t.Fatalf("metadata of %d bytes, limit %d: must stay well under Kafka's default 4096", len(m), maxEOMeta)
	}
	// A name that would not fit gives no metadata (the next owner falls
	// back), never an oversized commit that Kafka refuses.
	if m := encodeEOMeta(strings.Repeat("x", maxEOMeta), 1, 1); m != "" {
		t.Fatalf("oversized metadata encoded: %d bytes", len(m))
	}
}

// Metadata this bqsink cannot read is a fallback, never a crash or a
// guess: none or another writer's is errNotEOMeta (metadata_missing);
// another version or garbage is another error (metadata_unreadable).
func TestEOMetaUnreadable(t *testing.T) {
	for _, m := range []string{"", "some other consumer's metadata", "{\"json\":1}"} {
		if _, _, _, err := decodeEOMeta(m); !errors.Is(err, errNotEOMeta) {
			t.Errorf("decode(%q) = %v, want errNotEOMeta", m, err)
		}
	}
	for _, m := range []string{
		"bqsink-eo/2 projects/p/datasets/d/tables/t/streams/s 5", // a future version
		"bqsink-eo/1 ",
		"bqsink-eo/1 projects/p/datasets/d/tables/t/streams/s",
		"bqsink-eo/1 projects/p/datasets/d/tables/t/streams/s -1",
		"bqsink-eo/1 projects/p/datasets/d/tables/t/streams/s 12x",
		"bqsink-eo/1 a b 3",
		"bqsink-eo/1 a 3 x",
		"bqsink-eo/1 a 3 -4",
		"bqsink-eo/1 a 3 4 5",
		"bqsink-eo/1 projects/p/datasets/d/tables/t/streams/s 99999999999999999999999",
	} {
		if _, _, _, err := decodeEOMeta(m); err == nil || errors.Is(err, errNotEOMeta) {
			t.Errorf("decode(%q) = %v, want an unreadable-metadata error", m, err)
		}
	}
}

func FuzzEOMeta(f *testing.F) {
	f.Add("bqsink-eo/1 projects/p/datasets/d/tables/t/streams/s 5 7")
	f.Add("bqsink-eo/1 x 0")
	f.Fuzz(func(t *testing.T, m string) {
		stream, next, at, err := decodeEOMeta(m)
		if err != nil || at < 0 {
			return
		}
		if again := encodeEOMeta(stream, next, at); again != "" {
			s2, n2, a2, err := decodeEOMeta(again)
			if err != nil || s2 != stream || n2 != next || a2 != at {
				t.Fatalf("%q decodes to %q %d %d, which encodes to %q that decodes to %q %d %d %v", m, stream, next, at, again, s2, n2, a2, err)
			}
		}
	})
}
