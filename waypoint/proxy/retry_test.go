package proxy

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/waypoint/resilience"
	"github.com/ambit-mesh/ambit/waypoint/route"
)

func retryRule(r *configv1alpha1.Retry, backends ...*configv1alpha1.WeightedBackend) *configv1alpha1.RouteRule {
	return &configv1alpha1.RouteRule{Route: "retry", Backends: backends, Retry: r}
}

func TestRetryThenSuccess(t *testing.T) {
	b := newBackend(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n <= 2 {
			w.WriteHeader(503)
			return
		}
		_, _ = w.Write([]byte("third time"))
	})
	var slept []time.Duration
	tb := compile(t, retryRule(&configv1alpha1.Retry{Codes: []uint32{503}, Attempts: 2, Backoff: durationOf(100 * time.Millisecond)}, be("ns/b", 1)))
	h := newHarness(t, tb, resolver{key("ns/b"): {b.addr()}}, func(p *Proxy) {
		p.Rand = func() float64 { return 0.5 }
		p.Sleep = func(_ context.Context, d time.Duration) error { slept = append(slept, d); return nil }
	})
	resp, body := h.do("GET", "/", nil, nil)
	if resp.StatusCode != 200 || body != "third time" || b.count() != 3 {
		t.Fatalf("%d %q, backend requests %d", resp.StatusCode, body, b.count())
	}
	// Full jitter over [0, 100ms) then [0, 200ms), with draws of 0.5.
	if len(slept) != 2 || slept[0] != 50*time.Millisecond || slept[1] != 100*time.Millisecond {
		t.Errorf("backoff %v", slept)
	}
	if res := h.lastResult(); res.Attempts != 3 || res.Code != 200 || res.FlagString() != "-" {
		t.Errorf("result %+v", res)
	}
}

func TestRetryExhausted(t *testing.T) {
	b := newBackend(t, func(int, http.ResponseWriter, *http.Request) {})
	b.handler = func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(502) }
	tb := compile(t, retryRule(&configv1alpha1.Retry{Attempts: 1}, be("ns/b", 1)))
	h := newHarness(t, tb, resolver{key("ns/b"): {b.addr()}})
	if resp, _ := h.do("GET", "/", nil, nil); resp.StatusCode != 502 || b.count() != 2 || h.lastResult().FlagString() != FlagRetryLimitExceeded {
		t.Errorf("%d, backend %d, flags %v", resp.StatusCode, b.count(), h.lastResult().Flags)
	}
	// 500 is not in the default codes (502, 503, 504).
	b.handler = func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) }
	if resp, _ := h.do("GET", "/", nil, nil); resp.StatusCode != 500 || b.count() != 3 {
		t.Errorf("500: %d, backend %d", resp.StatusCode, b.count())
	}
}

func TestPostNotRetried(t *testing.T) {
	b := newBackend(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(503) })
	tb := compile(t, retryRule(&configv1alpha1.Retry{Codes: []uint32{503}, Attempts: 3}, be("ns/b", 1)))
	h := newHarness(t, tb, resolver{key("ns/b"): {b.addr()}})
	if resp, _ := h.do("POST", "/", strings.NewReader("x"), nil); resp.StatusCode != 503 || b.count() != 1 {
		t.Errorf("POST: %d, backend requests %d", resp.StatusCode, b.count())
	}
	if resp, _ := h.do("DELETE", "/", nil, nil); resp.StatusCode != 503 || b.count() != 5 {
		t.Errorf("DELETE: %d, backend requests %d", resp.StatusCode, b.count())
	}
}

func TestNoRetryWithoutPolicy(t *testing.T) {
	b := newBackend(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(503) })
	tb := compile(t, retryRule(nil, be("ns/b", 1)))
	h := newHarness(t, tb, resolver{key("ns/b"): {b.addr()}})
	if resp, _ := h.do("GET", "/", nil, nil); resp.StatusCode != 503 || b.count() != 1 || h.lastResult().FlagString() != "-" {
		t.Errorf("%d, backend requests %d", resp.StatusCode, b.count())
	}
}

func TestPerTryTimeoutRetries(t *testing.T) {
	b := newBackend(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			return
		}
		_, _ = w.Write([]byte("fast"))
	})
	rule := retryRule(&configv1alpha1.Retry{Attempts: 1, Backoff: durationOf(time.Millisecond)}, be("ns/b", 1))
	rule.BackendRequestTimeout = durationOf(100 * time.Millisecond)
	h := newHarness(t, compile(t, rule), resolver{key("ns/b"): {b.addr()}})
	start := time.Now()
	resp, body := h.do("GET", "/", nil, nil)
	if resp.StatusCode != 200 || body != "fast" || b.count() != 2 || time.Since(start) > 3*time.Second {
		t.Errorf("%d %q, backend %d, took %v", resp.StatusCode, body, b.count(), time.Since(start))
	}
}

func TestRequestTimeout(t *testing.T) {
	b := newBackend(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	rule := retryRule(&configv1alpha1.Retry{Attempts: 5}, be("ns/b", 1))
	rule.RequestTimeout = durationOf(150 * time.Millisecond)
	h := newHarness(t, compile(t, rule), resolver{key("ns/b"): {b.addr()}})
	start := time.Now()
	resp, _ := h.do("GET", "/", nil, nil)
	if resp.StatusCode != 504 || h.lastResult().FlagString() != FlagUpstreamTimeout || time.Since(start) > 3*time.Second {
		t.Errorf("%d %v, took %v", resp.StatusCode, h.lastResult().Flags, time.Since(start))
	}
}

func TestRetryBudgetCapsAmplification(t *testing.T) {
	b := newBackend(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(503) })
	tb := compile(t, retryRule(&configv1alpha1.Retry{Attempts: 3, Backoff: durationOf(time.Millisecond)}, be("ns/b", 1)))
	h := newHarness(t, tb, resolver{key("ns/b"): {b.addr()}}, func(p *Proxy) {
		p.NewBudget = func(route.Key) *resilience.Budget {
			return &resilience.Budget{Ratio: 0.2, MinConcurrent: -1}
		}
	})
	const clients, each = 10, 20
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for range each {
				h.do("GET", "/", nil, nil)
			}
		})
	}
	wg.Wait()
	requests := clients * each
	// Without a budget a dead backend sees 4x the requests; with it, at
	// most 20% more (plus the first retry, allowed against the first
	// requests of the window).
	if got := b.count(); got > requests*12/10+2 || got < requests {
		t.Errorf("backend saw %d requests for %d client requests", got, requests)
	}
}

func TestOutlierEjectionThroughProxy(t *testing.T) {
	bad := newBackend(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) })
	good := newBackend(t, nil)
	clk := &testClock{now: time.Unix(1_000_000, 0)}
	backend := be("ns/b", 1)
	backend.OutlierDetection = &configv1alpha1.OutlierDetection{Consecutive_5XxErrors: 2, BaseEjectionTime: durationOf(30 * time.Second),
		MaxEjectionPercent: 50}
	h := newHarness(t, compile(t, retryRule(nil, backend)), resolver{key("ns/b"): {bad.addr(), good.addr()}},
		func(p *Proxy) { p.Now = clk.Now })
	for range 10 {
		h.do("GET", "/", nil, nil)
	}
	// Round robin: bad gets requests 1 and 3, then is ejected.
	if bad.count() != 2 || good.count() != 8 {
		t.Fatalf("before ejection ends: bad %d, good %d", bad.count(), good.count())
	}
	clk.Advance(30 * time.Second)
	for range 4 {
		h.do("GET", "/", nil, nil)
	}
	if bad.count() < 3 {
		t.Errorf("ejected endpoint got no traffic after the ejection time: bad %d, good %d", bad.count(), good.count())
	}
}

func TestMaxRequestsOverflow(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	b := newBackend(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		started <- struct{}{}
		<-release
	})
	backend := be("ns/b", 1)
	backend.Limits = &configv1alpha1.Limits{MaxRequests: 1}
	h := newHarness(t, compile(t, retryRule(nil, backend)), resolver{key("ns/b"): {b.addr()}})
	done := make(chan int)
	go func() {
		resp, _ := h.do("GET", "/", nil, nil)
		done <- resp.StatusCode
	}()
	<-started
	resp, _ := h.do("GET", "/", nil, nil)
	if resp.StatusCode != 503 || h.lastResult().FlagString() != FlagUpstreamOverflow {
		t.Errorf("overflow: %d %v", resp.StatusCode, h.lastResult().Flags)
	}
	close(release)
	if code := <-done; code != 200 {
		t.Errorf("first request %d", code)
	}
	if resp, _ := h.do("GET", "/", nil, nil); resp.StatusCode != 200 {
		t.Errorf("after release %d", resp.StatusCode)
	}
}

// testClock is a manually advanced clock.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
