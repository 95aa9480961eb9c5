package sink

import (
	"errors"
	"strings"
	"testing"
)

func TestEOMetaRoundTrip(t *testing.T) {
	name := "projects/p/datasets/d/tables/t/streams/Cic2NjY2YjA5LTAwMDAtMjNhMi05MmE2LTNjMjg2ZDUxOWY0MA"
	for _, rc := range []bool{false, true} {
		in := eoMeta{stream: name, next: 123456789, at: 987654321, readCommitted: rc}
		m := in.encode()
		if !strings.HasPrefix(m, eoMetaPrefix) {
			t.Fatalf("metadata %q lacks the prefix %q", m, eoMetaPrefix)
		}
		got, err := decodeEOMeta(m)
		if err != nil || got != in {
			t.Fatalf("decode(%q) = %+v, %v; want %+v", m, got, err, in)
		}
		if len(m) > maxEOMeta || maxEOMeta > 4096/2 {
			t.Fatalf("metadata of %d bytes, limit %d: must stay well under Kafka's default 4096", len(m), maxEOMeta)
		}
	}
	// Metadata of earlier versions of bqsink still reads: without the
	// Kafka offset (the first form), and without the isolation level
	// (written by readers of every record).
	if m, err := decodeEOMeta(eoMetaPrefix + name + " 5"); err != nil || m.next != 5 || m.at != -1 || m.readCommitted {
		t.Fatalf("two-field metadata: %+v, %v", m, err)
	}
	if m, err := decodeEOMeta(eoMetaPrefix + name + " 5 7"); err != nil || m.next != 5 || m.at != 7 || m.readCommitted {
		t.Fatalf("three-field metadata: %+v, %v", m, err)
	}
	// A name that would not fit gives no metadata (the next owner falls
	// back), never an oversized commit that Kafka refuses.
	if m := (eoMeta{stream: strings.Repeat("x", maxEOMeta), next: 1, at: 1}).encode(); m != "" {
		t.Fatalf("oversized metadata encoded: %d bytes", len(m))
	}
}

// Metadata this bqsink cannot read is a fallback, never a crash or a
// guess: none or another writer's is errNotEOMeta (metadata_missing);
// another version or garbage is another error (metadata_unreadable).
func TestEOMetaUnreadable(t *testing.T) {
	for _, m := range []string{"", "some other consumer's metadata", "{\"json\":1}"} {
		if _, err := decodeEOMeta(m); !errors.Is(err, errNotEOMeta) {
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
		"bqsink-eo/1 a 3 rc",
		"bqsink-eo/1 a 3 4 rc x",
		"bqsink-eo/1 projects/p/datasets/d/tables/t/streams/s 99999999999999999999999",
	} {
		if _, err := decodeEOMeta(m); err == nil || errors.Is(err, errNotEOMeta) {
			t.Errorf("decode(%q) = %v, want an unreadable-metadata error", m, err)
		}
	}
}

func FuzzEOMeta(f *testing.F) {
	f.Add("bqsink-eo/1 projects/p/datasets/d/tables/t/streams/s 5 7")
	f.Add("bqsink-eo/1 projects/p/datasets/d/tables/t/streams/s 5 7 rc")
	f.Add("bqsink-eo/1 x 0")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := decodeEOMeta(s)
		if err != nil || m.at < 0 {
			return
		}
		if again := m.encode(); again != "" {
			m2, err := decodeEOMeta(again)
			if err != nil || m2 != m {
				t.Fatalf("%q decodes to %+v, which encodes to %q that decodes to %+v %v", s, m, again, m2, err)
			}
		}
	})
}
