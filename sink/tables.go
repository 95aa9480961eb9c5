package sink

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bqsink/bqsink/bq"
)

// TableRoute is a topic's entry under tables: the table its records go to
// and how bqsink creates it. In YAML it is either the table name alone
// (the short form) or a mapping of these keys.
type TableRoute struct {
	// Table is "table" (in bigquery.dataset) or "dataset.table"; empty
	// means DefaultTable(topic).
	Table         string `yaml:"table"`
	TableSettings `yaml:",inline"`
}

// ShortForm names the key a bare scalar sets: `topic: table`.
func (TableRoute) ShortForm() string { return "table" }

// Route is the short form: records go to table, created with the defaults.
func Route(table string) TableRoute { return TableRoute{Table: table} }

// TableSettings are how bqsink creates a table (never applied to an
// existing one): partitioning, clustering, description and labels; and how
// it writes to it: appending rows, or applying changes (upsert mode).
type TableSettings struct {
	Partitioning *PartitioningConfig `yaml:"partitioning"`
	// Clustering lists up to four top-level columns.
	Clustering  []string          `yaml:"clustering"`
	Description string            `yaml:"description"`
	Labels      map[string]string `yaml:"labels"`

	// Mode is ModeAppend (every record a new row) or ModeUpsert (the
	// table mirrors the topic by primary key through BigQuery's change
	// data capture).
	Mode string `yaml:"mode"`
	// PrimaryKey lists the key columns of an upsert table; empty takes
	// the fields of the record key's schema.
	PrimaryKey []string `yaml:"primary_key"`
	// Envelope is EnvelopeNone (the value is the row) or EnvelopeDebezium
	// (the value is Debezium's change event).
	Envelope string `yaml:"envelope"`
	// Sequence says what orders the changes of a key: the Kafka offset
	// alone (the default), Debezium's source position, or integer fields.
	Sequence Sequence `yaml:"sequence"`
	// MaxStaleness is BigQuery's max_staleness table option, set when
	// bqsink creates the table; 0 leaves it unset.
	MaxStaleness time.Duration `yaml:"max_staleness"`
}

// Table modes and envelopes.
const (
	ModeAppend       = "append"
	ModeUpsert       = "upsert"
	EnvelopeNone     = "none"
	EnvelopeDebezium = "debezium"
)

// Sequence is what orders the changes of one key, ahead of the Kafka offset
// that always ends a change's sequence number: SequenceKafkaOffset (nothing
// more), SequenceDebezium, or up to three dotted paths of integer fields of
// the value. In YAML it is one word or a list of paths.
type Sequence []string

// Sequence words.
const (
	SequenceKafkaOffset = "kafka_offset"
	SequenceDebezium    = "debezium"
)

// OneScalar lets a bare scalar stand for a one-entry list (`sequence:
// debezium`).
func (Sequence) OneScalar() {}

// Word returns the sequence's keyword (kafka_offset when empty), or "" when
// it lists fields.
func (q Sequence) Word() string {
	switch {
	case len(q) == 0:
		return SequenceKafkaOffset
	case len(q) == 1 && (q[0] == SequenceKafkaOffset || q[0] == SequenceDebezium):
		return q[0]
	}
	return ""
}

// maxSequenceFields leaves the last of BigQuery's four sequence sections to
// the Kafka offset.
const maxSequenceFields = 3

// maxPrimaryKey is BigQuery's limit on primary key columns.
const maxPrimaryKey = 16

var fieldPath = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$`)

// PartitioningConfig is BigQuery time partitioning.
type PartitioningConfig struct {
	// Type is hour, day, month or year.
	Type string `yaml:"type"`
	// Field is a top-level TIMESTAMP, DATE or DATETIME column; empty
	// partitions by ingestion time.
	Field string `yaml:"field"`
	// Expiration deletes partitions older than it (400d, 36h); 0 keeps them.
	Expiration Days `yaml:"expiration"`
	// RequireFilter makes BigQuery refuse queries without a partition filter.
	RequireFilter bool `yaml:"require_filter"`
}

// Days is a duration that also takes whole days ("400d").
type Days time.Duration

// UnmarshalText reads "400d" or anything time.ParseDuration reads.
func (d *Days) UnmarshalText(b []byte) error {
	s := string(b)
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 || days > 100*365 {
			return fmt.Errorf("%q is not a number of days (write 400d, or a duration such as 36h)", s)
		}
		*d = Days(time.Duration(days) * 24 * time.Hour)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration (write 400d, 36h, 90m)", s)
	}
	*d = Days(v)
	return nil
}

// MarshalText writes whole days as "400d".
func (d Days) MarshalText() ([]byte, error) {
	v := time.Duration(d)
	if v != 0 && v%(24*time.Hour) == 0 {
		return []byte(strconv.FormatInt(int64(v/(24*time.Hour)), 10) + "d"), nil
	}
	return []byte(v.String()), nil
}

// SettingsFor returns the settings topic's table is created with: each key
// from the topic's entry under tables if set there, else from
// table_defaults; and, for messages, the config key each came from.
func (c Config) SettingsFor(topic string) (TableSettings, settingKeys) {
	own := c.Tables[topic].TableSettings
	s := c.TableDefaults
	keys := settingKeys{partitioning: "table_defaults.partitioning", clustering: "table_defaults.clustering", primaryKey: "table_defaults.primary_key"}
	prefix := "tables." + topic + "."
	if own.Partitioning != nil {
		s.Partitioning, keys.partitioning = own.Partitioning, prefix+"partitioning"
	}
	if own.Clustering != nil {
		s.Clustering, keys.clustering = own.Clustering, prefix+"clustering"
	}
	if own.Description != "" {
		s.Description = own.Description
	}
	if own.Labels != nil {
		s.Labels = own.Labels
	}
	if own.Mode != "" {
		s.Mode = own.Mode
	}
	if own.PrimaryKey != nil {
		s.PrimaryKey, keys.primaryKey = own.PrimaryKey, prefix+"primary_key"
	}
	if own.Envelope != "" {
		s.Envelope = own.Envelope
	}
	if own.Sequence != nil {
		s.Sequence = own.Sequence
	}
	if own.MaxStaleness != 0 {
		s.MaxStaleness = own.MaxStaleness
	}
	return s, keys
}

// settingKeys name where a topic's partitioning, clustering and primary
// key came from.
type settingKeys struct{ partitioning, clustering, primaryKey string }

// tableOptions is s as bq takes it, its errors naming keys.
func (s TableSettings) tableOptions(keys settingKeys) bq.TableOptions {
	o := bq.TableOptions{Clustering: s.Clustering, Description: s.Description, Labels: s.Labels,
		PartitioningKey: keys.partitioning, ClusteringKey: keys.clustering}
	if s.Mode == ModeUpsert {
		o.PrimaryKey, o.MaxStaleness, o.PrimaryKeyKey = s.PrimaryKey, s.MaxStaleness, keys.primaryKey
		if len(s.PrimaryKey) == 0 {
			o.PrimaryKeyKey = keys.primaryKey + " unset: the key schema's fields"
		}
	}
	if p := s.Partitioning; p != nil {
		o.Partitioning = &bq.Partitioning{Type: strings.ToUpper(p.Type), Field: p.Field, Expiration: time.Duration(p.Expiration), RequireFilter: p.RequireFilter}
	}
	return o
}

var (
	labelKey   = regexp.MustCompile(`^[\p{Ll}\p{Lo}][\p{Ll}\p{Lo}\p{N}_-]{0,62}$`)
	labelValue = regexp.MustCompile(`^[\p{Ll}\p{Lo}\p{N}_-]{0,63}$`)
)

// maxTableDescription is BigQuery's limit on a table description.
const maxTableDescription = 16384

// problems lists what is wrong with s under key, without the schema: the
// columns are checked when the table is about to be created.
func (s TableSettings) problems(key, metadataColumn string) []error {
	var errs []error
	bad := func(k, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", key, k, fmt.Sprintf(format, a...)))
	}
	if p := s.Partitioning; p != nil {
		switch strings.ToLower(p.Type) {
		case "hour", "day", "month", "year":
		case "":
			bad("partitioning.type", "required: hour, day, month or year")
		default:
			bad("partitioning.type", "%q is not hour, day, month or year", p.Type)
		}
		switch {
		case p.Field == "":
		case metadataColumn != "" && strings.HasPrefix(strings.ToLower(p.Field), strings.ToLower(metadataColumn)+"."):
			bad("partitioning.field", "%q is inside the metadata column; BigQuery partitions only on top-level columns: partition by ingestion time (leave field empty), which follows the records' arrival, or on a timestamp field of the records", p.Field)
		case !columnName.MatchString(p.Field):
			bad("partitioning.field", "%q is not a top-level column name (letters, digits, _)", p.Field)
		}
		if p.Expiration < 0 {
			bad("partitioning.expiration", "negative")
		}
	}
	columnList(bad, "clustering", s.Clustering, 4, "clusters")
	if n := len([]rune(s.Description)); n > maxTableDescription {
		bad("description", "%d characters; BigQuery takes at most %d", n, maxTableDescription)
	}
	errs = append(errs, s.changeProblems(key)...)
	if len(s.Labels) > 64 {
		bad("labels", "%d labels; BigQuery takes at most 64", len(s.Labels))
	}
	for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
		if !labelKey.MatchString(k) {
			bad("labels."+k, "key: lowercase letters, digits, _ and -, starting with a letter, at most 63 characters")
		}
		if !labelValue.MatchString(s.Labels[k]) {
			bad("labels."+k, "value %q: lowercase letters, digits, _ and -, at most 63 characters", s.Labels[k])
		}
	}
	return errs
}

// upserts reports whether any table may be in upsert mode.
// columnList reports, through bad, a list of top-level columns under key
// (clustering, primary_key) longer than most, or holding a name that is not
// a column's or is listed twice (BigQuery's names are case-insensitive).
func columnList(bad func(k, format string, a ...any), key string, cols []string, most int, verb string) {
	if len(cols) > most {
		bad(key, "%d columns; BigQuery %s on at most %d", len(cols), verb, most)
	}
	seen := map[string]bool{}
	for i, c := range cols {
		switch {
		case !columnName.MatchString(c):
			bad(fmt.Sprintf("%s[%d]", key, i), "%q is not a top-level column name (letters, digits, _)", c)
		case seen[strings.ToLower(c)]:
			bad(fmt.Sprintf("%s[%d]", key, i), "%q is listed twice", c)
		}
		seen[strings.ToLower(c)] = true
	}
}

func (c Config) upserts() bool {
	if c.TableDefaults.Mode == ModeUpsert {
		return true
	}
	for _, r := range c.Tables {
		if r.Mode == ModeUpsert {
			return true
		}
	}
	return false
}

// changeProblems checks the upsert mode's keys under key. A key's columns
// and a sequence field's type need the schema: they are checked when the
// table is about to be written (named by these keys).
func (s TableSettings) changeProblems(key string) []error {
	var errs []error
	bad := func(k, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", key, k, fmt.Sprintf(format, a...)))
	}
	switch s.Mode {
	case "", ModeAppend, ModeUpsert:
	default:
		bad("mode", "%q is not append or upsert", s.Mode)
	}
	upsert := s.Mode == ModeUpsert
	if len(s.PrimaryKey) > 0 && !upsert {
		bad("primary_key", "only tables with mode: upsert have a primary key")
	}
	columnList(bad, "primary_key", s.PrimaryKey, maxPrimaryKey, "keys")
	switch s.Envelope {
	case "", EnvelopeNone:
	case EnvelopeDebezium:
		if !upsert {
			bad("envelope", "debezium needs mode: upsert (a change event's before and after are applied by key)")
		}
	default:
		bad("envelope", "%q is not none or debezium", s.Envelope)
	}
	if s.Sequence.Word() != SequenceKafkaOffset && !upsert {
		bad("sequence", "only tables with mode: upsert order their changes")
	}
	switch w := s.Sequence.Word(); {
	case w == SequenceDebezium && s.Envelope != EnvelopeDebezium:
		bad("sequence", "debezium takes the source position from Debezium's change events: set envelope: debezium, or list integer fields of the value")
	case w == "":
		if len(s.Sequence) > maxSequenceFields {
			bad("sequence", "%d fields; at most %d (BigQuery's sequence numbers have four sections, and the Kafka offset takes the last)", len(s.Sequence), maxSequenceFields)
		}
		for i, f := range s.Sequence {
			if !fieldPath.MatchString(f) {
				bad(fmt.Sprintf("sequence[%d]", i), "%q is not kafka_offset, debezium or a dotted path of an integer field", f)
			}
		}
	}
	if s.MaxStaleness < 0 {
		bad("max_staleness", "negative")
	}
	return errs
}

// tableProblems checks the tables and table_defaults sections.
func (c Config) tableProblems() []error {
	var errs []error
	errs = append(errs, c.TableDefaults.problems("table_defaults.", c.MetadataColumn)...)
	topics := slices.Sorted(maps.Keys(c.Tables))
	byTable := map[string][]string{}
	for _, topic := range topics {
		r := c.Tables[topic]
		if r.Table != "" && !validTable(r.Table) {
			errs = append(errs, fmt.Errorf("tables.%s: %q is not a table name or dataset.table", topic, r.Table))
		}
		errs = append(errs, r.problems("tables."+topic+".", c.MetadataColumn)...)
		t := c.TableFor(topic)
		byTable[t] = append(byTable[t], topic)
	}
	if c.BigQuery.Delivery == bq.DeliveryExactlyOnce {
		upserts := []string{}
		if c.TableDefaults.Mode == ModeUpsert {
			upserts = append(upserts, "table_defaults.mode")
		}
		for _, topic := range topics {
			if c.Tables[topic].Mode == ModeUpsert {
				upserts = append(upserts, "tables."+topic+".mode")
			}
		}
		for _, k := range upserts {
			errs = append(errs, fmt.Errorf("%s: upsert with bigquery.delivery: exactly_once; changes carry sequence numbers ending in the Kafka offset, so applying one twice changes nothing: upserts need no exactly-once, set bigquery.delivery: at_least_once (exactly_once is for append tables)", k))
		}
	}
	// Topics sharing a table share its creation: their settings must agree.
	for _, table := range slices.Sorted(maps.Keys(byTable)) {
		ts := byTable[table]
		first, _ := c.SettingsFor(ts[0])
		for _, other := range ts[1:] {
			if s, _ := c.SettingsFor(other); !sameSettings(first, s) {
				sort.Strings(ts)
				errs = append(errs, fmt.Errorf("tables: %s and %s go to table %q with different settings (partitioning, clustering, description, labels, mode, primary_key, envelope, sequence, max_staleness)", ts[0], other, table))
				break
			}
		}
	}
	return errs
}

func sameSettings(a, b TableSettings) bool {
	pa, pb := a.Partitioning, b.Partitioning
	samePart := (pa == nil && pb == nil) || (pa != nil && pb != nil && *pa == *pb)
	return samePart && slices.Equal(a.Clustering, b.Clustering) && a.Description == b.Description && maps.Equal(a.Labels, b.Labels) &&
		a.Mode == b.Mode && slices.Equal(a.PrimaryKey, b.PrimaryKey) && a.Envelope == b.Envelope &&
		slices.Equal(a.Sequence, b.Sequence) && a.MaxStaleness == b.MaxStaleness
}
