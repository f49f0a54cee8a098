package hbone

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// DefaultUpstreamDialTimeout bounds a Forwarder's dial unless configured.
const DefaultUpstreamDialTimeout = 5 * time.Second

// Join copies through a small buffer until a read fills it, then through a
// large one until reads get small again: a connection that carries requests
// and responses (or waits) holds smallCopyBufferSize per direction, a bulk
// transfer gets copyBufferSize, large enough that a tunnel write fills a 256
// KiB DATA frame.
const (
	smallCopyBufferSize = 16 << 10
	copyBufferSize      = 256 << 10
	// shrinkBelow: a read shorter than this on the large buffer goes back
	// to the small one.
	shrinkBelow = 4 << 10
)

var (
	smallCopyBuffers = sync.Pool{New: func() any { b := make([]byte, smallCopyBufferSize); return &b }}
	copyBuffers      = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}
	errInvalidWrite  = errors.New("hbone: invalid write result")
)

// Forwarder is a Handler that connects a Stream to its Authority over TCP:
// it dials, answers 200 (or 503 if the dial fails) and copies bytes both
// ways, propagating half-close, until both directions end. It applies no
// policy; wrap ServeStream to Reject streams first.
type Forwarder struct {
	// DialContext dials the upstream ("tcp", Authority().String()). Nil
	// means a net.Dialer with Timeout DialTimeout.
	DialContext func(ctx context.Context, network, address string) (net.Conn, error)

	// DialTimeout bounds the dial. Zero means DefaultUpstreamDialTimeout.
	DialTimeout time.Duration

	// Logger receives a debug event per failed dial. Nil means slog.Default().
	Logger *slog.Logger
}

// ServeStream implements a Server Handler.
func (f *Forwarder) ServeStream(s *Stream) {
	timeout := f.DialTimeout
	if timeout <= 0 {
		timeout = DefaultUpstreamDialTimeout
	}
	ctx, cancel := context.WithTimeout(s.Context(), timeout)
	dial := f.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	up, err := dial(ctx, "tcp", s.Authority().String())
	cancel()
	if err != nil {
		logger := f.Logger
		if logger == nil {
			logger = slog.Default()
		}
		logger.Debug("hbone: upstream dial failed", "authority", s.Authority().String(), "peer", s.Peer().String(), "error", err.Error())
		_ = s.Reject(http.StatusServiceUnavailable, "upstream unreachable")
		return
	}
	defer up.Close()
	if err := s.Accept(); err != nil {
		return
	}
	toUp, toDown := Join(up, s)
	if toUp != nil || toDown != nil {
		// The upstream TCP connection failed (or the tunnel did): tell the
		// client with CONNECT_ERROR, as RFC 9113 section 8.5 asks.
		_ = s.resetWith(http2.ErrCodeConnect, net.ErrClosed)
	}
}

// halfCloser is a connection that can end its write direction alone.
type halfCloser interface {
	CloseWrite() error
}

// Join copies a to b and b to a until both directions end. When one source
// reaches EOF, the other side's write direction is half-closed (CloseWrite,
// or Close if it has none) and the opposite direction continues. If a copy
// fails, both a and b are closed at once. Join returns the error of each
// direction (nil for a clean EOF): aToB is about reading a or writing b.
// It does not close a or b after a clean finish; callers do.
func Join(a, b net.Conn) (aToB, bToA error) {
	return JoinCounting(a, b, nil, nil)
}

// JoinCounting is Join that reports the bytes it copies: countAToB(n) once
// n more bytes read from a have been written to b, countBToA the other way
// (either may be nil). Counting here rather than in a wrapper around a or b
// keeps the tunnel's direct path: when a or b is a *Stream or a *Conn and
// the other a *net.TCPConn, the tunnel's read loop writes small DATA
// payloads to the TCP connection itself while the copier waits, which a
// wrapper would hide. The functions are called from the copying goroutines
// and from the tunnel connection's read loop: they must be safe for
// concurrent use and must not block.
func JoinCounting(a, b net.Conn, countAToB, countBToA func(int)) (aToB, bToA error) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		bToA = copyHalf(a, b, countBToA)
		if bToA != nil {
			a.Close()
			b.Close()
		}
	}()
	aToB = copyHalf(b, a, countAToB)
	if aToB != nil {
		a.Close()
		b.Close()
	}
	wg.Wait()
	return aToB, bToA
}

// sinkSetter is a tunnel end whose read loop can write to a sink (*Stream,
// *Conn).
type sinkSetter interface {
	setSink(w *rawWriter)
}

// copyHalf copies src to dst, counting, then half-closes dst.
func copyHalf(dst, src net.Conn, count func(int)) error {
	if s, ok := src.(sinkSetter); ok {
		if w := sinkFor(dst, count); w != nil {
			s.setSink(w)
			defer s.setSink(nil)
		}
	}
	var r io.Reader = src
	if rr := newRawReader(src); rr != nil {
		r = rr
	}
	var w io.Writer = dst
	if rw := newRawWriter(dst); rw != nil {
		w = rw
	}
	if err := copyAdaptive(w, r, count); err != nil {
		if errors.Is(err, net.ErrClosed) {
			// An end was closed on this side: by the other direction's
			// failure, or by its owner (a proxy shutting down closes the
			// client connections it tracks). Close both, so that the other
			// direction, possibly waiting to read from the end still open
			// (an idle keep-alive peer sends nothing), ends too.
			_ = src.Close()
			_ = dst.Close()
			return nil
		}
		return err
	}
	if hc, ok := dst.(halfCloser); ok {
		return hc.CloseWrite()
	}
	return dst.Close()
}

// copyAdaptive copies src to dst until EOF, like io.Copy, through a buffer
// sized to the traffic (see smallCopyBufferSize), calling count (if not
// nil) after each write.
func copyAdaptive(dst io.Writer, src io.Reader, count func(int)) error {
	small := smallCopyBuffers.Get().(*[]byte)
	defer smallCopyBuffers.Put(small)
	var large *[]byte
	defer func() {
		if large != nil {
			copyBuffers.Put(large)
		}
	}()
	buf := *small
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			if werr != nil {
				return werr
			}
			if w != n {
				if w < 0 || w > n {
					return errInvalidWrite
				}
				return io.ErrShortWrite
			}
			if count != nil {
				count(n)
			}
			switch {
			case large == nil && n == len(buf):
				large = copyBuffers.Get().(*[]byte)
				buf = *large
			case large != nil && n < shrinkBelow:
				copyBuffers.Put(large)
				large = nil
				buf = *small
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}
