package hbone

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

var (
	// ErrNotAccepted is returned by Stream.Write and CloseWrite before Accept.
	ErrNotAccepted = errors.New("hbone: stream not accepted")
	// ErrAnswered is returned by Accept or Reject on a stream already answered.
	ErrAnswered = errors.New("hbone: stream already answered")
	// ErrWriteClosed is returned by Write after CloseWrite.
	ErrWriteClosed = errors.New("hbone: write after CloseWrite")
	errRejected    = errors.New("hbone: stream rejected")
)

// StreamResetError reports that a tunnel stream was reset (RST_STREAM).
type StreamResetError struct {
	Code   uint32 // HTTP/2 error code
	Remote bool   // sent by the peer
}

func (e *StreamResetError) Error() string {
	who := "locally"
	if e.Remote {
		who = "by peer"
	}
	return fmt.Sprintf("hbone: stream reset %s: %v", who, http2.ErrCode(e.Code))
}

// Stream is the server side of one HBONE tunnel, handed to a Handler. It is
// a net.Conn once accepted: Read returns the client's bytes and io.EOF after
// the client's half-close; Write sends to the client; CloseWrite half-closes
// towards the client (END_STREAM) while reading goes on; Close ends both
// directions (RST_STREAM when either is still open). Deadlines are
// supported. Read, Write and Close may be called from different goroutines.
type Stream struct {
	sc        *serverConn
	id        uint32
	authority netip.AddrPort
	header    http.Header
	ctx       context.Context
	cancel    context.CancelFunc

	rmu     sync.Mutex    // serialises Read
	wmu     sync.Mutex    // serialises Write, CloseWrite, Accept, Reject
	readCh  chan struct{} // buffered(1): data, END_STREAM or reset arrived
	abortCh chan struct{} // closed when reset
	rd, wd  deadline

	// Guarded by sc.mu.
	recv         recvBuffer
	inflow       inflow // the stream's receive window
	sendWindow   int64
	answered     int // 0, http.StatusOK or the rejection status
	remoteClosed bool
	localClosed  bool
	reset        bool
	err          error // what Read/Write return once reset
	removed      bool  // out of sc.streams
	handlerDone  bool
	uncounted    bool // no longer counted in sc.live
	closeCalled  bool
	// sink is where the stream's reader copies the bytes it reads (set by
	// Join): while that reader waits in Read with nothing buffered
	// (sinkWaiting), the read loop writes new DATA to sink itself.
	sink        *rawWriter
	sinkWaiting bool
}

func newStream(sc *serverConn, id uint32, authority netip.AddrPort, header http.Header) *Stream {
	ctx, cancel := context.WithCancel(sc.ctx)
	return &Stream{
		sc: sc, id: id, authority: authority, header: header, ctx: ctx, cancel: cancel,
		readCh: make(chan struct{}, 1), abortCh: make(chan struct{}),
		rd: makeDeadline(), wd: makeDeadline(),
		inflow: inflow{window: serverStreamWindow},
	}
}

// Context is cancelled when the stream is closed in both directions or
// reset, or its connection ends.
func (st *Stream) Context() context.Context { return st.ctx }

// Peer is the client's SPIFFE ID, verified in the TLS handshake.
func (st *Stream) Peer() identity.SPIFFEID { return st.sc.peer }

// PeerCertificate returns the leaf certificate the peer proved its identity
// with (shared by the connection's streams; do not modify it).
func (st *Stream) PeerCertificate() *x509.Certificate { return st.sc.peerCert }

// Authority is the destination the client asked for (:authority).
func (st *Stream) Authority() netip.AddrPort { return st.authority }

// Header holds the request's regular headers (traceparent, baggage,
// forwarded, ...), with canonical keys. Do not modify it.
func (st *Stream) Header() http.Header { return st.header }

// ID is the HTTP/2 stream ID, for logs.
func (st *Stream) ID() uint32 { return st.id }

// LocalAddr is the tunnel's destination, the Authority.
func (st *Stream) LocalAddr() net.Addr { return net.TCPAddrFromAddrPort(st.authority) }

// RemoteAddr is the address of the HBONE client connection.
func (st *Stream) RemoteAddr() net.Addr { return st.sc.conn.RemoteAddr() }

// SetDeadline sets the read and write deadlines.
func (st *Stream) SetDeadline(t time.Time) error {
	st.rd.set(t)
	st.wd.set(t)
	return nil
}

// SetReadDeadline sets the deadline for Read.
func (st *Stream) SetReadDeadline(t time.Time) error { st.rd.set(t); return nil }

// SetWriteDeadline sets the deadline for Write (waiting for flow control).
func (st *Stream) SetWriteDeadline(t time.Time) error { st.wd.set(t); return nil }

// Accept answers 200: the tunnel is open.
func (st *Stream) Accept() error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	sc := st.sc
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	sc.mu.Lock()
	if st.answered != 0 {
		sc.mu.Unlock()
		return ErrAnswered
	}
	if st.reset {
		err := st.err
		sc.mu.Unlock()
		return err
	}
	st.answered = http.StatusOK
	sc.mu.Unlock()
	return sc.writeLocked(func(*http2.Framer) error {
		return sc.writeResponseHeadersLocked(st.id, http.StatusOK, false)
	})
}

// Reject answers code (4xx or 5xx; anything else is sent as 500) with reason
// as a short text body, and ends the stream. By convention: 401 or 403 for
// policy, 503 when the destination is unreachable.
func (st *Stream) Reject(code int, reason string) error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	if code < 400 || code > 599 {
		code = http.StatusInternalServerError
	}
	body := []byte(truncate(reason, maxRejectBody))
	if len(body) > 0 {
		body = append(body, '\n')
	}
	sc := st.sc
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	sc.mu.Lock()
	if st.answered != 0 {
		sc.mu.Unlock()
		return ErrAnswered
	}
	if st.reset {
		err := st.err
		sc.mu.Unlock()
		return err
	}
	st.answered = code
	if int64(len(body)) > min(st.sendWindow, sc.sendWindow) {
		body = nil // no flow-control credit for the body; the status suffices
	} else {
		st.sendWindow -= int64(len(body))
		sc.sendWindow -= int64(len(body))
	}
	remoteOpen := !st.remoteClosed
	st.localClosed = true
	sc.abortStreamLocked(st, errRejected)
	sc.mu.Unlock()
	return sc.writeLocked(func(fr *http2.Framer) error {
		if err := sc.writeResponseHeadersLocked(st.id, code, len(body) == 0); err != nil {
			return err
		}
		if len(body) > 0 {
			if err := fr.WriteData(st.id, true, body); err != nil {
				return err
			}
		}
		if remoteOpen {
			// Ask the client to stop sending, without error (RFC 9113 8.1).
			return fr.WriteRSTStream(st.id, http2.ErrCodeNo)
		}
		return nil
	})
}

// Read reads the client's bytes. It returns io.EOF after the client's
// half-close, a *StreamResetError after a reset, and os.ErrDeadlineExceeded
// when the read deadline passes.
func (st *Stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	st.rmu.Lock()
	defer st.rmu.Unlock()
	sc := st.sc
	for {
		sc.mu.Lock()
		if st.reset {
			err := st.err
			sc.mu.Unlock()
			return 0, err
		}
		if st.recv.Len() > 0 {
			n := st.recv.Read(p)
			threshold := int64(streamUpdateThreshold)
			if st.remoteClosed {
				threshold = math.MaxInt64 // no more DATA will come
			}
			streamIncr := st.inflow.consume(int64(n), threshold)
			connIncr := sc.inflow.consume(int64(n), connUpdateThreshold)
			sc.mu.Unlock()
			if streamIncr > 0 || connIncr > 0 {
				_ = sc.writeFrames(func(fr *http2.Framer) error { return writeWindowUpdates(fr, st.id, streamIncr, connIncr) })
			}
			return n, nil
		}
		if st.remoteClosed {
			sc.mu.Unlock()
			return 0, io.EOF
		}
		st.sinkWaiting = st.sink != nil
		sc.mu.Unlock()
		var err error
		select {
		case <-st.readCh:
		case <-st.abortCh:
		case <-st.rd.wait():
			err = os.ErrDeadlineExceeded
		}
		if st.sink != nil {
			sc.mu.Lock()
			st.sinkWaiting = false
			sc.mu.Unlock()
		}
		if err != nil {
			return 0, err
		}
	}
}

// setSink declares that the bytes Read returns are written to w, and that
// nothing else writes to w meanwhile; nil ends that.
func (st *Stream) setSink(w *rawWriter) {
	st.rmu.Lock()
	defer st.rmu.Unlock()
	st.sc.mu.Lock()
	st.sink = w
	st.sc.mu.Unlock()
}

func (st *Stream) wakeReader() {
	select {
	case st.readCh <- struct{}{}:
	default:
	}
}

// Write sends p to the client; it blocks while HTTP/2 flow control allows no
// more. It fails with ErrNotAccepted before Accept.
func (st *Stream) Write(p []byte) (int, error) {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	n := 0
	for len(p) > 0 {
		k, err := st.reserve(len(p))
		if err != nil {
			return n, err
		}
		if err := st.writeData(p[:k], false); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// reserve waits until flow control allows sending up to want bytes, takes
// them from the windows and returns how many.
func (st *Stream) reserve(want int) (int, error) {
	sc := st.sc
	for {
		sc.mu.Lock()
		if err := st.writableLocked(); err != nil {
			sc.mu.Unlock()
			return 0, err
		}
		avail := min(int64(want), st.sendWindow, sc.sendWindow, int64(sc.peerMaxFrame))
		if avail > 0 {
			st.sendWindow -= avail
			sc.sendWindow -= avail
			sc.mu.Unlock()
			return int(avail), nil
		}
		if sc.flowCh == nil {
			sc.flowCh = make(chan struct{})
		}
		ch := sc.flowCh
		sc.mu.Unlock()
		select {
		case <-ch:
		case <-st.abortCh:
		case <-st.wd.wait():
			return 0, os.ErrDeadlineExceeded
		}
	}
}

func (st *Stream) writableLocked() error {
	switch {
	case st.reset:
		return st.err
	case st.answered == 0:
		return ErrNotAccepted
	case st.localClosed:
		return ErrWriteClosed
	}
	return nil
}

// writeData writes one DATA frame whose size flow control has granted.
func (st *Stream) writeData(p []byte, endStream bool) error {
	sc := st.sc
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	sc.mu.Lock()
	if err := st.writableLocked(); err != nil {
		sc.mu.Unlock()
		return err
	}
	if endStream {
		st.localClosed = true
		sc.maybeFinishLocked(st)
	}
	sc.mu.Unlock()
	return sc.writeLocked(func(*http2.Framer) error { return sc.writeDataLocked(st.id, endStream, p) })
}

// CloseWrite half-closes the tunnel towards the client (END_STREAM); the
// client reads EOF and may go on sending.
func (st *Stream) CloseWrite() error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	sc := st.sc
	sc.mu.Lock()
	done := st.localClosed && !st.reset
	sc.mu.Unlock()
	if done {
		return nil
	}
	return st.writeData(nil, true)
}

// Close ends the stream like closing a TCP socket: if the client's
// direction is still open, it ends it gracefully (END_STREAM after the bytes
// written) unless a Write is blocked, then, if the client is still sending,
// sends RST_STREAM NO_ERROR, which asks it to stop (RFC 9113 section 8.1).
// An unanswered stream is rejected with 503. Pending and later Reads and
// Writes fail with net.ErrClosed.
func (st *Stream) Close() error {
	sc := st.sc
	sc.mu.Lock()
	if st.closeCalled {
		sc.mu.Unlock()
		return nil
	}
	st.closeCalled = true
	unanswered := st.answered == 0 && !st.reset
	sc.mu.Unlock()
	defer st.rd.stop()
	defer st.wd.stop()
	if unanswered {
		err := st.Reject(http.StatusServiceUnavailable, "no response from handler")
		if !errors.Is(err, ErrAnswered) {
			return nil
		}
		// Answered concurrently: close the stream as usual.
	}
	code := http2.ErrCodeNo
	if st.wmu.TryLock() {
		sc.mu.Lock()
		localOpen := !st.localClosed && !st.reset
		sc.mu.Unlock()
		if localOpen {
			_ = st.writeData(nil, true)
		}
		st.wmu.Unlock()
	} else {
		code = http2.ErrCodeCancel // a Write is in progress: abort it
	}
	return st.resetWith(code, net.ErrClosed)
}

// Reset aborts the stream in both directions with RST_STREAM CANCEL, unless
// it has already ended both ways. Pending and later Reads and Writes fail.
func (st *Stream) Reset() error {
	sc := st.sc
	sc.mu.Lock()
	st.closeCalled = true
	sc.mu.Unlock()
	return st.resetWith(http2.ErrCodeCancel, net.ErrClosed)
}

// resetWith sends RST_STREAM code unless the stream has ended both ways,
// and fails pending operations with err.
func (st *Stream) resetWith(code http2.ErrCode, err error) error {
	sc := st.sc
	sc.mu.Lock()
	if st.reset {
		sc.mu.Unlock()
		return nil
	}
	if st.localClosed && st.remoteClosed {
		sc.abortStreamLocked(st, err)
		sc.mu.Unlock()
		return nil
	}
	sc.mu.Unlock()
	return sc.resetStream(st, code, err)
}

// handlerReturned closes the stream and lets it stop counting against the
// connection's stream limit.
func (st *Stream) handlerReturned() {
	_ = st.Close()
	sc := st.sc
	sc.mu.Lock()
	st.handlerDone = true
	sc.maybeFinishLocked(st)
	sc.mu.Unlock()
	_ = sc.flushConnCredit(false)
}
