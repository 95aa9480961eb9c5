package sink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"
	kaws "github.com/twmb/franz-go/pkg/sasl/aws"
	"github.com/twmb/franz-go/pkg/sasl/oauth"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"go.uber.org/zap"

	"github.com/bqsink/bqsink/internal/tlsfiles"
	"github.com/bqsink/bqsink/internal/tokenfile"
)

// dialTimeout bounds a connection to a broker, TLS handshake included, as
// franz-go's default dialer does.
const dialTimeout = 10 * time.Second

// securityOpts are the franz-go options that secure a client's connections
// as kafka.tls and kafka.sasl say: a dialer (for TLS, and to tell a broker
// refusing SASL authentication from one that went away) and the SASL
// mechanism. Each client gets its own; nothing is read before the first
// connection but the password file, which the clients share: pass is the
// reader of kafka.sasl.password_file (nil when it is not set).
func (k KafkaConfig) securityOpts(pass *tokenfile.Password) []kgo.Opt {
	mech := k.SASL.mechanism(k.RequestTimeout, pass)
	if !k.TLS.Enabled && mech == nil {
		return nil
	}
	d := &kafkaDialer{tls: k.TLS, sasl: mech != nil, net: net.Dialer{Timeout: dialTimeout}}
	opts := []kgo.Opt{kgo.Dialer(d.dial)}
	if mech != nil {
		opts = append(opts, kgo.SASL(mech))
	}
	return opts
}

// kafkaSetupError is a failure to connect to Kafka that only an operator
// can fix: credentials refused, a certificate not trusted or refused, a
// file that cannot be read. Its message starts with the key to fix.
type kafkaSetupError struct {
	key     string // "kafka.sasl.password"
	problem string // what is wrong, in the operator's terms; may be empty
	err     error
}

func (e *kafkaSetupError) Error() string {
	if e.problem == "" {
		return e.key + ": " + e.err.Error()
	}
	return e.key + ": " + e.problem + ": " + e.err.Error()
}

func (e *kafkaSetupError) Unwrap() error { return e.err }

// kafkaDialer dials brokers, with TLS when kafka.tls.enabled. It is safe
// for concurrent use.
type kafkaDialer struct {
	tls  KafkaTLSConfig
	sasl bool // wrap connections in saslConn
	net  net.Dialer

	once   sync.Once
	tlsCfg *tls.Config
	tlsErr error
}

func (d *kafkaDialer) dial(ctx context.Context, network, host string) (net.Conn, error) {
	var conn net.Conn
	var err error
	if d.tls.Enabled {
		d.once.Do(func() { d.tlsCfg, d.tlsErr = d.tls.load() })
		if d.tlsErr != nil {
			return nil, d.tlsErr
		}
		cfg := d.tlsCfg
		if cfg.ServerName == "" {
			name, _, err := net.SplitHostPort(host)
			if err != nil {
				return nil, fmt.Errorf("broker address %q: %w", host, err)
			}
			cfg = cfg.Clone()
			cfg.ServerName = name
		}
		conn, err = (&tls.Dialer{NetDialer: &d.net, Config: cfg}).DialContext(ctx, network, host)
	} else {
		conn, err = d.net.DialContext(ctx, network, host)
	}
	if err != nil {
		return nil, err
	}
	if d.sasl {
		conn = &saslConn{Conn: conn}
	}
	return conn, nil
}

// load reads the files of kafka.tls into a client config; errors name the
// key and the file.
func (t KafkaTLSConfig) load() (*tls.Config, error) {
	cfg, err := t.Files().Config("kafka.tls.")
	if ke, ok := errors.AsType[*tlsfiles.KeyError](err); ok {
		return nil, &kafkaSetupError{key: ke.Key, problem: ke.Problem, err: ke.Err}
	}
	return cfg, err
}

// Files are the keys of kafka.tls that name files and what to verify:
// the same as the registry's, checked and built by the same code.
func (t KafkaTLSConfig) Files() tlsfiles.Files {
	return tlsfiles.Files{CAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
}

// saslConn remembers the API key of the last request written on the
// connection, so that a broker closing it during SASL authentication, as
// brokers refusing the credentials may (Kafka before 1.0, kfake), reads as
// that rather than as an EOF that could mean anything. The error it then
// returns still unwraps to the EOF, so franz-go retries as it would.
type saslConn struct {
	net.Conn
	lastKey atomic.Int32
}

func (c *saslConn) Write(p []byte) (int, error) {
	// franz-go writes each request whole: its 4-byte size, then its key.
	if len(p) >= 6 {
		c.lastKey.Store(int32(binary.BigEndian.Uint16(p[4:6])))
	}
	return c.Conn.Write(p)
}

func (c *saslConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)) {
		if k := c.lastKey.Load(); k == int32(kmsg.SASLHandshake) || k == int32(kmsg.SASLAuthenticate) {
			err = &saslClosedError{err: err}
		}
	}
	return n, err
}

// saslClosedError is a connection the broker closed while authenticating.
type saslClosedError struct{ err error }

func (e *saslClosedError) Error() string {
	return "the broker closed the connection during SASL authentication: " + e.err.Error()
}

func (e *saslClosedError) Unwrap() error { return e.err }

// mechanism is the SASL mechanism of kafka.sasl, or nil for none. timeout
// bounds fetching AWS credentials. With kafka.sasl.password_file, pass
// reads it: each authentication (a new connection, or re-authentication
// on one) asks it for the password, so a password rotated in the file is
// used from the next one on.
func (s KafkaSASLConfig) mechanism(timeout time.Duration, pass *tokenfile.Password) sasl.Mechanism {
	password := func() (string, error) { return s.Password, nil }
	if pass != nil {
		password = func() (string, error) {
			p, err := pass.Value()
			if err != nil {
				return "", &kafkaSetupError{key: "kafka.sasl.password_file", err: err}
			}
			return p, nil
		}
	}
	switch s.Mechanism {
	case SASLPlain:
		return plain.Plain(func(context.Context) (plain.Auth, error) {
			p, err := password()
			return plain.Auth{User: s.Username, Pass: p}, err
		})
	case SASLScramSHA256, SASLScramSHA512:
		auth := func(context.Context) (scram.Auth, error) {
			p, err := password()
			return scram.Auth{User: s.Username, Pass: p}, err
		}
		if s.Mechanism == SASLScramSHA256 {
			return scram.Sha256(auth)
		}
		return scram.Sha512(auth)
	case SASLOAuthBearer:
		f := &tokenfile.File{Path: s.TokenFile}
		return oauth.Oauth(func(context.Context) (oauth.Auth, error) {
			token, err := f.Token()
			if err != nil {
				return oauth.Auth{}, &kafkaSetupError{key: "kafka.sasl.token_file", err: err}
			}
			return oauth.Auth{Token: token}, nil
		})
	case SASLAWSMSKIAM:
		c := &awsCredentials{timeout: timeout}
		return kaws.ManagedStreamingIAM(c.auth)
	}
	return nil
}

// passwordFile returns the reader of kafka.sasl.password_file, having read
// it once: a file missing or empty is an error naming the key and the
// file. Nil when the key is not set. Its warnings go to log.
func (s KafkaSASLConfig) passwordFile(log *zap.Logger) (*tokenfile.Password, error) {
	if s.PasswordFile == "" {
		return nil, nil
	}
	p := &tokenfile.Password{Path: s.PasswordFile, Key: "kafka.sasl.password_file", Log: log}
	if _, err := p.Value(); err != nil {
		return nil, &kafkaSetupError{key: "kafka.sasl.password_file", err: err}
	}
	return p, nil
}

// awsCredentials takes aws-msk-iam's credentials from the default AWS
// chain, loaded at the first authentication; the SDK caches them and
// refreshes them before they expire. Safe for concurrent use.
type awsCredentials struct {
	timeout time.Duration

	mu       sync.Mutex
	provider aws.CredentialsProvider
}

const awsChain = "the default AWS credential chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the shared files, web identity, the container or instance role)"

func (c *awsCredentials) auth(ctx context.Context) (kaws.Auth, error) {
	timeout := c.timeout
	if timeout <= 0 {
		timeout = dialTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c.mu.Lock()
	if c.provider == nil {
		cfg, err := awsconfig.LoadDefaultConfig(ctx)
		if err != nil {
			c.mu.Unlock()
			return kaws.Auth{}, &kafkaSetupError{key: "kafka.sasl.mechanism", problem: "aws-msk-iam: cannot load the AWS configuration", err: err}
		}
		c.provider = cfg.Credentials
	}
	p := c.provider
	c.mu.Unlock()
	if p == nil {
		return kaws.Auth{}, &kafkaSetupError{key: "kafka.sasl.mechanism", problem: "aws-msk-iam", err: errors.New("no credentials from " + awsChain)}
	}
	creds, err := p.Retrieve(ctx)
	if err != nil {
		return kaws.Auth{}, &kafkaSetupError{key: "kafka.sasl.mechanism", problem: "aws-msk-iam: no credentials from " + awsChain, err: err}
	}
	return kaws.Auth{AccessKey: creds.AccessKeyID, SecretKey: creds.SecretAccessKey, SessionToken: creds.SessionToken}, nil
}

// setupProblem returns, for an error connecting to Kafka that only an
// operator can fix, the error naming the key to fix; otherwise nil.
func (k KafkaConfig) setupProblem(err error) *kafkaSetupError {
	var (
		setup  *kafkaSetupError
		host   x509.HostnameError
		auth   x509.UnknownAuthorityError
		cert   *tls.CertificateVerificationError
		alert  *net.OpError
		record tls.RecordHeaderError
		first  *kgo.ErrFirstReadEOF
	)
	switch {
	case errors.As(err, &setup):
		return setup
	case errors.Is(err, kerr.SaslAuthenticationFailed) || errors.As(err, new(*saslClosedError)):
		return k.SASL.refused(err)
	case errors.Is(err, kerr.UnsupportedSaslMechanism):
		return &kafkaSetupError{key: "kafka.sasl.mechanism", problem: fmt.Sprintf("the brokers do not enable %s", k.SASL.Mechanism), err: err}
	case errors.As(err, &host):
		return &kafkaSetupError{key: "kafka.tls.server_name", problem: "a broker's certificate is not for the name checked", err: host}
	case errors.As(err, &auth):
		roots := "the system's root CAs"
		if k.TLS.CAFile != "" {
			roots = "a CA of " + k.TLS.CAFile
		}
		return &kafkaSetupError{key: "kafka.tls.ca_file", problem: "a broker's certificate is not signed by " + roots, err: auth}
	case errors.As(err, &cert):
		return &kafkaSetupError{key: "kafka.tls.ca_file", problem: "a broker's certificate does not verify", err: cert.Err}
	case errors.As(err, &alert) && isTLSAlert(alert):
		ours := "the connection without a client certificate (none is set)"
		if k.TLS.CertFile != "" {
			ours = "the client certificate of " + k.TLS.CertFile
		}
		return &kafkaSetupError{key: "kafka.tls.cert_file", problem: "a broker ended the TLS handshake, refusing " + ours, err: alert}
	case errors.As(err, &record):
		return &kafkaSetupError{key: "kafka.tls.enabled", problem: "a broker does not answer in TLS", err: err}
	case errors.As(err, &first) && !kgo.IsRetryableBrokerErr(err):
		tls, mech := "off", k.SASL.Mechanism
		if k.TLS.Enabled {
			tls = "on"
		}
		if mech == "" {
			mech = "none"
		}
		return &kafkaSetupError{key: "kafka.tls.enabled, kafka.sasl.mechanism", problem: fmt.Sprintf("a broker closed the connection at once, as brokers do to clients without the TLS or SASL their listener wants (here TLS is %s, SASL %s)", tls, mech), err: err}
	}
	return nil
}

// refused is the error for brokers refusing to authenticate the client,
// naming the key holding what they refused.
func (s KafkaSASLConfig) refused(err error) *kafkaSetupError {
	switch s.Mechanism {
	case SASLPlain, SASLScramSHA256, SASLScramSHA512:
		if s.PasswordFile != "" {
			return &kafkaSetupError{key: "kafka.sasl.password_file", problem: fmt.Sprintf("the brokers refused %s authentication of kafka.sasl.username %q with the password in %s", s.Mechanism, s.Username, s.PasswordFile), err: err}
		}
		return &kafkaSetupError{key: "kafka.sasl.password", problem: fmt.Sprintf("the brokers refused %s authentication of kafka.sasl.username %q", s.Mechanism, s.Username), err: err}
	case SASLOAuthBearer:
		return &kafkaSetupError{key: "kafka.sasl.token_file", problem: fmt.Sprintf("the brokers refused the token in %s (expired, or not for them?)", s.TokenFile), err: err}
	case SASLAWSMSKIAM:
		return &kafkaSetupError{key: "kafka.sasl.mechanism", problem: "the brokers refused aws-msk-iam authentication with the credentials of " + awsChain, err: err}
	}
	return &kafkaSetupError{key: "kafka.sasl.mechanism", problem: "the brokers refused authentication", err: err}
}

// isTLSAlert reports whether e is an alert the peer sent during a TLS
// handshake (crypto/tls reports it as a "remote error" whose Err is its
// unexported alert type).
func isTLSAlert(e *net.OpError) bool {
	return e.Op == "remote error" && e.Err != nil && reflect.TypeOf(e.Err).PkgPath() == "crypto/tls"
}

// warnCap writes franz-go's error lines at warn, for a client every
// failure of which the sink gets back and reports itself (the admin
// client: a refused handshake at startup is the startup check's one error
// line, not also franz-go's "unable to initialize sasl").
type warnCap struct{ kgo.Logger }

func (l warnCap) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	l.Logger.Log(max(level, kgo.LogLevelWarn), msg, keyvals...)
}
