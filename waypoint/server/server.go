package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/waypoint/authz"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
	"github.com/ambit-mesh/ambit/waypoint/tracing"
)

// Config configures a Server.
type Config struct {
	// Identity is the waypoint's SPIFFE ID: the certificate it presents to
	// clients and the source of its tunnels to endpoints. Required.
	Identity identity.SPIFFEID
	// Cert and Roots are the waypoint's certificate and trust bundle, e.g.
	// Manager.Cert(Identity) and Manager.Roots(). Required.
	Cert  identity.CertSource
	Roots identity.RootsSource
	// Store is the configuration. Required.
	Store *Store
	// HBONEPort is the port of the endpoints' HBONE servers. Zero means
	// hbone.Port (15008).
	HBONEPort uint16
	// DialContext opens the TCP connections to endpoints' HBONE servers.
	// Nil means a zero net.Dialer.
	DialContext func(ctx context.Context, network, address string) (net.Conn, error)
	// Gateway is the waypoint's Gateway, "<namespace>/<name>": the target
	// that WAYPOINT-scoped authorization policies name. Empty applies every
	// WAYPOINT-scoped policy the store holds.
	Gateway string
	// OnResult is the proxy's OnResult hook (metrics, access log); may be
	// nil. It runs after the Tracer has finished the request's span.
	OnResult func(*http.Request, *proxy.Result)
	// OnConn reports TCP tunnels passed through (ports whose protocol is
	// TCP, or sniffed as not HTTP): with done=false once the tunnel is joined to an
	// endpoint, with done=true when it ends or was refused. May be nil.
	OnConn func(res *proxy.ConnResult, done bool)
	// SniffTimeout bounds the wait for a tunnel's first bytes on a port
	// whose protocol nothing declares (PROTOCOL_UNSPECIFIED); when it
	// passes the tunnel is TCP. Zero means DefaultSniffTimeout.
	SniffTimeout time.Duration
	// Tracer creates a span per request and per try and propagates trace
	// headers; nil leaves trace headers as the client sent them.
	Tracer *tracing.Tracer
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Server is the waypoint's HBONE front and back end around a proxy.Proxy.
type Server struct {
	cfg    Config
	log    *slog.Logger
	proxy  *proxy.Proxy
	hbone  *hbone.Server
	http   *http.Server
	ln     *streamListener
	dialer *hbone.Dialer

	mu         sync.Mutex
	transports map[transportKey]upstreamTransport
	byTarget   map[targetKey]upstreamTransport // transports by the proxy's Target, cleared with each store generation
	prunedGen  uint64                          // store generation the transports were pruned at

	connMu    sync.Mutex
	conns     map[*streamConn]http.ConnState // the h2c server's tunnels
	h1conns   map[*h1conn]struct{}           // the HTTP/1.x tunnels
	h1Closing atomic.Bool                    // Shutdown: HTTP/1.x tunnels close after their answer

	httpHandler http.Handler // the handler chain of both servers

	serveOnce sync.Once
	httpDone  chan struct{}
	tcpNext   atomic.Uint64 // round robin over TCP endpoints
}

// targetKey is a proxy.Target as the proxy names it.
type targetKey struct {
	address, workload string
	http2             bool
}

// upstreamTransport is a pooled transport to one endpoint.
type upstreamTransport interface {
	http.RoundTripper
	CloseIdleConnections()
}

type transportKey struct {
	dst      identity.SPIFFEID
	endpoint netip.AddrPort
	http2    bool
}

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if err := cfg.Identity.Validate(); err != nil {
		return nil, fmt.Errorf("waypoint identity: %w", err)
	}
	if cfg.Cert == nil || cfg.Roots == nil || cfg.Store == nil {
		return nil, errors.New("waypoint server: Cert, Roots and Store are required")
	}
	if cfg.HBONEPort == 0 {
		cfg.HBONEPort = hbone.Port
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{cfg: cfg, log: log, transports: map[transportKey]upstreamTransport{}, byTarget: map[targetKey]upstreamTransport{},
		httpDone: make(chan struct{}),
		conns:    map[*streamConn]http.ConnState{}, h1conns: map[*h1conn]struct{}{}}
	s.dialer = &hbone.Dialer{
		TLSConfig: func(src, dst identity.SPIFFEID) (*tls.Config, error) {
			return identity.ClientConfig(cfg.Cert, cfg.Roots, dst), nil
		},
		DialContext: cfg.DialContext,
		Logger:      log.With("component", "hbone-client"),
	}
	s.proxy = &proxy.Proxy{
		Table:     cfg.Store.Table,
		Resolver:  cfg.Store,
		Transport: s.transport,
		Authorize: s.authorize,
		OnResult:  s.onResult,
		Logger:    log.With("component", "proxy"),
	}
	cfg.Store.setGateway(cfg.Gateway)
	s.ln = newStreamListener(nil)
	var h http.Handler = s.proxy
	if cfg.Tracer != nil {
		h = cfg.Tracer.Handler(h)
	}
	s.httpHandler = s.drainMark(h)
	s.http = proxy.NewServer(s.httpHandler)
	s.http.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if sc, ok := c.(*streamConn); ok {
			if sc.dest.workload != nil {
				ctx = proxy.WithWorkloadDestination(ctx, *sc.dest.workload)
			} else {
				ctx = proxy.WithDestination(ctx, sc.dest.service, sc.dest.port)
			}
			ctx = proxy.WithSource(ctx, sc.source)
		}
		return ctx
	}
	s.http.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	s.http.ConnState = s.trackConn
	cfg.Store.addOnExpire(s.closeIdleUnserved)
	s.hbone = &hbone.Server{
		Handler:   s.serveStream,
		TLSConfig: identity.ServerConfig(cfg.Cert, cfg.Roots, nil),
		Logger:    log.With("component", "hbone-server"),
	}
	return s, nil
}

// Proxy returns the L7 engine.
func (s *Server) Proxy() *proxy.Proxy { return s.proxy }

// Serve accepts HBONE connections on l (the waypoint's port 15008) until
// l fails or the server is closed. It returns hbone.ErrServerClosed after
// Shutdown or Close.
func (s *Server) Serve(l net.Listener) error {
	s.startHTTP()
	return s.hbone.Serve(l)
}

func (s *Server) startHTTP() {
	s.serveOnce.Do(func() {
		go func() {
			defer close(s.httpDone)
			_ = s.http.Serve(s.ln)
		}()
	})
}

// serveStream is the hbone Handler. The tunnel's authority is a service
// VIP:port or, for a workload whose waypoint this is (ambit.dev/waypoint-for
// workload or all), a pod IP:port. The port's protocol decides: TCP is
// passed through; HTTP and gRPC go to the HTTP server; a port whose
// protocol nothing declares is sniffed (HTTP/2 preface, HTTP/1.x request
// line, else TCP), the bytes read replayed to whichever handles it.
func (s *Server) serveStream(st *hbone.Stream) {
	dst := st.Authority()
	d := destination{port: uint32(dst.Port())}
	var protocol configv1alpha1.ServiceRoutes_Protocol
	if svc, ok := s.cfg.Store.ServiceByVIP(dst.Addr()); ok {
		d.service = svc
		// A port missing from the table goes to the HTTP server, which
		// answers 404 NR.
		protocol = configv1alpha1.ServiceRoutes_PROTOCOL_HTTP
		if rs := s.cfg.Store.Table().Service(svc, d.port); rs != nil {
			protocol = rs.Protocol
		}
	} else if w := s.cfg.Store.WorkloadByAddress(dst.Addr()); w != nil {
		if gw := w.GetWaypoint().GetGateway(); gw == "" || (s.cfg.Gateway != "" && gw != s.cfg.Gateway) {
			_ = st.Reject(http.StatusNotFound, "workload "+w.GetName()+" does not use this waypoint")
			return
		}
		d.workload = &proxy.Endpoint{Address: netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()).String(), Workload: w.GetName()}
		protocol = s.cfg.Store.workloadProtocol(dst.Addr(), d.port)
	} else {
		_ = st.Reject(http.StatusNotFound, "no service or workload at "+dst.String())
		return
	}
	if protocol == configv1alpha1.ServiceRoutes_PROTOCOL_TCP {
		s.serveTCP(st, d, nil, false)
		return
	}
	if err := st.Accept(); err != nil {
		return
	}
	var pre []byte
	kind := sniffMore
	if protocol == configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED {
		timeout := s.cfg.SniffTimeout
		if timeout <= 0 {
			timeout = DefaultSniffTimeout
		}
		k, b, err := sniff(st, timeout)
		kind = k
		if err != nil {
			_ = st.Reset()
			return
		}
		s.log.Debug("tunnel protocol sniffed", "destination", dst.String(), "protocol", kind.String())
		if kind == sniffTCP {
			s.serveTCP(st, d, b, true)
			return
		}
		pre = b
	}
	c := &streamConn{Stream: st, dest: d, source: s.sourceOf(st), pre: pre, done: make(chan struct{})}
	if kind != sniffHTTP2 && !s.serveH1(c, kind == sniffHTTP1) {
		return
	}
	if !s.ln.push(c) {
		_ = st.Reset()
		return
	}
	select {
	case <-c.done:
	case <-st.Context().Done():
	}
}

// destination is what a tunnel was sent to: a service port, or a workload
// (workload set, service empty).
type destination struct {
	service  string
	port     uint32
	workload *proxy.Endpoint
}

// sourceOf describes a tunnel's client: its peer identity (verified by
// this waypoint) and certificate, its address (the Forwarded for= element the sending
// ztunnel adds, else the connection's remote address) and the CONNECT
// headers.
func (s *Server) sourceOf(st *hbone.Stream) proxy.Source {
	src := proxy.Source{Identity: st.Peer(), VerifiedBy: s.cfg.Identity, Header: st.Header()}
	if cert := st.PeerCertificate(); cert != nil {
		sum := sha256.Sum256(cert.Raw)
		src.CertHash, src.CertSubject = hex.EncodeToString(sum[:]), cert.Subject.String()
	}
	if ip, ok := forwardedFor(st.Header()); ok {
		src.Address = ip
	} else if ap, err := netip.ParseAddrPort(st.RemoteAddr().String()); err == nil {
		src.Address = ap.Addr().Unmap()
	}
	return src
}

// authorize is the proxy's Authorize hook: the store's policies (for a
// draining service port, those in force when its drain started), evaluated
// for this waypoint's Gateway. Until the first Authorization update
// (from the controller or the state file) every request is denied: the
// waypoint fails closed rather than let through what a policy it has not
// seen yet would refuse.
func (s *Server) authorize(r *http.Request, service string, port uint32) proxy.AuthzDecision {
	policies := s.cfg.Store.policiesFor(service, port)
	if policies == nil {
		s.log.DebugContext(r.Context(), "request denied: authorization policies not received yet", "service", service, "port", port)
		return proxy.AuthzDecision{}
	}
	src := proxy.SourceFromContext(r.Context())
	d := policies.Evaluate(s.cfg.Gateway, authz.Request{
		Peer: src.Identity, Addr: src.Address, Service: service, Port: port,
		Method: r.Method, Path: r.URL.Path, Header: r.Header,
	})
	if !d.Allow {
		s.log.DebugContext(r.Context(), "request denied", "service", service, "port", port, "reason", d.Reason)
	}
	return proxy.AuthzDecision{Allow: d.Allow, Policy: d.Policy}
}

func (s *Server) onResult(r *http.Request, res *proxy.Result) {
	if s.cfg.Tracer != nil {
		s.cfg.Tracer.Finish(r, res)
	}
	if s.cfg.OnResult != nil {
		s.cfg.OnResult(r, res)
	}
}

// transport is the proxy's Transport hook: the pooled HBONE transport of
// the target, wrapped by the tracer (a span per try).
func (s *Server) transport(t proxy.Target) http.RoundTripper {
	rt := s.hboneTransport(t)
	if s.cfg.Tracer != nil {
		return s.cfg.Tracer.Transport(rt, t)
	}
	return rt
}

// hboneTransport returns one pooled http.Transport per (endpoint identity,
// endpoint, protocol), dialling through HBONE. It is called on every try:
// the transport of a target is looked up once per store generation.
func (s *Server) hboneTransport(t proxy.Target) http.RoundTripper {
	tk := targetKey{address: t.Endpoint.Address, workload: t.Endpoint.Workload, http2: t.HTTP2}
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.cfg.Store.generation(); g != s.prunedGen {
		s.pruneLocked()
	}
	if tr := s.byTarget[tk]; tr != nil {
		return tr
	}
	rt := s.newHBONETransportLocked(t)
	if tr, ok := rt.(upstreamTransport); ok {
		s.byTarget[tk] = tr
	}
	return rt
}

// newHBONETransportLocked finds or makes the pooled transport of t.
func (s *Server) newHBONETransportLocked(t proxy.Target) http.RoundTripper {
	ep, err := netip.ParseAddrPort(t.Endpoint.Address)
	if err != nil {
		return errTransport{fmt.Errorf("endpoint %q: %w", t.Endpoint.Address, err)}
	}
	idStr, err := s.cfg.Store.workloadIdentity(t.Endpoint.Workload)
	if err != nil {
		return errTransport{err}
	}
	dst, err := identity.ParseSPIFFEID(idStr)
	if err != nil {
		return errTransport{fmt.Errorf("workload %s identity: %w", t.Endpoint.Workload, err)}
	}
	k := transportKey{dst: dst, endpoint: ep, http2: t.HTTP2}
	if tr := s.transports[k]; tr != nil {
		return tr
	}
	req := hbone.Request{
		Source:      s.cfg.Identity,
		Destination: dst,
		Address:     netip.AddrPortFrom(ep.Addr(), s.cfg.HBONEPort),
		Authority:   ep,
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return s.dialer.Dial(ctx, req)
		},
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
	var up upstreamTransport = tr
	if t.HTTP2 {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	} else {
		// Requests with their body in memory skip net/http's per-connection
		// goroutines; the rest (streamed bodies, 100-continue) use tr.
		up = &proxy.H1Transport{
			Dial: func(ctx context.Context) (net.Conn, error) {
				return s.dialer.Dial(ctx, req)
			},
			Fallback:    tr,
			MaxIdle:     tr.MaxIdleConnsPerHost,
			IdleTimeout: tr.IdleConnTimeout,
		}
	}
	s.transports[k] = up
	return up
}

// pruneLocked drops the transports of endpoints the configuration no longer
// has (requests in flight on them finish; their idle tunnels close).
func (s *Server) pruneLocked() {
	gen, live := s.cfg.Store.upstreams()
	for k, tr := range s.transports {
		if !live[upstream{ip: k.endpoint.Addr(), id: k.dst}] {
			tr.CloseIdleConnections()
			delete(s.transports, k)
		}
	}
	clear(s.byTarget) // identities may have changed
	s.prunedGen = gen
}

// errTransport fails every request with err (the proxy answers 503 UF).
type errTransport struct{ err error }

func (e errTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_ = r.Body.Close()
	}
	return nil, e.err
}

// Shutdown stops accepting tunnels and waits for the open ones to end, or
// ctx to be done.
func (s *Server) Shutdown(ctx context.Context) error {
	// The HBONE side sends GOAWAY and waits for the tunnels, which are
	// kept open by the HTTP server's keep-alive connections until its own
	// Shutdown closes the idle ones: run both at once.
	herr := make(chan error, 1)
	go func() { herr <- s.http.Shutdown(ctx) }()
	s.h1Closing.Store(true)
	s.closeIdleH1(nil)
	err := s.hbone.Shutdown(ctx)
	if e := <-herr; err == nil {
		err = e
	}
	s.closeUpstream()
	return err
}

// Close closes every tunnel at once.
func (s *Server) Close() error {
	err := s.hbone.Close()
	_ = s.http.Close()
	_ = s.ln.Close()
	s.closeUpstream()
	return err
}

func (s *Server) closeUpstream() {
	s.mu.Lock()
	for _, tr := range s.transports {
		tr.CloseIdleConnections()
	}
	s.mu.Unlock()
	_ = s.dialer.Close()
}
