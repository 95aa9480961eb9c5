package deploy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite kubernetes/configmap.yaml and the Deployment's config checksum from config.example.yaml")

// manifest is one YAML document of a file under kubernetes/ or monitoring/.
type manifest struct {
	file       string // relative to deploy/
	index      int    // document number in the file, from 0
	raw        []byte
	apiVersion string
	kind       string
	name       string
}

func (m manifest) String() string {
	return fmt.Sprintf("%s#%d (%s %s)", m.file, m.index, m.kind, m.name)
}

// readManifests reads every document of every .yaml file in dir, except
// kustomization.yaml.
func readManifests(t *testing.T, dir string) []manifest {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out []manifest
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
		for i := 0; ; i++ {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
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
				t.Fatalf("%s#%d: %v", f, i, err)
			}
			out = append(out, manifest{file: f, index: i, raw: doc, apiVersion: head.APIVersion, kind: head.Kind, name: head.Metadata.Name})
		}
	}
	return out
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
	"v1/Namespace":                  func() any { return new(corev1.Namespace) },
	"v1/ServiceAccount":             func() any { return new(corev1.ServiceAccount) },
	"v1/ConfigMap":                  func() any { return new(corev1.ConfigMap) },
	"v1/Secret":                     func() any { return new(corev1.Secret) },
	"v1/Service":                    func() any { return new(corev1.Service) },
	"apps/v1/Deployment":            func() any { return new(appsv1.Deployment) },
	"policy/v1/PodDisruptionBudget": func() any { return new(policyv1.PodDisruptionBudget) },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return new(serviceMonitor) },
	"monitoring.coreos.com/v1/PrometheusRule": func() any { return new(prometheusRule) },
	"keda.sh/v1alpha1/ScaledObject":           func() any { return new(scaledObject) },
	"keda.sh/v1alpha1/TriggerAuthentication":  func() any { return new(triggerAuthentication) },
}

// deployFiles is every manifest of kubernetes/ and monitoring/, each decoded.
type deployFiles struct {
	all            []manifest
	namespace      *corev1.Namespace
	serviceAccount *corev1.ServiceAccount
	configMap      *corev1.ConfigMap
	secrets        map[string]*corev1.Secret
	deployment     *appsv1.Deployment
	service        *corev1.Service
	pdb            *policyv1.PodDisruptionBudget
	serviceMonitor *serviceMonitor
	rule           *prometheusRule
	scaledObject   *scaledObject
	triggerAuth    *triggerAuthentication
}

// load decodes every manifest strictly and files each by kind; a kind that
// appears twice (other than Secret) is an error, as the checks assume one.
func load(t *testing.T) deployFiles {
	t.Helper()
	d := deployFiles{secrets: map[string]*corev1.Secret{}}
	d.all = append(readManifests(t, "kubernetes"), readManifests(t, "monitoring")...)
	seen := map[string]manifest{}
	for _, m := range d.all {
		key := m.apiVersion + "/" + m.kind
		mk, ok := kinds[key]
		if !ok {
			t.Fatalf("%s: no type to check %s against; add one to kinds", m, key)
		}
		if prev, dup := seen[key]; dup && m.kind != "Secret" {
			t.Fatalf("%s: a second %s (first in %s); the checks assume one", m, m.kind, prev)
		}
		seen[key] = m
		v := mk()
		if err := decodeStrict(m, v); err != nil {
			t.Fatal(err)
		}
		switch v := v.(type) {
		case *corev1.Namespace:
			d.namespace = v
		case *corev1.ServiceAccount:
			d.serviceAccount = v
		case *corev1.ConfigMap:
			d.configMap = v
		case *corev1.Secret:
			d.secrets[v.Name] = v
		case *appsv1.Deployment:
			d.deployment = v
		case *corev1.Service:
			d.service = v
		case *policyv1.PodDisruptionBudget:
			d.pdb = v
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
	for what, missing := range map[string]bool{
		"Namespace": d.namespace == nil, "ServiceAccount": d.serviceAccount == nil, "ConfigMap": d.configMap == nil,
		"Secret": len(d.secrets) == 0, "Deployment": d.deployment == nil, "Service": d.service == nil,
		"PodDisruptionBudget": d.pdb == nil, "ServiceMonitor": d.serviceMonitor == nil, "PrometheusRule": d.rule == nil,
		"ScaledObject": d.scaledObject == nil, "TriggerAuthentication": d.triggerAuth == nil,
	} {
		if missing {
			t.Errorf("no %s among the deploy files", what)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return d
}

// TestManifestsDecodeStrictly decodes every document under kubernetes/ and
// monitoring/ into its Kubernetes API type (or our mirror of a CRD's),
// refusing unknown fields: a typo such as readinessProbe.periodSecond or a
// field at the wrong level fails here instead of being dropped by the API
// server.
func TestManifestsDecodeStrictly(t *testing.T) {
	d := load(t)
	for _, m := range d.all {
		t.Logf("%s: ok", m)
	}
}

// kustomization mirrors the fields of kustomize's Kustomization that the
// deploy files use (kustomize.config.k8s.io/v1beta1); others are errors.
type kustomization struct {
	APIVersion         string   `json:"apiVersion"`
	Kind               string   `json:"kind"`
	Namespace          string   `json:"namespace,omitempty"`
	Resources          []string `json:"resources,omitempty"`
	ConfigMapGenerator []struct {
		Name    string   `json:"name"`
		Files   []string `json:"files,omitempty"`
		Options *struct {
			Labels                map[string]string `json:"labels,omitempty"`
			DisableNameSuffixHash bool              `json:"disableNameSuffixHash,omitempty"`
		} `json:"options,omitempty"`
	} `json:"configMapGenerator,omitempty"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
}

func readKustomization(t *testing.T, dir string) kustomization {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := decodeStrict(manifest{file: filepath.Join(dir, "kustomization.yaml"), raw: b, kind: "Kustomization"}, &k); err != nil {
		t.Fatal(err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Fatalf("%s/kustomization.yaml: apiVersion %q kind %q", dir, k.APIVersion, k.Kind)
	}
	return k
}

// secretExamples are the files kubectl apply -k must not apply: they hold
// placeholders that would overwrite real credentials.
var secretExamples = []string{"secret.example.yaml"}

// TestKustomizationsListEveryManifest checks that kubectl apply -k applies
// every manifest of its directory (except the Secret example, on purpose),
// that every listed file exists, that everything lands in the namespace the
// Secret example names, and that the image kustomize rewrites is the
// Deployment's.
func TestKustomizationsListEveryManifest(t *testing.T) {
	d := load(t)
	for _, dir := range []string{"kubernetes", "monitoring"} {
		k := readKustomization(t, dir)
		listed := map[string]bool{}
		for _, r := range k.Resources {
			listed[r] = true
			if _, err := os.Stat(filepath.Join(dir, r)); err != nil {
				t.Errorf("%s/kustomization.yaml lists %s: %v", dir, r, err)
			}
		}
		for _, g := range k.ConfigMapGenerator {
			for _, f := range g.Files {
				listed[f] = true
				if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
					t.Errorf("%s/kustomization.yaml generates %s from %s: %v", dir, g.Name, f, err)
				}
			}
		}
		files, _ := filepath.Glob(filepath.Join(dir, "*"))
		for _, f := range files {
			base := filepath.Base(f)
			if base == "kustomization.yaml" || slices.Contains(secretExamples, base) {
				if listed[base] {
					t.Errorf("%s/kustomization.yaml applies %s, which holds placeholder credentials", dir, base)
				}
				continue
			}
			if !listed[base] {
				t.Errorf("%s/%s is not in %s/kustomization.yaml: kubectl apply -k would skip it", dir, base, dir)
			}
		}
		if k.Namespace != d.namespace.Name {
			t.Errorf("%s/kustomization.yaml: namespace %q, want %q (namespace.yaml)", dir, k.Namespace, d.namespace.Name)
		}
		if dir == "kubernetes" {
			image := d.deployment.Spec.Template.Spec.Containers[0].Image
			if len(k.Images) != 1 || k.Images[0].Name != image {
				t.Errorf("kubernetes/kustomization.yaml images %+v: want one entry named %q (the Deployment's image)", k.Images, image)
			}
		}
	}
	for _, s := range d.secrets {
		if s.Namespace != d.namespace.Name {
			t.Errorf("Secret %s: namespace %q, want %q: it is applied by hand, not by kustomize", s.Name, s.Namespace, d.namespace.Name)
		}
	}
}

const configMapHeader = `# Generated from deploy/config.example.yaml: edit that file, then run
#   go test -run TestConfigMap -update    (in deploy/)
# which rewrites this file and the Deployment's bqsink/config-sha256.
apiVersion: v1
kind: ConfigMap
metadata:
  name: bqsink-config
  labels:
    app.kubernetes.io/name: bqsink
data:
  config.yaml: |
`

var checksumLine = regexp.MustCompile(`(?m)^(\s*bqsink/config-sha256: )\S*$`)

// TestConfigMapMatchesExample checks that the ConfigMap carries exactly
// config.example.yaml (the file the README's docker run mounts) and that
// the pod template's checksum annotation is that file's sha256, so that a
// config change rolls the pods. With -update it rewrites both.
func TestConfigMapMatchesExample(t *testing.T) {
	example, err := os.ReadFile("config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(example)
	want := hex.EncodeToString(sum[:])
	if *update {
		var b strings.Builder
		b.WriteString(configMapHeader)
		for line := range strings.Lines(string(example)) {
			if strings.TrimSpace(line) == "" {
				b.WriteString("\n")
				continue
			}
			b.WriteString("    " + line)
		}
		if err := os.WriteFile("kubernetes/configmap.yaml", []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		dep, err := os.ReadFile("kubernetes/deployment.yaml")
		if err != nil {
			t.Fatal(err)
		}
		if !checksumLine.Match(dep) {
			t.Fatal("kubernetes/deployment.yaml has no bqsink/config-sha256 annotation to update")
		}
		dep = checksumLine.ReplaceAll(dep, []byte("${1}"+want))
		if err := os.WriteFile("kubernetes/deployment.yaml", dep, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d := load(t)
	if got := d.configMap.Data["config.yaml"]; got != string(example) {
		t.Errorf("ConfigMap %s's config.yaml differs from config.example.yaml; run go test -run TestConfigMap -update", d.configMap.Name)
	}
	if len(d.configMap.Data) != 1 || len(d.configMap.BinaryData) != 0 {
		t.Errorf("ConfigMap %s: want only config.yaml", d.configMap.Name)
	}
	if got := d.deployment.Spec.Template.Annotations["bqsink/config-sha256"]; got != want {
		t.Errorf("Deployment's bqsink/config-sha256 is %q, want %q (sha256 of config.example.yaml); run go test -run TestConfigMap -update", got, want)
	}
}
