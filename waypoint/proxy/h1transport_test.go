package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawServer accepts connections on loopback and serves each with handle,
// which reads requests from br and writes answers to c.
type rawServer struct {
	ln      net.Listener
	accepts atomic.Int64
}

func newRawServer(t *testing.T, handle func(c net.Conn, br *bufio.Reader)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepts.Add(1)
			wg.Go(func() {
				defer c.Close()
				handle(c, bufio.NewReader(c))
			})
		}
	})
	return s
}

// h1 returns an H1Transport to s whose fallback fails the test if used
// unless allowFallback.
func (s *rawServer) h1(t *testing.T, fallback http.RoundTripper) *H1Transport {
	if fallback == nil {
		fallback = roundTripFunc(func(r *http.Request) (*http.Response, error) {
			t.Errorf("%s %s went to the fallback", r.Method, r.URL)
			return nil, errors.New("fallback")
		})
	}
	tr := &H1Transport{
		Dial: func(ctx context.Context) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", s.ln.Addr().String())
		},
		Fallback: fallback,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// echoRequests answers every request with its method and body, keeping
// the connection open.
func echoRequests(c net.Conn, br *bufio.Reader) {
	for {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, _ := io.ReadAll(r.Body)
		msg := r.Method + " " + string(body)
		if _, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(msg), msg); err != nil {
			return
		}
	}
}

func newReq(t *testing.T, method, url, body string) *http.Request {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func roundTrip(t *testing.T, rt http.RoundTripper, r *http.Request) (int, string, error) {
	t.Helper()
	resp, err := rt.RoundTrip(r)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestH1TransportReusesConnections(t *testing.T) {
	s := newRawServer(t, echoRequests)
	tr := s.h1(t, nil)
	url := "http://" + s.ln.Addr().String() + "/"
	for i := range 5 {
		code, body, err := roundTrip(t, tr, newReq(t, "POST", url, fmt.Sprint("body", i)))
		if err != nil || code != 200 || body != fmt.Sprint("POST body", i) {
			t.Fatalf("%d: %d %q %v", i, code, body, err)
		}
	}
	if n := s.accepts.Load(); n != 1 {
		t.Errorf("%d connections for 5 sequential requests, want 1", n)
	}
}

// An endpoint that closes each connection after its answer, without
// saying so: an idempotent request on the closed connection is sent again
// on a new one; a POST is not, but a POST never takes a connection idle
// for longer than staleAfter.
func TestH1TransportStaleConnections(t *testing.T) {
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	tr := s.h1(t, nil)
	url := "http://" + s.ln.Addr().String() + "/"
	for i := range 3 {
		if code, body, err := roundTrip(t, tr, newReq(t, "GET", url, "")); err != nil || code != 200 || body != "ok" {
			t.Fatalf("GET %d: %d %q %v", i, code, body, err)
		}
		time.Sleep(20 * time.Millisecond) // the close arrives
	}
	if n := s.accepts.Load(); n != 3 {
		t.Errorf("%d connections, want 3", n)
	}
	// A POST right after: the idle connection is closed, and the POST is
	// not sent twice.
	_, _, err := roundTrip(t, tr, newReq(t, "POST", url, "once"))
	if err == nil {
		t.Error("a POST on a connection the endpoint closed succeeded; it must not be sent twice")
	}
	if n := s.accepts.Load(); n != 3 {
		t.Errorf("%d connections after the POST, want 3", n)
	}
	// Idle for longer than staleAfter: a new connection.
	if code, _, err := roundTrip(t, tr, newReq(t, "GET", url, "")); err != nil || code != 200 {
		t.Fatalf("GET: %d %v", code, err)
	}
	time.Sleep(staleAfter + 100*time.Millisecond)
	if code, body, err := roundTrip(t, tr, newReq(t, "POST", url, "late")); err != nil || code != 200 || body != "ok" {
		t.Fatalf("POST after %v idle: %d %q %v", staleAfter, code, body, err)
	}
}

func TestH1TransportConnectionHandling(t *testing.T) {
	var closes atomic.Int64
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		defer closes.Add(1)
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, r.Body)
			var answer string
			switch r.URL.Path {
			case "/hints": // 103 Early Hints, then the answer
				answer = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
			case "/close":
				answer = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye"
			case "/big":
				answer = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("x", 100000)
			case "/chunked":
				answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 7\r\n\r\n"
			case "/switch":
				answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
			case "/nobody":
				answer = "HTTP/1.1 204 No Content\r\n\r\n"
			}
			if _, err := io.WriteString(c, answer); err != nil || r.URL.Path == "/close" || r.URL.Path == "/switch" {
				return
			}
		}
	})
	tr := s.h1(t, nil)
	base := "http://" + s.ln.Addr().String()

	if code, body, err := roundTrip(t, tr, newReq(t, "GET", base+"/hints", "")); err != nil || code != 200 || body != "final" {
		t.Errorf("1xx: %d %q %v", code, body, err)
	}
	resp, err := tr.RoundTrip(newReq(t, "GET", base+"/chunked", ""))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(b) != "abc" || resp.Trailer.Get("X-Sum") != "7" {
		t.Errorf("chunked: %q, trailer %v", b, resp.Trailer)
	}
	if code, _, err := roundTrip(t, tr, newReq(t, "HEAD", base+"/nobody", "")); err != nil || code != 204 {
		t.Errorf("204: %d %v", code, err)
	}
	if n := s.accepts.Load(); n != 1 {
		t.Errorf("%d connections so far, want 1", n)
	}

	// A body closed before its end closes the connection.
	resp, err = tr.RoundTrip(newReq(t, "GET", base+"/big", ""))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = resp.Body.Read(make([]byte, 10))
	_ = resp.Body.Close()
	if _, err := resp.Body.Read(make([]byte, 10)); err == nil {
		t.Error("read after Close succeeded")
	}
	waitUntil(t, "the connection closed", func() bool { return closes.Load() == 1 })

	// Connection: close is honoured.
	if code, body, err := roundTrip(t, tr, newReq(t, "GET", base+"/close", "")); err != nil || code != 200 || body != "bye" {
		t.Errorf("close: %d %q %v", code, body, err)
	}
	waitUntil(t, "the connection closed", func() bool { return closes.Load() == 2 })
	if code, _, err := roundTrip(t, tr, newReq(t, "GET", base+"/hints", "")); err != nil || code != 200 {
		t.Errorf("after close: %d %v", code, err)
	}
	if n := s.accepts.Load(); n != 3 {
		t.Errorf("%d connections, want 3", n)
	}
	// 101 without an Upgrade request is an error.
	if _, _, err := roundTrip(t, tr, newReq(t, "GET", base+"/switch", "")); !errors.Is(err, errUpgrade) {
		t.Errorf("101: %v", err)
	}
}

// The request's context ending closes the connection: while waiting for
// the answer (RoundTrip fails) and while reading the body (Read returns
// the context's error, which the proxy reports as a timeout).
func TestH1TransportContext(t *testing.T) {
	release := make(chan struct{})
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if r.URL.Path == "/slow-body" {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
		}
		<-release
	})
	defer close(release)
	tr := s.h1(t, nil)
	base := "http://" + s.ln.Addr().String()

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := tr.RoundTrip(newReq(t, "GET", base+"/slow-head", "").WithContext(ctx)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiting for the head: %v", err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	resp, err := tr.RoundTrip(newReq(t, "GET", base+"/slow-body", "").WithContext(ctx2))
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("reading the body: %v", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("took %v", time.Since(start))
	}
}

// Requests whose body is not in memory, or that wait for 100 Continue,
// go to the fallback; others do not.
func TestH1TransportFallback(t *testing.T) {
	s := newRawServer(t, echoRequests)
	var fallback atomic.Int64
	ht := newTransport(false)
	t.Cleanup(ht.CloseIdleConnections) // before the server waits for its connections
	tr := s.h1(t, roundTripFunc(func(r *http.Request) (*http.Response, error) {
		fallback.Add(1)
		return ht.RoundTrip(r)
	}))
	url := "http://" + s.ln.Addr().String() + "/"
	streamed := newReq(t, "POST", url, "")
	streamed.Body = io.NopCloser(strings.NewReader("streamed")) // no GetBody
	streamed.ContentLength = -1
	cont := newReq(t, "POST", url, "continue")
	cont.Header.Set("Expect", "100-continue")
	for _, r := range []*http.Request{streamed, cont} {
		if code, body, err := roundTrip(t, tr, r); err != nil || code != 200 || !strings.HasPrefix(body, "POST ") {
			t.Errorf("%d %q %v", code, body, err)
		}
	}
	if fallback.Load() != 2 {
		t.Errorf("%d requests went to the fallback, want 2", fallback.Load())
	}
	if code, body, err := roundTrip(t, tr, newReq(t, "PUT", url, "direct")); err != nil || code != 200 || body != "PUT direct" || fallback.Load() != 2 {
		t.Errorf("in-memory body: %d %q %v, fallback %d", code, body, err, fallback.Load())
	}
}

// Idle connections past IdleTimeout are closed by the sweep.
func TestH1TransportIdleTimeout(t *testing.T) {
	var closed atomic.Int64
	s := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		echoRequests(c, br)
		closed.Add(1)
	})
	tr := s.h1(t, nil)
	tr.IdleTimeout = 50 * time.Millisecond
	if code, _, err := roundTrip(t, tr, newReq(t, "GET", "http://"+s.ln.Addr().String()+"/", "")); err != nil || code != 200 {
		t.Fatal(code, err)
	}
	waitUntil(t, "the idle connection closed", func() bool { return closed.Load() == 1 })
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.idle) != 0 {
		t.Errorf("%d idle connections kept", len(tr.idle))
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
