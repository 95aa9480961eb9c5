package schema

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"reflect"

	"github.com/bqsink/bqsink/internal/tlsfiles"
)

// TLSConfig configures TLS to a registry whose URL is https. Zero values
// mean Go's defaults: the system's root certificates, no client
// certificate, the URL's host as the name to verify. The files are read
// once, when the Registry is made; replacing them takes a restart. Kafka's
// TLS keys are the same, checked and built by the same code.
type TLSConfig = tlsfiles.Files

// validateTLS reports the problems of the tls keys of a registry at rawURL,
// keys relative to the section ("tls.cert_file: ...").
func validateTLS(c TLSConfig, rawURL string) []error {
	var errs []error
	if u, err := url.Parse(rawURL); err == nil && u.Scheme == "http" {
		for _, k := range c.SetKeys("tls.") {
			errs = append(errs, fmt.Errorf("%s: set, but url is http, not https", k))
		}
	}
	return append(errs, c.Problems("tls.")...)
}

// buildTLS reads the files and returns the TLS config for the registry's
// transport, or nil when nothing is set. Errors name the key and the file.
func buildTLS(c TLSConfig) (*tls.Config, error) {
	if !c.Set() {
		return nil, nil
	}
	return c.Config("schema_registry.tls.")
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
