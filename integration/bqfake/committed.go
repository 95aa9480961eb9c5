package bqfake

import (
	"strings"
)

// Switches for exactly-once tests: what BigQuery may do to an explicit
// stream behind a writer's back, and answers lost on the way back.

// LoseStream makes an explicit stream disappear, as BigQuery garbage-collects
// an idle stream: GetWriteStream, FinalizeWriteStream and appends to it
// answer NOT_FOUND (StorageError STREAM_NOT_FOUND) from then on, including
// on connections that already use it. The rows it wrote stay in the table.
// WriteStreams still lists it. Unknown names are ignored.
func (s *Server) LoseStream(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams, name)
}

// FinalizeStream finalizes an explicit stream as FinalizeWriteStream does:
// later appends fail with INVALID_ARGUMENT and the StorageError
// STREAM_FINALIZED; its rows stay. Unknown names are ignored.
func (s *Server) FinalizeStream(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ws, ok := s.streams[name]; ok {
		ws.finalized = true
	}
}

// WriteStreams returns the names of the explicit streams CreateWriteStream
// created for the table (of any type, lost ones included), in creation
// order. Tests use it to bound how many streams a writer creates.
func (s *Server) WriteStreams(project, dataset, table string) []string {
	prefix := tableKey{project, dataset, table}.parent() + "/streams/"
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, name := range s.created {
		if strings.HasPrefix(name, prefix) {
			out = append(out, name)
		}
	}
	return out
}

// StreamLength returns how many rows an explicit stream holds, i.e. the
// offset its next append must name, and whether the stream exists (false
// once lost or for the default stream).
func (s *Server) StreamLength(name string) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ws, ok := s.streams[name]
	if !ok {
		return 0, false
	}
	return ws.appended, true
}

// StreamFinalized reports whether an explicit stream exists and is
// finalized.
func (s *Server) StreamFinalized(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ws, ok := s.streams[name]
	return ok && ws.finalized
}

// LoseAnswers makes the next n AppendRows requests (counted across all
// connections, in processing order, after any FailAppends count) be
// processed as usual — rows written, offsets advanced, errors decided — and
// then, instead of answering, end their AppendRows connection with
// UNAVAILABLE, as when the connection breaks after BigQuery did the work.
// Requests pipelined behind such a request on that connection are not
// processed. n <= 0 cancels pending losses.
func (s *Server) LoseAnswers(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.loseLeft = max(n, 0)
}

// AnswersLost is how many requests LoseAnswers has processed without
// answering so far.
func (s *Server) AnswersLost() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults.answersLost
}

// RejectRows makes AppendRows reject every row for which pred returns true
// as BigQuery rejects invalid rows: the request fails with INVALID_ARGUMENT
// and row_errors (FIELDS_ERROR) naming the rejected rows, and none of its rows
// is written. pred sees each decoded row of every request (default and
// explicit streams, but not in bench mode, where rows are not decoded), in
// the form Rows returns, once per request that carries it; it must not
// modify the row, and it is called without the server's lock held and
// possibly from several connections at once. nil clears it.
//
// Row validation, and so RejectRows, comes before the offset check: a
// request whose offset is already written still fails with row_errors if a
// row is rejected (see the package doc).
func (s *Server) RejectRows(pred func(row map[string]any) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.rejectRows = pred
}

// OffsetConflicts counts the appends refused for their offset so far:
// ALREADY_EXISTS (the offset was written before) and OUT_OF_RANGE (past the
// stream's end).
func (s *Server) OffsetConflicts() (alreadyExists, outOfRange int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults.alreadyExists, s.faults.outOfRange
}
