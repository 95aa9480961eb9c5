package memory

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/api/option"
	"gopkg.in/yaml.v3"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/schema"
	"github.com/bqsink/bqsink/sink"
)

// This file proves memory.max_buffered_bytes: the sink's accounting of what
// it holds never passes the cap, a stalled table does not starve healthy
// ones, a member stopped at the cap holds its partitions until its shutdown
// commit, and (BenchmarkBacklogMemory) what the daemon's RSS is when it
// reads a large backlog under the default cap.

const mib = 1 << 20

// A large backlog read under the smallest cap with slow appends: the sink
// fills its budget and stays within it (bqsink_buffered_bytes_peak, its own
// running maximum, never above bqsink_buffered_bytes_limit), gives it all
// back once caught up, and every record lands exactly once. The backlog is
// written in batches of up to 1 MB, as a busy producer writes them; Kafka
// hands a consumer such a batch whole, about 8,000 records here, whatever
// its fetch limits, and the budget must still hold. The log says what
// franz-go buffered and what one poll returned.
func TestMemoryBoundedByConfig(t *testing.T) {
	const (
		records    = 200_000
		partitions = 6
		limit      = 4 * mib // the minimum memory.max_buffered_bytes
		group      = "g-memory-bounded"
	)
	ctx := t.Context()
	e := itest.NewEnvPartitions(t, partitions)
	began := time.Now()
	memProduce(ctx, t, e.St, e.Schemas, stack.StockTopic, records, 11)
	t.Logf("produced %d records in %v", records, time.Since(began).Round(time.Millisecond))

	// Slow answers keep rows in flight, so fetching outruns writing and the
	// budget, not BigQuery, is what holds the sink back.
	e.St.BigQuery.SetAppendLatency(100 * time.Millisecond)
	began = time.Now()
	watch := &memFetchWatch{}
	cfg := e.St.Config(group, stack.StockTopic)
	cfg.Memory.MaxBufferedBytes = limit
	r := memStart(ctx, t, cfg, sink.WithLogger(zaptest.NewLogger(t)), sink.WithKafkaOpts(kgo.WithHooks(watch)))
	buffered := memSample(func() float64 {
		v, _ := itest.MetricValueErr(r.Metrics, "bqsink_buffered_bytes")
		return v
	}, 5*time.Millisecond)
	paused := memSample(func() float64 {
		v, _ := itest.MetricValueErr(r.Metrics, "bqsink_partitions_paused")
		return v
	}, 5*time.Millisecond)
	o := memWaitCommitted(ctx, t, e.St, group, stack.StockTopic, 45*time.Second)
	took := time.Since(began)
	samples := buffered.stop()
	pausedSamples := paused.stop()

	peak := itest.MetricValue(t, r.Metrics, "bqsink_buffered_bytes_peak")
	if got := itest.MetricValue(t, r.Metrics, "bqsink_buffered_bytes_limit"); got != limit {
		t.Errorf("bqsink_buffered_bytes_limit = %.0f, want %d", got, limit)
	}
	t.Logf("caught up with %d records in %v (%.0f records/s); limit %d, peak %.0f (%.0f%%), buffered sampled %d times: max %.0f, mean %.0f",
		records, took.Round(time.Millisecond), records/took.Seconds(), limit, peak, 100*peak/limit, samples.n, samples.max, samples.mean())
	t.Logf("client: %s", watch)
	if peak > limit {
		t.Errorf("bqsink_buffered_bytes_peak %.0f exceeds memory.max_buffered_bytes %d by %.0f", peak, limit, peak-limit)
	}
	if samples.max > peak {
		t.Errorf("a sample of bqsink_buffered_bytes (%.0f) is above bqsink_buffered_bytes_peak (%.0f)", samples.max, peak)
	}
	// The cap must have been what held the sink back, else this proves
	// nothing: partitions paused at their share (three quarters of what is
	// left after franz-go's reserve, split among them), and the peak came
	// near what the shares add up to.
	if pausedSamples.max == 0 {
		t.Errorf("bqsink_partitions_paused never above 0: no partition reached its share of the cap, so this proves nothing")
	}
	if peak < limit/3 {
		t.Errorf("bqsink_buffered_bytes_peak %.0f is under a third of the limit %d: the cap was never approached, so this proves nothing", peak, limit)
	}
	if o.Lag() != 0 {
		t.Errorf("lag %d", o.Lag())
	}
	// Everything acknowledged is given back: the accounting does not leak.
	itest.WaitFor(t, 5*time.Second, "bqsink_buffered_bytes back to 0", func() bool {
		return itest.MetricValue(t, r.Metrics, "bqsink_buffered_bytes") == 0
	})
	if err := r.Stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	memCheckLanded(t, e.St, stack.StockTable, stack.StockUpdates(records, 11))
}

// One table's appends fail (it was deleted, and auto_create_tables is off)
// while a small memory cap is shared with a healthy table: the stalled
// partitions pause once they hold their share, the healthy topic's records
// all land meanwhile, and once the table is back everything lands, each
// record once.
func TestMemoryStalledTableDoesNotStarveOthers(t *testing.T) {
	const (
		partitions   = 6
		limit        = 4 * mib
		group        = "g-memory-stall"
		stalledTopic = "stock_stalled_topic"
		stalledTable = "stock_stalled"
		warmup       = 2_000
		backlog      = 60_000
	)
	ctx := t.Context()
	st, err := stack.Start(stack.Options{Partitions: partitions, Topics: []string{stack.StockTopic, stalledTopic}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	schemas, err := st.RegisterStock()
	if err != nil {
		t.Fatal(err)
	}
	bqc, err := bigquery.NewClient(ctx, stack.Project, option.WithEndpoint(st.BigQuery.RESTEndpoint()), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	defer bqc.Close()
	// Both tables exist with v1's columns, as an operator made them; the
	// sink adds v2's.
	reg, err := schema.NewRegistry(schema.Config{URL: st.RegistryURL()}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	v1, err := reg.Schema(ctx, schemas.V1ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{stack.StockTable, stalledTable} {
		if err := bqc.Dataset(stack.Dataset).Table(name).Create(ctx, &bigquery.TableMetadata{Schema: v1.Columns()}); err != nil {
			t.Fatal(err)
		}
	}

	cfg := st.Config(group, stack.StockTopic, stalledTopic)
	cfg.Tables = map[string]sink.TableRoute{stack.StockTopic: sink.Route(stack.StockTable), stalledTopic: sink.Route(stalledTable)}
	cfg.BigQuery.AutoCreateTables = false
	cfg.Memory.MaxBufferedBytes = limit
	watch := &memFetchWatch{}
	r := memStart(ctx, t, cfg, sink.WithLogger(zaptest.NewLogger(t)), sink.WithKafkaOpts(kgo.WithHooks(watch)))
	gauge := func(name string, labels ...string) float64 { return itest.MetricValue(t, r.Metrics, name, labels...) }

	// The stalled table takes rows at first: its schema is known, so what
	// fails later is the appends, not the table lookup.
	memProduce(ctx, t, st, schemas, stalledTopic, warmup, 20)
	memWaitCommitted(ctx, t, st, group, stalledTopic, 30*time.Second)
	md, err := bqc.Dataset(stack.Dataset).Table(stalledTable).Metadata(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bqc.Dataset(stack.Dataset).Table(stalledTable).Delete(ctx); err != nil {
		t.Fatal(err)
	}

	// The stalled topic's backlog comes first and may take what memory it
	// can; then the healthy topic's.
	stalled := stack.StockUpdates(backlog, 21)
	healthy := stack.StockUpdates(backlog, 22)
	memProduce(ctx, t, st, schemas, stalledTopic, backlog, 21)
	itest.WaitFor(t, 30*time.Second, "appends to the deleted table failing", func() bool {
		return gauge("bqsink_stage_failing", "stage", "append") > 0
	})
	stallBegan := time.Now()
	memProduce(ctx, t, st, schemas, stack.StockTopic, backlog, 22)
	// Committed is what BigQuery acknowledged: the healthy records landed.
	wctx, cancel := context.WithTimeout(ctx, 25*time.Second)
	_, waitErr := st.WaitCommitted(wctx, group, stack.StockTopic)
	cancel()
	took := time.Since(stallBegan)
	o, err := st.GroupOffsets(ctx, group, stack.StockTopic)
	if err != nil {
		t.Fatal(err)
	}

	held := gauge("bqsink_buffered_bytes")
	consumedStalled := gauge("bqsink_records_consumed_total", "topic", stalledTopic) - warmup
	consumedHealthy := gauge("bqsink_records_consumed_total", "topic", stack.StockTopic)
	t.Logf("%v after the healthy backlog of %d was produced, with %s gone: healthy lag %d, %.0f read; stalled %.0f read of %d; "+
		"buffered %.0f bytes (limit %d, peak %.0f)",
		took.Round(time.Millisecond), backlog, stalledTable, o.Lag(), consumedHealthy, consumedStalled, backlog,
		held, limit, gauge("bqsink_buffered_bytes_peak"))
	if waitErr != nil {
		t.Errorf("the healthy topic did not land within 25s while %s was gone: lag %d of %d", stalledTable, o.Lag(), backlog)
	}
	// Nothing of the stalled topic has been written, and it was not read
	// whole into memory: its partitions paused.
	if n := st.BigQuery.RowCount(stack.Project, stack.Dataset, stalledTable); n != 0 {
		t.Errorf("%s holds %d rows while deleted", stalledTable, n)
	}
	if consumedStalled >= backlog {
		t.Errorf("all %d records of the stalled topic were read while its table was gone: its partitions never paused", backlog)
	}
	if gauge("bqsink_stage_failing", "stage", "append") == 0 {
		t.Errorf("no append failing while %s is gone: the stall was not exercised", stalledTable)
	}

	// The operator restores the table; the stalled partitions resume
	// within the retry interval for failures only an operator can fix (30s).
	if err := bqc.Dataset(stack.Dataset).Table(stalledTable).Create(ctx, &bigquery.TableMetadata{Schema: md.Schema}); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	memWaitCommitted(ctx, t, st, group, stalledTopic, 60*time.Second)
	memWaitCommitted(ctx, t, st, group, stack.StockTopic, 30*time.Second)
	t.Logf("both backlogs landed %v after the table was restored", time.Since(healed).Round(time.Millisecond))
	itest.WaitFor(t, 5*time.Second, "bqsink_buffered_bytes back to 0", func() bool { return gauge("bqsink_buffered_bytes") == 0 })
	t.Logf("client: %s", watch)
	if err := r.Stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	memCheckLanded(t, st, stack.StockTable, healthy)
	memCheckLanded(t, st, stalledTable, stalled)
}

// A member told to stop while its memory is at memory.max_buffered_bytes
// (its poll loop waiting for acknowledgements, not polling) keeps its
// partitions until its shutdown commit is done: a member joining meanwhile
// gets them only after that, never while the stopping member still writes
// and commits them.
func TestShutdownAtTheMemoryCapHoldsThePartitionsUntilCommitted(t *testing.T) {
	itest.SkipShortParallel(t)
	ctx := t.Context()
	e := itest.NewEnv(t)
	const group = "g-cap-stop"
	// One 5 MiB row, over the 4 MiB cap: admitted alone, it holds the
	// memory while BigQuery takes its time to answer.
	big := stack.StockUpdates(1, 5)[0]
	big.WarehouseName = strings.Repeat("w", 5<<20)
	e.Produce(ctx, append([]stack.StockUpdate{big}, stack.StockUpdates(30, 6)...))
	e.St.BigQuery.SetAppendLatency(time.Minute)
	defer e.St.BigQuery.SetAppendLatency(0)

	first := e.Start(ctx, group, func(c *sink.Config) {
		c.Memory.MaxBufferedBytes = 4 << 20
		c.ShutdownTimeout = 12 * time.Second
	})
	itest.WaitUntil(t, 30*time.Second, func() string { return "the first member to reach its memory cap with an append in flight" }, func() bool {
		return itest.Gauge(t, first.Metrics, "bqsink_buffered_bytes") >= 4<<20 && itest.Gauge(t, first.Metrics, "bqsink_appends_inflight") >= 1
	})
	// The first member's shutdown waits three quarters of its
	// shutdown_timeout (9s) for the append BigQuery holds, then commits
	// and lets the partitions go. A second member must get none of them
	// before: earlier, a revoke would find no workers and hand them over.
	stopAt := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- first.Stop() }()
	second := e.Start(ctx, group, func(c *sink.Config) { c.ShutdownTimeout = time.Second })
	var assignedAt time.Time
	itest.WaitUntil(t, 40*time.Second, func() string { return "the second member to be assigned partitions" }, func() bool {
		if itest.Gauge(t, second.Metrics, "bqsink_partitions_assigned") == 0 {
			return false
		}
		assignedAt = time.Now()
		return true
	})
	held := assignedAt.Sub(stopAt)
	t.Logf("the second member was assigned partitions %v after the first was told to stop", held.Round(time.Millisecond))
	if wait := 9 * time.Second; held < wait-time.Second {
		t.Errorf("the second member was assigned partitions %v after the first was told to stop, while the first still waited for its append (%v): a revoke found no workers and handed them over before the shutdown commit",
			held.Round(time.Millisecond), wait)
	}
	<-stopped
}

// BenchmarkBacklogMemory runs the real daemon, as its own process with the
// default memory.max_buffered_bytes (128 MiB) and production batch
// settings, against a backlog of 1,000,000 stock updates waiting before it
// starts, on 6 and on 100 partitions, with GOMEMLIMIT unset (bqsink then
// sets Go's memory limit to max_buffered_bytes + 56 MiB) and set to off
// (no limit: the heap may grow to twice what is live). Per catch-up it reports the daemon's peak RSS (peak-rss-MiB:
// VmHWM once it caught up; max-sampled-rss-MiB: the highest VmRSS sampled
// every 100ms), the most heap a GC marked live (max-live-heap-MiB, from
// GODEBUG=gctrace=1), the sink's own bqsink_buffered_bytes_peak
// (buffered-peak-MiB), its CPU time per record (utime+stime from
// /proc/<pid>/stat until caught up) and records per second from its start
// to the commit of the last record (commit_interval is 100ms so that this
// is seen at once). The stack runs in the benchmark's process and shares
// the machine with the daemon, so throughput is a floor.
//
//	go test ./integration/memory -run '^$' -bench 'BacklogMemory$' -benchtime 1x -timeout 30m
//
// BQSINK_BENCH_BACKLOG=N changes the backlog (e.g. 100000 for a quick look).
func BenchmarkBacklogMemory(b *testing.B) {
	records := 1_000_000
	if v := os.Getenv("BQSINK_BENCH_BACKLOG"); v != "" {
		var err error
		if records, err = strconv.Atoi(v); err != nil || records <= 0 {
			b.Fatalf("BQSINK_BENCH_BACKLOG=%q: want a positive number", v)
		}
	}
	bin := itest.DaemonBinary(b)
	for _, partitions := range []int32{6, 100} {
		b.Run(fmt.Sprintf("partitions=%d", partitions), func(b *testing.B) {
			ctx := b.Context()
			st, err := stack.Start(stack.Options{Partitions: partitions, Topics: []string{stack.StockTopic}})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			schemas, err := st.RegisterStock()
			if err != nil {
				b.Fatal(err)
			}
			bqc, err := bigquery.NewClient(ctx, stack.Project, option.WithEndpoint(st.BigQuery.RESTEndpoint()), option.WithoutAuthentication())
			if err != nil {
				b.Fatal(err)
			}
			defer bqc.Close()
			began := time.Now()
			memProduce(ctx, b, st, schemas, stack.StockTopic, records, 42)
			b.Logf("produced %d records on %d partitions in %v", records, partitions, time.Since(began).Round(time.Millisecond))
			for _, limit := range []string{"", "off"} {
				name := "gomemlimit=" + limit
				if limit == "" {
					name = "gomemlimit=bqsink" // unset: bqsink sets max_buffered_bytes + 56 MiB
				}
				b.Run(name, func(b *testing.B) {
					var sum backlogRun
					for i := 0; i < b.N; i++ {
						// A fresh group reads the whole backlog again.
						group := fmt.Sprintf("bench-backlog-%d-%s-%d", partitions, limit, i)
						b.StartTimer()
						run := runBacklog(ctx, b, st, bin, group, limit, records)
						b.StopTimer()
						b.Logf("%s", run)
						sum.add(run)
						// The test server keeps every row; drop them before the next run.
						if err := bqc.Dataset(stack.Dataset).Table(stack.StockTable).Delete(ctx); err != nil {
							b.Fatal(err)
						}
					}
					n := float64(b.N)
					b.ReportMetric(sum.peakRSS/mib, "peak-rss-MiB")
					b.ReportMetric(sum.maxRSS/mib, "max-sampled-rss-MiB")
					b.ReportMetric(sum.bufferedPeak/mib, "buffered-peak-MiB")
					b.ReportMetric(sum.maxLive/mib, "max-live-heap-MiB")
					b.ReportMetric(sum.cpu.Seconds()*1e6/(n*float64(records)), "cpu-µs/record")
					b.ReportMetric(n*float64(records)/sum.wall.Seconds(), "records/s")
				})
			}
		})
	}
}

// BenchmarkBacklogMemoryHeapProfile is BenchmarkBacklogMemory's backlog
// read by the in-process sink, for what the daemon cannot show (it has no
// pprof endpoint): every second it writes a heap profile (live objects as
// of the last GC) to $BQSINK_BENCH_HEAPPROFILE.<partitions>.<n> and logs
// bqsink_buffered_bytes then. The profiles also hold the stack's servers
// (kfake's log, bqfake's rows, which only grow); look at what the consumer
// and the sink hold:
//
//	BQSINK_BENCH_HEAPPROFILE=/tmp/heap go test ./integration/memory -run '^$' -bench BacklogMemoryHeapProfile -benchtime 1x -timeout 30m
//	go tool pprof -sample_index=inuse_space -top -focus 'kgo\.\(\*source\)|bqsink/sink|bqsink/bq\.|bqsink/schema' /tmp/heap.100.7
func BenchmarkBacklogMemoryHeapProfile(b *testing.B) {
	path := os.Getenv("BQSINK_BENCH_HEAPPROFILE")
	if path == "" {
		b.Skip("set BQSINK_BENCH_HEAPPROFILE to a path prefix for the heap profiles")
	}
	records := 1_000_000
	if v := os.Getenv("BQSINK_BENCH_BACKLOG"); v != "" {
		var err error
		if records, err = strconv.Atoi(v); err != nil || records <= 0 {
			b.Fatalf("BQSINK_BENCH_BACKLOG=%q: want a positive number", v)
		}
	}
	for _, partitions := range []int32{6, 100} {
		b.Run(fmt.Sprintf("partitions=%d", partitions), func(b *testing.B) {
			ctx := b.Context()
			st, err := stack.Start(stack.Options{Partitions: partitions, Topics: []string{stack.StockTopic}})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			schemas, err := st.RegisterStock()
			if err != nil {
				b.Fatal(err)
			}
			memProduce(ctx, b, st, schemas, stack.StockTopic, records, 42)
			for i := 0; i < b.N; i++ {
				group := fmt.Sprintf("bench-profile-%d-%d", partitions, i)
				cfg := st.Config(group, stack.StockTopic)
				cfg.Batch = sink.BatchConfig{} // production defaults
				r := memStart(ctx, b, cfg, sink.WithLogger(zap.NewNop()))
				var written []string
				var werr error
				sampler := memSample(func() float64 {
					v, _ := itest.MetricValueErr(r.Metrics, "bqsink_buffered_bytes")
					file := fmt.Sprintf("%s.%d.%d", path, partitions, len(written))
					f, err := os.Create(file)
					if err == nil {
						err = pprof.Lookup("heap").WriteTo(f, 0)
						if cerr := f.Close(); err == nil {
							err = cerr
						}
					}
					if err != nil && werr == nil {
						werr = err
					}
					written = append(written, fmt.Sprintf("%s (bqsink_buffered_bytes %.1f MiB)", file, v/mib))
					return v
				}, time.Second)
				memWaitCommitted(ctx, b, st, group, stack.StockTopic, 10*time.Minute)
				sampler.stop()
				if err := r.Stop(); err != nil {
					b.Fatal(err)
				}
				if werr != nil {
					b.Fatal(werr)
				}
				b.Logf("heap profiles:\n%s", strings.Join(written, "\n"))
			}
		})
	}
}

// backlogRun is what one daemon run through a backlog measured.
type backlogRun struct {
	wall         time.Duration // start to the last commit
	cpu          time.Duration // utime+stime until then
	peakRSS      float64       // VmHWM, bytes, once caught up
	maxRSS       float64       // the highest VmRSS sampled
	samples      int
	bufferedPeak float64 // bqsink_buffered_bytes_peak
	heapSys      float64 // go_memstats_heap_sys_bytes once caught up
	// From GODEBUG=gctrace=1: collections, the most heap one marked live,
	// the highest heap goal.
	gcs              int
	maxLive, maxGoal float64
	records          int
}

func (r *backlogRun) add(o backlogRun) {
	r.wall += o.wall
	r.cpu += o.cpu
	r.peakRSS = max(r.peakRSS, o.peakRSS)
	r.maxRSS = max(r.maxRSS, o.maxRSS)
	r.bufferedPeak = max(r.bufferedPeak, o.bufferedPeak)
	r.maxLive = max(r.maxLive, o.maxLive)
	r.maxGoal = max(r.maxGoal, o.maxGoal)
}

func (r backlogRun) String() string {
	return fmt.Sprintf("%d records in %v (%.0f records/s), CPU %v (%.1f µs/record); VmHWM %.1f MiB, highest of %d VmRSS samples %.1f MiB; "+
		"bqsink_buffered_bytes_peak %.1f MiB; %d GCs, the most marked live %.0f MB, highest goal %.0f MB; Go heap from the OS %.1f MiB",
		r.records, r.wall.Round(time.Millisecond), float64(r.records)/r.wall.Seconds(), r.cpu.Round(time.Millisecond),
		r.cpu.Seconds()*1e6/float64(r.records), r.peakRSS/mib, r.samples, r.maxRSS/mib, r.bufferedPeak/mib,
		r.gcs, r.maxLive/1e6, r.maxGoal/1e6, r.heapSys/mib)
}

// runBacklog starts the daemon as group on the stack's stock topic, waits
// until it committed every record, measures it, and stops it with SIGTERM.
func runBacklog(ctx context.Context, b *testing.B, st *stack.Stack, bin, group, memLimit string, records int) backlogRun {
	b.Helper()
	dir := b.TempDir()
	addr := "127.0.0.1:" + strconv.Itoa(memFreePort(b))
	cfg := map[string]any{
		"kafka": map[string]any{
			"brokers":  st.Brokers(),
			"group_id": group,
			"topics":   []string{stack.StockTopic},
			// Catching up is seen at the first commit after the last
			// acknowledgement: commit often, so the wall time is exact.
			"commit_interval": "100ms",
		},
		"schema_registry": map[string]any{"url": st.RegistryURL()},
		"bigquery": map[string]any{
			"project":       stack.Project,
			"dataset":       stack.Dataset,
			"endpoint":      st.BigQuery.RESTEndpoint(),
			"grpc_endpoint": st.BigQuery.GRPCEndpoint(),
		},
		"tables": map[string]any{stack.StockTopic: stack.StockTable},
		"errors": map[string]any{"dlq_topic": stack.DLQTopic},
		"http":   map[string]any{"listen": addr},
		"log":    map[string]any{"level": "warn"},
	}
	text, err := yaml.Marshal(cfg)
	if err != nil {
		b.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, text, 0o600); err != nil {
		b.Fatal(err)
	}
	out, err := os.Create(filepath.Join(dir, "output"))
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(bin, "-config", cfgPath)
	cmd.Stdout, cmd.Stderr = out, out
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOMEMLIMIT=") && !strings.HasPrefix(kv, "GOGC=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if memLimit != "" {
		cmd.Env = append(cmd.Env, "GOMEMLIMIT="+memLimit)
	}
	// One stderr line per GC: the heap it marked live and its next goal.
	cmd.Env = append(cmd.Env, "GODEBUG=gctrace=1")
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	pid := cmd.Process.Pid
	defer func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	fail := func(format string, args ...any) {
		b.Helper()
		text, _ := os.ReadFile(out.Name())
		b.Fatalf("bqsink[%d]: %s\n%s", pid, fmt.Sprintf(format, args...), memTail(string(text), 50))
	}

	rss := memSample(func() float64 {
		v, _ := procStatusBytes(pid, "VmRSS")
		return v
	}, 100*time.Millisecond)
	defer rss.stop()
	done := make(chan error, 1)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	go func() {
		_, err := st.WaitCommitted(wctx, group, stack.StockTopic)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			fail("did not catch up: %v", err)
		}
	case err := <-exited:
		exited <- err
		fail("exited before catching up: %v", err)
	}
	run := backlogRun{wall: time.Since(start), records: records}
	if run.cpu, err = procCPU(pid); err != nil {
		fail("%v", err)
	}
	if run.peakRSS, err = procStatusBytes(pid, "VmHWM"); err != nil {
		fail("%v", err)
	}
	samples := rss.stop()
	run.maxRSS, run.samples = samples.max, samples.n
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/metrics")
	if err != nil {
		fail("/metrics: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		fail("/metrics: %v", err)
	}
	run.bufferedPeak = itest.PromText(body).Sum("bqsink_buffered_bytes_peak")
	run.heapSys = itest.PromText(body).Sum("go_memstats_heap_sys_bytes")
	trace, err := os.ReadFile(out.Name())
	if err != nil {
		fail("%v", err)
	}
	run.gcs, run.maxLive, run.maxGoal = gcTrace(string(trace))
	if n := st.BigQuery.RowCount(stack.Project, stack.Dataset, stack.StockTable); n < records {
		fail("caught up with %d rows written for %d records", n, records)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		fail("SIGTERM: %v", err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			fail("after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		fail("still running 30s after SIGTERM")
	}
	return run
}

// gcTrace reads GODEBUG=gctrace=1 lines ("gc 7 @0.5s 2%: ..., 40->42->20
// MB, 41 MB goal, ...") and returns the collections, the most heap one
// marked live and the highest goal, in bytes (the runtime's MB are 10^6).
func gcTrace(text string) (gcs int, maxLive, maxGoal float64) {
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, "gc ") {
			continue
		}
		for _, part := range strings.Split(line, ", ") {
			switch {
			case strings.HasSuffix(part, " MB") && strings.Count(part, "->") == 2:
				if live, err := strconv.ParseFloat(strings.TrimSuffix(part[strings.LastIndex(part, "->")+2:], " MB"), 64); err == nil {
					gcs++
					maxLive = max(maxLive, live*1e6)
				}
			case strings.HasSuffix(part, " MB goal"):
				if goal, err := strconv.ParseFloat(strings.TrimSuffix(part, " MB goal"), 64); err == nil {
					maxGoal = max(maxGoal, goal*1e6)
				}
			}
		}
	}
	return gcs, maxLive, maxGoal
}

// procStatusBytes reads a "VmXxx:  123 kB" line of /proc/<pid>/status.
func procStatusBytes(pid int, field string) (float64, error) {
	text, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(text), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("/proc/%d/status: %q", pid, line)
			}
			kb, err := strconv.ParseFloat(f[0], 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// procCPU is utime+stime of /proc/<pid>/stat. Both count clock ticks of
// USER_HZ, which is 100 on every Linux architecture Go supports.
func procCPU(pid int) (time.Duration, error) {
	text, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces; the fields after it are fixed.
	i := strings.LastIndexByte(string(text), ')')
	f := strings.Fields(string(text)[i+1:])
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, text)
	}
	// f[0] is field 3 (state): utime is field 14, stime 15.
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, text)
	}
	return time.Duration(utime+stime) * (time.Second / 100), nil
}

// memFreePort is a loopback port free at the time of the call.
func memFreePort(tb testing.TB) int {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// memTail is the last n lines of text.
func memTail(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// memProduce produces n stock updates of both versions (seed as for
// stack.StockUpdates) to topic as a producer catching up writes them:
// franz-go's defaults (snappy, batches up to Kafka's default
// max.message.bytes of 1 MB before compression), batches filled to that
// size. Such a batch holds about 10,000 records; a consumer is given it
// whole, whatever its fetch limits.
func memProduce(ctx context.Context, tb testing.TB, st *stack.Stack, schemas stack.StockSchemas, topic string, n int, seed uint64) {
	tb.Helper()
	const chunk = 50_000
	cl, err := kgo.NewClient(kgo.SeedBrokers(st.Brokers()...), kgo.ManualFlushing(), kgo.MaxBufferedRecords(chunk))
	if err != nil {
		tb.Fatal(err)
	}
	defer cl.Close()
	updates := stack.StockUpdates(n, seed)
	for len(updates) > 0 {
		part := updates[:min(chunk, len(updates))]
		updates = updates[len(part):]
		var mu sync.Mutex
		var firstErr error
		for _, u := range part {
			r, err := schemas.Record(u)
			if err != nil {
				tb.Fatal(err)
			}
			r.Topic = topic
			cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
				mu.Lock()
				defer mu.Unlock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
			})
		}
		fctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := cl.Flush(fctx)
		cancel()
		if err != nil {
			tb.Fatalf("produce to %s: %v", topic, err)
		}
		if firstErr != nil {
			tb.Fatalf("produce to %s: %v", topic, firstErr)
		}
	}
}

// memWaitCommitted waits up to within for group to commit every record of
// topic.
func memWaitCommitted(ctx context.Context, tb testing.TB, st *stack.Stack, group, topic string, within time.Duration) stack.Offsets {
	tb.Helper()
	wctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	o, err := st.WaitCommitted(wctx, group, topic)
	if err != nil {
		tb.Fatalf("group %s on %s: %v", group, topic, err)
	}
	return o
}

// memCheckLanded checks that table holds exactly one row per update and
// nothing else. The rows are read from the test server directly: through
// the REST client 200,000 rows take longer than the rest of the test.
func memCheckLanded(t *testing.T, st *stack.Stack, table string, updates []stack.StockUpdate) {
	t.Helper()
	seen := make(map[string]int, len(updates))
	for _, row := range st.BigQuery.Rows(stack.Project, stack.Dataset, table) {
		ean, _ := row["ean"].(string)
		ts, _ := row["timestamp"].(int64)
		seen[itest.Key(ean, ts)]++
	}
	missing, dup := 0, 0
	for _, u := range updates {
		switch seen[itest.Key(u.EAN, u.Timestamp)] {
		case 0:
			missing++
		case 1:
		default:
			dup++
		}
	}
	if missing > 0 || dup > 0 || len(seen) != len(updates) {
		t.Errorf("%s: %d of %d records missing, %d landed more than once, %d distinct rows", table, missing, len(updates), dup, len(seen))
	}
}

// memSampler reads a value at a fixed interval until stopped.
type memSampler struct {
	quit chan struct{}
	done chan struct{}

	mu  sync.Mutex
	got memSamples
}

// memSamples summarises what a memSampler read.
type memSamples struct {
	n        int
	max, sum float64
	last     float64
}

func (s memSamples) mean() float64 {
	if s.n == 0 {
		return 0
	}
	return s.sum / float64(s.n)
}

func memSample(read func() float64, every time.Duration) *memSampler {
	s := &memSampler{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			v := read()
			s.mu.Lock()
			s.got.n++
			s.got.sum += v
			s.got.max = max(s.got.max, v)
			s.got.last = v
			s.mu.Unlock()
			select {
			case <-tick.C:
			case <-s.quit:
				return
			}
		}
	}()
	return s
}

// stop ends the sampling and returns what was read; it may be called twice.
func (s *memSampler) stop() memSamples {
	select {
	case <-s.quit:
	default:
		close(s.quit)
	}
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got
}

// memStart runs a sink built by sink.New with opts (itest.StartSink with options)
// until the test ends or stop is called.
func memStart(ctx context.Context, tb testing.TB, cfg sink.Config, opts ...sink.Option) itest.Running {
	tb.Helper()
	metrics := prometheus.NewRegistry()
	s, err := sink.New(cfg, append([]sink.Option{sink.WithRegisterer(metrics)}, opts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			runErr = <-done
		})
		return runErr
	}
	tb.Cleanup(func() { _ = stop() })
	return itest.Running{Sink: s, Metrics: metrics, Stop: stop}
}

// memFetchWatch is a franz-go hook that sees what the consumer buffers and
// what one poll hands the sink: the input of the sink's memory accounting,
// logged so that a budget overrun can be traced to its cause.
type memFetchWatch struct {
	mu sync.Mutex
	// Records and key+value bytes buffered in the client, and the most.
	buffered, bufferedBytes       int64
	maxBuffered, maxBufferedBytes int64
	// Records and key+value bytes the current poll returned, and the most.
	poll, pollBytes       int64
	maxPoll, maxPollBytes int64
	// Batches read, their bytes on the wire and decompressed.
	batches, wire, raw int64
	maxBatchRaw        int64
}

func (w *memFetchWatch) OnPollStart(context.Context) {
	w.mu.Lock()
	w.poll, w.pollBytes = 0, 0
	w.mu.Unlock()
}

func (w *memFetchWatch) OnFetchRecordBuffered(r *kgo.Record) {
	w.mu.Lock()
	w.buffered++
	w.bufferedBytes += int64(len(r.Key) + len(r.Value))
	w.maxBuffered = max(w.maxBuffered, w.buffered)
	w.maxBufferedBytes = max(w.maxBufferedBytes, w.bufferedBytes)
	w.mu.Unlock()
}

func (w *memFetchWatch) OnFetchRecordUnbuffered(r *kgo.Record, polled bool) {
	w.mu.Lock()
	w.buffered--
	w.bufferedBytes -= int64(len(r.Key) + len(r.Value))
	if polled {
		w.poll++
		w.pollBytes += int64(len(r.Key) + len(r.Value))
		w.maxPoll = max(w.maxPoll, w.poll)
		w.maxPollBytes = max(w.maxPollBytes, w.pollBytes)
	}
	w.mu.Unlock()
}

func (w *memFetchWatch) OnFetchBatchRead(_ kgo.BrokerMetadata, _ string, _ int32, m kgo.FetchBatchMetrics) {
	w.mu.Lock()
	w.batches++
	w.wire += int64(m.CompressedBytes)
	w.raw += int64(m.UncompressedBytes)
	w.maxBatchRaw = max(w.maxBatchRaw, int64(m.UncompressedBytes))
	w.mu.Unlock()
}

func (w *memFetchWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	ratio := 0.0
	if w.wire > 0 {
		ratio = float64(w.raw) / float64(w.wire)
	}
	return fmt.Sprintf("at most %d records (%d key+value bytes) buffered in franz-go; one poll returned at most %d records (%d key+value bytes); "+
		"%d batches read, %d bytes on the wire, %d decompressed (%.1fx), largest batch %d bytes decompressed",
		w.maxBuffered, w.maxBufferedBytes, w.maxPoll, w.maxPollBytes, w.batches, w.wire, w.raw, ratio, w.maxBatchRaw)
}
