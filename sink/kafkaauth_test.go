package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/bqsink/bqsink/internal/testcert"
)

func TestKafkaSecurityValidate(t *testing.T) {
	tls := KafkaTLSConfig{Enabled: true}
	for _, tt := range []struct {
		name string
		tls  KafkaTLSConfig
		sasl KafkaSASLConfig
		want []string // "key: problem" prefixes, sorted; none means valid
	}{
		{name: "none"},
		{name: "TLS with system roots", tls: tls},
		{name: "mutual TLS", tls: KafkaTLSConfig{Enabled: true, CAFile: "ca.pem", CertFile: "c.pem", KeyFile: "k.pem", ServerName: "kafka"}},
		{name: "plain over TLS", tls: tls, sasl: KafkaSASLConfig{Mechanism: "plain", Username: "u", Password: "p"}},
		{name: "scram without TLS", sasl: KafkaSASLConfig{Mechanism: "scram-sha-512", Username: "u", Password: "p"}},
		{name: "oauthbearer over TLS", tls: tls, sasl: KafkaSASLConfig{Mechanism: "oauthbearer", TokenFile: "/t"}},
		{name: "aws-msk-iam over TLS", tls: tls, sasl: KafkaSASLConfig{Mechanism: "aws-msk-iam"}},
		{name: "plain without TLS, allowed", sasl: KafkaSASLConfig{Mechanism: "plain", Username: "u", Password: "p", AllowPlaintext: true}},
		{
			name: "plain without TLS", sasl: KafkaSASLConfig{Mechanism: "plain", Username: "u", Password: "p"},
			want: []string{"kafka.sasl.mechanism: plain would send the password unencrypted: set kafka.tls.enabled, or kafka.sasl.allow_plaintext: true"},
		},
		{
			name: "oauthbearer without TLS", sasl: KafkaSASLConfig{Mechanism: "oauthbearer", TokenFile: "/t"},
			want: []string{"kafka.sasl.mechanism: oauthbearer would send the token unencrypted"},
		},
		{
			name: "aws-msk-iam without TLS", sasl: KafkaSASLConfig{Mechanism: "aws-msk-iam"},
			want: []string{"kafka.sasl.mechanism: aws-msk-iam would send its signed request"},
		},
		{
			name: "scram without credentials", tls: tls, sasl: KafkaSASLConfig{Mechanism: "scram-sha-256", TokenFile: "/t"},
			want: []string{"kafka.sasl.password: required with mechanism scram-sha-256", "kafka.sasl.token_file: not used with mechanism scram-sha-256", "kafka.sasl.username: required with mechanism scram-sha-256"},
		},
		{
			name: "oauthbearer without token file", tls: tls, sasl: KafkaSASLConfig{Mechanism: "oauthbearer", Username: "u", Password: "p"},
			want: []string{"kafka.sasl.password: not used with mechanism oauthbearer", "kafka.sasl.token_file: required with mechanism oauthbearer", "kafka.sasl.username: not used with mechanism oauthbearer"},
		},
		{
			name: "aws-msk-iam with a token file", tls: tls, sasl: KafkaSASLConfig{Mechanism: "aws-msk-iam", TokenFile: "/t"},
			want: []string{"kafka.sasl.token_file: not used with mechanism aws-msk-iam"},
		},
		{
			name: "credentials without mechanism", sasl: KafkaSASLConfig{Username: "u", Password: "p", TokenFile: "/t"},
			want: []string{"kafka.sasl.mechanism: required when kafka.sasl.password is set", "kafka.sasl.mechanism: required when kafka.sasl.token_file is set", "kafka.sasl.mechanism: required when kafka.sasl.username is set"},
		},
		{name: "scram with a password file", sasl: KafkaSASLConfig{Mechanism: "scram-sha-512", Username: "u", PasswordFile: "/p"}},
		{name: "plain with a password file over TLS", tls: tls, sasl: KafkaSASLConfig{Mechanism: "plain", Username: "u", PasswordFile: "/p"}},
		{
			name: "password and password file", tls: tls, sasl: KafkaSASLConfig{Mechanism: "scram-sha-256", Username: "u", Password: "p", PasswordFile: "/p"},
			want: []string{"kafka.sasl.password_file: set together with kafka.sasl.password: set one of them"},
		},
		{
			name: "neither password nor password file", tls: tls, sasl: KafkaSASLConfig{Mechanism: "plain", Username: "u"},
			want: []string{"kafka.sasl.password: required with mechanism plain (or kafka.sasl.password_file)"},
		},
		{
			name: "password file with oauthbearer", tls: tls, sasl: KafkaSASLConfig{Mechanism: "oauthbearer", TokenFile: "/t", PasswordFile: "/p"},
			want: []string{"kafka.sasl.password_file: not used with mechanism oauthbearer"},
		},
		{
			name: "password file without mechanism", sasl: KafkaSASLConfig{Username: "u", PasswordFile: "/p"},
			want: []string{"kafka.sasl.mechanism: required when kafka.sasl.password_file is set", "kafka.sasl.mechanism: required when kafka.sasl.username is set"},
		},
		{
			name: "unknown mechanism", tls: tls, sasl: KafkaSASLConfig{Mechanism: "SCRAM-SHA-256", Username: "u", Password: "p"},
			want: []string{`kafka.sasl.mechanism: "SCRAM-SHA-256" is not plain, scram-sha-256, scram-sha-512, oauthbearer or aws-msk-iam`},
		},
		{
			name: "TLS files without TLS", tls: KafkaTLSConfig{CAFile: "ca.pem", CertFile: "c.pem", KeyFile: "k.pem", ServerName: "s"},
			want: []string{"kafka.tls.ca_file: set, but kafka.tls.enabled is false", "kafka.tls.cert_file: set, but kafka.tls.enabled is false",
				"kafka.tls.key_file: set, but kafka.tls.enabled is false", "kafka.tls.server_name: set, but kafka.tls.enabled is false"},
		},
		{name: "certificate without key", tls: KafkaTLSConfig{Enabled: true, CertFile: "c.pem"}, want: []string{"kafka.tls.key_file: required when kafka.tls.cert_file is set"}},
		{name: "key without certificate", tls: KafkaTLSConfig{Enabled: true, KeyFile: "k.pem"}, want: []string{"kafka.tls.cert_file: required when kafka.tls.key_file is set"}},
		{
			name: "CA and no verification", tls: KafkaTLSConfig{Enabled: true, CAFile: "ca.pem", InsecureSkipVerify: true},
			want: []string{"kafka.tls.insecure_skip_verify: turns off the verification kafka.tls.ca_file is for"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			c.Kafka.TLS, c.Kafka.SASL = tt.tls, tt.sasl
			err := c.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate passed, want %q", tt.want)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("Validate =\n%v\nwant %d errors", err, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("error %d = %q, want prefix %q", i, lines[i], w)
				}
			}
		})
	}
}

func writeTestFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// connect asks the brokers of k for their topics with a client secured by
// securityOpts, as the startup check does, and returns its error as
// kafkaErr names it. It waits at most startupTimeout, or wait if set.
func connect(t *testing.T, k KafkaConfig, wait ...time.Duration) error {
	t.Helper()
	k.RequestTimeout = 5 * time.Second
	pass, err := k.SASL.passwordFile(zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(k.Brokers...)}, k.securityOpts(pass)...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), append(wait, startupTimeout)[0])
	defer cancel()
	_, err = kadm.NewClient(cl).ListTopics(ctx)
	s := &Sink{cfg: Config{Kafka: k}}
	return s.kafkaErr(err)
}

// Each mechanism and TLS setting connects to a kfake broker that wants it;
// each way of getting it wrong ends in an error that the startup check
// takes as permanent, naming the key to fix, within seconds. kfake closes
// the connection on credentials it refuses (Kafka answers
// SASL_AUTHENTICATION_FAILED): both read as refused credentials.
func TestKafkaSecurityAgainstKfake(t *testing.T) {
	ca, other := testcert.NewCA(t, "bqsink test CA"), testcert.NewCA(t, "bqsink test CA")
	serverTLS := ca.ServerTLS(t, nil)
	mutualTLS := ca.ServerTLS(t, ca)
	cluster := func(opts ...kfake.Opt) []string {
		c, err := kfake.NewCluster(append(opts, kfake.NumBrokers(1))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c.ListenAddrs()
	}
	saslTLS := cluster(kfake.TLS(serverTLS), kfake.EnableSASL(),
		kfake.User("PLAIN", "bqsink", "secret"), kfake.User("SCRAM-SHA-256", "bqsink", "secret"), kfake.User("SCRAM-SHA-512", "bqsink", "secret"))
	saslPlaintext := cluster(kfake.EnableSASL(), kfake.User("SCRAM-SHA-256", "bqsink", "secret"))
	mtls := cluster(kfake.TLS(mutualTLS))
	plaintext := cluster()
	clientCert, clientKey := ca.WriteFiles(t, ca.Client(t))
	strangerCert, strangerKey := other.WriteFiles(t, other.Client(t))
	trusted := KafkaTLSConfig{Enabled: true, CAFile: ca.File}
	user := func(mech, pass string) KafkaSASLConfig {
		return KafkaSASLConfig{Mechanism: mech, Username: "bqsink", Password: pass}
	}

	for _, tt := range []struct {
		name    string
		brokers []string
		tls     KafkaTLSConfig
		sasl    KafkaSASLConfig
		want    string // "" when it connects; else the start of the error
		wait    time.Duration
	}{
		{name: "plain over TLS", brokers: saslTLS, tls: trusted, sasl: user("plain", "secret")},
		{name: "scram-sha-256 over TLS", brokers: saslTLS, tls: trusted, sasl: user("scram-sha-256", "secret")},
		{name: "scram-sha-512 over TLS", brokers: saslTLS, tls: trusted, sasl: user("scram-sha-512", "secret")},
		{name: "scram-sha-256 without TLS", brokers: saslPlaintext, sasl: user("scram-sha-256", "secret")},
		{name: "mutual TLS", brokers: mtls, tls: KafkaTLSConfig{Enabled: true, CAFile: ca.File, CertFile: clientCert, KeyFile: clientKey}},
		{name: "no verification", brokers: mtls, tls: KafkaTLSConfig{Enabled: true, InsecureSkipVerify: true, CertFile: clientCert, KeyFile: clientKey}},
		{
			name: "plain, wrong password", brokers: saslTLS, tls: trusted, sasl: user("plain", "wrong"),
			want: `kafka.sasl.password: the brokers refused plain authentication of kafka.sasl.username "bqsink": the broker closed the connection during SASL authentication`,
		},
		{
			name: "scram-sha-512, wrong password", brokers: saslTLS, tls: trusted, sasl: user("scram-sha-512", "wrong"),
			want: `kafka.sasl.password: the brokers refused scram-sha-512 authentication of kafka.sasl.username "bqsink"`,
		},
		{
			name: "scram-sha-256, unknown user", brokers: saslPlaintext, sasl: KafkaSASLConfig{Mechanism: "scram-sha-256", Username: "nobody", Password: "secret"},
			want: `kafka.sasl.password: the brokers refused scram-sha-256 authentication of kafka.sasl.username "nobody"`,
		},
		{
			name: "no SASL where it is required", brokers: saslPlaintext,
			want: "kafka.tls.enabled, kafka.sasl.mechanism: a broker closed the connection at once, as brokers do to clients without the TLS or SASL their listener wants (here TLS is off, SASL none): broker closed the connection immediately after a request was issued",
		},
		{
			name: "no TLS where it is required", brokers: mtls,
			want: "kafka.tls.enabled, kafka.sasl.mechanism: a broker closed the connection at once, as brokers do to clients without the TLS or SASL their listener wants (here TLS is off, SASL none): broker closed the connection immediately during api versions negotiation",
		},
		{
			name: "system roots", brokers: saslTLS, tls: KafkaTLSConfig{Enabled: true}, sasl: user("plain", "secret"),
			want: "kafka.tls.ca_file: a broker's certificate is not signed by the system's root CAs: x509: certificate signed by unknown authority",
		},
		{
			name: "another CA", brokers: saslTLS, tls: KafkaTLSConfig{Enabled: true, CAFile: other.File}, sasl: user("plain", "secret"),
			want: "kafka.tls.ca_file: a broker's certificate is not signed by a CA of " + other.File,
		},
		{
			name: "another name", brokers: saslTLS, tls: KafkaTLSConfig{Enabled: true, CAFile: ca.File, ServerName: "kafka.example.com"}, sasl: user("plain", "secret"),
			want: "kafka.tls.server_name: a broker's certificate is not for the name checked: x509: certificate is not valid for any names, but wanted to match kafka.example.com",
		},
		{
			name: "no client certificate", brokers: mtls, tls: trusted,
			want: "kafka.tls.cert_file: a broker ended the TLS handshake, refusing the connection without a client certificate (none is set): remote error: tls: certificate required",
		},
		{
			name: "client certificate of another CA", brokers: mtls, tls: KafkaTLSConfig{Enabled: true, CAFile: ca.File, CertFile: strangerCert, KeyFile: strangerKey},
			want: "kafka.tls.cert_file: a broker ended the TLS handshake, refusing the client certificate of " + strangerCert,
		},
		{
			name: "TLS to a plaintext listener", brokers: plaintext, tls: trusted,
			want: "kafka.brokers " + plaintext[0] + ": no answer within 8s: context deadline exceeded; kafka.tls.enabled is true: do the brokers listen with TLS there?",
			wait: time.Second, // the answer never comes: no need to wait the startup check's 8s
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			var wait []time.Duration
			if tt.wait > 0 {
				wait = append(wait, tt.wait)
			}
			err := connect(t, KafkaConfig{Brokers: tt.brokers, TLS: tt.tls, SASL: tt.sasl}, wait...)
			took := time.Since(start)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("connect: %v", err)
			case tt.want == "":
				return
			case err == nil:
				t.Fatalf("connected, want %q", tt.want)
			case !strings.HasPrefix(err.Error(), tt.want):
				t.Errorf("error = %q\nwant prefix %q", err, tt.want)
			}
			if strings.HasPrefix(tt.want, "kafka.brokers") {
				if permanent(err) {
					t.Errorf("%v: permanent, want it retried by the startup check", err)
				}
				return
			}
			if !permanent(err) {
				t.Errorf("%v: not permanent: the startup check would retry it", err)
			}
			if took > 3*time.Second {
				t.Errorf("took %v to fail, want it at once", took.Round(time.Millisecond))
			}
		})
	}
}

// Brokers answering SASL_AUTHENTICATION_FAILED, as Kafka does, or refusing
// the mechanism are named the same way.
func TestKafkaSetupProblemOfBrokerAnswers(t *testing.T) {
	refused := fmt.Errorf("%w: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256", kerr.SaslAuthenticationFailed)
	for _, tt := range []struct {
		sasl KafkaSASLConfig
		err  error
		want string
	}{
		{KafkaSASLConfig{Mechanism: "scram-sha-256", Username: "u"}, refused, `kafka.sasl.password: the brokers refused scram-sha-256 authentication of kafka.sasl.username "u": SASL_AUTHENTICATION_FAILED`},
		{KafkaSASLConfig{Mechanism: "scram-sha-512", Username: "u", PasswordFile: "/run/password"}, refused, `kafka.sasl.password_file: the brokers refused scram-sha-512 authentication of kafka.sasl.username "u" with the password in /run/password: SASL_AUTHENTICATION_FAILED`},
		{KafkaSASLConfig{Mechanism: "oauthbearer", TokenFile: "/run/token"}, refused, "kafka.sasl.token_file: the brokers refused the token in /run/token (expired, or not for them?): SASL_AUTHENTICATION_FAILED"},
		{KafkaSASLConfig{Mechanism: "aws-msk-iam"}, refused, "kafka.sasl.mechanism: the brokers refused aws-msk-iam authentication with the credentials of the default AWS credential chain"},
		{KafkaSASLConfig{Mechanism: "scram-sha-512"}, kerr.UnsupportedSaslMechanism, "kafka.sasl.mechanism: the brokers do not enable scram-sha-512: UNSUPPORTED_SASL_MECHANISM"},
	} {
		s := &Sink{cfg: Config{Kafka: KafkaConfig{Brokers: []string{"k:9092"}, SASL: tt.sasl}}}
		err := s.kafkaErr(tt.err)
		if !strings.HasPrefix(err.Error(), tt.want) || !strings.HasSuffix(err.Error(), " (kafka.brokers k:9092)") || !permanent(err) {
			t.Errorf("kafkaErr = %q (permanent %v)\nwant prefix %q", err, permanent(err), tt.want)
		}
	}
}

// The TLS files are read at the first connection; one that cannot be read
// fails it at once, naming the key and the file.
func TestKafkaTLSFilesReadAtFirstConnection(t *testing.T) {
	ca := testcert.NewCA(t, "bqsink test CA")
	cert, _ := ca.WriteFiles(t, ca.Client(t))
	dir := t.TempDir()
	missing, garbage := filepath.Join(dir, "missing.pem"), filepath.Join(dir, "garbage.pem")
	writeTestFile(t, garbage, []byte("-----BEGIN NOTHING-----\n"))
	brokers := []string{freeAddr(t)}
	for _, tt := range []struct {
		tls  KafkaTLSConfig
		want []string
	}{
		{KafkaTLSConfig{Enabled: true, CAFile: missing}, []string{"kafka.tls.ca_file: open " + missing + ": no such file or directory"}},
		{KafkaTLSConfig{Enabled: true, CAFile: garbage}, []string{"kafka.tls.ca_file: " + garbage + " holds no PEM certificate"}},
		{KafkaTLSConfig{Enabled: true, CertFile: cert, KeyFile: missing}, []string{"kafka.tls.cert_file, key_file: " + cert + ", " + missing + ": open " + missing}},
	} {
		err := connect(t, KafkaConfig{Brokers: brokers, TLS: tt.tls})
		if err == nil || !strings.HasPrefix(err.Error(), tt.want[0]) || !permanent(err) {
			t.Errorf("connect = %v (permanent %v), want prefix %q", err, err != nil && permanent(err), tt.want[0])
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// firstMessage is the first message mech sends to authenticate.
func firstMessage(t *testing.T, mech sasl.Mechanism) string {
	t.Helper()
	_, msg, err := mech.Authenticate(t.Context(), "127.0.0.1:9092")
	if err != nil {
		t.Fatal(err)
	}
	return string(msg)
}

// oauthbearer reads its token at every authentication, again when the file
// changed: a token rotated in place is what the next connection sends. A
// file gone is an error naming the key and the file.
func TestOAuthBearerTokenFileReadAgainWhenChanged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	writeTestFile(t, path, []byte("first-token\n"))
	mech := KafkaSASLConfig{Mechanism: SASLOAuthBearer, TokenFile: path}.mechanism(time.Second, nil)
	first := func() string { return firstMessage(t, mech) }
	if got := first(); !strings.Contains(got, "auth=Bearer first-token\x01") {
		t.Fatalf("first message %q lacks the token", got)
	}
	writeTestFile(t, path, []byte("second-token-longer"))
	if got := first(); !strings.Contains(got, "auth=Bearer second-token-longer\x01") {
		t.Fatalf("after the rotation, first message %q lacks the new token", got)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, _, err := mech.Authenticate(t.Context(), "127.0.0.1:9092")
	var setup *kafkaSetupError
	if !errors.As(err, &setup) || !strings.HasPrefix(err.Error(), "kafka.sasl.token_file: stat "+path) {
		t.Errorf("without the file: %v", err)
	}
}

// With kafka.sasl.password_file, every authentication asks the file for the
// password: rewritten, it is what the next one sends. Gone or emptied
// later, the last password read is still sent, with a warning naming the
// key and the file, never the password. A file missing or empty at the
// start fails New, naming the key and the file.
func TestPasswordFileReadAtEveryAuthentication(t *testing.T) {
	path := filepath.Join(t.TempDir(), "password")
	writeTestFile(t, path, []byte("password-1\n"))
	core, logs := observer.New(zap.InfoLevel)
	sasl := KafkaSASLConfig{Mechanism: SASLPlain, Username: "bqsink", PasswordFile: path}
	pass, err := sasl.passwordFile(zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	mech := sasl.mechanism(time.Second, pass)
	sent := func() string { return firstMessage(t, mech) }
	if got := sent(); got != "\x00bqsink\x00password-1" {
		t.Fatalf("PLAIN message %q, want the file's password without its newline", got)
	}
	writeTestFile(t, path, []byte("password-2-longer\n"))
	if got := sent(); got != "\x00bqsink\x00password-2-longer" {
		t.Fatalf("after the rotation, PLAIN message %q", got)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if got := sent(); got != "\x00bqsink\x00password-2-longer" {
		t.Fatalf("without the file, PLAIN message %q: want the last password read", got)
	}
	warned := logs.FilterLevelExact(zap.WarnLevel).All()
	if len(warned) != 1 || warned[0].ContextMap()["key"] != "kafka.sasl.password_file" || warned[0].ContextMap()["file"] != path {
		t.Errorf("warnings %v: want one naming the key and the file", warned)
	}
	for _, e := range logs.All() {
		if line := fmt.Sprint(e.Message, e.ContextMap()); strings.Contains(line, "password-") {
			t.Errorf("a log line holds the password: %s", line)
		}
	}

	// At the start, a file missing or empty fails New.
	empty := filepath.Join(t.TempDir(), "empty")
	writeTestFile(t, empty, []byte("\n"))
	for file, want := range map[string]string{
		path:  "kafka.sasl.password_file: stat " + path + ": no such file or directory",
		empty: "kafka.sasl.password_file: " + empty + " is empty: it holds no password",
	} {
		c := validConfig()
		c.Kafka.SASL = KafkaSASLConfig{Mechanism: SASLScramSHA256, Username: "bqsink", PasswordFile: file}
		if _, err := New(c); err == nil || err.Error() != want {
			t.Errorf("New with %s: %v, want %q", file, err, want)
		}
	}
}

// The password rotated on the brokers and in kafka.sasl.password_file:
// SCRAM's next authentication, a re-authentication of the connection
// (KIP-368: the broker's sessions last 2s here, and franz-go
// re-authenticates a second before they end) or a new connection, uses the
// new one. In between, when only the brokers have it, the
// re-authentication with the old one is refused: the authentications the
// test relies on do happen.
func TestSCRAMPasswordFileRotated(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(),
		kfake.Superuser("SCRAM-SHA-512", "admin", "admin-secret"),
		kfake.User("SCRAM-SHA-256", "bqsink", "password-1"),
		kfake.BrokerConfigs(map[string]string{"connections.max.reauth.ms": "2000"}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	var auths atomic.Int32
	c.ControlKey(int16(kmsg.SASLAuthenticate), func(kmsg.Request) (kmsg.Response, error, bool) {
		auths.Add(1)
		return nil, nil, false
	})
	admin, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.SASL(scram.Auth{User: "admin", Pass: "admin-secret"}.AsSha512Mechanism()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)

	path := filepath.Join(t.TempDir(), "password")
	writeTestFile(t, path, []byte("password-1\n"))
	k := KafkaConfig{Brokers: c.ListenAddrs(), RequestTimeout: 5 * time.Second,
		SASL: KafkaSASLConfig{Mechanism: SASLScramSHA256, Username: "bqsink", PasswordFile: path}}
	pass, err := k.SASL.passwordFile(zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	newClient := func() *kadm.Client {
		cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(k.Brokers...)}, k.securityOpts(pass)...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return kadm.NewClient(cl)
	}
	// A request the client sends to the broker each time (it may answer
	// a metadata request from its cache).
	list := func(cl *kadm.Client, wait time.Duration) error {
		ctx, cancel := context.WithTimeout(t.Context(), wait)
		defer cancel()
		_, err := cl.ListGroups(ctx)
		return err
	}
	authenticated := func(what string, cl *kadm.Client) {
		t.Helper()
		before := auths.Load()
		if err := list(cl, 10*time.Second); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if auths.Load() == before {
			t.Fatalf("%s: no SASL authentication", what)
		}
	}
	cl := newClient()
	if err := list(cl, 10*time.Second); err != nil {
		t.Fatalf("with the first password: %v", err)
	}

	// Rotated on the brokers only.
	altered, err := kadm.NewClient(admin).AlterUserSCRAMs(t.Context(), nil, []kadm.UpsertSCRAM{
		{User: "bqsink", Mechanism: kadm.ScramSha256, Iterations: 4096, Password: "password-2"},
	})
	if err == nil {
		err = altered.Error()
	}
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the session must be re-authenticated
	if err := list(cl, 2*time.Second); err == nil {
		t.Fatal("the expired session re-authenticated with the old password")
	}

	// Rotated in the file too: the next authentications use it.
	writeTestFile(t, path, []byte("password-2\n"))
	authenticated("after the rotation", cl)
	time.Sleep(1100 * time.Millisecond)
	authenticated("re-authenticating after the rotation", cl)
	authenticated("a new client", newClient())
}

// aws-msk-iam takes static credentials from the environment through the
// default AWS chain and signs MSK's request with them. (kfake does not
// speak AWS_MSK_IAM; the integration tests verify the signature end to
// end behind a broker that checks it.)
func TestAWSMSKIAMUsesTheDefaultChain(t *testing.T) {
	isolateAWS(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
	t.Setenv("AWS_SESSION_TOKEN", "session-token")
	mech := KafkaSASLConfig{Mechanism: SASLAWSMSKIAM}.mechanism(5*time.Second, nil)
	if mech.Name() != "AWS_MSK_IAM" {
		t.Fatalf("mechanism %s", mech.Name())
	}
	_, msg, err := mech.Authenticate(t.Context(), "b-1.orders.abc123.c2.kafka.eu-west-1.amazonaws.com:9098")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal(msg, &got); err != nil {
		t.Fatalf("%v: %s", err, msg)
	}
	if c := got["x-amz-credential"]; !strings.HasPrefix(c, "AKIDEXAMPLE/") || !strings.Contains(c, "/eu-west-1/kafka-cluster/aws4_request") {
		t.Errorf("x-amz-credential %q: want the environment's key and the host's region", c)
	}
	if got["x-amz-security-token"] != "session-token" || got["action"] != "kafka-cluster:Connect" || len(got["x-amz-signature"]) != 64 {
		t.Errorf("signed request %v", got)
	}
}

// Without credentials anywhere in the chain, authenticating fails naming
// the key and the chain, as a problem only an operator can fix.
func TestAWSMSKIAMWithoutCredentials(t *testing.T) {
	isolateAWS(t)
	mech := KafkaSASLConfig{Mechanism: SASLAWSMSKIAM}.mechanism(5*time.Second, nil)
	_, _, err := mech.Authenticate(t.Context(), "b-1.orders.abc123.c2.kafka.eu-west-1.amazonaws.com:9098")
	if err == nil || !strings.HasPrefix(err.Error(), "kafka.sasl.mechanism: aws-msk-iam: no credentials from the default AWS credential chain") || !permanent(err) {
		t.Errorf("Authenticate = %v", err)
	}
}

// isolateAWS keeps the default chain away from the machine's own AWS
// configuration and from the network (the instance metadata service).
func isolateAWS(t *testing.T) {
	t.Helper()
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
		"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_REGION", "AWS_DEFAULT_REGION"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	missing := filepath.Join(t.TempDir(), "none")
	t.Setenv("AWS_CONFIG_FILE", missing)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}
