package bqfake

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Bench mode: the server as a sink that is never the bottleneck of a
// benchmark (integration/bench). Turned on with SetBench, AppendRows checks
// a stream's writer descriptor against the table once, on the first request
// of the stream on a connection (and again only when the writer schema or
// the table itself changes), and then only counts rows: they are neither
// decoded nor stored, so Rows returns nothing for them while RowCount and
// BenchStats count them. Everything else (REST, offsets of COMMITTED
// streams, updated_schema, injected faults and latency) behaves as usual;
// PENDING and BUFFERED streams are refused, since their rows would have to
// be kept until committed or flushed.
//
// With BenchOptions.Freshness set to a TIMESTAMP column path such as
// "_kafka.timestamp", each row's value of that column is read straight from
// its proto wire bytes (the field numbers are looked up once per stream and
// writer schema) and the server records, per row, the time of its
// acknowledgement minus that timestamp.

// BenchOptions configures bench mode.
type BenchOptions struct {
	// Freshness is the dotted path of a TIMESTAMP column, e.g.
	// "_kafka.timestamp", matched case-insensitively as column names are;
	// empty records no freshness. Rows whose writer schema lacks the column,
	// or that leave it unset, are counted in BenchStats.NoTimestamp.
	Freshness string
}

// BenchStats is what bench mode counted since SetBench turned it on.
type BenchStats struct {
	Requests int64 // AppendRows requests whose rows were counted
	Rows     int64 // rows counted, over all tables
	// Checks is how many times a writer descriptor was checked against a
	// table: once per stream and connection unless the writer schema or the
	// table changed.
	Checks int64
	// Freshness holds one entry per counted row carrying the Freshness
	// column: acknowledgement time minus the row's timestamp, in arrival
	// order.
	Freshness   []time.Duration
	NoTimestamp int64 // counted rows without a readable Freshness timestamp
}

type benchState struct {
	path  []string // BenchOptions.Freshness split at dots; nil: none
	stats BenchStats
}

// connBench is a stream's bench-mode state on one connection.
type connBench struct {
	checked bool
	descVer int    // the writer schema version checked
	tbl     *table // the table checked against
	ts      *tsPath
}

// tsPath locates a TIMESTAMP value in a row's wire bytes: the field numbers
// from the row message down to the leaf, and how the leaf is encoded.
type tsPath struct {
	nums []protowire.Number
	leaf tsLeaf
}

type tsLeaf int

const (
	leafInt64     tsLeaf = iota // int64 µs (the project's contract)
	leafSint64                  // zigzag µs
	leafSfixed64                // fixed64 µs
	leafWrapper                 // google.protobuf.Int64Value{value: µs}
	leafTimestamp               // google.protobuf.Timestamp{seconds, nanos}
)

// SetBench turns bench mode on with o (nil turns it off) and starts counting
// afresh. Requests already being processed finish in the mode they started
// in; turn it on before the first append.
func (s *Server) SetBench(o *BenchOptions) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o == nil {
		s.bench = nil
		return
	}
	b := &benchState{}
	if o.Freshness != "" {
		b.path = strings.Split(o.Freshness, ".")
	}
	s.bench = b
}

// BenchStats returns a copy of what bench mode has counted; the zero value
// when it is off.
func (s *Server) BenchStats() BenchStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bench == nil {
		return BenchStats{}
	}
	out := s.bench.stats
	out.Freshness = slices.Clone(out.Freshness)
	return out
}

// benchRefusesLocked is the error CreateWriteStream answers in bench mode for
// a stream type whose rows would have to be kept; s.mu must be held.
func (s *Server) benchRefusesLocked(typ storagepb.WriteStream_Type) *status.Status {
	if s.bench == nil || typ == storagepb.WriteStream_COMMITTED {
		return nil
	}
	return status.New(codes.FailedPrecondition, "bqfake bench mode counts rows without keeping them: only the _default and COMMITTED streams are served, not "+typ.String())
}

// benchAppend is handleAppend's tail in bench mode: the request's stream has
// a writer descriptor (cs.desc) and passed the checks every request gets.
func (w *writeService) benchAppend(cs *connStream, req *storagepb.AppendRowsRequest, name string, resp *storagepb.AppendRowsResponse, b *benchState) *storagepb.AppendRowsResponse {
	s := w.s
	now := time.Now()
	s.mu.Lock()
	tbl, ws, view, st := s.targetLocked(name, now)
	s.mu.Unlock()
	if st != nil {
		return failed(resp, st)
	}
	if !cs.baseSet {
		cs.baseSet, cs.baseTbl, cs.baseVersion = true, tbl, view.version
	}
	if tbl != cs.baseTbl || view.version != cs.baseVersion {
		resp.UpdatedSchema = storageSchema(view.schema)
	}
	checked := false
	if !cs.bench.checked || cs.bench.descVer != cs.descVer || cs.bench.tbl != tbl {
		// The first request of this stream (or writer schema) on the
		// connection: the whole descriptor against the table, as
		// handleAppend does, and where the timestamp lies.
		cs.bench = connBench{}
		if _, err := buildPlan(cs.desc, view.schema.Fields); err != nil {
			var se *schemaError
			code := storagepb.StorageError_STORAGE_ERROR_CODE_UNSPECIFIED
			if errors.As(err, &se) && len(se.extraFields) > 0 {
				code = storagepb.StorageError_SCHEMA_MISMATCH_EXTRA_FIELDS
			}
			return failed(resp, storageStatus(codes.InvalidArgument, code, name, err.Error()))
		}
		cs.bench = connBench{checked: true, descVer: cs.descVer, tbl: tbl, ts: findTimestamp(cs.desc, b.path)}
		checked = true
	}

	serialized := req.GetProtoRows().GetRows().GetSerializedRows()
	var stamps []int64
	missing := 0
	if b.path != nil {
		stamps = make([]int64, 0, len(serialized))
		for _, row := range serialized {
			if us, ok := cs.bench.ts.read(row); ok {
				stamps = append(stamps, us)
			} else {
				missing++
			}
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if checked {
		b.stats.Checks++
	}
	if t2, ws2, _, st := s.targetLocked(name, now); st != nil || t2 != tbl || ws2 != ws {
		if st == nil {
			st = storageStatus(codes.NotFound, storagepb.StorageError_TABLE_NOT_FOUND, name, "Requested entity was not found.")
		}
		return failed(resp, st)
	}
	n := int64(len(serialized))
	result := &storagepb.AppendRowsResponse_AppendResult{}
	switch {
	case ws == nil && req.GetOffset() != nil:
		return failed(resp, status.New(codes.InvalidArgument, "Offset is not supported on the _default stream. Entity: "+name))
	case ws != nil:
		switch {
		case !ws.committed.IsZero():
			return failed(resp, storageStatus(codes.InvalidArgument, storagepb.StorageError_STREAM_ALREADY_COMMITTED, name, "Stream is already committed."))
		case ws.finalized:
			return failed(resp, storageStatus(codes.InvalidArgument, storagepb.StorageError_STREAM_FINALIZED, name, "Stream is finalized."))
		}
		if off := req.GetOffset(); off != nil {
			switch {
			case off.GetValue() < ws.appended:
				s.faults.alreadyExists++
				return failed(resp, storageStatus(codes.AlreadyExists, storagepb.StorageError_OFFSET_ALREADY_EXISTS, name,
					fmt.Sprintf("The offset is within stream, expected offset %d, received %d.", ws.appended, off.GetValue())))
			case off.GetValue() > ws.appended:
				s.faults.outOfRange++
				return failed(resp, storageStatus(codes.OutOfRange, storagepb.StorageError_OFFSET_OUT_OF_RANGE, name,
					fmt.Sprintf("The offset is beyond stream, expected offset %d, received %d.", ws.appended, off.GetValue())))
			}
		}
		result.Offset = wrapperspb.Int64(ws.appended)
		ws.appended += n
	}
	tbl.benchRows += n
	b.stats.Requests++
	b.stats.Rows += n
	b.stats.NoTimestamp += int64(missing)
	// The response leaves as soon as this returns: that is the
	// acknowledgement.
	ack := time.Now()
	for _, us := range stamps {
		b.stats.Freshness = append(b.stats.Freshness, ack.Sub(time.UnixMicro(us)))
	}
	resp.Response = &storagepb.AppendRowsResponse_AppendResult_{AppendResult: result}
	return resp
}

// findTimestamp resolves a column path to field numbers in md, or nil if md
// lacks it or it is not a timestamp the fake can read.
func findTimestamp(md protoreflect.MessageDescriptor, path []string) *tsPath {
	if len(path) == 0 {
		return nil
	}
	p := &tsPath{}
	for i, name := range path {
		var fd protoreflect.FieldDescriptor
		fields := md.Fields()
		for j := range fields.Len() {
			if f := fields.Get(j); strings.EqualFold(columnName(f), name) {
				fd = f
				break
			}
		}
		if fd == nil || fd.IsList() || fd.IsMap() {
			return nil
		}
		p.nums = append(p.nums, fd.Number())
		if i < len(path)-1 {
			if fd.Kind() != protoreflect.MessageKind || wellKnown(fd.Message()) != "" {
				return nil
			}
			md = fd.Message()
			continue
		}
		switch fd.Kind() {
		case protoreflect.Int64Kind:
			p.leaf = leafInt64
		case protoreflect.Sint64Kind:
			p.leaf = leafSint64
		case protoreflect.Sfixed64Kind:
			p.leaf = leafSfixed64
		case protoreflect.MessageKind:
			switch wellKnown(fd.Message()) {
			case "Int64Value":
				p.leaf = leafWrapper
			case "Timestamp":
				p.leaf = leafTimestamp
			default:
				return nil
			}
		default:
			return nil
		}
	}
	return p
}

// read returns the timestamp in µs since the epoch held by a row's wire
// bytes, walking only the fields on the path.
func (p *tsPath) read(row []byte) (int64, bool) {
	if p == nil {
		return 0, false
	}
	b := row
	for i, num := range p.nums {
		last := i == len(p.nums)-1
		v, typ, ok := findField(b, num)
		if !ok {
			return 0, false
		}
		if !last || p.leaf == leafWrapper || p.leaf == leafTimestamp {
			if typ != protowire.BytesType {
				return 0, false
			}
			b = v
			continue
		}
		switch {
		case p.leaf == leafInt64 && typ == protowire.VarintType:
			x, n := protowire.ConsumeVarint(v)
			return int64(x), n > 0
		case p.leaf == leafSint64 && typ == protowire.VarintType:
			x, n := protowire.ConsumeVarint(v)
			return protowire.DecodeZigZag(x), n > 0
		case p.leaf == leafSfixed64 && typ == protowire.Fixed64Type:
			x, n := protowire.ConsumeFixed64(v)
			return int64(x), n > 0
		}
		return 0, false
	}
	// b is the wrapper or Timestamp message.
	switch p.leaf {
	case leafWrapper:
		v, typ, ok := findField(b, 1)
		if !ok || typ != protowire.VarintType {
			return 0, ok // an unset value is 0
		}
		x, n := protowire.ConsumeVarint(v)
		return int64(x), n > 0
	case leafTimestamp:
		var secs, nanos int64
		if v, typ, ok := findField(b, 1); ok && typ == protowire.VarintType {
			x, _ := protowire.ConsumeVarint(v)
			secs = int64(x)
		}
		if v, typ, ok := findField(b, 2); ok && typ == protowire.VarintType {
			x, _ := protowire.ConsumeVarint(v)
			nanos = int64(int32(x))
		}
		return secs*1e6 + nanos/1e3, true
	}
	return 0, false
}

// findField returns the first occurrence of field num in a message's wire
// bytes: its value bytes (for BytesType the content, else the encoded value)
// and wire type.
func findField(b []byte, num protowire.Number) ([]byte, protowire.Type, bool) {
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return nil, 0, false
		}
		b = b[l:]
		if n == num && typ == protowire.BytesType {
			v, l := protowire.ConsumeBytes(b)
			return v, typ, l >= 0
		}
		l = protowire.ConsumeFieldValue(n, typ, b)
		if l < 0 {
			return nil, 0, false
		}
		if n == num {
			return b[:l], typ, true
		}
		b = b[l:]
	}
	return nil, 0, false
}
