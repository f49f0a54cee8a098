package tracing

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/ambit-mesh/ambit/waypoint/proxy"
)

// Config configures a Tracer.
type Config struct {
	// Endpoint is the OTLP/gRPC collector: "host:port" (plaintext), or a
	// URL, "http://host:port" (plaintext) or "https://host:port" (TLS with
	// the system roots). Empty exports nothing; spans are still created and
	// trace headers propagated.
	Endpoint string
	// ServiceName is the service.name resource attribute of the spans,
	// "<gateway name>.waypoint" by convention. Required with Endpoint.
	ServiceName string
	// Attributes are further resource attributes (e.g. k8s.namespace.name).
	Attributes []attribute.KeyValue
	// BatchTimeout is how long spans wait to be batched before export. Zero
	// means 5s.
	BatchTimeout time.Duration
}

// Tracer creates a server span per request and a client span per try to
// an endpoint, propagates W3C trace context and B3 (single and multi
// header) from the client's request to the upstream one, and exports the
// spans over OTLP/gRPC when configured. Its zero value is not usable; a
// nil *Tracer is not either: callers check for nil.
type Tracer struct {
	tp        *sdktrace.TracerProvider
	tracer    trace.Tracer
	exporting bool
}

// The formats a client sent, which the upstream request gets back.
const (
	formatW3C = 1 << iota
	formatB3Single
	formatB3Multi
)

var (
	w3c     = propagation.TraceContext{}
	b3Multi = b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader))
	b3One   = b3.New(b3.WithInjectEncoding(b3.B3SingleHeader))
	// extract: B3 first, so that W3C wins when a client sends both.
	extractor = propagation.NewCompositeTextMapPropagator(b3Multi, w3c)
)

// traceHeaders are the headers a Tracer owns: removed from the upstream
// request before it injects its own.
var traceHeaders = []string{"Traceparent", "Tracestate", "B3", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Parentspanid", "X-B3-Sampled", "X-B3-Flags"}

// New returns a Tracer. With an Endpoint it starts an OTLP/gRPC exporter
// (the connection is made lazily; export failures are the SDK's to log).
func New(ctx context.Context, cfg Config) (*Tracer, error) {
	opts := []sdktrace.TracerProviderOption{sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample()))}
	t := &Tracer{}
	if cfg.Endpoint != "" {
		if cfg.ServiceName == "" {
			return nil, errors.New("tracing: a service name is required to export spans")
		}
		eopts, err := endpointOptions(cfg.Endpoint)
		if err != nil {
			return nil, err
		}
		exp, err := otlptracegrpc.New(ctx, eopts...)
		if err != nil {
			return nil, fmt.Errorf("tracing: OTLP exporter: %w", err)
		}
		bt := cfg.BatchTimeout
		if bt <= 0 {
			bt = 5 * time.Second
		}
		attrs := append([]attribute.KeyValue{attribute.String("service.name", cfg.ServiceName)}, cfg.Attributes...)
		opts = append(opts,
			sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(bt)),
			sdktrace.WithResource(resource.NewSchemaless(attrs...)))
		t.exporting = true
	}
	t.tp = sdktrace.NewTracerProvider(opts...)
	t.tracer = t.tp.Tracer("github.com/ambit-mesh/ambit/waypoint")
	return t, nil
}

// endpointOptions turns an endpoint string into exporter options.
func endpointOptions(ep string) ([]otlptracegrpc.Option, error) {
	scheme, rest, hasScheme := strings.Cut(ep, "://")
	if !hasScheme {
		if strings.ContainsAny(ep, "/ ") || !strings.Contains(ep, ":") {
			return nil, fmt.Errorf("tracing: OTLP endpoint %q: want host:port or http(s)://host:port", ep)
		}
		return []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(ep), otlptracegrpc.WithInsecure()}, nil
	}
	host, _, _ := strings.Cut(rest, "/")
	switch strings.ToLower(scheme) {
	case "http":
		return []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(host), otlptracegrpc.WithInsecure()}, nil
	case "https":
		return []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(host)}, nil
	}
	return nil, fmt.Errorf("tracing: OTLP endpoint %q: scheme must be http or https", ep)
}

// start starts a span. Exporting, it is the SDK's recording span with
// attrs; otherwise a non-recording span that only carries new IDs (the
// parent's trace and sampling flag, or a new sampled trace), which is all
// propagation needs and costs no recording.
func (t *Tracer) start(ctx context.Context, name string, kind trace.SpanKind, attrs func() []attribute.KeyValue) (context.Context, trace.Span) {
	if t.exporting {
		return t.tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs()...))
	}
	parent := trace.SpanContextFromContext(ctx)
	cfg := trace.SpanContextConfig{TraceID: parent.TraceID(), TraceFlags: parent.TraceFlags(), TraceState: parent.TraceState()}
	if !parent.IsValid() {
		cfg = trace.SpanContextConfig{TraceFlags: trace.FlagsSampled}
		for !cfg.TraceID.IsValid() {
			binary.BigEndian.PutUint64(cfg.TraceID[:8], rand.Uint64())
			binary.BigEndian.PutUint64(cfg.TraceID[8:], rand.Uint64())
		}
	}
	for !cfg.SpanID.IsValid() {
		binary.BigEndian.PutUint64(cfg.SpanID[:], rand.Uint64())
	}
	ctx = trace.ContextWithSpanContext(ctx, trace.NewSpanContext(cfg))
	return ctx, trace.SpanFromContext(ctx)
}

// Exporting reports whether spans are exported.
func (t *Tracer) Exporting() bool { return t.exporting }

// ForceFlush exports the spans that have ended.
func (t *Tracer) ForceFlush(ctx context.Context) error { return t.tp.ForceFlush(ctx) }

// Shutdown flushes and stops the exporter.
func (t *Tracer) Shutdown(ctx context.Context) error { return t.tp.Shutdown(ctx) }

type stateKey struct{}

// state is what the Handler leaves in a request's context.
type state struct {
	span    trace.Span
	formats int
}

func stateFrom(ctx context.Context) *state {
	s, _ := ctx.Value(stateKey{}).(*state)
	return s
}

// formatsOf returns the trace formats present in h; W3C when none is.
func formatsOf(h http.Header) int {
	f := 0
	if h.Get("Traceparent") != "" {
		f |= formatW3C
	}
	if h.Get("B3") != "" {
		f |= formatB3Single
	}
	if h.Get("X-B3-Traceid") != "" {
		f |= formatB3Multi
	}
	if f == 0 {
		f = formatW3C
	}
	return f
}

// Handler wraps the proxy: it continues the client's trace (W3C or B3) or
// starts one, and opens the request's server span, which Finish ends.
func (t *Tracer) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := extractor.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		name := "waypoint"
		if svc, port, ok := proxy.DestinationFromContext(ctx); ok && t.exporting {
			name = svc + ":" + strconv.FormatUint(uint64(port), 10)
		}
		ctx, span := t.start(ctx, name, trace.SpanKindServer, func() []attribute.KeyValue {
			return []attribute.KeyValue{
				attribute.String("http.request.method", r.Method),
				attribute.String("url.path", r.URL.Path),
				attribute.String("network.protocol.version", fmt.Sprintf("%d.%d", r.ProtoMajor, r.ProtoMinor)),
			}
		})
		st := &state{span: span, formats: formatsOf(r.Header)}
		ctx = context.WithValue(ctx, stateKey{}, st)
		defer span.End() // no-op when Finish ended it
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// Finish ends the request's server span with the proxy's result: status,
// route, upstream, flags and the client's identity.
func (t *Tracer) Finish(r *http.Request, res *proxy.Result) {
	st := stateFrom(r.Context())
	if st == nil {
		return
	}
	sp := st.span
	if !sp.IsRecording() {
		return
	}
	if res.Route != "" {
		sp.SetName(r.Method + " " + res.Route)
	}
	attrs := []attribute.KeyValue{
		attribute.Int("http.response.status_code", res.Code),
		attribute.String("http.route", res.Route),
		attribute.String("ambit.destination.service", res.Service),
		attribute.String("ambit.upstream.backend", res.Backend),
		attribute.String("ambit.upstream.endpoint", res.Endpoint),
		attribute.Int("ambit.upstream.attempts", res.Attempts),
		attribute.String("ambit.response_flags", res.FlagString()),
	}
	if res.Source.Identity.TrustDomain != "" {
		attrs = append(attrs, attribute.String("ambit.source.principal", res.Source.Identity.String()))
	}
	if res.Authz.Evaluated && !res.Authz.Allow {
		attrs = append(attrs, attribute.String("ambit.authz.denied_by", res.Authz.Policy))
	}
	sp.SetAttributes(attrs...)
	if res.Code >= 500 {
		sp.SetStatus(codes.Error, res.FlagString())
	}
	sp.End()
}

// TraceID returns the trace ID of the request's span ("" when none).
func TraceID(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.HasTraceID() {
		return ""
	}
	return sc.TraceID().String()
}

// Transport wraps an endpoint's RoundTripper: each try gets a client span,
// child of the request's server span, and the upstream request carries it
// in the formats the client used (W3C when it sent none).
func (t *Tracer) Transport(rt http.RoundTripper, target proxy.Target) http.RoundTripper {
	return &tracingTransport{t: t, rt: rt, target: target}
}

type tracingTransport struct {
	t      *Tracer
	rt     http.RoundTripper
	target proxy.Target
}

func (tt *tracingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	st := stateFrom(r.Context())
	if st == nil {
		return tt.rt.RoundTrip(r)
	}
	name := "" // only a recording span has a name
	if tt.t.exporting {
		name = "upstream " + tt.target.Service
	}
	ctx, span := tt.t.start(r.Context(), name, trace.SpanKindClient, func() []attribute.KeyValue {
		return []attribute.KeyValue{
			attribute.String("http.request.method", r.Method),
			attribute.String("server.address", tt.target.Endpoint.Address),
			attribute.String("ambit.upstream.backend", fmt.Sprintf("%s:%d", tt.target.Service, tt.target.Port)),
			attribute.String("ambit.upstream.workload", tt.target.Endpoint.Workload),
		}
	})
	defer span.End()
	// A RoundTripper must not modify its request: the trace headers are
	// rewritten on a copy of the header (a full Clone also copied the
	// URL and the rest, which stay as they are).
	out := r.WithContext(ctx)
	out.Header = r.Header.Clone()
	for _, h := range traceHeaders {
		out.Header.Del(h)
	}
	carrier := propagation.HeaderCarrier(out.Header)
	if st.formats&formatW3C != 0 {
		w3c.Inject(ctx, carrier)
	}
	if st.formats&formatB3Single != 0 {
		b3One.Inject(ctx, carrier)
	}
	if st.formats&formatB3Multi != 0 {
		b3Multi.Inject(ctx, carrier)
	}
	resp, err := tt.rt.RoundTrip(out)
	if !span.IsRecording() {
		return resp, err
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return nil, err
	}
	span.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode))
	if resp.StatusCode >= 500 {
		span.SetStatus(codes.Error, strconv.Itoa(resp.StatusCode))
	}
	return resp, nil
}
