package proxy

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// Response flags, as Envoy and Istio's access logs and metrics spell them
// (the response_flags label).
const (
	// FlagNoRoute: no rule matched, or the service port is unknown (404).
	FlagNoRoute = "NR"
	// FlagNoCluster: the chosen backendRef did not resolve, or the rule has
	// no valid backend (500).
	FlagNoCluster = "NC"
	// FlagNoHealthyUpstream: the backend has no endpoint, or every one is
	// ejected (503).
	FlagNoHealthyUpstream = "UH"
	// FlagUpstreamOverflow: the backend's request limits are reached (503).
	FlagUpstreamOverflow = "UO"
	// FlagUpstreamTimeout: the request or per-try timeout expired (504).
	FlagUpstreamTimeout = "UT"
	// FlagUpstreamConnectionFailure: the endpoint could not be reached (503).
	FlagUpstreamConnectionFailure = "UF"
	// FlagUpstreamReset: the endpoint reset the request or the response
	// body broke off (503, or a truncated response).
	FlagUpstreamReset = "UR"
	// FlagRetryLimitExceeded: the answer is a retriable failure that was not
	// retried further because the attempts or the retry budget ran out.
	FlagRetryLimitExceeded = "URX"
	// FlagDownstreamTermination: the client went away (code 499, nothing
	// written).
	FlagDownstreamTermination = "DC"
	// FlagFaultAbort: a fault filter aborted the request.
	FlagFaultAbort = "FI"
	// FlagFaultDelay: a fault filter delayed the request.
	FlagFaultDelay = "DI"
	// FlagDenied: an authorization policy denied the request (403). Ambit's
	// ztunnel reports the same flag for connections it refuses.
	FlagDenied = "DENY"
)

// StatusClientClosedRequest is the code recorded when the client went
// away before the answer (nginx's 499); it is never written.
const StatusClientClosedRequest = 499

// Result describes one request after the proxy answered it.
type Result struct {
	// Service and Port the request was sent to.
	Service string
	Port    uint32
	// Route is the rule's route name; empty for the default route or when
	// nothing matched.
	Route string
	// Backend is "<namespace>/<name>:<port>" of the chosen backend; empty
	// when none was chosen.
	Backend string
	// Endpoint is the address of the last endpoint tried, and Workload its
	// Endpoint.Workload; empty when none.
	Endpoint, Workload string
	// Attempts is the number of tries sent to endpoints (0 when none).
	Attempts int
	// Code is the HTTP status sent (499 when the client went away).
	Code int
	// Flags are the response flags, in the order they were raised.
	Flags []string
	// BytesReceived of the request body and BytesSent of the response body.
	BytesReceived, BytesSent int64
	// Start of the request and Duration until the answer was written.
	Start    time.Time
	Duration time.Duration
	// Source is the client as the tunnel identified it (zero when the
	// request did not arrive through one).
	Source Source
	// Authz is the authorization decision; zero when no Authorize hook is
	// set.
	Authz AuthzDecision
	// GRPCStatus is the grpc-status the client received, in the response
	// headers (trailers-only answers) or trailers; empty when there was
	// none.
	GRPCStatus string
}

// AuthzDecision is the outcome of the Authorize hook.
type AuthzDecision struct {
	// Evaluated is true when the hook ran.
	Evaluated bool
	// Allow is the verdict.
	Allow bool
	// Policy names what decided ("<ns>/<name>" of the matching DENY or
	// ALLOW policy, or the ALLOW policies none of which matched); empty when
	// no policy applied.
	Policy string
}

// Source is the client of a request: the peer of the HBONE tunnel it
// arrived in.
type Source struct {
	// Identity is the SPIFFE ID the tunnel's peer certificate proved; zero
	// when unknown.
	Identity identity.SPIFFEID
	// VerifiedBy is the identity of the proxy that verified that
	// certificate (the waypoint's own); zero when unknown.
	VerifiedBy identity.SPIFFEID
	// CertHash is the hex SHA-256 of the DER certificate that proved
	// Identity, and CertSubject its subject (empty for the mesh's workload
	// certificates); X-Forwarded-Client-Cert's Hash and Subject. CertHash
	// is "" when unknown.
	CertHash, CertSubject string
	// Address is the client's IP: the tunnel's Forwarded for= element when
	// the sending ztunnel set one, else the tunnel connection's remote
	// address. Invalid when unknown.
	Address netip.Addr
	// Header holds the tunnel's CONNECT request headers (baggage,
	// forwarded, traceparent); nil when none. Read only.
	Header http.Header
}

type sourceKey struct{}

// WithSource returns a context saying that requests on it come from src;
// the HBONE listener sets it per tunnel.
func WithSource(ctx context.Context, src Source) context.Context {
	return context.WithValue(ctx, sourceKey{}, src)
}

// SourceFromContext returns what WithSource stored (zero if nothing).
func SourceFromContext(ctx context.Context) Source {
	s, _ := ctx.Value(sourceKey{}).(Source)
	return s
}

// FlagString joins the flags with ",", or returns "-" when there is none,
// as Envoy's access log does.
func (r *Result) FlagString() string {
	if len(r.Flags) == 0 {
		return "-"
	}
	return strings.Join(r.Flags, ",")
}

func (r *Result) flag(f string) {
	for _, x := range r.Flags {
		if x == f {
			return
		}
	}
	r.Flags = append(r.Flags, f)
}

// Endpoint is one address serving a backend service.
type Endpoint struct {
	// Address is "<ip>:<port>" (the endpoint's target port).
	Address string
	// Workload names the workload ("<namespace>/<pod>"), for telemetry;
	// may be empty.
	Workload string
}

// Resolver returns the ready endpoints of a service port. It is called on
// every try, so it should read a snapshot, not block.
type Resolver interface {
	Endpoints(ctx context.Context, service string, port uint32) []Endpoint
}

// ResolverFunc adapts a function to a Resolver.
type ResolverFunc func(ctx context.Context, service string, port uint32) []Endpoint

// Endpoints calls f.
func (f ResolverFunc) Endpoints(ctx context.Context, service string, port uint32) []Endpoint {
	return f(ctx, service, port)
}

// Target is what a Transport connects to.
type Target struct {
	// Service ("<namespace>/<name>") and Port of the backend.
	Service string
	Port    uint32
	// Endpoint chosen.
	Endpoint Endpoint
	// HTTP2 is true when the request came over HTTP/2, and so goes upstream
	// over HTTP/2 (gRPC needs it); false is HTTP/1.1.
	HTTP2 bool
}

type destinationKey struct{}

type destination struct {
	service string
	port    uint32
}

// WithDestination returns a context saying that the request was sent to
// service:port; the HBONE listener sets it from the tunnel's authority.
func WithDestination(ctx context.Context, service string, port uint32) context.Context {
	return context.WithValue(ctx, destinationKey{}, destination{service, port})
}

// DestinationFromContext returns what WithDestination stored.
func DestinationFromContext(ctx context.Context) (service string, port uint32, ok bool) {
	d, ok := ctx.Value(destinationKey{}).(destination)
	return d.service, d.port, ok
}

type workloadDestinationKey struct{}

// WithWorkloadDestination returns a context saying that the request was
// sent to a workload rather than a service: the tunnel's authority was the
// pod's IP:port (ep.Address) and ep.Workload names the pod. Such a request
// has no service routes: after authorization it goes to that endpoint as it
// is. A service destination (WithDestination) takes precedence.
func WithWorkloadDestination(ctx context.Context, ep Endpoint) context.Context {
	return context.WithValue(ctx, workloadDestinationKey{}, ep)
}

// WorkloadDestinationFromContext returns what WithWorkloadDestination stored.
func WorkloadDestinationFromContext(ctx context.Context) (Endpoint, bool) {
	ep, ok := ctx.Value(workloadDestinationKey{}).(Endpoint)
	return ep, ok
}

// DefaultTransport reaches endpoints with plain HTTP/1.1, or HTTP/2 with
// prior knowledge (h2c) when Target.HTTP2 is set. It is what a nil
// Proxy.Transport uses.
func DefaultTransport(t Target) http.RoundTripper {
	if t.HTTP2 {
		return defaultH2C
	}
	if tr, ok := defaultH1.Load(t.Endpoint.Address); ok {
		return tr.(*H1Transport)
	}
	addr := t.Endpoint.Address
	tr, _ := defaultH1.LoadOrStore(addr, &H1Transport{
		Dial: func(ctx context.Context) (net.Conn, error) {
			return defaultDialer.DialContext(ctx, "tcp", addr)
		},
		Fallback: defaultH1Fallback,
	})
	return tr.(*H1Transport)
}

var (
	defaultDialer     = &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	defaultH1         sync.Map // endpoint address -> *H1Transport
	defaultH1Fallback = newTransport(false)
	defaultH2C        = newTransport(true)
)

func newTransport(h2c bool) *http.Transport {
	t := &http.Transport{
		DialContext:           defaultDialer.DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		// Pass bodies through as they are: no Accept-Encoding of our own,
		// no transparent decompression.
		DisableCompression: true,
	}
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		t.Protocols = &p
	}
	return t
}

// NewServer returns an http.Server for h that serves HTTP/1.1 and HTTP/2
// with prior knowledge (h2c) on plaintext connections, as the streams
// inside HBONE tunnels arrive.
func NewServer(h http.Handler) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{Handler: h, Protocols: &p, ReadHeaderTimeout: 30 * time.Second}
}

// ConnResult describes one TCP tunnel the waypoint passed through to an
// endpoint (a service port without an L7 protocol).
type ConnResult struct {
	// Service and Port the tunnel was sent to.
	Service string
	Port    uint32
	// Source is the tunnel's client.
	Source Source
	// Endpoint is the address the tunnel was joined to, Workload its
	// workload; empty when none was reached.
	Endpoint, Workload string
	// Authz is the L4 authorization decision.
	Authz AuthzDecision
	// Flags: "DENY" (refused by policy, 403), "UH" (no endpoint, 503),
	// "UF" (the endpoint's tunnel failed, 503); empty when connected.
	Flags string
	// Opened is true once the tunnel was joined to an endpoint.
	Opened bool
	// BytesReceived from the client and BytesSent to it; set when the
	// tunnel ends.
	BytesReceived, BytesSent int64
	// Start of the tunnel and Duration until it ended.
	Start    time.Time
	Duration time.Duration
}
