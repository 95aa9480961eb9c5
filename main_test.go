package main

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"io"
	"io/fs"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const (
	validKafka = "kafka: {brokers: [k:9092], group_id: g, topics: [t]}\n"
	validSR    = `schema_registry: {url: "http://sr"}` + "\n"
	validBQ    = "bigquery: {project: p, dataset: d}\n"
)

// The committed config.yaml is what a user starts from and what the demo's
// -serve stack answers to: it must pass -check as it is.
func TestCommittedConfigPassesCheck(t *testing.T) {
	var stdout, stderr strings.Builder
	if code := run([]string{"-config", "config.yaml", "-check"}, &stdout, &stderr); code != 0 || stdout.String() != "config.yaml: ok\n" {
		t.Errorf("-check on config.yaml exited %d: %s%s", code, stdout.String(), stderr.String())
	}
}

// A stranger's mistakes on the command line get exit code 2 and a pointer
// to -help; -help and -version answer and exit 0. Nothing starts.
func TestCommandLine(t *testing.T) {
	p := writeConfig(t, validKafka+validSR+validBQ)
	for _, c := range []struct {
		args           []string
		code           int
		stdout, stderr string // a prefix of each
	}{
		{[]string{"-config", p, "extra", "-check"}, 2, "",
			`bqsink: unexpected arguments "extra" "-check": bqsink takes flags only, and reads none after an argument` + "\nusage: bqsink [-config FILE] [-check] | bqsink -version\nRun 'bqsink -help' for more.\n"},
		{[]string{"run"}, 2, "", `bqsink: unexpected argument "run": bqsink takes flags only` + "\n"},
		{[]string{"-chek"}, 2, "", "bqsink: flag provided but not defined: -chek\nusage: "},
		{[]string{"-check=maybe"}, 2, "", `bqsink: invalid boolean value "maybe" for -check: parse error` + "\n"},
		{[]string{"-config"}, 2, "", "bqsink: flag needs an argument: -config\n"},
		{[]string{"-version", "extra"}, 2, "", "bqsink: unexpected argument"},
		{[]string{"-h"}, 0, "Usage:\n  bqsink [-config FILE]", ""},
		{[]string{"-help"}, 0, "Usage:\n", ""},
		{[]string{"--help"}, 0, "Usage:\n", ""},
		{[]string{"-version"}, 0, "bqsink ", ""},
		{[]string{"-config", p, "-check"}, 0, p + ": ok\n", ""},
	} {
		var stdout, stderr strings.Builder
		code := run(c.args, &stdout, &stderr)
		if code != c.code || !strings.HasPrefix(stdout.String(), c.stdout) || (c.stdout == "") != (stdout.Len() == 0) ||
			!strings.HasPrefix(stderr.String(), c.stderr) || (c.stderr == "") != (stderr.Len() == 0) {
			t.Errorf("bqsink %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(c.args, " "), code, c.code, stdout.String(), stderr.String())
		}
	}

	var help strings.Builder
	run([]string{"-help"}, &help, io.Discard)
	for _, want := range []string{
		"  -check         validate the config, print every problem, and exit\n",
		"  -config FILE   the YAML config FILE (default config.yaml)\n",
		"  -version       print the version and exit\n",
		"  -help          print this help and exit\n",
		"Exit codes:\n  0  ", "\n  1  the config is invalid", "\n  2  bad flags or arguments\n",
		"https://github.com/bqsink/bqsink#readme\n",
	} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("-help lacks %q:\n%s", want, help.String())
		}
	}

	var v strings.Builder
	run([]string{"-version"}, &v, io.Discard)
	if !regexp.MustCompile(`^bqsink \S+ \(commit \S+, built \S+, go1\.\S+\)\n$`).MatchString(v.String()) {
		t.Errorf("-version printed %q", v.String())
	}
}

// -version and the metrics say which build runs: what was stamped with
// -ldflags -X, else what Go recorded from the module and the checkout.
func TestDescribeBuild(t *testing.T) {
	vcs := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/bqsink/bqsink", Version: "v0.0.0-20261202011825-c57b7db12345+dirty"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "c57b7db1234567890abcdef1234567890abcdef0"},
			{Key: "vcs.time", Value: "2026-12-02T01:18:25Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	for _, c := range []struct {
		name                  string
		bi                    *debug.BuildInfo
		version, commit, date string
		want                  string
	}{
		{"stamped", vcs, "v1.4.0", "0123456789abcdef0123456789abcdef01234567", "2026-12-03T10:00:00Z",
			"bqsink v1.4.0 (commit 0123456789ab, built 2026-12-03T10:00:00Z, go1.26.8)"},
		{"stamped short commit", nil, "v1.4.0", "0123abc", "", "bqsink v1.4.0 (commit 0123abc, built unknown, " + runtime.Version() + ")"},
		{"from a checkout", vcs, "", "", "",
			"bqsink v0.0.0-20261202011825-c57b7db12345+dirty (commit c57b7db12345-dirty, built 2026-12-02T01:18:25Z, go1.26.8)"},
		{"no version control", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}}, "", "", "",
			"bqsink devel (commit unknown, built unknown, go1.26.8)"},
		{"go install of a release", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.4.0"}}, "", "", "",
			"bqsink v1.4.0 (commit unknown, built unknown, go1.26.8)"},
	} {
		if got := describeBuild(c.bi, c.version, c.commit, c.date).String(); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}
}

func TestBuildInfoMetric(t *testing.T) {
	mfs, err := newRegistry(buildInfo{Version: "v1.4.0", Commit: "0123456789ab", GoVersion: "go1.26.8"}).Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "bqsink_build_info" {
			continue
		}
		m := mf.GetMetric()[0]
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if m.GetGauge().GetValue() != 1 || !maps.Equal(labels, map[string]string{"version": "v1.4.0", "commit": "0123456789ab", "go_version": "go1.26.8"}) {
			t.Errorf("bqsink_build_info = %v %v", m.GetGauge().GetValue(), labels)
		}
		return
	}
	t.Error("no bqsink_build_info")
}

// dockerfile is the Dockerfile as instructions, continuation lines joined,
// comments dropped.
func dockerfile(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	cur := ""
	for line := range strings.SplitSeq(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") || line == "" && cur == "" {
			continue
		}
		if s, ok := strings.CutSuffix(line, "\\"); ok {
			cur += s + " "
			continue
		}
		if cur += line; cur != "" {
			out = append(out, cur)
		}
		cur = ""
	}
	return out
}

// The image runs the static binary as distroless' non-root user, with the
// config expected at /etc/bqsink/config.yaml and none baked in:
// config.yaml points at the local test stack with authentication off.
func TestDockerfile(t *testing.T) {
	var stage string
	var final []string
	args := map[string]string{}
	for _, in := range dockerfile(t) {
		op, rest, _ := strings.Cut(in, " ")
		switch strings.ToUpper(op) {
		case "FROM":
			stage, final = rest, nil
		case "ARG":
			name, def, ok := strings.Cut(rest, "=")
			if !ok {
				t.Errorf("ARG %s has no default", name)
			}
			args[name] = def
		}
		final = append(final, in)
		if strings.Contains(in, "config.yaml") && strings.ToUpper(op) != "ENTRYPOINT" {
			t.Errorf("the image must not carry a config: %s", in)
		}
	}
	if !strings.HasPrefix(stage, "gcr.io/distroless/static") || !strings.HasSuffix(stage, ":nonroot") {
		t.Errorf("final stage FROM %s, want distroless static nonroot", stage)
	}
	var user, entrypoint string
	for _, in := range final[1:] {
		op, rest, _ := strings.Cut(in, " ")
		switch strings.ToUpper(op) {
		case "COPY", "ADD":
			if !strings.HasPrefix(rest, "--from=build /bqsink ") {
				t.Errorf("the final stage copies only the binary: %s", in)
			}
		case "USER":
			user = rest
		case "ENTRYPOINT":
			entrypoint = rest
		}
	}
	// Numeric: Kubernetes' runAsNonRoot cannot check a user name.
	if user != "65532:65532" {
		t.Errorf("USER %q, want 65532:65532 (distroless nonroot)", user)
	}
	var ep []string
	if err := json.Unmarshal([]byte(entrypoint), &ep); err != nil || !slices.Equal(ep, []string{"/bqsink", "-config", "/etc/bqsink/config.yaml"}) {
		t.Errorf("ENTRYPOINT %s, want [\"/bqsink\", \"-config\", \"/etc/bqsink/config.yaml\"]", entrypoint)
	}
	build := dockerBuildCommand(t)
	for _, want := range []string{"CGO_ENABLED=0 go build -trimpath ", "-X main.version=${VERSION}", "-X main.commit=${COMMIT}", "-X main.date=${BUILD_DATE}", "-o /bqsink ."} {
		if !strings.Contains(build, want) {
			t.Errorf("the build command lacks %q: %s", want, build)
		}
	}
	for _, a := range []string{"VERSION", "COMMIT", "BUILD_DATE"} {
		if _, ok := args[a]; !ok {
			t.Errorf("no ARG %s", a)
		}
	}
}

// dockerBuildCommand is the build stage's RUN that builds the binary.
func dockerBuildCommand(t *testing.T) string {
	t.Helper()
	for _, in := range dockerfile(t) {
		if cmd, ok := strings.CutPrefix(in, "RUN "); ok && strings.Contains(cmd, "go build") {
			return cmd
		}
	}
	t.Fatal("no RUN with go build in the Dockerfile")
	return ""
}

// dockerignore reads .dockerignore as Docker does: a path is excluded by
// the last pattern matching it or a directory above it; ! re-includes.
func dockerignore(t *testing.T) func(path string) bool {
	t.Helper()
	raw, err := os.ReadFile(".dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	type rule struct {
		re     *regexp.Regexp
		negate bool
	}
	var rules []rule
	for line := range strings.SplitSeq(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		neg := strings.HasPrefix(line, "!")
		pat := filepath.ToSlash(filepath.Clean(strings.TrimPrefix(strings.TrimPrefix(line, "!"), "/")))
		var re strings.Builder
		for i := 0; i < len(pat); i++ {
			switch {
			case strings.HasPrefix(pat[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(pat[i:], "**"):
				re.WriteString(".*")
				i++
			case pat[i] == '*':
				re.WriteString("[^/]*")
			case pat[i] == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(pat[i : i+1]))
			}
		}
		rules = append(rules, rule{regexp.MustCompile("^" + re.String() + "$"), neg})
	}
	return func(path string) bool {
		excluded := false
		for _, r := range rules {
			for p := path; p != "."; p = filepath.Dir(p) {
				if r.re.MatchString(p) {
					excluded = !r.negate
					break
				}
			}
		}
		return excluded
	}
}

// The Docker build context, as .dockerignore leaves it, holds every file
// the binary is built from and no config or credentials; built with the
// Dockerfile's own command it is a static binary that reports the version
// and commit it was stamped with, on -version and in its first log line.
func TestDockerBuildContext(t *testing.T) {
	ignored := dockerignore(t)
	out, err := exec.Command("go", "list", "-deps", "-f", `{{if not .Standard}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{range .EmbedFiles}} {{.}}{{end}}{{end}}`, ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	needed := []string{"go.mod", "go.sum"}
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		rel, err := filepath.Rel(root, fields[0])
		if err != nil || strings.HasPrefix(rel, "..") {
			continue // another module's
		}
		for _, f := range fields[1:] {
			needed = append(needed, filepath.Join(rel, f))
		}
	}
	for _, f := range needed {
		if ignored(f) {
			t.Errorf(".dockerignore leaves out %s, which the binary is built from: add its directory with !", f)
		}
	}
	for _, f := range []string{".git", "config.yaml", "prod.yaml", "sa.json", "integration/stack/stack.go", "deploy/kustomization.yaml", "main_test.go", "sink/config_test.go", "schema/testdata/x.avsc", "Dockerfile", "README.md"} {
		if !ignored(f) {
			t.Errorf(".dockerignore lets %s into the build context", f)
		}
	}

	if testing.Short() {
		t.Skip("-short: the context is not built")
	}
	ctxDir := t.TempDir()
	err = filepath.WalkDir(".", func(path string, e fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case path == ".git":
			return filepath.SkipDir
		case e.IsDir() || ignored(path):
			return nil
		}
		if strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".json") {
			t.Errorf("build context holds %s", path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		dst := filepath.Join(ctxDir, path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "bqsink")
	cmd := exec.Command("sh", "-c", strings.ReplaceAll(dockerBuildCommand(t), " /bqsink", " "+bin))
	cmd.Dir = ctxDir
	cmd.Env = append(os.Environ(), "VERSION=v9.9.9-test", "COMMIT=0123456789abcdef0123456789abcdef01234567", "BUILD_DATE=2026-12-02T00:00:00Z")
	got, err := cmd.CombinedOutput()
	want := "bqsink v9.9.9-test (commit 0123456789ab, built 2026-12-02T00:00:00Z, " + runtime.Version() + ")\n"
	if err != nil || string(got) != want {
		t.Fatalf("the Dockerfile's build command: %v\n%s\nwant output %q", err, got, want)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary is not static: it has a %v program header", p.Type)
		}
	}
	f.Close()

	// Started, its first line says which build runs.
	cfgPath := writeConfig(t, "kafka: {brokers: [127.0.0.1:1], group_id: g, topics: [t]}\n"+validSR+validBQ+"http: {listen: \"127.0.0.1:0\"}\n")
	daemon := exec.Command(bin, "-config", cfgPath)
	stdout, err := daemon.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = daemon.Process.Signal(syscall.SIGTERM)
		_ = daemon.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(line), &first); err != nil {
		t.Fatal(err)
	}
	if first["msg"] != "starting" || first["version"] != "v9.9.9-test" || first["commit"] != "0123456789ab" || first["go_version"] != runtime.Version() {
		t.Errorf("first log line: %s", line)
	}
}

// A newcomer finds a package through the README's package map: every
// package of the module (deploy/ is a module of its own) and every file
// the map names must be there.
func TestREADMEPackageMapMatchesTheTree(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	dev := string(readme)
	i := strings.Index(dev, "## Development\n")
	if i < 0 {
		t.Fatal("README has no Development section")
	}
	dev = dev[i:]
	start := strings.Index(dev, "```\n")
	end := strings.Index(dev[start+4:], "```")
	if start < 0 || end < 0 {
		t.Fatal("README's Development section has no package map block")
	}
	pmap := dev[start+4 : start+4+end]

	dirs := map[string]bool{}
	err = filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || p == "deploy") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".go") {
			dirs[filepath.ToSlash(filepath.Dir(p))] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range slices.Sorted(maps.Keys(dirs)) {
		if dir == "." {
			continue
		}
		top, rest, nested := strings.Cut(dir, "/")
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(top) + `/ `).MatchString(pmap) {
			t.Errorf("package map has no line for %s/", top)
			continue
		}
		if nested && !regexp.MustCompile(`\b`+regexp.QuoteMeta(rest)+`\b`).MatchString(pmap) {
			t.Errorf("package map does not name %s", dir)
		}
	}
	// Files it names, such as sink's by role, must exist where it says.
	var cur string
	for _, line := range strings.Split(pmap, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasSuffix(f[0], "/") {
			cur = strings.TrimSuffix(f[0], "/")
		}
		for _, m := range regexp.MustCompile(`\b([a-z_]+\.go)\b`).FindAllStringSubmatch(line, -1) {
			p := m[1]
			if cur != "main.go" && p != "main.go" && cur != "" {
				p = filepath.Join(cur, p)
			}
			if _, err := os.Stat(p); err != nil {
				t.Errorf("package map names %s, which does not exist", p)
			}
		}
	}
}

// A clone carries sources, not build output: no tracked file is a binary
// of several megabytes (a bench or demo binary built at the root once
// slipped into a commit).
func TestNoBuildOutputTracked(t *testing.T) {
	out, err := exec.Command("git", "ls-files", "-z").Output()
	if err != nil {
		t.Skipf("not a git checkout (git ls-files: %v): nothing to check", err)
	}
	for _, name := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		fi, err := os.Stat(name)
		if err != nil {
			continue // deleted in the working tree
		}
		if fi.Size() > 2<<20 {
			t.Errorf("%s is tracked and %d MiB: build output? (.gitignore lists the binaries built at the root)", name, fi.Size()>>20)
		}
	}
}

// Without GOMEMLIMIT, bqsink sets Go's memory limit from the config, so
// that the heap is collected before RSS passes the cap plus a fixed
// overhead; with it, the operator's limit stands.
func TestMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	const buffered = 64 << 20

	t.Setenv("GOMEMLIMIT", "")
	os.Unsetenv("GOMEMLIMIT")
	debug.SetMemoryLimit(math.MaxInt64)
	setMemoryLimit(buffered, zap.NewNop())
	if got, want := debug.SetMemoryLimit(-1), int64(buffered+56<<20); got != want {
		t.Errorf("GOMEMLIMIT unset: Go's memory limit is %d, want memory.max_buffered_bytes + 56 MiB = %d", got, want)
	}

	t.Setenv("GOMEMLIMIT", "300MiB")
	debug.SetMemoryLimit(300 << 20)
	setMemoryLimit(buffered, zap.NewNop())
	if got := debug.SetMemoryLimit(-1); got != 300<<20 {
		t.Errorf("GOMEMLIMIT=300MiB: Go's memory limit is %d, want it left at %d", got, 300<<20)
	}
}
