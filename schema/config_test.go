package schema

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string // one "key: problem" prefix per expected error; none means valid
	}{
		{name: "minimal", cfg: Config{URL: "http://registry:8081"}},
		{name: "https with auth and timeout", cfg: Config{URL: "https://r.example/api/", Username: "u", Password: "p", Timeout: time.Second}},
		{name: "missing url", cfg: Config{}, want: []string{"url: required"}},
		{name: "not http", cfg: Config{URL: "ftp://registry"}, want: []string{"url: scheme must be http or https"}},
		{name: "no scheme", cfg: Config{URL: "registry:8081"}, want: []string{"url: scheme must be http or https"}},
		{name: "no host", cfg: Config{URL: "http://"}, want: []string{"url: missing host"}},
		{name: "query", cfg: Config{URL: "http://r/?x=1"}, want: []string{"url: must not have a query"}},
		{name: "username alone", cfg: Config{URL: "http://r", Username: "u"}, want: []string{"password: required"}},
		{name: "password alone", cfg: Config{URL: "http://r", Password: "p"}, want: []string{"username: required"}},
		{
			name: "every bad key is reported",
			cfg:  Config{Username: "u", Timeout: -time.Second},
			want: []string{"url: required", "password: required", "timeout: must not be negative"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate = nil, want errors")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("Validate = %q, want %d errors", err, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("error %d = %q, want prefix %q", i, lines[i], w)
				}
			}
		})
	}
}

func TestNewRegistryRejectsBadConfig(t *testing.T) {
	r, err := NewRegistry(Config{URL: "registry:8081"}, nil)
	if err == nil || r != nil {
		t.Fatalf("NewRegistry = %v, %v; want error", r, err)
	}
	if !strings.Contains(err.Error(), "url:") {
		t.Errorf("error %q does not name the key", err)
	}
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnsupported) {
		t.Errorf("config error %q wraps a schema error class", err)
	}
}
