package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/yaml"
)

// manifest is one YAML document: of a file under kubernetes/ or
// monitoring/, or of what kustomize built from a directory.
type manifest struct {
	file       string // relative to deploy/; a built directory's name ends in " (built)"
	index      int    // document number in the file, from 0
	raw        []byte
	apiVersion string
	kind       string
	name       string
}

func (m manifest) String() string {
	return fmt.Sprintf("%s#%d (%s %s)", m.file, m.index, m.kind, m.name)
}

// readManifests reads every document of a YAML file.
func readManifests(t *testing.T, file string) []manifest {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := splitManifests(file, b)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// splitManifests splits a YAML stream into its documents.
func splitManifests(file string, b []byte) ([]manifest, error) {
	var out []manifest
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", file, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return nil, fmt.Errorf("%s#%d: %v", file, i, err)
		}
		out = append(out, manifest{file: file, index: i, raw: doc, apiVersion: head.APIVersion, kind: head.Kind, name: head.Metadata.Name})
	}
	return out, nil
}

func stripComments(b []byte) []byte {
	var out []byte
	for line := range bytes.Lines(b) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line...)
		}
	}
	return out
}

// decodeStrict decodes a manifest into v, refusing unknown and duplicate
// fields, and checks its apiVersion and kind.
//
// It converts the YAML to JSON as kubectl does before sending it, with no
// regard for the target type (so an unquoted true or 5000 where the API
// wants a string fails here as it fails there; sigs.k8s.io/yaml's Unmarshal
// would quietly turn it into a string), then decodes the JSON refusing
// unknown fields.
func decodeStrict(m manifest, v any) error {
	j, err := yaml.YAMLToJSONStrict(m.raw)
	if err != nil {
		return fmt.Errorf("%s: %w", m, err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", m, err)
	}
	return nil
}

// kinds maps each apiVersion and kind the deploy files may hold to a new
// value of the type it decodes strictly into. Anything else is an error:
// a new kind needs a type here first.
var kinds = map[string]func() any{
	"v1/Namespace":                            func() any { return new(corev1.Namespace) },
	"v1/ServiceAccount":                       func() any { return new(corev1.ServiceAccount) },
	"v1/ConfigMap":                            func() any { return new(corev1.ConfigMap) },
	"v1/Secret":                               func() any { return new(corev1.Secret) },
	"v1/Service":                              func() any { return new(corev1.Service) },
	"apps/v1/Deployment":                      func() any { return new(appsv1.Deployment) },
	"policy/v1/PodDisruptionBudget":           func() any { return new(policyv1.PodDisruptionBudget) },
	"networking.k8s.io/v1/NetworkPolicy":      func() any { return new(networkingv1.NetworkPolicy) },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return new(serviceMonitor) },
	"monitoring.coreos.com/v1/PrometheusRule": func() any { return new(prometheusRule) },
	"keda.sh/v1alpha1/ScaledObject":           func() any { return new(scaledObject) },
	"keda.sh/v1alpha1/TriggerAuthentication":  func() any { return new(triggerAuthentication) },
}

// configMapName is the name of bqsink's config ConfigMap before kustomize
// appends the content hash.
const configMapName = "bqsink-config"

// deployFiles is one setup as a cluster receives it: what kustomize builds
// from one overlay, what it builds from monitoring/, the Secret examples the
// overlay's README steps create by hand, and the Namespace created first.
// Each document is decoded strictly.
type deployFiles struct {
	overlay        string // its directory, relative to deploy/
	all            []manifest
	namespace      *corev1.Namespace
	serviceAccount *corev1.ServiceAccount
	configMap      *corev1.ConfigMap // bqsink's config
	dashboard      *corev1.ConfigMap
	secrets        map[string]*corev1.Secret
	deployment     *appsv1.Deployment
	service        *corev1.Service
	pdb            *policyv1.PodDisruptionBudget
	networkPolicy  *networkingv1.NetworkPolicy // only where a component adds it
	serviceMonitor *serviceMonitor
	rule           *prometheusRule
	scaledObject   *scaledObject
	triggerAuth    *triggerAuthentication
}

// file decodes the manifests strictly and files each by kind; a kind that
// appears twice (other than Secret, and ConfigMap for the config and the
// dashboard) is an error, as the checks assume one.
func file(ms []manifest) (deployFiles, error) {
	d := deployFiles{secrets: map[string]*corev1.Secret{}}
	d.all = ms
	seen := map[string]manifest{}
	for _, m := range ms {
		key := m.apiVersion + "/" + m.kind
		mk, ok := kinds[key]
		if !ok {
			return d, fmt.Errorf("%s: no type to check %s against; add one to kinds", m, key)
		}
		dupKey := key
		if m.kind == "ConfigMap" {
			dupKey += "/" + m.name
		}
		if prev, dup := seen[dupKey]; dup && m.kind != "Secret" {
			return d, fmt.Errorf("%s: a second %s (first in %s); the checks assume one", m, m.kind, prev)
		}
		seen[dupKey] = m
		v := mk()
		if err := decodeStrict(m, v); err != nil {
			return d, err
		}
		switch v := v.(type) {
		case *corev1.Namespace:
			d.namespace = v
		case *corev1.ServiceAccount:
			d.serviceAccount = v
		case *corev1.ConfigMap:
			if strings.HasPrefix(v.Name, configMapName) {
				if d.configMap != nil {
					return d, fmt.Errorf("%s: a second config ConfigMap", m)
				}
				d.configMap = v
			} else {
				d.dashboard = v
			}
		case *corev1.Secret:
			if _, dup := d.secrets[v.Name]; dup {
				return d, fmt.Errorf("%s: Secret %s defined twice", m, v.Name)
			}
			d.secrets[v.Name] = v
		case *appsv1.Deployment:
			d.deployment = v
		case *corev1.Service:
			d.service = v
		case *policyv1.PodDisruptionBudget:
			d.pdb = v
		case *networkingv1.NetworkPolicy:
			d.networkPolicy = v
		case *serviceMonitor:
			d.serviceMonitor = v
		case *prometheusRule:
			d.rule = v
		case *scaledObject:
			d.scaledObject = v
		case *triggerAuthentication:
			d.triggerAuth = v
		}
	}
	var missing []string
	for what, none := range map[string]bool{
		"Namespace": d.namespace == nil, "ServiceAccount": d.serviceAccount == nil, "config ConfigMap": d.configMap == nil,
		"dashboard ConfigMap": d.dashboard == nil, "Secret": len(d.secrets) == 0, "Deployment": d.deployment == nil,
		"Service": d.service == nil, "PodDisruptionBudget": d.pdb == nil, "ServiceMonitor": d.serviceMonitor == nil,
		"PrometheusRule": d.rule == nil, "ScaledObject": d.scaledObject == nil, "TriggerAuthentication": d.triggerAuth == nil,
	} {
		if none {
			missing = append(missing, what)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return d, fmt.Errorf("no %s", strings.Join(missing, ", "))
	}
	return d, nil
}

// setup is one overlay, built, with the config its ConfigMap carries.
type setup struct {
	name string // the overlay's directory name
	d    deployFiles
	cfg  configDoc
}

// TestManifestsDecodeStrictly builds every overlay and monitoring/ with
// kustomize and decodes every document they produce (and every Secret
// example, and the Namespace) into its Kubernetes API type (or our mirror
// of a CRD's), refusing unknown fields: a typo such as
// readinessProbe.periodSecond or a field at the wrong level fails here
// instead of being dropped by the API server.
func TestManifestsDecodeStrictly(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		for _, m := range s.d.all {
			t.Logf("%s: ok", m)
		}
	})
}

// namespaceFile is created by hand before anything else (README,
// "Kubernetes"): no kustomization holds it, so `kubectl delete -k` of an
// overlay never deletes the namespace and the Secrets in it.
const namespaceFile = "kubernetes/namespace.yaml"

// secretExample is the file name of a directory's Secret example: created
// by hand, never listed in a kustomization, so that applying never
// overwrites real credentials.
const secretExample = "secret.example.yaml"

// kustomizationDirs lists every directory under kubernetes/ and monitoring/
// that holds a kustomization.yaml.
func kustomizationDirs(t *testing.T) []string {
	t.Helper()
	var dirs []string
	for _, root := range []string{"kubernetes", "monitoring"} {
		err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !e.IsDir() && e.Name() == "kustomization.yaml" {
				dirs = append(dirs, filepath.Dir(p))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return dirs
}

// readKustomization reads a kustomization.yaml (or a Component's) strictly
// into kustomize's own type.
func readKustomization(t *testing.T, dir string) *types.Kustomization {
	t.Helper()
	f := filepath.Join(dir, "kustomization.yaml")
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		t.Fatalf("%s: %v", f, err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	var k types.Kustomization
	if err := dec.Decode(&k); err != nil {
		t.Fatalf("%s: %v", f, err)
	}
	return &k
}

// TestKustomizationsListEveryFile checks that every file beside a
// kustomization.yaml is used by it (a resource, a patch, a generator's
// file, a transformer's config), except the Secret examples, which must
// not be; that no kustomization creates a Namespace; that every component
// is used; and that every overlay sets the namespace the Namespace file and
// its Secret examples name, and the Deployment's image.
func TestKustomizationsListEveryFile(t *testing.T) {
	ns := readManifests(t, namespaceFile)
	if len(ns) != 1 || ns[0].kind != "Namespace" {
		t.Fatalf("%s: want one Namespace", namespaceFile)
	}
	used := map[string]bool{}
	for _, dir := range kustomizationDirs(t) {
		k := readKustomization(t, dir)
		named := map[string]bool{}
		for _, r := range k.Resources {
			named[r] = true
		}
		for _, p := range k.Patches {
			named[p.Path] = true
		}
		for _, g := range k.ConfigMapGenerator {
			for _, f := range g.FileSources {
				if _, file, ok := strings.Cut(f, "="); ok {
					f = file
				}
				named[f] = true
			}
		}
		for _, tr := range k.Transformers {
			named[tr] = true
		}
		for _, c := range k.Components {
			used[filepath.Clean(filepath.Join(dir, c))] = true
		}
		for _, r := range k.Resources {
			if strings.HasPrefix(r, "..") {
				used[filepath.Clean(filepath.Join(dir, r))] = true
			}
		}
		files, _ := os.ReadDir(dir)
		for _, f := range files {
			base := f.Name()
			if f.IsDir() || base == "kustomization.yaml" {
				continue
			}
			if base == secretExample {
				if named[base] {
					t.Errorf("%s/kustomization.yaml applies %s, which holds placeholder credentials", dir, base)
				}
				for _, m := range readManifests(t, filepath.Join(dir, base)) {
					if !strings.Contains(string(m.raw), "namespace: "+ns[0].name+"\n") {
						t.Errorf("%s: not in namespace %s: it is applied by hand, not by kustomize", m, ns[0].name)
					}
				}
				continue
			}
			if !named[base] {
				t.Errorf("%s/%s is not used by %s/kustomization.yaml", dir, base, dir)
			}
		}
		if strings.HasPrefix(dir, filepath.Join("kubernetes", "overlays")) {
			if k.Namespace != ns[0].name {
				t.Errorf("%s/kustomization.yaml: namespace %q, want %q (%s)", dir, k.Namespace, ns[0].name, namespaceFile)
			}
			if len(k.Images) != 1 || k.Images[0].Name != "bqsink" {
				t.Errorf("%s/kustomization.yaml images %+v: want one entry named bqsink (the base Deployment's image)", dir, k.Images)
			}
		}
	}
	for _, dir := range kustomizationDirs(t) {
		if strings.HasPrefix(dir, filepath.Join("kubernetes", "components")) && !used[dir] && dir != networkPolicyComponent {
			t.Errorf("component %s is used by no kustomization", dir)
		}
	}
	forEachSetup(t, func(t *testing.T, s setup) {
		for _, m := range s.d.all {
			if m.kind == "Namespace" && m.file != namespaceFile {
				t.Errorf("%s: a Namespace in a kustomization: kubectl delete -k would delete it with the Secrets in it", m)
			}
		}
	})
}

// TestConfigMapGenerated checks that each overlay's ConfigMap is generated
// from its config.yaml with a content hash in its name (so a config change
// rolls the pods), that the Deployment mounts that very name, and that the
// SCRAM overlay's config is config.example.yaml (the README's docker run
// mounts it).
func TestConfigMapGenerated(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		cm := s.d.configMap
		if cm.Name == configMapName || !strings.HasPrefix(cm.Name, configMapName+"-") {
			t.Errorf("ConfigMap %s: want %s-<content hash> (a configMapGenerator without disableNameSuffixHash)", cm.Name, configMapName)
		}
		if len(cm.Data) != 1 || len(cm.BinaryData) != 0 {
			t.Errorf("ConfigMap %s: want only config.yaml", cm.Name)
		}
		file, err := os.ReadFile(filepath.Join(s.d.overlay, "config.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if cm.Data["config.yaml"] != string(file) {
			t.Errorf("ConfigMap %s's config.yaml differs from %s/config.yaml", cm.Name, s.d.overlay)
		}
		mounted := false
		for _, v := range s.d.deployment.Spec.Template.Spec.Volumes {
			if v.ConfigMap != nil {
				if v.ConfigMap.Name != cm.Name {
					t.Errorf("volume %s mounts ConfigMap %s; the generated one is %s", v.Name, v.ConfigMap.Name, cm.Name)
				}
				mounted = true
			}
		}
		if !mounted {
			t.Error("the Deployment mounts no ConfigMap")
		}
	})
	example, err := os.ReadFile("config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	scram, err := os.ReadFile("kubernetes/overlays/scram-private-ca/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(example, scram) {
		t.Error("config.example.yaml differs from kubernetes/overlays/scram-private-ca/config.yaml: keep them the same (cp one to the other)")
	}
}
