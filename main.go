// Command bqsink streams Avro records from Kafka into BigQuery.
//
//	bqsink -config config.yaml          run
//	bqsink -config config.yaml -check   validate the config and exit
//
// main only wires: config, logger, registry, BigQuery client, sink, HTTP
// server for /metrics, /healthz and /readyz, and signals. The work lives in
// the sink, schema and bq packages.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"gopkg.in/yaml.v3"

	"github.com/bqsink/bqsink/bq"
	"github.com/bqsink/bqsink/schema"
	"github.com/bqsink/bqsink/sink"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
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
	log, err := newLogger(cfg.Log.Level)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = log.Sync() }()
	if err := serve(cfg, log); err != nil {
		log.Error("bqsink failed", zap.Error(err))
		return 1
	}
	return 0
}

func serve(cfg config, log *zap.Logger) error {
	log.Info("starting", zap.Any("config", cfg.summary()))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	reg, err := schema.NewRegistry(cfg.SchemaRegistry, log.Named("schema"))
	if err != nil {
		return fmt.Errorf("schema registry: %w", err)
	}
	// The write streams must outlive the signal: shutdown still appends.
	wh, err := bq.NewClient(context.WithoutCancel(ctx), cfg.BigQuery, log.Named("bigquery"))
	if err != nil {
		return fmt.Errorf("bigquery: %w", err)
	}
	defer wh.Close()

	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s, err := sink.New(cfg.Config, reg, wh, sink.WithLogger(log), sink.WithRegisterer(metrics))
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

	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("http server", zap.Error(err))
	}
	return runErr
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

func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.OutputPaths = []string{"stdout"}
	zc.EncoderConfig.TimeKey = "time"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	return zc.Build()
}

// config is the whole file. Each package owns and validates its section.
type config struct {
	sink.Config    `yaml:",inline"`
	SchemaRegistry schema.Config `yaml:"schema_registry"`
	BigQuery       bq.Config     `yaml:"bigquery"`
	HTTP           struct {
		Listen string `yaml:"listen"`
	} `yaml:"http"`
	Log struct {
		Level string `yaml:"level"`
	} `yaml:"log"`
}

// loadConfig reads path, expands ${VAR} and ${VAR:-default} from the
// environment, rejects unknown keys and reports every invalid key at once.
func loadConfig(path string) (config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return config{}, fmt.Errorf("read config: %w", err)
	}
	expanded, err := expandEnv(raw, os.LookupEnv)
	if err != nil {
		return config{}, fmt.Errorf("%s: %w", path, err)
	}
	cfg := config{BigQuery: bq.DefaultConfig()}
	cfg.HTTP.Listen = ":8080"
	cfg.Log.Level = "info"
	dec := yaml.NewDecoder(bytes.NewReader(expanded))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return config{}, fmt.Errorf("%s: %w", path, err)
	}
	if err := cfg.validate(); err != nil {
		return config{}, fmt.Errorf("%s: invalid config:\n%w", path, err)
	}
	return cfg, nil
}

func (c config) validate() error {
	var errs []error
	errs = append(errs, unjoin("", c.Config.Validate())...)
	errs = append(errs, unjoin("schema_registry.", c.SchemaRegistry.Validate())...)
	errs = append(errs, unjoin("bigquery.", c.BigQuery.Validate())...)
	if _, _, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
		errs = append(errs, unjoin("", fmt.Errorf("http.listen: %q is not host:port", c.HTTP.Listen))...)
	}
	if _, err := zapcore.ParseLevel(c.Log.Level); err != nil {
		errs = append(errs, unjoin("", fmt.Errorf("log.level: %q is not debug, info, warn or error", c.Log.Level))...)
	}
	return errors.Join(errs...)
}

// unjoin splits a joined error into its parts, each prefixed with its
// section, so every problem prints on its own line under its full key.
func unjoin(prefix string, err error) []error {
	if err == nil {
		return nil
	}
	var parts []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			parts = append(parts, unjoin(prefix, e)...)
		}
		return parts
	}
	return []error{fmt.Errorf("  %s%w", prefix, err)}
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// expandEnv replaces ${VAR} and ${VAR:-default} outside comments. An unset
// variable without a default is an error rather than an empty string: a
// silently empty password or broker list is worse than refusing to start.
func expandEnv(raw []byte, lookup func(string) (string, bool)) ([]byte, error) {
	var missing []string
	expand := func(m []byte) []byte {
		sub := envRef.FindSubmatch(m)
		name := string(sub[1])
		if v, ok := lookup(name); ok && (v != "" || sub[2] == nil) {
			return []byte(v)
		}
		if sub[2] != nil {
			return sub[3]
		}
		missing = append(missing, name)
		return nil
	}
	lines := bytes.SplitAfter(raw, []byte("\n"))
	for i, line := range lines {
		c := commentStart(line)
		lines[i] = append(envRef.ReplaceAllFunc(line[:c:c], expand), line[c:]...)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("environment variables not set (use ${NAME:-default} for optional ones): %s", strings.Join(missing, ", "))
	}
	return bytes.Join(lines, nil), nil
}

// commentStart is the index of the # that starts a YAML comment on line (a
// # at the start or after white space, outside quotes), or len(line).
func commentStart(line []byte) int {
	var quote byte
	for i, c := range line {
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return i
		}
	}
	return len(line)
}

// summary is the config as logged at startup: secrets never appear.
func (c config) summary() map[string]any {
	redact := func(s string) string {
		if s == "" {
			return ""
		}
		return "[redacted]"
	}
	return map[string]any{
		"kafka":            c.Kafka,
		"tables":           c.Tables,
		"batch":            c.Batch,
		"shutdown_timeout": c.ShutdownTimeout.String(),
		"schema_registry": map[string]any{
			"url":      redactURL(c.SchemaRegistry.URL),
			"username": c.SchemaRegistry.Username,
			"password": redact(c.SchemaRegistry.Password),
		},
		"bigquery": c.BigQuery,
		"http":     c.HTTP.Listen,
		"log":      c.Log.Level,
	}
}

// redactURL drops a password embedded in a URL (https://user:pass@host).
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "redacted")
	}
	return u.String()
}
