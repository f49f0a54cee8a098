package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"strings"
	"sync"
)

// hopHeaders are removed from requests and responses that the proxy
// forwards (RFC 9110 section 7.6.1), as httputil.ReverseProxy does.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopHeaders removes hop-by-hop headers, including those the
// Connection header lists.
func removeHopHeaders(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

// httpTokenContains reports whether a comma-separated header value lists
// token (case-insensitively).
func httpTokenContains(v, token string) bool {
	for t := range strings.SplitSeq(v, ",") {
		if strings.EqualFold(textproto.TrimString(t), token) {
			return true
		}
	}
	return false
}

// copyBufs holds the buffers responses are copied through: a 32 KiB
// allocation per request was most of the proxy's garbage.
var copyBufs = sync.Pool{New: func() any {
	b := make([]byte, 32<<10)
	return &b
}}

// writeResponse streams an upstream response to the client: headers
// without hop-by-hop ones, the response header filters, the body (flushed
// as it arrives when its length is unknown) and the trailers.
func (x *exchange) writeResponse(resp *http.Response) {
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols && x.upgrade != "" {
		x.switchProtocols(resp)
		return
	}
	removeHopHeaders(resp.Header)
	h := x.w.Header()
	for k, vv := range resp.Header {
		h[k] = vv // resp is the proxy's own and done with after this
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		h["Trailer"] = []string{strings.Join(keys, ", ")}
	}
	x.applyResponseHeaders(h)
	x.w.WriteHeader(resp.StatusCode)
	flush := resp.ContentLength == -1 || x.in.ProtoMajor == 2
	rc := http.NewResponseController(x.w)
	if flush {
		_ = rc.Flush()
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := x.w.Write(buf[:n]); werr != nil {
				x.res.flag(FlagDownstreamTermination)
				return
			}
			if flush {
				_ = rc.Flush()
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if errors.Is(rerr, context.DeadlineExceeded) || errors.Is(rerr, os.ErrDeadlineExceeded) {
				x.res.flag(FlagUpstreamTimeout)
			} else {
				x.res.flag(FlagUpstreamReset)
			}
			x.p.log().DebugContext(x.in.Context(), "upstream body broke off", "backend", x.res.Backend, "error", rerr)
			// net/http's documented way to abort a response (a truncated
			// body must not look complete); the server recovers it.
			panic(http.ErrAbortHandler)
		}
	}
	_ = resp.Body.Close() // now, to fill resp.Trailer
	if len(resp.Trailer) > 0 {
		_ = rc.Flush() // forces chunking, so that trailers can follow
	}
	for k, vv := range resp.Trailer {
		if len(resp.Trailer) != announced {
			k = http.TrailerPrefix + k
		}
		h[k] = append(h[k], vv...)
	}
}

// countingWriter records the status and counts the body bytes written.
type countingWriter struct {
	http.ResponseWriter
	code int
	n    int64
}

func (w *countingWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts the request body bytes read.
type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}

// switchProtocols carries an upgraded request (a WebSocket, say) once the
// endpoint answered 101: the answer goes to the client, whose connection
// the proxy then takes over from the server, and the bytes are copied both
// ways until either side closes. The route's timeouts ended with the
// answer; the session lasts as long as both sides keep it.
func (x *exchange) switchProtocols(resp *http.Response) {
	up, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		x.fail(http.StatusBadGateway, FlagUpstreamReset)
		return
	}
	if x.stopTimeout != nil {
		x.stopTimeout()
	}
	proto := resp.Header.Get("Upgrade")
	removeHopHeaders(resp.Header)
	x.applyResponseHeaders(resp.Header)
	resp.Header.Set("Connection", "Upgrade")
	resp.Header.Set("Upgrade", proto)
	conn, brw, err := http.NewResponseController(x.w).Hijack()
	if err != nil {
		x.p.log().DebugContext(x.in.Context(), "upgrade: the client's connection cannot be taken over", "error", err)
		x.fail(http.StatusBadGateway, FlagUpstreamReset)
		return
	}
	defer conn.Close()
	x.res.Code = http.StatusSwitchingProtocols
	head := &http.Response{StatusCode: resp.StatusCode, Status: resp.Status, ProtoMajor: 1, ProtoMinor: 1, Header: resp.Header}
	if err := head.Write(brw.Writer); err != nil || brw.Flush() != nil {
		x.res.flag(FlagDownstreamTermination)
		return
	}
	// The client's end of its writes is passed on (a half-close) and the
	// endpoint's answer still flows; the endpoint's end ends the session.
	fromClient := make(chan struct{})
	go func() {
		defer close(fromClient)
		x.upRecv, _ = io.Copy(up, brw.Reader)
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = up.Close()
		}
	}()
	x.upSent, _ = io.Copy(conn, up)
	_ = conn.Close()
	_ = up.Close()
	<-fromClient
}
