package bqfake

// RESTHeld returns how many REST responses SetRESTLatency holds right now.
func (s *Server) RESTHeld() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restHeld
}
