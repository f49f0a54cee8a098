package hbone

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

func TestRoundTripAndRequestMetadata(t *testing.T) {
	checkGoroutines(t)
	up := startUpstream(t, echo)
	type seen struct {
		peer      identity.SPIFFEID
		authority netip.AddrPort
		header    http.Header
	}
	got := make(chan seen, 1)
	ts := startServer(t, &Server{Handler: func(s *Stream) {
		got <- seen{s.Peer(), s.Authority(), s.Header()}
		(&Forwarder{}).ServeStream(s)
	}})
	d := newDialer(t, nil)
	req := request(ts, up)
	req.Header = http.Header{
		"Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		"Baggage":     {"k8s.namespace.name=default"},
		"Forwarded":   {"for=10.0.0.1"},
	}
	c, err := d.Dial(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if c.Peer() != serverID {
		t.Errorf("Peer = %v", c.Peer())
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("after CloseWrite: Read = %d, %v; want EOF", n, err)
	}
	c.Close()
	s := <-got
	if s.peer != clientID {
		t.Errorf("server saw peer %v, want %v", s.peer, clientID)
	}
	if s.authority != up {
		t.Errorf("server saw authority %v, want %v", s.authority, up)
	}
	for k, v := range req.Header {
		if s.header.Get(k) != v[0] {
			t.Errorf("header %s = %q, want %q", k, s.header.Get(k), v[0])
		}
	}
	if ua := s.header.Get("User-Agent"); ua != "" {
		t.Errorf("unexpected user-agent %q", ua)
	}
}

func TestLargeTransfer(t *testing.T) {
	checkGoroutines(t)
	const size = 64 << 20
	up := startUpstream(t, echo)
	ts := startServer(t, &Server{})
	d := newDialer(t, nil)
	c, err := d.Dial(context.Background(), request(ts, up))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := make([]byte, 1<<20)
	if _, err := rand.Read(src); err != nil {
		t.Fatal(err)
	}
	sent := sha256.New()
	errc := make(chan error, 1)
	go func() {
		for i := 0; i < size/len(src); i++ {
			src[0] = byte(i) // vary the chunks
			sent.Write(src)
			if _, err := c.Write(src); err != nil {
				errc <- err
				return
			}
		}
		errc <- c.CloseWrite()
	}()
	recv := sha256.New()
	n, err := io.Copy(recv, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n != size || !bytes.Equal(sent.Sum(nil), recv.Sum(nil)) {
		t.Fatalf("received %d bytes, digest match %v", n, bytes.Equal(sent.Sum(nil), recv.Sum(nil)))
	}
}

func TestConcurrentStreamsShareOneConnection(t *testing.T) {
	checkGoroutines(t)
	up := startUpstream(t, echo)
	ts := startServer(t, &Server{})
	var cd countingDial
	d := newDialer(t, &cd)
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := d.Dial(context.Background(), request(ts, up))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg := []byte(fmt.Sprintf("stream %d", i))
			if _, err := c.Write(msg); err != nil {
				errs <- err
				return
			}
			c.CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("stream %d: got %q, %v", i, got, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := cd.n.Load(); got != 1 {
		t.Errorf("opened %d TCP connections, want 1", got)
	}
	if got := ts.ln.accepted.Load(); got != 1 {
		t.Errorf("server accepted %d connections, want 1", got)
	}
}

func TestNewConnectionWhenMaxConcurrentStreamsReached(t *testing.T) {
	checkGoroutines(t)
	release := make(chan struct{})
	ts := startServer(t, &Server{MaxConcurrentStreams: 2, Handler: func(s *Stream) {
		s.Accept()
		select {
		case <-release:
		case <-s.Context().Done():
		}
	}})
	var cd countingDial
	d := newDialer(t, &cd)
	// Learn the server's limit first (the client assumes 100 until SETTINGS).
	first, err := d.Dial(context.Background(), request(ts, netip.MustParseAddrPort("10.0.0.1:80")))
	if err != nil {
		t.Fatal(err)
	}
	conns := []*Conn{first}
	for range 4 {
		c, err := d.Dial(context.Background(), request(ts, netip.MustParseAddrPort("10.0.0.1:80")))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if got := cd.n.Load(); got != 3 {
		t.Errorf("5 streams with MaxConcurrentStreams=2 opened %d connections, want 3", got)
	}
	close(release)
	for _, c := range conns {
		c.Close()
	}
}

func TestReconnectAfterServerClosesConnection(t *testing.T) {
	checkGoroutines(t)
	up := startUpstream(t, echo)
	ts := startServer(t, &Server{IdleTimeout: 50 * time.Millisecond})
	var cd countingDial
	d := newDialer(t, &cd)
	roundTrip := func() {
		t.Helper()
		c, err := d.Dial(context.Background(), request(ts, up))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("x"))
		c.CloseWrite()
		if b, err := io.ReadAll(c); err != nil || string(b) != "x" {
			t.Fatalf("got %q, %v", b, err)
		}
	}
	roundTrip()
	// Graceful: the server's idle timeout sends GOAWAY and closes.
	waitFor(t, "idle close", func() bool { return ts.ln.open.Load() == 0 })
	roundTrip()
	if got := cd.n.Load(); got != 2 {
		t.Errorf("dials = %d, want 2", got)
	}
	// Abrupt: the server's TCP connections die.
	ts.ln.closeAll()
	time.Sleep(20 * time.Millisecond)
	roundTrip()
	if got := cd.n.Load(); got != 3 {
		t.Errorf("dials = %d, want 3", got)
	}
}

func TestHalfCloseClientToServer(t *testing.T) {
	checkGoroutines(t)
	upGot := make(chan string, 1)
	// The upstream reads to EOF, then answers: it can still send after the
	// client's half-close.
	up := startUpstream(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c)
		upGot <- string(b)
		c.Write([]byte("reply after EOF"))
	})
	ts := startServer(t, &Server{})
	d := newDialer(t, nil)
	c, err := d.Dial(context.Background(), request(ts, up))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("request"))
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got := <-upGot; got != "request" {
		t.Errorf("upstream got %q", got)
	}
	if b, err := io.ReadAll(c); err != nil || string(b) != "reply after EOF" {
		t.Errorf("client got %q, %v", b, err)
	}
	if _, err := c.Write([]byte("more")); !errors.Is(err, ErrWriteClosed) {
		t.Errorf("Write after CloseWrite = %v, want ErrWriteClosed", err)
	}
}

func TestHalfCloseServerToClient(t *testing.T) {
	checkGoroutines(t)
	upGot := make(chan string, 1)
	// The upstream sends a banner and half-closes, then keeps reading.
	up := startUpstream(t, func(c *net.TCPConn) {
		c.Write([]byte("banner"))
		c.CloseWrite()
		b, _ := io.ReadAll(c)
		upGot <- string(b)
	})
	ts := startServer(t, &Server{})
	d := newDialer(t, nil)
	c, err := d.Dial(context.Background(), request(ts, up))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if b, err := io.ReadAll(c); err != nil || string(b) != "banner" {
		t.Fatalf("client got %q, %v", b, err)
	}
	// The client still sends after reading EOF.
	for _, s := range []string{"after ", "EOF"} {
		if _, err := c.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	c.CloseWrite()
	select {
	case got := <-upGot:
		if got != "after EOF" {
			t.Errorf("upstream got %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("upstream got nothing")
	}
}

func TestStreamHandlerHalfClose(t *testing.T) {
	checkGoroutines(t)
	// A Handler using Stream directly: write, CloseWrite, then read to EOF.
	got := make(chan string, 1)
	ts := startServer(t, &Server{Handler: func(s *Stream) {
		s.Accept()
		s.Write([]byte("hi"))
		s.CloseWrite()
		if _, err := s.Write([]byte("x")); !errors.Is(err, ErrWriteClosed) {
			t.Errorf("Write after CloseWrite = %v", err)
		}
		b, err := io.ReadAll(s)
		if err != nil {
			t.Errorf("server read: %v", err)
		}
		got <- string(b)
	}})
	d := newDialer(t, nil)
	c, err := d.Dial(context.Background(), request(ts, netip.MustParseAddrPort("[2001:db8::1]:443")))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if b, err := io.ReadAll(c); err != nil || string(b) != "hi" {
		t.Fatalf("client got %q, %v", b, err)
	}
	c.Write([]byte("bye"))
	c.CloseWrite()
	if s := <-got; s != "bye" {
		t.Errorf("server got %q", s)
	}
}

func TestStatuses(t *testing.T) {
	checkGoroutines(t)
	closedPort := func() netip.AddrPort {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).AddrPort()
	}()
	ts := startServer(t, &Server{Handler: func(s *Stream) {
		switch s.Authority().Port() {
		case 403:
			s.Reject(http.StatusForbidden, "denied by policy")
		case 401:
			s.Reject(http.StatusUnauthorized, "")
		case 999:
			// No answer: the server answers 503.
		default:
			(&Forwarder{}).ServeStream(s)
		}
	}})
	d := newDialer(t, nil)
	for _, tc := range []struct {
		authority netip.AddrPort
		code      int
		body      string
	}{
		{netip.MustParseAddrPort("10.1.2.3:403"), 403, "denied by policy"},
		{netip.MustParseAddrPort("10.1.2.3:401"), 401, ""},
		{netip.MustParseAddrPort("10.1.2.3:999"), 503, "no response from handler"},
		{closedPort, 503, "upstream unreachable"},
	} {
		_, err := d.Dial(context.Background(), request(ts, tc.authority))
		var se *StatusError
		if !errors.As(err, &se) || se.Code != tc.code || se.Body != tc.body {
			t.Errorf("%v: Dial error %v, want StatusError %d %q", tc.authority, err, tc.code, tc.body)
		}
	}
}

func TestMalformedRequestsGet400(t *testing.T) {
	checkGoroutines(t)
	called := make(chan struct{}, 100)
	ts := startServer(t, &Server{Handler: func(s *Stream) { called <- struct{}{}; s.Accept() }})
	cc := rawClientConn(t, ts)
	for _, tc := range []struct{ method, authority string }{
		{"GET", "1.2.3.4:80"},
		{"POST", "1.2.3.4:80"},
		{"CONNECT", "foo"},
		{"CONNECT", "1.2.3.4"},
		{"CONNECT", "1.2.3.4:0"},
		{"CONNECT", "[::1"},
		{"CONNECT", "example.com:80"},
		{"CONNECT", "[fe80::1%eth0]:80"},
		{"CONNECT", "0.0.0.0:80"},
		{"CONNECT", "[::ffff:1.2.3.4]:80"},
		{"CONNECT", "1.2.3.4:65536"},
	} {
		code, err := rawRoundTrip(cc, tc.method, tc.authority)
		if err != nil || code != http.StatusBadRequest {
			t.Errorf("%s %s: status %d, %v; want 400", tc.method, tc.authority, code, err)
		}
	}
	if code, err := rawRoundTrip(cc, "CONNECT", "1.2.3.4:80"); err != nil || code != 200 {
		t.Errorf("valid CONNECT: %d, %v", code, err)
	}
	if len(called) != 1 {
		t.Errorf("handler called %d times, want 1", len(called))
	}
	// Raw frames for what x/net's client will not send.
	for name, fields := range map[string][][2]string{
		"path in CONNECT":   {{":method", "CONNECT"}, {":authority", "1.2.3.4:80"}, {":path", "/"}},
		"scheme in CONNECT": {{":method", "CONNECT"}, {":authority", "1.2.3.4:80"}, {":scheme", "https"}},
		"extended CONNECT":  {{":method", "CONNECT"}, {":protocol", "websocket"}, {":authority", "1.2.3.4:80"}, {":scheme", "https"}, {":path", "/"}},
		"no authority":      {{":method", "CONNECT"}},
		"no method":         {{":authority", "1.2.3.4:80"}},
		"upper-case header": {{":method", "CONNECT"}, {":authority", "1.2.3.4:80"}, {"Traceparent", "x"}},
		"pseudo after":      {{":method", "CONNECT"}, {"baggage", "x"}, {":authority", "1.2.3.4:80"}},
		"unknown pseudo":    {{":method", "CONNECT"}, {":authority", "1.2.3.4:80"}, {":foo", "x"}},
		"connection header": {{":method", "CONNECT"}, {":authority", "1.2.3.4:80"}, {"connection", "close"}},
		"duplicate method":  {{":method", "CONNECT"}, {":method", "CONNECT"}, {":authority", "1.2.3.4:80"}},
	} {
		res := rawFrameRequest(t, fields, false)
		if res.status != http.StatusBadRequest {
			t.Errorf("%s: %+v, want 400", name, res)
		}
	}
}

func TestShutdownWaitsForStreams(t *testing.T) {
	checkGoroutines(t)
	up := startUpstream(t, echo)
	ts := startServer(t, &Server{})
	d := newDialer(t, nil)
	c, err := d.Dial(context.Background(), request(ts, up))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ts.srv.Shutdown(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a stream open", err)
	default:
	}
	// The open stream still works.
	c.Write([]byte("still here"))
	c.CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "still here" {
		t.Errorf("got %q, %v", b, err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if _, err := d.Dial(context.Background(), request(ts, up)); err == nil {
		t.Error("Dial after Shutdown succeeded")
	}
}

func TestCloseAbortsStreams(t *testing.T) {
	checkGoroutines(t)
	up := startUpstream(t, echo)
	ts := startServer(t, &Server{})
	d := newDialer(t, nil)
	c, err := d.Dial(context.Background(), request(ts, up))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ts.srv.Close()
	if _, err := io.ReadAll(c); err == nil {
		t.Error("Read after server Close ended cleanly, want an error")
	}
}

func TestStreamDeadline(t *testing.T) {
	checkGoroutines(t)
	got := make(chan error, 1)
	ts := startServer(t, &Server{Handler: func(s *Stream) {
		s.Accept()
		s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := s.Read(make([]byte, 1))
		got <- err
	}})
	d := newDialer(t, nil)
	c, err := d.Dial(context.Background(), request(ts, netip.MustParseAddrPort("10.0.0.1:80")))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := <-got; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Read = %v, want deadline exceeded", err)
	}
}

func TestDialerClosesIdleConnections(t *testing.T) {
	checkGoroutines(t)
	up := startUpstream(t, echo)
	ts := startServer(t, &Server{IdleTimeout: -1})
	d := newDialer(t, nil)
	d.IdleTimeout = 50 * time.Millisecond
	c, err := d.Dial(context.Background(), request(ts, up))
	if err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	io.ReadAll(c)
	c.Close()
	waitFor(t, "the idle client connection to close", func() bool { return ts.ln.open.Load() == 0 })
	waitFor(t, "the pool to forget it", func() bool {
		d.pruneAll()
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.all) == 0 && len(d.pools) == 0
	})
}
