package schema

import (
	"testing"

	"go.uber.org/zap"
)

// BenchmarkCompile: what resolving a writer schema costs once it is
// parsed: its columns and what Transcoder needs. The registry does it once
// per schema ID.
func BenchmarkCompile(b *testing.B) {
	for _, g := range goldens() {
		switch g.name {
		case "stock v2", "delivery", "all types":
		default:
			continue
		}
		parsed := parseFiles(b, g.files...)
		b.Run(g.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := compile(1, parsed, zap.NewNop()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCompileTranscoder: what compiling a transcoder costs, once per
// (writer schema, table format) pair, for the writer's own columns.
func BenchmarkCompileTranscoder(b *testing.B) {
	for _, g := range goldens() {
		switch g.name {
		case "stock v2", "delivery", "all types":
		default:
			continue
		}
		s := compileFiles(b, g.files...)
		cols := s.Columns()
		b.Run(g.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Transcoder(cols, ""); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
