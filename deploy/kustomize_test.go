package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// overlaysDir holds one directory per supported setup; every one is built
// and checked.
const overlaysDir = "kubernetes/overlays"

// networkPolicyComponent is the example no overlay includes; the tests
// build it onto an overlay of their own (TestNetworkPolicy).
var networkPolicyComponent = filepath.Join("kubernetes", "components", "network-policy")

// build runs kustomize on dir as `kubectl apply -k` would (its default
// options: files only from within each kustomization's own directory, no
// plugins) and splits the output into manifests.
func build(dir string) ([]manifest, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	return splitManifests(dir+" (built)", out)
}

var (
	setupsOnce sync.Once
	builtSetup []setup
	setupsErr  error
)

// setups builds, once per test run, monitoring/ and every overlay, and
// files each overlay's output with monitoring/'s, the Namespace and the
// Secret examples the overlay and its components ask to create by hand.
func setups(t *testing.T) []setup {
	t.Helper()
	setupsOnce.Do(func() {
		builtSetup, setupsErr = buildSetups()
	})
	if setupsErr != nil {
		t.Fatal(setupsErr)
	}
	return builtSetup
}

func buildSetups() ([]setup, error) {
	monitoring, err := build("monitoring")
	if err != nil {
		return nil, err
	}
	ns, err := readFileManifests(namespaceFile)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(overlaysDir)
	if err != nil {
		return nil, err
	}
	var out []setup
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(overlaysDir, e.Name())
		s, err := buildSetup(dir, monitoring, ns)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no overlays under %s", overlaysDir)
	}
	return out, nil
}

// buildSetup builds one overlay and files it with the rest of its setup.
func buildSetup(dir string, monitoring, ns []manifest) (setup, error) {
	ms, err := build(dir)
	if err != nil {
		return setup{}, err
	}
	ms = append(ms, monitoring...)
	ms = append(ms, ns...)
	secrets, err := secretExamples(dir)
	if err != nil {
		return setup{}, err
	}
	for _, f := range secrets {
		sm, err := readFileManifests(f)
		if err != nil {
			return setup{}, err
		}
		ms = append(ms, sm...)
	}
	d, err := file(ms)
	if err != nil {
		return setup{}, fmt.Errorf("%s: %w", dir, err)
	}
	d.overlay = dir
	cfg := configDoc{file: dir + "/config.yaml (in ConfigMap " + d.configMap.Name + ")", raw: []byte(d.configMap.Data["config.yaml"])}
	if err := yaml.Unmarshal(cfg.raw, &cfg.tree); err != nil {
		return setup{}, fmt.Errorf("%s: %v", cfg.file, err)
	}
	return setup{name: filepath.Base(dir), d: d, cfg: cfg}, nil
}

// secretExamples lists the Secret examples of an overlay and of the
// components it includes (recursively): the Secrets its steps create.
func secretExamples(dir string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	var walk func(dir string) error
	walk = func(dir string) error {
		dir = filepath.Clean(dir)
		if seen[dir] {
			return nil
		}
		seen[dir] = true
		if f := filepath.Join(dir, secretExample); fileExists(f) {
			out = append(out, f)
		}
		b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
		if err != nil {
			return err
		}
		var k struct {
			Resources  []string `json:"resources"`
			Components []string `json:"components"`
		}
		if err := yaml.Unmarshal(b, &k); err != nil {
			return fmt.Errorf("%s/kustomization.yaml: %v", dir, err)
		}
		for _, r := range slices.Concat(k.Resources, k.Components) {
			if p := filepath.Join(dir, r); isDir(p) {
				if err := walk(p); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return out, walk(dir)
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func readFileManifests(f string) ([]manifest, error) {
	b, err := os.ReadFile(f)
	if err != nil {
		return nil, err
	}
	return splitManifests(f, b)
}

// forEachSetup runs check as a subtest per overlay, on its built output.
func forEachSetup(t *testing.T, check func(t *testing.T, s setup)) {
	t.Helper()
	for _, s := range setups(t) {
		t.Run(s.name, func(t *testing.T) { check(t, s) })
	}
}

// monitoringFiles is what monitoring/ builds to, with the Secrets and
// ServiceMonitor of the first overlay: the rule and dashboard checks need
// only these.
func monitoringFiles(t *testing.T) deployFiles {
	t.Helper()
	return setups(t)[0].d
}
