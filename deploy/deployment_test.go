package deploy

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// What the daemon does, as its README and code say. The probe timings are
// checked against these.
const (
	pollEvery = 5 * time.Second  // the poll loop turns at least this often
	liveAfter = 30 * time.Second // /healthz fails after this long without a poll
	exitGrace = time.Second / 2  // the process ends within shutdown_timeout + this
	// measuredOverhead is what bqsink needs beyond memory.max_buffered_bytes
	// and its largest records (README, "Memory").
	measuredOverhead = 80 << 20
	// recordCopies is how many copies of the largest record a pod must hold
	// room for beyond memory.max_buffered_bytes (README, "Memory"): its
	// fetch buffer, and its dead-letter write when it is rejected.
	recordCopies = 2
	// goLimitOverhead is what bqsink adds to memory.max_buffered_bytes for
	// Go's soft memory limit when GOMEMLIMIT is not set.
	goLimitOverhead = 56 << 20
	// uncounted is what a pod's RSS may exceed GOMEMLIMIT by at its peak:
	// memory the Go runtime does not count (the binary's text, the page
	// cache charged to the container) and the collector's lag at the limit
	// (README, "Memory").
	uncounted = 32 << 20
	// peakShare is the share of the memory limit a catch-up may peak at.
	peakShare = 0.8
)

func container(t *testing.T, d deployFiles) corev1.Container {
	t.Helper()
	cs := d.deployment.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("Deployment: %d containers, want 1", len(cs))
	}
	return cs[0]
}

// portOf resolves a probe's or Service's port (a number or a container port
// name) to the container port number.
func portOf(t *testing.T, c corev1.Container, p intstr.IntOrString) int32 {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	t.Fatalf("port %q is not a port of container %s", p.StrVal, c.Name)
	return 0
}

// TestPortsAndProbes checks that the container port, both probes, the
// Service and the ServiceMonitor all reach the port of the config's
// http.listen, that the probes ask the right paths, that the selectors of
// the Deployment, Service, PodDisruptionBudget and ServiceMonitor match
// what they should, and that the ScaledObject targets the Deployment.
func TestPortsAndProbes(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		d, cfg := s.d, s.cfg
		c := container(t, d)
		_, listenPort, err := net.SplitHostPort(cfg.string(t, "http.listen"))
		if err != nil {
			t.Fatalf("http.listen: %v", err)
		}
		want, _ := strconv.Atoi(listenPort)
		if len(c.Ports) != 1 || c.Ports[0].ContainerPort != int32(want) || c.Ports[0].Name != "http" {
			t.Errorf("container ports %+v: want one, named http, on %d (http.listen)", c.Ports, want)
		}
		for name, p := range map[string]*corev1.Probe{"livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe} {
			if p == nil || p.HTTPGet == nil {
				t.Errorf("%s: want an httpGet probe", name)
				continue
			}
			if got := portOf(t, c, p.HTTPGet.Port); got != int32(want) {
				t.Errorf("%s: port %d, http.listen %s", name, got, listenPort)
			}
			wantPath := map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"}[name]
			if p.HTTPGet.Path != wantPath {
				t.Errorf("%s: path %q, want %q", name, p.HTTPGet.Path, wantPath)
			}
		}
		if c.StartupProbe != nil {
			t.Error("startupProbe: /healthz answers 200 while bqsink starts, and the start ends within 10s; a startup probe would only delay the liveness probe")
		}

		pod := labels.Set(d.deployment.Spec.Template.Labels)
		sel := func(what string, s map[string]string) {
			if len(s) == 0 || !labels.SelectorFromSet(s).Matches(pod) {
				t.Errorf("%s selector %v does not select the pods (labels %v)", what, s, pod)
			}
		}
		sel("Deployment", d.deployment.Spec.Selector.MatchLabels)
		sel("Service", d.service.Spec.Selector)
		sel("PodDisruptionBudget", d.pdb.Spec.Selector.MatchLabels)
		if len(d.deployment.Spec.Selector.MatchExpressions)+len(d.pdb.Spec.Selector.MatchExpressions) > 0 {
			t.Error("selectors: use matchLabels only")
		}
		if len(d.service.Spec.Ports) != 1 {
			t.Fatalf("Service ports %+v: want one", d.service.Spec.Ports)
		}
		sp := d.service.Spec.Ports[0]
		if sp.Name != "http" || portOf(t, c, sp.TargetPort) != int32(want) {
			t.Errorf("Service port %+v: want name http, targetPort the container's", sp)
		}
		if !d.service.Spec.PublishNotReadyAddresses {
			t.Error("Service: publishNotReadyAddresses must be true: an unready replica's metrics are the ones that matter")
		}
		sm := d.serviceMonitor.Spec
		if len(sm.Selector.MatchLabels) == 0 || !labels.SelectorFromSet(sm.Selector.MatchLabels).Matches(labels.Set(d.service.Labels)) {
			t.Errorf("ServiceMonitor selector %v does not select the Service (labels %v)", sm.Selector.MatchLabels, d.service.Labels)
		}
		if len(sm.Endpoints) != 1 || sm.Endpoints[0].Port != sp.Name || (sm.Endpoints[0].Path != "" && sm.Endpoints[0].Path != "/metrics") {
			t.Errorf("ServiceMonitor endpoints %+v: want port %q, path /metrics", sm.Endpoints, sp.Name)
		}
		if d.deployment.Spec.Replicas != nil {
			t.Error("Deployment: replicas is set; the HPA KEDA creates owns it, and kubectl apply would reset it")
		}
		if got := d.deployment.Spec.Template.Spec.ServiceAccountName; got != d.serviceAccount.Name {
			t.Errorf("Deployment: serviceAccountName %q, want %q", got, d.serviceAccount.Name)
		}
	})
}

// TestTimings checks the probe timings and the grace period against what
// the daemon does: a stuck poll loop is restarted within a minute or so of
// /healthz failing, one slow answer never restarts it, readiness does not
// add much to stall_timeout, and the kubelet's SIGKILL never comes before
// bqsink's own bounded shutdown ends.
func TestTimings(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		d, cfg := s.d, s.cfg
		c := container(t, d)
		sec := func(n int32) time.Duration { return time.Duration(n) * time.Second }

		l := c.LivenessProbe
		if l.FailureThreshold < 2 {
			t.Errorf("livenessProbe.failureThreshold %d: one slow answer would restart the pod", l.FailureThreshold)
		}
		if sec(l.TimeoutSeconds) < 2*time.Second {
			t.Errorf("livenessProbe.timeoutSeconds %d: too tight for a process under GC pressure", l.TimeoutSeconds)
		}
		if sec(l.PeriodSeconds) < pollEvery {
			t.Errorf("livenessProbe.periodSeconds %d: more often than the poll loop turns (%s) tells nothing new", l.PeriodSeconds, pollEvery)
		}
		if react := sec(l.PeriodSeconds * l.FailureThreshold); react > 2*liveAfter {
			t.Errorf("livenessProbe: %s of failures before a restart, on top of /healthz's own %s: too slow for a stuck process", react, liveAfter)
		}

		r := c.ReadinessProbe
		stall := cfg.duration(t, "stall_timeout")
		if react := sec(r.PeriodSeconds * r.FailureThreshold); react > stall/5 {
			t.Errorf("readinessProbe: %s of failures before unready; /readyz already waits stall_timeout %s", react, stall)
		}

		shutdown := cfg.duration(t, "shutdown_timeout")
		grace := d.deployment.Spec.Template.Spec.TerminationGracePeriodSeconds
		if grace == nil || sec(int32(*grace)) <= shutdown+time.Second {
			t.Errorf("terminationGracePeriodSeconds %v: must exceed shutdown_timeout %s + 1s (bqsink ends within shutdown_timeout + %s)", grace, shutdown, exitGrace)
		}
		if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
			t.Error("preStop: the grace period counts from it; bqsink needs the whole grace period after SIGTERM")
		}
	})
}

// parseGoMemLimit parses GOMEMLIMIT's syntax: a byte count with an optional
// B, KiB, MiB, GiB or TiB suffix.
func parseGoMemLimit(s string) (int64, bool) {
	units := []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n * mult, true
}

// TestMemory checks the container's memory against the config and the
// README's formula (README, "Memory"): GOMEMLIMIT holds
// memory.max_buffered_bytes plus the measured overhead plus two copies of
// the largest record (the Deployment's bqsink/largest-record-bytes
// annotation); the limit is such that GOMEMLIMIT plus what Go does not count
// stays within 80% of it, so a catch-up peaks there; the request equals the
// limit; and GOMAXPROCS follows the CPU request.
func TestMemory(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		d, cfg := s.d, s.cfg
		c := container(t, d)
		buffered := cfg.int64(t, "memory.max_buffered_bytes")
		limit, ok := c.Resources.Limits[corev1.ResourceMemory]
		if !ok {
			t.Fatal("no memory limit")
		}
		largest, err := strconv.ParseInt(d.deployment.Annotations["bqsink/largest-record-bytes"], 10, 64)
		if err != nil || largest <= 0 {
			t.Fatalf("Deployment annotation bqsink/largest-record-bytes %q: want the source topics' largest record in bytes (their max.message.bytes)",
				d.deployment.Annotations["bqsink/largest-record-bytes"])
		}
		if req := c.Resources.Requests[corev1.ResourceMemory]; req.Cmp(limit) != 0 {
			t.Errorf("memory request %s differs from the limit %s: the node could run short of what the pod may use", req.String(), limit.String())
		}
		var goLimit string
		var procs *corev1.EnvVar
		for _, e := range c.Env {
			switch e.Name {
			case "GOMEMLIMIT":
				if e.ValueFrom != nil {
					t.Fatal("GOMEMLIMIT from a fieldRef: resourceFieldRef yields a bare number of divisor units, which GOMEMLIMIT reads as bytes")
				}
				goLimit = e.Value
			case "GOMAXPROCS":
				procs = &e
			}
		}
		n, ok := parseGoMemLimit(goLimit)
		if !ok {
			t.Fatalf("GOMEMLIMIT %q: want a byte count with an optional KiB, MiB or GiB suffix", goLimit)
		}
		if need := buffered + measuredOverhead + recordCopies*largest; n < need {
			t.Errorf("GOMEMLIMIT %s (%d) is below what the README says a pod needs: memory.max_buffered_bytes %d + %d MiB + %d x the largest record %d = %d",
				goLimit, n, buffered, measuredOverhead>>20, recordCopies, largest, need)
		}
		if floor := buffered + goLimitOverhead; n < floor {
			t.Errorf("GOMEMLIMIT %s is below bqsink's own choice, memory.max_buffered_bytes + 56 MiB = %d: the collector would run constantly at the cap", goLimit, floor)
		}
		if peak := n + uncounted; float64(peak) > peakShare*float64(limit.Value()) {
			t.Errorf("memory limit %s: a catch-up peaks near GOMEMLIMIT %s + %d MiB = %d MiB, above %.0f%% of it; want a limit of at least %d MiB",
				limit.String(), goLimit, uncounted>>20, peak>>20, 100*peakShare, int64(float64(peak)/peakShare)>>20+1)
		}
		cpu, ok := c.Resources.Requests[corev1.ResourceCPU]
		if !ok {
			t.Error("no CPU request: the scheduler would pack replicas onto busy nodes")
		}
		if procs == nil || procs.ValueFrom == nil || procs.ValueFrom.ResourceFieldRef == nil {
			t.Errorf("GOMAXPROCS %+v: want it from the container's CPU request (resourceFieldRef requests.cpu): without a CPU limit Go sizes itself to the node's cores", procs)
		} else if r := procs.ValueFrom.ResourceFieldRef; r.Resource != "requests.cpu" || (r.ContainerName != "" && r.ContainerName != c.Name) ||
			(!r.Divisor.IsZero() && r.Divisor.Cmp(resource.MustParse("1")) != 0) {
			t.Errorf("GOMAXPROCS from %+v: want resource requests.cpu of container %s, divisor 1 (whole cores)", r, c.Name)
		}
		t.Logf("memory: limit %s, GOMEMLIMIT %s, max_buffered_bytes %d MiB, largest record %d; CPU request %s (GOMAXPROCS %d)",
			limit.String(), goLimit, buffered>>20, largest, cpu.String(), (cpu.MilliValue()+999)/1000)
	})
}

// TestSecurityContext checks the pod runs as the restricted Pod Security
// Standard requires: non-root, no privilege escalation, no capabilities,
// seccomp RuntimeDefault, and a read-only root filesystem.
func TestSecurityContext(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		d := s.d
		pod := d.deployment.Spec.Template.Spec
		c := container(t, d)
		psc, sc := pod.SecurityContext, c.SecurityContext
		if psc == nil || sc == nil {
			t.Fatal("pod and container securityContext must be set")
		}
		isTrue := func(b *bool) bool { return b != nil && *b }
		if !isTrue(psc.RunAsNonRoot) && !isTrue(sc.RunAsNonRoot) {
			t.Error("runAsNonRoot is not true")
		}
		for _, u := range []*int64{psc.RunAsUser, sc.RunAsUser} {
			if u != nil && *u == 0 {
				t.Error("runAsUser 0")
			}
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("allowPrivilegeEscalation must be false")
		}
		if !isTrue(sc.ReadOnlyRootFilesystem) {
			t.Error("readOnlyRootFilesystem must be true")
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Error("privileged")
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
			t.Errorf("capabilities %+v: drop ALL, add none", sc.Capabilities)
		}
		seccomp := func(s *corev1.SeccompProfile) bool {
			return s != nil && s.Type == corev1.SeccompProfileTypeRuntimeDefault
		}
		if !seccomp(psc.SeccompProfile) && !seccomp(sc.SeccompProfile) {
			t.Error("seccompProfile must be RuntimeDefault")
		}
		if a := pod.AutomountServiceAccountToken; a == nil || *a {
			t.Error("automountServiceAccountToken must be false: bqsink never calls the Kubernetes API")
		}
		if pod.HostNetwork || pod.HostPID || pod.HostIPC {
			t.Error("host namespaces")
		}
		for _, m := range c.VolumeMounts {
			if !m.ReadOnly {
				t.Errorf("volume %s mounted read-write", m.Name)
			}
		}
		if d.namespace.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
			t.Error("Namespace: label pod-security.kubernetes.io/enforce=restricted, so the API server enforces the above")
		}
	})
}

// TestDisruptionBudget checks that drains take one replica at a time and
// are not blocked by replicas that are unready during an outage.
func TestDisruptionBudget(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		d := s.d
		pdb := d.pdb.Spec
		if pdb.MaxUnavailable == nil || pdb.MaxUnavailable.IntValue() != 1 || pdb.MinAvailable != nil {
			t.Errorf("PodDisruptionBudget: maxUnavailable %v minAvailable %v, want maxUnavailable 1", pdb.MaxUnavailable, pdb.MinAvailable)
		}
		if pdb.UnhealthyPodEvictionPolicy == nil || *pdb.UnhealthyPodEvictionPolicy != "AlwaysAllow" {
			t.Error("PodDisruptionBudget: unhealthyPodEvictionPolicy must be AlwaysAllow: a BigQuery outage makes every replica unready and would block drains for as long as it lasts")
		}
		st := d.deployment.Spec.Strategy
		if st.RollingUpdate == nil || st.RollingUpdate.MaxUnavailable == nil || st.RollingUpdate.MaxUnavailable.IntValue() != 0 {
			t.Error("Deployment strategy: rollingUpdate.maxUnavailable 0, so a rollout never leaves the group a consumer short")
		}
		// Availability at rest: with one replica, the drain the budget
		// allows would stop consumption until a new pod starts.
		if m := d.scaledObject.Spec.MinReplicaCount; m == nil || int(*m) <= pdb.MaxUnavailable.IntValue() {
			t.Errorf("ScaledObject minReplicaCount %v: must exceed the PodDisruptionBudget's maxUnavailable %v, or a drain stops consumption", m, pdb.MaxUnavailable)
		}
	})
}

// TestImageEntrypoint checks the Deployment against the parent's
// Dockerfile: the config file the image's entrypoint reads is the
// ConfigMap's config.yaml, mounted there, and the pod's user is the image's.
func TestImageEntrypoint(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		d := s.d
		c := container(t, d)
		df, err := os.ReadFile("../Dockerfile")
		if err != nil {
			t.Fatal(err)
		}
		var entrypoint []string
		var user string
		for line := range strings.Lines(string(df)) {
			line = strings.TrimSpace(line)
			if rest, ok := strings.CutPrefix(line, "ENTRYPOINT "); ok {
				entrypoint = nil
				if err := json.Unmarshal([]byte(rest), &entrypoint); err != nil {
					t.Fatalf("Dockerfile ENTRYPOINT %s: want the exec form: %v", rest, err)
				}
			}
			if rest, ok := strings.CutPrefix(line, "USER "); ok {
				user = rest
			}
		}
		args := append(slices.Clone(entrypoint), c.Args...)
		if len(c.Command) > 0 {
			args = append(slices.Clone(c.Command), c.Args...)
		}
		config := ""
		for i, a := range args {
			if (a == "-config" || a == "--config") && i+1 < len(args) {
				config = args[i+1]
			}
		}
		if config == "" {
			t.Fatalf("the container runs %v: no -config", args)
		}
		found := false
		for _, m := range c.VolumeMounts {
			rel, err := filepath.Rel(m.MountPath, config)
			if err != nil || strings.HasPrefix(rel, "..") {
				continue
			}
			for _, v := range d.deployment.Spec.Template.Spec.Volumes {
				if v.Name == m.Name && v.ConfigMap != nil && v.ConfigMap.Name == d.configMap.Name && rel == "config.yaml" && len(v.ConfigMap.Items) == 0 {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("the container reads -config %s; the ConfigMap %s's config.yaml is not mounted there", config, d.configMap.Name)
		}
		uid, _, _ := strings.Cut(user, ":")
		if sc := d.deployment.Spec.Template.Spec.SecurityContext; sc == nil || sc.RunAsUser == nil || strconv.FormatInt(*sc.RunAsUser, 10) != uid {
			t.Errorf("pod runAsUser differs from the Dockerfile's USER %q", user)
		}
	})
}
