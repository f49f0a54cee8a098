package proxy

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"
)

// connSet tracks the client connections a listener serves, with their
// upstreams when known, so that a close can abort them and a drain can wait
// for them. Pod and SOCKS5 each keep one.
type connSet struct {
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]net.Conn // client -> upstream (nil until known)
}

func newConnSet() connSet { return connSet{conns: map[net.Conn]net.Conn{}} }

// track registers c; false once the set is shut.
func (s *connSet) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = nil
	return true
}

// setUpstream records the upstream of c; false once the set is shut.
func (s *connSet) setUpstream(c, up net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = up
	return true
}

// untrack forgets c.
func (s *connSet) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns != nil {
		delete(s.conns, c)
	}
}

// active counts the tracked connections.
func (s *connSet) active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// isShut reports whether shut was called.
func (s *connSet) isShut() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// shut marks the set closed (track fails from now on) and returns the
// connections it held, with their upstreams; ok is false when it was shut
// already.
func (s *connSet) shut() (conns map[net.Conn]net.Conn, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false
	}
	s.closed = true
	conns, s.conns = s.conns, nil
	return conns, true
}

// waitIdle polls until no connection is tracked or ctx ends, and logs how
// many were left open in that case.
func (s *connSet) waitIdle(ctx context.Context, log *slog.Logger) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for s.active() > 0 && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	if n := s.active(); n > 0 {
		log.Info("drain ended; closing connections", "open", n)
	}
}
