package itest

import (
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// PromText is a Prometheus text exposition.
type PromText string

// Sum adds up the samples named name (exactly, so a histogram's _bucket
// series are not included) whose labels include every given name, value
// pair.
func (p PromText) Sum(name string, labels ...string) float64 {
	var total float64
	for _, line := range strings.Split(string(p), "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		var ls map[string]string
		switch {
		case strings.HasPrefix(rest, "{"):
			var ok bool
			if ls, rest, ok = parseLabels(rest[1:]); !ok {
				continue
			}
		case strings.HasPrefix(rest, " "):
		default:
			continue // a longer name
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if ls[labels[i]] != labels[i+1] {
				match = false
			}
		}
		fields := strings.Fields(rest)
		if !match || len(fields) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(fields[0], 64); err == nil {
			total += v
		}
	}
	return total
}

// Has reports whether the exposition has a sample named name.
func (p PromText) Has(name string) bool {
	for _, line := range strings.Split(string(p), "\n") {
		if rest, ok := strings.CutPrefix(line, name); ok && (strings.HasPrefix(rest, " ") || strings.HasPrefix(rest, "{")) {
			return true
		}
	}
	return false
}

// parseLabels reads `a="x",b="y"}` and returns the labels and what follows.
func parseLabels(s string) (map[string]string, string, bool) {
	ls := map[string]string{}
	for {
		s = strings.TrimLeft(s, ", ")
		if strings.HasPrefix(s, "}") {
			return ls, s[1:], true
		}
		eq := strings.Index(s, `="`)
		if eq < 0 {
			return nil, "", false
		}
		name := s[:eq]
		s = s[eq+2:]
		var v strings.Builder
		for {
			if s == "" {
				return nil, "", false
			}
			c := s[0]
			s = s[1:]
			if c == '"' {
				break
			}
			if c == '\\' && s != "" {
				switch s[0] {
				case 'n':
					v.WriteByte('\n')
				default:
					v.WriteByte(s[0])
				}
				s = s[1:]
				continue
			}
			v.WriteByte(c)
		}
		ls[name] = v.String()
	}
}

// Gauge is the sum of a gauge's series in reg.
func Gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// MetricValue is the value of a gauge or counter in reg, summed over its
// series whose labels include the given name, value pairs; 0 if absent.
func MetricValue(tb testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	tb.Helper()
	v, err := MetricValueErr(reg, name, labels...)
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// MetricValueErr is MetricValue for goroutines other than the test's.
func MetricValueErr(reg *prometheus.Registry, name string, labels ...string) (float64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue series
				}
			}
			v += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return v, nil
}
