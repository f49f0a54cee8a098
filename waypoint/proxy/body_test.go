package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// writeCounter counts the writes on the connections its transport dials.
type writeCounter struct {
	mu     sync.Mutex
	writes int
}

func (wc *writeCounter) get() int {
	wc.mu.Lock()
	defer wc.mu.Unlock()
	return wc.writes
}

type countingConn struct {
	net.Conn
	wc *writeCounter
}

func (c countingConn) Write(p []byte) (int, error) {
	c.wc.mu.Lock()
	c.wc.writes++
	c.wc.mu.Unlock()
	return c.Conn.Write(p)
}

func (wc *writeCounter) transport() func(Target) http.RoundTripper {
	tr := newTransport(false)
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countingConn{c, wc}, nil
	}
	return func(Target) http.RoundTripper { return tr }
}

// TestSmallBodyGoesUpstreamInOneWrite: a request body of announced length
// up to smallBody is read first, so that headers and body reach the
// endpoint in one write, even without a retry policy; a larger body, or
// one the client sends only after "100 Continue", streams (headers first).
func TestSmallBodyGoesUpstreamInOneWrite(t *testing.T) {
	b := newBackend(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		_, _ = fmt.Fprint(w, r.ContentLength)
	})
	tb := compile(t, &configv1alpha1.RouteRule{Route: "r", Backends: []*configv1alpha1.WeightedBackend{be("ns/b", 1)}})
	wc := &writeCounter{}
	h := newHarness(t, tb, resolver{key("ns/b"): {b.addr()}}, func(p *Proxy) { p.Transport = wc.transport() })
	for _, c := range []struct {
		name      string
		size      int
		hdr       http.Header
		minWrites int
		maxWrites int
	}{
		{"1 KiB", 1 << 10, nil, 1, 1},
		{"smallBody", smallBody, nil, 1, 1},
		{"larger than smallBody", smallBody + 1, nil, 2, 100},
		{"expects 100-continue", 1 << 10, http.Header{"Expect": {"100-continue"}}, 2, 100},
	} {
		body := strings.Repeat("x", c.size)
		before := wc.get()
		resp, got := h.do("POST", "/", strings.NewReader(body), c.hdr)
		writes := wc.get() - before
		if resp.StatusCode != 200 || got != fmt.Sprint(c.size) {
			t.Errorf("%s: %d %q", c.name, resp.StatusCode, got)
		}
		if _, sent := b.last(); sent != body {
			t.Errorf("%s: the backend got %d bytes, want %d", c.name, len(sent), c.size)
		}
		if writes < c.minWrites || writes > c.maxWrites {
			t.Errorf("%s: %d writes upstream, want %d to %d", c.name, writes, c.minWrites, c.maxWrites)
		}
		if res := h.lastResult(); res.BytesReceived != int64(c.size) {
			t.Errorf("%s: bytes received %d", c.name, res.BytesReceived)
		}
	}
}

// TestRequestTimeoutBoundsBodyRead: a client that announces a body and
// stops sending it gets the route's 504 when the request timeout passes,
// as when the body streamed to a waiting endpoint.
func TestRequestTimeoutBoundsBodyRead(t *testing.T) {
	b := newBackend(t, nil)
	rule := &configv1alpha1.RouteRule{Route: "r", Backends: []*configv1alpha1.WeightedBackend{be("ns/b", 1)}}
	rule.RequestTimeout = durationOf(150 * time.Millisecond)
	h := newHarness(t, compile(t, rule), resolver{key("ns/b"): {b.addr()}})
	c, err := net.Dial("tcp", h.server.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 100\r\n\r\nonly ten.."); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer after %v: %v", time.Since(start), err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout || h.lastResult().FlagString() != FlagUpstreamTimeout || time.Since(start) > 3*time.Second {
		t.Errorf("%d %v after %v", resp.StatusCode, h.lastResult().Flags, time.Since(start))
	}
	if b.count() != 0 {
		t.Errorf("the backend got %d requests", b.count())
	}
}
