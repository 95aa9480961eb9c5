package itest

import "testing"

func TestPromTextSum(t *testing.T) {
	p := PromText(`# HELP x_total a counter
# TYPE x_total counter
x_total{table="a.b",why="q\"}, x"} 2
x_total{table="c"} 3
x_total_more 100
x_seconds_bucket{le="1"} 7
x 5
`)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"x_total", nil, 5},
		{"x_total", []string{"table", "c"}, 3},
		{"x_total", []string{"why", `q"}, x`}, 2},
		{"x_total", []string{"table", "z"}, 0},
		{"x", nil, 5},
		{"x_seconds", nil, 0},
	} {
		if got := p.Sum(c.name, c.labels...); got != c.want {
			t.Errorf("sum(%s, %q) = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}
