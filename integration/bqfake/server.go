package bqfake

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"go.uber.org/zap"
	bq "google.golang.org/api/bigquery/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

// keepalivePolicy models Google's front ends, which accept client pings
// every 30 s (with or without active streams) and end the connection with
// GOAWAY too_many_pings when pinged more often.
var keepalivePolicy = keepalive.EnforcementPolicy{MinTime: 25 * time.Second, PermitWithoutStream: true}

// maxRequestBytes is BigQuery's limit for one AppendRows request; the gRPC
// server accepts more so that the fake, not the transport, rejects it with
// BigQuery's error.
const maxRequestBytes = 10 << 20

// Opt configures a Server built by New.
type Opt func(*config)

type config struct {
	restAddr string
	grpcAddr string
	logger   *zap.Logger
	datasets []datasetKey
}

// RESTAddr sets the listen address of the REST (HTTP/JSON) API (default
// "127.0.0.1:0", a random free port). New fails if it cannot listen there.
func RESTAddr(addr string) Opt { return func(c *config) { c.restAddr = addr } }

// GRPCAddr sets the listen address of the Storage Write gRPC API (default
// "127.0.0.1:0", a random free port). New fails if it cannot listen there.
func GRPCAddr(addr string) Opt { return func(c *config) { c.grpcAddr = addr } }

// Logger sets the logger that records every request at debug level (default:
// nil, which means zap.NewNop()).
func Logger(l *zap.Logger) Opt { return func(c *config) { c.logger = l } }

// Dataset pre-creates a dataset, as if datasets.insert had been called before
// New returned. Repeating a dataset is harmless.
func Dataset(project, dataset string) Opt {
	return func(c *config) { c.datasets = append(c.datasets, datasetKey{project, dataset}) }
}

// Server is an in-process BigQuery stand-in that serves BigQuery's REST API
// and the Storage Write gRPC API (BigQueryWrite) on loopback sockets, so that
// the real Go clients talk to it exactly as to BigQuery. All state lives in
// memory and is lost on Close.
//
// All methods are safe for concurrent use.
type Server struct {
	log *zap.Logger

	restLn   net.Listener
	grpcLn   net.Listener
	httpSrv  *http.Server
	grpcSrv  *grpc.Server
	serveWG  sync.WaitGroup // Serve goroutines and AppendRows readers
	restWG   sync.WaitGroup // in-flight REST handlers
	closeOne sync.Once
	quit     chan struct{} // closed by Close: held responses are dropped

	mu       sync.Mutex
	datasets map[datasetKey]*dataset
	tables   map[tableKey]*table
	streams  map[string]*writeStream // explicit streams by name
	created  []string                // names of every explicit stream created, in order
	nextID   int64                   // streams and etags
	faults   faults
	// lookedUp holds the default stream names GetWriteStream answered for,
	// which RequireStreamLookup lets AppendRows write to.
	lookedUp map[string]bool
	closed   bool // REST handlers started after this refuse to run
	restHeld int  // REST responses held by SetRESTLatency

	// bench is bench mode's state (bench.go); nil: off.
	bench *benchState

	received atomic.Int64 // AppendRows requests read off the wire

	connsOpen, connsPeak int          // AppendRows connections (Connections); guarded by mu
	writerSchemas        atomic.Int64 // requests carrying a writer_schema
	unnamed              atomic.Int64 // requests without write_stream
}

type faults struct {
	appendsLeft   int
	appendCode    codes.Code
	unaryLeft     int
	unaryCode     codes.Code
	restLeft      int
	restStatus    int
	appendLatency time.Duration
	restLatency   time.Duration
	rowRate       int       // SetRowRate: rows per second; 0: no cap
	rowRateNext   time.Time // SetRowRate: when the rows reserved so far are all answered
	schemaDelay   time.Duration
	loseLeft      int                       // LoseAnswers: requests still to process without answering
	answersLost   int                       // requests processed whose answer LoseAnswers dropped
	rejectRows    func(map[string]any) bool // RejectRows; nil: none
	alreadyExists int                       // appends answered ALREADY_EXISTS
	outOfRange    int                       // appends answered OUT_OF_RANGE
	requireLookup bool                      // RequireStreamLookup
	forgetSchema  bool                      // ForgetSchemaChanges
	readsStalled  chan struct{}             // StallReads: closed when reads resume; nil: reading
	tableCodes    map[string]codes.Code     // FailTable, by default stream name
	connRowRate   int                       // SetConnectionRate: rows per second per connection; 0: no cap
}

type datasetKey struct{ project, dataset string }

type tableKey struct{ project, dataset, table string }

func (k tableKey) datasetKey() datasetKey { return datasetKey{k.project, k.dataset} }

// legacyID is the "project:dataset.table" form BigQuery uses in messages.
func (k tableKey) legacyID() string { return k.project + ":" + k.dataset + "." + k.table }

// parent is the Storage Write API resource name of the table.
func (k tableKey) parent() string {
	return fmt.Sprintf("projects/%s/datasets/%s/tables/%s", k.project, k.dataset, k.table)
}

type dataset struct {
	key      datasetKey
	res      *bq.Dataset // as inserted; computed fields are filled when rendered
	etag     string
	created  time.Time
	modified time.Time
}

// table is one table's state. res, and every schema it points to, is never
// mutated after it is stored: changes store a new copy, so callers may read a
// snapshot outside the lock.
type table struct {
	key      tableKey
	res      *bq.Table
	etag     string
	created  time.Time
	modified time.Time
	// views is what the write path sees, oldest first; see writeView.
	views   []schemaView
	version int64 // version of the newest schema
	rows    []map[string]any
	// expired counts the rows dropped because their partition had expired.
	expired int
	// benchRows counts the rows appended in bench mode, which are not kept.
	benchRows int64
	// cdc is the state of changes written through CDC (cdc.go); nil
	// before the first one.
	cdc *cdcState
	// seqSeen is set once a row with _CHANGE_SEQUENCE_NUMBER was written:
	// from then on, every CDC row must carry one.
	seqSeen bool
}

// schemaView is a schema version together with the moment the write path
// starts seeing it.
type schemaView struct {
	version   int64
	visibleAt time.Time
	schema    *bq.TableSchema
}

// writeView returns the newest schema the write path can see at now; false
// means the table does not exist yet for the write path.
func (t *table) writeView(now time.Time) (schemaView, bool) {
	for i := len(t.views) - 1; i >= 0; i-- {
		if !t.views[i].visibleAt.After(now) {
			return t.views[i], true
		}
	}
	return schemaView{}, false
}

// New starts the REST and gRPC listeners and serves until Close. It fails only
// if a listener cannot be opened; nothing else is contacted.
func New(opts ...Opt) (*Server, error) {
	cfg := config{restAddr: "127.0.0.1:0", grpcAddr: "127.0.0.1:0"}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.logger == nil {
		cfg.logger = zap.NewNop()
	}
	s := &Server{
		log:      cfg.logger,
		datasets: make(map[datasetKey]*dataset),
		tables:   make(map[tableKey]*table),
		streams:  make(map[string]*writeStream),
		lookedUp: make(map[string]bool),
		quit:     make(chan struct{}),
	}
	now := time.Now()
	for _, k := range cfg.datasets {
		if _, ok := s.datasets[k]; !ok {
			s.datasets[k] = &dataset{key: k, res: &bq.Dataset{Location: "US"}, etag: s.newEtagLocked(), created: now, modified: now}
		}
	}

	var err error
	if s.restLn, err = net.Listen("tcp", cfg.restAddr); err != nil {
		return nil, fmt.Errorf("listen rest %s: %w", cfg.restAddr, err)
	}
	if s.grpcLn, err = net.Listen("tcp", cfg.grpcAddr); err != nil {
		_ = s.restLn.Close()
		return nil, fmt.Errorf("listen grpc %s: %w", cfg.grpcAddr, err)
	}

	s.httpSrv = &http.Server{Handler: s.restHandler(), ReadHeaderTimeout: 10 * time.Second}
	s.grpcSrv = grpc.NewServer(
		grpc.MaxRecvMsgSize(4*maxRequestBytes),
		grpc.WaitForHandlers(true),
		grpc.KeepaliveEnforcementPolicy(keepalivePolicy),
	)
	storagepb.RegisterBigQueryWriteServer(s.grpcSrv, &writeService{s: s})

	s.serveWG.Add(2)
	go func() {
		defer s.serveWG.Done()
		if err := s.httpSrv.Serve(s.restLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("rest server stopped", zap.Error(err))
		}
	}()
	go func() {
		defer s.serveWG.Done()
		if err := s.grpcSrv.Serve(s.grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.log.Error("grpc server stopped", zap.Error(err))
		}
	}()
	return s, nil
}

// RESTEndpoint returns the REST base URL, e.g. "http://127.0.0.1:PORT", for
// option.WithEndpoint on bigquery.NewClient (with option.WithoutAuthentication).
func (s *Server) RESTEndpoint() string { return "http://" + s.restLn.Addr().String() }

// GRPCEndpoint returns "127.0.0.1:PORT" of the plaintext gRPC server, for
// option.WithEndpoint on managedwriter.NewClient together with
// option.WithoutAuthentication and insecure transport credentials.
func (s *Server) GRPCEndpoint() string { return s.grpcLn.Addr().String() }

// Close stops both servers, ends open AppendRows streams (clients see
// UNAVAILABLE or a connection error) and waits for every goroutine the Server
// started. Calling it again does nothing.
func (s *Server) Close() {
	s.closeOne.Do(func() {
		close(s.quit)
		s.grpcSrv.Stop()
		_ = s.httpSrv.Close()
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.serveWG.Wait()
		s.restWG.Wait()
	})
}

// FailAppends makes the next n AppendRows requests (counted across all
// connections, in arrival order) fail with code instead of being processed;
// their rows are not written. See the package doc for how each code appears
// on the wire. n <= 0 cancels pending failures.
func (s *Server) FailAppends(n int, code codes.Code) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.appendsLeft = max(n, 0)
	s.faults.appendCode = code
}

// FailUnary makes the next n unary Storage Write API calls
// (CreateWriteStream, GetWriteStream, FinalizeWriteStream,
// BatchCommitWriteStreams, FlushRows), counted in arrival order, fail with
// code and a message naming the injection instead of being processed, e.g.
// UNAUTHENTICATED for refused credentials. AppendRows is not affected (see
// FailAppends). n <= 0 cancels pending failures.
func (s *Server) FailUnary(n int, code codes.Code) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.unaryLeft = max(n, 0)
	s.faults.unaryCode = code
}

// unaryFault consumes one FailUnary count, returning the error to answer
// with, or nil.
func (s *Server) unaryFault(method string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.faults.unaryLeft == 0 {
		return nil
	}
	s.faults.unaryLeft--
	return status.Errorf(s.faults.unaryCode, "bqfake: injected %s failure of %s", s.faults.unaryCode, method)
}

// FailREST makes the next n REST calls answer with the HTTP status (and a
// BigQuery JSON error body) instead of being processed. n <= 0 cancels
// pending failures.
func (s *Server) FailREST(n int, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.restLeft = max(n, 0)
	s.faults.restStatus = status
}

// SetAppendLatency delays the processing and response of every AppendRows
// request until d after the server received it. Requests pipelined on one
// connection wait concurrently, as with BigQuery, so n in-flight requests take
// about d, not n*d. Zero (the default) disables the delay.
func (s *Server) SetAppendLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.appendLatency = max(d, 0)
}

// SetRowRate caps the rows per second the server acknowledges over all
// connections and tables at n, like a backend (or a quota) that takes rows
// no faster: each AppendRows request, once it is next on its connection (and
// after SetAppendLatency's delay), reserves the next len(rows)/n seconds of
// a single timeline shared by every connection, and is processed and
// answered at the end of its reservation. So the rows answered by any time t
// are at most n × (t − the first reservation's start), with no burst, and
// in bench mode (see SetBench) rows are counted, and their freshness taken,
// when they are answered. A request is charged its rows whatever its
// outcome. n <= 0 (the default) removes the cap; a new n starts the timeline
// afresh.
func (s *Server) SetRowRate(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.rowRate = max(n, 0)
	s.faults.rowRateNext = time.Time{}
}

// rowRateWait reserves rows on SetRowRate's timeline and returns how long
// their request must wait: 0 without a cap.
func (s *Server) rowRateWait(rows int) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.faults.rowRate <= 0 {
		return 0
	}
	now := time.Now()
	start := now
	if s.faults.rowRateNext.After(now) {
		start = s.faults.rowRateNext
	}
	end := start.Add(time.Duration(rows) * time.Second / time.Duration(s.faults.rowRate))
	s.faults.rowRateNext = end
	return end.Sub(now)
}

// StallReads stops (true) or resumes (false) reading AppendRows requests
// on every connection, like a backend that stops taking requests while the
// connection stays up. A connection already waiting for its next request
// when the stall begins still takes and processes that one (AppendsReceived
// tells a test its request was read); after it, requests are left unread, and
// HTTP/2 flow control soon blocks the client's Send: with gRPC-Go, once a
// request overflows the stream's window (64 KiB at first; it may grow up to
// 16 MiB on a busy connection), the next Send blocks. Requests read are
// processed and answered as usual, stall or not; a connection opened during
// the stall reads nothing until it ends. Resuming reads the waiting
// requests in order. Close ends stalled connections as any others.
func (s *Server) StallReads(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case on && s.faults.readsStalled == nil:
		s.faults.readsStalled = make(chan struct{})
	case !on && s.faults.readsStalled != nil:
		close(s.faults.readsStalled)
		s.faults.readsStalled = nil
	}
}

// AppendsReceived returns how many AppendRows requests the server has read
// off the wire so far, over all connections, whether or not they were
// processed yet. With StallReads and SetAppendLatency, a test learns from it
// that a request is in the server's hands.
func (s *Server) AppendsReceived() int64 { return s.received.Load() }

// readsResumed returns a channel closed when StallReads(false) ends the
// current stall, or nil while reads are not stalled.
func (s *Server) readsResumed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults.readsStalled
}

// SetRESTLatency holds every REST response until d after the request
// arrived, like a slow or unresponsive front end; a client that gives up
// first gets nothing. Close does not wait for held responses. Zero (the
// default) disables the delay.
func (s *Server) SetRESTLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.restLatency = max(d, 0)
}

// ForgetSchemaChanges makes tables.patch and tables.update answer as if a
// schema change were made, with the new schema in the answer, while the
// table keeps its old schema, as goccy's bigquery-emulator (v0.6.6) does
// for patch (it refuses update). Other changes still apply.
func (s *Server) ForgetSchemaChanges(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.forgetSchema = on
}

// SetSchemaDelay models BigQuery's metadata propagation lag: a table created
// or a schema patched after this call becomes visible to the Storage Write
// API only d later. Until then, the write path sees the previous schema (or
// NOT_FOUND for a new table); REST sees every change immediately. Zero (the
// default) makes changes visible at once.
func (s *Server) SetSchemaDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.schemaDelay = max(d, 0)
}

// RowCount returns the number of committed (readable) rows of the table, or 0
// if it does not exist; rows of expired partitions are not counted (see
// ExpiredRows), and for a table written through CDC, only the applied rows
// (see Rows). Rows counted in bench mode (see SetBench) are
// included although they were not kept.
func (s *Server) RowCount(project, dataset, table string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tables[tableKey{project, dataset, table}]; ok {
		s.purgeExpiredLocked(t, time.Now())
		return len(t.rows) + int(t.benchRows)
	}
	return 0
}

// Rows returns a deep copy of the committed rows of the table in commit order,
// or nil if it does not exist. Values follow the project's row value contract
// (e.g. NUMERIC as a normalized decimal string, DATE as int32 days, TIMESTAMP
// as int64 microseconds); absent keys are NULL. For a table written through
// CDC these are the applied rows, as tabledata.list returns them: one row per
// primary key value whose winning change is an UPSERT, in the place of the
// key's first row (new keys at the end); see KeyStates for the changes that
// won. It is meant for debugging: tests should read back through the real
// client where they can.
func (s *Server) Rows(project, dataset, table string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tables[tableKey{project, dataset, table}]
	if !ok {
		return nil
	}
	s.purgeExpiredLocked(t, time.Now())
	out := make([]map[string]any, len(t.rows))
	for i, r := range t.rows {
		out[i] = copyValue(r).(map[string]any)
	}
	return out
}

func copyValue(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[k] = copyValue(e)
		}
		return m
	case []any:
		l := make([]any, len(v))
		for i, e := range v {
			l[i] = copyValue(e)
		}
		return l
	case []byte:
		return append([]byte(nil), v...)
	default:
		return v
	}
}

// newEtagLocked returns a fresh opaque etag; s.mu must be held.
func (s *Server) newEtagLocked() string {
	s.nextID++
	return fmt.Sprintf("bqfake-%d-%d", time.Now().UnixNano(), s.nextID)
}
