package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// closeLinger bounds how long Conn.Close waits for bytes already written to
// be sent (flow control) before it resets the stream.
const closeLinger = time.Second

// Conn is the client side of one HBONE tunnel, a net.Conn: Write sends to
// the destination, Read returns its bytes and io.EOF once it half-closed,
// CloseWrite half-closes towards it (END_STREAM) while reading goes on.
type Conn struct {
	cc      *clientConn
	pw      *io.PipeWriter
	reqBody *requestBody
	resp    *http.Response
	cancel  context.CancelFunc
	remote  net.Addr

	mu            sync.Mutex
	closed        bool
	deadlineHit   bool
	readTimer     *time.Timer
	writeTimer    *time.Timer
	closeOnce     sync.Once
	closeWriteErr error
}

func newConn(cc *clientConn, r Request, resp *http.Response, pw *io.PipeWriter, body *requestBody, cancel context.CancelFunc) *Conn {
	return &Conn{
		cc: cc, pw: pw, reqBody: body, resp: resp, cancel: cancel,
		remote: net.TCPAddrFromAddrPort(r.Authority),
	}
}

// Peer is the server's SPIFFE ID, verified in the TLS handshake.
func (c *Conn) Peer() identity.SPIFFEID { return c.cc.peer }

// ResponseHeader is the header of the server's 200 answer.
func (c *Conn) ResponseHeader() http.Header { return c.resp.Header }

// LocalAddr is the local address of the HBONE connection carrying the tunnel.
func (c *Conn) LocalAddr() net.Addr { return c.cc.local }

// RemoteAddr is the tunnel's destination, the Request's Authority.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// Read reads the destination's bytes; io.EOF means it half-closed.
func (c *Conn) Read(p []byte) (int, error) {
	n, err := c.resp.Body.Read(p)
	if err != nil && err != io.EOF {
		err = c.mapErr(err)
	}
	return n, err
}

// Write sends p through the tunnel. It returns once the HTTP/2 client has
// taken all of p, which may wait for flow control.
func (c *Conn) Write(p []byte) (int, error) {
	n, err := c.pw.Write(p)
	if err != nil {
		if errors.Is(err, io.ErrClosedPipe) {
			c.mu.Lock()
			cw := c.closeWriteErr != nil
			c.mu.Unlock()
			if cw {
				return n, ErrWriteClosed
			}
		}
		err = c.mapErr(err)
	}
	return n, err
}

func (c *Conn) mapErr(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.deadlineHit {
		return os.ErrDeadlineExceeded
	}
	if c.closed {
		return net.ErrClosed
	}
	return err
}

// CloseWrite half-closes the tunnel: the destination reads EOF once the
// bytes written so far have arrived; Read goes on.
func (c *Conn) CloseWrite() error {
	c.mu.Lock()
	if c.closeWriteErr == nil {
		c.closeWriteErr = ErrWriteClosed
	}
	c.mu.Unlock()
	return c.pw.Close()
}

// Close ends the tunnel. It first ends the upstream direction gracefully
// (END_STREAM after the bytes already written, waiting at most one second
// for flow control), then resets the stream if the destination's direction
// is still open. The pooled HTTP/2 connection stays open.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.stopTimersLocked()
		c.mu.Unlock()
		_ = c.pw.Close()
		t := time.NewTimer(closeLinger)
		select {
		case <-c.reqBody.done:
		case <-t.C:
		}
		t.Stop()
		c.resp.Body.Close()
		c.cancel()
	})
	return nil
}

// abort resets the stream at once.
func (c *Conn) abort(err error) {
	c.pw.CloseWithError(err)
	c.resp.Body.Close()
	c.cancel()
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
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readTimer = c.setTimerLocked(c.readTimer, t)
	return nil
}

// SetWriteDeadline sets a deadline for Write, with SetReadDeadline's rules.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writeTimer = c.setTimerLocked(c.writeTimer, t)
	return nil
}

func (c *Conn) setTimerLocked(old *time.Timer, t time.Time) *time.Timer {
	if old != nil {
		old.Stop()
	}
	if t.IsZero() || c.closed {
		return nil
	}
	return time.AfterFunc(time.Until(t), c.deadlinePassed)
}

func (c *Conn) deadlinePassed() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.deadlineHit = true
	c.mu.Unlock()
	c.abort(os.ErrDeadlineExceeded)
}

func (c *Conn) stopTimersLocked() {
	if c.readTimer != nil {
		c.readTimer.Stop()
	}
	if c.writeTimer != nil {
		c.writeTimer.Stop()
	}
}
