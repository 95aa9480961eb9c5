package bqfake

import (
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RequireStreamLookup makes AppendRows behave as goccy's bigquery-emulator
// v0.6.6 does (true) or not (false, the default): it refuses requests for a
// table's default stream ("…/streams/_default") unless GetWriteStream
// answered for that stream name before. goccy registers the default stream
// server-wide, per stream name, on the first GetWriteStream that finds its
// table, and never forgets it: the lookup may come from any connection or
// client, once, and still counts after the table is deleted. bqfake does
// the same: it records every default stream GetWriteStream answered for
// (whether or not the switch is on), and the switch only enforces it.
//
// A refused request ends its AppendRows connection with UNKNOWN and the
// message "failed to append rows: failed to get stream from <name>", as
// goccy's handler returns a plain error: the request and every request
// pipelined behind it are not written. Explicit streams are not affected
// (CreateWriteStream registers them in goccy too).
func (s *Server) RequireStreamLookup(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.requireLookup = on
}

// lookupRefusal returns the error that ends a connection writing to a
// default stream nobody looked up while RequireStreamLookup is on, or nil.
func (s *Server) lookupRefusal(name string) error {
	if !strings.HasSuffix(name, defaultStreamSuffix) {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.faults.requireLookup || s.lookedUp[name] {
		return nil
	}
	return status.Error(codes.Unknown, "failed to append rows: failed to get stream from "+name)
}
