// Package testcert makes certificates for tests: a certificate authority
// of the test's own, server certificates for 127.0.0.1 and client
// certificates it signs, and their PEM files in a directory of the test's.
// Every certificate is an ECDSA P-256 one, valid from an hour ago to an
// hour from now.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// serial numbers the certificates and names the files, unique in a process.
var serial atomic.Int64

// CA is a certificate authority made for one test.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	Pool *x509.CertPool // holding Cert alone
	File string         // Cert as PEM
	dir  string
}

// NewCA makes a CA named name and writes its certificate to File, in a
// directory of t's that the files of WriteFiles go to as well.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &CA{Cert: cert, Key: key, Pool: x509.NewCertPool(), dir: t.TempDir()}
	ca.Pool.AddCert(cert)
	ca.File = filepath.Join(ca.dir, "ca.pem")
	writeFile(t, ca.File, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return ca
}

// Server issues a server certificate for 127.0.0.1 and dnsNames.
func (ca *CA) Server(t testing.TB, dnsNames ...string) tls.Certificate {
	t.Helper()
	return ca.issue(t, []net.IP{net.IPv4(127, 0, 0, 1)}, dnsNames, x509.ExtKeyUsageServerAuth)
}

// Client issues a client certificate.
func (ca *CA) Client(t testing.TB) tls.Certificate {
	t.Helper()
	return ca.issue(t, nil, nil, x509.ExtKeyUsageClientAuth)
}

func (ca *CA) issue(t testing.TB, ips []net.IP, dnsNames []string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: "bqsink"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: ips, DNSNames: dnsNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// WriteFiles writes cert (one Server or Client issued) and its key as PEM,
// to files of their own, and returns their paths.
func (ca *CA) WriteFiles(t testing.TB, cert tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	key, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	n := serial.Add(1)
	certFile, keyFile = filepath.Join(ca.dir, fmt.Sprintf("cert-%d.pem", n)), filepath.Join(ca.dir, fmt.Sprintf("key-%d.pem", n))
	writeFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))
	writeFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: key}))
	return certFile, keyFile
}

// ClientFiles issues a client certificate and writes it and its key as PEM.
func (ca *CA) ClientFiles(t testing.TB) (cert tls.Certificate, certFile, keyFile string) {
	t.Helper()
	cert = ca.Client(t)
	certFile, keyFile = ca.WriteFiles(t, cert)
	return cert, certFile, keyFile
}

// ServerTLS is a listener's TLS config with a Server certificate of ca for
// dnsNames; with clients set it requires a client certificate that clients
// signed.
func (ca *CA) ServerTLS(t testing.TB, clients *CA, dnsNames ...string) *tls.Config {
	t.Helper()
	c := &tls.Config{Certificates: []tls.Certificate{ca.Server(t, dnsNames...)}}
	if clients != nil {
		c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, clients.Pool
	}
	return c
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
