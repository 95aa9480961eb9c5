package schema

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/sr"
)

// The rename tests register two versions of one subject: version 1 is the
// shared stock schema, version 2 is it with delta's declaration replaced.
const (
	renameSubject = "stock-value"
	renameV1ID    = 30
	renameV2ID    = 31
	renamePath    = "/subjects/" + renameSubject + "/versions/1"
	v2Versions    = "/schemas/ids/31/versions"
	deltaField    = `{"name": "delta", "type": "int"}`
)

func stockV1Text(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "sms_physical_stock_updates.v1.avsc"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// seedRename registers the stock schema as version 1 of renameSubject and,
// as version 2, the same with delta's declaration replaced by fields (JSON
// field objects, comma-separated; empty drops delta).
func seedRename(t *testing.T, f *fakeRegistry, fields string) {
	t.Helper()
	v1 := stockV1Text(t)
	old := deltaField
	if fields == "" {
		old += "," // drop the separator too
	}
	v2 := strings.Replace(v1, old, fields, 1)
	if v2 == v1 {
		t.Fatal("fixture: delta not found in the stock schema")
	}
	f.SeedSchema(renameSubject, 1, renameV1ID, sr.Schema{Schema: v1})
	f.SeedSchema(renameSubject, 2, renameV2ID, sr.Schema{Schema: v2})
}

func (f *fakeRegistry) countPrefix(prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for p, c := range f.hits {
		if strings.HasPrefix(p, prefix) {
			n += c
		}
	}
	return n
}

func isTransient(err error) bool {
	return err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrUnsupported) &&
		!errors.Is(err, ErrIncompatible) && !errors.Is(err, ErrUnauthorized)
}

func TestRegistryRenameWithoutAlias(t *testing.T) {
	f := newFakeRegistry(t)
	seedRename(t, f, `{"name": "quantity_delta", "type": "int"}`)
	r := newTestRegistry(t, Config{URL: f.URL()})

	for range 2 {
		_, err := r.Schema(t.Context(), renameV2ID)
		if !errors.Is(err, ErrIncompatible) || errors.Is(err, ErrUnsupported) {
			t.Fatalf("Schema = %v, want ErrIncompatible", err)
		}
		for _, w := range []string{
			`subject "stock-value" version 2`, `field "delta" (REQUIRED INTEGER) of version 1`,
			`"quantity_delta" (REQUIRED INTEGER)`, `declare "aliases": ["delta"] on "quantity_delta"`,
		} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not mention %s", err, w)
			}
		}
	}
	// Cached: the schema, its history and the previous version once each.
	for _, p := range []string{"/schemas/ids/31", v2Versions, renamePath} {
		if n := f.count(p); n != 1 {
			t.Errorf("%s requested %d times, want 1", p, n)
		}
	}
	// Version 1 itself is fine, and has no previous version to ask for.
	if _, err := r.Schema(t.Context(), renameV1ID); err != nil {
		t.Fatalf("version 1: %v", err)
	}
	if n := f.count(renamePath); n != 1 {
		t.Errorf("version 1 fetched %d times, want 1 (cached)", n)
	}
}

// TestRegistryRenameRule covers what counts as a rename from version 1
// (delta REQUIRED INTEGER) to version 2.
func TestRegistryRenameRule(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fields string // replacing delta in version 2
		rename bool
	}{
		{"alias accepts the rename", `{"name": "quantity_delta", "type": "int", "aliases": ["delta"]}`, false},
		{"alias among others", `{"name": "quantity_delta", "type": "int", "aliases": ["qty", "delta"]}`, false},
		{"alias of another name", `{"name": "quantity_delta", "type": "int", "aliases": ["qty"]}`, true},
		{"different type is not a rename", `{"name": "note", "type": "string"}`, false},
		{"repeated is not the same column", `{"name": "deltas", "type": {"type": "array", "items": "int"}}`, false},
		{"long maps to INTEGER too", `{"name": "quantity_delta", "type": "long", "default": 0}`, true},
		{"made nullable on the way", `{"name": "quantity_delta", "type": ["null", "int"], "default": null}`, true},
		{"case change keeps the column", `{"name": "Delta", "type": "int"}`, false},
		{"removed only", ``, false},
		{"declared rename plus a new field", `{"name": "quantity_delta", "type": "int", "aliases": ["delta"]}, {"name": "stock_before", "type": "int", "default": 0}`, false},
		{"kept plus a new field", deltaField + `, {"name": "stock_before", "type": "int", "default": 0}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeRegistry(t)
			seedRename(t, f, tc.fields)
			r := newTestRegistry(t, Config{URL: f.URL()})
			_, err := r.Schema(t.Context(), renameV2ID)
			switch {
			case tc.rename && !errors.Is(err, ErrIncompatible):
				t.Fatalf("Schema = %v, want ErrIncompatible", err)
			case !tc.rename && err != nil:
				t.Fatalf("Schema = %v, want no error", err)
			}
			if n := f.count(renamePath); n != 1 {
				t.Errorf("previous version fetched %d times, want 1", n)
			}
		})
	}
}

func TestRegistryRenameNestedRecord(t *testing.T) {
	for _, tc := range []struct {
		name, v2 string
		rename   bool
	}{
		{"same nested columns", `{"name":"place","type":{"type":"record","name":"Place","fields":[{"name":"CITY","type":"string"},{"name":"zip","type":["null","string"]}]}}`, true},
		{"other nested columns", `{"name":"place","type":{"type":"record","name":"Place","fields":[{"name":"city","type":"string"},{"name":"country","type":"string"}]}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeRegistry(t)
			record := func(field string) string {
				return `{"type":"record","name":"Shipment","fields":[{"name":"id","type":"long"},` + field + `]}`
			}
			f.SeedSchema("shipments-value", 1, 40, sr.Schema{Schema: record(`{"name":"address","type":{"type":"record","name":"Addr","fields":[{"name":"zip","type":"string"},{"name":"city","type":"string"}]}}`)})
			f.SeedSchema("shipments-value", 2, 41, sr.Schema{Schema: record(tc.v2)})
			r := newTestRegistry(t, Config{URL: f.URL()})
			_, err := r.Schema(t.Context(), 41)
			if tc.rename != errors.Is(err, ErrIncompatible) || (!tc.rename && err != nil) {
				t.Fatalf("Schema = %v, want a rename error: %v", err, tc.rename)
			}
			if tc.rename && !strings.Contains(err.Error(), `"address" (REQUIRED RECORD)`) {
				t.Errorf("error %q does not name the old RECORD column", err)
			}
		})
	}
}

func TestRegistryStockV2IsNoRename(t *testing.T) {
	f := newFakeRegistry(t)
	f.seedShared(t)
	r := newTestRegistry(t, Config{URL: f.URL()})

	s, err := r.Schema(t.Context(), stockV2ID)
	if err != nil {
		t.Fatal(err)
	}
	assertColumns(t, s.Columns(), stockV2Columns())
	if n := f.count("/subjects/sms_physical_stock_updated_topic-value/versions/1"); n != 1 {
		t.Errorf("version 1 fetched %d times, want 1", n)
	}
}

func TestRegistryFirstVersionHasNoHistory(t *testing.T) {
	f := newFakeRegistry(t)
	f.seedShared(t)
	r := newTestRegistry(t, Config{URL: f.URL()})

	if _, err := r.Schema(t.Context(), stockV1ID); err != nil {
		t.Fatal(err)
	}
	if n := f.count("/schemas/ids/10/versions"); n != 1 {
		t.Errorf("subject versions asked %d times, want 1", n)
	}
	if n := f.countPrefix("/subjects/"); n != 0 {
		t.Errorf("%d subject version requests for a version 1, want 0", n)
	}
}

func TestRegistryHistoryTransient(t *testing.T) {
	for _, path := range []string{v2Versions, renamePath} {
		t.Run(path, func(t *testing.T) {
			f := newFakeRegistry(t)
			seedRename(t, f, `{"name": "quantity_delta", "type": "int"}`)
			var failed atomic.Bool
			f.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path != path || failed.Swap(true) {
					return false
				}
				writeJSON(w, http.StatusInternalServerError, map[string]any{"error_code": 50001, "message": "store error"})
				return true
			})
			r := newTestRegistry(t, Config{URL: f.URL()})
			clock := withClock(r)

			_, err := r.Schema(t.Context(), renameV2ID)
			if !isTransient(err) || !strings.Contains(err.Error(), "registry error 50001: store error; not asked again for 1s") {
				t.Fatalf("Schema = %v, want the transient registry error", err)
			}
			// Remembered for the backoff, then asked again: the rename is found.
			if _, err := r.Schema(t.Context(), renameV2ID); !isTransient(err) || f.count(path) != 1 {
				t.Fatalf("within the backoff: %v after %d requests, want the remembered error after 1", err, f.count(path))
			}
			clock.Advance(firstRetry)
			if _, err := r.Schema(t.Context(), renameV2ID); !errors.Is(err, ErrIncompatible) {
				t.Fatalf("after the registry recovered: %v, want ErrIncompatible", err)
			}
			if n := f.count(path); n != 2 {
				t.Errorf("%s requested %d times, want 2", path, n)
			}
			// The schema text itself was kept.
			if n := f.count("/schemas/ids/31"); n != 1 {
				t.Errorf("schema fetched %d times, want 1", n)
			}
		})
	}
}

func TestRegistryHistoryNotServed(t *testing.T) {
	f := newFakeRegistry(t)
	seedRename(t, f, `{"name": "quantity_delta", "type": "int"}`)
	// A registry without the endpoint answers as Confluent's does for an unknown route.
	f.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != v2Versions {
			return false
		}
		writeJSON(w, http.StatusNotFound, map[string]any{"error_code": 404, "message": "HTTP 404 Not Found"})
		return true
	})
	r := newTestRegistry(t, Config{URL: f.URL()})

	for range 2 {
		if _, err := r.Schema(t.Context(), renameV2ID); err != nil {
			t.Fatalf("Schema = %v, want the check skipped", err)
		}
	}
	if n := f.count(v2Versions); n != 1 {
		t.Errorf("subject versions asked %d times, want 1 (cached)", n)
	}
	if n := f.countPrefix("/subjects/"); n != 0 {
		t.Errorf("%d subject version requests, want 0", n)
	}
}

func TestRegistryPreviousVersionDeleted(t *testing.T) {
	f := newFakeRegistry(t)
	seedRename(t, f, `{"name": "quantity_delta", "type": "int"}`)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodDelete, f.URL()+renamePath, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("delete version 1: %s", resp.Status)
	}
	r := newTestRegistry(t, Config{URL: f.URL()})

	if _, err := r.Schema(t.Context(), renameV2ID); err != nil {
		t.Fatalf("Schema = %v, want the check skipped", err)
	}
	if n := f.count(renamePath); n != 2 { // the DELETE and our GET
		t.Errorf("%s requested %d times, want 2", renamePath, n)
	}
}

func TestRegistryPreviousVersionUnsupported(t *testing.T) {
	f := newFakeRegistry(t)
	v1 := strings.Replace(stockV1Text(t), deltaField, deltaField+`, {"name": "nothing", "type": "null"}`, 1)
	v2 := strings.Replace(stockV1Text(t), deltaField, `{"name": "quantity_delta", "type": "int"}`, 1)
	f.SeedSchema(renameSubject, 1, renameV1ID, sr.Schema{Schema: v1})
	f.SeedSchema(renameSubject, 2, renameV2ID, sr.Schema{Schema: v2})
	r := newTestRegistry(t, Config{URL: f.URL()})

	if _, err := r.Schema(t.Context(), renameV1ID); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("version 1: %v, want ErrUnsupported (the fixture is wrong)", err)
	}
	if _, err := r.Schema(t.Context(), renameV2ID); err != nil {
		t.Fatalf("Schema = %v, want the check skipped", err)
	}
}

// An ID registered under several subjects is checked against each subject's
// history.
func TestRegistryRenameInAnySubject(t *testing.T) {
	f := newFakeRegistry(t)
	v1 := stockV1Text(t)
	v2 := strings.Replace(v1, deltaField, `{"name": "quantity_delta", "type": "int"}`, 1)
	// "a" has the renamed schema as its first version, "b" after the original.
	for _, reg := range []struct{ subject, text string }{{"a-value", v2}, {"b-value", v1}, {"b-value", v2}} {
		if _, _, err := f.RegisterSchema(reg.subject, sr.Schema{Schema: reg.text}); err != nil {
			t.Fatal(err)
		}
	}
	ss, ok := f.GetSchema("b-value", 2)
	if !ok {
		t.Fatal("b-value version 2 not registered")
	}
	if a, _ := f.GetSchema("a-value", 1); a.ID != ss.ID {
		t.Fatalf("fixture: the renamed schema has IDs %d and %d, want one", a.ID, ss.ID)
	}
	r := newTestRegistry(t, Config{URL: f.URL()})

	_, err := r.Schema(t.Context(), ss.ID)
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), `subject "b-value" version 2`) {
		t.Fatalf("Schema = %v, want ErrIncompatible naming b-value", err)
	}
}
