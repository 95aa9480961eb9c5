// Command bqsink streams Avro records from Kafka into BigQuery.
//
//	bqsink -config config.yaml          run
//	bqsink -config config.yaml -check   validate the config and exit
//	bqsink -version                     print the version and exit
//
// main only wires: config, logger, sink, HTTP server for /metrics, /healthz
// and /readyz, and signals. The work lives in the sink, schema and bq
// packages.
//
// Exit codes: 0 after a clean stop (everything acknowledged was committed),
// 1 when the config is invalid, a startup check fails, a record fails under
// errors.policy fail, or the shutdown could not finish, 2 for bad flags or
// arguments.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/bqsink/bqsink/internal/config"
	"github.com/bqsink/bqsink/internal/earlysignal"
	"github.com/bqsink/bqsink/sink"
)

// Stamped at build time, e.g.
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD) -X main.date=$(date -u +%FT%TZ)"
//
// What is left empty comes from the binary's build info: the module
// version, and the commit and its time when built from a git checkout.
var version, commit, date string

// exitGrace is how long past shutdown_timeout the process may take before
// it exits regardless.
const exitGrace = 500 * time.Millisecond

// readme is where an operator reads about configuration and operation.
const readme = "https://github.com/bqsink/bqsink#readme"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	// Signals are caught from the first moments (see earlysignal), so that
	// a SIGTERM at any moment after start is a clean stop, never a kill by
	// the signal.
	sigs := earlysignal.C
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var (
		shutdownTimeout atomic.Int64 // nanoseconds; set once the config is read
		logger          atomic.Pointer[zap.Logger]
	)
	shutdownTimeout.Store(int64(30 * time.Second))
	done := make(chan struct{})
	defer close(done)
	go watchSignals(sigs, done, stop, &shutdownTimeout, &logger)

	fs := flag.NewFlagSet("bqsink", flag.ContinueOnError)
	configPath := fs.String("config", "config.yaml", "the YAML config `FILE`")
	check := fs.Bool("check", false, "validate the config, print every problem, and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.SetOutput(io.Discard) // errors and usage are printed below
	fs.Usage = func() {}
	switch err := fs.Parse(args); {
	case errors.Is(err, flag.ErrHelp):
		usage(stdout, fs)
		return 0
	case err != nil:
		return usageError(stderr, err.Error())
	case fs.NArg() > 0:
		return usageError(stderr, strayArgs(fs.Args()))
	}
	build := currentBuild()
	if *showVersion {
		fmt.Fprintln(stdout, build)
		return 0
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if *check {
		fmt.Fprintf(stdout, "%s: ok\n", *configPath)
		return 0
	}
	shutdownTimeout.Store(int64(cfg.ShutdownTimeout))
	if cfg.ShutdownTimeout == 0 {
		shutdownTimeout.Store(int64(30 * time.Second))
	}
	log, err := newLogger(cfg.Log.Level)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer func() { _ = log.Sync() }()
	logger.Store(log)
	if ctx.Err() != nil {
		log.Info("signal received while starting; stopping")
	}
	if err := serve(ctx, cfg, build, log); err != nil {
		log.Error("bqsink stopped with an error", zap.Error(err), zap.Int("exit_code", 1))
		return 1
	}
	log.Info("exiting: everything acknowledged is committed", zap.Int("exit_code", 0))
	return 0
}

// watchSignals turns the first SIGTERM or SIGINT into a shutdown, bounded
// by shutdown_timeout plus exitGrace whatever hangs; a second one exits at
// once.
func watchSignals(sigs <-chan os.Signal, done <-chan struct{}, stop func(), timeout *atomic.Int64, logger *atomic.Pointer[zap.Logger]) {
	exit := func(msg string) {
		if log := logger.Load(); log != nil {
			log.Error(msg)
			_ = log.Sync()
		} else {
			fmt.Fprintln(os.Stderr, "bqsink:", msg)
		}
		os.Exit(1)
	}
	var sig os.Signal
	select {
	case sig = <-sigs:
	case <-done:
		return
	}
	if log := logger.Load(); log != nil {
		log.Info("signal received; shutting down", zap.Stringer("signal", sig),
			zap.Duration("shutdown_timeout", time.Duration(timeout.Load())))
	}
	stop()
	select {
	case <-done:
	case <-sigs:
		exit("second signal: exiting without waiting for the shutdown")
	case <-time.After(time.Duration(timeout.Load()) + exitGrace):
		exit("shutdown did not finish within shutdown_timeout; exiting: records not committed are read again by the next owner")
	}
}

// usage prints the help that -h and -help ask for.
func usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `Usage:
  bqsink [-config FILE]          run until SIGTERM or SIGINT
  bqsink [-config FILE] -check   validate the config, print every problem, exit
  bqsink -version                print the version and exit

bqsink streams Avro records from Kafka into BigQuery. It reads one YAML
config file (every key, with its default, is in config.yaml and the README;
${VAR} and ${VAR:-default} in values come from the environment), writes JSON
log lines to stdout and serves /metrics, /healthz and /readyz on http.listen.

Flags:
`)
	fs.VisitAll(func(f *flag.Flag) {
		arg, text := flag.UnquoteUsage(f)
		name := "-" + f.Name
		if arg != "" {
			name += " " + arg
		}
		if f.DefValue != "" && f.DefValue != "false" {
			text += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "  %-14s %s\n", name, text)
	})
	fmt.Fprintf(w, "  %-14s %s\n", "-help", "print this help and exit")
	fmt.Fprint(w, `
Exit codes:
  0  stopped cleanly: everything sent to BigQuery was answered and what was
     delivered is committed; with -check: the config is valid
  1  the config is invalid (every problem is listed, by key and line), a
     startup check failed, a record failed under errors.policy: fail, or the
     shutdown was incomplete; one error line says which
  2  bad flags or arguments

Configuration, deployment, metrics and failure modes: `+readme+"\n")
}

// usageError reports bad flags or arguments and returns their exit code.
func usageError(w io.Writer, msg string) int {
	fmt.Fprintf(w, "bqsink: %s\nusage: bqsink [-config FILE] [-check] | bqsink -version\nRun 'bqsink -help' for more.\n", msg)
	return 2
}

// strayArgs explains arguments left after the flags: the flag package
// stops at the first one, so a flag after it was not read either.
func strayArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = strconv.Quote(a)
	}
	msg := fmt.Sprintf("unexpected argument %s: bqsink takes flags only", q[0])
	if len(args) > 1 {
		msg = fmt.Sprintf("unexpected arguments %s: bqsink takes flags only", strings.Join(q, " "))
	}
	if slices.ContainsFunc(args[1:], func(a string) bool { return strings.HasPrefix(a, "-") }) {
		msg += ", and reads none after an argument"
	}
	return msg
}

// buildInfo says which build of bqsink this is.
type buildInfo struct {
	Version   string // v1.2.3, a Go pseudo-version, or "devel"
	Commit    string // short commit hash, "-dirty" when built from a modified checkout
	Date      string // build date when stamped, else the commit's time
	GoVersion string
}

// String is what -version prints.
func (b buildInfo) String() string {
	return fmt.Sprintf("bqsink %s (commit %s, built %s, %s)", b.Version, b.Commit, b.Date, b.GoVersion)
}

func currentBuild() buildInfo {
	bi, _ := debug.ReadBuildInfo()
	return describeBuild(bi, version, commit, date)
}

// describeBuild fills what was not stamped at build time from the
// binary's build info.
func describeBuild(bi *debug.BuildInfo, version, commit, date string) buildInfo {
	b := buildInfo{Version: version, Commit: commit, Date: date, GoVersion: runtime.Version()}
	if bi != nil {
		var revision, modified, vcsTime string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.modified":
				modified = s.Value
			case "vcs.time":
				vcsTime = s.Value
			}
		}
		if b.Version == "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version
		}
		if b.Commit == "" && revision != "" {
			b.Commit = revision
			if modified == "true" {
				b.Commit += "-dirty"
			}
		}
		if b.Date == "" {
			b.Date = vcsTime
		}
		if bi.GoVersion != "" {
			b.GoVersion = bi.GoVersion
		}
	}
	b.Commit = shortCommit(b.Commit)
	for _, s := range []*string{&b.Version, &b.Commit, &b.Date} {
		if *s == "" {
			*s = "unknown"
		}
	}
	if b.Version == "unknown" && bi != nil {
		b.Version = "devel"
	}
	return b
}

// shortCommit cuts a full commit hash to 12 characters, keeping a suffix
// such as -dirty.
func shortCommit(c string) string {
	hex := len(c) - len(strings.TrimLeft(c, "0123456789abcdef"))
	if hex > 12 {
		return c[:12] + c[hex:]
	}
	return c
}

// newRegistry returns the Prometheus registry main serves: Go runtime and
// process metrics, and bqsink_build_info saying which build runs.
func newRegistry(b buildInfo) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "bqsink_build_info",
			Help:        "Always 1; its labels say which build of bqsink runs.",
			ConstLabels: prometheus.Labels{"version": b.Version, "commit": b.Commit, "go_version": b.GoVersion},
		}, func() float64 { return 1 }),
	)
	return reg
}

func serve(ctx context.Context, cfg config.File, build buildInfo, log *zap.Logger) error {
	log.Info("starting", zap.String("version", build.Version), zap.String("commit", build.Commit),
		zap.String("built", build.Date), zap.String("go_version", build.GoVersion), zap.Any("config", cfg.Summary()))
	setMemoryLimit(cfg.WithDefaults().Memory.MaxBufferedBytes, log)
	metrics := newRegistry(build)
	s, err := sink.New(cfg.Config, sink.WithLogger(log), sink.WithRegisterer(metrics), sink.WithVersion(build.Version))
	if err != nil {
		return err
	}

	// Listen before consuming, so a taken port fails the start, not later.
	ln, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		return fmt.Errorf("http.listen %s: %w", cfg.HTTP.Listen, err)
	}
	srv := &http.Server{Handler: handler(s, metrics), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("http listening", zap.String("addr", ln.Addr().String()))

	stopProfile := startCPUProfile(log)
	runErr := s.Run(ctx)
	stopProfile()

	// Probes and metrics stay up through the shutdown; now they may go.
	_ = srv.Close()
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("http server", zap.Error(err))
	}
	return runErr
}

// startCPUProfile writes a CPU profile of the run to the file named by
// BQSINK_CPUPROFILE, if set, for `go tool pprof`; the bench harness uses it.
// A file that cannot be written costs the profile, not the run.
func startCPUProfile(log *zap.Logger) (stop func()) {
	path := os.Getenv("BQSINK_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		if err = pprof.StartCPUProfile(f); err != nil {
			_ = f.Close()
		}
	}
	if err != nil {
		log.Warn("BQSINK_CPUPROFILE: not profiling", zap.Error(err))
		return func() {}
	}
	log.Info("writing a CPU profile", zap.String("BQSINK_CPUPROFILE", path))
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			log.Warn("BQSINK_CPUPROFILE: profile incomplete", zap.Error(err))
		}
	}
}

// memoryOverhead is what the process needs beyond memory.max_buffered_bytes:
// runtime, clients, connections, a batch being encoded.
const memoryOverhead = 56 << 20

// setMemoryLimit makes the Go runtime collect garbage before the heap grows
// past what the config allows, unless the GOMEMLIMIT environment variable
// already says what the limit is. Without it the heap may grow to twice
// what is live before a collection, so peak RSS would be about twice
// memory.max_buffered_bytes instead of that plus a fixed overhead.
func setMemoryLimit(buffered int64, log *zap.Logger) {
	if v, ok := os.LookupEnv("GOMEMLIMIT"); ok {
		log.Info("memory limit from GOMEMLIMIT", zap.String("GOMEMLIMIT", v))
		return
	}
	limit := buffered + memoryOverhead
	debug.SetMemoryLimit(limit)
	log.Info("Go's memory limit set to memory.max_buffered_bytes + 56 MiB (GOMEMLIMIT is not set)",
		zap.Int64("max_buffered_bytes", buffered), zap.Int64("go_memory_limit_bytes", limit))
}

func handler(s *sink.Sink, metrics *prometheus.Registry) http.Handler {
	probe := func(check func() error) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			if err := check(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	mux.Handle("/healthz", probe(s.Live))
	mux.Handle("/readyz", probe(s.Ready))
	return mux
}

// newLogger builds the JSON logger. Nothing is sampled away (a rejected
// record's line must not vanish) and no stack traces are attached: errors
// are explained by their messages; panics log their own stack.
func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Sampling = nil
	zc.DisableStacktrace = true
	zc.OutputPaths = []string{"stdout"}
	zc.EncoderConfig.TimeKey = "time"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.EncoderConfig.EncodeDuration = zapcore.StringDurationEncoder
	return zc.Build()
}
