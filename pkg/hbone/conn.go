package hbone

import (
	"context"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// Conn is the client side of one HBONE tunnel, a net.Conn: Write sends to
// the destination, Read returns its bytes and io.EOF once it half-closed,
// CloseWrite half-closes towards it (END_STREAM) while reading goes on.
// Read, Write and Close may be called from different goroutines.
type Conn struct {
	cc     *clientConn
	id     uint32
	remote net.Addr
	header http.Header // of the 200 answer

	rmu     sync.Mutex    // serialises Read
	wmu     sync.Mutex    // serialises Write and CloseWrite
	readCh  chan struct{} // buffered(1): data, END_STREAM or reset arrived
	abortCh chan struct{} // closed when reset
	respCh  chan struct{} // closed when the response HEADERS arrived
	// answeredCh is closed when respCh or abortCh is (markAnswered).
	answeredCh chan struct{}
	answerOnce sync.Once
	closeCh    chan struct{} // closed by Close: a Write waiting for flow control gives up

	// Guarded by cc.mu.
	status       int // of the final response; 0 before it
	recv         recvBuffer
	inflow       inflow // the stream's receive window
	sendWindow   int64
	remoteClosed bool
	localClosed  bool
	reset        bool
	localAbort   bool  // reset by us: unread bytes were dropped
	retry        bool  // refused before processing: Dial may retry
	err          error // what Read/Write return once reset
	removed      bool  // out of cc.streams
	// sink is where the stream's reader copies the bytes it reads (set by
	// Join): while that reader waits in Read with nothing buffered
	// (sinkWaiting), the read loop writes new DATA to sink itself.
	sink        *rawWriter
	sinkWaiting bool
	// sent and received count the DATA payload bytes of the stream, for
	// clientConn.countLocked.
	sent, received int64

	closed      atomic.Bool
	deadlineHit atomic.Bool
	closeOnce   sync.Once
	tmu         sync.Mutex // guards the timers
	readTimer   *time.Timer
	writeTimer  *time.Timer
}

func newConn(cc *clientConn, r Request) *Conn {
	return &Conn{
		cc:      cc,
		remote:  net.TCPAddrFromAddrPort(r.Authority),
		readCh:  make(chan struct{}, 1),
		abortCh: make(chan struct{}),
		respCh:  make(chan struct{}),
		closeCh: make(chan struct{}),

		answeredCh: make(chan struct{}),
		inflow:     inflow{window: clientStreamWindow},
	}
}

// Peer is the server's SPIFFE ID, verified in the TLS handshake.
func (c *Conn) Peer() identity.SPIFFEID { return c.cc.peer }

// ResponseHeader is the header of the server's 200 answer.
func (c *Conn) ResponseHeader() http.Header { return c.header }

// LocalAddr is the local address of the HBONE connection carrying the tunnel.
func (c *Conn) LocalAddr() net.Addr { return c.cc.local }

// RemoteAddr is the tunnel's destination, the Request's Authority.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// Read reads the destination's bytes; io.EOF means it half-closed.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	cc := c.cc
	for {
		cc.mu.Lock()
		if c.recv.Len() > 0 {
			n := c.recv.Read(p)
			threshold := int64(clientStreamUpdateThreshold)
			if c.remoteClosed || c.reset {
				threshold = math.MaxInt64 // no more DATA will come
			}
			streamIncr := c.inflow.consume(int64(n), threshold)
			connIncr := cc.inflow.consume(int64(n), clientConnUpdateThreshold)
			cc.mu.Unlock()
			if streamIncr > 0 || connIncr > 0 {
				_ = cc.writeFrames(func(fr *http2.Framer) error { return writeWindowUpdates(fr, c.id, streamIncr, connIncr) })
			}
			return n, nil
		}
		if c.remoteClosed && !c.localAbort {
			cc.mu.Unlock()
			return 0, io.EOF
		}
		if c.reset {
			err := c.err
			cc.mu.Unlock()
			return 0, c.mapErr(err)
		}
		c.sinkWaiting = c.sink != nil
		cc.mu.Unlock()
		select {
		case <-c.readCh:
		case <-c.abortCh:
		}
		if c.sink != nil {
			cc.mu.Lock()
			c.sinkWaiting = false
			cc.mu.Unlock()
		}
	}
}

// setSink declares that the bytes Read returns are written to w, and that
// nothing else writes to w meanwhile; nil ends that.
func (c *Conn) setSink(w *rawWriter) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.cc.mu.Lock()
	c.sink = w
	c.cc.mu.Unlock()
}

func (c *Conn) wakeReader() {
	select {
	case c.readCh <- struct{}{}:
	default:
	}
}

// Write sends p through the tunnel. It returns once all of p has been
// written to the connection, which may wait for flow control.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n := 0
	for len(p) > 0 {
		k, maxFrame, err := c.reserve(len(p))
		if err != nil {
			return n, c.mapErr(err)
		}
		if err := c.writeData(p[:k], false, maxFrame); err != nil {
			return n, c.mapErr(err)
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// reserve waits until flow control allows sending up to want bytes, takes
// them from the windows and returns how many, and the peer's frame size.
func (c *Conn) reserve(want int) (int, int, error) {
	cc := c.cc
	for {
		cc.mu.Lock()
		if err := c.writableLocked(); err != nil {
			cc.mu.Unlock()
			return 0, 0, err
		}
		if avail := c.grantLocked(want); avail > 0 {
			maxFrame := cc.peerMaxFrame
			cc.mu.Unlock()
			return int(avail), maxFrame, nil
		}
		if cc.flowCh == nil {
			cc.flowCh = make(chan struct{})
		}
		ch := cc.flowCh
		cc.mu.Unlock()
		select {
		case <-ch:
		case <-c.abortCh:
		case <-c.closeCh:
		}
	}
}

func (c *Conn) writableLocked() error {
	switch {
	case c.closed.Load():
		return net.ErrClosed
	case c.reset:
		return c.err
	case c.localClosed:
		return ErrWriteClosed
	}
	return nil
}

// writeData writes p, whose size flow control has granted, in DATA frames
// of at most maxFrame bytes, and flushes them.
func (c *Conn) writeData(p []byte, endStream bool, maxFrame int) error {
	cc := c.cc
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	cc.mu.Lock()
	if err := c.writableLocked(); err != nil {
		cc.sendWindow += int64(len(p)) // never sent
		cc.mu.Unlock()
		return err
	}
	c.sent += int64(len(p))
	cc.countLocked(c.sent)
	if endStream {
		c.localClosed = true
		cc.maybeFinishLocked(c)
	}
	cc.mu.Unlock()
	return cc.writeLocked(func(*http2.Framer) error {
		for {
			k := min(len(p), maxFrame)
			if err := cc.writeDataLocked(c.id, endStream && k == len(p), p[:k]); err != nil {
				return err
			}
			p = p[k:]
			if len(p) == 0 {
				return nil
			}
		}
	})
}

func (c *Conn) mapErr(err error) error {
	if c.deadlineHit.Load() {
		return os.ErrDeadlineExceeded
	}
	if c.closed.Load() {
		return net.ErrClosed
	}
	return err
}

// CloseWrite half-closes the tunnel: the destination reads EOF once the
// bytes written so far have arrived; Read goes on.
func (c *Conn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	cc := c.cc
	cc.mu.Lock()
	done := c.localClosed && !c.reset
	cc.mu.Unlock()
	if done {
		return nil
	}
	return c.mapErr(c.writeData(nil, true, 0))
}

// Close ends the tunnel: END_STREAM after the bytes already written (a
// Write still waiting for flow control fails with net.ErrClosed), then
// RST_STREAM CANCEL if the destination's direction is still open. Pending
// and later Reads and Writes fail with net.ErrClosed. The pooled HTTP/2
// connection stays open.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.stopTimers()
		close(c.closeCh)
		cc := c.cc
		c.wmu.Lock()
		defer c.wmu.Unlock()
		cc.wmu.Lock()
		defer cc.wmu.Unlock()
		cc.mu.Lock()
		sendEnd := !c.localClosed && !c.reset
		sendReset := !c.remoteClosed && !c.reset
		c.localClosed = true
		cc.abortStreamLocked(c, net.ErrClosed, true)
		cc.mu.Unlock()
		if sendEnd || sendReset {
			_ = cc.writeLocked(func(fr *http2.Framer) error {
				if sendEnd {
					if err := cc.writeDataLocked(c.id, true, nil); err != nil {
						return err
					}
				}
				if sendReset {
					return fr.WriteRSTStream(c.id, http2.ErrCodeCancel)
				}
				return nil
			})
		}
	})
	return nil
}

// grantLocked takes up to want bytes from the stream's and the
// connection's send windows and returns how many; cc.mu is held.
func (c *Conn) grantLocked(want int) int64 {
	n := max(0, min(int64(want), c.sendWindow, c.cc.sendWindow))
	c.sendWindow -= n
	c.cc.sendWindow -= n
	return n
}

// markAnswered closes answeredCh (once).
func (c *Conn) markAnswered() { c.answerOnce.Do(func() { close(c.answeredCh) }) }

// writeNow sends as much of p as flow control allows without waiting.
func (c *Conn) writeNow(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	cc := c.cc
	cc.mu.Lock()
	if err := c.writableLocked(); err != nil {
		cc.mu.Unlock()
		return 0, err
	}
	n := c.grantLocked(len(p))
	maxFrame := cc.peerMaxFrame
	cc.mu.Unlock()
	if n == 0 {
		return 0, nil
	}
	if err := c.writeData(p[:n], false, maxFrame); err != nil {
		return 0, err
	}
	return int(n), nil
}

// abort resets the stream at once (RST_STREAM CANCEL).
func (c *Conn) abort(err error) {
	c.cc.resetStream(c, http2.ErrCodeCancel, err, true)
}

// waitResponse waits for the response HEADERS, a reset or ctx.
func (c *Conn) waitResponse(ctx context.Context) error {
	select {
	case <-c.respCh:
		return nil
	case <-c.abortCh:
		return nil
	case <-ctx.Done():
		err := context.Cause(ctx)
		c.abort(err)
		return err
	}
}

// readStatusBody returns up to maxStatusBody bytes of a rejection's body.
func (c *Conn) readStatusBody(ctx context.Context) []byte {
	cc := c.cc
	buf := make([]byte, 0, maxStatusBody)
	for len(buf) < cap(buf) {
		cc.mu.Lock()
		if c.recv.Len() > 0 {
			n := c.recv.Read(buf[len(buf):cap(buf)])
			c.inflow.unacked += int64(n) // returned to the connection by the abort
			buf = buf[:len(buf)+n]
			cc.mu.Unlock()
			continue
		}
		over := c.remoteClosed || c.reset
		cc.mu.Unlock()
		if over {
			break
		}
		select {
		case <-c.readCh:
		case <-c.abortCh:
		case <-ctx.Done():
			return buf
		}
	}
	return buf
}

// SetDeadline sets both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	c.SetWriteDeadline(t)
	return nil
}

// SetReadDeadline sets a deadline for Read. Unlike a TCP connection's, a
// deadline that passes aborts the tunnel (RST_STREAM); pending and later
// Reads and Writes return os.ErrDeadlineExceeded. The zero time clears it.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.tmu.Lock()
	defer c.tmu.Unlock()
	c.readTimer = c.setTimerLocked(c.readTimer, t)
	return nil
}

// SetWriteDeadline sets a deadline for Write, with SetReadDeadline's rules.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.tmu.Lock()
	defer c.tmu.Unlock()
	c.writeTimer = c.setTimerLocked(c.writeTimer, t)
	return nil
}

func (c *Conn) setTimerLocked(old *time.Timer, t time.Time) *time.Timer {
	if t.IsZero() || c.closed.Load() {
		if old != nil {
			old.Stop()
		}
		return nil
	}
	if old != nil {
		old.Reset(time.Until(t))
		return old
	}
	return time.AfterFunc(time.Until(t), c.deadlinePassed)
}

func (c *Conn) deadlinePassed() {
	if c.closed.Load() {
		return
	}
	c.deadlineHit.Store(true)
	c.abort(os.ErrDeadlineExceeded)
}

func (c *Conn) stopTimers() {
	c.tmu.Lock()
	defer c.tmu.Unlock()
	if c.readTimer != nil {
		c.readTimer.Stop()
	}
	if c.writeTimer != nil {
		c.writeTimer.Stop()
	}
}
