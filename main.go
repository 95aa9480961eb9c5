// Command bqsink streams Avro records from Kafka into BigQuery.
//
//	bqsink -config config.yaml          run
//	bqsink -config config.yaml -check   validate the config and exit
//
// main only wires: config, logger, sink, HTTP server for /metrics, /healthz
// and /readyz, and signals. The work lives in the sink, schema and bq
// packages.
//
// Exit codes: 0 after a clean stop (everything acknowledged was committed),
// 1 when the config is invalid, a startup check fails, a record fails under
// errors.policy fail, or the shutdown could not finish, 2 for bad flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/bqsink/bqsink/internal/earlysignal"
	"github.com/bqsink/bqsink/sink"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise it comes from the module's build info.
var version = ""

// exitGrace is how long past shutdown_timeout the process may take before
// it exits regardless.
const exitGrace = 500 * time.Millisecond

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
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
	configPath := fs.String("config", "config.yaml", "path to the YAML config file")
	check := fs.Bool("check", false, "validate the config, print every problem, and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if *check {
		fmt.Printf("%s: ok\n", *configPath)
		return 0
	}
	shutdownTimeout.Store(int64(cfg.ShutdownTimeout))
	if cfg.ShutdownTimeout == 0 {
		shutdownTimeout.Store(int64(30 * time.Second))
	}
	log, err := newLogger(cfg.Log.Level)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = log.Sync() }()
	logger.Store(log)
	if ctx.Err() != nil {
		log.Info("signal received while starting; stopping")
	}
	if err := serve(ctx, cfg, log); err != nil {
		log.Error("bqsink stopped with an error", zap.Error(err))
		return 1
	}
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

func serve(ctx context.Context, cfg config, log *zap.Logger) error {
	log.Info("starting", zap.String("version", buildVersion()), zap.Any("config", cfg.summary()))
	setMemoryLimit(cfg.WithDefaults().Memory.MaxBufferedBytes, log)
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s, err := sink.New(cfg.Config, sink.WithLogger(log), sink.WithRegisterer(metrics), sink.WithVersion(buildVersion()))
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

	runErr := s.Run(ctx)

	// Probes and metrics stay up through the shutdown; now they may go.
	_ = srv.Close()
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("http server", zap.Error(err))
	}
	return runErr
}

// memoryOverhead is what the process needs beyond memory.max_buffered_bytes:
// runtime, clients, connections, a batch being encoded.
const memoryOverhead = 64 << 20

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
	log.Info("memory limit set from memory.max_buffered_bytes", zap.Int64("bytes", limit))
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

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "unknown"
}

// redactURL hides the password a URL may carry (https://user:xxxxx@host).
func redactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	return raw
}
