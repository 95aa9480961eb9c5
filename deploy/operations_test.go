package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// releaseLabel is the label kube-prometheus-stack's Prometheus selects
// ServiceMonitors and PrometheusRules by (its Helm release name).
const releaseLabel = "release"

// TestMonitoringIsPickedUp checks what decides whether Prometheus and
// Grafana see bqsink under kube-prometheus-stack's defaults: the
// ServiceMonitor and the PrometheusRule carry the same release label (set
// once, by the prometheus-release component), and the dashboard ConfigMap
// carries the sidecar's label grafana_dashboard: "1" and lands in a
// namespace of its own choosing (Grafana's), not bqsink's.
func TestMonitoringIsPickedUp(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		d := s.d
		sm, rule := d.serviceMonitor.Metadata.Labels[releaseLabel], d.rule.Metadata.Labels[releaseLabel]
		if sm == "" || sm != rule {
			t.Errorf("label %s: ServiceMonitor %q, PrometheusRule %q: want both set, the same (kubernetes/components/prometheus-release)", releaseLabel, sm, rule)
		}
		if d.dashboard.Labels["grafana_dashboard"] != "1" {
			t.Errorf("dashboard ConfigMap %s: labels %v, want grafana_dashboard: \"1\" (the sidecar's default label)", d.dashboard.Name, d.dashboard.Labels)
		}
		if d.dashboard.Namespace == "" || d.dashboard.Namespace == d.namespace.Name {
			t.Errorf("dashboard ConfigMap %s: namespace %q: Grafana's sidecar looks in Grafana's namespace only, by default", d.dashboard.Name, d.dashboard.Namespace)
		}
		if d.rule.Metadata.Namespace != d.namespace.Name {
			t.Errorf("PrometheusRule: namespace %q, want bqsink's, %q", d.rule.Metadata.Namespace, d.namespace.Name)
		}
		if d.serviceMonitor.Metadata.Labels[releaseLabel] != "" {
			for _, m := range d.all {
				if strings.Contains(string(m.raw), releaseLabel+": ") && m.kind != "ServiceMonitor" && m.kind != "PrometheusRule" {
					t.Errorf("%s carries label %s: only the ServiceMonitor and PrometheusRule should", m, releaseLabel)
				}
			}
		}
	})
}

// githubAnchor is the anchor GitHub gives a Markdown heading.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9'):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// runbookEntries returns the headings of the README's Runbooks section.
func runbookEntries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var entries []string
	in := false
	for line := range strings.Lines(string(b)) {
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "### Runbooks":
			in = true
		case in && (strings.HasPrefix(line, "## ") || strings.HasPrefix(line, "### ")):
			in = false
		case in && strings.HasPrefix(line, "#### "):
			entries = append(entries, strings.TrimPrefix(line, "#### "))
		}
	}
	if len(entries) == 0 {
		t.Fatal("README.md: no \"### Runbooks\" section with \"#### \" entries")
	}
	return entries
}

var runbookURL = regexp.MustCompile(`^url=(https?://\S+)$`)

// TestRunbooks checks that every alert links its own entry of the README's
// Runbooks section (a heading named as the alert), through one base URL
// set in monitoring/kustomization.yaml, and that every entry named like an
// alert belongs to one.
func TestRunbooks(t *testing.T) {
	k := readKustomization(t, "monitoring")
	base := ""
	for _, g := range k.ConfigMapGenerator {
		if g.Name == "bqsink-runbooks" {
			for _, l := range g.LiteralSources {
				if m := runbookURL.FindStringSubmatch(l); m != nil {
					base = m[1]
				}
			}
		}
	}
	if base == "" || strings.Contains(base, "#") {
		t.Fatalf("monitoring/kustomization.yaml: no configMapGenerator bqsink-runbooks with a literal url=<base URL without #>")
	}
	entries := runbookEntries(t)
	anchors := map[string]string{}
	for _, e := range entries {
		anchors[githubAnchor(e)] = e
	}
	var alerts []string
	for _, g := range monitoringFiles(t).rule.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts = append(alerts, r.Alert)
			want := base + "#" + githubAnchor(r.Alert)
			if got := r.Annotations["runbook_url"]; got != want {
				t.Errorf("alert %s: runbook_url %q, want %q", r.Alert, got, want)
			}
			if anchors[githubAnchor(r.Alert)] != r.Alert {
				t.Errorf("alert %s: the README's Runbooks section has no entry \"#### %s\"", r.Alert, r.Alert)
			}
		}
	}
	for _, e := range entries {
		if strings.HasPrefix(e, "Bqsink") && !slices.Contains(alerts, e) {
			t.Errorf("README Runbooks entry %q names no alert", e)
		}
	}
}

// TestNetworkPolicy builds the first overlay with the network-policy
// component (which no overlay includes by default) and checks that the
// policy selects bqsink's pods and admits the scrape on the port the
// ServiceMonitor scrapes, and nothing else.
func TestNetworkPolicy(t *testing.T) {
	s := setups(t)[0]
	dir := t.TempDir()
	// kustomize takes bases and components by relative path only.
	rel := func(p string) string {
		a, err := filepath.Abs(p)
		if err == nil {
			a, err = filepath.Rel(dir, a)
		}
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	// As an overlay that includes the component: its namespace applies.
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: " + s.d.namespace.Name + "\nresources:\n  - " + rel(s.d.overlay) +
		"\ncomponents:\n  - " + rel(networkPolicyComponent) + "\n"
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	ms, err := build(dir)
	if err != nil {
		t.Fatal(err)
	}
	var np *networkingv1.NetworkPolicy
	for _, m := range ms {
		if m.kind == "NetworkPolicy" {
			np = new(networkingv1.NetworkPolicy)
			if err := decodeStrict(m, np); err != nil {
				t.Fatal(err)
			}
		}
	}
	if np == nil {
		t.Fatal("no NetworkPolicy built")
	}
	if np.Namespace != s.d.namespace.Name {
		t.Errorf("NetworkPolicy: namespace %q, want %q", np.Namespace, s.d.namespace.Name)
	}
	if !labels.SelectorFromSet(np.Spec.PodSelector.MatchLabels).Matches(labels.Set(s.d.deployment.Spec.Template.Labels)) || len(np.Spec.PodSelector.MatchLabels) == 0 {
		t.Errorf("NetworkPolicy podSelector %v does not select the pods", np.Spec.PodSelector.MatchLabels)
	}
	if !slices.Contains(np.Spec.PolicyTypes, "Ingress") || len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].Ports) != 1 {
		t.Fatalf("NetworkPolicy: want Ingress with one rule on one port, got %+v", np.Spec)
	}
	c := container(t, s.d)
	port := np.Spec.Ingress[0].Ports[0].Port
	if port == nil || portOf(t, c, *port) != portOf(t, c, s.d.service.Spec.Ports[0].TargetPort) {
		t.Errorf("NetworkPolicy admits port %v; the ServiceMonitor scrapes %v", port, s.d.service.Spec.Ports[0].TargetPort)
	}
}
