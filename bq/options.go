package bq

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"cloud.google.com/go/bigquery"
	"go.uber.org/zap"
)

// ErrTableConfig: the table's configured partitioning, clustering or
// primary key does not fit the schema it is about to be created or written
// with (a column missing, not top-level, of a type BigQuery cannot
// partition, cluster or key on), or the table is configured to take changes
// in one place and appended rows in another. ErrPrimaryKey, an existing
// table keyed otherwise, is a kind of it. The rows are fine and the
// configuration is not: an operator must fix it.
var ErrTableConfig = errors.New("table settings do not fit the schema")

// TableOptions are how bq creates a table: BigQuery's time partitioning,
// clustering, description, labels, primary key and max staleness; and
// whether its rows are changes (PrimaryKey). The layout applies only when bq
// creates the table; an existing table is never altered for it (EnsureSchema
// warns once when its partitioning or clustering differ), but its primary
// key must be PrimaryKey (else ErrPrimaryKey). The zero value creates a
// plain table.
type TableOptions struct {
	// Partitioning is nil for none.
	Partitioning *Partitioning
	// Clustering lists up to four top-level columns, in order. Empty
	// clusters a table with a primary key by its first four key columns,
	// as BigQuery recommends for change tables.
	Clustering  []string
	Description string
	Labels      map[string]string

	// PrimaryKey, when not empty, makes the table a change table (BigQuery
	// change data capture): it is created with PRIMARY KEY (PrimaryKey) NOT
	// ENFORCED, its top-level columns other than the key's NULLABLE (a
	// DELETE carries the key alone), and its rows must be changes made with
	// Format.AppendChange. Up to 16 top-level columns of type STRING,
	// INTEGER, NUMERIC, BIGNUMERIC, BOOLEAN, DATE, DATETIME or TIMESTAMP.
	PrimaryKey []string
	// MaxStaleness is BigQuery's max_staleness table option: how stale
	// query results may be, which lets BigQuery apply changes in the
	// background rather than at query time. 0 leaves it unset; a negative
	// one fails creation with ErrTableConfig.
	MaxStaleness time.Duration

	// PartitioningKey, ClusteringKey and PrimaryKeyKey name the settings
	// in errors, e.g. the config keys they came from (default
	// "partitioning", "clustering", "primary_key").
	PartitioningKey, ClusteringKey, PrimaryKeyKey string
}

// Partitioning is a table's time partitioning.
type Partitioning struct {
	// Type is "HOUR", "DAY", "MONTH" or "YEAR".
	Type string
	// Field is a top-level TIMESTAMP, DATE or DATETIME column; empty
	// partitions by ingestion time.
	Field string
	// Expiration deletes partitions older than it; 0 keeps them.
	Expiration time.Duration
	// RequireFilter makes BigQuery refuse queries without a filter on the
	// partitioning column.
	RequireFilter bool
}

// SetOptions sets how the table is created if bq creates it, and whether
// its rows are changes (PrimaryKey). Call it before the first EnsureSchema.
//
// Whether the table takes changes is fixed for the Table's life by its
// first successful EnsureSchema or Row: the table's one connection carries
// rows of one kind, as BigQuery requires. Options that say otherwise later
// make EnsureSchema fail with ErrTableConfig (the Format stays as it was),
// as Row does for a Format of the other kind. Another key, of a Table
// already taking changes, is checked against the table at the next
// EnsureSchema.
func (t *Table) SetOptions(o TableOptions) {
	o.PrimaryKey = slices.Clone(o.PrimaryKey)
	o.Clustering = slices.Clone(o.Clustering)
	t.knownMu.Lock()
	t.opts = o
	t.knownMu.Unlock()
}

func (t *Table) options() TableOptions {
	t.knownMu.Lock()
	defer t.knownMu.Unlock()
	return t.opts
}

// CheckSettings reads the table and, if it exists with other partitioning
// or clustering than SetOptions gave, logs the one warning EnsureSchema
// would. For a change table (TableOptions.PrimaryKey) whose existing table
// has no primary key or another one, it returns the error EnsureSchema
// would, wrapping ErrPrimaryKey, with the DDL that fixes it. A table that
// does not exist is not an error: bq creates it. The read is bounded by
// Timeout.
func (t *Table) CheckSettings(ctx context.Context) error {
	if t.nameErr != nil {
		return t.nameErr
	}
	md, err := t.metadata(ctx)
	if httpStatus(err) == http.StatusNotFound {
		return nil
	}
	if err != nil {
		return err
	}
	o := t.options()
	t.warnIfDifferent(o, md)
	if len(o.PrimaryKey) > 0 {
		return checkPrimaryKey(t.Name(), o, md, false)
	}
	return nil
}

// clusterableTypes are the column types BigQuery clusters on.
var clusterableTypes = map[bigquery.FieldType]bool{
	bigquery.BigNumericFieldType: true, bigquery.BooleanFieldType: true, bigquery.DateFieldType: true,
	bigquery.DateTimeFieldType: true, bigquery.GeographyFieldType: true, bigquery.IntegerFieldType: true,
	bigquery.NumericFieldType: true, bigquery.StringFieldType: true, bigquery.TimestampFieldType: true,
	bigquery.RangeFieldType: true,
}

// checkOptions reports why o cannot create a table of schema, naming the
// setting and the column; nil if it can.
func checkOptions(o TableOptions, schema bigquery.Schema) error {
	if err := checkKey(o, schema); err != nil {
		return err
	}
	if o.MaxStaleness < 0 {
		return fmt.Errorf("%w: max_staleness %v is negative (0 leaves it unset)", ErrTableConfig, o.MaxStaleness)
	}
	pk, ck := o.PartitioningKey, o.ClusteringKey
	if pk == "" {
		pk = "partitioning"
	}
	if ck == "" {
		ck = "clustering"
	}
	col := func(name string) *bigquery.FieldSchema {
		for _, f := range schema {
			if strings.EqualFold(f.Name, name) {
				return f
			}
		}
		return nil
	}
	if p := o.Partitioning; p != nil && p.Field != "" {
		f := col(p.Field)
		switch {
		case f == nil:
			return fmt.Errorf("%w: %s.field %q is not a top-level column of the table (columns: %s)", ErrTableConfig, pk, p.Field, columnList(schema))
		case f.Repeated:
			return fmt.Errorf("%w: %s.field %q is REPEATED; BigQuery partitions on a single value", ErrTableConfig, pk, p.Field)
		}
		switch t := canonicalType(f.Type); {
		case t != bigquery.TimestampFieldType && t != bigquery.DateFieldType && t != bigquery.DateTimeFieldType:
			return fmt.Errorf("%w: %s.field %q is %s; BigQuery partitions on a TIMESTAMP, DATE or DATETIME column", ErrTableConfig, pk, p.Field, t)
		case t == bigquery.DateFieldType && strings.EqualFold(p.Type, "HOUR"):
			return fmt.Errorf("%w: %s.type hour on the DATE column %q; BigQuery partitions a DATE by day, month or year", ErrTableConfig, pk, p.Field)
		}
	}
	for _, name := range o.Clustering {
		f := col(name)
		switch {
		case f == nil:
			return fmt.Errorf("%w: %s: %q is not a top-level column of the table (columns: %s)", ErrTableConfig, ck, name, columnList(schema))
		case f.Repeated:
			return fmt.Errorf("%w: %s: %q is REPEATED; BigQuery clusters on single values", ErrTableConfig, ck, name)
		case !clusterableTypes[canonicalType(f.Type)]:
			return fmt.Errorf("%w: %s: %q is %s; BigQuery clusters on STRING, INTEGER, NUMERIC, BIGNUMERIC, BOOLEAN, DATE, DATETIME, TIMESTAMP, GEOGRAPHY or RANGE", ErrTableConfig, ck, name, canonicalType(f.Type))
		}
	}
	return nil
}

func columnList(s bigquery.Schema) string {
	names := make([]string, 0, len(s))
	for _, f := range s {
		names = append(names, f.Name)
	}
	return strings.Join(names, ", ")
}

// metadataFor is the TableMetadata bq creates the table with. A change
// table's non-key columns are made NULLABLE, and it is declared keyed and
// clustered by its key (see TableOptions).
func (o TableOptions) metadataFor(schema bigquery.Schema) *bigquery.TableMetadata {
	if o.change() {
		schema = changeSchema(schema, o.PrimaryKey)
	}
	md := &bigquery.TableMetadata{Schema: schema, Description: o.Description, Labels: maps.Clone(o.Labels)}
	if o.change() {
		md.TableConstraints = &bigquery.TableConstraints{PrimaryKey: &bigquery.PrimaryKey{Columns: slices.Clone(o.PrimaryKey)}}
	}
	if o.MaxStaleness > 0 {
		md.MaxStaleness = bigquery.IntervalValueFromDuration(o.MaxStaleness)
	}
	if p := o.Partitioning; p != nil {
		md.TimePartitioning = &bigquery.TimePartitioning{
			Type:       bigquery.TimePartitioningType(strings.ToUpper(p.Type)),
			Field:      p.Field,
			Expiration: p.Expiration,
		}
		md.RequirePartitionFilter = p.RequireFilter
	}
	if c := o.clustering(); len(c) > 0 {
		md.Clustering = &bigquery.Clustering{Fields: slices.Clone(c)}
	}
	return md
}

// warnIfDifferent logs once per Table when an existing table's
// partitioning or clustering is not what the options o would have created.
func (t *Table) warnIfDifferent(o TableOptions, md *bigquery.TableMetadata) {
	want, have := describePartitioning(o.Partitioning), "none"
	if tp := md.TimePartitioning; tp != nil {
		have = describePartitioning(&Partitioning{Type: string(tp.Type), Field: tp.Field, Expiration: tp.Expiration, RequireFilter: md.RequirePartitionFilter})
	}
	wantC, haveC := strings.Join(o.clustering(), ", "), ""
	if md.Clustering != nil {
		haveC = strings.Join(md.Clustering.Fields, ", ")
	}
	if strings.EqualFold(want, have) && strings.EqualFold(wantC, haveC) {
		return
	}
	if !t.warned.CompareAndSwap(false, true) {
		return
	}
	t.log.Warn("the table exists with other partitioning or clustering than configured; writing to it as it is (bqsink never alters an existing table's settings)",
		zap.String("configured_partitioning", want), zap.String("table_partitioning", have),
		zap.String("configured_clustering", orNone(wantC)), zap.String("table_clustering", orNone(haveC)))
}

func describePartitioning(p *Partitioning) string {
	if p == nil {
		return "none"
	}
	field := p.Field
	if field == "" {
		field = "ingestion time"
	}
	s := strings.ToUpper(p.Type) + " on " + field
	if p.Expiration > 0 {
		s += fmt.Sprintf(", expiring after %v", p.Expiration)
	}
	if p.RequireFilter {
		s += ", filter required"
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
