package telemetry

import (
	"context"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
	"github.com/ambit-mesh/ambit/waypoint/tracing"
)

// Unknown is the value of a label the waypoint cannot know.
const Unknown = "unknown"

// Reporter is the reporter label of every waypoint metric.
const Reporter = "waypoint"

// Metadata resolves the mesh objects that label a request; the server's
// Store implements it. Each method returns nil when it does not know the
// object.
type Metadata interface {
	Service(name string) *configv1alpha1.Service
	Workload(name string) *configv1alpha1.Workload
	WorkloadByAddress(ip netip.Addr) *configv1alpha1.Workload
}

// Labels of the request metrics, in Istio's standard names.
var Labels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal",
	"source_canonical_service", "source_canonical_revision",
	"destination_workload", "destination_workload_namespace", "destination_principal",
	"destination_canonical_service", "destination_canonical_revision",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"request_protocol", "response_code", "grpc_response_status", "response_flags",
	"connection_security_policy",
}

// TCPLabels are the labels of the TCP metrics (tunnels passed through).
var TCPLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal",
	"source_canonical_service", "source_canonical_revision",
	"destination_workload", "destination_workload_namespace", "destination_principal",
	"destination_canonical_service", "destination_canonical_revision",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"request_protocol", "response_flags", "connection_security_policy",
}

// Istio's default buckets: milliseconds for durations, bytes for sizes.
var (
	DurationBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
	SizeBuckets     = prometheus.ExponentialBuckets(1, 10, 9)
)

// Telemetry records the golden signals and the access log of every request
// the proxy answered. Its Observe method is the proxy's OnResult hook.
type Telemetry struct {
	// Registry holds the metrics (serve it on /metrics).
	Registry *prometheus.Registry

	meta       Metadata
	access     *slog.Logger
	accessJSON *jsonLog // set by SetAccessWriter, instead of access
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	reqBytes   *prometheus.HistogramVec
	respBytes  *prometheus.HistogramVec

	tcpOpened, tcpClosed, tcpSent, tcpReceived *prometheus.CounterVec

	// children caches the four request series of each label set: looking
	// them up by 19 label values hashed them four times per request.
	children sync.Map // RequestLabels -> *requestSeries
}

// requestSeries are the request metrics of one label set.
type requestSeries struct {
	requests                      prometheus.Counter
	duration, reqBytes, respBytes prometheus.Observer
}

// series returns the request metrics of l, creating them once.
func (t *Telemetry) series(l RequestLabels) *requestSeries {
	if s, ok := t.children.Load(l); ok {
		return s.(*requestSeries)
	}
	vs := l.values()
	s := &requestSeries{
		requests:  t.requests.WithLabelValues(vs...),
		duration:  t.duration.WithLabelValues(vs...),
		reqBytes:  t.reqBytes.WithLabelValues(vs...),
		respBytes: t.respBytes.WithLabelValues(vs...),
	}
	got, _ := t.children.LoadOrStore(l, s)
	return got.(*requestSeries)
}

// New registers the request metrics in a new registry (with the Go and
// process collectors). meta may be nil (every workload label "unknown");
// access receives one line per request, nil logs none.
func New(meta Metadata, access *slog.Logger) *Telemetry {
	t := &Telemetry{
		Registry: prometheus.NewRegistry(),
		meta:     meta,
		access:   access,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_requests_total", Help: "Requests the waypoint answered."}, Labels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_request_duration_milliseconds", Help: "Time from the request to the end of the answer, in milliseconds.",
			Buckets: DurationBuckets}, Labels),
		reqBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_request_bytes", Help: "Request body sizes, in bytes.", Buckets: SizeBuckets}, Labels),
		respBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_response_bytes", Help: "Response body sizes, in bytes.", Buckets: SizeBuckets}, Labels),
		tcpOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_connections_opened_total", Help: "TCP tunnels passed through, opened."}, TCPLabels),
		tcpClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_connections_closed_total", Help: "TCP tunnels passed through, closed."}, TCPLabels),
		tcpSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_sent_bytes_total", Help: "Bytes sent to the client of a TCP tunnel (response direction), counted when it closes."}, TCPLabels),
		tcpReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_tcp_received_bytes_total", Help: "Bytes received from the client of a TCP tunnel (request direction), counted when it closes."}, TCPLabels),
	}
	t.Registry.MustRegister(t.requests, t.duration, t.reqBytes, t.respBytes,
		t.tcpOpened, t.tcpClosed, t.tcpSent, t.tcpReceived,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return t
}

// Peer is one end of a request as the labels describe it.
type Peer struct {
	Workload, Namespace, Principal, CanonicalService, CanonicalRevision string
}

// RequestLabels are the labels of one request.
type RequestLabels struct {
	Source, Destination                               Peer
	Service, ServiceName, ServiceNamespace            string
	Protocol, Code, GRPCStatus, Flags, SecurityPolicy string
}

func (l RequestLabels) values() []string {
	return []string{
		Reporter,
		l.Source.Workload, l.Source.Namespace, l.Source.Principal,
		l.Source.CanonicalService, l.Source.CanonicalRevision,
		l.Destination.Workload, l.Destination.Namespace, l.Destination.Principal,
		l.Destination.CanonicalService, l.Destination.CanonicalRevision,
		l.Service, l.ServiceName, l.ServiceNamespace,
		l.Protocol, l.Code, l.GRPCStatus, l.Flags, l.SecurityPolicy,
	}
}

// Observe records one request: the four metrics and an access-log line.
func (t *Telemetry) Observe(r *http.Request, res *proxy.Result) {
	l := t.Labels(r, res)
	s := t.series(l)
	s.requests.Inc()
	s.duration.Observe(float64(res.Duration) / float64(time.Millisecond))
	s.reqBytes.Observe(float64(res.BytesReceived))
	s.respBytes.Observe(float64(res.BytesSent))
	if t.access != nil || t.accessJSON != nil {
		t.log(r, res, l)
	}
}

// ObserveConn records a TCP tunnel: opened when it is joined to an
// endpoint (done=false), closed with its bytes when it ends (done=true; a
// refused tunnel counts as opened and closed then), and an access-log
// line at the end. It is the server's OnConn hook.
func (t *Telemetry) ObserveConn(res *proxy.ConnResult, done bool) {
	l := t.connLabels(res)
	vs := []string{
		Reporter,
		l.Source.Workload, l.Source.Namespace, l.Source.Principal,
		l.Source.CanonicalService, l.Source.CanonicalRevision,
		l.Destination.Workload, l.Destination.Namespace, l.Destination.Principal,
		l.Destination.CanonicalService, l.Destination.CanonicalRevision,
		l.Service, l.ServiceName, l.ServiceNamespace,
		"tcp", l.Flags, l.SecurityPolicy,
	}
	if !done || !res.Opened {
		t.tcpOpened.WithLabelValues(vs...).Inc()
	}
	if !done {
		return
	}
	t.tcpClosed.WithLabelValues(vs...).Inc()
	t.tcpSent.WithLabelValues(vs...).Add(float64(res.BytesSent))
	t.tcpReceived.WithLabelValues(vs...).Add(float64(res.BytesReceived))
	if t.access == nil && t.accessJSON == nil {
		return
	}
	authz := "allow"
	if !res.Authz.Allow {
		authz = "deny"
	}
	src := ""
	if res.Source.Address.IsValid() {
		src = res.Source.Address.String()
	}
	if t.accessJSON != nil {
		ln := t.accessJSON.start("connection")
		ln.str("service", res.Service)
		ln.uint("port", uint64(res.Port))
		ln.str("endpoint", res.Endpoint)
		ln.str("flags", l.Flags)
		ln.int("received_bytes", res.BytesReceived)
		ln.int("sent_bytes", res.BytesSent)
		ln.int("duration", int64(res.Duration))
		ln.str("source_address", src)
		ln.str("source_principal", l.Source.Principal)
		ln.str("source_workload", l.Source.Workload)
		ln.str("destination_principal", l.Destination.Principal)
		ln.str("authz", authz)
		ln.str("authz_policy", res.Authz.Policy)
		ln.end()
		return
	}
	t.access.LogAttrs(context.Background(), slog.LevelInfo, "connection",
		slog.String("service", res.Service),
		slog.Uint64("port", uint64(res.Port)),
		slog.String("endpoint", res.Endpoint),
		slog.String("flags", l.Flags),
		slog.Int64("received_bytes", res.BytesReceived),
		slog.Int64("sent_bytes", res.BytesSent),
		slog.Duration("duration", res.Duration),
		slog.String("source_address", src),
		slog.String("source_principal", l.Source.Principal),
		slog.String("source_workload", l.Source.Workload),
		slog.String("destination_principal", l.Destination.Principal),
		slog.String("authz", authz),
		slog.String("authz_policy", res.Authz.Policy),
	)
}

func (t *Telemetry) connLabels(res *proxy.ConnResult) RequestLabels {
	l := t.Labels(nil, &proxy.Result{Service: res.Service, Port: res.Port, Workload: res.Workload, Source: res.Source})
	l.Protocol, l.Flags = "tcp", res.Flags
	if l.Flags == "" {
		l.Flags = "-"
	}
	return l
}

// Labels computes the labels of a request.
//
// Source: the namespace and principal come from the tunnel's verified
// identity; workload, canonical service and revision from the Workload
// that has the source address, if its identity is that principal, else
// from the tunnel's baggage (k8s.workload.name, service.name,
// service.version) when its k8s.namespace.name agrees with the identity.
// Destination: the endpoint's Workload; the service is the chosen
// backend, else the service the request was sent to.
func (t *Telemetry) Labels(r *http.Request, res *proxy.Result) RequestLabels {
	l := RequestLabels{
		Source:         t.source(res.Source),
		Destination:    t.destination(res.Workload),
		Protocol:       "tcp",
		Code:           strconv.Itoa(res.Code),
		GRPCStatus:     res.GRPCStatus,
		Flags:          res.FlagString(),
		SecurityPolicy: "mutual_tls",
	}
	if r != nil {
		l.Protocol = protocol(r)
	}
	if res.Source.Identity.TrustDomain == "" {
		l.SecurityPolicy = "none"
	}
	svc := res.Service
	if res.Backend != "" {
		if i := strings.LastIndexByte(res.Backend, ':'); i > 0 {
			svc = res.Backend[:i]
		}
	}
	l.Service, l.ServiceName, l.ServiceNamespace = Unknown, Unknown, Unknown
	if ns, name, ok := strings.Cut(svc, "/"); ok {
		l.ServiceName, l.ServiceNamespace = name, ns
		l.Service = name + "." + ns + ".svc.cluster.local"
		if t.meta != nil {
			if s := t.meta.Service(svc); s != nil && s.GetHostname() != "" {
				l.Service = s.GetHostname()
			}
		}
	}
	return l
}

func (t *Telemetry) source(src proxy.Source) Peer {
	p := Peer{Workload: Unknown, Namespace: Unknown, Principal: Unknown, CanonicalService: Unknown, CanonicalRevision: Unknown}
	id := src.Identity
	if id.TrustDomain == "" {
		return p
	}
	p.Principal, p.Namespace = id.String(), id.Namespace
	if t.meta != nil && src.Address.IsValid() {
		if w := t.meta.WorkloadByAddress(src.Address); w != nil && w.GetIdentity() == p.Principal {
			return peerOf(w)
		}
	}
	bg := parseBaggage(src.Header.Get("Baggage"))
	if bg["k8s.namespace.name"] == id.Namespace {
		p.Workload = or(bg["k8s.workload.name"], Unknown)
		p.CanonicalService = or(bg["service.name"], p.Workload)
		p.CanonicalRevision = or(bg["service.version"], "latest")
	}
	return p
}

func (t *Telemetry) destination(workload string) Peer {
	if t.meta != nil && workload != "" {
		if w := t.meta.Workload(workload); w != nil {
			return peerOf(w)
		}
	}
	p := Peer{Workload: Unknown, Namespace: Unknown, Principal: Unknown, CanonicalService: Unknown, CanonicalRevision: Unknown}
	if ns, _, ok := strings.Cut(workload, "/"); ok {
		p.Namespace = ns
	}
	return p
}

func peerOf(w *configv1alpha1.Workload) Peer {
	_, pod, _ := strings.Cut(w.GetName(), "/")
	name := or(w.GetWorkloadName(), or(pod, Unknown))
	return Peer{
		Workload:          name,
		Namespace:         or(w.GetNamespace(), Unknown),
		Principal:         or(w.GetIdentity(), Unknown),
		CanonicalService:  or(w.GetCanonicalName(), name),
		CanonicalRevision: or(w.GetCanonicalRevision(), "latest"),
	}
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// protocol is "grpc" for gRPC requests, else "http".
func protocol(r *http.Request) string {
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return "grpc"
	}
	return "http"
}

// parseBaggage parses a W3C baggage header into its keys and values
// (properties dropped, values percent-decoding left out: Ambit's ztunnel
// writes plain Kubernetes names).
func parseBaggage(v string) map[string]string {
	m := map[string]string{}
	if v == "" {
		return m
	}
	for member := range strings.SplitSeq(v, ",") {
		kv, _, _ := strings.Cut(member, ";")
		k, val, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		m[strings.TrimSpace(k)] = strings.TrimSpace(val)
	}
	return m
}

// log writes the access-log line of a request.
func (t *Telemetry) log(r *http.Request, res *proxy.Result, l RequestLabels) {
	authz := "none"
	if res.Authz.Evaluated {
		authz = "allow"
		if !res.Authz.Allow {
			authz = "deny"
		}
	}
	src := ""
	if res.Source.Address.IsValid() {
		src = res.Source.Address.String()
	}
	if t.accessJSON != nil {
		ln := t.accessJSON.start("request")
		ln.str("method", r.Method)
		ln.str("path", r.URL.Path)
		ln.str("protocol", r.Proto)
		ln.str("service", res.Service)
		ln.uint("port", uint64(res.Port))
		ln.str("route", res.Route)
		ln.str("backend", res.Backend)
		ln.str("endpoint", res.Endpoint)
		ln.int("code", int64(res.Code))
		ln.str("grpc_status", res.GRPCStatus)
		ln.str("flags", l.Flags)
		ln.int("attempts", int64(res.Attempts))
		ln.int("request_bytes", res.BytesReceived)
		ln.int("response_bytes", res.BytesSent)
		ln.int("duration", int64(res.Duration))
		ln.str("source_address", src)
		ln.str("source_principal", l.Source.Principal)
		ln.str("source_workload", l.Source.Workload)
		ln.str("destination_principal", l.Destination.Principal)
		ln.str("authz", authz)
		ln.str("authz_policy", res.Authz.Policy)
		ln.str("trace_id", tracing.TraceID(r.Context()))
		ln.end()
		return
	}
	t.access.LogAttrs(r.Context(), slog.LevelInfo, "request",
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.String("protocol", r.Proto),
		slog.String("service", res.Service),
		slog.Uint64("port", uint64(res.Port)),
		slog.String("route", res.Route),
		slog.String("backend", res.Backend),
		slog.String("endpoint", res.Endpoint),
		slog.Int("code", res.Code),
		slog.String("grpc_status", res.GRPCStatus),
		slog.String("flags", res.FlagString()),
		slog.Int("attempts", res.Attempts),
		slog.Int64("request_bytes", res.BytesReceived),
		slog.Int64("response_bytes", res.BytesSent),
		slog.Duration("duration", res.Duration),
		slog.String("source_address", src),
		slog.String("source_principal", l.Source.Principal),
		slog.String("source_workload", l.Source.Workload),
		slog.String("destination_principal", l.Destination.Principal),
		slog.String("authz", authz),
		slog.String("authz_policy", res.Authz.Policy),
		slog.String("trace_id", tracing.TraceID(r.Context())),
	)
}
