package bqfake

import (
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
