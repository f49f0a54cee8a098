package proxy

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/waypoint/route"
)

func TestRetryConnectFailureOnAnotherEndpoint(t *testing.T) {
	good := newBackend(t, nil)
	tb := compile(t, retryRule(&configv1alpha1.Retry{Attempts: 1, Backoff: durationOf(time.Millisecond)}, be("ns/b", 1)))
	h := newHarness(t, tb, resolver{key("ns/b"): {closedAddr(t), good.addr()}})
	resp, body := h.do("GET", "/", nil, nil)
	if resp.StatusCode != 200 || body != "ok" || good.count() != 1 {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if res := h.lastResult(); res.Attempts != 2 || res.Endpoint != good.addr() || res.Workload != "ns/pod-"+good.addr() {
		t.Errorf("result %+v", res)
	}
}

func TestPendingRequestWaits(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 4)
	b := newBackend(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		started <- struct{}{}
		<-release
	})
	backend := be("ns/b", 1)
	backend.Limits = &configv1alpha1.Limits{MaxRequests: 1, MaxPendingRequests: 1}
	h := newHarness(t, compile(t, retryRule(nil, backend)), resolver{key("ns/b"): {b.addr()}})
	codes := make(chan int, 2)
	for range 2 {
		go func() {
			resp, _ := h.do("GET", "/", nil, nil)
			codes <- resp.StatusCode
		}()
	}
	<-started // one runs; the other waits (pending) or has not arrived yet
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := h.proxy.state(h.proxy.Table().Service("ns/svc", 80).Rules[0].Backends[0])
		if _, pending := st.limiter.InFlight(); pending == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("second request never queued")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if resp, _ := h.do("GET", "/", nil, nil); resp.StatusCode != 503 || h.lastResult().FlagString() != FlagUpstreamOverflow {
		t.Errorf("third request: %d", resp.StatusCode)
	}
	close(release)
	for range 2 {
		if c := <-codes; c != 200 {
			t.Errorf("queued request %d", c)
		}
	}
}

func TestClientGoesAway(t *testing.T) {
	b := newBackend(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	backend := be("ns/b", 1)
	backend.OutlierDetection = &configv1alpha1.OutlierDetection{Consecutive_5XxErrors: 1, MaxEjectionPercent: 100}
	h := newHarness(t, compile(t, retryRule(nil, backend)), resolver{key("ns/b"): {b.addr()}})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", h.server.URL+"/", nil)
	if _, err := h1Client.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("client error %v", err)
	}
	res := h.lastResult()
	if res.Code != StatusClientClosedRequest || res.FlagString() != FlagDownstreamTermination {
		t.Errorf("result %+v", res)
	}
	st := h.proxy.state(h.proxy.Table().Service("ns/svc", 80).Rules[0].Backends[0])
	if st.outlier.Ejected(b.addr()) {
		t.Error("endpoint ejected because a client went away")
	}
}

func TestHopByHopResponseHeaders(t *testing.T) {
	b := newBackend(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Private")
		w.Header().Set("X-Private", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Te", r.Header.Get("Te"))
	})
	h := newHarness(t, compile(t, retryRule(nil, be("ns/b", 1))), resolver{key("ns/b"): {b.addr()}})
	// HTTP/1.1 carries Connection; HTTP/2 has no hop-by-hop headers but
	// TE: trailers.
	resp, _ := h.do("GET", "/", nil, nil)
	if resp.Header.Get("X-Private") != "" || resp.Header.Get("Keep-Alive") != "" || resp.Header.Get("Connection") != "" {
		t.Errorf("hop-by-hop headers forwarded: %v", resp.Header)
	}
	req, _ := http.NewRequest("GET", h.server.URL+"/", nil)
	req.Header.Set("Te", "trailers")
	resp, err := h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("X-Te") != "trailers" {
		t.Errorf("TE: trailers did not reach the backend: %v", resp.Header)
	}
}

func TestNoTransparentCompression(t *testing.T) {
	b := newBackend(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("accept-encoding=" + r.Header.Get("Accept-Encoding")))
	})
	h := newHarness(t, compile(t, retryRule(nil, be("ns/b", 1))), resolver{key("ns/b"): {b.addr()}})
	if _, body := h.do("GET", "/", nil, nil); body != "accept-encoding=" {
		t.Errorf("upstream saw %q", body)
	}
	if _, body := h.do("GET", "/", nil, http.Header{"Accept-Encoding": {"br"}}); body != "accept-encoding=br" {
		t.Errorf("upstream saw %q", body)
	}
}

func TestEjectionSurvivesTableSwap(t *testing.T) {
	bad := newBackend(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) })
	good := newBackend(t, nil)
	mk := func(consecutive uint32) *configv1alpha1.RouteRule {
		backend := be("ns/b", 1)
		backend.OutlierDetection = &configv1alpha1.OutlierDetection{Consecutive_5XxErrors: consecutive,
			BaseEjectionTime: durationOf(time.Hour), MaxEjectionPercent: 50}
		return retryRule(nil, backend)
	}
	var current atomic.Pointer[route.Table]
	current.Store(compile(t, mk(1)))
	h := newHarness(t, nil, resolver{key("ns/b"): {bad.addr(), good.addr()}}, func(p *Proxy) { p.Table = current.Load })
	for range 4 {
		h.do("GET", "/", nil, nil)
	}
	if bad.count() != 1 {
		t.Fatalf("bad endpoint got %d requests, want 1 then ejection", bad.count())
	}
	current.Store(compile(t, mk(1))) // an xDS push with the same policy
	for range 4 {
		h.do("GET", "/", nil, nil)
	}
	if bad.count() != 1 {
		t.Errorf("ejection lost on a table swap with the same policy: bad %d", bad.count())
	}
	current.Store(compile(t, mk(3))) // a new policy starts afresh
	for range 4 {
		h.do("GET", "/", nil, nil)
	}
	if bad.count() == 1 {
		t.Error("ejection kept although the policy changed")
	}
}
