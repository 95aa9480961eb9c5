package bqfake

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	bq "google.golang.org/api/bigquery/v2"
)

// defaultPageRows bounds a tabledata.list page when the client sets no
// maxResults (BigQuery bounds pages by size instead).
const defaultPageRows = 10000

func (s *Server) restHandler() http.Handler {
	mux := http.NewServeMux()
	const ds = "/projects/{project}/datasets/{dataset}"
	const tbl = ds + "/tables/{table}"
	mux.HandleFunc("POST /projects/{project}/datasets", s.insertDataset)
	mux.HandleFunc("GET "+ds, s.getDataset)
	mux.HandleFunc("DELETE "+ds, s.deleteDataset)
	mux.HandleFunc("GET "+ds+"/tables", s.listTables)
	mux.HandleFunc("POST "+ds+"/tables", s.insertTable)
	mux.HandleFunc("GET "+tbl, s.getTable)
	mux.HandleFunc("PATCH "+tbl, func(w http.ResponseWriter, r *http.Request) { s.changeTable(w, r, false) })
	mux.HandleFunc("PUT "+tbl, func(w http.ResponseWriter, r *http.Request) { s.changeTable(w, r, true) })
	mux.HandleFunc("DELETE "+tbl, s.deleteTable)
	mux.HandleFunc("GET "+tbl+"/data", s.listTableData)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotImplemented, "notImplemented", fmt.Sprintf("bqfake does not implement %s %s", r.Method, r.URL.Path))
	})

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			writeError(w, http.StatusServiceUnavailable, "backendError", "bqfake is shutting down")
			return
		}
		s.restWG.Add(1)
		fail := 0
		if s.faults.restLeft > 0 {
			s.faults.restLeft--
			fail = s.faults.restStatus
		}
		latency := s.faults.restLatency
		if latency > 0 {
			s.restHeld++
		}
		s.mu.Unlock()
		defer s.restWG.Done()
		if latency > 0 && !s.hold(r.Context(), latency) {
			// The client gave up (it reads nothing), or the server is closing.
			writeError(w, http.StatusServiceUnavailable, "backendError", "bqfake is shutting down")
			return
		}

		// The client may be pointed at the bare host or at ".../bigquery/v2".
		r.URL.Path = strings.TrimPrefix(r.URL.Path, "/bigquery/v2")
		r.URL.RawPath = strings.TrimPrefix(r.URL.RawPath, "/bigquery/v2")
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		if fail != 0 {
			writeError(rec, fail, reasonFor(fail), fmt.Sprintf("bqfake: injected failure (HTTP %d)", fail))
		} else {
			mux.ServeHTTP(rec, r)
		}
		s.log.Debug("rest", zap.String("method", r.Method), zap.String("path", r.URL.Path),
			zap.Int("status", rec.status), zap.Bool("injected", fail != 0))
	})
}

// hold waits d for a REST response to be released; false if ctx ended or
// the server is closing first.
func (s *Server) hold(ctx context.Context, d time.Duration) bool {
	defer func() {
		s.mu.Lock()
		s.restHeld--
		s.mu.Unlock()
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
	case <-s.quit:
	}
	return false
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// reasonFor picks the errors[].reason BigQuery uses with each status; the Go
// client retries 5xx and the reasons backendError and rateLimitExceeded.
func reasonFor(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "invalid"
	case http.StatusUnauthorized:
		return "authError"
	case http.StatusForbidden:
		return "accessDenied"
	case http.StatusNotFound:
		return "notFound"
	case http.StatusConflict:
		return "duplicate"
	case http.StatusPreconditionFailed:
		return "conditionNotMet"
	case http.StatusTooManyRequests:
		return "rateLimitExceeded"
	case http.StatusInternalServerError:
		return "internalError"
	}
	if status >= 500 {
		return "backendError"
	}
	return "invalid"
}

func statusName(code int) string {
	switch code {
	case http.StatusBadRequest:
		return "INVALID_ARGUMENT"
	case http.StatusUnauthorized:
		return "UNAUTHENTICATED"
	case http.StatusForbidden:
		return "PERMISSION_DENIED"
	case http.StatusNotFound:
		return "NOT_FOUND"
	case http.StatusConflict:
		return "ALREADY_EXISTS"
	case http.StatusPreconditionFailed:
		return "FAILED_PRECONDITION"
	case http.StatusTooManyRequests:
		return "RESOURCE_EXHAUSTED"
	case http.StatusNotImplemented:
		return "UNIMPLEMENTED"
	case http.StatusServiceUnavailable:
		return "UNAVAILABLE"
	}
	if code >= 500 {
		return "INTERNAL"
	}
	return "UNKNOWN"
}

// writeError answers in Google's JSON error format, which the Go client turns
// into a *googleapi.Error with Code, Message and Errors[].Reason.
func writeError(w http.ResponseWriter, code int, reason, msg string) {
	type item struct {
		Message string `json:"message"`
		Domain  string `json:"domain"`
		Reason  string `json:"reason"`
	}
	body := map[string]any{"error": map[string]any{
		"code":    code,
		"message": msg,
		"errors":  []item{{Message: msg, Domain: "global", Reason: reason}},
		"status":  statusName(code),
	}}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internalError", "bqfake: encode response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	_, _ = w.Write(b)
}

func readBody(w http.ResponseWriter, r *http.Request, v any) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 32<<20))
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid", "Invalid JSON payload received: "+err.Error())
		return nil, false
	}
	return b, true
}

func millis(t time.Time) int64 { return t.UnixMilli() }

func (s *Server) insertDataset(w http.ResponseWriter, r *http.Request) {
	project := r.PathValue("project")
	var body bq.Dataset
	if _, ok := readBody(w, r, &body); !ok {
		return
	}
	ref := body.DatasetReference
	if ref == nil || ref.DatasetId == "" {
		writeError(w, http.StatusBadRequest, "invalid", "Missing required field: datasetReference.datasetId")
		return
	}
	if ref.ProjectId != "" && ref.ProjectId != project {
		writeError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("Project %s in the dataset reference does not match project %s of the request", ref.ProjectId, project))
		return
	}
	key := datasetKey{project, ref.DatasetId}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.datasets[key]; ok {
		writeError(w, http.StatusConflict, "duplicate", "Already Exists: Dataset "+project+":"+key.dataset)
		return
	}
	if body.Location == "" {
		body.Location = "US"
	}
	now := time.Now()
	d := &dataset{key: key, res: &body, etag: s.newEtagLocked(), created: now, modified: now}
	s.datasets[key] = d
	writeJSON(w, renderDataset(d))
}

func renderDataset(d *dataset) *bq.Dataset {
	r := *d.res
	r.Kind = "bigquery#dataset"
	r.Id = d.key.project + ":" + d.key.dataset
	r.DatasetReference = &bq.DatasetReference{ProjectId: d.key.project, DatasetId: d.key.dataset}
	r.Etag = d.etag
	r.CreationTime = millis(d.created)
	r.LastModifiedTime = millis(d.modified)
	return &r
}

// datasetLocked returns the dataset or answers 404; s.mu must be held.
func (s *Server) datasetLocked(w http.ResponseWriter, key datasetKey) (*dataset, bool) {
	d, ok := s.datasets[key]
	if !ok {
		writeError(w, http.StatusNotFound, "notFound", "Not found: Dataset "+key.project+":"+key.dataset)
	}
	return d, ok
}

// tableLocked returns the table or answers 404; s.mu must be held.
func (s *Server) tableLocked(w http.ResponseWriter, key tableKey) (*table, bool) {
	if _, ok := s.datasetLocked(w, key.datasetKey()); !ok {
		return nil, false
	}
	t, ok := s.tables[key]
	if !ok {
		writeError(w, http.StatusNotFound, "notFound", "Not found: Table "+key.legacyID())
	}
	return t, ok
}

func (s *Server) getDataset(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.datasetLocked(w, datasetKey{r.PathValue("project"), r.PathValue("dataset")}); ok {
		writeJSON(w, renderDataset(d))
	}
}

func (s *Server) deleteDataset(w http.ResponseWriter, r *http.Request) {
	key := datasetKey{r.PathValue("project"), r.PathValue("dataset")}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.datasetLocked(w, key); !ok {
		return
	}
	var inDataset []*table
	for k, t := range s.tables {
		if k.datasetKey() == key {
			inDataset = append(inDataset, t)
		}
	}
	if len(inDataset) > 0 && r.URL.Query().Get("deleteContents") != "true" {
		writeError(w, http.StatusBadRequest, "resourceInUse", "Dataset "+key.project+":"+key.dataset+" is still in use")
		return
	}
	for _, t := range inDataset {
		s.dropTableLocked(t)
	}
	delete(s.datasets, key)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listTables(w http.ResponseWriter, r *http.Request) {
	key := datasetKey{r.PathValue("project"), r.PathValue("dataset")}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.datasetLocked(w, key); !ok {
		return
	}
	var keys []tableKey
	for k := range s.tables {
		if k.datasetKey() == key {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b tableKey) int { return strings.Compare(a.table, b.table) })
	list := &bq.TableList{Kind: "bigquery#tableList", TotalItems: int64(len(keys))}
	for _, k := range keys {
		res := s.tables[k].res
		list.Tables = append(list.Tables, &bq.TableListTables{
			Kind:                   "bigquery#table",
			Id:                     k.legacyID(),
			TableReference:         &bq.TableReference{ProjectId: k.project, DatasetId: k.dataset, TableId: k.table},
			Type:                   "TABLE",
			FriendlyName:           res.FriendlyName,
			CreationTime:           millis(s.tables[k].created),
			ExpirationTime:         res.ExpirationTime,
			Labels:                 res.Labels,
			TimePartitioning:       res.TimePartitioning,
			RangePartitioning:      res.RangePartitioning,
			RequirePartitionFilter: res.RequirePartitionFilter,
			Clustering:             res.Clustering,
		})
	}
	writeJSON(w, list)
}

func (s *Server) insertTable(w http.ResponseWriter, r *http.Request) {
	project, ds := r.PathValue("project"), r.PathValue("dataset")
	var body bq.Table
	if _, ok := readBody(w, r, &body); !ok {
		return
	}
	ref := body.TableReference
	if ref == nil || ref.TableId == "" {
		writeError(w, http.StatusBadRequest, "invalid", "Missing required field: tableReference.tableId")
		return
	}
	if (ref.ProjectId != "" && ref.ProjectId != project) || (ref.DatasetId != "" && ref.DatasetId != ds) {
		writeError(w, http.StatusBadRequest, "invalid", "The table reference does not match the dataset of the request")
		return
	}
	schema := &bq.TableSchema{}
	if body.Schema != nil {
		fields, err := normalizeSchema(body.Schema.Fields, "")
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid", err.Error())
			return
		}
		schema.Fields = fields
	}
	body.Schema = schema
	if err := checkNewTableLayout(&body, schema.Fields); err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	tc, err := checkTableConstraints(body.TableConstraints, schema.Fields)
	if err == nil {
		err = checkMaxStaleness(body.MaxStaleness)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	body.TableConstraints = tc
	key := tableKey{project, ds, ref.TableId}

	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.datasetLocked(w, key.datasetKey()); !ok {
		return
	}
	if _, ok := s.tables[key]; ok {
		writeError(w, http.StatusConflict, "duplicate", "Already Exists: Table "+key.legacyID())
		return
	}
	now := time.Now()
	t := &table{
		key:      key,
		res:      &body,
		etag:     s.newEtagLocked(),
		created:  now,
		modified: now,
		version:  1,
		views:    []schemaView{{version: 1, visibleAt: now.Add(s.faults.schemaDelay), schema: schema}},
	}
	s.tables[key] = t
	writeJSON(w, s.renderTableLocked(t))
}

func (s *Server) renderTableLocked(t *table) *bq.Table {
	s.purgeExpiredLocked(t, time.Now())
	r := *t.res
	r.Kind = "bigquery#table"
	r.Id = t.key.legacyID()
	r.TableReference = &bq.TableReference{ProjectId: t.key.project, DatasetId: t.key.dataset, TableId: t.key.table}
	r.Etag = t.etag
	r.CreationTime = millis(t.created)
	r.LastModifiedTime = uint64(millis(t.modified))
	r.NumRows = uint64(len(t.rows))
	r.Type = "TABLE"
	if r.View != nil {
		r.Type = "VIEW"
	}
	if d, ok := s.datasets[t.key.datasetKey()]; ok {
		r.Location = d.res.Location
	}
	return &r
}

func (s *Server) getTable(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tableLocked(w, tableKeyOf(r)); ok {
		writeJSON(w, s.renderTableLocked(t))
	}
}

func tableKeyOf(r *http.Request) tableKey {
	return tableKey{r.PathValue("project"), r.PathValue("dataset"), r.PathValue("table")}
}

// replacedByUpdate are the table fields tables.update clears when its
// request omits them (it replaces the resource; tables.patch leaves omitted
// fields alone). An omitted schema or timePartitioning is kept, since
// neither can be dropped.
var replacedByUpdate = []string{"description", "friendlyName", "expirationTime", "labels", "clustering", "requirePartitionFilter", "tableConstraints", "maxStaleness"}

// changeTable serves tables.patch (replace false) and tables.update (replace
// true).
func (s *Server) changeTable(w http.ResponseWriter, r *http.Request, replace bool) {
	key := tableKeyOf(r)
	var body bq.Table
	raw, ok := readBody(w, r, &body)
	if !ok {
		return
	}
	var present map[string]json.RawMessage
	if err := json.Unmarshal(raw, &present); err != nil {
		writeError(w, http.StatusBadRequest, "invalid", "Invalid JSON payload received: "+err.Error())
		return
	}
	if present == nil {
		present = make(map[string]json.RawMessage)
	}
	if replace {
		for _, k := range replacedByUpdate {
			if _, ok := present[k]; !ok {
				present[k] = json.RawMessage("null")
			}
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tableLocked(w, key)
	if !ok {
		return
	}
	if m := r.Header.Get("If-Match"); m != "" && m != "*" && strings.Trim(strings.TrimPrefix(m, "W/"), `"`) != t.etag {
		writeError(w, http.StatusPreconditionFailed, "conditionNotMet", "Precondition check failed.")
		return
	}

	upd := *t.res
	schemaChanged := false
	if _, ok := present["schema"]; ok {
		var fields []*bq.TableFieldSchema
		if body.Schema != nil {
			fields = body.Schema.Fields
		}
		norm, err := normalizeSchema(fields, "")
		if err == nil {
			err = checkSchemaUpdate(t.res.Schema.Fields, norm, "")
		}
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid", "Provided Schema does not match Table "+key.legacyID()+". "+err.Error())
			return
		}
		schemaChanged = !schemaEqual(t.res.Schema.Fields, norm)
		upd.Schema = &bq.TableSchema{Fields: norm}
	}
	if err := (layoutChange{body: &body, present: present}).applyLayout(&upd, t.res); err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	if err := applyConstraints(&upd, &body, present); err != nil {
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	if _, ok := present["description"]; ok {
		upd.Description = body.Description
	}
	if _, ok := present["friendlyName"]; ok {
		upd.FriendlyName = body.FriendlyName
	}
	if _, ok := present["expirationTime"]; ok {
		upd.ExpirationTime = body.ExpirationTime
	}
	if rawLabels, ok := present["labels"]; ok {
		// A null label value deletes the label, as in BigQuery; patch merges
		// the labels it names into the table's, update replaces them.
		var labels map[string]*string
		if err := json.Unmarshal(rawLabels, &labels); err != nil {
			writeError(w, http.StatusBadRequest, "invalid", "Invalid labels: "+err.Error())
			return
		}
		merged := make(map[string]string)
		if !replace {
			maps.Copy(merged, upd.Labels)
		}
		for k, v := range labels {
			if v == nil {
				delete(merged, k)
			} else {
				merged[k] = *v
			}
		}
		if err := checkLabels(merged); err != nil {
			writeError(w, http.StatusBadRequest, "invalid", err.Error())
			return
		}
		upd.Labels = merged
	}

	if schemaChanged && s.faults.forgetSchema {
		// Answer with the change; keep everything of it but the schema.
		kept := upd
		kept.Schema = t.res.Schema
		t.res = &upd
		t.etag = s.newEtagLocked()
		t.modified = time.Now()
		out := s.renderTableLocked(t)
		t.res = &kept
		writeJSON(w, out)
		return
	}
	now := time.Now()
	t.res = &upd
	t.etag = s.newEtagLocked()
	t.modified = now
	if t.cdc != nil && !slices.Equal(t.cdc.keyCols, primaryKeyColumns(&upd)) {
		// Changes are keyed by the primary key they were written under.
		t.cdc = nil
	}
	if schemaChanged {
		t.version++
		// Drop views the write path can no longer reach: every one older
		// than the newest view already visible.
		if cur, ok := t.writeView(now); ok {
			t.views = slices.DeleteFunc(t.views, func(v schemaView) bool { return v.version < cur.version })
		}
		t.views = append(t.views, schemaView{version: t.version, visibleAt: now.Add(s.faults.schemaDelay), schema: upd.Schema})
	}
	writeJSON(w, s.renderTableLocked(t))
}

func (s *Server) deleteTable(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tableLocked(w, tableKeyOf(r))
	if !ok {
		return
	}
	s.dropTableLocked(t)
	w.WriteHeader(http.StatusNoContent)
}

// dropTableLocked removes a table and its explicit streams; s.mu must be held.
func (s *Server) dropTableLocked(t *table) {
	delete(s.tables, t.key)
	maps.DeleteFunc(s.streams, func(_ string, ws *writeStream) bool { return ws.tbl == t })
}

// listTableData serves tabledata.list. Page tokens are row indexes; cells use
// the current REST schema, so columns added after a row was written read as
// NULL (or [] when REPEATED), as in BigQuery.
func (s *Server) listTableData(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	int64TS := q.Get("formatOptions.useInt64Timestamp") == "true"
	limit := defaultPageRows
	if v := q.Get("maxResults"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "invalid", "Invalid maxResults: "+v)
			return
		}
		if n > 0 {
			limit = n
		}
	}
	start := 0
	if v := q.Get("pageToken"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "invalid", "Invalid page token: "+v)
			return
		}
		start = n
	} else if v := q.Get("startIndex"); v != "" {
		n, err := strconv.ParseUint(v, 10, 31)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid", "Invalid startIndex: "+v)
			return
		}
		start = int(n)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tableLocked(w, tableKeyOf(r))
	if !ok {
		return
	}
	s.purgeExpiredLocked(t, time.Now())
	start = min(start, len(t.rows))
	end := min(start+limit, len(t.rows))
	type page struct {
		Kind      string           `json:"kind"`
		Etag      string           `json:"etag,omitempty"`
		TotalRows string           `json:"totalRows"`
		PageToken string           `json:"pageToken,omitempty"`
		Rows      []map[string]any `json:"rows,omitempty"`
	}
	p := page{Kind: "bigquery#tableDataList", Etag: t.etag, TotalRows: strconv.Itoa(len(t.rows))}
	if end < len(t.rows) {
		p.PageToken = strconv.Itoa(end)
	}
	for _, row := range t.rows[start:end] {
		p.Rows = append(p.Rows, restRecord(row, t.res.Schema.Fields, int64TS))
	}
	writeJSON(w, p)
}
