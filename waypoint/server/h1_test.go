package server

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// h1Tunnel is a raw tunnel to the waypoint carrying HTTP/1.x bytes.
type h1Tunnel struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func (e *env) h1Tunnel(t *testing.T, authority string) *h1Tunnel {
	t.Helper()
	c, err := e.rawDial(authority)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &h1Tunnel{t: t, c: c, br: bufio.NewReader(c)}
}

func (h *h1Tunnel) send(s string) {
	h.t.Helper()
	if _, err := io.WriteString(h.c, s); err != nil {
		h.t.Fatal(err)
	}
}

// read reads one response to a request of method and its body.
func (h *h1Tunnel) read(method string) (*http.Response, string) {
	h.t.Helper()
	resp, err := http.ReadResponse(h.br, &http.Request{Method: method})
	if err != nil {
		h.t.Fatalf("reading the response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("reading the response body: %v", err)
	}
	return resp, string(b)
}

// closed fails unless the waypoint ends the tunnel with nothing more.
func (h *h1Tunnel) closed() {
	h.t.Helper()
	b, err := io.ReadAll(h.br)
	if len(b) > 0 || err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		h.t.Fatalf("after the answer: %q, %v; want the tunnel closed", b, err)
	}
}

func (h *h1Tunnel) want(resp *http.Response, code int) {
	h.t.Helper()
	if resp.StatusCode != code {
		h.t.Fatalf("status %d, want %d", resp.StatusCode, code)
	}
}

const getReq = "GET /x HTTP/1.1\r\nHost: echo.default.svc\r\n\r\n"

func TestH1MalformedRequestLine(t *testing.T) {
	e := setup(t)
	for _, bad := range []string{
		"GET\r\n\r\n",
		"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n", // no Host
	} {
		h := e.h1Tunnel(t, "10.96.0.10:80")
		h.send(bad)
		resp, _ := h.read("GET")
		h.want(resp, http.StatusBadRequest)
		if !resp.Close {
			t.Errorf("%q: answer without Connection: close", bad)
		}
		h.closed()
	}
	h := e.h1Tunnel(t, "10.96.0.10:80")
	h.send("GET / HTTP/2.5\r\nHost: a\r\n\r\n")
	resp, _ := h.read("GET")
	h.want(resp, http.StatusHTTPVersionNotSupported)
	h = e.h1Tunnel(t, "10.96.0.10:80")
	h.send("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n")
	resp, _ = h.read("POST")
	h.want(resp, http.StatusNotImplemented)
	h = e.h1Tunnel(t, "10.96.0.10:80")
	h.send("POST / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx")
	resp, _ = h.read("POST")
	h.want(resp, http.StatusExpectationFailed)
	h.closed()
}

func TestH1OversizedHeader(t *testing.T) {
	e := setup(t)
	h := e.h1Tunnel(t, "10.96.0.10:80")
	go func() {
		_, _ = io.WriteString(h.c, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: "+strings.Repeat("b", h1MaxHeaderBytes+10)+"\r\n\r\n")
	}()
	resp, _ := h.read("GET")
	h.want(resp, http.StatusRequestHeaderFieldsTooLarge)
	h.closed()
}

func TestH1Pipelined(t *testing.T) {
	e := setup(t)
	h := e.h1Tunnel(t, "10.96.0.10:80")
	h.send(getReq + "GET /y HTTP/1.1\r\nHost: echo.default.svc\r\nX-Canary: yes\r\n\r\n" + getReq)
	for i, backend := range []string{"", "v2", ""} {
		resp, body := h.read("GET")
		h.want(resp, http.StatusOK)
		if backend != "" && body != backend {
			t.Fatalf("request %d answered by %q, want %q", i, body, backend)
		}
		if resp.Close || resp.ContentLength != int64(len(body)) {
			t.Fatalf("request %d: close %v, length %d for %q", i, resp.Close, resp.ContentLength, body)
		}
	}
}

func TestH1ChunkedRequestBody(t *testing.T) {
	e := setup(t)
	h := e.h1Tunnel(t, "10.96.0.10:80")
	h.send("POST /echo HTTP/1.1\r\nHost: echo.default.svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
	resp, body := h.read("POST")
	h.want(resp, http.StatusOK)
	if body != "hello world" {
		t.Fatalf("echoed %q", body)
	}
	h.send(getReq)
	resp, _ = h.read("GET")
	h.want(resp, http.StatusOK)
}

func TestH1HTTP10(t *testing.T) {
	e := setup(t)
	h := e.h1Tunnel(t, "10.96.0.10:80")
	h.send("GET /x HTTP/1.0\r\nHost: echo.default.svc\r\n\r\n")
	resp, _ := h.read("GET")
	h.want(resp, http.StatusOK)
	h.closed()

	h = e.h1Tunnel(t, "10.96.0.10:80")
	for range 2 {
		h.send("GET /x HTTP/1.0\r\nHost: echo.default.svc\r\nConnection: keep-alive\r\n\r\n")
		resp, _ = h.read("GET")
		h.want(resp, http.StatusOK)
		if resp.Header.Get("Connection") != "keep-alive" {
			t.Fatalf("HTTP/1.0 keep-alive answered with Connection %q", resp.Header.Get("Connection"))
		}
	}
}

func TestH1ConnectionClose(t *testing.T) {
	e := setup(t)
	h := e.h1Tunnel(t, "10.96.0.10:80")
	h.send("GET /x HTTP/1.1\r\nHost: echo.default.svc\r\nConnection: close\r\n\r\n")
	resp, _ := h.read("GET")
	h.want(resp, http.StatusOK)
	if !resp.Close {
		t.Fatal("answer to Connection: close without Connection: close")
	}
	h.closed()
	// The waypoint's own Connection: close is in TestDrain*.
}

func TestH1UnreadBody(t *testing.T) {
	e := setup(t)
	// Port 81 has no route: 404 without reading the body.
	h := e.h1Tunnel(t, "10.96.0.10:81")
	h.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + strings.Repeat("z", 1000) + "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	for range 2 {
		resp, _ := h.read("POST")
		h.want(resp, http.StatusNotFound)
		if resp.Close {
			t.Fatal("a drained body closed the tunnel")
		}
	}
	// Too much left to drain: answered, then closed.
	h = e.h1Tunnel(t, "10.96.0.10:81")
	go func() {
		_, _ = io.WriteString(h.c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n"+strings.Repeat("z", 1000000))
	}()
	resp, _ := h.read("POST")
	h.want(resp, http.StatusNotFound)
	if !resp.Close {
		t.Fatal("answer without Connection: close although the body was not drained")
	}
	_, _ = io.Copy(io.Discard, h.br) // the waypoint ends the tunnel
}

func TestH1ExpectContinue(t *testing.T) {
	e := setup(t)
	h := e.h1Tunnel(t, "10.96.0.10:80")
	h.send("POST /echo HTTP/1.1\r\nHost: echo.default.svc\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	resp, _ := h.read("POST")
	h.want(resp, http.StatusContinue)
	h.send("hello")
	resp, body := h.read("POST")
	h.want(resp, http.StatusOK)
	if body != "hello" {
		t.Fatalf("echoed %q", body)
	}
	// Not read by the handler, so never sent: the tunnel closes.
	h = e.h1Tunnel(t, "10.96.0.10:81")
	h.send("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	resp, _ = h.read("POST")
	h.want(resp, http.StatusNotFound)
	if !resp.Close {
		t.Fatal("unread 100-continue body: answer without Connection: close")
	}
	h.closed()
}

func TestH1ClientGoesAway(t *testing.T) {
	e := setup(t)
	for range 20 {
		h := e.h1Tunnel(t, "10.96.0.10:80")
		h.send("POST /echo HTTP/1.1\r\nHost: echo.default.svc\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("q", 50000))
		_ = h.c.Close()
		h = e.h1Tunnel(t, "10.96.0.10:80")
		h.send("POST /echo HTTP/1.1\r\nHost: echo.default.svc\r\nContent-Length: 5\r\n\r\nhello")
		_ = h.c.Close() // before the answer
	}
	h := e.h1Tunnel(t, "10.96.0.10:80")
	h.send(getReq)
	resp, _ := h.read("GET")
	h.want(resp, http.StatusOK)
}

func TestH1Head(t *testing.T) {
	e := setup(t)
	h := e.h1Tunnel(t, "10.96.0.10:80")
	h.send("HEAD /x HTTP/1.1\r\nHost: echo.default.svc\r\n\r\n" + getReq)
	resp, body := h.read("HEAD")
	h.want(resp, http.StatusOK)
	if body != "" {
		t.Fatalf("HEAD answered with a body %q", body)
	}
	resp, body = h.read("GET")
	h.want(resp, http.StatusOK)
	if body == "" {
		t.Fatal("GET after HEAD: empty body")
	}
}

// withHandler replaces the handler chain behind the HTTP/1.x server for
// the tunnels opened afterwards.
func (e *env) withHandler(h http.HandlerFunc) {
	e.wp.connMu.Lock()
	e.wp.httpHandler = h
	e.wp.connMu.Unlock()
}

func TestH1HandlerAnswers(t *testing.T) {
	e := setup(t)
	e.withHandler(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.Body != http.NoBody {
			t.Errorf("GET without a body: Body %T, want http.NoBody", r.Body)
		}
		switch r.URL.Path {
		case "/big": // longer than what is held: chunked
			_, _ = io.WriteString(w, strings.Repeat("b", 3000))
			_, _ = io.WriteString(w, strings.Repeat("c", 3000))
		case "/flush":
			_, _ = io.WriteString(w, "one")
			http.NewResponseController(w).Flush()
			_, _ = io.WriteString(w, "two")
		case "/trailers":
			w.Header().Set("Trailer", "X-Sum")
			_, _ = io.WriteString(w, "body")
			w.Header().Set("X-Sum", "42")
			w.Header().Set(http.TrailerPrefix+"X-Late", "yes")
		case "/short": // declares more than it writes
			w.Header().Set("Content-Length", "10")
			_, _ = io.WriteString(w, "abc")
		case "/over":
			w.Header().Set("Content-Length", "2")
			if _, err := io.WriteString(w, "abc"); err != http.ErrContentLength {
				t.Errorf("write beyond Content-Length: %v", err)
			}
			_, _ = io.WriteString(w, "ab")
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
			if _, err := io.WriteString(w, "x"); err != http.ErrBodyNotAllowed {
				t.Errorf("write to a 204: %v", err)
			}
		case "/panic":
			_, _ = io.WriteString(w, "partial")
			http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler)
		case "/close":
			w.Header().Set("Connection", "close")
			_, _ = io.WriteString(w, "bye")
		default:
			_, _ = io.WriteString(w, "ok")
		}
	})
	h := e.h1Tunnel(t, "10.96.0.10:80")
	get := func(path string) (*http.Response, string) {
		h.send("GET " + path + " HTTP/1.1\r\nHost: a\r\n\r\n")
		return h.read("GET")
	}
	resp, body := get("/")
	if body != "ok" || resp.ContentLength != 2 || resp.Header.Get("Date") == "" {
		t.Fatalf("/: %q, length %d, Date %q", body, resp.ContentLength, resp.Header.Get("Date"))
	}
	resp, body = get("/big")
	if len(body) != 6000 || resp.TransferEncoding == nil {
		t.Fatalf("/big: %d bytes, transfer encoding %v", len(body), resp.TransferEncoding)
	}
	resp, body = get("/flush")
	if body != "onetwo" || resp.TransferEncoding == nil {
		t.Fatalf("/flush: %q, transfer encoding %v", body, resp.TransferEncoding)
	}
	resp, body = get("/trailers")
	if body != "body" || resp.Trailer.Get("X-Sum") != "42" || resp.Trailer.Get("X-Late") != "yes" {
		t.Fatalf("/trailers: %q, trailers %v", body, resp.Trailer)
	}
	resp, body = get("/over")
	if body != "ab" || resp.ContentLength != 2 || resp.Close {
		t.Fatalf("/over: %q, length %d, close %v", body, resp.ContentLength, resp.Close)
	}
	resp, _ = get("/nocontent")
	h.want(resp, http.StatusNoContent)
	resp, body = get("/close")
	if body != "bye" || !resp.Close {
		t.Fatalf("/close: %q, close %v", body, resp.Close)
	}
	h.closed()

	h = e.h1Tunnel(t, "10.96.0.10:80")
	h.send("GET /short HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(resp.Body); string(b) != "abc" || err == nil {
		t.Fatalf("/short: %q, %v; want a truncated body", b, err)
	}

	h = e.h1Tunnel(t, "10.96.0.10:80")
	h.send("GET /panic HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err = http.ReadResponse(h.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(resp.Body); err == nil {
		t.Fatalf("/panic: %q read as complete", b)
	}
	// The server still serves.
	h = e.h1Tunnel(t, "10.96.0.10:80")
	if _, body := get("/"); body != "ok" {
		t.Fatalf("after a panic: %q", body)
	}
}
