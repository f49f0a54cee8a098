package proxy

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/waypoint/route"
)

// backend is a loopback HTTP/1.1 + h2c server counting its requests.
type backend struct {
	*httptest.Server
	mu       sync.Mutex
	requests []*http.Request
	bodies   []string
	handler  func(n int, w http.ResponseWriter, r *http.Request) // n counts from 1
}

func newBackend(t *testing.T, h func(n int, w http.ResponseWriter, r *http.Request)) *backend {
	t.Helper()
	b := &backend{handler: h}
	b.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.requests = append(b.requests, r)
		b.bodies = append(b.bodies, string(body))
		n := len(b.requests)
		b.mu.Unlock()
		if b.handler != nil {
			b.handler(n, w, r)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	b.Config.Protocols = &p
	b.Start()
	t.Cleanup(b.Close)
	return b
}

func (b *backend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.requests)
}

func (b *backend) last() (*http.Request, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.requests) == 0 {
		return nil, ""
	}
	return b.requests[len(b.requests)-1], b.bodies[len(b.bodies)-1]
}

func (b *backend) addr() string { return b.Listener.Addr().String() }

// resolver maps "<ns>/<name>:<port>" to endpoint addresses.
type resolver map[string][]string

func (r resolver) Endpoints(_ context.Context, service string, port uint32) []Endpoint {
	var out []Endpoint
	for _, a := range r[route.Key{Service: service, Port: port}.String()] {
		out = append(out, Endpoint{Address: a, Workload: "ns/pod-" + a})
	}
	return out
}

// harness is a Proxy served on loopback for the service ns/svc:80.
type harness struct {
	t       *testing.T
	proxy   *Proxy
	server  *httptest.Server
	mu      sync.Mutex
	results []*Result
}

func compile(t *testing.T, rules ...*configv1alpha1.RouteRule) *route.Table {
	t.Helper()
	tb, err := route.Compile(&configv1alpha1.WaypointConfig{Name: "ns/wp", Services: []*configv1alpha1.ServiceRoutes{
		{Service: "ns/svc", Port: 80, Protocol: configv1alpha1.ServiceRoutes_PROTOCOL_HTTP, Rules: rules}}})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// lockedRand is a seeded source safe for concurrent use.
func lockedRand(seed uint64) func() float64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func() float64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Float64()
	}
}

func newHarness(t *testing.T, tb *route.Table, res resolver, opts ...func(*Proxy)) *harness {
	t.Helper()
	h := &harness{t: t}
	h.proxy = &Proxy{
		Table:       func() *route.Table { return tb },
		Destination: func(*http.Request) (string, uint32, bool) { return "ns/svc", 80, true },
		Resolver:    res,
		Rand:        lockedRand(1),
		OnResult: func(_ *http.Request, r *Result) {
			h.mu.Lock()
			h.results = append(h.results, r)
			h.mu.Unlock()
		},
	}
	for _, o := range opts {
		o(h.proxy)
	}
	h.server = httptest.NewUnstartedServer(h.proxy)
	h.server.Config = NewServer(h.proxy)
	h.server.Start()
	t.Cleanup(h.server.Close)
	return h
}

func (h *harness) lastResult() *Result {
	// OnResult runs after the answer is written; wait for it briefly.
	for range 200 {
		h.mu.Lock()
		n := len(h.results)
		var r *Result
		if n > 0 {
			r = h.results[n-1]
		}
		h.mu.Unlock()
		if r != nil {
			return r
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.t.Fatal("no result reported")
	return nil
}

var h1Client = &http.Client{Transport: &http.Transport{DisableCompression: true}, CheckRedirect: func(*http.Request, []*http.Request) error {
	return http.ErrUseLastResponse
}}

func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}}
}

// do sends a request through the proxy and returns the status and body.
func (h *harness) do(method, path string, body io.Reader, hdr http.Header) (*http.Response, string) {
	h.t.Helper()
	req, err := http.NewRequest(method, h.server.URL+path, body)
	if err != nil {
		h.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := h1Client.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func be(service string, weight uint32) *configv1alpha1.WeightedBackend {
	return &configv1alpha1.WeightedBackend{Service: service, Port: 80, Weight: weight}
}

func key(service string) string { return service + ":80" }

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	_ = l.Close()
	return a
}

func durationOf(d time.Duration) *durationpb.Duration { return durationpb.New(d) }
