package proxy

import (
	"context"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

func sm(t configv1alpha1.StringMatch_Type, v string) *configv1alpha1.StringMatch {
	return &configv1alpha1.StringMatch{Type: t, Value: v}
}

func pathPrefix(p string) *configv1alpha1.RouteMatch {
	return &configv1alpha1.RouteMatch{Path: sm(configv1alpha1.StringMatch_TYPE_PREFIX, p)}
}

func TestFiltersAndRewrite(t *testing.T) {
	v1 := newBackend(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Server", "backend")
		w.Header().Set("X-Backend", "v1")
		_, _ = io.WriteString(w, "hello")
	})
	tb := compile(t, &configv1alpha1.RouteRule{Route: "HTTPRoute/ns/r/0", Match: pathPrefix("/api/v1"),
		Filters: []*configv1alpha1.Filter{
			{Kind: &configv1alpha1.Filter_RequestHeaderModifier{RequestHeaderModifier: &configv1alpha1.HeaderModifier{
				Set: map[string]string{"x-route": "r0"}, Add: map[string]string{"x-multi": "b"}, Remove: []string{"x-secret"}}}},
			{Kind: &configv1alpha1.Filter_ResponseHeaderModifier{ResponseHeaderModifier: &configv1alpha1.HeaderModifier{
				Set: map[string]string{"x-served-by": "waypoint"}, Remove: []string{"server"}}}},
			{Kind: &configv1alpha1.Filter_UrlRewrite{UrlRewrite: &configv1alpha1.Rewrite{Hostname: "v1.internal",
				Path: &configv1alpha1.PathModifier{Kind: &configv1alpha1.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: "/v2"}}}}},
		},
		Backends: []*configv1alpha1.WeightedBackend{{Service: "ns/v1", Port: 80, Weight: 1,
			Filters: []*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_RequestHeaderModifier{
				RequestHeaderModifier: &configv1alpha1.HeaderModifier{Set: map[string]string{"x-backend-filter": "yes"}}}}}}},
	})
	h := newHarness(t, tb, resolver{key("ns/v1"): {v1.addr()}})
	resp, body := h.do("GET", "/api/v1/users?id=7", nil, http.Header{
		"X-Multi": {"a"}, "X-Secret": {"s"}, "Connection": {"X-Hop"}, "X-Hop": {"h"}})
	if resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if resp.Header.Get("Server") != "" || resp.Header.Get("X-Served-By") != "waypoint" || resp.Header.Get("X-Backend") != "v1" {
		t.Errorf("response headers %v", resp.Header)
	}
	r, _ := v1.last()
	if r.URL.Path != "/v2/users" || r.URL.RawQuery != "id=7" || r.Host != "v1.internal" {
		t.Errorf("upstream %s %s host %s", r.URL.Path, r.URL.RawQuery, r.Host)
	}
	if r.Header.Get("X-Route") != "r0" || strings.Join(r.Header.Values("X-Multi"), ",") != "a,b" ||
		r.Header.Get("X-Secret") != "" || r.Header.Get("X-Backend-Filter") != "yes" || r.Header.Get("X-Hop") != "" {
		t.Errorf("upstream headers %v", r.Header)
	}
	res := h.lastResult()
	if res.Route != "HTTPRoute/ns/r/0" || res.Backend != "ns/v1:80" || res.Endpoint != v1.addr() || res.Attempts != 1 ||
		res.Code != 200 || res.BytesSent != 5 || res.FlagString() != "-" || res.Service != "ns/svc" || res.Port != 80 {
		t.Errorf("result %+v", res)
	}
}

func TestRedirect(t *testing.T) {
	tb := compile(t, &configv1alpha1.RouteRule{Route: "redirect", Match: pathPrefix("/old"),
		Filters: []*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_RequestRedirect{RequestRedirect: &configv1alpha1.Redirect{
			Scheme: "https", Hostname: "example.com", StatusCode: 301,
			Path: &configv1alpha1.PathModifier{Kind: &configv1alpha1.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: "/new"}}}}}}})
	h := newHarness(t, tb, nil)
	resp, _ := h.do("GET", "/old/page?x=1", nil, nil)
	if resp.StatusCode != 301 || resp.Header.Get("Location") != "https://example.com/new/page?x=1" {
		t.Errorf("%d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	if res := h.lastResult(); res.Attempts != 0 || res.Code != 301 {
		t.Errorf("result %+v", res)
	}
}

func TestNoRouteAndNoDestination(t *testing.T) {
	tb := compile(t, &configv1alpha1.RouteRule{Route: "only", Match: &configv1alpha1.RouteMatch{
		Path: sm(configv1alpha1.StringMatch_TYPE_EXACT, "/only")}, Backends: []*configv1alpha1.WeightedBackend{be("ns/x", 1)}})
	h := newHarness(t, tb, nil)
	if resp, _ := h.do("GET", "/other", nil, nil); resp.StatusCode != 404 || h.lastResult().FlagString() != FlagNoRoute {
		t.Errorf("no match: %d", resp.StatusCode)
	}
	h2 := newHarness(t, tb, nil, func(p *Proxy) { p.Destination = nil })
	if resp, _ := h2.do("GET", "/only", nil, nil); resp.StatusCode != 404 {
		t.Errorf("no destination: %d", resp.StatusCode)
	}
}

func TestUnresolvedBackends(t *testing.T) {
	ok := newBackend(t, nil)
	tb := compile(t,
		&configv1alpha1.RouteRule{Route: "invalid", Match: pathPrefix("/invalid"), InvalidBackends: true},
		&configv1alpha1.RouteRule{Route: "half", Match: pathPrefix("/"), Backends: []*configv1alpha1.WeightedBackend{
			be("ns/ok", 1), {Weight: 1}}})
	h := newHarness(t, tb, resolver{key("ns/ok"): {ok.addr()}})
	if resp, _ := h.do("GET", "/invalid", nil, nil); resp.StatusCode != 500 || h.lastResult().FlagString() != FlagNoCluster {
		t.Errorf("invalid backends: %d", resp.StatusCode)
	}
	codes := map[int]int{}
	const n = 400
	for range n {
		resp, _ := h.do("GET", "/x", nil, nil)
		codes[resp.StatusCode]++
	}
	// Half the weight is unresolved: Binomial(400, 0.5), sd 10, 4 sd.
	if codes[200]+codes[500] != n || math.Abs(float64(codes[500])-n/2) > 40 {
		t.Errorf("codes %v", codes)
	}
}

func TestWeightedSplitThroughProxy(t *testing.T) {
	v1, v2 := newBackend(t, nil), newBackend(t, nil)
	tb := compile(t, &configv1alpha1.RouteRule{Route: "split", Backends: []*configv1alpha1.WeightedBackend{
		be("ns/v1", 90), be("ns/v2", 10)}})
	h := newHarness(t, tb, resolver{key("ns/v1"): {v1.addr()}, key("ns/v2"): {v2.addr()}},
		func(p *Proxy) { p.Rand = lockedRand(2024) })
	const n = 2000
	for range n {
		if resp, _ := h.do("GET", "/", nil, nil); resp.StatusCode != 200 {
			t.Fatal(resp.StatusCode)
		}
	}
	// Binomial(2000, 0.1): mean 200, sd 13.4; 4 sd is 54.
	if c1, c2 := v1.count(), v2.count(); c1+c2 != n || math.Abs(float64(c2)-200) > 54 {
		t.Errorf("v1 %d, v2 %d", c1, c2)
	}
}

func TestNoHealthyUpstream(t *testing.T) {
	tb := compile(t, &configv1alpha1.RouteRule{Route: "r", Backends: []*configv1alpha1.WeightedBackend{be("ns/empty", 1)}})
	h := newHarness(t, tb, resolver{})
	if resp, _ := h.do("GET", "/", nil, nil); resp.StatusCode != 503 || h.lastResult().FlagString() != FlagNoHealthyUpstream {
		t.Errorf("%d %v", resp.StatusCode, h.lastResult().Flags)
	}
}

func TestConnectFailure(t *testing.T) {
	tb := compile(t, &configv1alpha1.RouteRule{Route: "r", Backends: []*configv1alpha1.WeightedBackend{be("ns/down", 1)}})
	h := newHarness(t, tb, resolver{key("ns/down"): {closedAddr(t)}})
	if resp, _ := h.do("GET", "/", nil, nil); resp.StatusCode != 503 || h.lastResult().FlagString() != FlagUpstreamConnectionFailure {
		t.Errorf("%d %v", resp.StatusCode, h.lastResult().Flags)
	}
}

func TestFaultInjection(t *testing.T) {
	b := newBackend(t, nil)
	var slept []time.Duration
	tb := compile(t,
		&configv1alpha1.RouteRule{Route: "abort", Match: pathPrefix("/abort"), Backends: []*configv1alpha1.WeightedBackend{be("ns/b", 1)},
			Filters: []*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_Fault{Fault: &configv1alpha1.Fault{
				AbortHttpStatus: 418, AbortPercent: 100}}}}},
		&configv1alpha1.RouteRule{Route: "grpc", Match: pathPrefix("/grpc"), Backends: []*configv1alpha1.WeightedBackend{be("ns/b", 1)},
			Filters: []*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_Fault{Fault: &configv1alpha1.Fault{
				AbortGrpcStatus: 14, AbortPercent: 100}}}}},
		&configv1alpha1.RouteRule{Route: "delay", Match: pathPrefix("/delay"), Backends: []*configv1alpha1.WeightedBackend{be("ns/b", 1)},
			Filters: []*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_Fault{Fault: &configv1alpha1.Fault{
				Delay: durationOf(3 * time.Second), DelayPercent: 100}}}}},
		&configv1alpha1.RouteRule{Route: "some", Match: pathPrefix("/some"), Backends: []*configv1alpha1.WeightedBackend{be("ns/b", 1)},
			Filters: []*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_Fault{Fault: &configv1alpha1.Fault{
				AbortHttpStatus: 503, AbortPercent: 25}}}}},
	)
	h := newHarness(t, tb, resolver{key("ns/b"): {b.addr()}}, func(p *Proxy) {
		p.Sleep = func(ctx context.Context, d time.Duration) error { slept = append(slept, d); return ctx.Err() }
	})
	if resp, _ := h.do("GET", "/abort", nil, nil); resp.StatusCode != 418 || h.lastResult().FlagString() != FlagFaultAbort || b.count() != 0 {
		t.Errorf("abort: %d, backend %d", resp.StatusCode, b.count())
	}
	if resp, _ := h.do("GET", "/grpc", nil, nil); resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != "14" {
		t.Errorf("grpc abort: %d %v", resp.StatusCode, resp.Header)
	}
	if resp, _ := h.do("GET", "/delay", nil, nil); resp.StatusCode != 200 || len(slept) != 1 || slept[0] != 3*time.Second ||
		h.lastResult().FlagString() != FlagFaultDelay || b.count() != 1 {
		t.Errorf("delay: %d slept %v", resp.StatusCode, slept)
	}
	aborted := 0
	const n = 400
	for range n {
		if resp, _ := h.do("GET", "/some", nil, nil); resp.StatusCode == 503 {
			aborted++
		}
	}
	// Binomial(400, 0.25): sd 8.7; 4 sd.
	if math.Abs(float64(aborted)-100) > 35 {
		t.Errorf("aborted %d of %d at 25%%", aborted, n)
	}
}

func TestMirror(t *testing.T) {
	main := newBackend(t, nil)
	mirrored := make(chan string, 10)
	shadow := newBackend(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(500)
	})
	shadow.handler = func(n int, w http.ResponseWriter, r *http.Request) {
		_, body := shadow.last()
		mirrored <- r.Method + " " + r.URL.Path + " " + body
		time.Sleep(50 * time.Millisecond)
		w.WriteHeader(500) // never reaches the client
	}
	mirror := func(svc string) *configv1alpha1.Filter {
		return &configv1alpha1.Filter{Kind: &configv1alpha1.Filter_RequestMirror{RequestMirror: &configv1alpha1.Mirror{
			Backend: be(svc, 1), Percent: 100}}}
	}
	tb := compile(t, &configv1alpha1.RouteRule{Route: "m", Backends: []*configv1alpha1.WeightedBackend{be("ns/main", 1)},
		Filters: []*configv1alpha1.Filter{mirror("ns/shadow"), mirror("ns/down")}})
	h := newHarness(t, tb, resolver{key("ns/main"): {main.addr()}, key("ns/shadow"): {shadow.addr()}, key("ns/down"): {closedAddr(t)}})
	resp, body := h.do("POST", "/orders", strings.NewReader("payload"), nil)
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	select {
	case got := <-mirrored:
		if got != "POST /orders payload" {
			t.Errorf("mirror got %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("mirror not called")
	}
	if _, b := main.last(); b != "payload" {
		t.Errorf("main body %q", b)
	}
}

func TestHTTP1AndH2C(t *testing.T) {
	b := newBackend(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, r.Proto)
		w.Header().Set("X-Checksum", "abc")
	})
	tb := compile(t, &configv1alpha1.RouteRule{Route: "r", Backends: []*configv1alpha1.WeightedBackend{be("ns/b", 1)}})
	h := newHarness(t, tb, resolver{key("ns/b"): {b.addr()}})
	for _, c := range []struct {
		client *http.Client
		want   string
	}{{h1Client, "HTTP/1.1"}, {h2cClient(), "HTTP/2.0"}} {
		resp, err := c.client.Get(h.server.URL + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.Proto != c.want || string(body) != c.want || resp.Trailer.Get("X-Checksum") != "abc" {
			t.Errorf("%s: proto %s, upstream %q, trailer %v", c.want, resp.Proto, body, resp.Trailer)
		}
	}
}

func TestLargeBodyStreamsWithoutRetry(t *testing.T) {
	b := newBackend(t, func(n int, w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
	tb := compile(t, &configv1alpha1.RouteRule{Route: "r", Backends: []*configv1alpha1.WeightedBackend{be("ns/b", 1)},
		Retry: &configv1alpha1.Retry{Attempts: 3}})
	h := newHarness(t, tb, resolver{key("ns/b"): {b.addr()}}, func(p *Proxy) { p.MaxRetryBody = 1024 })
	big := strings.Repeat("x", 1<<20)
	resp, _ := h.do("PUT", "/", strings.NewReader(big), nil)
	if resp.StatusCode != 503 || b.count() != 1 {
		t.Errorf("%d, backend requests %d", resp.StatusCode, b.count())
	}
	if _, body := b.last(); len(body) != len(big) {
		t.Errorf("backend body %d bytes", len(body))
	}
	if res := h.lastResult(); res.BytesReceived != int64(len(big)) {
		t.Errorf("bytes received %d", res.BytesReceived)
	}
	// A small PUT is retried.
	resp, _ = h.do("PUT", "/", strings.NewReader("small"), nil)
	if resp.StatusCode != 503 || b.count() != 5 || h.lastResult().FlagString() != FlagRetryLimitExceeded {
		t.Errorf("%d, backend requests %d, flags %v", resp.StatusCode, b.count(), h.lastResult().Flags)
	}
}
