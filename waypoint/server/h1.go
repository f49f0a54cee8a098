package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/waypoint/proxy"
)

// The tunnels' HTTP/1.x server: a loop per tunnel that reads a request,
// runs the handler on the tunnel's own goroutine and writes the answer,
// without the background read, the per-request read deadlines and the
// goroutine hand-offs of a general-purpose server. h2c tunnels go to
// net/http's server.
const (
	// h1MaxHeaderBytes bounds a request's line and header (431 beyond).
	h1MaxHeaderBytes = http.DefaultMaxHeaderBytes + 4096
	// h1ReadHeaderTimeout bounds the read of a request's header from its
	// first byte (for the first request of a tunnel, from the tunnel's
	// start); an idle kept-alive tunnel waits without limit.
	h1ReadHeaderTimeout = 30 * time.Second
	// h1MaxDrain is how much of a request body the handler left unread is
	// read and discarded so that the tunnel can carry the next request;
	// with more left the tunnel is closed after the answer.
	h1MaxDrain = 256 << 10
	// h1HoldBody is how many bytes of a response body are held back so
	// that headers and body leave in one write with a Content-Length.
	h1HoldBody = 4 << 10
)

// h1 connection states.
const (
	h1Active int32 = iota
	h1Idle
	h1Closed
)

// h1conn is one tunnel served as HTTP/1.x.
type h1conn struct {
	s       *Server
	c       *streamConn
	lr      limitReader
	br      *bufio.Reader
	bw      *bufio.Writer
	ctx     context.Context
	remote  string
	handler http.Handler
	state   atomic.Int32
	hold    []byte // reused buffer of held response bytes
}

// limitReader reads from r until n bytes were read, then returns io.EOF.
type limitReader struct {
	r io.Reader
	n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// serveH1 serves c as HTTP/1.x until the client closes it or either side
// asks to close. Unless known (sniffing saw an HTTP/1.x request line) it
// first looks for the HTTP/2 preface: then it serves nothing and returns
// true, with c's first Reads replaying what it read, for the h2c server.
func (s *Server) serveH1(c *streamConn, known bool) (h2 bool) {
	h := &h1conn{s: s, c: c, ctx: c.Stream.Context()}
	if c.dest.workload != nil {
		h.ctx = proxy.WithWorkloadDestination(h.ctx, *c.dest.workload)
	} else {
		h.ctx = proxy.WithDestination(h.ctx, c.dest.service, c.dest.port)
	}
	h.ctx = proxy.WithSource(h.ctx, c.source)
	h.remote = c.RemoteAddr().String()
	h.lr = limitReader{r: c, n: h1MaxHeaderBytes}
	h.br = bufio.NewReaderSize(&h.lr, 4<<10)
	_ = c.SetReadDeadline(time.Now().Add(h1ReadHeaderTimeout))
	if !known {
		isH2, err := prefaceAhead(h.br)
		if err != nil {
			_ = c.Close()
			return false
		}
		if isH2 {
			_ = c.SetReadDeadline(time.Time{})
			b, _ := h.br.Peek(h.br.Buffered())
			c.pre = bytes.Clone(b)
			return true
		}
	}
	h.bw = bufio.NewWriterSize(c, 4<<10)
	h.state.Store(h1Idle) // until its first request, as Shutdown sees it
	s.connMu.Lock()
	s.h1conns[h] = struct{}{}
	h.handler = s.httpHandler
	s.connMu.Unlock()
	defer func() {
		s.connMu.Lock()
		delete(s.h1conns, h)
		s.connMu.Unlock()
		_ = c.Close()
	}()
	h.serve()
	return false
}

// prefaceAhead reads until the buffered bytes are the HTTP/2 preface or
// cannot be.
func prefaceAhead(br *bufio.Reader) (bool, error) {
	for n := 1; ; {
		if _, err := br.Peek(n); err != nil {
			return false, err
		}
		b, _ := br.Peek(br.Buffered())
		m := min(len(b), len(http2Preface))
		if string(b[:m]) != http2Preface[:m] {
			return false, nil
		}
		if m == len(http2Preface) {
			return true, nil
		}
		n = len(b) + 1
	}
}

func (h *h1conn) serve() {
	first := true
	for {
		if !first {
			h.lr.n = h1MaxHeaderBytes
		}
		if _, err := h.br.Peek(1); err != nil {
			return
		}
		if !h.state.CompareAndSwap(h1Idle, h1Active) && h.state.Load() != h1Active {
			return // closed while idle
		}
		deadline := first
		if !first && !headerBuffered(h.br) {
			_ = h.c.SetReadDeadline(time.Now().Add(h1ReadHeaderTimeout))
			deadline = true
		}
		req, err := http.ReadRequest(h.br)
		if deadline {
			_ = h.c.SetReadDeadline(time.Time{})
		}
		first = false
		if err != nil {
			h.badRequest(err)
			return
		}
		h.lr.n = math.MaxInt64
		if code, msg := checkRequest(req); code != 0 {
			h.reject(code, msg)
			return
		}
		if !h.serveRequest(req) {
			return
		}
		h.state.Store(h1Idle)
		if h.s.h1Closing.Load() {
			return
		}
	}
}

// headerBuffered reports whether the buffered bytes hold a whole header.
func headerBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, []byte("\n\r\n")) || bytes.Contains(b, []byte("\n\n"))
}

// badRequest answers a request that could not be read, if it was one.
func (h *h1conn) badRequest(err error) {
	var code int
	msg := ""
	switch {
	case h.lr.n <= 0:
		code, msg = http.StatusRequestHeaderFieldsTooLarge, "request header too large"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), isTimeout(err):
		return // the client went away or stalled: nothing to answer
	case strings.Contains(err.Error(), "unsupported protocol version"):
		code, msg = http.StatusHTTPVersionNotSupported, "unsupported protocol version"
	case strings.Contains(err.Error(), "unsupported transfer encoding"):
		code, msg = http.StatusNotImplemented, "unsupported transfer encoding"
	default:
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) {
			return // a broken tunnel
		}
		code, msg = http.StatusBadRequest, "malformed request"
	}
	h.reject(code, msg)
}

// reject answers code with msg and closes the tunnel.
func (h *h1conn) reject(code int, msg string) {
	body := strconv.Itoa(code) + " " + http.StatusText(code) + ": " + msg
	_, _ = fmt.Fprintf(h.bw, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), len(body), body)
	_ = h.bw.Flush()
}

// checkRequest returns the status for a request the server must refuse:
// a version other than HTTP/1.x, an HTTP/1.1 request without a host, a header field name or value with
// forbidden bytes, an expectation other than 100-continue.
func checkRequest(r *http.Request) (int, string) {
	if r.ProtoMajor != 1 {
		return http.StatusHTTPVersionNotSupported, "unsupported protocol version"
	}
	if r.ProtoAtLeast(1, 1) && r.Host == "" && r.Method != http.MethodConnect {
		return http.StatusBadRequest, "missing required Host header"
	}
	for k, vv := range r.Header {
		if !validFieldName(k) {
			return http.StatusBadRequest, "invalid header name"
		}
		for _, v := range vv {
			if !validFieldValue(v) {
				return http.StatusBadRequest, "invalid header value"
			}
		}
	}
	if e := r.Header.Get("Expect"); e != "" && (!strings.EqualFold(e, "100-continue") || !r.ProtoAtLeast(1, 1)) {
		return http.StatusExpectationFailed, "unsupported expectation"
	}
	return 0, ""
}

func validFieldName(k string) bool {
	if k == "" {
		return false
	}
	for i := range len(k) {
		if !isTokenChar(k[i]) {
			return false
		}
	}
	return true
}

func validFieldValue(v string) bool {
	for i := range len(v) {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// serveRequest runs the handler for req and writes its answer; it reports
// whether the tunnel can carry another request.
func (h *h1conn) serveRequest(req *http.Request) (keep bool) {
	ctx, cancel := context.WithCancel(h.ctx)
	defer cancel()
	req = req.WithContext(ctx)
	req.RemoteAddr = h.remote
	w := &h1writer{h: h, req: req, header: make(http.Header), declared: -1, hold: h.hold[:0]}
	var body *h1body
	if req.Body != http.NoBody {
		body = &h1body{r: req.Body}
		if strings.EqualFold(req.Header.Get("Expect"), "100-continue") && req.ContentLength != 0 {
			body.w = w
		}
		req.Body = body
	}
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				buf := make([]byte, 16<<10)
				buf = buf[:runtime.Stack(buf, false)]
				h.s.log.Error("panic serving a request", "panic", fmt.Sprint(p), "stack", string(buf))
			}
			_ = h.c.Reset() // the answer must not look complete
			keep = false
		}
	}()
	h.handler.ServeHTTP(w, req)
	if w.hijacked {
		return false
	}
	keep = w.finish(body)
	if keep && w.readDeadline.Load() {
		_ = h.c.SetReadDeadline(time.Time{}) // the handler's, for its body only
	}
	if cap(w.hold) <= 2*h1HoldBody {
		h.hold = w.hold[:0]
	}
	return keep
}

// h1body is a request's body: a Close does not read the rest (the server
// decides after the handler), the first Read of a request that expects
// 100-continue sends it, and reads after the handler returned fail.
type h1body struct {
	mu     sync.Mutex
	r      io.ReadCloser
	w      *h1writer // set while a 100 Continue is owed
	eof    bool
	closed bool
}

func (b *h1body) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.w != nil {
		b.w.sendContinue()
		b.w = nil
	}
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *h1body) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// discard ends the body after the handler: it reports whether the body
// was read to its end, reading and discarding up to h1MaxDrain bytes of
// what is left, and not reading a body whose client waits for a 100
// Continue.
func (b *h1body) discard() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	if b.eof {
		return true
	}
	if b.w != nil {
		return false
	}
	n, err := io.CopyN(io.Discard, b.r, h1MaxDrain+1)
	b.eof = err == io.EOF && n <= h1MaxDrain
	return b.eof
}

// h1writer is the http.ResponseWriter of one request. A body of up to
// h1HoldBody bytes written before the handler returns (without a Flush)
// is sent with the headers in one write, with its Content-Length; a
// longer or flushed body of unknown length is chunked (HTTP/1.1) or ends
// with the tunnel (HTTP/1.0).
type h1writer struct {
	h           *h1conn
	req         *http.Request
	header      http.Header
	status      int
	wroteHeader bool
	mu          sync.Mutex // sent, continued: the body's reader may send 100 Continue
	sent        bool       // headers written
	continued   bool
	chunked     bool
	closeAfter  bool
	declared    int64 // the handler's Content-Length, -1 if none
	written     int64
	hold        []byte
	trailers    []string
	err         error // the first write error: the client is gone
	// readDeadline is set once the handler set a read deadline.
	// It may be set from another goroutine (a timeout's).
	readDeadline atomic.Bool
	// hijacked is set once the handler took the tunnel over (Hijack).
	hijacked bool
}

func (w *h1writer) Header() http.Header { return w.header }

func bodyAllowed(code int) bool {
	return !(code >= 100 && code < 200 || code == http.StatusNoContent || code == http.StatusNotModified)
}

func (w *h1writer) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		w.mu.Lock()
		defer w.mu.Unlock()
		if code == http.StatusContinue {
			if w.continued {
				return
			}
			w.continued = true
		}
		w.writeStatus(code)
		_ = w.header.Write(w.h.bw)
		_, _ = w.h.bw.WriteString("\r\n")
		w.fail(w.h.bw.Flush())
		return
	}
	w.wroteHeader, w.status = true, code
	if cl := w.header.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			w.declared = n
		} else {
			w.header.Del("Content-Length")
		}
	}
}

func (w *h1writer) writeStatus(code int) {
	bw := w.h.bw
	_, _ = bw.WriteString("HTTP/1.1 ")
	var b [8]byte
	_, _ = bw.Write(strconv.AppendInt(b[:0], int64(code), 10))
	_ = bw.WriteByte(' ')
	if t := http.StatusText(code); t != "" {
		_, _ = bw.WriteString(t)
	} else {
		_, _ = bw.WriteString("status code " + strconv.Itoa(code))
	}
	_, _ = bw.WriteString("\r\n")
}

func (w *h1writer) fail(err error) {
	if err != nil && w.err == nil {
		w.err = err
	}
}

// sendContinue answers 100 Continue unless the response has started.
func (w *h1writer) sendContinue() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sent || w.continued {
		return
	}
	w.continued = true
	_, _ = w.h.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
	w.fail(w.h.bw.Flush())
}

func (w *h1writer) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	if w.declared >= 0 && w.written+int64(len(p)) > w.declared {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if w.req.Method == http.MethodHead {
		return len(p), nil
	}
	if w.err != nil {
		return 0, w.err
	}
	if !w.sent {
		if len(w.hold)+len(p) <= h1HoldBody {
			w.hold = append(w.hold, p...)
			return len(p), nil
		}
		w.sendHeader(false)
	}
	w.writeBody(p)
	if w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

// writeBody writes p, framed if chunked, after the headers.
func (w *h1writer) writeBody(p []byte) {
	if len(p) == 0 || w.err != nil {
		return
	}
	bw := w.h.bw
	if w.chunked {
		var b [18]byte
		_, _ = bw.Write(append(strconv.AppendInt(b[:0], int64(len(p)), 16), '\r', '\n'))
	}
	_, err := bw.Write(p)
	w.fail(err)
	if w.chunked {
		_, err = bw.WriteString("\r\n")
		w.fail(err)
	}
}

// sendHeader writes the status line and header, then the held body; done
// means the handler has returned, so a body of unknown length is whole.
func (w *h1writer) sendHeader(done bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sent = true
	h, r := w.header, w.req
	http11 := r.ProtoAtLeast(1, 1)
	h.Del("Transfer-Encoding")
	_, trailer := h["Trailer"]
	if trailer {
		for _, v := range h["Trailer"] {
			for k := range strings.SplitSeq(v, ",") {
				if k = strings.TrimSpace(k); k != "" {
					w.trailers = append(w.trailers, http.CanonicalHeaderKey(k))
				}
			}
		}
	}
	switch {
	case !bodyAllowed(w.status):
	case w.declared >= 0:
	case trailer && http11:
		w.chunked = true
	case done && (r.Method != http.MethodHead || len(w.hold) > 0):
		h.Set("Content-Length", strconv.Itoa(len(w.hold)))
	case r.Method == http.MethodHead:
	case http11:
		w.chunked = true
	default:
		w.closeAfter = true // HTTP/1.0: the body ends with the tunnel
	}
	if w.chunked {
		h.Del("Content-Length")
		h["Transfer-Encoding"] = []string{"chunked"}
	}
	if r.Close || w.h.s.h1Closing.Load() || hasToken(h["Connection"], "close") {
		w.closeAfter = true
	}
	switch {
	case w.closeAfter && http11 && !hasToken(h["Connection"], "close"):
		h.Set("Connection", "close")
	case !w.closeAfter && !http11:
		h.Set("Connection", "keep-alive")
	}
	if _, ok := h["Date"]; !ok {
		h["Date"] = []string{httpDate()}
	}
	w.writeStatus(w.status)
	var exclude map[string]bool
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			if exclude == nil {
				exclude = map[string]bool{}
			}
			exclude[k] = true
		}
	}
	w.fail(h.WriteSubset(w.h.bw, exclude))
	_, err := w.h.bw.WriteString("\r\n")
	w.fail(err)
	if r.Method != http.MethodHead && bodyAllowed(w.status) {
		w.writeBody(w.hold)
	}
	w.hold = w.hold[:0]
}

// finish completes the response after the handler returned and reports
// whether the tunnel can carry another request.
func (w *h1writer) finish(body *h1body) bool {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	drained, discarded := true, false
	if !w.sent {
		// Read what the handler left of the body before answering, as a
		// client may send all of it before reading the answer.
		drained, discarded = body.discard(), true
		w.closeAfter = w.closeAfter || !drained
		w.sendHeader(true)
	}
	if w.chunked && w.err == nil {
		bw := w.h.bw
		_, _ = bw.WriteString("0\r\n")
		tr := http.Header{}
		for _, k := range w.trailers {
			if vv := w.header[k]; len(vv) > 0 {
				tr[k] = vv
			}
		}
		for k, vv := range w.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
				tr[http.CanonicalHeaderKey(name)] = vv
			}
		}
		w.fail(tr.Write(bw))
		_, err := bw.WriteString("\r\n")
		w.fail(err)
	}
	if w.declared >= 0 && w.written < w.declared && w.req.Method != http.MethodHead && bodyAllowed(w.status) {
		w.closeAfter = true // the client sees a short body
	}
	w.fail(w.h.bw.Flush())
	if !discarded && w.err == nil && !w.closeAfter {
		drained = body.discard()
	}
	return w.err == nil && !w.closeAfter && drained
}

// Hijack hands the tunnel to the handler, for a request that switched
// protocols (the proxy's upgrades): it writes the answer itself and reads
// the client's bytes through the returned reader, which holds what the
// server had buffered. The server neither answers nor reuses the tunnel
// afterwards; it closes it when the handler returns.
func (w *h1writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.wroteHeader {
		return nil, nil, errors.New("hijack after the answer began")
	}
	w.hijacked = true
	w.wroteHeader = true
	_ = w.h.c.SetReadDeadline(time.Time{})
	_ = w.h.c.SetWriteDeadline(time.Time{})
	return w.h.c, bufio.NewReadWriter(w.h.br, w.h.bw), nil
}

// Flush sends the headers and what is buffered.
func (w *h1writer) Flush() { _ = w.FlushError() }

// FlushError sends the headers and what is buffered.
func (w *h1writer) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.sent {
		w.sendHeader(false)
	}
	w.fail(w.h.bw.Flush())
	return w.err
}

// SetReadDeadline sets the deadline of the request body's reads (through
// http.ResponseController).
func (w *h1writer) SetReadDeadline(t time.Time) error {
	w.readDeadline.Store(true)
	return w.h.c.SetReadDeadline(t)
}

// SetWriteDeadline sets the deadline of the answer's writes.
func (w *h1writer) SetWriteDeadline(t time.Time) error { return w.h.c.SetWriteDeadline(t) }

// hasToken reports whether a comma-separated header value lists token.
func hasToken(vv []string, token string) bool {
	for _, v := range vv {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// dateCache is the Date header of the current second.
var dateCache atomic.Pointer[dateValue]

type dateValue struct {
	sec int64
	s   string
}

func httpDate() string {
	now := time.Now()
	if d := dateCache.Load(); d != nil && d.sec == now.Unix() {
		return d.s
	}
	d := &dateValue{sec: now.Unix(), s: now.UTC().Format(http.TimeFormat)}
	dateCache.Store(d)
	return d.s
}

// closeIdleH1 closes the HTTP/1.x tunnels waiting for a request for which
// keep reports false.
func (s *Server) closeIdleH1(keep func(destination) bool) {
	var idle []*h1conn
	s.connMu.Lock()
	for h := range s.h1conns {
		if h.state.Load() == h1Idle && (keep == nil || !keep(h.c.dest)) {
			idle = append(idle, h)
		}
	}
	s.connMu.Unlock()
	for _, h := range idle {
		if h.state.CompareAndSwap(h1Idle, h1Closed) {
			_ = h.c.Close()
		}
	}
}
