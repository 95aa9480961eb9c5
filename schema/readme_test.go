package schema

import (
	"errors"
	"os"
	"strings"
	"testing"

	"cloud.google.com/go/bigquery"
)

// TestReadmeMappingTable keeps the README's mapping table true: for every
// row, the Avro type in the first column must map to the BigQuery type and
// mode the row states, or be refused when it says "refused".
func TestReadmeMappingTable(t *testing.T) {
	text, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(text)
	begin := strings.Index(readme, "<!-- mapping:begin -->")
	end := strings.Index(readme, "<!-- mapping:end -->")
	if begin < 0 || end < begin {
		t.Fatal("README.md has no mapping markers")
	}

	seen := make(map[bigquery.FieldType]bool)
	rows := 0
	for line := range strings.Lines(readme[begin:end]) {
		if !strings.HasPrefix(line, "| `") {
			continue // prose, header or separator
		}
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		if len(cells) != 5 {
			t.Errorf("row has %d columns, want 5: %s", len(cells), line)
			continue
		}
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		avroType := strings.Trim(cells[0], "`")
		wantType, wantMode := cells[1], cells[2]
		rows++

		t.Run(avroType, func(t *testing.T) {
			s, err := compileText(t, `{"type":"record","name":"ReadmeRow","fields":[{"name":"f","type":`+avroType+`}]}`)
			if wantType == "refused" {
				if !errors.Is(err, ErrUnsupported) {
					t.Fatalf("compile = %v, want ErrUnsupported", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			f := s.Columns()[0]
			mode := "NULLABLE"
			switch {
			case f.Repeated:
				mode = "REPEATED"
			case f.Required:
				mode = "REQUIRED"
			}
			if string(f.Type) != wantType || mode != wantMode {
				t.Errorf("maps to %s %s, README says %s %s", f.Type, mode, wantType, wantMode)
			}
			seen[f.Type] = true
		})
	}
	if rows < 30 {
		t.Errorf("found %d table rows, the table seems truncated", rows)
	}
	for _, typ := range []bigquery.FieldType{BOOLEAN, INTEGER, FLOAT, STRING, BYTES, NUMERIC, BIGNUMERIC, DATE, TIME, DATETIME, TIMESTAMP, RECORD, JSON} {
		if !seen[typ] {
			t.Errorf("no README row maps to %s", typ)
		}
	}
}
