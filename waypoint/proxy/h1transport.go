package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// H1Transport is the HTTP/1.1 RoundTripper of one endpoint. A request
// whose body is absent or in memory (GetBody set, length known), with no
// trailers and no "Expect: 100-continue", goes over the transport's own
// kept-alive connections on the caller's goroutine: the request in one
// write, the response read by the caller. net/http's Transport hands each
// request to a writing and a reading goroutine per connection and back,
// which at a steady rate of small requests cost more than the request
// itself. Other requests go to Fallback.
//
// A connection the endpoint closed while idle shows up only when it is
// used again: a request that got no answer byte on a reused connection is
// sent again on a new one when it is idempotent (GET, HEAD, OPTIONS,
// TRACE, PUT, DELETE or with an Idempotency-Key), or when none of it was
// written; other requests reuse only connections idle for less than
// staleAfter, and get a new one otherwise.
type H1Transport struct {
	// Dial opens a connection to the endpoint. Required.
	Dial func(ctx context.Context) (net.Conn, error)
	// Fallback takes the requests this transport does not. Required.
	Fallback http.RoundTripper
	// MaxIdle is the number of idle connections kept; 0 means 64.
	MaxIdle int
	// IdleTimeout closes connections idle for longer; 0 means 90s.
	IdleTimeout time.Duration

	mu         sync.Mutex
	idle       []*h1Conn // most recently used last
	sweepArmed bool
}

// staleAfter is how long a connection may be idle and still carry a
// request that cannot be sent twice.
const staleAfter = time.Second

type h1Conn struct {
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	nread  int64 // bytes read from c since the request was written
	nwrite int64 // bytes of the request written to c
	idleAt time.Time
}

// Read counts what bufio reads from the connection.
func (pc *h1Conn) Read(p []byte) (int, error) {
	n, err := pc.c.Read(p)
	pc.nread += int64(n)
	return n, err
}

// h1Writer counts what bufio writes to the connection.
type h1Writer struct{ pc *h1Conn }

func (w h1Writer) Write(p []byte) (int, error) {
	n, err := w.pc.c.Write(p)
	w.pc.nwrite += int64(n)
	return n, err
}

func (t *H1Transport) maxIdle() int {
	if t.MaxIdle > 0 {
		return t.MaxIdle
	}
	return 64
}

func (t *H1Transport) idleTimeout() time.Duration {
	if t.IdleTimeout > 0 {
		return t.IdleTimeout
	}
	return 90 * time.Second
}

// direct reports whether r goes over the transport's own connections.
func direct(r *http.Request) bool {
	if r.URL == nil || r.URL.Scheme != "http" || r.Method == http.MethodConnect || len(r.Trailer) > 0 {
		return false
	}
	if r.Body != nil && r.Body != http.NoBody && (r.GetBody == nil || r.ContentLength < 0) {
		return false
	}
	return !expectsContinue(r)
}

// idempotent reports whether r may be sent twice (RFC 9110 section 9.2.2).
func idempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return r.Header.Get("Idempotency-Key") != "" || r.Header.Get("X-Idempotency-Key") != ""
}

// RoundTrip sends r and returns the response; its body must be read to
// the end or closed.
func (t *H1Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !direct(r) {
		return t.Fallback.RoundTrip(r)
	}
	ctx := r.Context()
	idem := idempotent(r)
	req := r
	for attempt := 0; ; attempt++ {
		pc, reused, err := t.get(ctx, idem)
		if err != nil {
			if req.Body != nil {
				_ = req.Body.Close()
			}
			return nil, err
		}
		resp, again, err := t.exchange(ctx, pc, req, idem)
		if err == nil {
			return resp, nil
		}
		if !again || !reused || attempt > 0 || ctx.Err() != nil {
			return nil, err
		}
		// The endpoint had closed the idle connection: send it again on a
		// new one, with a new copy of the body.
		if r.GetBody != nil {
			body, gerr := r.GetBody()
			if gerr != nil {
				return nil, err
			}
			cp := *r
			cp.Body = body
			req = &cp
		}
	}
}

// get returns an idle connection (reused) or dials one.
func (t *H1Transport) get(ctx context.Context, idem bool) (pc *h1Conn, reused bool, err error) {
	now := time.Now()
	t.mu.Lock()
	for n := len(t.idle); n > 0; n = len(t.idle) {
		last := t.idle[n-1]
		idleFor := now.Sub(last.idleAt)
		if idleFor > t.idleTimeout() {
			t.idle = t.idle[:n-1]
			_ = last.c.Close()
			continue
		}
		if !idem && idleFor > staleAfter {
			break // the newest is too old for this request: dial
		}
		t.idle = t.idle[:n-1]
		t.mu.Unlock()
		return last, true, nil
	}
	t.mu.Unlock()
	c, err := t.Dial(ctx)
	if err != nil {
		return nil, false, err
	}
	pc = &h1Conn{c: c}
	pc.br = bufio.NewReaderSize(pc, 4<<10)
	pc.bw = bufio.NewWriterSize(h1Writer{pc}, 4<<10)
	return pc, false, nil
}

// put keeps a connection whose exchange ended cleanly for the next
// request.
func (t *H1Transport) put(pc *h1Conn) {
	if pc.br.Buffered() > 0 { // bytes nobody asked for
		_ = pc.c.Close()
		return
	}
	pc.idleAt = time.Now()
	t.mu.Lock()
	t.idle = append(t.idle, pc)
	var drop *h1Conn
	if len(t.idle) > t.maxIdle() {
		drop = t.idle[0]
		t.idle = append(t.idle[:0], t.idle[1:]...)
	}
	if !t.sweepArmed {
		t.sweepArmed = true
		time.AfterFunc(t.idleTimeout(), t.sweep)
	}
	t.mu.Unlock()
	if drop != nil {
		_ = drop.c.Close()
	}
}

// sweep closes the connections idle for longer than IdleTimeout.
func (t *H1Transport) sweep() {
	now := time.Now()
	var expired []*h1Conn
	t.mu.Lock()
	keep := t.idle[:0]
	for _, pc := range t.idle {
		if now.Sub(pc.idleAt) > t.idleTimeout() {
			expired = append(expired, pc)
		} else {
			keep = append(keep, pc)
		}
	}
	clear(t.idle[len(keep):])
	t.idle = keep
	t.sweepArmed = len(keep) > 0
	if t.sweepArmed {
		time.AfterFunc(t.idleTimeout(), t.sweep)
	}
	t.mu.Unlock()
	for _, pc := range expired {
		_ = pc.c.Close()
	}
}

// CloseIdleConnections closes the idle connections, the Fallback's too.
func (t *H1Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, pc := range idle {
		_ = pc.c.Close()
	}
	if ci, ok := t.Fallback.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// errUpgrade: a 101 to a request that did not ask to switch protocols.
var errUpgrade = errors.New("endpoint switched protocols without being asked to")

// exchange writes r on pc and reads the response head. again reports
// that r may be sent again on another connection: nothing of it was
// written, or it is idempotent and no answer byte came back. Until the response body ends,
// ctx ending closes the connection.
func (t *H1Transport) exchange(ctx context.Context, pc *h1Conn, r *http.Request, idem bool) (resp *http.Response, again bool, err error) {
	stop := context.AfterFunc(ctx, func() { _ = pc.c.Close() })
	fail := func(err error, again bool) (*http.Response, bool, error) {
		stop()
		_ = pc.c.Close()
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		return nil, again, err
	}
	pc.nwrite = 0
	err = r.Write(pc.bw)
	if err == nil {
		err = pc.bw.Flush()
	}
	if err != nil {
		return fail(err, idem || pc.nwrite == 0)
	}
	pc.nread = 0
	for n := 0; ; n++ {
		resp, err = http.ReadResponse(pc.br, r)
		if err != nil {
			return fail(err, idem && pc.nread == 0)
		}
		if resp.StatusCode < 100 || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols || n == 5 {
			break
		}
		// 1xx (100 Continue, 103 Early Hints): the final answer follows.
	}
	if resp.StatusCode == http.StatusSwitchingProtocols && httpTokenContains(r.Header.Get("Connection"), "upgrade") {
		// The connection is the caller's now: ctx no longer closes it.
		stop()
		resp.Body = &upgradedConn{br: pc.br, c: pc.c}
		return resp, false, nil
	}
	if resp.StatusCode < 200 {
		return fail(errUpgrade, false)
	}
	b := &h1Body{t: t, pc: pc, rc: resp.Body, ctx: ctx, stop: stop, keep: !resp.Close && !r.Close}
	if resp.Body == http.NoBody {
		b.finish(true)
		return resp, false, nil
	}
	resp.Body = b
	return resp, false, nil
}

// h1Body is a response body: at its end the connection goes back to the
// pool; closed before, it is closed (the rest of a body is not read).
type h1Body struct {
	t    *H1Transport
	pc   *h1Conn
	rc   io.ReadCloser
	ctx  context.Context
	stop func() bool
	keep bool

	mu   sync.Mutex
	done bool
	err  error // what Read returns once done
}

var errBodyClosed = errors.New("http: read on closed response body")

func (b *h1Body) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return 0, b.err
	}
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.finishLocked(true, io.EOF)
	case err != nil:
		if cerr := b.ctx.Err(); cerr != nil {
			err = cerr // the connection was closed for it
		}
		b.finishLocked(false, err)
	}
	return n, err
}

func (b *h1Body) Close() error {
	// Not under mu: a Read blocked on the connection returns once it is
	// closed.
	if b.markClosed() {
		_ = b.pc.c.Close()
	}
	return nil
}

// markClosed ends the body for Close; it reports whether the connection
// must be closed (the body had not ended).
func (b *h1Body) markClosed() bool {
	if !b.mu.TryLock() {
		// A Read is in progress: closing the connection ends it, and the
		// Read then finishes the body.
		return true
	}
	defer b.mu.Unlock()
	if b.done {
		return false
	}
	b.done, b.err = true, errBodyClosed
	b.stop()
	return true
}

func (b *h1Body) finish(reuse bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.finishLocked(reuse, io.EOF)
}

func (b *h1Body) finishLocked(reuse bool, err error) {
	if b.done {
		return
	}
	b.done, b.err = true, err
	fired := !b.stop()
	if reuse && b.keep && !fired {
		b.t.put(b.pc)
		return
	}
	_ = b.pc.c.Close()
}

// upgradedConn is a connection that switched protocols: what the reader
// buffered after the 101 comes first.
type upgradedConn struct {
	br *bufio.Reader
	c  net.Conn
}

func (u *upgradedConn) Read(p []byte) (int, error)  { return u.br.Read(p) }
func (u *upgradedConn) Write(p []byte) (int, error) { return u.c.Write(p) }
func (u *upgradedConn) Close() error                { return u.c.Close() }

// CloseWrite half-closes the connection when it can, else closes it.
func (u *upgradedConn) CloseWrite() error {
	if cw, ok := u.c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return u.c.Close()
}
