package schema

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"reflect"
)

// TLSConfig configures TLS to a registry whose URL is https. Zero values
// mean Go's defaults: the system's root certificates, no client
// certificate, the URL's host as the name to verify. The files are read
// once, when the Registry is made; replacing them takes a restart.
type TLSConfig struct {
	// CAFile holds the PEM certificates of the CAs that sign the
	// registry's certificate, used instead of the system's roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile hold a PEM client certificate and its key, for
	// a registry that wants one (mutual TLS); set both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name the registry's certificate must hold, when it
	// is not the URL's host (an IP address, a tunnel).
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any certificate the registry shows,
	// leaving the connection open to whoever sits in between: for tests.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

func (c TLSConfig) set() bool { return c != TLSConfig{} }

// validate reports the problems of the tls keys of a registry at rawURL,
// keys relative to the section ("tls.cert_file: ...").
func (c TLSConfig) validate(rawURL string) []error {
	var errs []error
	if u, err := url.Parse(rawURL); err == nil && u.Scheme == "http" {
		for _, k := range []struct {
			key   string
			isSet bool
		}{
			{"tls.ca_file", c.CAFile != ""}, {"tls.cert_file", c.CertFile != ""}, {"tls.key_file", c.KeyFile != ""},
			{"tls.server_name", c.ServerName != ""}, {"tls.insecure_skip_verify", c.InsecureSkipVerify},
		} {
			if k.isSet {
				errs = append(errs, fmt.Errorf("%s: set, but url is http, not https", k.key))
			}
		}
	}
	if c.CertFile != "" && c.KeyFile == "" {
		errs = append(errs, errors.New("tls.key_file: required when tls.cert_file is set"))
	}
	if c.KeyFile != "" && c.CertFile == "" {
		errs = append(errs, errors.New("tls.cert_file: required when tls.key_file is set"))
	}
	if c.InsecureSkipVerify && c.CAFile != "" {
		errs = append(errs, errors.New("tls.insecure_skip_verify: turns off the verification tls.ca_file is for; set one of them"))
	}
	return errs
}

// build reads the files and returns the TLS config for the registry's
// transport, or nil when nothing is set. Errors name the key and the file.
func (c TLSConfig) build() (*tls.Config, error) {
	if !c.set() {
		return nil, nil
	}
	cfg := &tls.Config{ServerName: c.ServerName, InsecureSkipVerify: c.InsecureSkipVerify} //nolint:gosec // an operator's explicit choice, documented as for tests
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("schema_registry.tls.ca_file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("schema_registry.tls.ca_file: %s holds no PEM certificate", c.CAFile)
		}
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("schema_registry.tls.cert_file, key_file: %s, %s: %w", c.CertFile, c.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// tlsRefused returns an error wrapping ErrTLS and naming the key to fix when
// err is a TLS handshake with the registry that failed verification, on
// either side; otherwise nil.
func (r *Registry) tlsRefused(err error) error {
	var (
		host  x509.HostnameError
		auth  x509.UnknownAuthorityError
		cert  *tls.CertificateVerificationError
		alert *net.OpError
	)
	switch {
	case errors.As(err, &host):
		return fmt.Errorf("schema_registry.tls.server_name: %w: the registry's certificate is not for the name checked (%s): %v", ErrTLS, r.where, host)
	case errors.As(err, &auth):
		return fmt.Errorf("schema_registry.tls.ca_file: %w: the registry's certificate is not signed by %s (%s): %v", ErrTLS, r.roots, r.where, auth)
	case errors.As(err, &cert):
		return fmt.Errorf("schema_registry.tls.ca_file: %w: the registry's certificate does not verify (%s): %v", ErrTLS, r.where, cert.Err)
	case errors.As(err, &alert) && isTLSAlert(alert):
		return fmt.Errorf("schema_registry.tls.cert_file: %w: the registry ended the TLS handshake, refusing %s (%s): %v", ErrTLS, r.clientCert, r.where, alert)
	}
	return nil
}

// isTLSAlert reports whether e is an alert the peer sent during a TLS
// handshake (crypto/tls reports it as a "remote error" whose Err is its
// unexported alert type, a uint8).
func isTLSAlert(e *net.OpError) bool {
	return e.Op == "remote error" && e.Err != nil && reflect.TypeOf(e.Err).PkgPath() == "crypto/tls"
}
