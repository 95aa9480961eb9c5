package tlsfiles

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bqsink/bqsink/internal/testcert"
)

// Keys that contradict each other are named, under the caller's prefix.
func TestProblems(t *testing.T) {
	for _, c := range []struct {
		f    Files
		want []string
	}{
		{Files{}, nil},
		{Files{CAFile: "ca.pem", CertFile: "c.pem", KeyFile: "k.pem", ServerName: "kafka"}, nil},
		{Files{CertFile: "c.pem"}, []string{"p.key_file: required when p.cert_file is set"}},
		{Files{KeyFile: "k.pem"}, []string{"p.cert_file: required when p.key_file is set"}},
		{Files{CAFile: "ca.pem", InsecureSkipVerify: true}, []string{"p.insecure_skip_verify: turns off the verification p.ca_file is for; set one of them"}},
	} {
		var got []string
		for _, err := range c.f.Problems("p.") {
			got = append(got, err.Error())
		}
		if strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("%+v: %q, want %q", c.f, got, c.want)
		}
	}
	if got := (Files{CAFile: "x", InsecureSkipVerify: true}).SetKeys("t."); strings.Join(got, ",") != "t.ca_file,t.insecure_skip_verify" {
		t.Errorf("SetKeys = %v", got)
	}
}

// What the files hold is checked as the first connection would use it: a
// CA file without a certificate, a key that is not the certificate's, a
// file that is not there. Good files build a config.
func TestConfigAndCheckReadTheFiles(t *testing.T) {
	dir := t.TempDir()
	ca, other := testcert.NewCA(t, "ca"), testcert.NewCA(t, "other")
	_, certFile, keyFile := ca.ClientFiles(t)
	_, _, otherKey := other.ClientFiles(t)
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	good := Files{CAFile: ca.File, CertFile: certFile, KeyFile: keyFile}
	cfg, err := good.Config("p.")
	if err != nil || cfg.RootCAs == nil || len(cfg.Certificates) != 1 {
		t.Fatalf("Config of good files: %v, %v", cfg, err)
	}
	if errs := good.Check("p."); len(errs) != 0 {
		t.Fatalf("Check of good files: %v", errs)
	}
	for _, c := range []struct {
		name string
		f    Files
		want []string
	}{
		{"CA not PEM", Files{CAFile: notPEM}, []string{"p.ca_file: " + notPEM + " holds no PEM certificate"}},
		{"CA a key", Files{CAFile: keyFile}, []string{"p.ca_file: " + keyFile + " holds no PEM certificate (its first PEM block is a"}},
		{"CA missing", Files{CAFile: missing}, []string{"p.ca_file: open " + missing}},
		{"key of another certificate", Files{CertFile: certFile, KeyFile: otherKey}, []string{"p.cert_file, key_file: " + certFile + ", " + otherKey + ": tls: private key does not match public key"}},
		{"key not PEM", Files{CertFile: certFile, KeyFile: notPEM}, []string{"p.cert_file, key_file: " + certFile + ", " + notPEM}},
	} {
		errs := c.f.Check("p.")
		if len(errs) != len(c.want) {
			t.Errorf("%s: Check = %v, want %d problems", c.name, errs, len(c.want))
			continue
		}
		for i, err := range errs {
			if !strings.HasPrefix(err.Error(), c.want[i]) {
				t.Errorf("%s: %q, want it to start %q", c.name, err, c.want[i])
			}
		}
		if _, err := c.f.Config("p."); err == nil || !strings.HasPrefix(err.Error(), c.want[0]) {
			t.Errorf("%s: Config error %v, want %q", c.name, err, c.want[0])
		}
	}
}
