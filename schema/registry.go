package schema

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/riferrei/srclient"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/bqsink/bqsink/internal/tokenfile"
)

// Registry fetches writer schemas by ID from a Confluent-compatible Schema
// Registry and compiles them. It is safe for concurrent use.
//
// Before a new ID is used, its subjects' history is checked: for each
// subject version using the ID, the version before it is fetched and a
// top-level field renamed without an Avro alias fails with ErrIncompatible.
// That costs one request for the ID's subject versions and one per previous
// version, once per ID.
//
// Compiled schemas and ErrUnsupported and ErrIncompatible results are cached
// forever (a schema ID's text never changes). ErrNotFound, ErrUnauthorized
// and transient errors are remembered for a backoff instead: until it has
// passed, Schema returns the same error again without asking the registry.
// The backoff is 1s after an ID's first failure and doubles with each
// consecutive failure up to 10s; a success clears it, and a failure nobody
// asked about again within 10s of its backoff ending is forgotten, so the next
// one starts again at 1s. Referenced and previous subject versions share the
// mechanism, each under its own backoff. So a flood of records carrying an
// unknown ID costs about one request per backoff, not one per record.
//
// Concurrent misses for one ID share a single fetch, and a schema text is
// fetched once even when its history check fails transiently and is retried.
// Texts of referenced and previous subject versions are cached too, so each
// is fetched once per process. At most 16 requests are in flight at once; a
// request that cannot get a slot within the HTTP timeout fails transiently.
type Registry struct {
	client     *srclient.SchemaRegistryClient
	httpClient *http.Client
	url        string // base URL, for Check
	auth       func(*http.Request)
	timeout    time.Duration
	logger     *zap.Logger
	flight     singleflight.Group
	slots      chan struct{} // one per request in flight
	now        func() time.Time

	// Error text: the config keys an operator fixes.
	where      string // "schema_registry.url <url, password redacted>"
	authKey    string // the key(s) holding the credentials
	noCreds    bool   // none are configured
	roots      string // who signs the certificates we trust
	clientCert string // what the registry gets from us in a TLS handshake

	// mu is read-locked on the hot path (cached: every record asks for
	// its writer schema), so partitions decoding at once do not queue.
	mu       sync.RWMutex
	schemas  map[int]cached
	pending  map[int]built // compiled, history not yet checked
	refs     map[refKey]refText
	failures map[string]failure // by flight key: "id:…" or "ref:…"
	swept    time.Time          // when failures was last swept
}

type cached struct {
	schema *Schema
	err    error // ErrUnsupported, ErrIncompatible, or nil
}

// built is a compiled writer schema with what the rename check compares.
type built struct {
	schema *Schema
	top    []topField
}

// refKey names one subject version reached through schema references.
type refKey struct {
	subject string
	version int
}

func (k refKey) String() string { return fmt.Sprintf("subject %q version %d", k.subject, k.version) }

type refText struct {
	schema string
	refs   []srclient.Reference
	typ    *srclient.SchemaType
}

// NewRegistry validates cfg and returns a Registry. It does no network I/O:
// the first Schema or Check call is the first request. It reads the files
// of schema_registry.tls, schema_registry.bearer_token_file and
// schema_registry.password_file; one that cannot be read, or holds no
// certificate, token or password, is an error naming the key and the file.
// A nil logger means zap.NewNop().
func NewRegistry(cfg Config, logger *zap.Logger) (*Registry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("schema registry config: %w", err)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	base := strings.TrimRight(cfg.URL, "/")
	u, err := url.Parse(base)
	if err != nil { // Validate parsed it already
		return nil, fmt.Errorf("schema registry config: url: %w", err)
	}
	// Our own connection pool, not http.DefaultTransport's, sized for our
	// requests in flight.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = maxRequests
	if tr.TLSClientConfig, err = buildTLS(cfg.TLS); err != nil {
		return nil, err
	}
	var rt http.RoundTripper = tr
	var bearer *tokenfile.File
	if cfg.BearerTokenFile != "" {
		// Read now, so that a missing or empty file fails the start.
		bearer = &tokenfile.File{Path: cfg.BearerTokenFile}
		if _, err := bearer.Token(); err != nil {
			return nil, fmt.Errorf("schema_registry.bearer_token_file: %w", err)
		}
		rt = bearerTransport{base: rt, token: bearer}
	}
	var passFile *tokenfile.Password
	if cfg.PasswordFile != "" {
		// Read now, so that a missing or empty file fails the start.
		passFile = &tokenfile.Password{Path: cfg.PasswordFile, Key: "schema_registry.password_file", Log: logger}
		if _, err := passFile.Value(); err != nil {
			return nil, fmt.Errorf("schema_registry.password_file: %w", err)
		}
		rt = basicTransport{base: rt, username: cfg.Username, password: passFile}
	}
	hc := &http.Client{Timeout: cfg.timeout(), Transport: statusTransport{base: rt}}
	client := srclient.NewSchemaRegistryClient(base, srclient.WithClient(hc), srclient.WithSemaphoreWeight(maxRequests))
	// We parse with hamba/avro ourselves; goavro codecs would be built and thrown away.
	client.CodecCreationEnabled(false)
	// Our cache is the only one: srclient's would hold every text twice and
	// hide requests from the fetch-once accounting.
	client.CachingEnabled(false)
	auth := func(*http.Request) {}
	if cfg.Username != "" && passFile == nil {
		client.SetCredentials(cfg.Username, cfg.Password)
		user, pass := cfg.Username, cfg.Password
		auth = func(req *http.Request) { req.SetBasicAuth(user, pass) }
	}
	authKey := "schema_registry.username/password"
	switch {
	case bearer != nil:
		authKey = "schema_registry.bearer_token_file"
	case passFile != nil:
		authKey = "schema_registry.username/password_file"
	case cfg.Username == "" && u.User != nil:
		authKey = "schema_registry.url user info"
	}
	roots, clientCert := "the system's root CAs", "the connection without a client certificate (none is set)"
	if cfg.TLS.CAFile != "" {
		roots = "a CA of " + cfg.TLS.CAFile
	}
	if cfg.TLS.CertFile != "" {
		clientCert = "the client certificate of " + cfg.TLS.CertFile
	}
	return &Registry{
		client:     client,
		httpClient: hc,
		url:        base,
		auth:       auth,
		timeout:    cfg.timeout(),
		logger:     logger,
		slots:      make(chan struct{}, maxRequests),
		now:        time.Now,
		where:      "schema_registry.url " + u.Redacted(),
		authKey:    authKey,
		noCreds:    cfg.Username == "" && u.User == nil && bearer == nil,
		roots:      roots,
		clientCert: clientCert,
		schemas:    make(map[int]cached),
		pending:    make(map[int]built),
		refs:       make(map[refKey]refText),
		failures:   make(map[string]failure),
	}, nil
}

// Schema returns the compiled writer schema with this ID, fetching and
// compiling it and checking it against its subjects' previous versions on
// first use. Errors wrap ErrNotFound, ErrUnsupported or ErrIncompatible when
// the schema can never be used, and ErrUnauthorized when the registry
// refuses the credentials or ErrTLS when TLS with it fails verification
// (configuration problems, not the record's); anything else (network,
// timeout, registry 5xx, registry busy, ctx done) is transient. ErrNotFound,
// ErrUnauthorized, ErrTLS and transient failures are
// remembered per ID for a backoff (1s doubling to 10s, see Registry): until
// it passes, Schema returns the same error, of the same class, without a
// request, and every such error ends in "; not asked again for <time left>".
// If ctx ends first Schema returns its error at once (not remembered); the
// shared fetch carries on, bounded by the HTTP timeout, and fills the cache
// for the next call. Safe for concurrent use.
func (r *Registry) Schema(ctx context.Context, id int) (*Schema, error) {
	if c, ok := r.cached(id); ok {
		return c.schema, c.err
	}
	key := "id:" + strconv.Itoa(id)
	if left, err := r.remembered(key); err != nil {
		return nil, notAsked(err, left)
	}
	// srclient takes no context, so the fetch runs in singleflight's goroutine
	// and we only stop waiting for it.
	ch := r.flight.DoChan(key, func() (any, error) { return r.load(id, key) })
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*Schema), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("schema %d: %w", id, context.Cause(ctx))
	}
}

func (r *Registry) cached(id int) (cached, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	c, ok := r.schemas[id]
	return c, ok
}

// load fetches, resolves, compiles and checks schema id, key being its
// flight key. It runs once per ID at a time (singleflight).
func (r *Registry) load(id int, key string) (*Schema, error) {
	// A fetch may have completed between the caller's checks and DoChan.
	if c, ok := r.cached(id); ok {
		return c.schema, c.err
	}
	if left, err := r.remembered(key); err != nil {
		return nil, notAsked(err, left)
	}
	b, err := r.compiled(id)
	if err == nil {
		err = r.checkHistory(id, b.top)
	}
	if err != nil && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrIncompatible) {
		// Not found, unauthorized or transient: not again before the backoff.
		return nil, notAsked(err, r.fail(key, err))
	}
	c := cached{err: err}
	if err == nil {
		c.schema = b.schema
	}
	r.mu.Lock()
	r.schemas[id] = c
	delete(r.pending, id)
	delete(r.failures, key)
	r.mu.Unlock()
	if err == nil {
		r.logger.Debug("schema loaded", zap.Int("schema_id", id), zap.Int("columns", len(b.schema.columns)))
	}
	return c.schema, c.err
}

// compiled returns schema id compiled: kept from an earlier load whose
// history check failed transiently, or fetched and built now.
func (r *Registry) compiled(id int) (built, error) {
	r.mu.Lock()
	b, ok := r.pending[id]
	r.mu.Unlock()
	if ok {
		return b, nil
	}
	raw, err := call(r, func() (*srclient.Schema, error) { return r.client.GetSchema(id) })
	if err != nil {
		return built{}, r.classify(fmt.Sprintf("schema %d", id), err)
	}
	if b, err = r.build(id, raw); err != nil {
		return built{}, err
	}
	r.mu.Lock()
	r.pending[id] = b
	r.mu.Unlock()
	return b, nil
}

func (r *Registry) build(id int, raw *srclient.Schema) (built, error) {
	if err := checkAvro(raw.SchemaType()); err != nil {
		return built{}, fmt.Errorf("%w: schema %d: %v", ErrUnsupported, id, err)
	}
	// A fresh cache per ID: two versions of one subject may define the same
	// full name differently.
	cache := &avro.SchemaCache{}
	if err := r.resolve(raw.References(), cache, make(map[refKey]bool), nil); err != nil {
		return built{}, fmt.Errorf("schema %d: %w", id, err)
	}
	parsed, err := parse(raw.Schema(), cache)
	if err != nil {
		return built{}, fmt.Errorf("%w: schema %d: %v", ErrUnsupported, id, err)
	}
	s, err := compile(id, parsed, r.logger)
	if err != nil {
		return built{}, err
	}
	return built{schema: s, top: topFields(parsed, s)}, nil
}

// resolve parses the referenced schemas into cache depth-first, each one
// after its own references, so every named type exists before a schema that
// uses it is parsed. done holds the subject versions already parsed in this
// resolution (a type reached by two paths is parsed once); path is the chain
// of references being followed, for cycle detection.
func (r *Registry) resolve(refs []srclient.Reference, cache *avro.SchemaCache, done map[refKey]bool, path []refKey) error {
	for _, ref := range refs {
		k := refKey{subject: ref.Subject, version: ref.Version}
		if done[k] {
			continue
		}
		chain := append(path[:len(path):len(path)], k)
		for _, p := range path {
			if p == k {
				return fmt.Errorf("%w: reference cycle %s", ErrUnsupported, joinKeys(chain))
			}
		}
		t, err := r.referenced(k)
		if err != nil {
			return fmt.Errorf("reference %s: %w", joinKeys(chain), err)
		}
		if err := checkAvro(t.typ); err != nil {
			return fmt.Errorf("%w: reference %s: %v", ErrUnsupported, joinKeys(chain), err)
		}
		if err := r.resolve(t.refs, cache, done, chain); err != nil {
			return err
		}
		if _, err := parse(t.schema, cache); err != nil {
			return fmt.Errorf("%w: reference %s: %v", ErrUnsupported, joinKeys(chain), err)
		}
		done[k] = true
	}
	return nil
}

// referenced returns the text of one subject version, from the cache or the
// registry; concurrent resolutions share one fetch. Errors are classified as
// by classify; a failed fetch is remembered for a backoff like a schema ID's
// (see Registry), and returned again without the note Schema adds.
func (r *Registry) referenced(k refKey) (refText, error) {
	r.mu.Lock()
	t, ok := r.refs[k]
	r.mu.Unlock()
	if ok {
		return t, nil
	}
	key := "ref:" + strconv.Quote(k.subject) + "/" + strconv.Itoa(k.version)
	if _, err := r.remembered(key); err != nil {
		return refText{}, err
	}
	v, err, _ := r.flight.Do(key, func() (any, error) {
		r.mu.Lock()
		t, ok := r.refs[k]
		r.mu.Unlock()
		if ok {
			return t, nil
		}
		if _, err := r.remembered(key); err != nil {
			return nil, err
		}
		raw, err := call(r, func() (*srclient.Schema, error) { return r.client.GetSchemaByVersion(k.subject, k.version) })
		if err != nil {
			err = r.classify(k.String(), err)
			r.fail(key, err)
			return nil, err
		}
		t = refText{schema: raw.Schema(), refs: raw.References(), typ: raw.SchemaType()}
		r.mu.Lock()
		r.refs[k] = t
		delete(r.failures, key)
		r.mu.Unlock()
		return t, nil
	})
	if err != nil {
		return refText{}, err
	}
	return v.(refText), nil
}

// classify wraps a registry error: ErrNotFound when the registry itself said
// so (its JSON error code 404 or 404xx: 40401 subject, 40402 version, 40403
// schema), ErrUnauthorized when it answered HTTP 401 or 403, ErrTLS when
// the TLS handshake failed verification, transient otherwise. A bare 404 without the registry's JSON body comes from a proxy
// or a wrong URL, not from the registry: treating it as permanent would
// discard every record, so it stays transient.
func (r *Registry) classify(what string, err error) error {
	var se srclient.Error
	if errors.As(err, &se) && (se.Code == http.StatusNotFound || se.Code/100 == http.StatusNotFound) {
		return fmt.Errorf("%w: %s: registry error %d: %s", ErrNotFound, what, se.Code, se.Message)
	}
	var st *statusError
	if errors.As(err, &st) {
		return fmt.Errorf("%s: %w", what, r.refused(st.code))
	}
	if terr := r.tlsRefused(err); terr != nil {
		return fmt.Errorf("%s: %w", what, terr)
	}
	if errors.As(err, &se) {
		// Its text is the raw JSON body, newline included.
		return fmt.Errorf("fetch %s: registry error %d: %s", what, se.Code, se.Message)
	}
	return fmt.Errorf("fetch %s: %w", what, err)
}

// refused is the error for a registry refusing the credentials with HTTP
// status code, naming the keys to fix.
func (r *Registry) refused(code int) error {
	if r.noCreds {
		return fmt.Errorf("%s: %w (HTTP %d; none are set)", r.authKey, ErrUnauthorized, code)
	}
	return fmt.Errorf("%s: %w (HTTP %d)", r.authKey, ErrUnauthorized, code)
}

func checkAvro(t *srclient.SchemaType) error {
	if t != nil && *t != srclient.Avro && *t != "" {
		return fmt.Errorf("schema type %s, only AVRO is supported", *t)
	}
	return nil
}

// parse parses one schema text into cache. The text comes from outside the
// process: a parser panic must cost one schema, not the daemon.
func parse(text string, cache *avro.SchemaCache) (s avro.Schema, err error) {
	defer func() {
		if p := recover(); p != nil {
			s, err = nil, fmt.Errorf("avro parser panicked: %v", p)
		}
	}()
	return avro.ParseWithCache(text, "", cache)
}

func joinKeys(keys []refKey) string {
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k.String()
	}
	return strings.Join(parts, " -> ")
}
