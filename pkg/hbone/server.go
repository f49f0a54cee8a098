package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// Port is the HBONE listener port.
const Port = 15008

// Tuning of the server side. The numbers favour throughput of a few busy
// tunnels on a connection while bounding memory: a connection buffers at most
// serverConnWindow bytes that handlers have not read yet.
const (
	// DefaultMaxConcurrentStreams is the SETTINGS_MAX_CONCURRENT_STREAMS a
	// Server advertises unless configured.
	DefaultMaxConcurrentStreams = 1000

	// DefaultIdleTimeout closes a server connection without streams.
	DefaultIdleTimeout = 10 * time.Minute

	// DefaultHandshakeTimeout bounds the TLS handshake of an accepted conn.
	DefaultHandshakeTimeout = 10 * time.Second

	// serverStreamWindow (SETTINGS_INITIAL_WINDOW_SIZE) is how many bytes a
	// client may send on one stream before the handler reads them: 2 MiB
	// covers the bandwidth-delay product of a 10 Gbit/s, 1.6 ms path, and
	// bounds what a bulk stream whose reader lags keeps buffered, most of
	// ztunnel's heap during a bulk transfer.
	serverStreamWindow = 2 << 20
	// serverConnWindow is the connection-level receive window, shared by
	// all streams: 16 MiB, i.e. eight streams at full window.
	serverConnWindow = 16 << 20
	// serverMaxFrameSize (SETTINGS_MAX_FRAME_SIZE) is the largest DATA frame
	// the server accepts: 256 KiB frames cut per-frame work (header, flow
	// control, wake-ups) 16-fold compared with the 16 KiB default.
	serverMaxFrameSize = 256 << 10
	// maxHeaderListSize (SETTINGS_MAX_HEADER_LIST_SIZE) bounds a request's
	// decoded headers; HBONE requests carry a handful of short headers.
	maxHeaderListSize = 16 << 10
	// writeBufferSize is the buffered writer in front of the TLS conn; a
	// flush writes up to four full TLS records at once.
	writeBufferSize = 64 << 10
	// maxRejectBody bounds the body of a Reject.
	maxRejectBody = 1 << 10
)

// ErrServerClosed is returned by Serve and ServeConn after Shutdown or Close.
var ErrServerClosed = errors.New("hbone: server closed")

// Server accepts HBONE connections. Its zero value needs only TLSConfig (or
// connections that are already *tls.Conn); set the fields before the first
// Serve and do not change them afterwards.
type Server struct {
	// Handler serves each valid CONNECT stream in its own goroutine. It
	// must answer with Stream.Accept or Stream.Reject; a stream not answered
	// when Handler returns is rejected with 503, and an accepted stream is
	// closed (Stream.Close). If nil, every stream is served by a zero
	// Forwarder: no policy, dial the authority.
	Handler func(*Stream)

	// TLSConfig is used to wrap each accepted connection with tls.Server;
	// use identity.ServerConfig. If nil, connections passed to ServeConn
	// (or returned by Serve's listener) must be *tls.Conn already. Either
	// way the handshake must negotiate ALPN "h2" and TLS 1.3.
	TLSConfig *tls.Config

	// MaxConcurrentStreams is advertised to clients and enforced: a stream
	// counts from its HEADERS until it is closed in both directions and its
	// Handler has returned. Zero means DefaultMaxConcurrentStreams.
	MaxConcurrentStreams uint32

	// IdleTimeout closes a connection that has had no stream for this long
	// (with GOAWAY). Zero means DefaultIdleTimeout; negative means never.
	IdleTimeout time.Duration

	// HandshakeTimeout bounds the TLS handshake and the client's HTTP/2
	// preface. Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration

	// Logger receives connection-level events at debug level (handshake and
	// protocol errors). Nil means slog.Default().
	Logger *slog.Logger

	mu         sync.Mutex
	listeners  map[*net.Listener]struct{}
	conns      map[*serverConn]struct{}
	shutdown   bool
	connWG     sync.WaitGroup // serve loops of connections
	handlersWG sync.WaitGroup // Handler goroutines
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) maxStreams() uint32 {
	if s.MaxConcurrentStreams == 0 {
		return DefaultMaxConcurrentStreams
	}
	return s.MaxConcurrentStreams
}

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout == 0 {
		return DefaultIdleTimeout
	}
	return s.IdleTimeout
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout <= 0 {
		return DefaultHandshakeTimeout
	}
	return s.HandshakeTimeout
}

// Serve accepts connections on l and serves each in its own goroutine until
// l fails or the server is shut down; it then closes l and returns
// ErrServerClosed (after Shutdown or Close) or the Accept error.
func (s *Server) Serve(l net.Listener) error {
	if !s.trackListener(&l, true) {
		l.Close()
		return ErrServerClosed
	}
	defer s.trackListener(&l, false)
	defer l.Close()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.closing() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		if !s.addConnWG() {
			c.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.connWG.Done()
			_ = s.serve(context.Background(), c)
		}()
	}
}

// ServeConn serves one connection in the calling goroutine: the TLS
// handshake (unless c is a *tls.Conn that completed it), then HTTP/2 until
// the connection ends. It closes c before returning. The connection's
// streams are cancelled when ctx is.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	if !s.addConnWG() {
		c.Close()
		return ErrServerClosed
	}
	defer s.connWG.Done()
	return s.serve(ctx, c)
}

func (s *Server) serve(ctx context.Context, c net.Conn) error {
	if s.closing() {
		c.Close()
		return ErrServerClosed
	}
	tc, peer, cert, err := s.handshake(ctx, c)
	if err != nil {
		c.Close()
		s.logger().Debug("hbone: handshake failed", "remote", c.RemoteAddr().String(), "error", err.Error())
		return err
	}
	return s.serveHTTP2(ctx, tc, peer, cert)
}

// serveHTTP2 serves HTTP/2 on a connection whose peer is authenticated:
// peer is its identity, cert the certificate that proved it.
func (s *Server) serveHTTP2(ctx context.Context, c net.Conn, peer identity.SPIFFEID, cert *x509.Certificate) error {
	sc := newServerConn(ctx, s, c, peer)
	sc.peerCert = cert
	if !s.trackConn(sc, true) {
		c.Close()
		return ErrServerClosed
	}
	defer s.trackConn(sc, false)
	return sc.serve()
}

func (s *Server) handshake(ctx context.Context, c net.Conn) (net.Conn, identity.SPIFFEID, *x509.Certificate, error) {
	type handshaker interface {
		net.Conn
		HandshakeContext(context.Context) error
		ConnectionState() tls.ConnectionState
	}
	var tc handshaker
	if already, ok := c.(*tls.Conn); ok {
		tc = already
	} else if s.TLSConfig != nil {
		tc = tlsServer(c, s.TLSConfig)
	} else {
		return nil, identity.SPIFFEID{}, nil, errors.New("hbone: no TLSConfig and the connection is not TLS")
	}
	hctx, cancel := context.WithTimeout(ctx, s.handshakeTimeout())
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, identity.SPIFFEID{}, nil, err
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != identity.ALPNHBONE {
		return nil, identity.SPIFFEID{}, nil, fmt.Errorf("hbone: ALPN %q, want %q", cs.NegotiatedProtocol, identity.ALPNHBONE)
	}
	if cs.Version != tls.VersionTLS13 {
		return nil, identity.SPIFFEID{}, nil, fmt.Errorf("hbone: TLS version %#x, want TLS 1.3", cs.Version)
	}
	peer, err := identity.PeerID(cs)
	if err != nil {
		return nil, identity.SPIFFEID{}, nil, err
	}
	return tc, peer, cs.PeerCertificates[0], nil
}

// addConnWG counts a connection goroutine unless the server is shutting
// down; holding mu orders every Add before the Wait in Close.
func (s *Server) addConnWG() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	s.connWG.Add(1)
	return true
}

func (s *Server) closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

func (s *Server) trackListener(l *net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.shutdown {
			return false
		}
		if s.listeners == nil {
			s.listeners = make(map[*net.Listener]struct{})
		}
		s.listeners[l] = struct{}{}
	} else {
		delete(s.listeners, l)
	}
	return true
}

func (s *Server) trackConn(sc *serverConn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.shutdown {
			return false
		}
		if s.conns == nil {
			s.conns = make(map[*serverConn]struct{})
		}
		s.conns[sc] = struct{}{}
	} else {
		delete(s.conns, sc)
	}
	return true
}

// beginShutdown stops accepting and returns the open connections.
func (s *Server) beginShutdown() []*serverConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutdown = true
	for l := range s.listeners {
		(*l).Close()
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	return conns
}

// Shutdown stops the listeners, sends GOAWAY on every connection so that
// clients open no new streams, and waits until the streams already open have
// ended and their Handlers returned, or ctx is done. On ctx expiry it closes
// everything (as Close does) and returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	for _, sc := range s.beginShutdown() {
		sc.goAway()
	}
	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		s.handlersWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		_ = s.Close()
		return ctx.Err()
	}
}

// Close closes the listeners and every connection at once, which aborts all
// streams (Handlers see their Stream fail and its Context cancelled). It waits
// for the connections' goroutines, not for Handlers to return; Shutdown does.
func (s *Server) Close() error {
	for _, sc := range s.beginShutdown() {
		sc.close(ErrServerClosed)
	}
	s.connWG.Wait()
	return nil
}
