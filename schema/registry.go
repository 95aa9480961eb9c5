package schema

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/hamba/avro/v2"
	"github.com/riferrei/srclient"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
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
// forever (a schema ID's text never changes); ErrNotFound and transient
// errors are not cached. Concurrent misses for one ID share a single fetch,
// and a schema text is fetched once even when its history check fails
// transiently and is retried. Texts of referenced and previous subject
// versions are cached too, so each is fetched once per process.
type Registry struct {
	client *srclient.SchemaRegistryClient
	logger *zap.Logger
	flight singleflight.Group

	mu      sync.Mutex
	schemas map[int]cached
	pending map[int]built // compiled, history not yet checked
	refs    map[refKey]refText
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
// the first Schema call is the first request. A nil logger means zap.NewNop().
func NewRegistry(cfg Config, logger *zap.Logger) (*Registry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("schema registry config: %w", err)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	client := srclient.NewSchemaRegistryClient(strings.TrimRight(cfg.URL, "/"),
		srclient.WithClient(&http.Client{Timeout: cfg.timeout()}))
	// We parse with hamba/avro ourselves; goavro codecs would be built and thrown away.
	client.CodecCreationEnabled(false)
	// Our cache is the only one: srclient's would hold every text twice and
	// hide requests from the fetch-once accounting.
	client.CachingEnabled(false)
	if cfg.Username != "" {
		client.SetCredentials(cfg.Username, cfg.Password)
	}
	return &Registry{
		client:  client,
		logger:  logger,
		schemas: make(map[int]cached),
		pending: make(map[int]built),
		refs:    make(map[refKey]refText),
	}, nil
}

// Schema returns the compiled writer schema with this ID, fetching and
// compiling it and checking it against its subjects' previous versions on
// first use. Errors wrap ErrNotFound, ErrUnsupported or ErrIncompatible when
// permanent; anything else (network, timeout, registry 5xx, ctx done) is
// transient. If ctx ends first Schema returns its error at once; the shared
// fetch carries on, bounded by the HTTP timeout, and fills the cache for the
// next call. Safe for concurrent use.
func (r *Registry) Schema(ctx context.Context, id int) (*Schema, error) {
	if c, ok := r.cached(id); ok {
		return c.schema, c.err
	}
	// srclient takes no context, so the fetch runs in singleflight's goroutine
	// and we only stop waiting for it.
	ch := r.flight.DoChan("id:"+strconv.Itoa(id), func() (any, error) { return r.load(id) })
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
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.schemas[id]
	return c, ok
}

// load fetches, resolves, compiles and checks schema id. It runs once per ID
// at a time (singleflight).
func (r *Registry) load(id int) (*Schema, error) {
	// A fetch may have completed between the caller's cache check and DoChan.
	if c, ok := r.cached(id); ok {
		return c.schema, c.err
	}
	b, err := r.compiled(id)
	if err == nil {
		err = r.checkHistory(id, b.top)
	}
	if err != nil && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrIncompatible) {
		return nil, err // not found or transient: ask again next time
	}
	c := cached{err: err}
	if err == nil {
		c.schema = b.schema
	}
	r.mu.Lock()
	r.schemas[id] = c
	delete(r.pending, id)
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
	raw, err := r.client.GetSchema(id)
	if err != nil {
		return built{}, classify(fmt.Sprintf("schema %d", id), err)
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
// by classify.
func (r *Registry) referenced(k refKey) (refText, error) {
	r.mu.Lock()
	t, ok := r.refs[k]
	r.mu.Unlock()
	if ok {
		return t, nil
	}
	v, err, _ := r.flight.Do("ref:"+strconv.Quote(k.subject)+"/"+strconv.Itoa(k.version), func() (any, error) {
		r.mu.Lock()
		t, ok := r.refs[k]
		r.mu.Unlock()
		if ok {
			return t, nil
		}
		raw, err := r.client.GetSchemaByVersion(k.subject, k.version)
		if err != nil {
			return nil, classify(fmt.Sprintf("subject %q version %d", k.subject, k.version), err)
		}
		t = refText{schema: raw.Schema(), refs: raw.References(), typ: raw.SchemaType()}
		r.mu.Lock()
		r.refs[k] = t
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
// schema), transient otherwise. A bare 404 without the registry's JSON body
// comes from a proxy or a wrong URL, not from the registry: treating it as
// permanent would discard every record, so it stays transient.
func classify(what string, err error) error {
	var se srclient.Error
	if errors.As(err, &se) && (se.Code == http.StatusNotFound || se.Code/100 == http.StatusNotFound) {
		return fmt.Errorf("%w: %s: registry error %d: %s", ErrNotFound, what, se.Code, se.Message)
	}
	return fmt.Errorf("fetch %s: %w", what, err)
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
