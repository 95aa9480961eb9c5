package main

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"reflect"
	"regexp"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"
	"gopkg.in/yaml.v3"

	"github.com/bqsink/bqsink/sink"
)

// config is the whole file: the sink's sections plus what main owns.
type config struct {
	sink.Config `yaml:",inline"`
	HTTP        struct {
		Listen string `yaml:"listen"`
	} `yaml:"http"`
	Log struct {
		Level string `yaml:"level"`
	} `yaml:"log"`
}

// loadConfig reads path, expands ${VAR} and ${VAR:-default} in its values
// from the environment, rejects unknown keys and reports every invalid key
// at once.
func loadConfig(path string) (config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return config{}, fmt.Errorf("read config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return config{}, fmt.Errorf("%s: %w", path, err)
	}
	cfg := config{Config: sink.DefaultConfig()}
	cfg.HTTP.Listen = ":8080"
	cfg.Log.Level = "info"
	if len(doc.Content) == 0 {
		return config{}, fmt.Errorf("%s: empty", path)
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return config{}, fmt.Errorf("%s: line %d: want a mapping of keys to values", path, root.Line)
	}
	if err := errors.Join(unknownKeys(root, reflect.TypeOf(cfg), "")...); err != nil {
		return config{}, fmt.Errorf("%s: unknown keys:\n%w", path, err)
	}
	if err := expandEnv(root, reflect.TypeOf(cfg), os.LookupEnv); err != nil {
		return config{}, fmt.Errorf("%s: %w", path, err)
	}
	if err := root.Decode(&cfg); err != nil {
		return config{}, fmt.Errorf("%s: %w", path, err)
	}
	if err := cfg.validate(); err != nil {
		return config{}, fmt.Errorf("%s: invalid config:\n%w", path, err)
	}
	return cfg, nil
}

func (c config) validate() error {
	var errs []error
	if err := c.Config.Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, _, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
		errs = append(errs, fmt.Errorf("http.listen: %q is not host:port", c.HTTP.Listen))
	}
	if _, err := zapcore.ParseLevel(c.Log.Level); err != nil {
		errs = append(errs, fmt.Errorf("log.level: %q is not debug, info, warn or error", c.Log.Level))
	}
	return indent(errors.Join(errs...))
}

// indent puts every problem on its own indented line.
func indent(err error) error {
	if err == nil {
		return nil
	}
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return errors.New(strings.Join(lines, "\n"))
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// expandEnv replaces ${VAR} and ${VAR:-default} in every scalar value of
// the tree, which decodes into a value of type t. It works on parsed
// values, so whatever a variable holds (a #, a leading *, a colon, "null")
// is taken as it is, never read as YAML: a value for a string key stays
// that string, a value for any other key is typed by what it expands to
// (250 for an int, 3s for a duration), quoted or not. An unset variable
// without a default is an error rather than an empty string: a silently
// empty password or broker list is worse than refusing to start.
func expandEnv(n *yaml.Node, t reflect.Type, lookup func(string) (string, bool)) error {
	var missing []string
	var walk func(n *yaml.Node, t reflect.Type)
	walk = func(n *yaml.Node, t reflect.Type) {
		for t != nil && t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch n.Kind {
		case yaml.ScalarNode:
			if !strings.Contains(n.Value, "${") {
				return
			}
			n.Value = envRef.ReplaceAllStringFunc(n.Value, func(m string) string {
				sub := envRef.FindStringSubmatch(m)
				name, hasDefault := sub[1], sub[2] != ""
				if v, ok := lookup(name); ok && (v != "" || !hasDefault) {
					return v
				}
				if hasDefault {
					return sub[3]
				}
				missing = append(missing, name)
				return ""
			})
			if t != nil && t.Kind() == reflect.String {
				n.Tag, n.Style = "!!str", yaml.DoubleQuotedStyle
			} else {
				n.Tag, n.Style = "", 0
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				var vt reflect.Type
				switch {
				case t == nil:
				case t.Kind() == reflect.Struct:
					vt, _ = fieldType(t, n.Content[i].Value)
				case t.Kind() == reflect.Map:
					vt = t.Elem()
				}
				walk(n.Content[i+1], vt)
			}
		case yaml.SequenceNode:
			var et reflect.Type
			if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
				et = t.Elem()
			}
			for _, c := range n.Content {
				walk(c, et)
			}
		default:
			for _, c := range n.Content {
				walk(c, t)
			}
		}
	}
	walk(n, t)
	if len(missing) > 0 {
		return fmt.Errorf("environment variables not set (use ${NAME:-default} for optional ones): %s", strings.Join(missing, ", "))
	}
	return nil
}

var durationType = reflect.TypeOf(time.Duration(0))

// unknownKeys lists the keys of mapping node n that struct type t has no
// field for, recursively, each named by its full key and line.
func unknownKeys(n *yaml.Node, t reflect.Type, prefix string) []error {
	var errs []error
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		ft, ok := fieldType(t, k.Value)
		if !ok {
			errs = append(errs, fmt.Errorf("  %s%s: unknown key (line %d)", prefix, k.Value, k.Line))
			continue
		}
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft != durationType && v.Kind == yaml.MappingNode {
			errs = append(errs, unknownKeys(v, ft, prefix+k.Value+".")...)
		}
	}
	return errs
}

// fieldType finds the field of struct t that YAML key name decodes into,
// looking through inlined structs.
func fieldType(t reflect.Type, name string) (reflect.Type, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if opts == "inline" {
			if ft, ok := fieldType(f.Type, name); ok {
				return ft, true
			}
			continue
		}
		if tag == "-" || !f.IsExported() {
			continue
		}
		if tag == "" {
			tag = strings.ToLower(f.Name)
		}
		if tag == name {
			return f.Type, true
		}
	}
	return nil, false
}

// summary is the effective config as logged at startup: keys as in the
// file, defaults filled in, durations as text. A field tagged
// secret:"true" shows only whether it is set; one tagged secret:"url"
// loses the password a URL may carry.
func (c config) summary() map[string]any {
	c.Config = c.Config.WithDefaults()
	return summarize(reflect.ValueOf(c))
}

func summarize(v reflect.Value) map[string]any {
	out := map[string]any{}
	t := v.Type()
	for i := range t.NumField() {
		f, fv := t.Field(i), v.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if opts == "inline" {
			maps.Copy(out, summarize(fv))
			continue
		}
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		switch {
		case f.Tag.Get("secret") == "true":
			out[name] = ""
			if !fv.IsZero() {
				out[name] = "[redacted]"
			}
		case f.Tag.Get("secret") == "url":
			out[name] = redactURL(fv.String())
		case fv.Type() == durationType:
			out[name] = time.Duration(fv.Int()).String()
		case fv.Kind() == reflect.Struct:
			out[name] = summarize(fv)
		default:
			out[name] = fv.Interface()
		}
	}
	return out
}
