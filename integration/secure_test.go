package integration

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	kaws "github.com/twmb/franz-go/pkg/sasl/aws"
	"github.com/twmb/franz-go/pkg/sasl/oauth"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/internal/testcert"
)

// This file tests the daemon against secured endpoints: Kafka (kfake) with
// TLS, mutual TLS and each SASL mechanism, and the Schema Registry (srfake)
// behind TLS wanting a client certificate, basic auth or a bearer token.
// The right credentials move records end to end; wrong ones end the start
// within 10s, exit 1, with one line naming the key to fix. The stack of
// itest.NewEnv provides the registry's content and BigQuery; the secured Kafka
// clusters and registry servers are made here.

// Records per case: enough for several batches, few enough to take a
// second.
const secureRecords = 300

func writeSecret(t *testing.T, path string, b []byte) {
	t.Helper()
	// Written aside and renamed, as a Kubernetes volume or a rotating
	// sidecar does: a reader never sees a half-written file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// testKafka is a Kafka cluster as the test reaches it, with its own
// (authorized) client: to create topics, produce and read committed
// offsets.
type testKafka struct {
	brokers []string
	cl      *kgo.Client
}

func newTestKafka(t *testing.T, brokers []string, opts ...kgo.Opt) *testKafka {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.ProducerLinger(5 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &testKafka{brokers: brokers, cl: cl}
}

// startKfake starts a one-broker kfake cluster with opts and returns it
// with a client built from clientOpts.
func startKfake(t *testing.T, kopts []kfake.Opt, clientOpts ...kgo.Opt) *testKafka {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, kopts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return newTestKafka(t, c.ListenAddrs(), clientOpts...)
}

func (k *testKafka) createTopic(t *testing.T, topic string, partitions int32) {
	t.Helper()
	resp, err := kadm.NewClient(k.cl).CreateTopic(t.Context(), partitions, 1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		t.Fatalf("create topic %s: %v", topic, err)
	}
}

// lag is what group has not committed of topic.
func (k *testKafka) lag(ctx context.Context, group, topic string) (int64, error) {
	adm := kadm.NewClient(k.cl)
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return 0, err
	}
	committed, err := adm.FetchOffsetsForTopics(ctx, group, topic)
	if err != nil {
		return 0, err
	}
	var lag int64
	ends.Each(func(l kadm.ListedOffset) {
		c, ok := committed.Lookup(topic, l.Partition)
		at := int64(0)
		if ok && c.At > 0 {
			at = c.At
		}
		lag += l.Offset - at
	})
	return lag, nil
}

// secureCase is one daemon consuming a topic of its own into a table of
// its own, so that cases run side by side.
type secureCase struct {
	e                   *itest.Env
	k                   *testKafka
	group, topic, table string
	produced            []stack.StockUpdate
}

// newSecureCase makes the case's topic (and its group's dead-letter topic)
// on k and returns it with the daemon's config for it.
func newSecureCase(t *testing.T, e *itest.Env, k *testKafka, name string) (*secureCase, *itest.DaemonConfig) {
	t.Helper()
	c := &secureCase{e: e, k: k, group: "g-secure-" + name, topic: "secure." + name, table: "secure_" + strings.ReplaceAll(name, "-", "_")}
	k.createTopic(t, c.topic, 2)
	k.createTopic(t, c.group+".dlq", 1)
	cfg := itest.NewDaemonConfig(e, c.group)
	cfg.T = t
	cfg.Set("kafka.brokers", k.brokers).Set("kafka.topics", []string{c.topic}).Set("tables", map[string]any{c.topic: c.table})
	return c, cfg
}

// produce writes updates to the case's topic.
func (c *secureCase) produce(t *testing.T, updates []stack.StockUpdate) {
	t.Helper()
	recs := make([]*kgo.Record, len(updates))
	for i, u := range updates {
		r, err := c.e.Schemas.Record(u)
		if err != nil {
			t.Fatal(err)
		}
		r.Topic = c.topic
		recs[i] = r
	}
	if err := c.k.cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatalf("produce to %s: %v", c.topic, err)
	}
	c.produced = append(c.produced, updates...)
}

// waitDelivered waits until the group committed every record of the topic
// and every record produced is a row of the table.
func (c *secureCase) waitDelivered(t *testing.T, d *itest.Daemon) {
	t.Helper()
	var lag int64 = -1
	var lagErr error
	itest.WaitUntil(t, 30*time.Second, func() string {
		return fmt.Sprintf("%s to commit %s (lag %d, %v)", d.Name, c.topic, lag, lagErr)
	}, func() bool {
		if d.Done() {
			t.Fatalf("%s exited (%v) before delivering", d.Name, d.Status())
		}
		lag, lagErr = c.k.lag(t.Context(), c.group, c.topic)
		return lagErr == nil && lag == 0
	})
	tbl, err := c.e.St.ReadTable(t.Context(), c.table)
	if err != nil {
		t.Fatal(err)
	}
	rows := byKey(t, tbl)
	missing := 0
	for _, u := range c.produced {
		if len(rows[itest.Key(u.EAN, u.Timestamp)]) == 0 {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d records produced are not rows of %s (%d rows)", missing, len(c.produced), c.table, len(tbl.Rows))
	}
	if len(tbl.Rows) != len(c.produced) {
		t.Logf("%d rows for %d records (at-least-once)", len(tbl.Rows), len(c.produced))
	}
}

// deliver runs the daemon with cfg, produces records and requires them
// delivered, then a clean stop.
func (c *secureCase) deliver(t *testing.T, cfg *itest.DaemonConfig) {
	t.Helper()
	c.produce(t, stack.StockUpdates(secureRecords, uint64(len(c.topic))))
	d := itest.StartDaemon(t, cfg)
	c.waitDelivered(t, d)
	d.Shutdown(15 * time.Second)
	itest.LogProblems(t, d)
}

// v1Only are updates all written with the stock schema's first version.
func v1Only(us []stack.StockUpdate) []stack.StockUpdate {
	for i := range us {
		us[i].V2, us[i].AdjustedAt, us[i].UnitCost, us[i].Reason = false, nil, nil, ""
	}
	return us
}

// v2Only are the updates of us written with the second version.
func v2Only(us []stack.StockUpdate) []stack.StockUpdate {
	var out []stack.StockUpdate
	for _, u := range us {
		if u.V2 {
			out = append(out, u)
		}
	}
	return out
}

// requireStartupRefused runs the daemon with cfg and requires what the
// README promises for a start that cannot succeed: exit 1 within 10s of
// the start, with exactly one error line, naming every key in keys.
func requireStartupRefused(t *testing.T, cfg *itest.DaemonConfig, keys ...string) {
	t.Helper()
	d := itest.StartDaemon(t, cfg)
	st := d.Wait(itest.StartupBound + 10*time.Second)
	var lines []itest.LogLine
	for _, l := range d.Logs() {
		if !l.JSON || l.Level == "error" || l.Level == "fatal" || l.Level == "panic" {
			lines = append(lines, l)
		}
	}
	t.Logf("%v; %s", st, itest.RawLines(lines))
	if st.Signal != 0 || st.Code != 1 {
		t.Errorf("%v, want exit 1", st)
	}
	if st.Took > itest.StartupBound {
		t.Errorf("exit %v after the start, promised within %v", st.Took.Round(time.Millisecond), itest.StartupBound)
	}
	switch {
	case len(lines) != 1:
		t.Errorf("%d error lines, want one naming %q", len(lines), keys)
	case !itest.ContainsEvery(lines[0].Raw, keys...):
		t.Errorf("the error line does not name %q", keys)
	}
	if len(d.LogsMatching(itest.MsgIs("consuming"))) > 0 {
		t.Errorf("consumed with credentials that were refused")
	}
}

// Over TLS (a CA of the test's own, a certificate for 127.0.0.1), PLAIN,
// SCRAM-SHA-256 and SCRAM-SHA-512 users move records end to end. A wrong
// password, an unknown user, a CA that did not sign the broker's
// certificate, a server name it does not hold, and no SASL at all each end
// the start naming the key to fix. (kfake closes the connection on refused
// credentials where Kafka answers SASL_AUTHENTICATION_FAILED; the
// oauthbearer and aws-msk-iam tests below see the latter.)
func TestSecureKafkaSASLOverTLS(t *testing.T) {
	e := itest.NewEnv(t)
	ca, other := testcert.NewCA(t, "kafka CA"), testcert.NewCA(t, "other CA")
	k := startKfake(t, []kfake.Opt{
		kfake.TLS(ca.ServerTLS(t, nil)), kfake.EnableSASL(),
		kfake.Superuser("SCRAM-SHA-256", "admin", "admin-secret"),
		kfake.User("PLAIN", "bqsink", "bqsink-secret"),
		kfake.User("SCRAM-SHA-256", "bqsink", "bqsink-secret"),
		kfake.User("SCRAM-SHA-512", "bqsink", "bqsink-secret"),
	}, kgo.DialTLSConfig(&tls.Config{RootCAs: ca.Pool}), kgo.SASL(scram.Auth{User: "admin", Pass: "admin-secret"}.AsSha256Mechanism()))
	secure := func(mech, user string) string {
		return fmt.Sprintf("kafka: {tls: {enabled: true, ca_file: %q}, sasl: {mechanism: %s, username: %s, password: '${KAFKA_PASSWORD}'}}", ca.File, mech, user)
	}
	for _, c := range []struct {
		name string
		yaml string
		pass string
		keys []string // none: records must flow
	}{
		{name: "plain", yaml: secure("plain", "bqsink")},
		{name: "scram-sha-256", yaml: secure("scram-sha-256", "bqsink")},
		{name: "scram-sha-512", yaml: secure("scram-sha-512", "bqsink")},
		{name: "plain-wrong-password", yaml: secure("plain", "bqsink"), pass: "wrong", keys: []string{"kafka.sasl.password", `kafka.sasl.username \"bqsink\"`, "plain"}},
		{name: "scram-256-wrong-password", yaml: secure("scram-sha-256", "bqsink"), pass: "wrong", keys: []string{"kafka.sasl.password", "scram-sha-256"}},
		{name: "scram-512-unknown-user", yaml: secure("scram-sha-512", "nobody"), keys: []string{"kafka.sasl.password", `kafka.sasl.username \"nobody\"`}},
		{
			name: "unknown-ca", keys: []string{"kafka.tls.ca_file", other.File, "certificate signed by unknown authority"},
			yaml: fmt.Sprintf("kafka: {tls: {enabled: true, ca_file: %q}, sasl: {mechanism: plain, username: bqsink, password: bqsink-secret}}", other.File),
		},
		{
			name: "system-roots", keys: []string{"kafka.tls.ca_file", "the system's root CAs"},
			yaml: "kafka: {tls: {enabled: true}, sasl: {mechanism: plain, username: bqsink, password: bqsink-secret}}",
		},
		{
			name: "wrong-server-name", keys: []string{"kafka.tls.server_name", "kafka.example.com"},
			yaml: fmt.Sprintf("kafka: {tls: {enabled: true, ca_file: %q, server_name: kafka.example.com}, sasl: {mechanism: plain, username: bqsink, password: bqsink-secret}}", ca.File),
		},
		{
			name: "no-sasl", keys: []string{"kafka.tls.enabled, kafka.sasl.mechanism", "TLS is on, SASL none", "is SASL missing?"},
			yaml: fmt.Sprintf("kafka: {tls: {enabled: true, ca_file: %q}}", ca.File),
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			sc, cfg := newSecureCase(t, e, k, c.name)
			pass := c.pass
			if pass == "" {
				pass = "bqsink-secret"
			}
			cfg.MergeYAML(c.yaml).SetEnv("KAFKA_PASSWORD", pass)
			if len(c.keys) > 0 {
				requireStartupRefused(t, cfg, c.keys...)
				return
			}
			sc.deliver(t, cfg)
		})
	}
}

// With mutual TLS the broker authenticates bqsink by its client
// certificate: the right one moves records; none, or one of another CA,
// ends the start naming kafka.tls.cert_file.
func TestSecureKafkaMutualTLS(t *testing.T) {
	e := itest.NewEnv(t)
	ca, other := testcert.NewCA(t, "kafka CA"), testcert.NewCA(t, "other CA")
	admin, _, _ := ca.ClientFiles(t)
	k := startKfake(t, []kfake.Opt{kfake.TLS(ca.ServerTLS(t, ca))},
		kgo.DialTLSConfig(&tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{admin}}))
	_, certFile, keyFile := ca.ClientFiles(t)
	_, strangerCert, strangerKey := other.ClientFiles(t)
	for _, c := range []struct {
		name string
		tls  map[string]any
		keys []string
	}{
		{name: "client-certificate", tls: map[string]any{"cert_file": certFile, "key_file": keyFile}},
		{name: "no-client-certificate", tls: map[string]any{}, keys: []string{"kafka.tls.cert_file", "none is set", "certificate required"}},
		{name: "certificate-of-another-ca", tls: map[string]any{"cert_file": strangerCert, "key_file": strangerKey}, keys: []string{"kafka.tls.cert_file", strangerCert}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			sc, cfg := newSecureCase(t, e, k, c.name)
			c.tls["enabled"], c.tls["ca_file"] = true, ca.File
			cfg.Set("kafka.tls", c.tls)
			if len(c.keys) > 0 {
				requireStartupRefused(t, cfg, c.keys...)
				return
			}
			sc.deliver(t, cfg)
		})
	}
}

// saslGate does, in front of a kfake broker, the SASL exchange of a
// mechanism kfake does not speak (OAUTHBEARER, AWS_MSK_IAM), answering as
// Kafka does: an unsupported mechanism is UNSUPPORTED_SASL_MECHANISM,
// refused credentials are SASL_AUTHENTICATION_FAILED with a message, then
// the connection is closed. Before authentication only ApiVersions reaches
// the broker; after it, the connection's bytes pass through. With tls set,
// it also terminates TLS.
type saslGate struct {
	mechanism string
	verify    func(auth []byte) (who string, err error)
	tls       *tls.Config

	mu    sync.Mutex
	conns map[*gateConn]struct{}
	auths map[string]int // successful authentications by who
}

func newSASLGate(mechanism string, tlsCfg *tls.Config, verify func([]byte) (string, error)) *saslGate {
	return &saslGate{mechanism: mechanism, verify: verify, tls: tlsCfg, conns: map[*gateConn]struct{}{}, auths: map[string]int{}}
}

// listen is the gate's kfake.ListenFn.
func (g *saslGate) listen(network, address string) (net.Listener, error) {
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, err
	}
	return gateListener{Listener: ln, g: g}, nil
}

// authenticated is how often who authenticated.
func (g *saslGate) authenticated(who string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.auths[who]
}

// dropAll closes every connection, as a broker does when a session's
// credentials expire: clients reconnect and authenticate again.
func (g *saslGate) dropAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for c := range g.conns {
		_ = c.Conn.Close()
	}
}

type gateListener struct {
	net.Listener
	g *saslGate
}

func (l gateListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if l.g.tls != nil {
		c = tls.Server(c, l.g.tls)
	}
	gc := &gateConn{Conn: c, g: l.g}
	l.g.mu.Lock()
	l.g.conns[gc] = struct{}{}
	l.g.mu.Unlock()
	return gc, nil
}

// gateConn is the broker's side of one connection. The broker reads
// requests through Read, one at a time, and writes its answers through
// Write.
type gateConn struct {
	net.Conn
	g         *saslGate
	wmu       sync.Mutex
	pending   []byte // a request read and passed on, not yet all read by the broker
	handshook bool
	authed    bool
}

func (c *gateConn) Close() error {
	c.g.mu.Lock()
	delete(c.g.conns, c)
	c.g.mu.Unlock()
	return c.Conn.Close()
}

func (c *gateConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.Conn.Write(p)
}

func (c *gateConn) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		if c.authed {
			return c.Conn.Read(p)
		}
		var size [4]byte
		if _, err := io.ReadFull(c.Conn, size[:]); err != nil {
			return 0, err
		}
		frame := make([]byte, 4+binary.BigEndian.Uint32(size[:]))
		copy(frame, size[:])
		if _, err := io.ReadFull(c.Conn, frame[4:]); err != nil {
			return 0, err
		}
		switch kmsg.Key(binary.BigEndian.Uint16(frame[4:6])) {
		case kmsg.ApiVersions:
			c.pending = frame
		case kmsg.SASLHandshake, kmsg.SASLAuthenticate:
			if err := c.answer(frame[4:]); err != nil {
				_ = c.Conn.Close()
				return 0, err
			}
		default:
			// As Kafka: a request before authentication ends the connection.
			_ = c.Conn.Close()
			return 0, errors.New("request before SASL authentication")
		}
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// answer answers a SASL request itself; an error closes the connection
// (after a refusal, which is written first).
func (c *gateConn) answer(body []byte) error {
	r := kbin.Reader{Src: body}
	key, version, corr := r.Int16(), r.Int16(), r.Int32()
	r.NullableString() // client ID
	req := kmsg.RequestForKey(key)
	req.SetVersion(version)
	if req.IsFlexible() {
		kmsg.SkipTags(&r)
	}
	if err := req.ReadFrom(r.Src); err != nil {
		return err
	}
	var resp kmsg.Response
	var refused error
	switch req := req.(type) {
	case *kmsg.SASLHandshakeRequest:
		hs := req.ResponseKind().(*kmsg.SASLHandshakeResponse)
		hs.SupportedMechanisms = []string{c.g.mechanism}
		if req.Mechanism != c.g.mechanism {
			hs.ErrorCode = kerr.UnsupportedSaslMechanism.Code
		}
		c.handshook = req.Mechanism == c.g.mechanism
		resp = hs
	case *kmsg.SASLAuthenticateRequest:
		au := req.ResponseKind().(*kmsg.SASLAuthenticateResponse)
		who, err := c.g.verify(req.SASLAuthBytes)
		if err == nil && !c.handshook {
			err = errors.New("no handshake")
		}
		if err != nil {
			msg := fmt.Sprintf("Authentication failed during authentication due to invalid credentials with SASL mechanism %s: %v", c.g.mechanism, err)
			au.ErrorCode, au.ErrorMessage = kerr.SaslAuthenticationFailed.Code, &msg
			refused = err
		} else {
			c.authed = true
			if c.g.mechanism == "AWS_MSK_IAM" {
				// MSK answers with its version and a request ID.
				au.SASLAuthBytes = []byte(`{"version":"2020_10_22","request-id":"bqsink-test"}`)
			}
			c.g.mu.Lock()
			c.g.auths[who]++
			c.g.mu.Unlock()
		}
		resp = au
	}
	buf := make([]byte, 8, 64) // size, correlation ID
	if resp.IsFlexible() {
		buf = append(buf, 0) // no tagged fields in the header
	}
	buf = resp.AppendTo(buf)
	binary.BigEndian.PutUint32(buf[:4], uint32(len(buf)-4))
	binary.BigEndian.PutUint32(buf[4:8], uint32(corr))
	if _, err := c.Write(buf); err != nil {
		return err
	}
	return refused
}

// oauthToken is the token of an OAUTHBEARER initial client response
// (RFC 7628: "n,,\x01auth=Bearer <token>\x01\x01").
func oauthToken(auth []byte) (string, error) {
	for kv := range bytes.SplitSeq(auth, []byte{1}) {
		if token, ok := bytes.CutPrefix(kv, []byte("auth=Bearer ")); ok {
			return string(token), nil
		}
	}
	return "", errors.New("no bearer token")
}

// OAUTHBEARER with the token in a file: records move, then the token is
// rotated (the file rewritten, the broker taking only the new one and
// dropping every connection, as one does when a session's credentials
// expire) and the records produced after move too: the daemon read the
// new token for its new connections. A token the broker refuses ends the
// start naming kafka.sasl.token_file.
func TestSecureKafkaOAuthBearerTokenFile(t *testing.T) {
	e := itest.NewEnv(t)
	ca := testcert.NewCA(t, "kafka CA")
	var valid atomic.Value
	valid.Store("token-1")
	gate := newSASLGate("OAUTHBEARER", ca.ServerTLS(t, nil), func(auth []byte) (string, error) {
		token, err := oauthToken(auth)
		switch {
		case err != nil:
			return "", err
		case token == "admin-token" || token == valid.Load().(string):
			return token, nil
		}
		return "", errors.New("invalid token")
	})
	k := startKfake(t, []kfake.Opt{kfake.ListenFn(gate.listen)},
		kgo.DialTLSConfig(&tls.Config{RootCAs: ca.Pool}), kgo.SASL(oauth.Auth{Token: "admin-token"}.AsMechanism()))
	oauthConfig := func(cfg *itest.DaemonConfig, tokenFile string) {
		cfg.MergeYAML(fmt.Sprintf("kafka: {tls: {enabled: true, ca_file: %q}, sasl: {mechanism: oauthbearer, token_file: %q}}", ca.File, tokenFile))
	}

	t.Run("rotated", func(t *testing.T) {
		t.Parallel()
		sc, cfg := newSecureCase(t, e, k, "oauth-rotated")
		tokenFile := filepath.Join(t.TempDir(), "token")
		writeSecret(t, tokenFile, []byte("token-1\n"))
		oauthConfig(cfg, tokenFile)
		sc.produce(t, stack.StockUpdates(secureRecords, 1))
		d := itest.StartDaemon(t, cfg)
		sc.waitDelivered(t, d)
		if gate.authenticated("token-1") == 0 {
			t.Fatal("the daemon never authenticated with token-1")
		}

		writeSecret(t, tokenFile, []byte("token-2\n"))
		valid.Store("token-2")
		gate.dropAll()
		sc.produce(t, stack.StockUpdates(secureRecords, 2))
		sc.waitDelivered(t, d)
		if n := gate.authenticated("token-2"); n == 0 {
			t.Fatal("the daemon never authenticated with token-2")
		}
		d.Shutdown(15 * time.Second)
	})
	t.Run("refused", func(t *testing.T) {
		t.Parallel()
		_, cfg := newSecureCase(t, e, k, "oauth-refused")
		tokenFile := filepath.Join(t.TempDir(), "token")
		writeSecret(t, tokenFile, []byte("expired-token"))
		oauthConfig(cfg, tokenFile)
		requireStartupRefused(t, cfg, "kafka.sasl.token_file", tokenFile, "SASL_AUTHENTICATION_FAILED", "invalid token")
	})
}

// mskVerifier checks an AWS_MSK_IAM authentication request as MSK does:
// the access key is known (a key of secrets) and the SigV4 signature of the
// kafka-cluster Connect action, made with its secret, matches. Who
// authenticated is "<access key>/<region>".
func mskVerifier(secrets map[string]string) func([]byte) (string, error) {
	mac := func(key []byte, s string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(s))
		return h.Sum(nil)
	}
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	return func(auth []byte) (string, error) {
		var m map[string]string
		if err := json.Unmarshal(auth, &m); err != nil {
			return "", err
		}
		scope := strings.Split(m["x-amz-credential"], "/") // key/date/region/kafka-cluster/aws4_request
		if len(scope) != 5 || scope[3] != "kafka-cluster" || m["action"] != "kafka-cluster:Connect" || m["version"] != "2020_10_22" {
			return "", fmt.Errorf("malformed request %v", m)
		}
		accessKey := scope[0]
		secretKey, ok := secrets[accessKey]
		if !ok {
			return "", fmt.Errorf("unknown access key %s", accessKey)
		}
		q := url.Values{}
		for _, name := range []string{"Action", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-Security-Token", "X-Amz-SignedHeaders"} {
			if v, ok := m[strings.ToLower(name)]; ok {
				q.Set(name, v)
			}
		}
		canonical := "GET\n/\n" + strings.ReplaceAll(q.Encode(), "+", "%20") + "\nhost:" + m["host"] + "\n\nhost\n" + sum("")
		toSign := "AWS4-HMAC-SHA256\n" + m["x-amz-date"] + "\n" + strings.Join(scope[1:], "/") + "\n" + sum(canonical)
		key := mac([]byte("AWS4"+secretKey), scope[1])
		for _, part := range scope[2:] {
			key = mac(key, part)
		}
		if hex.EncodeToString(mac(key, toSign)) != m["x-amz-signature"] {
			return "", errors.New("the request signature we calculated does not match the signature provided")
		}
		return accessKey + "/" + scope[2], nil
	}
}

// awsEnv gives the daemon static credentials through the environment and
// keeps the rest of the default chain (files, profiles, the instance
// metadata service) out of reach.
func awsEnv(t *testing.T, cfg *itest.DaemonConfig, accessKey, secretKey string) {
	none := filepath.Join(t.TempDir(), "none")
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": accessKey, "AWS_SECRET_ACCESS_KEY": secretKey, "AWS_REGION": "eu-west-1",
		"AWS_CONFIG_FILE": none, "AWS_SHARED_CREDENTIALS_FILE": none, "AWS_EC2_METADATA_DISABLED": "true",
		"AWS_PROFILE": "", "AWS_SESSION_TOKEN": "", "AWS_WEB_IDENTITY_TOKEN_FILE": "", "AWS_ROLE_ARN": "",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "", "AWS_CONTAINER_CREDENTIALS_FULL_URI": "",
	} {
		cfg.SetEnv(k, v)
	}
}

// aws-msk-iam takes the credentials of the default AWS chain (static ones
// in the environment here) and signs MSK's request with them; a broker
// checking the signature as MSK does lets records through. A secret it
// does not match, or a mechanism it does not enable, ends the start naming
// kafka.sasl.mechanism. (kfake does not speak AWS_MSK_IAM: the gate checks
// the signature in front of it.)
func TestSecureKafkaAWSMSKIAM(t *testing.T) {
	e := itest.NewEnv(t)
	ca := testcert.NewCA(t, "kafka CA")
	const accessKey, secretKey = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
	const adminKey, adminSecret = "AKIAADMINEXAMPLE", "admin/secret/EXAMPLEKEY"
	gate := newSASLGate("AWS_MSK_IAM", ca.ServerTLS(t, nil), mskVerifier(map[string]string{accessKey: secretKey, adminKey: adminSecret}))
	k := startKfake(t, []kfake.Opt{kfake.ListenFn(gate.listen)}, kgo.DialTLSConfig(&tls.Config{RootCAs: ca.Pool}),
		kgo.SASL(kaws.Auth{AccessKey: adminKey, SecretKey: adminSecret}.AsManagedStreamingIAMMechanism()))
	t.Setenv("AWS_REGION", "eu-west-1") // for the test's own client: 127.0.0.1 names no region
	mskConfig := fmt.Sprintf("kafka: {tls: {enabled: true, ca_file: %q}, sasl: {mechanism: aws-msk-iam}}", ca.File)

	t.Run("default-chain", func(t *testing.T) {
		sc, cfg := newSecureCase(t, e, k, "msk-iam")
		cfg.MergeYAML(mskConfig)
		awsEnv(t, cfg, accessKey, secretKey)
		sc.deliver(t, cfg)
		if gate.authenticated(accessKey+"/eu-west-1") == 0 {
			t.Error("no authentication with the environment's credentials")
		}
	})
	t.Run("wrong-secret", func(t *testing.T) {
		_, cfg := newSecureCase(t, e, k, "msk-iam-refused")
		cfg.MergeYAML(mskConfig)
		awsEnv(t, cfg, accessKey, "not-the-secret")
		requireStartupRefused(t, cfg, "kafka.sasl.mechanism", "aws-msk-iam", "default AWS credential chain", "SASL_AUTHENTICATION_FAILED", "signature")
	})
	t.Run("mechanism-not-enabled", func(t *testing.T) {
		_, cfg := newSecureCase(t, e, k, "msk-iam-oauth")
		tokenFile := filepath.Join(t.TempDir(), "token")
		writeSecret(t, tokenFile, []byte("a-token"))
		cfg.MergeYAML(fmt.Sprintf("kafka: {tls: {enabled: true, ca_file: %q}, sasl: {mechanism: oauthbearer, token_file: %q}}", ca.File, tokenFile))
		requireStartupRefused(t, cfg, "kafka.sasl.mechanism", "the brokers do not enable oauthbearer", "UNSUPPORTED_SASL_MECHANISM")
	})
}

// registryAuth serves next to requests bearing basic auth bqsink:secret or
// the current bearer token, and 401 to the others, as Confluent's registry
// does.
func registryAuth(next http.Handler, token *atomic.Value) http.Handler {
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("bqsink:secret"))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := r.Header.Get("Authorization")
		if got != basic && got != "Bearer "+token.Load().(string) {
			w.Header().Set("Content-Type", "application/vnd.schemaregistry.v1+json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error_code":401,"message":"Unauthorized"}`))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// The Schema Registry behind TLS with a CA of the test's own, wanting a
// client certificate and basic auth or a bearer token: each works, and a
// bearer token rotated while running is used from the next request on
// (records of a schema fetched only after the rotation move). A CA that
// did not sign the registry's certificate, no client certificate, and a
// token the registry refuses each end the start naming the key to fix.
func TestSecureRegistry(t *testing.T) {
	e := itest.NewEnv(t)
	ca, other := testcert.NewCA(t, "registry CA"), testcert.NewCA(t, "other CA")
	var token atomic.Value
	token.Store("token-1")
	srv := httptest.NewUnstartedServer(registryAuth(e.St.Registry.Handler(), &token))
	srv.TLS = ca.ServerTLS(t, ca)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are the tests'
	srv.StartTLS()
	t.Cleanup(srv.Close)
	k := newTestKafka(t, e.St.Brokers())
	_, certFile, keyFile := ca.ClientFiles(t)
	mtls := map[string]any{"ca_file": ca.File, "cert_file": certFile, "key_file": keyFile}
	registry := func(cfg *itest.DaemonConfig, tlsKeys map[string]any, auth map[string]any) {
		reg := map[string]any{"url": srv.URL, "tls": tlsKeys}
		for k, v := range auth {
			reg[k] = v
		}
		cfg.Set("schema_registry", reg)
	}
	basic := map[string]any{"username": "bqsink", "password": "${REGISTRY_PASSWORD}"}

	t.Run("basic-auth-and-client-certificate", func(t *testing.T) {
		t.Parallel()
		sc, cfg := newSecureCase(t, e, k, "registry-basic")
		registry(cfg, mtls, basic)
		cfg.SetEnv("REGISTRY_PASSWORD", "secret")
		sc.deliver(t, cfg)
	})
	t.Run("bearer-token-rotated", func(t *testing.T) {
		// Not parallel: it rotates the token every case shares.
		sc, cfg := newSecureCase(t, e, k, "registry-bearer")
		tokenFile := filepath.Join(t.TempDir(), "token")
		writeSecret(t, tokenFile, []byte("token-1\n"))
		registry(cfg, mtls, map[string]any{"bearer_token_file": tokenFile})
		sc.produce(t, v1Only(stack.StockUpdates(secureRecords, 3)))
		d := itest.StartDaemon(t, cfg)
		sc.waitDelivered(t, d)

		// The second version's schema is fetched only now, after the
		// rotation: with the old token it would be refused.
		writeSecret(t, tokenFile, []byte("token-2\n"))
		token.Store("token-2")
		sc.produce(t, v2Only(stack.StockUpdates(secureRecords, 4)))
		sc.waitDelivered(t, d)
		d.Shutdown(15 * time.Second)
		itest.LogProblems(t, d)
	})
	t.Run("refused", func(t *testing.T) {
		tokenFile := filepath.Join(t.TempDir(), "expired")
		writeSecret(t, tokenFile, []byte("expired-token"))
		_, strangerCert, strangerKey := other.ClientFiles(t)
		for _, c := range []struct {
			name string
			tls  map[string]any
			auth map[string]any
			keys []string
		}{
			{"unknown-ca", map[string]any{"ca_file": other.File, "cert_file": certFile, "key_file": keyFile}, basic,
				[]string{"schema_registry.tls.ca_file", other.File, "certificate signed by unknown authority"}},
			{"no-client-certificate", map[string]any{"ca_file": ca.File}, basic,
				[]string{"schema_registry.tls.cert_file", "none is set", "certificate required"}},
			{"certificate-of-another-ca", map[string]any{"ca_file": ca.File, "cert_file": strangerCert, "key_file": strangerKey}, basic,
				[]string{"schema_registry.tls.cert_file", strangerCert}},
			{"token-refused", mtls, map[string]any{"bearer_token_file": tokenFile},
				[]string{"schema_registry.bearer_token_file", "the registry refused the credentials (HTTP 401)"}},
		} {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				_, cfg := newSecureCase(t, e, k, "registry-"+c.name)
				registry(cfg, c.tls, c.auth)
				cfg.SetEnv("REGISTRY_PASSWORD", "secret")
				requireStartupRefused(t, cfg, c.keys...)
			})
		}
	})
}
