package server

import (
	"context"
	"encoding/hex"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"

	"github.com/ambit-mesh/ambit/waypoint/proxy"
	"github.com/ambit-mesh/ambit/waypoint/tracing"
)

// receiver is an in-process OTLP/gRPC trace collector on loopback.
type receiver struct {
	coltracepb.UnimplementedTraceServiceServer
	addr string

	mu    sync.Mutex
	spans []*tracepb.Span
	svc   []string // service.name of each span's resource
}

func (r *receiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		name := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				name = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				r.spans = append(r.spans, sp)
				r.svc = append(r.svc, name)
			}
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (r *receiver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.spans)
}

func startReceiver(t *testing.T) *receiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{addr: ln.Addr().String()}
	g := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(g, r)
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return r
}

func newTracer(t *testing.T, endpoint string) *tracing.Tracer {
	t.Helper()
	tr, err := tracing.New(context.Background(), tracing.Config{Endpoint: endpoint, ServiceName: "waypoint.waypoint", BatchTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr
}

const (
	clientTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpan  = "00f067aa0ba902b7"
)

func TestSpansExportedOverOTLP(t *testing.T) {
	rcv := startReceiver(t)
	tr := newTracer(t, "http://"+rcv.addr)
	var mu sync.Mutex
	var logged string
	e := setup(t, func(c *Config) {
		c.Tracer = tr
		c.OnResult = func(r *http.Request, _ *proxy.Result) {
			mu.Lock()
			logged = tracing.TraceID(r.Context())
			mu.Unlock()
		}
	})
	c := e.httpClient("10.96.0.10:80", false)
	defer c.CloseIdleConnections()

	resp, _ := do(t, c, "GET", "/hello", map[string]string{
		"Traceparent": "00-" + clientTrace + "-" + clientSpan + "-01",
		"Tracestate":  "vendor=x",
		"X-Canary":    "yes",
	})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	up := resp.Header.Get("X-Echo-Traceparent")
	parts := strings.Split(up, "-")
	if len(parts) != 4 || parts[1] != clientTrace || parts[2] == clientSpan || parts[3] != "01" {
		t.Fatalf("upstream traceparent %q: want trace %s with a new span", up, clientTrace)
	}
	if ts := resp.Header.Get("X-Echo-Tracestate"); ts != "vendor=x" {
		t.Fatalf("upstream tracestate %q", ts)
	}
	if resp.Header.Get("X-Echo-B3") != "" || resp.Header.Get("X-Echo-X-B3-Traceid") != "" {
		t.Fatal("B3 headers added for a W3C client")
	}
	// OnResult runs just after the answer is written.
	eventually(t, "OnResult (access log) to see the client's trace", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return logged == clientTrace
	})

	if err := tr.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "two spans at the receiver", func() bool { return rcv.count() >= 2 })
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	var server, client *tracepb.Span
	for i, sp := range rcv.spans {
		if hex.EncodeToString(sp.GetTraceId()) != clientTrace {
			t.Fatalf("span %q in trace %x, want %s", sp.GetName(), sp.GetTraceId(), clientTrace)
		}
		if rcv.svc[i] != "waypoint.waypoint" {
			t.Fatalf("service.name %q", rcv.svc[i])
		}
		switch sp.GetKind() {
		case tracepb.Span_SPAN_KIND_SERVER:
			server = sp
		case tracepb.Span_SPAN_KIND_CLIENT:
			client = sp
		}
	}
	if server == nil || client == nil {
		t.Fatalf("spans %v: want a server and a client span", rcv.spans)
	}
	if hex.EncodeToString(server.GetParentSpanId()) != clientSpan {
		t.Fatalf("server span parent %x, want the client's %s", server.GetParentSpanId(), clientSpan)
	}
	if string(client.GetParentSpanId()) != string(server.GetSpanId()) || hex.EncodeToString(client.GetSpanId()) != parts[2] {
		t.Fatalf("client span %x (parent %x), upstream saw %s; server span %x", client.GetSpanId(), client.GetParentSpanId(), parts[2], server.GetSpanId())
	}
	attrs := map[string]string{}
	for _, kv := range server.GetAttributes() {
		v := kv.GetValue()
		switch {
		case v.GetStringValue() != "":
			attrs[kv.GetKey()] = v.GetStringValue()
		default:
			attrs[kv.GetKey()] = strings.TrimSpace(strings.TrimPrefix(v.String(), "int_value:"))
		}
	}
	for k, want := range map[string]string{
		"http.request.method": "GET", "http.response.status_code": "200", "http.route": "default/canary",
		"ambit.upstream.backend": "default/echo-v2:80", "ambit.source.principal": sa("client").String(),
	} {
		if attrs[k] != want {
			t.Errorf("server span attribute %s = %q, want %q (all: %v)", k, attrs[k], want, attrs)
		}
	}
	if server.GetName() != "GET default/canary" {
		t.Errorf("server span name %q", server.GetName())
	}
}

func TestHeadersPropagatedWithoutExport(t *testing.T) {
	rcv := startReceiver(t)
	// The SDK's own environment variable must not turn export on.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+rcv.addr)
	tr := newTracer(t, "")
	if tr.Exporting() {
		t.Fatal("exporting without an endpoint")
	}
	e := setup(t, func(c *Config) { c.Tracer = tr })
	c := e.httpClient("10.96.0.10:80", false)
	defer c.CloseIdleConnections()

	check := func(name string, resp *http.Response, hdr, wantTrace string, pos int, sep string) {
		t.Helper()
		v := resp.Header.Get("X-Echo-" + hdr)
		if v == "" {
			t.Fatalf("%s: upstream got no %s (headers %v)", name, hdr, resp.Header)
		}
		if sep != "" {
			if f := strings.Split(v, sep); len(f) <= pos || f[pos] != wantTrace {
				t.Fatalf("%s: upstream %s %q, want trace %s", name, hdr, v, wantTrace)
			}
		} else if v != wantTrace {
			t.Fatalf("%s: upstream %s %q, want %s", name, hdr, v, wantTrace)
		}
	}

	// W3C.
	resp, _ := do(t, c, "GET", "/", map[string]string{"Traceparent": "00-" + clientTrace + "-" + clientSpan + "-01"})
	check("w3c", resp, "Traceparent", clientTrace, 1, "-")
	if strings.Contains(resp.Header.Get("X-Echo-Traceparent"), clientSpan) {
		t.Fatal("w3c: upstream got the client's span as parent, not a child span")
	}
	// B3 single header.
	resp, _ = do(t, c, "GET", "/", map[string]string{"B3": clientTrace + "-" + clientSpan + "-1"})
	check("b3 single", resp, "B3", clientTrace, 0, "-")
	if resp.Header.Get("X-Echo-Traceparent") != "" {
		t.Fatal("b3 single: traceparent added")
	}
	if f := strings.Split(resp.Header.Get("X-Echo-B3"), "-"); len(f) < 3 || f[1] == clientSpan || f[2] != "1" {
		t.Fatalf("b3 single: upstream %q, want a new span, sampled", resp.Header.Get("X-Echo-B3"))
	}
	// B3 multi header.
	resp, _ = do(t, c, "GET", "/", map[string]string{"X-B3-Traceid": clientTrace, "X-B3-Spanid": clientSpan, "X-B3-Sampled": "1"})
	check("b3 multi", resp, "X-B3-Traceid", clientTrace, 0, "")
	if sp := resp.Header.Get("X-Echo-X-B3-Spanid"); sp == "" || sp == clientSpan {
		t.Fatalf("b3 multi: upstream span %q", sp)
	}
	if resp.Header.Get("X-Echo-X-B3-Sampled") != "1" {
		t.Fatalf("b3 multi: sampled %q", resp.Header.Get("X-Echo-X-B3-Sampled"))
	}
	// No trace headers: a new W3C trace starts at the waypoint.
	resp, _ = do(t, c, "GET", "/", nil)
	if f := strings.Split(resp.Header.Get("X-Echo-Traceparent"), "-"); len(f) != 4 || f[1] == strings.Repeat("0", 32) {
		t.Fatalf("new trace: upstream traceparent %q", resp.Header.Get("X-Echo-Traceparent"))
	}

	if err := tr.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := rcv.count(); n != 0 {
		t.Fatalf("%d spans exported without an endpoint", n)
	}
}
