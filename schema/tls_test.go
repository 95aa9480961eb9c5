package schema

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/bqsink/bqsink/internal/testcert"
)

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// tlsRegistry serves handler over TLS with a certificate of ca; with
// clients set, it requires a client certificate signed by that CA.
func tlsRegistry(t *testing.T, ca *testcert.CA, handler http.Handler, clients *testcert.CA) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(handler)
	srv.TLS = ca.ServerTLS(t, clients, "registry.test")
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are what the tests make
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

// Check finds every way TLS with the registry can fail verification and
// names the key to fix, as ErrTLS: a certificate signed by a CA not trusted
// (system roots or ca_file), one not for the name checked, and a client
// certificate the registry refuses or wants.
func TestRegistryCheckTLS(t *testing.T) {
	ca, other := testcert.NewCA(t, "registry CA"), testcert.NewCA(t, "other CA")
	reg := srfake.NewRegistry()
	plainURL := tlsRegistry(t, ca, reg.Handler(), nil)
	mtlsURL := tlsRegistry(t, ca, reg.Handler(), ca)
	clientCert, clientKey := ca.WriteFiles(t, ca.Client(t))
	strangerCert, strangerKey := other.WriteFiles(t, other.Client(t))

	tests := []struct {
		name string
		url  string
		tls  TLSConfig
		want string // "" means Check passes; otherwise the start of its error
	}{
		{name: "CA file", url: plainURL, tls: TLSConfig{CAFile: ca.File}},
		{name: "server name", url: plainURL, tls: TLSConfig{CAFile: ca.File, ServerName: "registry.test"}},
		{name: "insecure", url: plainURL, tls: TLSConfig{InsecureSkipVerify: true}},
		{name: "client certificate", url: mtlsURL, tls: TLSConfig{CAFile: ca.File, CertFile: clientCert, KeyFile: clientKey}},
		{
			name: "system roots", url: plainURL,
			want: "schema_registry.tls.ca_file: TLS verification failed: the registry's certificate is not signed by the system's root CAs (schema_registry.url https://127.0.0.1:",
		},
		{
			name: "another CA", url: plainURL, tls: TLSConfig{CAFile: other.File},
			want: "schema_registry.tls.ca_file: TLS verification failed: the registry's certificate is not signed by a CA of " + other.File,
		},
		{
			name: "wrong server name", url: plainURL, tls: TLSConfig{CAFile: ca.File, ServerName: "elsewhere.test"},
			want: "schema_registry.tls.server_name: TLS verification failed: the registry's certificate is not for the name checked",
		},
		{
			name: "no client certificate", url: mtlsURL, tls: TLSConfig{CAFile: ca.File},
			want: "schema_registry.tls.cert_file: TLS verification failed: the registry ended the TLS handshake, refusing the connection without a client certificate (none is set)",
		},
		{
			name: "client certificate of another CA", url: mtlsURL, tls: TLSConfig{CAFile: ca.File, CertFile: strangerCert, KeyFile: strangerKey},
			want: "schema_registry.tls.cert_file: TLS verification failed: the registry ended the TLS handshake, refusing the client certificate of " + strangerCert,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewRegistry(Config{URL: tt.url, TLS: tt.tls, Timeout: 5 * time.Second}, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = r.Check(t.Context())
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Check = %v", err)
			case tt.want == "":
				return
			case err == nil:
				t.Fatalf("Check passed, want %q", tt.want)
			case !strings.HasPrefix(err.Error(), tt.want):
				t.Errorf("Check = %q\nwant prefix %q", err, tt.want)
			}
			if !errors.Is(err, ErrTLS) || errors.Is(err, ErrUnauthorized) {
				t.Errorf("Check = %v: want ErrTLS alone", err)
			}
		})
	}
}

// A schema fetched at runtime from a registry whose certificate is not
// trusted fails with ErrTLS too, not as a transient error.
func TestRegistrySchemaTLSRefused(t *testing.T) {
	ca, other := testcert.NewCA(t, "registry CA"), testcert.NewCA(t, "other CA")
	f := newFakeRegistry(t)
	f.seedShared(t)
	url := tlsRegistry(t, ca, f.Registry.Handler(), nil)
	r, err := NewRegistry(Config{URL: url, TLS: TLSConfig{CAFile: other.File}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Schema(t.Context(), stockV1ID)
	if !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), "schema_registry.tls.ca_file") {
		t.Fatalf("Schema = %v, want ErrTLS naming schema_registry.tls.ca_file", err)
	}
	r, err = NewRegistry(Config{URL: url, TLS: TLSConfig{CAFile: ca.File}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Schema(t.Context(), stockV1ID); err != nil {
		t.Fatalf("with the right CA: %v", err)
	}
}

// The files are read when the Registry is made; one that cannot be read or
// holds nothing usable fails NewRegistry, naming the key and the file.
func TestNewRegistryTLSFiles(t *testing.T) {
	ca := testcert.NewCA(t, "registry CA")
	cert, _ := ca.WriteFiles(t, ca.Client(t))
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	garbage := filepath.Join(dir, "garbage.pem")
	writeFile(t, garbage, []byte("not a certificate\n"))
	empty := filepath.Join(dir, "empty-token")
	writeFile(t, empty, []byte(" \n"))
	emptyPassword := filepath.Join(dir, "empty-password")
	writeFile(t, emptyPassword, []byte("\n"))
	for _, tt := range []struct {
		name string
		cfg  Config
		want []string
	}{
		{"CA file missing", Config{TLS: TLSConfig{CAFile: missing}}, []string{"schema_registry.tls.ca_file: ", missing, "no such file"}},
		{"CA file not PEM", Config{TLS: TLSConfig{CAFile: garbage}}, []string{"schema_registry.tls.ca_file: ", garbage, "holds no PEM certificate"}},
		{"key missing", Config{TLS: TLSConfig{CertFile: cert, KeyFile: missing}}, []string{"schema_registry.tls.cert_file, key_file: ", missing}},
		{"key not the certificate's", Config{TLS: TLSConfig{CertFile: cert, KeyFile: garbage}}, []string{"schema_registry.tls.cert_file, key_file: ", garbage}},
		{"token file missing", Config{BearerTokenFile: missing}, []string{"schema_registry.bearer_token_file: ", missing, "no such file"}},
		{"token file empty", Config{BearerTokenFile: empty}, []string{"schema_registry.bearer_token_file: ", empty, "is empty"}},
		{"password file missing", Config{Username: "u", PasswordFile: missing}, []string{"schema_registry.password_file: ", missing, "no such file"}},
		{"password file empty", Config{Username: "u", PasswordFile: emptyPassword}, []string{"schema_registry.password_file: ", emptyPassword, "is empty"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.URL = "https://registry.test"
			_, err := NewRegistry(tt.cfg, nil)
			if err == nil {
				t.Fatal("NewRegistry passed")
			}
			if !strings.HasPrefix(err.Error(), tt.want[0]) || !containsAll(err.Error(), tt.want[1:]...) {
				t.Errorf("NewRegistry = %q, want it to start with %q and name %q", err, tt.want[0], tt.want[1:])
			}
		})
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// A bearer token is read from its file and sent with every request, the
// file read again when it changes: a token rotated while running is used
// from the next request on, by Check and by schema fetches alike. A token
// the registry refuses is ErrUnauthorized naming bearer_token_file.
func TestRegistryBearerTokenFile(t *testing.T) {
	ca := testcert.NewCA(t, "registry CA")
	f := newFakeRegistry(t)
	f.seedShared(t)
	var valid atomic.Value
	valid.Store("token-1")
	var seen atomic.Value
	handler := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		got := req.Header.Get("Authorization")
		seen.Store(got)
		if got != "Bearer "+valid.Load().(string) {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error_code":401,"message":"Unauthorized"}`))
			return
		}
		f.Registry.Handler().ServeHTTP(w, req)
	})
	url := tlsRegistry(t, ca, handler, nil)
	tokenPath := filepath.Join(t.TempDir(), "token")
	writeFile(t, tokenPath, []byte("token-1\n"))
	r, err := NewRegistry(Config{URL: url, BearerTokenFile: tokenPath, TLS: TLSConfig{CAFile: ca.File}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := r.Check(ctx); err != nil {
		t.Fatalf("Check with the token: %v", err)
	}
	if _, err := r.Schema(ctx, stockV1ID); err != nil {
		t.Fatalf("Schema with the token: %v", err)
	}

	// Rotated: the registry takes only the new token, which the file holds.
	valid.Store("token-2")
	writeFile(t, tokenPath, []byte("token-2"))
	if err := r.Check(ctx); err != nil {
		t.Fatalf("Check after the rotation: %v (sent %q)", err, seen.Load())
	}
	if _, err := r.Schema(ctx, stockV2ID); err != nil {
		t.Fatalf("Schema after the rotation: %v (sent %q)", err, seen.Load())
	}

	// Expired: the registry refuses what the file holds.
	valid.Store("token-3")
	err = r.Check(ctx)
	const want = "schema_registry.bearer_token_file: the registry refused the credentials (HTTP 401)"
	if !errors.Is(err, ErrUnauthorized) || err.Error() != want {
		t.Errorf("Check with a refused token = %v, want %q", err, want)
	}
	// A file gone meanwhile fails the request, naming the key and file.
	if err := os.Remove(tokenPath); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := r.Check(ctx); err == nil || !containsAll(err.Error(), "schema_registry.bearer_token_file", tokenPath) {
		t.Errorf("Check without the token file = %v", err)
	}
}
