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
			name: "https with a CA, a client certificate and a bearer token",
			cfg: Config{URL: "https://r", BearerTokenFile: "/var/run/secrets/token",
				TLS: TLSConfig{CAFile: "ca.pem", CertFile: "c.pem", KeyFile: "k.pem", ServerName: "registry.internal"}},
		},
		{
			name: "tls keys with an http url", cfg: Config{URL: "http://r", TLS: TLSConfig{CAFile: "ca.pem", ServerName: "r", KeyFile: "k.pem", CertFile: "c.pem"}},
			want: []string{"tls.ca_file: set, but url is http", "tls.cert_file: set, but url is http", "tls.key_file: set, but url is http", "tls.server_name: set, but url is http"},
		},
		{name: "certificate without key", cfg: Config{URL: "https://r", TLS: TLSConfig{CertFile: "c.pem"}}, want: []string{"tls.key_file: required when tls.cert_file is set"}},
		{name: "key without certificate", cfg: Config{URL: "https://r", TLS: TLSConfig{KeyFile: "k.pem"}}, want: []string{"tls.cert_file: required when tls.key_file is set"}},
		{
			name: "CA file and no verification", cfg: Config{URL: "https://r", TLS: TLSConfig{CAFile: "ca.pem", InsecureSkipVerify: true}},
			want: []string{"tls.insecure_skip_verify: turns off the verification tls.ca_file is for"},
		},
		{
			name: "bearer token and basic auth", cfg: Config{URL: "https://r", Username: "u", Password: "p", BearerTokenFile: "t"},
			want: []string{"bearer_token_file: set together with username/password"},
		},
		{
			name: "bearer token and user info", cfg: Config{URL: "https://u:p@r", BearerTokenFile: "t"},
			want: []string{"bearer_token_file: set together with user info in url"},
		},
		{name: "basic auth with a password file", cfg: Config{URL: "https://r", Username: "u", PasswordFile: "/var/run/secrets/password"}},
		{
			name: "password and password file", cfg: Config{URL: "https://r", Username: "u", Password: "p", PasswordFile: "f"},
			want: []string{"password_file: set together with password: set one of them"},
		},
		{name: "password file alone", cfg: Config{URL: "http://r", PasswordFile: "f"}, want: []string{"username: required when password_file is set"}},
		{
			name: "bearer token and password file", cfg: Config{URL: "https://r", Username: "u", PasswordFile: "f", BearerTokenFile: "t"},
			want: []string{"bearer_token_file: set together with username/password"},
		},
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
