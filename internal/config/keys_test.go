package config

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

var update = flag.Bool("update", false, "rewrite the README's configuration table from the declarations")

// leafKeys lists the dotted YAML keys of a config struct's leaves; a map
// (tables) counts as one key.
func leafKeys(t reflect.Type, prefix string) []string {
	var out []string
	for name, f := range yamlFields(t) {
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft != durationType && ft.Kind() != reflect.Map {
			// A section; table_defaults' partitioning is one key (none, or a mapping).
			if join(prefix, name) != "table_defaults.partitioning" {
				out = append(out, leafKeys(ft, join(prefix, name))...)
				continue
			}
		}
		out = append(out, join(prefix, name))
	}
	slices.Sort(out)
	return out
}

// Every key of the config file is declared once, and every declaration is
// a key of the file.
func TestEveryKeyDeclaredOnce(t *testing.T) {
	declared := map[string]int{}
	for _, k := range Keys() {
		declared[k.Path]++
		if _, ok := k.Field(reflect.ValueOf(File{})); !ok {
			t.Errorf("%s is declared but is not a key of the config", k.Path)
		}
		if k.Doc == "" {
			t.Errorf("%s has no doc", k.Path)
		}
	}
	fields := leafKeys(reflect.TypeFor[File](), "")
	if len(fields) < 60 {
		t.Fatalf("found only %d keys: %v", len(fields), fields)
	}
	for _, key := range fields {
		if declared[key] != 1 {
			t.Errorf("%s is declared %d times, want once", key, declared[key])
		}
	}
}

// readmeTable renders the README's configuration table from the
// declarations.
func readmeTable() string {
	var b strings.Builder
	b.WriteString("| key | default | meaning |\n|---|---|---|\n")
	for _, k := range Keys() {
		f, _ := k.Field(reflect.ValueOf(File{}))
		b.WriteString("| `" + k.Path + "` | " + k.DefaultCell(f.Type()) + " | " + k.Doc + " |\n")
	}
	return b.String()
}

// The README's Configuration table is the declarations, rendered: `go test
// ./internal/config -run TestREADMEConfigTable -update` rewrites it after a
// declaration changed.
func TestREADMEConfigTable(t *testing.T) {
	const path = "../../README.md"
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	begin := strings.Index(readme, "<!-- config:begin")
	end := strings.Index(readme, "<!-- config:end -->")
	if begin < 0 || end < begin {
		t.Fatal("README.md lacks the <!-- config:begin --> ... <!-- config:end --> markers around the configuration table")
	}
	start := begin + strings.Index(readme[begin:], "-->\n") + len("-->\n")
	want := readmeTable()
	if got := readme[start:end]; got != want {
		if *update {
			if err := os.WriteFile(path, []byte(readme[:start]+want+readme[end:]), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		gotLines, wantLines := strings.Split(got, "\n"), strings.Split(want, "\n")
		for i := range max(len(gotLines), len(wantLines)) {
			var g, w string
			if i < len(gotLines) {
				g = gotLines[i]
			}
			if i < len(wantLines) {
				w = wantLines[i]
			}
			if g != w {
				t.Errorf("README's configuration table differs from the declarations at row %d:\nREADME:       %s\ndeclarations: %s\n(go test ./internal/config -run TestREADMEConfigTable -update rewrites it)", i, g, w)
				break
			}
		}
	}
}

// yamlKeysOf lists the dotted keys a YAML document sets (a mapping under a
// declared key that is a map, or a partitioning, counts as that key).
func yamlHas(doc map[string]any, path string) bool {
	var v any = doc
	for part := range strings.SplitSeq(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return false
		}
		if v, ok = m[part]; !ok {
			return false
		}
	}
	return true
}

// yamlLeaves lists the dotted paths of a YAML document's leaves.
func yamlLeaves(v any, prefix string) []string {
	m, ok := v.(map[string]any)
	if !ok || len(m) == 0 {
		return []string{prefix}
	}
	var out []string
	for k, sub := range m {
		out = append(out, yamlLeaves(sub, join(prefix, k))...)
	}
	return out
}

// declared reports whether path is a declared key or lies under one (a
// topic of tables, a key of table_defaults.partitioning).
func declared(path string) bool {
	for _, k := range Keys() {
		if path == k.Path || strings.HasPrefix(path, k.Path+".") {
			return true
		}
	}
	return false
}

// localStack are the keys config.yaml sets to the local stack of `go run
// ./integration/demo -serve` rather than to their defaults.
var localStack = []string{"bigquery.endpoint", "bigquery.grpc_endpoint", "tables"}

// config.yaml, the file a user starts from, lists every key once with its
// default, but for the required keys and the local stack's endpoints; it,
// the production example and the ConfigMap (its copy) set no key that is
// not declared.
func TestConfigFilesListEveryDeclaredKey(t *testing.T) {
	read := func(path string) map[string]any {
		t.Helper()
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return doc
	}
	files := map[string]map[string]any{
		"config.yaml":                read("../../config.yaml"),
		"deploy/config.example.yaml": read("../../deploy/config.example.yaml"),
	}
	// Each Kubernetes overlay's config, which its configMapGenerator turns
	// into the ConfigMap.
	overlays, err := filepath.Glob("../../deploy/kubernetes/overlays/*/config.yaml")
	if err != nil || len(overlays) == 0 {
		t.Fatalf("no overlay config.yaml under deploy/kubernetes/overlays (%v)", err)
	}
	for _, path := range overlays {
		files[strings.TrimPrefix(path, "../../")] = read(path)
	}
	for name, doc := range files {
		for _, path := range yamlLeaves(doc, "") {
			if !declared(path) {
				t.Errorf("%s sets %s, which is not a declared key", name, path)
			}
		}
	}
	for _, k := range Keys() {
		if !yamlHas(files["config.yaml"], k.Path) {
			t.Errorf("config.yaml does not list %s", k.Path)
		}
	}

	cfg, err := Load("../../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	def := defaults()
	for _, k := range Keys() {
		if k.Required || slices.Contains(localStack, k.Path) {
			continue
		}
		got, _ := k.Field(reflect.ValueOf(cfg))
		want, _ := k.Field(reflect.ValueOf(def))
		if k.Computed != "" && (got.IsZero() || spelled(got) == k.Computed) {
			continue // left to its owner, or spelled as the README shows it
		}
		if !reflect.DeepEqual(got.Interface(), want.Interface()) && !(got.Len() == 0 && want.Len() == 0 && lenable(got)) {
			t.Errorf("config.yaml sets %s to %v; its default is %v", k.Path, show(got), show(want))
		}
	}
}

// spelled is a string, or a list of one, as written in YAML.
func spelled(v reflect.Value) string {
	if v.Kind() == reflect.Slice && v.Len() == 1 {
		v = v.Index(0)
	}
	if v.Kind() == reflect.String {
		return v.String()
	}
	return ""
}

func lenable(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Map, reflect.Slice, reflect.String:
		return true
	}
	return false
}

func show(v reflect.Value) any {
	if v.Type() == durationType {
		return time.Duration(v.Int())
	}
	return v.Interface()
}

// Defaults are applied from the declarations: a config that sets nothing
// runs with what the README's table says.
func TestDefaultsFollowTheDeclarations(t *testing.T) {
	cfg := defaults()
	cfg.Config = cfg.Config.WithDefaults()
	for _, k := range Keys() {
		if k.Default == "" {
			continue
		}
		f, _ := k.Field(reflect.ValueOf(cfg))
		var want any
		switch {
		case f.Type() == durationType:
			d, _ := time.ParseDuration(k.Default)
			want = d
		default:
			n := reflect.New(f.Type())
			if err := yaml.Unmarshal([]byte(k.Default), n.Interface()); err != nil {
				t.Fatalf("%s: default %q: %v", k.Path, k.Default, err)
			}
			want = n.Elem().Interface()
		}
		if got := f.Interface(); !reflect.DeepEqual(got, want) {
			t.Errorf("%s defaults to %v, declared %q", k.Path, got, k.Default)
		}
	}
	if cfg.Errors.DLQTopic != ".dlq" {
		t.Errorf("errors.dlq_topic defaults to %q, want <group_id>.dlq", cfg.Errors.DLQTopic)
	}
}
