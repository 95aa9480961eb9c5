package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// result is one row of the table.
type result struct {
	Name           string  `json:"name"`
	Records        int     `json:"records"`
	WallS          float64 `json:"wall_s"`
	RecordsPerS    float64 `json:"records_per_s"`
	CPUS           float64 `json:"cpu_s"`
	CPUUsPerRecord float64 `json:"cpu_us_per_record"`
	PeakRSSMiB     float64 `json:"peak_rss_mib"` // ru_maxrss
	VmHWMMiB       float64 `json:"vmhwm_mib"`    // the cross-check
}

func newResult(name string, records int, wall, cpu time.Duration, maxRSSKiB int64) result {
	return result{
		Name:           name,
		Records:        records,
		WallS:          wall.Seconds(),
		RecordsPerS:    float64(records) / wall.Seconds(),
		CPUS:           cpu.Seconds(),
		CPUUsPerRecord: float64(cpu.Microseconds()) / float64(records),
		PeakRSSMiB:     float64(maxRSSKiB) / 1024,
	}
}

// rssNote compares ru_maxrss with VmHWM.
func rssNote(name string, r result, when string) string {
	note := fmt.Sprintf("%s peak RSS: ru_maxrss %.1f MiB, VmHWM %s %.1f MiB", name, r.PeakRSSMiB, when, r.VmHWMMiB)
	if r.VmHWMMiB > 0 && math.Abs(r.PeakRSSMiB-r.VmHWMMiB) > 0.1*r.VmHWMMiB {
		note += " (they differ by more than 10%)"
	}
	return note
}

// freshness summarises BigQuery acknowledgement time minus record
// timestamp over the rows of a steady run.
type freshness struct {
	Count     int     `json:"count"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	MaxMs     float64 `json:"max_ms"`
	MaxWaitMs float64 `json:"batch_max_wait_ms"`
	TargetMs  float64 `json:"target_p99_ms"` // max_wait + 250ms
}

func freshnessOf(samples []time.Duration, maxWait time.Duration) *freshness {
	f := &freshness{Count: len(samples), MaxWaitMs: ms(maxWait), TargetMs: ms(maxWait + 250*time.Millisecond)}
	if len(samples) == 0 {
		return f
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[int(math.Ceil(q*float64(len(s))))-1] } // nearest rank
	f.P50Ms, f.P99Ms, f.MaxMs = ms(at(0.50)), ms(at(0.99)), ms(s[len(s)-1])
	return f
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// report is everything a run prints.
type report struct {
	Mode       string `json:"mode"`
	Schema     string `json:"schema"`
	Partitions int    `json:"partitions"`
	// Topics is how many topics (and tables) the records went to.
	Topics int `json:"topics"`
	// Connections is the most Storage Write connections (AppendRows
	// calls) that were open at once while the daemon ran.
	Connections int    `json:"storage_write_connections"`
	Commit      string `json:"daemon_commit"`
	Records     int    `json:"records"`
	TableMode   string `json:"table_mode"`     // append or upsert
	Keys        string `json:"keys,omitempty"` // with -keyed: the records' keys
	// Superseded is, in upsert mode, how many changes the daemon left out
	// for a later one of the same key in their batch.
	Superseded *int `json:"superseded_changes,omitempty"`
	// BQLatencyMs and BQRowRate are the backpressure of -bq-latency and
	// -bq-rate (0: none).
	BQLatencyMs float64 `json:"bq_latency_ms"`
	BQRowRate   int     `json:"bq_row_rate"`
	BQConnRate  int     `json:"bq_connection_row_rate"` // -bq-conn-rate
	// MetadataColumn is, in steady mode, the daemon's metadata_column
	// ("": off).
	MetadataColumn string `json:"metadata_column,omitempty"`
	// FreshnessOff says why freshness was not measured, if it was not.
	FreshnessOff string     `json:"freshness_not_measured,omitempty"`
	Bqsink       result     `json:"bqsink"`
	Floor        *result    `json:"floor,omitempty"`
	Ratio        float64    `json:"cpu_per_record_ratio,omitempty"` // bqsink ÷ floor
	Freshness    *freshness `json:"freshness,omitempty"`
	Notes        []string   `json:"notes,omitempty"`
}

func (r report) print(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	where := fmt.Sprintf("%d partitions", r.Partitions)
	if r.Topics > 1 {
		where = fmt.Sprintf("%d topics of %d partitions, a table each", r.Topics, r.Partitions)
	}
	fmt.Fprintf(w, "\nbqsink bench, %s mode: %d %s records on %s; daemon at commit %s\n",
		r.Mode, r.Records, r.Schema, where, r.Commit)
	keys := "raw strings (not -keyed)"
	if r.Keys != "" {
		keys = r.Keys
	}
	fmt.Fprintf(w, "table mode %s; record keys: %s\n", r.TableMode, keys)
	bp := "none (appends answered at once, no row cap)"
	if r.BQLatencyMs > 0 || r.BQRowRate > 0 || r.BQConnRate > 0 {
		var parts []string
		if r.BQLatencyMs > 0 {
			parts = append(parts, fmt.Sprintf("each append answered %v after it arrived (-bq-latency)", time.Duration(r.BQLatencyMs*float64(time.Millisecond))))
		}
		if r.BQRowRate > 0 {
			parts = append(parts, fmt.Sprintf("at most %d rows/s acknowledged (-bq-rate)", r.BQRowRate))
		}
		if r.BQConnRate > 0 {
			parts = append(parts, fmt.Sprintf("at most %d rows/s per connection (-bq-conn-rate)", r.BQConnRate))
		}
		bp = strings.Join(parts, ", ")
	}
	fmt.Fprintf(w, "BigQuery backpressure: %s\n", bp)
	if r.Mode == "steady" {
		col := r.MetadataColumn
		if col == "" {
			col = "off"
		}
		fmt.Fprintf(w, "metadata_column: %s\n", col)
	}
	if r.Superseded != nil {
		fmt.Fprintf(w, "upsert: primary key = the key schema's fields; %d changes superseded in their batch\n", *r.Superseded)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\trecords\twall s\trecords/s\tCPU s\tCPU µs/record\tpeak RSS MiB\t")
	rows := []result{r.Bqsink}
	if r.Floor != nil {
		rows = append(rows, *r.Floor)
	}
	for _, x := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.0f\t%.2f\t%.2f\t%.1f\t\n", x.Name, x.Records, x.WallS, x.RecordsPerS, x.CPUS, x.CPUUsPerRecord, x.PeakRSSMiB)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nstorage write connections: %d\n", r.Connections)
	if r.Floor != nil {
		fmt.Fprintf(w, "\nbqsink ÷ floor, CPU µs/record: %.1f×\n", r.Ratio)
	}
	if r.FreshnessOff != "" {
		fmt.Fprintf(w, "\nfreshness: not measured: %s (CPU is measured as ever)\n", r.FreshnessOff)
	}
	if f := r.Freshness; f != nil {
		verdict := "within"
		if f.P99Ms > f.TargetMs {
			verdict = "over"
		}
		fmt.Fprintf(w, "\nfreshness (BigQuery acknowledgement − record timestamp) over %d rows: p50 %.0f ms, p99 %.0f ms, max %.0f ms\n", f.Count, f.P50Ms, f.P99Ms, f.MaxMs)
		fmt.Fprintf(w, "batch.max_wait %.0f ms: p99 is %s the target of max_wait + 250 ms = %.0f ms\n", f.MaxWaitMs, verdict, f.TargetMs)
	}
	fmt.Fprintln(w)
	for _, n := range r.Notes {
		fmt.Fprintln(w, "  "+n)
	}
	return nil
}
