package schema

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"cloud.google.com/go/bigquery"
	"github.com/hamba/avro/v2"
	"github.com/riferrei/srclient"
	"go.uber.org/zap"
)

// A field renamed without an alias reaches BigQuery as a removed column
// (relaxed and left empty from then on) plus a new one, which is also what
// a topic mixing schema versions legitimately looks like. Only the subject's
// history tells the two apart, so a rename is recognised by comparing a
// version with the one before it.

// topField is a top-level field of a writer schema as the rename check sees
// it: its name, its Avro aliases and the column it maps to.
type topField struct {
	name    string
	aliases []string
	col     *bigquery.FieldSchema
}

// topFields pairs the root record's fields with the columns compile made of
// them (one per field, in order). parsed must be what s was compiled from.
func topFields(parsed avro.Schema, s *Schema) []topField {
	if ref, ok := parsed.(*avro.RefSchema); ok {
		parsed = ref.Schema()
	}
	rec, ok := parsed.(*avro.RecordSchema)
	if !ok {
		return nil // compile accepts only a record, so this is never reached
	}
	fields := rec.Fields()
	out := make([]topField, len(fields))
	for i, f := range fields {
		out[i] = topField{name: f.Name(), aliases: f.Aliases(), col: s.columns[i]}
	}
	return out
}

// checkHistory compares schema id, whose top-level fields are top, with the
// previous version of every subject version that uses it, and fails with
// ErrIncompatible when one of them renames a field without an alias. What
// the registry no longer has (the ID's subject versions, a previous version
// or its references, answered 404) and a previous version that does not
// compile are skipped: they say nothing about this schema. Any other
// registry failure is returned as is: ErrUnauthorized or transient.
func (r *Registry) checkHistory(id int, top []topField) error {
	resp, err := call(r, func() (srclient.SubjectVersionResponse, error) { return r.client.GetSubjectVersionsById(id) })
	if err != nil {
		err = r.classify(fmt.Sprintf("subject versions of schema %d", id), err)
		if errors.Is(err, ErrNotFound) {
			r.logger.Debug("rename check skipped", zap.Int("schema_id", id), zap.Error(err))
			return nil
		}
		return err
	}
	uses := make([]refKey, 0, len(resp))
	for _, u := range resp {
		uses = append(uses, refKey{subject: u.Subject, version: u.Version})
	}
	// The registry lists them in no particular order; the error should not vary.
	slices.SortFunc(uses, func(a, b refKey) int {
		return cmp.Or(strings.Compare(a.subject, b.subject), cmp.Compare(a.version, b.version))
	})
	for _, use := range uses {
		if use.version <= 1 {
			continue
		}
		prev := refKey{subject: use.subject, version: use.version - 1}
		old, err := r.previous(id, prev)
		if err != nil {
			return fmt.Errorf("schema %d: previous version: %w", id, err)
		}
		if pairs := renames(old, top); len(pairs) > 0 {
			return renameError(id, use, pairs)
		}
	}
	return nil
}

// previous returns the top-level fields of subject version k, or none when it
// cannot be had (gone from the registry, unparsable, unmappable); its error
// is ErrUnauthorized or transient.
func (r *Registry) previous(id int, k refKey) ([]topField, error) {
	skip := func(err error) ([]topField, error) {
		r.logger.Debug("rename check skipped for a previous version", zap.Int("schema_id", id),
			zap.Stringer("previous", k), zap.Error(err))
		return nil, nil
	}
	t, err := r.referenced(k)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return skip(err)
		}
		return nil, err
	}
	if err := checkAvro(t.typ); err != nil {
		return skip(err)
	}
	// Its own cache: the previous version may define a full name differently.
	cache := &avro.SchemaCache{}
	if err := r.resolve(t.refs, cache, make(map[refKey]bool), []refKey{k}); err != nil {
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnsupported) {
			return skip(err)
		}
		return nil, err
	}
	parsed, err := parse(t.schema, cache)
	if err != nil {
		return skip(err)
	}
	// A nop logger: warnings about the previous version's mapping were logged
	// when it was in use, if ever.
	s, err := compile(id, parsed, zap.NewNop())
	if err != nil {
		return skip(err)
	}
	return topFields(parsed, s), nil
}

// rename is a field of the previous version the new one lacks, paired with a
// new field that maps to a column of the same shape and does not declare the
// old name in its aliases.
type rename struct{ old, new topField }

// renames finds the undeclared renames from prev to next. Names compare
// case-insensitively, as BigQuery's do (a case change keeps the column);
// aliases compare exactly, as Avro's do. A removed field some new field
// declares as an alias is accounted for, and each field pairs at most once.
func renames(prev, next []topField) []rename {
	has := func(fs []topField, name string) bool {
		return slices.ContainsFunc(fs, func(f topField) bool { return strings.EqualFold(f.name, name) })
	}
	var removed, added []topField
	for _, p := range prev {
		if !has(next, p.name) {
			removed = append(removed, p)
		}
	}
	for _, n := range next {
		if !has(prev, n.name) {
			added = append(added, n)
		}
	}
	taken := make(map[string]bool, len(removed))
	var open []topField
	for _, n := range added {
		declared := false
		for _, p := range removed {
			if slices.Contains(n.aliases, p.name) {
				taken[p.name], declared = true, true
			}
		}
		if !declared {
			open = append(open, n)
		}
	}
	var out []rename
	for _, n := range open {
		for _, p := range removed {
			if !taken[p.name] && sameShape(p.col, n.col) {
				taken[p.name] = true
				out = append(out, rename{old: p, new: n})
				break
			}
		}
	}
	return out
}

// sameShape reports whether two columns could hold the same values: same
// type, same REPEATED, and for RECORD the same nested columns by name.
// REQUIRED versus NULLABLE does not count: BigQuery relaxes a column in
// place, and a rename that passes the registry's default BACKWARD check
// needs a default on the new field, commonly null with a ["null", T] union.
func sameShape(a, b *bigquery.FieldSchema) bool {
	if a.Type != b.Type || a.Repeated != b.Repeated || len(a.Schema) != len(b.Schema) {
		return false
	}
	for _, af := range a.Schema {
		i := slices.IndexFunc(b.Schema, func(bf *bigquery.FieldSchema) bool { return strings.EqualFold(af.Name, bf.Name) })
		if i < 0 || !sameShape(af, b.Schema[i]) {
			return false
		}
	}
	return true
}

func renameError(id int, use refKey, pairs []rename) error {
	var what, fix []string
	for _, p := range pairs {
		what = append(what, fmt.Sprintf("field %q (%s) of version %d to %q (%s)",
			p.old.name, describe(p.old.col), use.version-1, p.new.name, describe(p.new.col)))
		fix = append(fix, fmt.Sprintf(`declare "aliases": [%q] on %q to accept the rename: bqsink then adds %q as a new column and keeps %q`,
			p.old.name, p.new.name, p.new.name, p.old.name))
	}
	return fmt.Errorf("%w: schema %d: subject %q version %d renames %s without an alias, "+
		"which would split the column's history in BigQuery; %s "+
		"(if they are unrelated fields, register the removal and the addition as separate versions)",
		ErrIncompatible, id, use.subject, use.version, strings.Join(what, " and "), strings.Join(fix, "; "))
}

// describe gives a column's mode and type, e.g. "REQUIRED INTEGER".
func describe(f *bigquery.FieldSchema) string {
	mode := "NULLABLE"
	switch {
	case f.Repeated:
		mode = "REPEATED"
	case f.Required:
		mode = "REQUIRED"
	}
	return mode + " " + string(f.Type)
}
