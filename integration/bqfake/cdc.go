package bqfake

//lint:file-ignore ST1005 bqfake returns BigQuery's own error messages verbatim (capitalised, some ending in a period), as clients see them from BigQuery.

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	bq "google.golang.org/api/bigquery/v2"
)

// Change data capture: a table's primary key (tableConstraints), the
// pseudo-columns _CHANGE_TYPE and _CHANGE_SEQUENCE_NUMBER of Storage Write
// rows, and the applied state those changes leave. BigQuery's documentation
// ("Stream table updates with change data capture") gives the rules; where
// it is silent, the choices are listed in the package doc. This is written
// from those rules alone: bqfake stands in for BigQuery and must not share
// code with the clients it tests.

// Pseudo-columns a CDC row carries besides the table's columns.
const (
	pseudoChangeType = "_CHANGE_TYPE"
	pseudoChangeSeq  = "_CHANGE_SEQUENCE_NUMBER"
)

// Change types BigQuery accepts in _CHANGE_TYPE.
const (
	changeUpsert = "UPSERT"
	changeDelete = "DELETE"
)

const (
	maxPrimaryKeyColumns = 16
	maxSeqSections       = 4
	maxSeqSectionDigits  = 16 // one unsigned 64-bit number in hex
)

// Messages of CDC refusals; none is quoted by BigQuery's documentation
// except where noted, so they follow its wording and name what is wrong.
const (
	// Reported by users from BigQuery for CDC rows on a connection that
	// carried plain rows ("in insert mode: UPSERT").
	msgChangeTypeMode = "The given value is not a valid CHANGE_TYPE in %s mode: %s"
	msgNoPrimaryKey   = "The table %s does not have a primary key, which is required for CDC (rows with _CHANGE_TYPE)."
	msgCDCStream      = "CDC (rows with _CHANGE_TYPE) is only supported on the _default stream."
)

// change is what a row's pseudo-columns ask for.
type change struct {
	typ    string   // "" for a plain row, else changeUpsert or changeDelete
	seq    []uint64 // nil: no _CHANGE_SEQUENCE_NUMBER
	rawSeq string   // _CHANGE_SEQUENCE_NUMBER as sent
}

// parseChangeType accepts UPSERT and DELETE in any case, as BigQuery does.
func parseChangeType(s string) (string, error) {
	switch u := strings.ToUpper(s); u {
	case changeUpsert, changeDelete:
		return u, nil
	}
	return "", fmt.Errorf("Field %s: The given value is not a valid CHANGE_TYPE: %q. It must be UPSERT or DELETE.", pseudoChangeType, s)
}

// parseSequence parses a _CHANGE_SEQUENCE_NUMBER: one to four sections of
// one to sixteen hexadecimal digits (either case) separated by '/', each an
// unsigned 64-bit number.
func parseSequence(s string) ([]uint64, error) {
	parts := strings.Split(s, "/")
	if len(parts) > maxSeqSections {
		return nil, seqError(s, fmt.Sprintf("it has %d sections, at most %d are allowed", len(parts), maxSeqSections))
	}
	out := make([]uint64, 0, len(parts))
	for _, p := range parts {
		if p == "" || len(p) > maxSeqSectionDigits {
			return nil, seqError(s, fmt.Sprintf("every section must have 1 to %d hexadecimal digits", maxSeqSectionDigits))
		}
		// ParseUint alone would take "0x" or '_'; only bare digits are
		// BigQuery's format.
		if strings.TrimLeft(p, "0123456789abcdefABCDEF") != "" {
			return nil, seqError(s, "sections may hold only hexadecimal digits")
		}
		v, err := strconv.ParseUint(p, 16, 64)
		if err != nil {
			return nil, seqError(s, err.Error())
		}
		out = append(out, v)
	}
	return out, nil
}

func seqError(s, why string) error {
	return fmt.Errorf("Field %s: Invalid value %q: %s (the format is up to %d sections of hexadecimal digits separated by '/').", pseudoChangeSeq, s, why, maxSeqSections)
}

// compareSequences orders sequence numbers section by section as unsigned
// numbers; when one is a prefix of the other, the one with fewer sections
// (a missing section; no sequence number at all has none) is lower.
func compareSequences(a, b []uint64) int {
	for i := range min(len(a), len(b)) {
		switch {
		case a[i] < b[i]:
			return -1
		case a[i] > b[i]:
			return 1
		}
	}
	switch {
	case len(a) < len(b):
		return -1
	case len(a) > len(b):
		return 1
	}
	return 0
}

// Primary keys.

// checkTableConstraints validates a table's constraints against its
// (normalized) schema and returns the copy to store: a primary key without
// columns is no primary key, and constraints without a key or foreign keys
// are none. Foreign keys are stored unchecked.
func checkTableConstraints(tc *bq.TableConstraints, fields []*bq.TableFieldSchema) (*bq.TableConstraints, error) {
	if tc == nil {
		return nil, nil
	}
	out := &bq.TableConstraints{ForeignKeys: tc.ForeignKeys}
	if pk := tc.PrimaryKey; pk != nil && len(pk.Columns) > 0 {
		if err := checkPrimaryKey(pk.Columns, fields); err != nil {
			return nil, err
		}
		out.PrimaryKey = &bq.TableConstraintsPrimaryKey{Columns: slices.Clone(pk.Columns)}
	}
	if out.PrimaryKey == nil && len(out.ForeignKeys) == 0 {
		return nil, nil
	}
	return out, nil
}

// checkPrimaryKey applies BigQuery's limits to primary key columns: at most
// 16, top-level, not REPEATED, each named once.
func checkPrimaryKey(names []string, fields []*bq.TableFieldSchema) error {
	if len(names) > maxPrimaryKeyColumns {
		return fmt.Errorf("Too many primary key columns: %d. At most %d columns are allowed in a primary key.", len(names), maxPrimaryKeyColumns)
	}
	seen := make(map[string]bool, len(names))
	for _, name := range names {
		col := topLevelColumn(fields, name)
		if col == nil {
			if nestedColumn(fields, name) {
				return fmt.Errorf("Fields specified for primary key can only be top-level fields. Invalid field: %s.", name)
			}
			return fmt.Errorf("The field specified for primary key cannot be found in the schema. Invalid field: %s.", name)
		}
		if col.Mode == modeRepeated {
			return fmt.Errorf("Fields specified for primary key can only be NULLABLE or REQUIRED. Invalid field: %s.", name)
		}
		if seen[strings.ToLower(col.Name)] {
			return fmt.Errorf("Duplicate field in primary key: %s.", name)
		}
		seen[strings.ToLower(col.Name)] = true
	}
	return nil
}

// primaryKeyColumns returns the table's primary key as schema column names
// (the key may spell them in another case), or nil without a key.
func primaryKeyColumns(res *bq.Table) []string {
	tc := res.TableConstraints
	if tc == nil || tc.PrimaryKey == nil || len(tc.PrimaryKey.Columns) == 0 || res.Schema == nil {
		return nil
	}
	out := make([]string, 0, len(tc.PrimaryKey.Columns))
	for _, name := range tc.PrimaryKey.Columns {
		if col := topLevelColumn(res.Schema.Fields, name); col != nil {
			out = append(out, col.Name)
		}
	}
	return out
}

// applyConstraints applies the tableConstraints and maxStaleness of a
// tables.patch/update request to upd, which already carries the new schema.
// Within tableConstraints, primaryKey and foreignKeys change only when sent
// (null removes them); a primary key without columns removes it.
func applyConstraints(upd, body *bq.Table, present map[string]json.RawMessage) error {
	if raw, ok := present["tableConstraints"]; ok {
		var sub map[string]json.RawMessage
		if err := json.Unmarshal(raw, &sub); err != nil {
			return errors.New("Invalid JSON payload received: tableConstraints: " + err.Error())
		}
		tc := &bq.TableConstraints{}
		if cur := upd.TableConstraints; cur != nil && sub != nil {
			*tc = *cur
		}
		if _, ok := sub["primaryKey"]; ok {
			tc.PrimaryKey = body.TableConstraints.PrimaryKey
		}
		if _, ok := sub["foreignKeys"]; ok {
			tc.ForeignKeys = body.TableConstraints.ForeignKeys
		}
		checked, err := checkTableConstraints(tc, upd.Schema.Fields)
		if err != nil {
			return err
		}
		upd.TableConstraints = checked
	}
	if _, ok := present["maxStaleness"]; ok {
		if err := checkMaxStaleness(body.MaxStaleness); err != nil {
			return err
		}
		upd.MaxStaleness = body.MaxStaleness
	}
	return nil
}

// maxStalenessRE is the canonical INTERVAL text BigQuery's REST API (and
// the Go client's IntervalValue.String) uses: "Y-M D H:M:S[.F]".
var maxStalenessRE = regexp.MustCompile(`^-?\d+-\d+ -?\d+ -?\d+:\d+:\d+(\.\d{1,9})?$`)

func checkMaxStaleness(s string) error {
	if s == "" || maxStalenessRE.MatchString(s) {
		return nil
	}
	return fmt.Errorf("Invalid value for maxStaleness: %q. It must be an INTERVAL such as \"0-0 0 0:15:0\".", s)
}

// Applied state.

// cdcState is what a table remembers of the CDC changes written to it: per
// primary key value, the change that won so far.
type cdcState struct {
	keyCols []string // the primary key the states were built for
	keys    map[string]*keyState
	arrived int64 // keys seen, for listing them in arrival order
	// plain is set once the table holds, or may hold, rows not written
	// through CDC (before the first change, or appended since), whose keys
	// the state does not know.
	plain bool
}

type keyState struct {
	key     []any // key column values
	seq     []uint64
	rawSeq  string
	deleted bool
	first   int64 // arrival rank
	live    bool  // the table holds this key's row (its upsert won)
}

// cdcLocked returns the table's CDC state for keyCols, starting afresh when
// there is none or the primary key changed; s.mu must be held.
func (t *table) cdcLocked(keyCols []string) *cdcState {
	if t.cdc == nil || !slices.Equal(t.cdc.keyCols, keyCols) {
		t.cdc = &cdcState{keyCols: keyCols, keys: make(map[string]*keyState), plain: len(t.rows) > 0}
	}
	return t.cdc
}

// appendPlainLocked adds rows written without CDC; s.mu must be held.
func (t *table) appendPlainLocked(rows []map[string]any) {
	if len(rows) == 0 {
		return
	}
	t.rows = append(t.rows, rows...)
	if t.cdc != nil {
		t.cdc.plain = true
	}
}

// applyChangesLocked applies one request's CDC rows (all with a change type)
// to the table; s.mu must be held. Per key, the change with the highest
// sequence number wins; on a tie the change that arrived later wins, except
// within the request, where the first of equal changes wins (as reported
// from BigQuery). A winning UPSERT replaces the key's row (where it was, or
// at the end for a new key); a winning DELETE removes it.
func (t *table) applyChangesLocked(rows []map[string]any, changes []change, keyCols []string) {
	st := t.cdcLocked(keyCols)
	for _, ch := range changes {
		if ch.seq != nil {
			t.seqSeen = true
		}
	}
	keys := make([]string, len(rows))
	winner := make(map[string]int) // key -> index of this request's winning change
	for i, ch := range changes {
		k := rowKey(rows[i], keyCols)
		keys[i] = k
		if j, ok := winner[k]; ok {
			if compareSequences(ch.seq, changes[j].seq) > 0 {
				winner[k] = i
			}
			continue
		}
		if prev, ok := st.keys[k]; ok && compareSequences(ch.seq, prev.seq) < 0 {
			continue
		}
		winner[k] = i
	}
	if len(winner) == 0 {
		return
	}

	// newRows maps each key that changed to its new row (nil: deleted).
	newRows := make(map[string]map[string]any, len(winner))
	scan := st.plain
	var order []string // changed keys in request order
	for i, k := range keys {
		if w, ok := winner[k]; !ok || w != i {
			continue
		}
		ch := changes[i]
		ks := st.keys[k]
		if ks == nil {
			st.arrived++
			ks = &keyState{key: keyValues(rows[i], keyCols), first: st.arrived}
			st.keys[k] = ks
		}
		scan = scan || ks.live
		ks.seq, ks.rawSeq, ks.deleted = ch.seq, ch.rawSeq, ch.typ == changeDelete
		ks.live = !ks.deleted
		if ks.deleted {
			newRows[k] = nil
		} else {
			newRows[k] = rows[i]
		}
		order = append(order, k)
	}

	placed := make(map[string]bool, len(newRows))
	if scan {
		kept := t.rows[:0]
		for _, r := range t.rows {
			k := rowKey(r, keyCols)
			nr, changed := newRows[k]
			switch {
			case !changed:
				kept = append(kept, r)
			case nr != nil && !placed[k]:
				kept = append(kept, nr)
				placed[k] = true
			}
		}
		clear(t.rows[len(kept):])
		t.rows = kept
	}
	for _, k := range order {
		if nr := newRows[k]; nr != nil && !placed[k] {
			t.rows = append(t.rows, nr)
		}
	}
}

// keyValues returns a copy of a row's key column values.
func keyValues(row map[string]any, keyCols []string) []any {
	out := make([]any, len(keyCols))
	for i, c := range keyCols {
		out[i] = copyValue(row[c])
	}
	return out
}

// rowKey encodes a row's primary key values so that equal keys, and only
// those, encode alike. NULL is a value like any other: rows whose key
// columns are NULL share a key.
func rowKey(row map[string]any, keyCols []string) string {
	var b strings.Builder
	for _, c := range keyCols {
		writeKeyValue(&b, row[c])
	}
	return b.String()
}

func writeKeyValue(b *strings.Builder, v any) {
	switch v := v.(type) {
	case nil:
		b.WriteString("n;")
	case bool:
		fmt.Fprintf(b, "b%t;", v)
	case int64:
		fmt.Fprintf(b, "i%d;", v)
	case int32:
		fmt.Fprintf(b, "d%d;", v)
	case float64:
		if math.IsNaN(v) {
			b.WriteString("fNaN;")
		} else {
			fmt.Fprintf(b, "f%s;", strconv.FormatFloat(v, 'g', -1, 64))
		}
	case string:
		fmt.Fprintf(b, "s%d:%s", len(v), v)
	case []byte:
		fmt.Fprintf(b, "y%d:%s", len(v), v)
	case map[string]any:
		names := make([]string, 0, len(v))
		for n := range v {
			names = append(names, n)
		}
		slices.Sort(names)
		b.WriteString("r{")
		for _, n := range names {
			fmt.Fprintf(b, "%d:%s", len(n), n)
			writeKeyValue(b, v[n])
		}
		b.WriteString("}")
	case []any:
		b.WriteString("a[")
		for _, e := range v {
			writeKeyValue(b, e)
		}
		b.WriteString("]")
	default:
		fmt.Fprintf(b, "?%T:%v;", v, v)
	}
}

// KeyState is what bqfake remembers of one primary key value of a table
// written through CDC: the change that won for it so far.
type KeyState struct {
	// Key holds the values of the primary key columns, in key order, in the
	// row value contract Rows uses (nil for NULL).
	Key []any
	// Sequence is the winning change's _CHANGE_SEQUENCE_NUMBER as it was
	// sent, or "" if it had none.
	Sequence string
	// Deleted reports that the winning change was a DELETE: the key has no
	// row, and a later change wins only with a sequence number at least as
	// high.
	Deleted bool
}

// KeyStates returns, for a table written through CDC, the winning change of
// every primary key value it received, in the order the keys first arrived;
// nil for other tables. The applied rows themselves are what Rows,
// RowCount and tabledata.list return. Changing the table's primary key
// starts the states afresh.
func (s *Server) KeyStates(project, dataset, table string) []KeyState {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tables[tableKey{project, dataset, table}]
	if !ok || t.cdc == nil {
		return nil
	}
	states := make([]*keyState, 0, len(t.cdc.keys))
	for _, ks := range t.cdc.keys {
		states = append(states, ks)
	}
	slices.SortFunc(states, func(a, b *keyState) int { return cmp.Compare(a.first, b.first) })
	out := make([]KeyState, 0, len(states))
	for _, ks := range states {
		key := make([]any, len(ks.key))
		for i, v := range ks.key {
			key[i] = copyValue(v)
		}
		out = append(out, KeyState{Key: key, Sequence: ks.rawSeq, Deleted: ks.deleted})
	}
	return out
}

// errSeqWithoutType is the row error of a row that carries a sequence
// number but no change type.
var errSeqWithoutType = errors.New("Field " + pseudoChangeSeq + ": a row with " + pseudoChangeSeq + " must also set " + pseudoChangeType + ".")

// errSeqRequired is the row error of a CDC row without sequence number on a
// table that received sequence numbers before.
var errSeqRequired = errors.New("Field " + pseudoChangeSeq + ": the table has received rows with " + pseudoChangeSeq + ", so every row with " + pseudoChangeType + " must carry one.")
