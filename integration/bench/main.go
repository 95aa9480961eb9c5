// Command bench measures the bqsink daemon, the real binary as its own
// process, against the local stack (kfake, srfake and bqfake, in this
// process), and compares it with a floor: the least any consumer of the
// same records must do.
//
//	go run ./integration/bench                         # 1,000,000 stock updates waiting, then bqsink, then the floor
//	go run ./integration/bench -schema delivery -n 200000
//	go run ./integration/bench -rate 20000 -duration 60s   # steady: freshness and CPU at a fixed rate, then the floor likewise
//	go run ./integration/bench -rate 20000 -duration 30s -set metadata_column=   # steady without the metadata column (no freshness)
//	go run ./integration/bench -bq-latency 200ms       # backpressure: BigQuery answers each append 200 ms late
//	go run ./integration/bench -bq-rate 100000         # backpressure: BigQuery takes at most 100,000 rows/s
//	go run ./integration/bench -bq-conn-rate 50000     # BigQuery takes at most 50,000 rows/s per connection: the pool grows
//	go run ./integration/bench -short                  # CI: 20,000 records, fails unless all landed exactly once
//	go run ./integration/bench -rev HEAD               # the daemon as committed, not the working tree
//	go run ./integration/bench -mode upsert            # the table in upsert mode (change data capture)
//	go run ./integration/bench -mode append -keyed     # the same records as -mode upsert, appended
//	go run ./integration/bench -tables 200 -rate 5000 -duration 60s   # 200 topics, a table each: CPU, RSS, Storage Write connections
//
// Backlog mode (the default): the harness builds bqsink (go build from the
// repository root, or takes -bin), starts the stack with bqfake in bench
// mode (rows are counted, not decoded or stored: the server is never the
// bottleneck), produces N records on a topic of -partitions partitions, and
// then runs bqsink with a config file at the defaults, except what points it
// at the stack, until its group's committed lag is 0 and the table holds N
// rows; then SIGTERM, which must end it with exit code 0. It measures the
// daemon's wall time (start until lag 0), CPU (user+sys from its rusage),
// CPU µs per record and peak RSS (ru_maxrss, cross-checked with VmHWM).
// Then the floor: this binary re-executed with -floor reads the same N
// records with franz-go and decodes each into a Go struct with hamba/avro
// (see floor.go); measured the same way. One table compares the two.
//
// Steady mode (-rate R): the daemon starts first, with metadata_column
// _kafka; once it is ready the harness produces R records per second for
// -duration, each stamped with the time it was produced, and bqfake records
// per row the time of BigQuery's acknowledgement minus the row's
// _kafka.timestamp. It reports p50, p99 and max of that freshness next to
// the daemon's batch.max_wait (the target is p99 ≤ max_wait + 250ms; it is
// reported, not enforced). -set metadata_column= turns the column off (and
// -set metadata_column=NAME renames it): the run then reports that
// freshness was not measured, and everything else as ever. Once the daemon
// has exited, the floor runs the same way (unless -no-floor): it starts in
// its own process on the offsets the topic then ends at, says when it is
// connected, and the harness produces the same records afresh at the same
// rate for the same duration, which the floor reads and decodes as they
// arrive, exiting once it has them all. Both rows' wall time runs from
// their run's first record produced; CPU is each process's whole life
// (startup, the wait for records, exit), and the report gives bqsink ÷
// floor CPU µs per record as backlog mode does.
//
// Backpressure (either mode): -bq-latency D makes bqfake answer each
// AppendRows request D after it arrived (SetAppendLatency: pipelined
// requests wait concurrently), -bq-rate N makes it acknowledge at most N
// rows per second over all connections (SetRowRate: each request waits
// for its share of one timeline, rows/N seconds, before it is counted and
// answered), -bq-conn-rate N at most N rows per second on each connection
// (SetConnectionRate: a timeline per connection, so more connections take
// more, as BigQuery's do). The report's header names them. The floor writes nothing to
// BigQuery, so neither slows it.
//
// Table mode (-mode, either run mode): append (the default) routes the
// topic's table in the config's short form, a row per record; upsert routes
// it with mode: upsert and no primary_key, so that the key schema's fields
// are the primary key, and each record becomes an UPSERT change (envelope
// none, sequence kafka_offset: the defaults). An upsert table needs keys:
// -keyed encodes every record's key as an Avro record of fields of its
// value holding the value's values, in the wire format under a key schema
// registered as <topic>-key (stock updates: variant_id, warehouse_id,
// timestamp; deliveries: delivery_id), unique per record. -mode upsert
// implies -keyed; without -keyed the keys are raw strings (EAN, delivery
// ID), as before -keyed existed, so that earlier figures stay comparable.
// For "upsert next to append of the same records", run -mode upsert and
// -mode append -keyed with the same -n and -seed: the values are the same
// bytes (bar DeliveryCreated's map entries, in Go's map order), and the
// keys too. The floor reads values alone, whatever the mode; the report
// names the table mode and the keys.
//
// Many tables (-tables N, either run mode): N topics <topic>-000 ... of
// -partitions partitions each (1 unless given), which the daemon
// subscribes to with one regular expression and writes each to the table
// of its name; records go round-robin over them. The report adds the most
// Storage Write connections (AppendRows calls) bqfake saw open at once,
// on a line of its own ("storage write connections: N"); bigquery.
// max_connections is BigQuery's default (-set bigquery.max_connections=N
// to change it). There is no floor: it would read the same records.
//
// Every mode fails (exit 1) unless the daemon reached lag 0, exited 0 on
// SIGTERM and the table's row count equals the records produced exactly.
// In upsert mode the daemon keeps one change per key per batch: the rows
// expected are the records less its bqsink_changes_superseded_total (read
// from /metrics at lag 0), which is 0 in backlog mode, keys being unique;
// steady mode cycles a pool of up to 50,000 records, so its keys repeat
// and a batch that spans a cycle supersedes some (reported).
// Progress goes to stderr, results to stdout (-json for JSON).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/bqsink/bqsink/integration/bqfake"
	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

type options struct {
	n          int
	schema     string
	partitions int
	short      bool
	rate       int
	duration   time.Duration
	timeout    time.Duration
	json       bool
	bin        string
	seed       uint64
	noFloor    bool
	rev        string
	set        setFlags
	mode       string        // the table's mode: append or upsert
	keyed      bool          // records keyed in the wire format (upsert implies it)
	bqLatency  time.Duration // bqfake's added latency per append
	bqRate     int           // bqfake's cap on rows acknowledged per second; 0: none
	tables     int           // many tables: this many topics, a table each; 0: one
	bqConnRate int           // bqfake's cap on rows acknowledged per second per connection; 0: none
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "-floor", "--floor":
			os.Exit(floorMain(os.Args[2:]))
		case "-launch", "--launch":
			os.Exit(launchMain(os.Args[2:]))
		}
	}
	var o options
	flag.IntVar(&o.n, "n", 1_000_000, "records in the backlog (default 20000 with -short)")
	flag.StringVar(&o.schema, "schema", "seed", "records: seed (stock updates, v1 and v2 mixed) or delivery (nested DeliveryCreated with references)")
	flag.IntVar(&o.partitions, "partitions", 6, "partitions of the topic (of each topic with -tables; default 1 then)")
	flag.IntVar(&o.tables, "tables", 0, "many tables: this many topics <topic>-000, <topic>-001, ..., each to a table of its own, subscribed by a regular expression; records go round-robin over them; reports the peak of concurrent Storage Write connections (no floor)")
	flag.BoolVar(&o.short, "short", false, "CI mode: 20,000 records unless -n is given")
	flag.IntVar(&o.rate, "rate", 0, "steady mode: produce this many records per second while the daemon runs (0: backlog mode)")
	flag.DurationVar(&o.duration, "duration", 60*time.Second, "steady mode: how long to produce")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Minute, "give up on the whole run after this")
	flag.BoolVar(&o.json, "json", false, "print the results as JSON instead of a table")
	flag.StringVar(&o.bin, "bin", "", "a bqsink binary to measure instead of building the repository's")
	flag.StringVar(&o.rev, "rev", "", "build bqsink from this git revision (e.g. HEAD, a commit) instead of the working tree")
	flag.Uint64Var(&o.seed, "seed", 42, "seed of the generated records")
	flag.BoolVar(&o.noFloor, "no-floor", false, "skip the floor (either mode)")
	flag.DurationVar(&o.bqLatency, "bq-latency", 0, "backpressure: BigQuery (bqfake) answers every append this long after it arrived (SetAppendLatency; either mode)")
	flag.IntVar(&o.bqConnRate, "bq-conn-rate", 0, "backpressure: BigQuery (bqfake) acknowledges at most this many rows per second on each Storage Write connection (SetConnectionRate; more connections take more; 0: no cap)")
	flag.IntVar(&o.bqRate, "bq-rate", 0, "backpressure: BigQuery (bqfake) acknowledges at most this many rows per second over all connections (SetRowRate; either mode; 0: no cap)")
	flag.Var(&o.set, "set", "key=value: set a daemon config key (dotted, e.g. batch.max_wait=500ms; the value is YAML); repeatable")
	flag.StringVar(&o.mode, "mode", sink.ModeAppend, "the table's mode: append (a row per record) or upsert (change data capture keyed by the record key; implies -keyed)")
	flag.BoolVar(&o.keyed, "keyed", false, "key every record with an Avro record of value fields, unique per record, in the wire format under the subject <topic>-key (upsert needs it; with append, the same records for a comparison)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	nSet, keyedSet, partitionsSet := false, false, false
	flag.Visit(func(f *flag.Flag) {
		nSet = nSet || f.Name == "n"
		keyedSet = keyedSet || f.Name == "keyed"
		partitionsSet = partitionsSet || f.Name == "partitions"
	})
	if o.tables > 0 {
		if !partitionsSet {
			o.partitions = 1
		}
		o.noFloor = true
	}
	if o.short && !nSet {
		o.n = 20_000
	}
	if o.mode == sink.ModeUpsert {
		if keyedSet && !o.keyed {
			fmt.Fprintln(os.Stderr, "bench: -mode upsert needs keyed records: drop -keyed=false")
			os.Exit(2)
		}
		o.keyed = true
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeoutCause(ctx, o.timeout, fmt.Errorf("-timeout %v reached", o.timeout))
	err := run(ctx, o)
	cancel()
	stop()
	killChildren()
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (%v)", err, cause)
		}
		fmt.Fprintln(os.Stderr, "bench: FAIL:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func run(ctx context.Context, o options) (err error) {
	fx, ok := fixtures[o.schema]
	if !ok {
		return fmt.Errorf("-schema %q: want seed or delivery", o.schema)
	}
	switch {
	case o.mode != sink.ModeAppend && o.mode != sink.ModeUpsert:
		return fmt.Errorf("-mode %q: want %s or %s", o.mode, sink.ModeAppend, sink.ModeUpsert)
	case o.n <= 0:
		return fmt.Errorf("-n %d: want a positive number", o.n)
	case o.partitions <= 0:
		return fmt.Errorf("-partitions %d: want a positive number", o.partitions)
	case o.rate < 0:
		return fmt.Errorf("-rate %d: want a positive number", o.rate)
	case o.rate > 0 && o.duration <= 0:
		return fmt.Errorf("-duration %v: want a positive duration", o.duration)
	case o.bqLatency < 0:
		return fmt.Errorf("-bq-latency %v: want a positive duration or 0", o.bqLatency)
	case o.bqRate < 0:
		return fmt.Errorf("-bq-rate %d: want a positive number or 0", o.bqRate)
	case o.bqConnRate < 0:
		return fmt.Errorf("-bq-conn-rate %d: want a positive number or 0", o.bqConnRate)
	case o.tables < 0 || o.tables > 1000:
		return fmt.Errorf("-tables %d: want 0 to 1000", o.tables)
	case o.tables > 0 && (o.keyed || o.mode != sink.ModeAppend):
		return fmt.Errorf("-tables runs append tables of unkeyed records: drop -keyed and -mode")
	}
	root, err := repoRoot(ctx)
	if err != nil {
		return err
	}
	commit := daemonCommit(ctx, root)
	tmp, err := os.MkdirTemp("", "bqsink-bench-")
	if err != nil {
		return err
	}
	defer func() {
		if err == nil {
			_ = os.RemoveAll(tmp)
			return
		}
		_ = os.Remove(filepath.Join(tmp, "bqsink"))
		_ = os.RemoveAll(filepath.Join(tmp, "src"))
		logf("logs kept in %s", tmp)
	}()

	bin := o.bin
	switch {
	case bin != "":
		commit = "given binary " + bin
	default:
		src := root
		if o.rev != "" {
			if src, commit, err = exportRev(ctx, root, o.rev, filepath.Join(tmp, "src")); err != nil {
				return err
			}
		}
		bin = filepath.Join(tmp, "bqsink")
		began := time.Now()
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
		build.Dir = src
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("go build bqsink in %s: %v\n%s", src, err, out)
		}
		logf("built bqsink (commit %s) in %.1f s", commit, time.Since(began).Seconds())
	}

	h := &harness{o: o, fx: fx, bin: bin, tmp: tmp, root: root, commit: commit}
	h.topicNames, h.tableNames = names(o.tables, fx)
	st, err := stack.Start(stack.Options{Partitions: int32(o.partitions), Topics: h.topicNames})
	if err != nil {
		return err
	}
	defer st.Close()
	bopts := &bqfake.BenchOptions{}
	if col := o.metadataColumn(); o.rate > 0 && col != "" {
		bopts.Freshness = col + ".timestamp"
	}
	st.BigQuery.SetBench(bopts)
	st.BigQuery.SetAppendLatency(o.bqLatency)
	st.BigQuery.SetRowRate(o.bqRate)
	st.BigQuery.SetConnectionRate(o.bqConnRate)

	h.st = st
	if o.rate > 0 {
		return h.steady(ctx)
	}
	return h.backlog(ctx)
}

// harness is one run's shared state.
type harness struct {
	o      options
	fx     fixture
	st     *stack.Stack
	bin    string
	tmp    string
	root   string
	commit string
	// topicNames and tableNames are the topics records go to and their
	// tables, in the same order (see names).
	topicNames, tableNames []string
}

// backlog is the default mode: N records waiting, then bqsink, then the
// floor.
func (h *harness) backlog(ctx context.Context) error {
	rec, err := h.fx.register(h.st, h.o.n, h.o.seed, h.o.keyed)
	if err != nil {
		return err
	}
	began := time.Now()
	if err := produceBacklog(ctx, h.st, h.topicNames, h.o.n, rec); err != nil {
		return err
	}
	took := time.Since(began)
	logf("produced %d %s records on %d partitions in %.2f s (%.0f records/s)", h.o.n, h.fx.name, h.o.partitions*len(h.topicNames), took.Seconds(), float64(h.o.n)/took.Seconds())
	rec = nil

	d, err := h.runDaemon(ctx, "bqsink-bench", nil, func() int { return h.o.n }, nil)
	if err != nil {
		return err
	}
	rep := h.report("backlog", h.o.n, d)
	if !h.o.noFloor {
		f, err := h.runFloor(ctx, h.o.n, nil, nil)
		if err != nil {
			return err
		}
		h.addFloor(&rep, f)
	}
	return rep.print(os.Stdout, h.o.json)
}

// addFloor puts the floor's result in the report, with the ratio.
func (h *harness) addFloor(rep *report, f result) {
	rep.Floor = &f
	rep.Notes = append(rep.Notes, rssNote("floor", f, "at its exit"))
	if h.o.keyed {
		rep.Notes = append(rep.Notes, "floor: reads and decodes the values alone, whatever the table mode (the keys are not decoded)")
	}
	if h.o.bqLatency > 0 || h.o.bqRate > 0 || h.o.bqConnRate > 0 {
		rep.Notes = append(rep.Notes, "floor: writes nothing to BigQuery, so -bq-latency, -bq-rate and -bq-conn-rate do not slow it")
	}
	if f.CPUUsPerRecord > 0 {
		rep.Ratio = rep.Bqsink.CPUUsPerRecord / f.CPUUsPerRecord
	}
}

// steady is -rate mode: the daemon first, then records at a fixed rate;
// then, unless -no-floor, the floor the same way: started on the offsets
// the topic ends at, then records at the same rate for the same duration
// (a fresh produce of the same records), read as they arrive.
func (h *harness) steady(ctx context.Context) error {
	total := int(float64(h.o.rate) * h.o.duration.Seconds())
	if total <= 0 {
		return fmt.Errorf("-rate %d for %v is no records", h.o.rate, h.o.duration)
	}
	poolSize := min(total, 50_000)
	rec, err := h.fx.register(h.st, poolSize, h.o.seed, h.o.keyed)
	if err != nil {
		return err
	}
	pool := make([]*kgo.Record, poolSize)
	for i := range pool {
		if pool[i], err = rec(i); err != nil {
			return err
		}
	}
	producer := func(produced *steadyProduced) func(ctx context.Context) (time.Time, error) {
		return func(ctx context.Context) (time.Time, error) {
			logf("producing %d records/s for %v", h.o.rate, h.o.duration)
			var err error
			*produced, err = produceSteady(ctx, h.st, h.topicNames, h.o.rate, h.o.duration, pool)
			return produced.first, err
		}
	}
	producedNote := func(who string, p steadyProduced) string {
		span := p.last.Sub(p.first)
		return fmt.Sprintf("%s: produced %d records in %.1f s (%.0f records/s, asked %d/s) once it was ready; its wall s runs from the first record produced",
			who, p.records, span.Seconds(), float64(p.records)/max(span.Seconds(), 1e-9), h.o.rate)
	}

	col := h.o.metadataColumn()
	var produced steadyProduced
	d, err := h.runDaemon(ctx, "bqsink-bench-steady", map[string]any{"metadata_column": metadataColumn},
		func() int { return produced.records }, producer(&produced))
	if err != nil {
		return err
	}
	rep := h.report("steady", produced.records, d)
	rep.MetadataColumn = col
	rep.Notes = append(rep.Notes, producedNote("bqsink", produced))

	stats := h.st.BigQuery.BenchStats()
	maxWait := h.maxWait()
	switch {
	case col == "":
		rep.FreshnessOff = "metadata_column is off (-set metadata_column=): freshness needs each row's " + metadataColumn + ".timestamp"
	case stats.NoTimestamp > 0 || len(stats.Freshness) != d.rows:
		return fmt.Errorf("freshness: %d rows carried %s.timestamp and %d did not, of %d rows written for %d records: is metadata_column %s still the daemon's key?",
			len(stats.Freshness), col, stats.NoTimestamp, d.rows, produced.records, col)
	default:
		rep.Freshness = freshnessOf(stats.Freshness, maxWait)
	}

	if !h.o.noFloor {
		o, err := h.st.GroupOffsets(ctx, "bqsink-bench-steady", h.fx.topic) // End is what matters
		if err != nil {
			return err
		}
		if len(o.End) != h.o.partitions {
			return fmt.Errorf("end offsets of %s: %d partitions, want %d", h.fx.topic, len(o.End), h.o.partitions)
		}
		var floorProduced steadyProduced
		f, err := h.runFloor(ctx, total, o.End, producer(&floorProduced))
		if err != nil {
			return err
		}
		if floorProduced.records != produced.records {
			return fmt.Errorf("floor: %d records produced, the daemon's run had %d", floorProduced.records, produced.records)
		}
		h.addFloor(&rep, f)
		rep.Notes = append(rep.Notes, producedNote("floor", floorProduced)+"; it ends once it has read them all, CPU s its whole life")
	}
	return rep.print(os.Stdout, h.o.json)
}

// report starts a run's report: what ran, and the daemon's outcome.
func (h *harness) report(mode string, records int, d daemonOutcome) report {
	_, peak := h.st.BigQuery.Connections()
	rep := report{Mode: mode, Schema: h.fx.name, Partitions: h.o.partitions, Topics: len(h.topicNames), Connections: peak, Commit: h.commit, Records: records,
		TableMode: h.o.mode, Bqsink: d.result, BQLatencyMs: ms(h.o.bqLatency), BQRowRate: h.o.bqRate, BQConnRate: h.o.bqConnRate}
	if h.o.keyed {
		rep.Keys = fmt.Sprintf("Avro in the wire format, subject %s-key: %s", h.fx.topic, strings.Join(h.fx.keyFields(), ", "))
	}
	if h.o.mode == sink.ModeUpsert {
		rep.Superseded = &d.superseded
	}
	rep.Notes = append(rep.Notes, d.notes...)
	return rep
}

// metadataColumn is the metadata_column steady mode configures.
const metadataColumn = "_kafka"

// metadataColumn is steady mode's metadata column: metadataColumn unless
// -set metadata_column gives another, or none ("" or nothing: off).
func (o options) metadataColumn() string {
	v, ok := o.set.lookup("metadata_column")
	switch {
	case !ok:
		return metadataColumn
	case v == nil:
		return ""
	}
	return fmt.Sprint(v)
}

// repoRoot is the module root: the directory of `go env GOMOD`.
func repoRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run from within the bqsink module (go env GOMOD is empty)")
	}
	return filepath.Dir(mod), nil
}

// exportRev writes the tree of a git revision to dir (git archive) and
// returns dir and the revision's short hash.
func exportRev(ctx context.Context, root, rev, dir string) (string, string, error) {
	out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--short=12", "--verify", rev+"^{commit}").Output()
	if err != nil {
		return "", "", fmt.Errorf("-rev %s: not a commit of %s", rev, root)
	}
	commit := strings.TrimSpace(string(out))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	archive := exec.CommandContext(ctx, "sh", "-c", `git -C "$1" archive --format=tar "$2" | tar -x -C "$3"`, "sh", root, commit, dir)
	if out, err := archive.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("git archive %s: %v\n%s", commit, err, out)
	}
	return dir, commit, nil
}

// daemonCommit is the repository's HEAD, marked when the daemon's sources
// differ from it.
func daemonCommit(ctx context.Context, root string) string {
	out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown (no git)"
	}
	commit := strings.TrimSpace(string(out))
	dirty, err := exec.CommandContext(ctx, "git", "-C", root, "status", "--porcelain", "--",
		"main.go", "config.go", "go.mod", "go.sum", "bq", "schema", "sink", "internal").Output()
	if err == nil && len(strings.TrimSpace(string(dirty))) > 0 {
		commit += " + uncommitted changes"
	}
	return commit
}

// names are the topics records go to and their tables: the fixture's, or
// with -tables that many topics numbered after it, each to the table of
// its default name (sink.DefaultTable), as the daemon routes them.
func names(tables int, fx fixture) (topics, tbls []string) {
	if tables == 0 {
		return []string{fx.topic}, []string{fx.table}
	}
	for i := range tables {
		t := fmt.Sprintf("%s-%03d", fx.topic, i)
		topics = append(topics, t)
		tbls = append(tbls, sink.DefaultTable(t))
	}
	return topics, tbls
}

// rowCount is how many rows the tables hold.
func (h *harness) rowCount() int {
	n := 0
	for _, t := range h.tableNames {
		n += h.st.BigQuery.RowCount(stack.Project, stack.Dataset, t)
	}
	return n
}

// groupOffsets reads what group committed on every topic, and their ends,
// as one Offsets whose partitions are numbered across the topics.
func (h *harness) groupOffsets(ctx context.Context, group string) (stack.Offsets, error) {
	topics := h.topicNames
	if len(topics) == 1 {
		return h.st.GroupOffsets(ctx, group, topics[0])
	}
	by, err := h.st.GroupOffsetsOf(ctx, group, topics...)
	if err != nil {
		return stack.Offsets{}, err
	}
	all := stack.Offsets{Committed: map[int32]int64{}, End: map[int32]int64{}}
	for i, t := range topics {
		o := by[t]
		base := int32(i * h.o.partitions)
		for p, v := range o.End {
			all.End[base+p] = v
		}
		for p, v := range o.Committed {
			all.Committed[base+p] = v
		}
	}
	return all, nil
}
