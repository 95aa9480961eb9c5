package bqfake

//lint:file-ignore ST1005 bqfake returns BigQuery's own error messages verbatim (capitalised, some ending in a period), as clients see them from BigQuery.

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	bq "google.golang.org/api/bigquery/v2"
)

// A table's layout: time partitioning, requirePartitionFilter, clustering
// and labels, checked as BigQuery checks them on tables.insert, tables.patch
// and tables.update, and the expiry of rows in expired partitions. Messages
// marked "observed" were reported from BigQuery itself; the others follow
// their pattern (see the package doc).

const (
	maxClusteringFields = 4
	maxLabels           = 64
	maxLabelChars       = 63
)

// Partitioning granularities (timePartitioning.type).
const (
	partitionHour  = "HOUR"
	partitionDay   = "DAY"
	partitionMonth = "MONTH"
	partitionYear  = "YEAR"
)

// Messages BigQuery answers for partitioning it refuses to change.
const (
	msgToPartitioned    = "Cannot convert non partitioned table to partitioned table."        // observed
	msgFromPartitioned  = "Cannot change partitioned table to non partitioned table."         // observed
	msgChangePartition  = "Cannot change partitioning/clustering spec."                       // observed
	msgNeedPartitioning = "Either interval partition or range partition should be specified." // observed
)

// topLevelColumn returns the top-level column called name (columns match
// case-insensitively, as in BigQuery), or nil.
func topLevelColumn(fields []*bq.TableFieldSchema, name string) *bq.TableFieldSchema {
	for _, f := range fields {
		if strings.EqualFold(f.Name, name) {
			return f
		}
	}
	return nil
}

// nestedColumn reports whether the dotted path names a field inside a
// RECORD column.
func nestedColumn(fields []*bq.TableFieldSchema, path string) bool {
	parts := strings.Split(path, ".")
	if len(parts) < 2 {
		return false
	}
	for i, p := range parts {
		f := topLevelColumn(fields, p)
		if f == nil {
			return false
		}
		if i == len(parts)-1 {
			return true
		}
		if f.Type != typeRecord {
			return false
		}
		fields = f.Fields
	}
	return false
}

// checkTimePartitioning applies BigQuery's rules to a timePartitioning
// against the (normalized) schema it would partition.
func checkTimePartitioning(tp *bq.TimePartitioning, fields []*bq.TableFieldSchema) error {
	switch tp.Type {
	case partitionHour, partitionDay, partitionMonth, partitionYear:
	case "":
		return errors.New("Missing required field: timePartitioning.type")
	default:
		return fmt.Errorf("Invalid value for timePartitioning.type: %s. The supported types are DAY, HOUR, MONTH and YEAR.", tp.Type)
	}
	if tp.ExpirationMs < 0 {
		return fmt.Errorf("Invalid value for timePartitioning.expirationMs: %d. It cannot be negative.", tp.ExpirationMs)
	}
	if tp.Field == "" {
		return nil // ingestion-time partitioning (_PARTITIONTIME)
	}
	col := topLevelColumn(fields, tp.Field)
	if col == nil {
		if nestedColumn(fields, tp.Field) {
			return errors.New("The field specified for partitioning can only be a top-level field.") // observed
		}
		return errors.New("The field specified for partitioning cannot be found in the schema.") // observed
	}
	switch col.Type {
	case typeTimestamp, typeDate, typeDatetime:
	default:
		// observed
		return fmt.Errorf("The field specified for time partitioning can only be of type TIMESTAMP, DATE or DATETIME. The type found is: %s.", col.Type)
	}
	if col.Mode == modeRepeated {
		return fmt.Errorf("The field specified for time partitioning can only be NULLABLE or REQUIRED. The mode found is: %s.", col.Mode)
	}
	if tp.Type == partitionHour && col.Type == typeDate {
		return fmt.Errorf("The field specified for hourly partitioning can only be of type TIMESTAMP or DATETIME. The type found is: %s.", col.Type)
	}
	return nil
}

// clusterable are the column types BigQuery clusters on (legacy names as
// stored): BIGNUMERIC, BOOL, DATE, DATETIME, GEOGRAPHY, INT64, NUMERIC,
// STRING, TIMESTAMP (and RANGE, which bqfake does not support as a column).
var clusterable = map[string]bool{
	typeBigNumeric: true, typeBoolean: true, typeDate: true, typeDatetime: true, typeGeography: true,
	typeInteger: true, typeNumeric: true, typeString: true, typeTimestamp: true,
}

// checkClustering applies BigQuery's rules to clustering fields against the
// (normalized) schema.
func checkClustering(names []string, fields []*bq.TableFieldSchema) error {
	if len(names) > maxClusteringFields {
		return fmt.Errorf("Too many clustering fields: %d. At most %d clustering fields are allowed.", len(names), maxClusteringFields)
	}
	for _, name := range names {
		col := topLevelColumn(fields, name)
		if col == nil {
			if nestedColumn(fields, name) {
				return fmt.Errorf("Fields specified for clustering can only be top-level fields. Invalid field: %s.", name) // observed
			}
			return fmt.Errorf("The field specified for clustering cannot be found in the schema. Invalid field: %s.", name) // observed
		}
		if !clusterable[col.Type] {
			return fmt.Errorf("Field %s has type %s, which is not supported for clustering.", col.Name, col.Type) // observed
		}
		if col.Mode == modeRepeated {
			return fmt.Errorf("Fields specified for clustering can only be NULLABLE or REQUIRED. Invalid field: %s.", name)
		}
	}
	return nil
}

// checkLabels applies BigQuery's label requirements: at most 64 labels;
// keys of 1 to 63 characters starting with a lowercase letter (or an
// international character); values of at most 63 characters; both only of
// lowercase letters, international characters, digits, '_' and '-'.
func checkLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return fmt.Errorf("Too many labels: %d. A table can have at most %d labels.", len(labels), maxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if !validLabel(k, true) {
			return errors.New(`Label key "` + k + `" has invalid characters.`)
		}
		if v := labels[k]; !validLabel(v, false) {
			return errors.New(`Label value "` + v + `" has invalid characters.`) // observed
		}
	}
	return nil
}

func validLabel(s string, key bool) bool {
	if !utf8.ValidString(s) || utf8.RuneCountInString(s) > maxLabelChars || (key && s == "") {
		return false
	}
	for i, r := range s {
		letter := unicode.IsLetter(r) && !unicode.IsUpper(r) && !unicode.IsTitle(r)
		if key && i == 0 && !letter {
			return false
		}
		if !letter && !unicode.IsDigit(r) && r != '_' && r != '-' {
			return false
		}
	}
	return true
}

// checkNewTableLayout checks, and normalizes in place, the layout of a table
// about to be created with the given normalized schema.
func checkNewTableLayout(t *bq.Table, fields []*bq.TableFieldSchema) error {
	if tp := t.TimePartitioning; tp != nil {
		c := *tp
		c.ForceSendFields, c.NullFields = nil, nil
		if err := checkTimePartitioning(&c, fields); err != nil {
			return err
		}
		// The deprecated timePartitioning.requirePartitionFilter sets the
		// table's requirement; it is echoed where it was sent.
		t.RequirePartitionFilter = t.RequirePartitionFilter || c.RequirePartitionFilter
		t.TimePartitioning = &c
	}
	if t.RequirePartitionFilter && t.TimePartitioning == nil && t.RangePartitioning == nil {
		return errors.New(msgNeedPartitioning)
	}
	if t.Clustering != nil {
		if len(t.Clustering.Fields) == 0 {
			t.Clustering = nil
		} else {
			if err := checkClustering(t.Clustering.Fields, fields); err != nil {
				return err
			}
			t.Clustering = &bq.Clustering{Fields: slices.Clone(t.Clustering.Fields)}
		}
	}
	return checkLabels(t.Labels)
}

// layoutChange is the part of a tables.patch/update request that concerns
// the layout, decoded with presence: a key absent from the request leaves
// the setting alone, null clears it.
type layoutChange struct {
	body    *bq.Table
	present map[string]json.RawMessage
}

func (c layoutChange) has(key string) bool { _, ok := c.present[key]; return ok }

func (c layoutChange) null(key string) bool { return string(c.present[key]) == "null" }

// applyLayout applies the layout part of a change to upd, which already
// carries the table's new schema; cur is the table as it is.
func (c layoutChange) applyLayout(upd, cur *bq.Table) error {
	if c.has("requirePartitionFilter") {
		v := c.body.RequirePartitionFilter
		upd.RequirePartitionFilter = v
		if tp := upd.TimePartitioning; tp != nil && tp.RequirePartitionFilter {
			cp := *tp
			cp.RequirePartitionFilter = v
			upd.TimePartitioning = &cp
		}
	}
	// The deprecated timePartitioning.requirePartitionFilter, when sent,
	// applies after the top-level one.
	if c.has("timePartitioning") {
		if err := c.applyTimePartitioning(upd, cur); err != nil {
			return err
		}
	}
	if upd.RequirePartitionFilter && upd.TimePartitioning == nil && upd.RangePartitioning == nil {
		return errors.New(msgNeedPartitioning)
	}
	if c.has("clustering") {
		var names []string
		if c.body.Clustering != nil {
			names = c.body.Clustering.Fields
		}
		if len(names) == 0 {
			upd.Clustering = nil
		} else {
			if err := checkClustering(names, upd.Schema.Fields); err != nil {
				return err
			}
			upd.Clustering = &bq.Clustering{Fields: slices.Clone(names)}
		}
	}
	return nil
}

// applyTimePartitioning: the partitioning type and field are fixed once a
// table exists, as is whether it is partitioned; the expiration and the
// (deprecated) requirePartitionFilter may change.
func (c layoutChange) applyTimePartitioning(upd, cur *bq.Table) error {
	if c.null("timePartitioning") {
		if cur.TimePartitioning != nil {
			return errors.New(msgFromPartitioned)
		}
		return nil
	}
	if cur.TimePartitioning == nil {
		return errors.New(msgToPartitioned)
	}
	var sub map[string]json.RawMessage
	if err := json.Unmarshal(c.present["timePartitioning"], &sub); err != nil {
		return errors.New("Invalid JSON payload received: timePartitioning: " + err.Error())
	}
	req := c.body.TimePartitioning
	tp := *cur.TimePartitioning
	if (req.Type != "" && req.Type != tp.Type) || (req.Field != "" && !strings.EqualFold(req.Field, tp.Field)) {
		return errors.New(msgChangePartition)
	}
	if _, ok := sub["expirationMs"]; ok {
		if req.ExpirationMs < 0 {
			return fmt.Errorf("Invalid value for timePartitioning.expirationMs: %d. It cannot be negative.", req.ExpirationMs)
		}
		tp.ExpirationMs = req.ExpirationMs
	}
	if _, ok := sub["requirePartitionFilter"]; ok {
		// true sets the table's requirement; false clears it only where it
		// was set through this deprecated field, since the Go client sends
		// false here with every partitioning update.
		switch {
		case req.RequirePartitionFilter:
			tp.RequirePartitionFilter = true
			upd.RequirePartitionFilter = true
		case tp.RequirePartitionFilter:
			tp.RequirePartitionFilter = false
			upd.RequirePartitionFilter = false
		}
	}
	upd.TimePartitioning = &tp
	return nil
}

// Rows in expired partitions.

// The range of time-unit column partitions: values outside it go to the
// __UNPARTITIONED__ partition, which has no partition time.
var (
	minPartitionTime = time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)
	endPartitionTime = time.Date(2160, 1, 1, 0, 0, 0, 0, time.UTC)
)

// partitionEnd returns the end of the partition a partitioning column value
// falls into; false for NULL (the __NULL__ partition) and values outside
// 1960-01-01 to 2159-12-31 (__UNPARTITIONED__), which never expire.
func partitionEnd(granularity, colType string, v any) (time.Time, bool) {
	var t time.Time
	switch x := v.(type) {
	case int64:
		if colType != typeTimestamp {
			return time.Time{}, false
		}
		t = time.UnixMicro(x).UTC()
	case int32:
		if colType != typeDate {
			return time.Time{}, false
		}
		t = time.Unix(int64(x)*86400, 0).UTC()
	case string:
		if colType != typeDatetime {
			return time.Time{}, false
		}
		p, err := time.Parse("2006-01-02 15:04:05.999999", x)
		if err != nil {
			return time.Time{}, false
		}
		t = p
	default:
		return time.Time{}, false
	}
	if t.Before(minPartitionTime) || !t.Before(endPartitionTime) {
		return time.Time{}, false
	}
	y, m, d := t.Date()
	switch granularity {
	case partitionHour:
		return t.Truncate(time.Hour).Add(time.Hour), true
	case partitionDay:
		return time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC), true
	case partitionMonth:
		return time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC), true
	case partitionYear:
		return time.Date(y+1, 1, 1, 0, 0, 0, 0, time.UTC), true
	}
	return time.Time{}, false
}

// purgeExpiredLocked drops the rows of partitions that have expired at now:
// a partition expires its expirationMs after its upper boundary (a DAY
// partition with a 6 h expiration at 06:00 UTC the following day). Only
// time-unit column partitioning is considered; s.mu must be held.
func (s *Server) purgeExpiredLocked(t *table, now time.Time) {
	tp := t.res.TimePartitioning
	if tp == nil || tp.Field == "" || tp.ExpirationMs <= 0 || len(t.rows) == 0 {
		return
	}
	col := topLevelColumn(t.res.Schema.Fields, tp.Field)
	if col == nil {
		return
	}
	keep := time.Duration(tp.ExpirationMs) * time.Millisecond
	kept := t.rows[:0]
	for _, row := range t.rows {
		if end, ok := partitionEnd(tp.Type, col.Type, row[col.Name]); ok && !now.Before(end.Add(keep)) {
			t.expired++
			continue
		}
		kept = append(kept, row)
	}
	clear(t.rows[len(kept):])
	t.rows = kept
}

// ExpiredRows returns how many rows of the table were accepted but are gone
// because their partition had expired (see the package doc), or 0 if the
// table does not exist.
func (s *Server) ExpiredRows(project, dataset, table string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tables[tableKey{project, dataset, table}]
	if !ok {
		return 0
	}
	s.purgeExpiredLocked(t, time.Now())
	return t.expired
}
