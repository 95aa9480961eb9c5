// Package config reads bqsink's config file: a YAML file walked against
// the config struct's types, with ${VAR} expansion, every problem of the
// file listed at once by key and line, and the files it names checked for
// what they hold. The keys themselves are declared where they are used
// (sink.Keys and this package's own); Keys lists them all.
package config

import (
	"encoding"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/bqsink/bqsink/internal/keys"
	"github.com/bqsink/bqsink/internal/tlsfiles"
	"github.com/bqsink/bqsink/internal/tokenfile"
	"github.com/bqsink/bqsink/sink"
)

// File is the whole config file: the sink's sections plus what the
// process owns (HTTP and logging).
type File struct {
	sink.Config `yaml:",inline"`
	HTTP        struct {
		Listen string `yaml:"listen"`
	} `yaml:"http"`
	Log struct {
		Level string `yaml:"level"`
	} `yaml:"log"`
}

func defaults() File {
	cfg := File{Config: sink.DefaultConfig()}
	keys.ApplyDefaults(&cfg, processKeys, true)
	return cfg
}

// Load reads the config file at path. It returns the config, or a
// *configError listing every problem of the file in one pass: unknown keys,
// values of the wrong type, unset environment variables, keys given twice,
// what the packages' Validate methods refuse (missing required keys, bad
// values) and files named by *_file keys that cannot be read. Each problem
// is named by its full key and, where the key is in the file, its line.
//
// The file is walked as a YAML tree against the config struct's types and
// every scalar is decoded here, after ${VAR} and ${VAR:-default} in it are
// replaced from the environment: so whatever a variable holds is never read
// as YAML, and a value for an int, bool or duration key is typed by what it
// expands to, quoted or not.
func Load(path string) (File, error) {
	if msg, hint := unreadable(path); msg != "" {
		return File{}, &configError{problems: []problem{{key: "-config", msg: msg, hint: hint}}}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("-config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return File{}, fmt.Errorf("%s: not valid YAML: %s%s", path, strings.TrimPrefix(err.Error(), "yaml: "), tabHint(raw, err))
	}
	cfg := defaults()
	d := decoder{lookup: os.LookupEnv, lines: map[string]*yaml.Node{}, keys: keyPaths(reflect.TypeFor[File](), "")}
	// An empty file (or one of comments) is an empty mapping: Validate then
	// lists every required key.
	if len(doc.Content) > 0 {
		d.decode(doc.Content[0], reflect.ValueOf(&cfg).Elem(), "")
	}
	d.validated(cfg.validate())
	d.checkFiles(reflect.ValueOf(cfg), "")
	d.checkContents(cfg)
	if len(d.problems) > 0 {
		return File{}, &configError{path: path, problems: sortProblems(d.problems)}
	}
	return cfg, nil
}

var yamlErrLine = regexp.MustCompile(`^yaml: line (\d+):`)

// tabHint explains YAML's "found character that cannot start any token"
// when the line it names is indented with a tab.
func tabHint(raw []byte, err error) string {
	m := yamlErrLine.FindStringSubmatch(err.Error())
	if m == nil {
		return ""
	}
	n, _ := strconv.Atoi(m[1])
	lines := strings.Split(string(raw), "\n")
	if n < 1 || n > len(lines) {
		return ""
	}
	indent := lines[n-1][:len(lines[n-1])-len(strings.TrimLeft(lines[n-1], " \t"))]
	if strings.Contains(indent, "\t") {
		return " (YAML indents with spaces, not tabs)"
	}
	return ""
}

// validate runs the sink's checks and those of the process's keys, one
// error per bad key, each starting with the key ("kafka.brokers:
// required"). It does no I/O.
func (c File) validate() error {
	errs := keys.Validate(c, processKeys)
	if err := c.Config.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// configError is every problem of a config file, one per line.
type configError struct {
	path     string
	problems []problem
}

func (e *configError) Error() string {
	var b strings.Builder
	if e.path != "" {
		n := "problems"
		if len(e.problems) == 1 {
			n = "problem"
		}
		fmt.Fprintf(&b, "%s: %d %s:", e.path, len(e.problems), n)
	}
	for i, p := range e.problems {
		if e.path != "" || i > 0 {
			b.WriteString("\n  ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// problem is one thing wrong in a config file.
type problem struct {
	key       string // full key: kafka.brokers, kafka.topics[0], tables.orders
	line, col int    // where the key or value is; 0: not in the file
	msg       string // what is wrong
	hint      string // how to fix it, when the message does not say
}

// String reads "key: msg (line N; hint)".
func (p problem) String() string {
	var b strings.Builder
	if p.key != "" {
		b.WriteString(p.key + ": ")
	}
	b.WriteString(p.msg)
	var paren []string
	if p.line > 0 {
		paren = append(paren, fmt.Sprintf("line %d", p.line))
	}
	if p.hint != "" {
		paren = append(paren, p.hint)
	}
	if len(paren) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(paren, "; "))
	}
	return b.String()
}

// sortProblems orders problems as they appear in the file; those about
// keys that are not in it (a required key missing) come last, by key.
func sortProblems(ps []problem) []problem {
	slices.SortStableFunc(ps, func(a, b problem) int {
		switch {
		case a.line == 0 && b.line == 0:
			return strings.Compare(a.key, b.key)
		case a.line == 0:
			return 1
		case b.line == 0:
			return -1
		case a.line != b.line:
			return a.line - b.line
		}
		return a.col - b.col
	})
	return ps
}

// decoder decodes a YAML tree into a config struct, collecting a problem
// for every value it cannot take instead of stopping at the first.
type decoder struct {
	lookup   func(string) (string, bool) // the environment
	lines    map[string]*yaml.Node       // every key in the file (for its line), by full key
	keys     []string                    // every key the config type has, for suggestions
	problems []problem
	failed   []string // keys whose value could not be decoded
}

func (d *decoder) bad(key string, n *yaml.Node, hint, format string, a ...any) {
	d.problems = append(d.problems, problem{key: key, line: n.Line, col: n.Column, msg: fmt.Sprintf(format, a...), hint: hint})
	d.failed = append(d.failed, key)
}

// failedAt reports whether key, or a section or list holding it, could not
// be decoded: what Validate then says about it is about a default, not
// about what the file says.
func (d *decoder) failedAt(key string) bool {
	for _, f := range d.failed {
		if f == "" || key == f || strings.HasPrefix(key, f) && (key[len(f)] == '.' || key[len(f)] == '[') {
			return true
		}
	}
	return false
}

var (
	stringerType        = reflect.TypeFor[fmt.Stringer]()
	durationType        = reflect.TypeFor[time.Duration]()
	yamlUnmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

const durationHint = "write 1s, 500ms, 5m"

// shortFormer is a mapping that a bare scalar may stand for, setting the
// key ShortForm names (tables: `topic: table`).
type shortFormer interface{ ShortForm() string }

// oneScalar is a list that a bare scalar may stand for, as its one entry
// (`sequence: debezium`).
type oneScalar interface{ OneScalar() }

// decode sets v from node n, found under key. A null value leaves v as it
// is (its default), as yaml.v3 does, except that it empties a list, map or
// pointer.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, key string) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		switch v.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.Map, reflect.Interface:
			v.SetZero()
		}
		return
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), key)
		return
	}
	t := v.Type()
	switch {
	case reflect.PointerTo(t).Implements(yamlUnmarshalerType):
		d.fallback(n, v, key)
		return
	case t == durationType:
		s, ok := d.scalar(n, key, "a duration", durationHint)
		if !ok || s == "" {
			return
		}
		dur, err := time.ParseDuration(s)
		if err != nil {
			d.bad(key, n, durationHint, "%q is not a duration", s)
			return
		}
		v.SetInt(int64(dur))
		return
	case reflect.PointerTo(t).Implements(textUnmarshalerType):
		s, ok := d.scalar(n, key, "a text value", "")
		if !ok {
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
			d.bad(key, n, "", "%v", err)
		}
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		if sf, ok := v.Addr().Interface().(shortFormer); ok && n.Kind == yaml.ScalarNode {
			// The short form: a scalar sets one key of the mapping.
			if f, ok := yamlFields(t)[sf.ShortForm()]; ok {
				d.decode(n, v.FieldByIndex(f.Index), key)
				return
			}
		}
		d.decodeStruct(n, v, key)
	case reflect.Map:
		d.decodeMap(n, v, key)
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			d.fallback(n, v, key)
			return
		}
		if _, ok := v.Interface().(oneScalar); ok && n.Kind == yaml.ScalarNode {
			s := reflect.MakeSlice(t, 1, 1)
			d.decode(n, s.Index(0), key)
			v.Set(s)
			return
		}
		d.decodeSlice(n, v, key)
	case reflect.String:
		if s, ok := d.scalar(n, key, "a string", ""); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		s, ok := d.scalar(n, key, "true or false", "")
		if !ok || s == "" {
			return
		}
		switch strings.ToLower(s) {
		case "true", "yes", "on", "y": // yaml.v3 takes YAML 1.1's words for a bool too
			v.SetBool(true)
		case "false", "no", "off", "n":
			v.SetBool(false)
		default:
			d.bad(key, n, "", "want true or false, got %q", s)
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		s, ok := d.scalar(n, key, "an integer", "")
		if !ok || s == "" {
			return
		}
		i, err := parseInt(s, t.Bits())
		hint := ""
		if strings.HasSuffix(key, "_bytes") {
			hint = "a number of bytes: 8388608 is 8 MiB"
		}
		switch {
		case errors.Is(err, strconv.ErrRange):
			d.bad(key, n, hint, "want an integer from %d to %d, got %q", int64(-1)<<(t.Bits()-1), int64(1)<<(t.Bits()-1)-1, s)
		case err != nil:
			d.bad(key, n, hint, "want an integer, got %q", s)
		default:
			v.SetInt(i)
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		s, ok := d.scalar(n, key, "a whole number", "")
		if !ok || s == "" {
			return
		}
		u, err := strconv.ParseUint(s, 0, t.Bits())
		if err != nil {
			d.bad(key, n, "", "want a whole number (0 or more) of at most %d, got %q", uint64(math.MaxUint64)>>(64-t.Bits()), s)
			return
		}
		v.SetUint(u)
	case reflect.Float32, reflect.Float64:
		s, ok := d.scalar(n, key, "a number", "")
		if !ok || s == "" {
			return
		}
		f, err := strconv.ParseFloat(s, t.Bits())
		if err != nil {
			d.bad(key, n, "", "want a number, got %q", s)
			return
		}
		v.SetFloat(f)
	default:
		d.fallback(n, v, key)
	}
}

// parseInt reads an integer of bits bits as YAML writes them: 10000,
// 8_388_608, 0x10, or 1e6 (a float with no fraction).
func parseInt(s string, bits int) (int64, error) {
	i, err := strconv.ParseInt(s, 0, bits)
	if err == nil || errors.Is(err, strconv.ErrRange) {
		return i, err
	}
	if f, ferr := strconv.ParseFloat(s, 64); ferr == nil && f == math.Trunc(f) {
		if f < -math.Ldexp(1, bits-1) || f >= math.Ldexp(1, bits-1) {
			return 0, strconv.ErrRange
		}
		return int64(f), nil
	}
	return 0, err
}

// fallback decodes n with yaml.v3, for types with their own YAML decoding
// or kinds the config does not use, naming the key and line on error.
func (d *decoder) fallback(n *yaml.Node, v reflect.Value, key string) {
	c := d.expanded(n, key)
	if c == nil {
		return
	}
	if err := c.Decode(v.Addr().Interface()); err != nil {
		msg := err.Error()
		var te *yaml.TypeError
		if errors.As(err, &te) && len(te.Errors) > 0 {
			msg = te.Errors[0]
		}
		msg = yamlLinePrefix.ReplaceAllString(strings.TrimPrefix(msg, "yaml: "), "")
		d.bad(key, n, "", "%s", msg)
	}
}

var yamlLinePrefix = regexp.MustCompile(`^line \d+: `)

// expanded returns a copy of the tree n with ${VAR} references replaced in
// every scalar, typed by what they expand to, or nil after reporting unset
// variables.
func (d *decoder) expanded(n *yaml.Node, key string) *yaml.Node {
	c := *n
	if n.Kind == yaml.ScalarNode {
		if !strings.Contains(n.Value, "${") {
			return &c
		}
		s, ok := d.scalar(n, key, "", "")
		if !ok {
			return nil
		}
		c.Value, c.Tag, c.Style = s, "", 0
		return &c
	}
	c.Content = make([]*yaml.Node, len(n.Content))
	for i, sub := range n.Content {
		if c.Content[i] = d.expanded(sub, key); c.Content[i] == nil {
			return nil
		}
	}
	return &c
}

// scalar returns the text of scalar n with ${VAR} and ${VAR:-default}
// replaced from the environment. For anything else, or when a variable is
// unset, it reports the problem and returns false.
func (d *decoder) scalar(n *yaml.Node, key, want, hint string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.bad(key, n, hint, "want %s, got %s", want, describe(n))
		return "", false
	}
	s, missing := expandEnv(n.Value, d.lookup)
	switch len(missing) {
	case 0:
		return s, true
	case 1:
		d.bad(key, n, fmt.Sprintf("write ${%s:-default} if it may be unset", missing[0]), "environment variable %s is not set", missing[0])
	default:
		d.bad(key, n, "write ${NAME:-default} for one that may be unset", "environment variables %s are not set", strings.Join(missing, ", "))
	}
	return "", false
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return strconv.Quote(n.Value)
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// expandEnv replaces ${VAR} and ${VAR:-default} in s, a value already
// parsed from YAML, so whatever a variable holds (a #, a leading *, a
// colon, "null") is taken as it is, never read as YAML. A variable set to
// the empty string takes its default if it has one. An unset variable
// without a default is returned in missing rather than read as an empty
// string: a silently empty password or broker list is worse than refusing
// to start.
func expandEnv(s string, lookup func(string) (string, bool)) (expanded string, missing []string) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	expanded = envRef.ReplaceAllStringFunc(s, func(m string) string {
		sub := envRef.FindStringSubmatch(m)
		name, hasDefault := sub[1], sub[2] != ""
		if v, ok := lookup(name); ok && (v != "" || !hasDefault) {
			return v
		}
		if hasDefault {
			return sub[3]
		}
		if !slices.Contains(missing, name) {
			missing = append(missing, name)
		}
		return ""
	})
	return expanded, missing
}

// entry is one key: value pair of a mapping; merged says it came from a
// merge key (<<: *anchor), so a key of the mapping itself overrides it.
type entry struct {
	k, v   *yaml.Node
	merged bool
}

// entries lists the pairs of mapping n: those merged in first (an earlier
// merged mapping taking precedence over a later one), then n's own, so
// that the last one decoded for a key is the one YAML means.
func entries(n *yaml.Node) []entry {
	var merged, own []entry
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Value == "<<" && (k.Tag == "" || k.Tag == "!" || k.Tag == "!!merge") {
			var from []*yaml.Node
			for v.Kind == yaml.AliasNode && v.Alias != nil {
				v = v.Alias
			}
			if v.Kind == yaml.SequenceNode {
				from = v.Content
			} else {
				from = []*yaml.Node{v}
			}
			for _, m := range slices.Backward(from) {
				for m.Kind == yaml.AliasNode && m.Alias != nil {
					m = m.Alias
				}
				if m.Kind != yaml.MappingNode {
					continue
				}
				for _, e := range entries(m) {
					e.merged = true
					merged = append(merged, e)
				}
			}
			continue
		}
		own = append(own, entry{k: k, v: v})
	}
	return append(merged, own...)
}

// ownKey checks key node k of a mapping under key prefix: a scalar, not
// given before. It records its line and returns its full key.
func (d *decoder) ownKey(e entry, prefix string, seen map[string]*yaml.Node) (string, bool) {
	k := e.k
	if k.Kind != yaml.ScalarNode {
		d.problems = append(d.problems, problem{key: prefix, line: k.Line, col: k.Column, msg: "want a key, got " + describe(k)})
		return "", false
	}
	full := join(prefix, k.Value)
	if e.merged {
		if _, ok := d.lines[full]; !ok {
			d.lines[full] = k
		}
		return full, true
	}
	if first, ok := seen[k.Value]; ok {
		d.problems = append(d.problems, problem{key: full, line: k.Line, col: k.Column, msg: "given twice", hint: fmt.Sprintf("first on line %d", first.Line)})
		return "", false
	}
	seen[k.Value] = k
	d.lines[full] = k
	return full, true
}

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, key string) {
	if n.Kind != yaml.MappingNode {
		d.bad(key, n, "", "want a mapping of keys to values, got %s", describe(n))
		return
	}
	fields := yamlFields(v.Type())
	seen := map[string]*yaml.Node{}
	for _, e := range entries(n) {
		full, ok := d.ownKey(e, key, seen)
		if !ok {
			continue
		}
		f, ok := fields[e.k.Value]
		if !ok {
			hint := ""
			if s := d.suggest(e.k.Value, key, slices.Sorted(maps.Keys(fields))); s != "" {
				hint = "did you mean " + s + "?"
			}
			d.bad(full, e.k, hint, "unknown key")
			continue
		}
		d.decode(e.v, v.FieldByIndex(f.Index), full)
	}
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, key string) {
	t := v.Type()
	if t.Key().Kind() != reflect.String {
		d.fallback(n, v, key)
		return
	}
	if n.Kind != yaml.MappingNode {
		d.bad(key, n, "", "want a mapping, got %s", describe(n))
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(t))
	}
	seen := map[string]*yaml.Node{}
	for _, e := range entries(n) {
		full, ok := d.ownKey(e, key, seen)
		if !ok {
			continue
		}
		ev := reflect.New(t.Elem()).Elem()
		if old := v.MapIndex(reflect.ValueOf(e.k.Value).Convert(t.Key())); old.IsValid() {
			ev.Set(old)
		}
		d.decode(e.v, ev, full)
		v.SetMapIndex(reflect.ValueOf(e.k.Value).Convert(t.Key()), ev)
	}
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, key string) {
	if n.Kind != yaml.SequenceNode {
		d.bad(key, n, `write [a, b], or one "- a" line per entry`, "want a list, got %s", describe(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, c := range n.Content {
		ek := fmt.Sprintf("%s[%d]", key, i)
		d.lines[ek] = c
		d.decode(c, s.Index(i), ek)
	}
	v.Set(s)
}

// field is a struct field that a YAML key decodes into.
type field struct {
	Index []int
	Type  reflect.Type
}

// yamlFields maps the YAML keys of struct type t to their fields, looking
// through inlined structs.
func yamlFields(t reflect.Type) map[string]field {
	out := map[string]field{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if slices.Contains(strings.Split(opts, ","), "inline") && f.Type.Kind() == reflect.Struct {
			for k, sub := range yamlFields(f.Type) {
				out[k] = field{Index: append([]int{i}, sub.Index...), Type: sub.Type}
			}
			continue
		}
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = field{Index: []int{i}, Type: f.Type}
	}
	return out
}

// keyPaths lists every full key of config type t: sections and their keys.
func keyPaths(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t == durationType {
		return nil
	}
	var out []string
	for name, f := range yamlFields(t) {
		out = append(out, join(prefix, name))
		out = append(out, keyPaths(f.Type, join(prefix, name))...)
	}
	slices.Sort(out)
	return out
}

// suggest returns the key an unknown key under prefix was probably meant
// to be: a key of the same section that is spelled alike (at most a third
// of its letters differ, or one is the other plus "_something"), else the
// key of that name in another section when at most three have it.
func (d *decoder) suggest(name, prefix string, known []string) string {
	lower := strings.ToLower(name)
	best, bestDist := "", 0
	for _, k := range known {
		dist := editDistance(lower, k)
		close := 3*dist <= max(len(lower), len(k)) ||
			len(lower) >= 3 && (strings.HasPrefix(k, lower+"_") || strings.HasPrefix(lower, k+"_"))
		if close && (best == "" || dist < bestDist) {
			best, bestDist = k, dist
		}
	}
	if best != "" {
		return join(prefix, best)
	}
	var elsewhere []string
	for _, k := range d.keys {
		if k == lower || strings.HasSuffix(k, "."+lower) {
			elsewhere = append(elsewhere, k)
		}
	}
	if len(elsewhere) > 0 && len(elsewhere) <= 3 {
		return strings.Join(elsewhere, " or ")
	}
	return ""
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// validated adds the errors of a Validate method, each "key: problem", with
// the key's line when it is in the file. A problem about a key whose value
// could not be decoded is left out: it would be about the default.
func (d *decoder) validated(err error) {
	for _, e := range flatten(err) {
		for line := range strings.SplitSeq(e.Error(), "\n") {
			key, msg, ok := strings.Cut(line, ": ")
			if !ok || strings.ContainsAny(key, " \t") {
				key, msg = "", line
			}
			if key != "" && d.failedAt(key) {
				continue
			}
			d.problems = append(d.problems, d.at(key, problem{key: key, msg: msg}))
		}
	}
}

// at places p where key is in the file, if it is.
func (d *decoder) at(key string, p problem) problem {
	if n, ok := d.lines[key]; ok {
		p.line, p.col = n.Line, n.Column
	}
	return p
}

func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// checkFiles reports every file named by a string key ending in _file
// (bigquery.credentials_file, TLS and token files) that does not exist or
// cannot be read, so a missing secret fails -check and the start, naming
// its key, rather than the first connection that needs it. The packages'
// Validate methods stay free of I/O; this is main's.
func (d *decoder) checkFiles(v reflect.Value, key string) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			d.checkFiles(v.Elem(), key)
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			d.checkFiles(v.Index(i), fmt.Sprintf("%s[%d]", key, i))
		}
	case reflect.Struct:
		for name, f := range yamlFields(v.Type()) {
			fv, full := v.FieldByIndex(f.Index), join(key, name)
			if fv.Kind() == reflect.String && strings.HasSuffix(name, "_file") {
				if path := fv.String(); path != "" && !d.failedAt(full) {
					if msg, hint := unreadable(path); msg != "" {
						d.problems = append(d.problems, d.at(full, problem{key: full, msg: msg, hint: hint}))
					}
				}
				continue
			}
			d.checkFiles(fv, full)
		}
	}
}

// checkContents reads the files that checkFiles found readable and
// reports what they hold that the daemon would refuse at start: a CA file
// without a PEM certificate, a client certificate and key that do not
// parse or do not belong together, a credentials file that is not one, an
// empty token or password file.
func (d *decoder) checkContents(cfg File) {
	readable := func(key, path string) bool {
		if path == "" || d.failedAt(key) {
			return false
		}
		msg, _ := unreadable(path)
		return msg == ""
	}
	for _, t := range []struct {
		prefix string
		on     bool
		files  tlsfiles.Files
	}{
		{"kafka.tls.", cfg.Kafka.TLS.Enabled, cfg.Kafka.TLS.Files()},
		{"schema_registry.tls.", true, cfg.SchemaRegistry.TLS},
	} {
		f := t.files
		if !t.on {
			continue
		}
		if !readable(t.prefix+"ca_file", f.CAFile) {
			f.CAFile = ""
		}
		if !readable(t.prefix+"cert_file", f.CertFile) || !readable(t.prefix+"key_file", f.KeyFile) {
			f.CertFile, f.KeyFile = "", ""
		}
		for _, err := range f.Check(t.prefix) {
			ke, ok := errors.AsType[*tlsfiles.KeyError](err)
			if !ok {
				continue // Check returns only KeyErrors
			}
			line, msg := t.prefix+"ca_file", ke.Err.Error()
			if ke.Problem != "" { // the certificate and key
				line, msg = t.prefix+"cert_file", ke.Problem+": "+msg
			}
			d.problems = append(d.problems, d.at(line, problem{key: ke.Key, msg: msg}))
		}
	}
	if key := "bigquery.credentials_file"; readable(key, cfg.BigQuery.CredentialsFile) {
		if err := cfg.BigQuery.CheckFiles(); err != nil {
			msg := strings.TrimPrefix(err.Error(), "credentials_file: ")
			msg = strings.TrimPrefix(msg, "credentials_file ")
			d.problems = append(d.problems, d.at(key, problem{key: key, msg: msg}))
		}
	}
	for _, tf := range []struct{ key, path string }{
		{"kafka.sasl.token_file", cfg.Kafka.SASL.TokenFile},
		{"schema_registry.bearer_token_file", cfg.SchemaRegistry.BearerTokenFile},
	} {
		if !readable(tf.key, tf.path) {
			continue
		}
		if b, err := os.ReadFile(tf.path); err == nil && strings.TrimSpace(string(b)) == "" {
			d.problems = append(d.problems, d.at(tf.key, problem{key: tf.key, msg: fmt.Sprintf("%q is empty: it holds no token", tf.path)}))
		}
	}
	for _, pf := range []struct{ key, path string }{
		{"kafka.sasl.password_file", cfg.Kafka.SASL.PasswordFile},
		{"schema_registry.password_file", cfg.SchemaRegistry.PasswordFile},
	} {
		if !readable(pf.key, pf.path) {
			continue
		}
		// As the daemon reads it: less one trailing line ending.
		if b, err := os.ReadFile(pf.path); err == nil && tokenfile.PasswordOf(b) == "" {
			d.problems = append(d.problems, d.at(pf.key, problem{key: pf.key, msg: fmt.Sprintf("%q is empty: it holds no password", pf.path)}))
		}
	}
}

// unreadable says why the file at path cannot be read, or returns "" if it
// can. It reads at most one byte, and opens nothing but regular files (a
// FIFO would block).
func unreadable(path string) (msg, hint string) {
	if !filepath.IsAbs(path) {
		if wd, err := os.Getwd(); err == nil {
			hint = "relative to the working directory " + wd
		}
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Sprintf("%q does not exist", path), hint
	case err != nil:
		return fmt.Sprintf("%q cannot be read by uid %d: %v", path, os.Getuid(), errors.Unwrap(err)), hint
	case fi.IsDir():
		return fmt.Sprintf("%q is a directory, not a file", path), hint
	case !fi.Mode().IsRegular():
		return "", ""
	}
	f, err := os.Open(path)
	if err == nil {
		_, err = f.Read(make([]byte, 1))
		f.Close()
	}
	if err != nil && err != io.EOF {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Sprintf("%q cannot be read by uid %d: %v", path, os.Getuid(), err), hint
	}
	return "", ""
}

// Summary is the effective config as logged at startup: keys as in the
// file, defaults filled in, durations as text. A key declared Secret shows
// only whether it is set; one declared SecretURL loses the password a URL
// may carry.
func (c File) Summary() map[string]any {
	c.Config = c.Config.WithDefaults()
	secrets := map[string]keys.Key{}
	for _, k := range Keys() {
		if k.Secret || k.SecretURL {
			secrets[k.Path] = k
		}
	}
	return summarize(reflect.ValueOf(c), "", secrets).(map[string]any)
}

// summarize turns v, found at key, into what the startup log shows:
// structs and maps as maps keyed as in the file, everything else as its
// value.
func summarize(v reflect.Value, key string, secrets map[string]keys.Key) any {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	if k, ok := secrets[key]; ok {
		switch {
		case k.SecretURL:
			return redactURL(v.String())
		case v.IsZero():
			return ""
		}
		return "[redacted]"
	}
	switch {
	case v.Type() == durationType:
		return time.Duration(v.Int()).String()
	case v.Kind() != reflect.Struct && v.Type().Implements(stringerType):
		return v.Interface().(fmt.Stringer).String()
	case v.Kind() == reflect.Struct:
		out := map[string]any{}
		for name, f := range yamlFields(v.Type()) {
			out[name] = summarize(v.FieldByIndex(f.Index), join(key, name), secrets)
		}
		return out
	case v.Kind() == reflect.Map && v.Type().Key().Kind() == reflect.String:
		out := map[string]any{}
		for _, mk := range v.MapKeys() {
			out[mk.String()] = summarize(v.MapIndex(mk), join(key, mk.String()), secrets)
		}
		return out
	}
	return v.Interface()
}

// redactURL hides the password a URL may carry (https://user:xxxxx@host).
func redactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	return raw
}
