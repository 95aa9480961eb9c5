package bqfake

import "testing"

func TestCompareSequences(t *testing.T) {
	for _, tc := range []struct {
		a, b string // "": no sequence number
		want int
	}{
		{"FFFFFFFFFFFFFFFF", "1", 1},
		{"8000000000000000", "7FFFFFFFFFFFFFFF", 1},
		{"a", "A", 0},
		{"00ff", "FF", 0},
		{"A", "1F", -1},
		{"2", "2/0", -1},
		{"2/0", "2/0/1", -1},
		{"1/FFFFFFFFFFFFFFFF", "2/0", -1},
		{"1/2/3/4", "1/2/3/5", -1},
		{"", "0", -1},
		{"", "", 0},
	} {
		parse := func(s string) []uint64 {
			if s == "" {
				return nil
			}
			seq, err := parseSequence(s)
			if err != nil {
				t.Fatalf("parse %q: %v", s, err)
			}
			return seq
		}
		a, b := parse(tc.a), parse(tc.b)
		if got := compareSequences(a, b); got != tc.want {
			t.Errorf("compare(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
		if got := compareSequences(b, a); got != -tc.want {
			t.Errorf("compare(%q, %q) = %d, want %d", tc.b, tc.a, got, -tc.want)
		}
	}
}

func TestParseSequenceRefuses(t *testing.T) {
	for _, s := range []string{"", "/", "1/", "1//2", "1/2/3/4/5", "12345678901234567", "g", "0x1", "-1", "+1", " 1", "1_0"} {
		if seq, err := parseSequence(s); err == nil {
			t.Errorf("parseSequence(%q) = %v, want an error", s, seq)
		}
	}
	if seq, err := parseSequence("FFFFFFFFFFFFFFFF/0/0/abcdef0123456789"); err != nil || len(seq) != 4 || seq[0] != 1<<64-1 || seq[3] != 0xabcdef0123456789 {
		t.Errorf("parseSequence of the longest number = %v, %v", seq, err)
	}
}

// A change older than its key's state loses wherever it sits in its
// request, the first row included (a request whose first row lost once
// counted as that row's win).
func TestStaleChangeFirstInARequestLoses(t *testing.T) {
	tb := &table{}
	keyCols := []string{"id"}
	row := func(id int64, name string) map[string]any { return map[string]any{"id": id, "name": name} }
	tb.applyChangesLocked([]map[string]any{row(1, "new")}, []change{{typ: changeUpsert, seq: []uint64{5}}}, keyCols)
	tb.applyChangesLocked([]map[string]any{row(1, "stale"), row(2, "other")},
		[]change{{typ: changeUpsert, seq: []uint64{3}}, {typ: changeUpsert, seq: []uint64{4}}}, keyCols)
	got := map[int64]string{}
	for _, r := range tb.rows {
		got[r["id"].(int64)] = r["name"].(string)
	}
	if len(got) != 2 || got[1] != "new" || got[2] != "other" {
		t.Errorf("rows %v; want 1 new, 2 other", got)
	}
}
