package bqfake

import (
	"time"

	"google.golang.org/grpc/codes"
)

// Connections returns how many AppendRows connections are open now and the
// most that were open at once since the server started (or since
// ResetConnectionPeak): what BigQuery's concurrent connections quota
// counts.
func (s *Server) Connections() (open, peak int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connsOpen, s.connsPeak
}

// ResetConnectionPeak sets the peak that Connections reports to the
// connections open now.
func (s *Server) ResetConnectionPeak() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connsPeak = s.connsOpen
}

// WriterSchemas returns how many AppendRows requests carried a
// writer_schema: a client that multiplexes sends one when it switches a
// connection to a table, or changes a table's schema on it.
func (s *Server) WriterSchemas() int64 { return s.writerSchemas.Load() }

// RequestsWithoutStream returns how many AppendRows requests left
// write_stream empty, relying on the connection's earlier requests. BigQuery
// takes them; goccy's bigquery-emulator v0.6.6 appends them to whichever
// stream it knows comes first, another table's included.
func (s *Server) RequestsWithoutStream() int64 { return s.unnamed.Load() }

// FailTable makes every append to the table's default stream fail with
// code, as FailAppends does (codes that end the connection end it), until
// called again with codes.OK. Appends to other tables on the same
// connection are processed as usual, in their order.
func (s *Server) FailTable(project, dataset, table string, code codes.Code) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := tableKey{project, dataset, table}.parent() + "/streams/_default"
	if code == codes.OK {
		delete(s.faults.tableCodes, name)
		return
	}
	if s.faults.tableCodes == nil {
		s.faults.tableCodes = make(map[string]codes.Code)
	}
	s.faults.tableCodes[name] = code
}

// SetConnectionRate caps each AppendRows connection at n rows acknowledged
// per second, as BigQuery bounds a connection's throughput (Google says at
// least 1 MB/s each, more depending on load): a connection's requests are
// processed in order, and each waits for its share of the connection's own
// timeline (rows/n seconds) before it is processed. Unlike SetRowRate,
// more connections take more rows. n <= 0 (the default) removes the cap.
func (s *Server) SetConnectionRate(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.connRowRate = max(n, 0)
}

// connRateWait reserves rows on a connection's timeline next (SetConnectionRate)
// and returns how long their request must wait: 0 without a cap.
func (s *Server) connRateWait(next *time.Time, rows int) time.Duration {
	s.mu.Lock()
	rate := s.faults.connRowRate
	s.mu.Unlock()
	if rate <= 0 {
		return 0
	}
	now := time.Now()
	start := now
	if next.After(now) {
		start = *next
	}
	*next = start.Add(time.Duration(rows) * time.Second / time.Duration(rate))
	return next.Sub(now)
}

func (s *Server) connOpened() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connsOpen++
	s.connsPeak = max(s.connsPeak, s.connsOpen)
}

func (s *Server) connClosed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connsOpen--
}
