// Command demo runs bqsink end to end on a local stack in one process: a
// Kafka broker, a Schema Registry and the BigQuery test server. It registers
// the seed's stock-update schema v1 and v2, produces records of both
// versions, runs the real sink until every record is committed, and prints
// what landed in BigQuery.
//
//	go run ./integration/demo              # the whole pipeline, then exit
//	go run ./integration/demo -serve       # only the stack, on fixed ports,
//	                                       # for `go run . -config config.yaml`
package main

import (
	"context"
	"flag"
	"fmt"
	"math/big"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/sink"
)

func main() {
	serve := flag.Bool("serve", false, "start only the stack on fixed ports (Kafka 9092, registry 8081, BigQuery 9050/9060), produce the records, and keep it up until interrupted")
	records := flag.Int("records", 4000, "stock updates to produce")
	partitions := flag.Int("partitions", 3, "partitions of the topic")
	verbose := flag.Bool("v", false, "show the sink's info logs")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	if *serve {
		err = serveStack(ctx, *records, int32(*partitions))
	} else {
		err = demo(ctx, *records, int32(*partitions), *verbose)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func start(ctx context.Context, fixed bool, n int, partitions int32) (*stack.Stack, error) {
	st, err := stack.Start(stack.Options{Fixed: fixed, Partitions: partitions, Topics: []string{stack.StockTopic}})
	if err != nil {
		return nil, err
	}
	fmt.Printf("local stack: Kafka %s, Schema Registry %s, BigQuery REST %s gRPC %s\n",
		strings.Join(st.Brokers(), ","), st.RegistryURL(), st.BigQuery.RESTEndpoint(), st.BigQuery.GRPCEndpoint())
	schemas, err := st.RegisterStock()
	if err != nil {
		st.Close()
		return nil, err
	}
	fmt.Printf("registered %s: v1 as schema %d, v2 as schema %d\n", stack.StockSubject, schemas.V1ID, schemas.V2ID)
	if n == 0 {
		return st, nil
	}
	updates := stack.StockUpdates(n, uint64(time.Now().UnixNano()))
	recs := make([]*kgo.Record, len(updates))
	v2 := 0
	for i, u := range updates {
		if recs[i], err = schemas.Record(u); err != nil {
			st.Close()
			return nil, err
		}
		if u.V2 {
			v2++
		}
	}
	if err := st.Produce(ctx, recs...); err != nil {
		st.Close()
		return nil, fmt.Errorf("produce: %w", err)
	}
	fmt.Printf("produced %d records (%d v1, %d v2) to %s (%d partitions)\n", n, n-v2, v2, stack.StockTopic, partitions)
	return st, nil
}

func serveStack(ctx context.Context, n int, partitions int32) error {
	st, err := start(ctx, true, n, partitions)
	if err != nil {
		return err
	}
	defer st.Close()
	fmt.Println("stack is up; in another terminal run:  go run . -config config.yaml")
	fmt.Println("Ctrl-C stops it.")
	<-ctx.Done()
	rows := st.BigQuery.RowCount(stack.Project, stack.Dataset, stack.StockTable)
	fmt.Printf("\n%s.%s holds %d rows\n", stack.Dataset, stack.StockTable, rows)
	return nil
}

func demo(ctx context.Context, n int, partitions int32, verbose bool) error {
	ctx, cancel := context.WithTimeout(ctx, 55*time.Second)
	defer cancel()
	st, err := start(ctx, false, n, partitions)
	if err != nil {
		return err
	}
	defer st.Close()

	level := zapcore.WarnLevel
	if verbose {
		level = zapcore.InfoLevel
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.OutputPaths = []string{"stderr"}
	log, err := zc.Build()
	if err != nil {
		return err
	}

	// The same constructor as main.go, pointed at the local stack.
	cfg := st.Config("bqsink-demo", stack.StockTopic)
	cfg.Batch = sink.BatchConfig{} // the production defaults
	s, err := sink.New(cfg, sink.WithLogger(log))
	if err != nil {
		return err
	}

	began := time.Now()
	runCtx, stopSink := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- s.Run(runCtx) }()
	offsets, waitErr := st.WaitCommitted(ctx, "bqsink-demo", stack.StockTopic)
	took := time.Since(began)
	stopSink()
	if err := <-ran; err != nil {
		return fmt.Errorf("sink: %w", err)
	}
	if waitErr != nil {
		return waitErr
	}
	fmt.Printf("sink: %d records written and committed in %s (%.0f records/s, including group join)\n",
		n, took.Round(time.Millisecond), float64(n)/took.Seconds())

	tbl, err := st.ReadTable(ctx, stack.StockTable)
	if err != nil {
		return err
	}
	fmt.Printf("\nrows written per table\n  %s.%s.%s  %d rows, %d columns\n", stack.Project, stack.Dataset, stack.StockTable, len(tbl.Rows), len(tbl.Schema))
	printSample(tbl, 8)
	printOffsets(offsets)
	if len(tbl.Rows) < n {
		return fmt.Errorf("%d records produced but only %d rows in BigQuery", n, len(tbl.Rows))
	}
	return nil
}

func printSample(tbl stack.Table, k int) {
	cols := []string{"timestamp", "ean", "warehouse_name", "delta", "stock_after_adjust", "adjusted_at", "unit_cost", "reason"}
	rows := slices.Clone(tbl.Rows)
	sort.Slice(rows, func(i, j int) bool {
		a, _ := rows[i]["timestamp"].(int64)
		b, _ := rows[j]["timestamp"].(int64)
		return a < b
	})
	fmt.Printf("\nsample rows (%d of %d, by timestamp)\n", min(k, len(rows)), len(rows))
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  "+strings.Join(cols, "\t"))
	for _, r := range rows[:min(k, len(rows))] {
		cells := make([]string, len(cols))
		for i, c := range cols {
			cells[i] = cell(r[c])
		}
		fmt.Fprintln(tw, "  "+strings.Join(cells, "\t"))
	}
	_ = tw.Flush()
}

func cell(v bigquery.Value) string {
	switch v := v.(type) {
	case nil:
		return "NULL"
	case *big.Rat:
		return v.FloatString(4)
	case time.Time:
		return v.UTC().Format("2006-01-02 15:04:05")
	default:
		return fmt.Sprint(v)
	}
}

func printOffsets(o stack.Offsets) {
	fmt.Printf("\ncommitted offsets (%s)\n", stack.StockTopic)
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "  partition\tcommitted\tend\tlag\t")
	ps := make([]int32, 0, len(o.End))
	for p := range o.End {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	for _, p := range ps {
		fmt.Fprintf(tw, "  %d\t%d\t%d\t%d\t\n", p, o.Committed[p], o.End[p], o.End[p]-o.Committed[p])
	}
	_ = tw.Flush()
	fmt.Printf("remaining lag: %d\n", o.Lag())
}
