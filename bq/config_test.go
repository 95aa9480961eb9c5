package bq

import (
	"errors"
	"io/fs"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	if !c.AutoCreateTables || !c.AutoUpdateSchema {
		t.Errorf("DefaultConfig: auto_create_tables=%v auto_update_schema=%v, want both true", c.AutoCreateTables, c.AutoUpdateSchema)
	}
	if c.MaxRequestBytes != 9<<20 {
		t.Errorf("DefaultConfig: max_request_bytes=%d, want %d", c.MaxRequestBytes, 9<<20)
	}
	if c.Timeout != 10*time.Second || c.AppendTimeout != 20*time.Second {
		t.Errorf("DefaultConfig: timeout=%v append_timeout=%v, want 10s and 20s", c.Timeout, c.AppendTimeout)
	}
	var zero Config
	if zero.maxRequestBytes() != defaultMaxRequestBytes {
		t.Errorf("zero max_request_bytes does not mean the default")
	}
	if zero.timeout() != 10*time.Second || zero.appendTimeout() != 20*time.Second {
		t.Errorf("zero timeouts mean %v and %v, want the defaults", zero.timeout(), zero.appendTimeout())
	}
}

func TestConfigValidate(t *testing.T) {
	valid := DefaultConfig()
	valid.Project, valid.Dataset = "proj", "ds"
	if err := valid.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}

	tests := []struct {
		name string
		edit func(*Config)
		keys []string // every error line starts with one of these, in order
	}{
		{"missing project and dataset", func(c *Config) { c.Project, c.Dataset = "", "" }, []string{"project: required", "dataset: required"}},
		{"bad dataset", func(c *Config) { c.Dataset = "my-ds" }, []string{"dataset: "}},
		{"endpoint not a URL", func(c *Config) { c.Endpoint = "127.0.0.1:9050" }, []string{"endpoint: "}},
		{"grpc endpoint without port", func(c *Config) { c.GRPCEndpoint = "localhost" }, []string{"grpc_endpoint: "}},
		{"negative max", func(c *Config) { c.MaxRequestBytes = -1 }, []string{"max_request_bytes: "}},
		{"max over BigQuery's limit", func(c *Config) { c.MaxRequestBytes = 10_000_001 }, []string{"max_request_bytes: "}},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, []string{"timeout: "}},
		{"negative append timeout", func(c *Config) { c.AppendTimeout = -time.Second }, []string{"append_timeout: "}},
		{"unknown delivery", func(c *Config) { c.Delivery = "exactly-once" }, []string{"delivery: "}},
		{"everything", func(c *Config) {
			*c = Config{Endpoint: "ftp://x", GRPCEndpoint: "x", MaxRequestBytes: -5, Timeout: -1, AppendTimeout: -1}
		}, []string{"project: ", "dataset: ", "endpoint: ", "grpc_endpoint: ", "max_request_bytes: ", "timeout: ", "append_timeout: "}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := valid
			tc.edit(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate() = nil, want errors")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tc.keys) {
				t.Fatalf("Validate() = %q, want %d errors", err, len(tc.keys))
			}
			for i, prefix := range tc.keys {
				if !strings.HasPrefix(lines[i], prefix) {
					t.Errorf("error %d = %q, want prefix %q", i, lines[i], prefix)
				}
			}
		})
	}
}

func TestNewClientRejectsInvalidConfig(t *testing.T) {
	_, err := NewClient(t.Context(), Config{Dataset: "ds"}, nil)
	if err == nil || !strings.Contains(err.Error(), "project: required") {
		t.Fatalf("NewClient with no project: %v, want project: required", err)
	}
}

func TestNewClientCredentialsFile(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Project, cfg.Dataset = "proj", "ds"
	cfg.CredentialsFile = t.TempDir() + "/missing.json"
	_, err := NewClient(t.Context(), cfg, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "credentials_file") || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing credentials file: %v, want a credentials_file error wrapping fs.ErrNotExist", err)
	}
}
