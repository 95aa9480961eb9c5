// Package tlsfiles turns the TLS keys bqsink takes for Kafka and for the
// Schema Registry (a CA file, a client certificate and key, the name to
// verify) into a crypto/tls client config, with one set of checks and one
// set of messages for both. Every error names the config key to fix and the
// file, under the prefix the caller gives ("kafka.tls.",
// "schema_registry.tls.").
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

// Files are the TLS settings of one endpoint. The zero value means Go's
// defaults: the system's roots, no client certificate, the host dialed as
// the name to verify.
type Files struct {
	// CAFile holds the PEM certificates of the CAs that sign the peer's
	// certificate, used instead of the system's roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile hold a PEM client certificate and its key, for
	// a peer that authenticates clients by certificate (mutual TLS); set
	// both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name the peer's certificate must hold, when it is
	// not the host dialed.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any certificate the peer shows, leaving
	// the connection open to whoever sits in between: for tests.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Set reports whether any key is set.
func (f Files) Set() bool { return f != Files{} }

// Problems lists what is wrong with the keys themselves, without reading
// the files, one error per key, each starting with prefix and the key.
func (f Files) Problems(prefix string) []error {
	var errs []error
	if f.CertFile != "" && f.KeyFile == "" {
		errs = append(errs, fmt.Errorf("%skey_file: required when %scert_file is set", prefix, prefix))
	}
	if f.KeyFile != "" && f.CertFile == "" {
		errs = append(errs, fmt.Errorf("%scert_file: required when %skey_file is set", prefix, prefix))
	}
	if f.InsecureSkipVerify && f.CAFile != "" {
		errs = append(errs, fmt.Errorf("%sinsecure_skip_verify: turns off the verification %sca_file is for; set one of them", prefix, prefix))
	}
	return errs
}

// SetKeys lists the keys that are set, with prefix, for a caller that
// refuses them where TLS is off.
func (f Files) SetKeys(prefix string) []string {
	var keys []string
	for _, k := range []struct {
		name  string
		isSet bool
	}{
		{"ca_file", f.CAFile != ""}, {"cert_file", f.CertFile != ""}, {"key_file", f.KeyFile != ""},
		{"server_name", f.ServerName != ""}, {"insecure_skip_verify", f.InsecureSkipVerify},
	} {
		if k.isSet {
			keys = append(keys, prefix+k.name)
		}
	}
	return keys
}

// KeyError is a file that cannot be used. Its message reads
// "<key>: [<problem>: ]<error>".
type KeyError struct {
	Key     string // "kafka.tls.ca_file"; "kafka.tls.cert_file, key_file" for the pair
	Problem string // the files, for the pair; empty when Err names the file
	Err     error
}

func (e *KeyError) Error() string {
	if e.Problem == "" {
		return e.Key + ": " + e.Err.Error()
	}
	return e.Key + ": " + e.Problem + ": " + e.Err.Error()
}

func (e *KeyError) Unwrap() error { return e.Err }

// Config reads the files and returns the client config. ServerName stays
// empty unless set, so that the caller fills in the host it dials. Errors
// are *KeyError.
func (f Files) Config(prefix string) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: f.ServerName, InsecureSkipVerify: f.InsecureSkipVerify} //nolint:gosec // an operator's explicit choice, documented as for tests
	if f.CAFile != "" {
		pool, err := readCAs(f.CAFile)
		if err != nil {
			return nil, &KeyError{Key: prefix + "ca_file", Err: err}
		}
		cfg.RootCAs = pool
	}
	if f.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, f.pairError(prefix, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Check reads the files as Config would and lists every problem with what
// they hold: a CA file without a PEM certificate, a certificate or key
// that does not parse, a key that is not the certificate's. For
// `bqsink -check`, which should find what the first connection would.
func (f Files) Check(prefix string) []error {
	var errs []error
	if f.CAFile != "" {
		if _, err := readCAs(f.CAFile); err != nil {
			errs = append(errs, &KeyError{Key: prefix + "ca_file", Err: err})
		}
	}
	if f.CertFile != "" && f.KeyFile != "" {
		if _, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile); err != nil {
			errs = append(errs, f.pairError(prefix, err))
		}
	}
	return errs
}

func (f Files) pairError(prefix string, err error) *KeyError {
	return &KeyError{Key: prefix + "cert_file, key_file", Problem: f.CertFile + ", " + f.KeyFile, Err: err}
}

// readCAs reads the PEM certificates of a CA file.
func readCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		if block, _ := pem.Decode(b); block != nil {
			return nil, fmt.Errorf("%s holds no PEM certificate (its first PEM block is a %q)", path, block.Type)
		}
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}
