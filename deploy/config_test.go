package deploy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// configDoc is a bqsink config file read as plain YAML: the tests look
// values up by their dotted keys, as the README names them.
type configDoc struct {
	file string
	raw  []byte
	tree map[string]any
}

func readConfig(t *testing.T, file string) configDoc {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	c := configDoc{file: file, raw: raw}
	if err := yaml.Unmarshal(raw, &c.tree); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return c
}

// lookup returns the value at a dotted key, and whether it is there.
func (c configDoc) lookup(key string) (any, bool) {
	var v any = c.tree
	for part := range strings.SplitSeq(key, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[part]; !ok {
			return nil, false
		}
	}
	return v, true
}

// get returns the value at key; the manifests' checks need every key they
// read to be written out in the production config.
func (c configDoc) get(t *testing.T, key string) any {
	t.Helper()
	v, ok := c.lookup(key)
	if !ok {
		t.Fatalf("%s: no %s; the deploy checks read it, so write it out", c.file, key)
	}
	return v
}

func (c configDoc) string(t *testing.T, key string) string {
	t.Helper()
	s, ok := c.get(t, key).(string)
	if !ok {
		t.Fatalf("%s: %s is %v, not a string", c.file, key, c.get(t, key))
	}
	return s
}

func (c configDoc) strings(t *testing.T, key string) []string {
	t.Helper()
	l, ok := c.get(t, key).([]any)
	if !ok {
		t.Fatalf("%s: %s is not a list", c.file, key)
	}
	var out []string
	for _, v := range l {
		s, ok := v.(string)
		if !ok {
			t.Fatalf("%s: %s holds %v, not a string", c.file, key, v)
		}
		out = append(out, s)
	}
	return out
}

func (c configDoc) bool(t *testing.T, key string) bool {
	t.Helper()
	b, ok := c.get(t, key).(bool)
	if !ok {
		t.Fatalf("%s: %s is %v, not a boolean", c.file, key, c.get(t, key))
	}
	return b
}

func (c configDoc) int64(t *testing.T, key string) int64 {
	t.Helper()
	f, ok := c.get(t, key).(float64)
	if !ok || f != float64(int64(f)) {
		t.Fatalf("%s: %s is %v, not an integer", c.file, key, c.get(t, key))
	}
	return int64(f)
}

func (c configDoc) duration(t *testing.T, key string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(c.string(t, key))
	if err != nil {
		t.Fatalf("%s: %s: %v", c.file, key, err)
	}
	return d
}

// envVar matches ${VAR} and ${VAR:-default}, as bqsink expands them.
var envVar = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}`)

// envVars lists the variables the config reads, without a default.
func (c configDoc) envVars() []string {
	var out []string
	for _, m := range envVar.FindAllStringSubmatch(string(stripComments(c.raw)), -1) {
		if m[2] == "" && !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	slices.Sort(out)
	return out
}

// fileKeys lists the config's keys ending in _file that name a file.
func (c configDoc) fileKeys() map[string]string {
	out := map[string]string{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, sub := range v {
				key := k
				if prefix != "" {
					key = prefix + "." + k
				}
				if s, ok := sub.(string); ok && strings.HasSuffix(k, "_file") && s != "" {
					out[key] = s
				}
				walk(key, sub)
			}
		}
	}
	walk("", c.tree)
	return out
}

// TestProductionConfig checks what makes config.example.yaml a production
// config: no endpoint overrides (they turn authentication off), credentials
// from Application Default Credentials (workload identity), dynamic group
// membership, passwords only in files mounted from Secrets
// (password_file), which bqsink reads again when a Secret changes: a
// password from ${VAR} is read once, and rotating it would need a restart.
func TestProductionConfig(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		cfg := s.cfg
		for _, key := range []string{"bigquery.endpoint", "bigquery.grpc_endpoint"} {
			if v, ok := cfg.lookup(key); ok && v != "" {
				t.Errorf("%s is %v: an endpoint override turns authentication off; production talks to Google", key, v)
			}
		}
		if v := cfg.string(t, "bigquery.credentials_file"); v != "" {
			t.Errorf("bigquery.credentials_file is %q: on GKE the pod's workload identity provides the credentials", v)
		}
		if v := cfg.string(t, "kafka.instance_id"); v != "" {
			t.Errorf("kafka.instance_id %q: static membership gives every replica the same ID under a Deployment", v)
		}
		if u := cfg.string(t, "schema_registry.url"); !strings.HasPrefix(u, "https://") {
			t.Errorf("schema_registry.url %q: production credentials go over https", u)
		}
		if cfg.bool(t, "kafka.tls.insecure_skip_verify") || cfg.bool(t, "kafka.sasl.allow_plaintext") {
			t.Error("kafka.tls.insecure_skip_verify and kafka.sasl.allow_plaintext must be false in production")
		}
		for _, key := range []string{"kafka.sasl.password", "schema_registry.password"} {
			if v, ok := cfg.lookup(key); ok && v != nil && v != "" {
				t.Errorf("%s is %v; use %s_file, a Secret's key the Deployment mounts, so that a rotated password needs no restart", key, v, key)
			}
		}
	})
}

// TestConfigPassesCheck runs `bqsink -check` (the daemon built from the
// parent module) on the ConfigMap's config, with every variable it reads
// set and every file it names present.
func TestConfigPassesCheck(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		if out, err := runCheck(t, s.cfg); err != nil {
			t.Fatalf("bqsink -check failed on the ConfigMap's config: %v\n%s", err, out)
		}
	})
}

// runCheck writes cfg with each file it names replaced by a generated one
// in a temporary directory (a CA, a certificate, a key, a token, a
// password), and runs
// bqsink -check on it with every variable it reads set to a placeholder.
func runCheck(t *testing.T, cfg configDoc) (string, error) {
	t.Helper()
	bin := daemonBinaries(t).bqsink
	dir := t.TempDir()
	tree := cloneTree(cfg.tree).(map[string]any)
	files := testFiles(t, dir)
	for key, value := range (configDoc{tree: tree}).fileKeys() {
		m := tree
		parts := strings.Split(key, ".")
		for _, p := range parts[:len(parts)-1] {
			m = m[p].(map[string]any)
		}
		name := parts[len(parts)-1]
		f, ok := files[name]
		if !ok {
			t.Fatalf("config %s (%s): no test file for a key named %s", key, value, name)
		}
		m[name] = f
	}
	b, err := yaml.Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-config", file, "-check")
	cmd.Env = os.Environ()
	for _, v := range cfg.envVars() {
		cmd.Env = append(cmd.Env, v+"=placeholder-"+strings.ToLower(v))
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func cloneTree(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, sub := range v {
			m[k] = cloneTree(sub)
		}
		return m
	case []any:
		l := make([]any, len(v))
		for i, sub := range v {
			l[i] = cloneTree(sub)
		}
		return l
	}
	return v
}

// testFiles writes a self-signed CA certificate, its key, a token and a
// password into dir, and returns them by the config key that would name
// each.
func testFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "bqsink deploy test"},
		DNSNames:              []string{"localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cert := write("cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return map[string]string{
		"ca_file":           cert,
		"cert_file":         cert,
		"key_file":          write("key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
		"token_file":        write("token", []byte("test-token\n")),
		"bearer_token_file": write("bearer-token", []byte("test-token\n")),
		"password_file":     write("password", []byte("test-password\n")),
		"credentials_file":  write("credentials.json", []byte(`{"type":"service_account"}`)),
	}
}

// secretKey names one key of one Secret.
type secretKey struct{ name, key string }

func (k secretKey) String() string { return fmt.Sprintf("Secret %s key %s", k.name, k.key) }

func (d deployFiles) hasSecretKey(k secretKey) bool {
	s, ok := d.secrets[k.name]
	if !ok {
		return false
	}
	_, inData := s.Data[k.key]
	_, inString := s.StringData[k.key]
	return inData || inString
}

// secretEnv maps the container's variables set from a Secret to their
// source.
func (d deployFiles) secretEnv() map[string]secretKey {
	out := map[string]secretKey{}
	for _, e := range d.deployment.Spec.Template.Spec.Containers[0].Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			out[e.Name] = secretKey{e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key}
		}
	}
	return out
}

// mountedSecretFile tells which Secret key the container sees at path.
func (d deployFiles) mountedSecretFile(p string) (secretKey, bool) {
	pod := d.deployment.Spec.Template.Spec
	for _, m := range pod.Containers[0].VolumeMounts {
		rel, err := filepath.Rel(m.MountPath, p)
		if err != nil || strings.HasPrefix(rel, "..") || m.SubPath != "" {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			if len(v.Secret.Items) == 0 {
				return secretKey{v.Secret.SecretName, rel}, true
			}
			for _, it := range v.Secret.Items {
				if it.Path == rel {
					return secretKey{v.Secret.SecretName, it.Key}, true
				}
			}
		}
	}
	return secretKey{}, false
}

// TestSecretReferences checks the chain from Secret to config: every
// variable the config reads is set by the Deployment, every variable set
// from a Secret is read by the config, every Secret key the Deployment reads
// exists in the Secret example (and is not optional), and every file the
// config names is a Secret key the Deployment mounts there.
func TestSecretReferences(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		d, cfg := s.d, s.cfg
		c := d.deployment.Spec.Template.Spec.Containers[0]
		set := map[string]bool{}
		for _, e := range c.Env {
			set[e.Name] = true
		}
		vars := cfg.envVars()
		for _, v := range vars {
			if !set[v] {
				t.Errorf("config reads ${%s}; the Deployment does not set it (bqsink would refuse to start)", v)
			}
		}
		for name, src := range d.secretEnv() {
			if !slices.Contains(vars, name) {
				t.Errorf("the Deployment sets %s from %s; the config never reads it", name, src)
			}
		}
		for _, e := range c.Env {
			if r := e.ValueFrom; r != nil && r.SecretKeyRef != nil {
				k := secretKey{r.SecretKeyRef.Name, r.SecretKeyRef.Key}
				if !d.hasSecretKey(k) {
					t.Errorf("env %s reads %s, which the Secret example does not have", e.Name, k)
				}
				if r.SecretKeyRef.Optional != nil && *r.SecretKeyRef.Optional {
					t.Errorf("env %s: optional: a missing Secret must stop the pod, not start it without credentials", e.Name)
				}
			}
		}
		for _, v := range d.deployment.Spec.Template.Spec.Volumes {
			if v.Secret == nil {
				continue
			}
			if _, ok := d.secrets[v.Secret.SecretName]; !ok {
				t.Errorf("volume %s mounts Secret %s, which the Secret example does not define", v.Name, v.Secret.SecretName)
			}
			for _, it := range v.Secret.Items {
				if !d.hasSecretKey(secretKey{v.Secret.SecretName, it.Key}) {
					t.Errorf("volume %s mounts %s", v.Name, secretKey{v.Secret.SecretName, it.Key})
				}
			}
		}
		for key, file := range cfg.fileKeys() {
			if src, ok := d.mountedSecretFile(file); !ok {
				t.Errorf("config %s names %s; the Deployment mounts no Secret key there", key, file)
			} else if !d.hasSecretKey(src) {
				t.Errorf("config %s names %s: %s is not in the Secret example", key, file, src)
			}
		}
		// Files named by the environment rather than the config: the
		// BigQuery key of Application Default Credentials.
		for _, e := range c.Env {
			if e.Name != "GOOGLE_APPLICATION_CREDENTIALS" {
				continue
			}
			if src, ok := d.mountedSecretFile(e.Value); !ok {
				t.Errorf("env %s names %s; the Deployment mounts no Secret key there", e.Name, e.Value)
			} else if !d.hasSecretKey(src) {
				t.Errorf("env %s names %s: %s is not in the Secret examples", e.Name, e.Value, src)
			}
		}
		if len(vars) == 0 {
			t.Error("the config reads no variables: where do the credentials come from?")
		}
	})
}
