package bqfake

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const defaultStreamSuffix = "/streams/_default"

// writeService implements the Storage Write API (BigQueryWrite) over the
// Server's tables.
type writeService struct {
	storagepb.UnimplementedBigQueryWriteServer
	s *Server
}

// writeStream is an explicit (created) stream. Default streams have no state
// beyond their table.
type writeStream struct {
	name      string
	tbl       *table
	typ       storagepb.WriteStream_Type
	created   time.Time
	appended  int64            // rows accepted, i.e. the next offset
	flushed   int64            // BUFFERED: rows below this offset are readable
	pending   []map[string]any // BUFFERED: rows from flushed on; PENDING: all rows
	finalized bool
	committed time.Time // PENDING: set by BatchCommitWriteStreams
}

// storageStatus builds a gRPC status that carries BigQuery's StorageError
// detail, as the real service does, so apierror exposes it to clients.
func storageStatus(code codes.Code, sc storagepb.StorageError_StorageErrorCode, entity, msg string) *status.Status {
	st := status.New(code, msg+" Entity: "+entity)
	if sc == storagepb.StorageError_STORAGE_ERROR_CODE_UNSPECIFIED {
		return st
	}
	if d, err := st.WithDetails(&storagepb.StorageError{Code: sc, Entity: entity, ErrorMessage: msg}); err == nil {
		return d
	}
	return st
}

// splitStreamName parses "projects/P/datasets/D/tables/T/streams/S".
func splitStreamName(name string) (tableKey, string, bool) {
	p := strings.Split(name, "/")
	if len(p) != 8 || p[0] != "projects" || p[2] != "datasets" || p[4] != "tables" || p[6] != "streams" {
		return tableKey{}, "", false
	}
	return tableKey{p[1], p[3], p[5]}, p[7], true
}

// splitTableName parses "projects/P/datasets/D/tables/T".
func splitTableName(name string) (tableKey, bool) {
	p := strings.Split(name, "/")
	if len(p) != 6 || p[0] != "projects" || p[2] != "datasets" || p[4] != "tables" {
		return tableKey{}, false
	}
	return tableKey{p[1], p[3], p[5]}, true
}

// visibleTableLocked returns the table as the write path sees it at now;
// s.mu must be held.
func (s *Server) visibleTableLocked(key tableKey, now time.Time) (*table, schemaView, *status.Status) {
	t, ok := s.tables[key]
	if ok {
		if v, visible := t.writeView(now); visible {
			return t, v, nil
		}
	}
	return nil, schemaView{}, storageStatus(codes.NotFound, storagepb.StorageError_TABLE_NOT_FOUND, key.parent(), "Requested entity was not found.")
}

// targetLocked resolves a stream name to its table (as the write path sees
// it) and, for explicit streams, the stream; s.mu must be held.
func (s *Server) targetLocked(name string, now time.Time) (*table, *writeStream, schemaView, *status.Status) {
	key, id, ok := splitStreamName(name)
	if !ok {
		return nil, nil, schemaView{}, status.New(codes.InvalidArgument, "Invalid stream name: "+name)
	}
	if id == "_default" {
		t, v, st := s.visibleTableLocked(key, now)
		return t, nil, v, st
	}
	ws, ok := s.streams[name]
	if !ok {
		return nil, nil, schemaView{}, storageStatus(codes.NotFound, storagepb.StorageError_STREAM_NOT_FOUND, name, "Requested entity was not found.")
	}
	t, v, st := s.visibleTableLocked(key, now)
	if st != nil || t != ws.tbl {
		return nil, nil, schemaView{}, storageStatus(codes.NotFound, storagepb.StorageError_TABLE_NOT_FOUND, key.parent(), "Requested entity was not found.")
	}
	return t, ws, v, nil
}

func (s *Server) streamProto(name string, typ storagepb.WriteStream_Type, created time.Time, v schemaView, full bool) *storagepb.WriteStream {
	key, _, _ := splitStreamName(name)
	ws := &storagepb.WriteStream{
		Name:       name,
		Type:       typ,
		CreateTime: timestamppb.New(created),
		WriteMode:  storagepb.WriteStream_INSERT,
	}
	if typ == storagepb.WriteStream_COMMITTED {
		// "If a stream is of COMMITTED type, then it will have a
		// commit_time same as create_time."
		ws.CommitTime = timestamppb.New(created)
	}
	if d, ok := s.datasets[key.datasetKey()]; ok {
		ws.Location = d.res.Location
	}
	if full {
		ws.TableSchema = storageSchema(v.schema)
	}
	return ws
}

func (w *writeService) CreateWriteStream(_ context.Context, req *storagepb.CreateWriteStreamRequest) (*storagepb.WriteStream, error) {
	if err := w.s.unaryFault("CreateWriteStream"); err != nil {
		return nil, err
	}
	s := w.s
	key, ok := splitTableName(req.GetParent())
	if !ok {
		return nil, status.Error(codes.InvalidArgument, "Invalid table name: "+req.GetParent())
	}
	typ := req.GetWriteStream().GetType()
	switch typ {
	case storagepb.WriteStream_COMMITTED, storagepb.WriteStream_PENDING, storagepb.WriteStream_BUFFERED:
	default:
		return nil, status.Error(codes.InvalidArgument, "Write stream type must be COMMITTED, PENDING or BUFFERED, got "+typ.String())
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.benchRefusesLocked(typ); st != nil {
		return nil, st.Err()
	}
	t, v, st := s.visibleTableLocked(key, now)
	if st != nil {
		return nil, st.Err()
	}
	s.nextID++
	name := fmt.Sprintf("%s/streams/bqfake%06d", key.parent(), s.nextID)
	s.streams[name] = &writeStream{name: name, tbl: t, typ: typ, created: now}
	s.created = append(s.created, name)
	s.log.Debug("create write stream", zap.String("stream", name), zap.Stringer("type", typ))
	return s.streamProto(name, typ, now, v, true), nil
}

func (w *writeService) GetWriteStream(_ context.Context, req *storagepb.GetWriteStreamRequest) (*storagepb.WriteStream, error) {
	w.s.log.Debug("get write stream", zap.String("stream", req.GetName()))
	if err := w.s.unaryFault("GetWriteStream"); err != nil {
		return nil, err
	}
	s := w.s
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ws, v, st := s.targetLocked(req.GetName(), time.Now())
	if st != nil {
		return nil, st.Err()
	}
	full := req.GetView() == storagepb.WriteStreamView_FULL
	if ws == nil {
		s.lookedUp[req.GetName()] = true
		return s.streamProto(req.GetName(), storagepb.WriteStream_COMMITTED, t.created, v, full), nil
	}
	out := s.streamProto(ws.name, ws.typ, ws.created, v, full)
	if !ws.committed.IsZero() {
		out.CommitTime = timestamppb.New(ws.committed)
	}
	return out, nil
}

func (w *writeService) FinalizeWriteStream(_ context.Context, req *storagepb.FinalizeWriteStreamRequest) (*storagepb.FinalizeWriteStreamResponse, error) {
	if err := w.s.unaryFault("FinalizeWriteStream"); err != nil {
		return nil, err
	}
	s := w.s
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ws, _, st := s.targetLocked(req.GetName(), time.Now())
	if st != nil {
		return nil, st.Err()
	}
	if ws == nil {
		return nil, storageStatus(codes.InvalidArgument, storagepb.StorageError_INVALID_STREAM_TYPE, req.GetName(), "Cannot finalize the _default stream.").Err()
	}
	ws.finalized = true
	return &storagepb.FinalizeWriteStreamResponse{RowCount: ws.appended}, nil
}

// BatchCommitWriteStreams commits all streams or none: any stream that is not
// a finalized, uncommitted PENDING stream of the parent table is reported in
// stream_errors and nothing is committed (commit_time stays unset).
func (w *writeService) BatchCommitWriteStreams(_ context.Context, req *storagepb.BatchCommitWriteStreamsRequest) (*storagepb.BatchCommitWriteStreamsResponse, error) {
	if err := w.s.unaryFault("BatchCommitWriteStreams"); err != nil {
		return nil, err
	}
	s := w.s
	key, ok := splitTableName(req.GetParent())
	if !ok {
		return nil, status.Error(codes.InvalidArgument, "Invalid table name: "+req.GetParent())
	}
	if len(req.GetWriteStreams()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "write_streams must not be empty")
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	t, _, st := s.visibleTableLocked(key, now)
	if st != nil {
		return nil, st.Err()
	}
	var errs []*storagepb.StorageError
	var streams []*writeStream
	for _, name := range req.GetWriteStreams() {
		ws, ok := s.streams[name]
		switch {
		case !ok || ws.tbl != t:
			errs = append(errs, &storagepb.StorageError{Code: storagepb.StorageError_STREAM_NOT_FOUND, Entity: name, ErrorMessage: "Stream not found in table " + req.GetParent()})
		case ws.typ != storagepb.WriteStream_PENDING:
			errs = append(errs, &storagepb.StorageError{Code: storagepb.StorageError_INVALID_STREAM_TYPE, Entity: name, ErrorMessage: "Only PENDING streams can be committed"})
		case !ws.committed.IsZero():
			errs = append(errs, &storagepb.StorageError{Code: storagepb.StorageError_STREAM_ALREADY_COMMITTED, Entity: name, ErrorMessage: "Stream is already committed"})
		case !ws.finalized:
			errs = append(errs, &storagepb.StorageError{Code: storagepb.StorageError_INVALID_STREAM_STATE, Entity: name, ErrorMessage: "Stream is not finalized"})
		default:
			streams = append(streams, ws)
		}
	}
	if len(errs) > 0 {
		return &storagepb.BatchCommitWriteStreamsResponse{StreamErrors: errs}, nil
	}
	for _, ws := range streams {
		t.appendPlainLocked(ws.pending)
		ws.pending = nil
		ws.committed = now
	}
	s.purgeExpiredLocked(t, now)
	return &storagepb.BatchCommitWriteStreamsResponse{CommitTime: timestamppb.New(now)}, nil
}

// FlushRows makes the rows of a BUFFERED stream up to and including offset
// readable.
func (w *writeService) FlushRows(_ context.Context, req *storagepb.FlushRowsRequest) (*storagepb.FlushRowsResponse, error) {
	if err := w.s.unaryFault("FlushRows"); err != nil {
		return nil, err
	}
	s := w.s
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ws, _, st := s.targetLocked(req.GetWriteStream(), time.Now())
	if st != nil {
		return nil, st.Err()
	}
	if ws == nil || ws.typ != storagepb.WriteStream_BUFFERED {
		return nil, storageStatus(codes.InvalidArgument, storagepb.StorageError_INVALID_STREAM_TYPE, req.GetWriteStream(), "FlushRows is only supported on BUFFERED streams.").Err()
	}
	off := req.GetOffset().GetValue()
	if off >= ws.appended {
		return nil, storageStatus(codes.OutOfRange, storagepb.StorageError_OFFSET_OUT_OF_RANGE, ws.name,
			fmt.Sprintf("Flush offset %d is beyond the end of the stream (%d rows).", off, ws.appended)).Err()
	}
	if n := off + 1 - ws.flushed; n > 0 {
		t.appendPlainLocked(ws.pending[:n])
		ws.pending = ws.pending[n:]
		ws.flushed = off + 1
		s.purgeExpiredLocked(t, time.Now())
	}
	return &storagepb.FlushRowsResponse{Offset: off}, nil
}

// appendConn is the state of one AppendRows connection: per stream, the
// writer schema and the table schema version the connection started from.
type appendConn struct {
	current string
	streams map[string]*connStream
	// mode is fixed by the first request written on the connection: rows
	// with _CHANGE_TYPE (upsert mode) and rows without (insert mode) never
	// share a connection.
	mode connMode
}

type connMode int

const (
	modeUnset connMode = iota
	modeInsert
	modeUpsert
)

func (m connMode) String() string {
	if m == modeUpsert {
		return "upsert"
	}
	return "insert"
}

func modeOf(ch change) connMode {
	if ch.typ == "" {
		return modeInsert
	}
	return modeUpsert
}

// changeTypeName names a row's change type in the mode mismatch message; a
// row without _CHANGE_TYPE is an insert.
func changeTypeName(ch change) string {
	if ch.typ == "" {
		return "INSERT"
	}
	return ch.typ
}

type connStream struct {
	desc    protoreflect.MessageDescriptor
	rawDesc *descriptorpb.DescriptorProto
	descVer int

	baseSet     bool
	baseTbl     *table
	baseVersion int64

	plan        *msgPlan
	planTbl     *table
	planVersion int64
	planDescVer int

	bench connBench // bench mode only
}

// streamLevelFault reports whether an injected code ends the whole AppendRows
// stream (as BigQuery does for transport-like failures) rather than being
// answered in one response.
func streamLevelFault(c codes.Code) bool {
	switch c {
	case codes.Unavailable, codes.Internal, codes.Aborted, codes.DeadlineExceeded, codes.Canceled, codes.Unknown:
		return true
	}
	return false
}

func faultMessage(c codes.Code) string {
	if c == codes.ResourceExhausted {
		// The Go client retries RESOURCE_EXHAUSTED only with this prefix.
		return "Exceeds 'AppendRows throughput' quota, user_id: bqfake (status: INSUFFICIENT_TOKENS), you can issue a raise quota request through Google Cloud Console. (injected by bqfake)"
	}
	return fmt.Sprintf("bqfake: injected %s failure", c)
}

type received struct {
	req *storagepb.AppendRowsRequest
	at  time.Time
}

// AppendRows serves one bidirectional connection. A reader goroutine
// timestamps requests as they arrive so that an injected latency overlaps
// for pipelined requests; requests are processed and answered in order.
func (w *writeService) AppendRows(stream storagepb.BigQueryWrite_AppendRowsServer) error {
	s := w.s
	s.connOpened()
	defer s.connClosed()
	ctx := stream.Context()
	reqs := make(chan received, 1024)
	recvErr := make(chan error, 1)
	s.serveWG.Add(1)
	go func() {
		defer s.serveWG.Done()
		defer close(reqs)
		for {
			if !s.awaitReads(ctx) {
				return
			}
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			s.received.Add(1)
			select {
			case reqs <- received{req: req, at: time.Now()}:
			case <-ctx.Done():
				return
			}
		}
	}()

	conn := &appendConn{streams: make(map[string]*connStream)}
	var connNext time.Time // SetConnectionRate's timeline of this connection
	for {
		var r received
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case rr, ok := <-reqs:
			if !ok {
				select {
				case err := <-recvErr:
					if errors.Is(err, io.EOF) {
						return nil
					}
					return err
				default:
					return status.FromContextError(ctx.Err()).Err()
				}
			}
			r = rr
		}
		s.mu.Lock()
		latency := s.faults.appendLatency
		s.mu.Unlock()
		wait := time.Until(r.at.Add(latency))
		if latency <= 0 || wait < 0 {
			wait = 0
		}
		if !sleepCtx(ctx, wait) {
			return status.FromContextError(ctx.Err()).Err()
		}
		if !sleepCtx(ctx, s.rowRateWait(len(r.req.GetProtoRows().GetRows().GetSerializedRows()))) {
			return status.FromContextError(ctx.Err()).Err()
		}
		if !sleepCtx(ctx, s.connRateWait(&connNext, len(r.req.GetProtoRows().GetRows().GetSerializedRows()))) {
			return status.FromContextError(ctx.Err()).Err()
		}
		resp, err := w.handleAppend(conn, r.req)
		if err != nil {
			s.log.Debug("append ends stream", zap.String("stream", conn.current), zap.Stringer("code", status.Code(err)))
			return err
		}
		if e := resp.GetError(); e != nil {
			s.log.Debug("append failed", zap.String("stream", resp.GetWriteStream()),
				zap.Stringer("code", codes.Code(e.GetCode())), zap.String("message", e.GetMessage()), zap.Int("rowErrors", len(resp.GetRowErrors())))
		} else {
			s.log.Debug("append", zap.String("stream", resp.GetWriteStream()), zap.Int("rows", len(r.req.GetProtoRows().GetRows().GetSerializedRows())))
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// sleepCtx waits d (nothing if d <= 0); false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// awaitReads waits while StallReads holds reads; false if ctx ended first.
func (s *Server) awaitReads(ctx context.Context) bool {
	resumed := s.readsResumed()
	if resumed == nil {
		return true
	}
	select {
	case <-resumed:
		return true
	case <-ctx.Done():
		return false
	}
}

// rejectedRowMessage is the row error of a row RejectRows rejects.
const rejectedRowMessage = "Field _row: rejected by the test (bqfake.RejectRows)"

// requestStateLocked is the error of a request that its stream refuses
// whatever its rows: an offset on the default stream, or an explicit
// stream that was committed or finalized; s.mu must be held.
func requestStateLocked(ws *writeStream, req *storagepb.AppendRowsRequest, name string) *status.Status {
	if ws == nil {
		if req.GetOffset() != nil {
			return status.New(codes.InvalidArgument, "Offset is not supported on the _default stream. Entity: "+name)
		}
		return nil
	}
	switch {
	case !ws.committed.IsZero():
		return storageStatus(codes.InvalidArgument, storagepb.StorageError_STREAM_ALREADY_COMMITTED, name, "Stream is already committed.")
	case ws.finalized:
		return storageStatus(codes.InvalidArgument, storagepb.StorageError_STREAM_FINALIZED, name, "Stream is finalized.")
	}
	return nil
}

func failed(resp *storagepb.AppendRowsResponse, st *status.Status) *storagepb.AppendRowsResponse {
	resp.Response = &storagepb.AppendRowsResponse_Error{Error: st.Proto()}
	return resp
}

// cdcRequestState is the error of a request whose rows BigQuery refuses as
// a whole for their change types, checked after the rows were decoded and
// before their row errors: CDC rows on an explicit stream or a table
// without primary key, and rows whose mode (with or without _CHANGE_TYPE)
// differs from the connection's or from the request's first row.
func cdcRequestState(conn *appendConn, ws *writeStream, tbl *table, keyCols []string, changes []change, cdc bool, name string) *status.Status {
	if cdc && ws != nil {
		return storageStatus(codes.InvalidArgument, storagepb.StorageError_INVALID_STREAM_TYPE, name, msgCDCStream)
	}
	if cdc && len(keyCols) == 0 {
		return status.New(codes.InvalidArgument, fmt.Sprintf(msgNoPrimaryKey, tbl.key.legacyID())+" Entity: "+name)
	}
	mode := conn.mode
	for _, ch := range changes {
		m := modeOf(ch)
		if mode == modeUnset {
			mode = m
		}
		if m != mode {
			return status.New(codes.InvalidArgument, fmt.Sprintf(msgChangeTypeMode, mode, changeTypeName(ch))+" Entity: "+name)
		}
	}
	return nil
}

// missingSequences returns the row errors of CDC rows without
// _CHANGE_SEQUENCE_NUMBER once the table, or this request, has rows with
// one; s.mu must be held.
func missingSequences(tbl *table, changes []change, indexes []int64) []*storagepb.RowError {
	required := tbl.seqSeen || slices.ContainsFunc(changes, func(ch change) bool { return ch.seq != nil })
	if !required {
		return nil
	}
	var out []*storagepb.RowError
	for i, ch := range changes {
		if ch.typ != "" && ch.seq == nil {
			out = append(out, &storagepb.RowError{Index: indexes[i], Code: storagepb.RowError_FIELDS_ERROR, Message: errSeqRequired.Error()})
		}
	}
	return out
}

// handleAppend processes one request. A non-nil error ends the stream with
// that status; everything else is answered in the response.
func (w *writeService) handleAppend(conn *appendConn, req *storagepb.AppendRowsRequest) (*storagepb.AppendRowsResponse, error) {
	s := w.s
	s.mu.Lock()
	fault := codes.OK
	if s.faults.appendsLeft > 0 {
		s.faults.appendsLeft--
		fault = s.faults.appendCode
	}
	lose := false
	if fault == codes.OK && s.faults.loseLeft > 0 {
		s.faults.loseLeft--
		lose = true
	}
	bench := s.bench
	reject := s.faults.rejectRows
	name := req.GetWriteStream()
	if name == "" {
		name = conn.current
	}
	if code, ok := s.faults.tableCodes[name]; ok && fault == codes.OK {
		fault = code
	}
	s.mu.Unlock()
	if req.GetProtoRows().GetWriterSchema() != nil {
		s.writerSchemas.Add(1)
	}
	if req.GetWriteStream() == "" {
		s.unnamed.Add(1)
	}

	resp, err := w.processAppend(conn, req, fault, bench, reject)
	if !lose {
		return resp, err
	}
	s.mu.Lock()
	s.faults.answersLost++
	s.mu.Unlock()
	outcome := "ok"
	switch {
	case err != nil:
		outcome = err.Error()
	case resp.GetError() != nil:
		outcome = codes.Code(resp.GetError().GetCode()).String() + ": " + resp.GetError().GetMessage()
	}
	s.log.Debug("append processed, answer lost", zap.String("stream", conn.current), zap.String("outcome", outcome))
	return nil, status.Error(codes.Unavailable, "bqfake: the connection broke after the request was processed (LoseAnswers). Entity: "+conn.current)
}

// processAppend is handleAppend without the lost answers.
func (w *writeService) processAppend(conn *appendConn, req *storagepb.AppendRowsRequest, fault codes.Code, bench *benchState, reject func(map[string]any) bool) (*storagepb.AppendRowsResponse, error) {
	s := w.s
	name := req.GetWriteStream()
	if name == "" {
		name = conn.current
	}
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "The first AppendRows request on a connection must set write_stream.")
	}
	conn.current = name
	if err := s.lookupRefusal(name); err != nil {
		return nil, err
	}
	if fault != codes.OK && streamLevelFault(fault) {
		return nil, status.Error(fault, faultMessage(fault)+" Entity: "+name)
	}
	resp := &storagepb.AppendRowsResponse{WriteStream: name}

	// The writer schema is taken even from a request that then fails, since
	// the client does not resend it on the same connection.
	cs := conn.streams[name]
	if cs == nil {
		cs = &connStream{}
		conn.streams[name] = cs
	}
	// A multiplexing client repeats an unchanged writer_schema whenever it
	// switches streams; only a different one counts as a schema update.
	if ws := req.GetProtoRows().GetWriterSchema(); ws != nil && !proto.Equal(ws.GetProtoDescriptor(), cs.rawDesc) {
		md, err := compileDescriptor(ws.GetProtoDescriptor())
		if err != nil {
			return failed(resp, status.New(codes.InvalidArgument, "Invalid proto schema: "+err.Error()+" Entity: "+name)), nil
		}
		cs.desc, cs.rawDesc, cs.baseSet = md, ws.GetProtoDescriptor(), false
		cs.descVer++
	}
	if fault != codes.OK {
		return failed(resp, status.New(fault, faultMessage(fault)+" Entity: "+name)), nil
	}
	if req.GetArrowRows() != nil {
		return failed(resp, status.New(codes.InvalidArgument, "bqfake supports only proto_rows. Entity: "+name)), nil
	}
	if cs.desc == nil {
		return failed(resp, status.New(codes.InvalidArgument, "No writer_schema was sent for this stream on this connection. Entity: "+name)), nil
	}
	if n := proto.Size(req); n > maxRequestBytes {
		return failed(resp, status.New(codes.InvalidArgument, fmt.Sprintf("AppendRows request too large: %d limit %d Entity: %s", n, maxRequestBytes, name))), nil
	}
	if bench != nil {
		return w.benchAppend(cs, req, name, resp, bench), nil
	}

	now := time.Now()
	s.mu.Lock()
	tbl, ws, view, st := s.targetLocked(name, now)
	if st == nil {
		st = requestStateLocked(ws, req, name)
	}
	var keyCols []string
	if st == nil {
		keyCols = primaryKeyColumns(tbl.res)
	}
	s.mu.Unlock()
	if st != nil {
		return failed(resp, st), nil
	}
	if !cs.baseSet {
		cs.baseSet, cs.baseTbl, cs.baseVersion = true, tbl, view.version
	}
	if tbl != cs.baseTbl || view.version != cs.baseVersion {
		resp.UpdatedSchema = storageSchema(view.schema)
	}
	if cs.plan == nil || cs.planTbl != tbl || cs.planVersion != view.version || cs.planDescVer != cs.descVer {
		plan, err := buildPlan(cs.desc, view.schema.Fields)
		if err != nil {
			var se *schemaError
			code := storagepb.StorageError_STORAGE_ERROR_CODE_UNSPECIFIED
			if errors.As(err, &se) && len(se.extraFields) > 0 {
				code = storagepb.StorageError_SCHEMA_MISMATCH_EXTRA_FIELDS
			}
			return failed(resp, storageStatus(codes.InvalidArgument, code, name, err.Error())), nil
		}
		cs.plan, cs.planTbl, cs.planVersion, cs.planDescVer = plan, tbl, view.version, cs.descVer
	}

	keySet := make(map[string]bool, len(keyCols))
	for _, c := range keyCols {
		keySet[strings.ToLower(c)] = true
	}
	serialized := req.GetProtoRows().GetRows().GetSerializedRows()
	rows := make([]map[string]any, 0, len(serialized))
	changes := make([]change, 0, len(serialized))
	indexes := make([]int64, 0, len(serialized)) // of rows in the request
	var rowErrs []*storagepb.RowError
	for i, b := range serialized {
		row, ch, err := decodeRow(cs.plan, cs.desc, b, keySet)
		if err != nil {
			rowErrs = append(rowErrs, &storagepb.RowError{Index: int64(i), Code: storagepb.RowError_FIELDS_ERROR, Message: err.Error()})
			continue
		}
		if reject != nil && reject(row) {
			rowErrs = append(rowErrs, &storagepb.RowError{Index: int64(i), Code: storagepb.RowError_FIELDS_ERROR, Message: rejectedRowMessage})
			continue
		}
		rows = append(rows, row)
		changes = append(changes, ch)
		indexes = append(indexes, int64(i))
	}
	cdc := slices.ContainsFunc(changes, func(ch change) bool { return ch.typ != "" })
	if st := cdcRequestState(conn, ws, tbl, keyCols, changes, cdc, name); st != nil {
		return failed(resp, st), nil
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if t2, ws2, _, st := s.targetLocked(name, now); st != nil || t2 != tbl || ws2 != ws {
		if st == nil {
			st = storageStatus(codes.NotFound, storagepb.StorageError_TABLE_NOT_FOUND, name, "Requested entity was not found.")
		}
		return failed(resp, st), nil
	}
	if st := requestStateLocked(ws, req, name); st != nil {
		return failed(resp, st), nil // finalized meanwhile
	}
	if cdc {
		// The key may have changed since the rows were decoded.
		if keyCols = primaryKeyColumns(tbl.res); len(keyCols) == 0 {
			return failed(resp, status.New(codes.InvalidArgument, fmt.Sprintf(msgNoPrimaryKey, tbl.key.legacyID())+" Entity: "+name)), nil
		}
		rowErrs = append(rowErrs, missingSequences(tbl, changes, indexes)...)
		slices.SortFunc(rowErrs, func(a, b *storagepb.RowError) int { return cmp.Compare(a.GetIndex(), b.GetIndex()) })
	}
	// Rows are validated before the offset is checked: a request with a bad
	// row fails with row_errors even if its offset is already written.
	if len(rowErrs) > 0 {
		resp.RowErrors = rowErrs
		return failed(resp, status.New(codes.InvalidArgument, "Errors found while processing rows. Please refer to the row_errors field for details. The list may not be complete because of the size limitations. Entity: "+name)), nil
	}
	if ws != nil {
		if off := req.GetOffset(); off != nil {
			switch {
			case off.GetValue() < ws.appended:
				s.faults.alreadyExists++
				return failed(resp, storageStatus(codes.AlreadyExists, storagepb.StorageError_OFFSET_ALREADY_EXISTS, name,
					fmt.Sprintf("The offset is within stream, expected offset %d, received %d.", ws.appended, off.GetValue()))), nil
			case off.GetValue() > ws.appended:
				s.faults.outOfRange++
				return failed(resp, storageStatus(codes.OutOfRange, storagepb.StorageError_OFFSET_OUT_OF_RANGE, name,
					fmt.Sprintf("The offset is beyond stream, expected offset %d, received %d.", ws.appended, off.GetValue()))), nil
			}
		}
	}

	result := &storagepb.AppendRowsResponse_AppendResult{}
	switch {
	case ws == nil && cdc:
		tbl.applyChangesLocked(rows, changes, keyCols)
	case ws == nil:
		tbl.appendPlainLocked(rows)
	default:
		result.Offset = wrapperspb.Int64(ws.appended)
		ws.appended += int64(len(rows))
		if ws.typ == storagepb.WriteStream_COMMITTED {
			tbl.appendPlainLocked(rows)
		} else {
			ws.pending = append(ws.pending, rows...)
		}
	}
	if len(changes) > 0 && conn.mode == modeUnset {
		conn.mode = modeOf(changes[0])
	}
	// Rows of partitions that have already expired are accepted and
	// dropped at once, as BigQuery expires them on insert.
	s.purgeExpiredLocked(tbl, time.Now())
	resp.Response = &storagepb.AppendRowsResponse_AppendResult_{AppendResult: result}
	return resp, nil
}
