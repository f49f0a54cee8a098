package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/waypoint/filter"
	"github.com/ambit-mesh/ambit/waypoint/resilience"
	"github.com/ambit-mesh/ambit/waypoint/route"
)

// DefaultMaxRetryBody is how much of a request body the proxy buffers so
// that it can retry or mirror the request.
const DefaultMaxRetryBody = 64 << 10

// maxMirrors bounds the mirrored requests in flight; more are dropped.
const maxMirrors = 256

// Proxy is the waypoint's L7 request engine. Its fields are hooks; each
// says what nil (or zero) means. Set them before the first request and do
// not change them after. A Proxy is safe for concurrent use.
type Proxy struct {
	// Table returns the current routing table (the xDS handler swaps it).
	// nil, or a nil table: every request answers 404 "NR".
	Table func() *route.Table

	// Destination returns the service and port a request was sent to. nil
	// means DestinationFromContext. A request without destination answers
	// 404 "NR".
	Destination func(*http.Request) (service string, port uint32, ok bool)

	// Resolver returns the endpoints of a backend. nil: no backend has an
	// endpoint (503 "UH").
	Resolver Resolver

	// Transport returns the RoundTripper that reaches an endpoint; it is
	// called on every try, so it should return a pooled transport. nil
	// means DefaultTransport (plain HTTP/1.1 or h2c).
	Transport func(Target) http.RoundTripper

	// Authorize decides whether a request to service:port may proceed. It
	// runs after the destination is known and before routing; a request it
	// refuses is answered 403 with "RBAC: access denied" (naming the policy
	// when the decision has one) and flag "DENY". nil allows everything.
	Authorize func(r *http.Request, service string, port uint32) AuthzDecision

	// OnResult is called once per request after the answer is written (or
	// abandoned), on the request's goroutine. nil: nothing is reported.
	OnResult func(*http.Request, *Result)

	// Rand returns uniform numbers in [0, 1) for weighted picks, fault and
	// mirror percentages and backoff jitter; it must be safe for concurrent
	// use. nil means math/rand/v2.Float64.
	Rand func() float64

	// Now is the clock of outlier detection, retry budgets and Results.
	// nil means time.Now. (Timeouts always use the real clock.)
	Now func() time.Time

	// Sleep waits for fault delays and retry backoff, returning early with
	// ctx's error. nil waits on a timer.
	Sleep func(ctx context.Context, d time.Duration) error

	// MaxRetryBody is the largest request body buffered for retries and
	// mirrors; a larger body streams through and its request is neither
	// retried nor mirrored. 0 means DefaultMaxRetryBody; negative never
	// buffers.
	MaxRetryBody int64

	// NewBudget returns the retry budget of a backend service. nil gives
	// each backend a zero resilience.Budget (20% over 10s, 3 concurrent).
	NewBudget func(route.Key) *resilience.Budget

	// Logger receives debug and warning logs. nil means slog.Default().
	Logger *slog.Logger

	stateMu sync.Mutex
	states  map[route.Key]*backendState
	direct  *resilience.Budget // of workload destinations
	mirrors chan struct{}
	once    sync.Once
}

func (p *Proxy) init() {
	p.once.Do(func() {
		p.states = map[route.Key]*backendState{}
		p.mirrors = make(chan struct{}, maxMirrors)
	})
}

func (p *Proxy) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Proxy) draw() float64 {
	if p.Rand != nil {
		return p.Rand()
	}
	return rand.Float64()
}

func (p *Proxy) log() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.Default()
}

func (p *Proxy) sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	if p.Sleep != nil {
		return p.Sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *Proxy) transport(t Target) http.RoundTripper {
	if p.Transport != nil {
		return p.Transport(t)
	}
	return DefaultTransport(t)
}

func (p *Proxy) endpoints(ctx context.Context, service string, port uint32) []Endpoint {
	if p.Resolver == nil {
		return nil
	}
	return p.Resolver.Endpoints(ctx, service, port)
}

// exchange is the state of one request through the proxy.
type exchange struct {
	p      *Proxy
	w      *countingWriter
	in     *http.Request // the client's request
	out    *http.Request // what goes upstream
	res    *Result
	rule   *route.Rule
	be     *route.Backend
	prefix string // the rule's PathPrefix value, for ReplacePrefixMatch
	body   []byte // buffered request body; nil when not buffered
	// replayable is true when out's body can be sent again (buffered or empty).
	replayable bool
	// upgrade is the protocol an HTTP/1.1 request asks to switch to
	// (Connection: Upgrade, Upgrade: websocket), or "".
	upgrade string
	// stopTimeout ends the route's request timeout once an upgrade is
	// answered: it bounds the wait for the 101, not the session.
	stopTimeout func() bool
	// upSent and upRecv count an upgraded session's bytes.
	upSent, upRecv int64
}

// ServeHTTP routes and forwards one request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	p.init()
	x := &exchange{p: p, w: &countingWriter{ResponseWriter: w}, in: req, res: &Result{Start: p.now(), Source: SourceFromContext(req.Context())}}
	normalizePath(req)
	body := &countingBody{ReadCloser: req.Body}
	if req.Body != nil && req.Body != http.NoBody {
		req.Body = body
	}
	defer func() {
		x.res.BytesReceived, x.res.BytesSent = body.n+x.upRecv, x.w.n+x.upSent
		if x.res.Code == 0 {
			x.res.Code = x.w.code
		}
		x.res.Duration = p.now().Sub(x.res.Start)
		x.res.GRPCStatus = grpcStatus(x.w.Header())
		if p.OnResult != nil {
			p.OnResult(req, x.res)
		}
	}()
	x.serve()
}

func (x *exchange) serve() {
	p, res := x.p, x.res
	dest := p.Destination
	if dest == nil {
		dest = func(r *http.Request) (string, uint32, bool) { return DestinationFromContext(r.Context()) }
	}
	svc, port, ok := dest(x.in)
	var direct *route.Rule
	if !ok {
		// A request to a workload (pod IP:port) rather than a service.
		if ep, wok := WorkloadDestinationFromContext(x.in.Context()); wok {
			if ap, err := netip.ParseAddrPort(ep.Address); err == nil {
				port, ok = uint32(ap.Port()), true
				direct = route.DirectRule(ep.Address, ep.Workload, port)
			}
		}
	}
	res.Service, res.Port = svc, port
	var table *route.Table
	if p.Table != nil {
		table = p.Table()
	}
	if !ok {
		x.fail(http.StatusNotFound, FlagNoRoute)
		return
	}
	if p.Authorize != nil {
		d := p.Authorize(x.in, svc, port)
		d.Evaluated = true
		res.Authz = d
		if !d.Allow {
			x.deny(d.Policy)
			return
		}
	}
	rule, ok := direct, direct != nil
	if direct == nil {
		// Consumer routes (GAMMA) apply by the client's namespace, from
		// the identity its tunnel proved.
		rule, ok = table.MatchFrom(x.in, svc, port, res.Source.Identity.Namespace)
	}
	if !ok {
		x.fail(http.StatusNotFound, FlagNoRoute)
		return
	}
	x.rule, res.Route = rule, rule.Name
	x.prefix, _ = rule.Match.PathPrefix()

	ctx := x.in.Context()
	if x.in.ProtoMajor == 1 && httpTokenContains(x.in.Header.Get("Connection"), "upgrade") {
		x.upgrade = x.in.Header.Get("Upgrade")
	}
	if rule.RequestTimeout > 0 {
		var cancel context.CancelFunc
		if x.upgrade == "" {
			ctx, cancel = context.WithTimeout(ctx, rule.RequestTimeout)
		} else {
			ctx, cancel = context.WithCancel(ctx)
			x.stopTimeout = time.AfterFunc(rule.RequestTimeout, cancel).Stop
		}
		defer cancel()
	}
	x.out = outgoing(ctx, x.in)
	if x.upgrade != "" {
		// Hop-by-hop, but the endpoint must see the request to switch.
		x.out.Header.Set("Connection", "Upgrade")
		x.out.Header.Set("Upgrade", x.upgrade)
	}

	if rd := rule.Filters.Redirect; rd != nil {
		x.applyRequestFilters(rule.Filters)
		x.w.Header().Set("Location", rd.Location(x.in, x.prefix, port))
		x.applyResponseHeaders(x.w.Header())
		x.w.WriteHeader(rd.StatusCode)
		return
	}
	x.applyRequestFilters(rule.Filters)
	if x.fault(ctx, rule.Filters.Fault) {
		return
	}
	x.be = rule.Pick(p.draw)
	if x.be == nil || x.be.Unresolved() {
		x.fail(http.StatusInternalServerError, FlagNoCluster)
		return
	}
	if x.be.Endpoint == "" {
		res.Backend = x.be.Key().String()
	}
	x.applyRequestFilters(x.be.Filters)
	if x.fault(ctx, x.be.Filters.Fault) {
		return
	}
	mirrors := append(append([]*filter.Mirror(nil), rule.Filters.Mirrors...), x.be.Filters.Mirrors...)
	canRetry := rule.Retry != nil && rule.Retry.MethodAllowed(x.in.Method) && x.upgrade == ""
	if x.upgrade != "" {
		mirrors = nil // a session cannot be sent twice
	}
	if err := x.bufferBody(ctx, canRetry || len(mirrors) > 0); err != nil {
		switch {
		case errors.Is(err, errBodyTimeout):
			x.fail(http.StatusGatewayTimeout, FlagUpstreamTimeout)
		case ctx.Err() != nil:
			x.ctxFailed(ctx)
		default:
			x.fail(http.StatusBadRequest, FlagDownstreamTermination)
		}
		return
	}
	for _, m := range mirrors {
		x.mirror(ctx, m)
	}
	x.forward(ctx)
}

// outgoing clones the client's request for upstream, without hop-by-hop
// headers (as httputil.ReverseProxy does).
func outgoing(ctx context.Context, in *http.Request) *http.Request {
	out := in.Clone(ctx)
	if in.ContentLength == 0 {
		out.Body = nil
	}
	out.RequestURI = ""
	out.Close = false
	removeHopHeaders(out.Header)
	// gRPC and other users of trailers need "TE: trailers" to reach the
	// endpoint.
	for _, v := range in.Header.Values("Te") {
		if httpTokenContains(v, "trailers") {
			out.Header.Set("Te", "trailers")
			break
		}
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header.Set("User-Agent", "") // do not send Go's default
	}
	addForwardedHeaders(out.Header, SourceFromContext(ctx))
	return out
}

// addForwardedHeaders tells the endpoint who the client is, which it cannot
// see otherwise (its connection comes from the waypoint): the client's
// address is appended to X-Forwarded-For (after any addresses the client
// sent, as reverse proxies do: the last one is the waypoint's own
// finding), and X-Forwarded-Proto is "http" unless the client said
// otherwise (the request was plaintext HTTP inside the tunnel; an ingress
// in front may have set "https"). X-Forwarded-Client-Cert is replaced by
// the verified identities (Envoy's SANITIZE_SET, the fields a sidecar mesh
// gives applications: By=<waypoint>;Hash=<client certificate's
// SHA-256>;Subject="<its subject>";URI=<client>), so a client cannot
// claim another identity through it. Route header filters run after this
// and may change or remove all three.
func addForwardedHeaders(h http.Header, src Source) {
	h.Del("X-Forwarded-Client-Cert")
	if src.Identity != (identity.SPIFFEID{}) {
		v := "URI=" + src.Identity.String()
		if src.CertHash != "" {
			v = "Hash=" + src.CertHash + ";Subject=" + xfccQuote(src.CertSubject) + ";" + v
		}
		if src.VerifiedBy != (identity.SPIFFEID{}) {
			v = "By=" + src.VerifiedBy.String() + ";" + v
		}
		h.Set("X-Forwarded-Client-Cert", v)
	}
	if src.Address.IsValid() {
		ip := src.Address.Unmap().String()
		if prior := h.Values("X-Forwarded-For"); len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		h.Set("X-Forwarded-For", ip)
	}
	if h.Get("X-Forwarded-Proto") == "" {
		h.Set("X-Forwarded-Proto", "http")
	}
}

// xfccQuote returns s as an X-Forwarded-Client-Cert value in double
// quotes, as Envoy writes Subject: a quote or backslash in it escaped with
// a backslash.
func xfccQuote(s string) string {
	if !strings.ContainsAny(s, `"\`) {
		return `"` + s + `"`
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// applyRequestFilters applies header modifiers, then the URL rewrite.
func (x *exchange) applyRequestFilters(c *filter.Chain) {
	for _, m := range c.Request {
		m.ApplyRequest(x.out)
	}
	c.Rewrite.Apply(x.out, x.prefix)
}

// applyResponseHeaders applies the rule's, then the backend's response
// header modifiers.
func (x *exchange) applyResponseHeaders(h http.Header) {
	if x.rule != nil {
		for _, m := range x.rule.Filters.Response {
			m.Apply(h)
		}
	}
	if x.be != nil {
		for _, m := range x.be.Filters.Response {
			m.Apply(h)
		}
	}
}

// fault applies a fault filter; it returns true when it answered.
func (x *exchange) fault(ctx context.Context, f *filter.Fault) bool {
	d := f.Decide(x.p.draw)
	if d.Delay > 0 {
		x.res.flag(FlagFaultDelay)
		if err := x.p.sleep(ctx, d.Delay); err != nil {
			x.ctxFailed(ctx)
			return true
		}
	}
	if d.Abort {
		x.res.flag(FlagFaultAbort)
		x.applyResponseHeaders(x.w.Header())
		f.WriteAbort(x.w)
		return true
	}
	return false
}

// smallBody is the largest request body of announced length that is read
// before the request goes upstream even when nothing needs it again: the
// upstream request then goes out in one write (headers and body share the
// upstream transport's 4 KiB write buffer), where a streamed body is a
// second write to the tunnel, and a second read and wake-up at the other
// end.
const smallBody = 3 << 10

// errBodyTimeout is bufferBody's error when the route's request timeout
// passed while the body was read.
var errBodyTimeout = errors.New("request timeout while reading the request body")

// bufferBody reads up to MaxRetryBody of the request body when want is
// set, so that the request can be retried and mirrored, and a body of
// announced length up to smallBody in any case, unless the client waits
// for "100 Continue" before sending it or MaxRetryBody is negative. A
// deadline of ctx (the route's request timeout) aborts the read.
func (x *exchange) bufferBody(ctx context.Context, want bool) error {
	if x.out.Body == nil {
		x.replayable = true
		return nil
	}
	limit := x.p.MaxRetryBody
	if limit == 0 {
		limit = DefaultMaxRetryBody
	}
	if limit < 0 || x.out.ContentLength > limit {
		return nil
	}
	if !want && (x.out.ContentLength <= 0 || x.out.ContentLength > smallBody || expectsContinue(x.in)) {
		return nil
	}
	stop := func() bool { return true }
	if _, ok := ctx.Deadline(); ok {
		// Without a deadline the read ends when the client goes away.
		rc := http.NewResponseController(x.w)
		stop = context.AfterFunc(ctx, func() { _ = rc.SetReadDeadline(time.Unix(1, 0)) })
	}
	orig := x.out.Body
	data, err := readAll(io.LimitReader(orig, limit+1), x.out.ContentLength)
	if fired := !stop(); fired && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return errBodyTimeout
	}
	if err != nil {
		return err
	}
	if int64(len(data)) > limit {
		x.out.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(data), orig), orig}
		return nil
	}
	x.body, x.replayable = data, true
	x.out.ContentLength = int64(len(data))
	x.out.Body = nil
	return nil
}

// expectsContinue reports whether the client waits for "100 Continue"
// before it sends the body.
func expectsContinue(r *http.Request) bool {
	for _, v := range r.Header.Values("Expect") {
		if strings.EqualFold(strings.TrimSpace(v), "100-continue") {
			return true
		}
	}
	return false
}

// readAll is io.ReadAll with a first buffer for size bytes (the request's
// Content-Length; -1 when unknown) and one more, so that a body of the
// announced size is read into a single allocation.
func readAll(r io.Reader, size int64) ([]byte, error) {
	if size < 0 || size >= DefaultMaxRetryBody {
		return io.ReadAll(r)
	}
	b := make([]byte, 0, size+1)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
	}
}

// fail answers with a status and flag of the proxy's own.
func (x *exchange) fail(code int, flag string) {
	if flag != "" {
		x.res.flag(flag)
	}
	x.applyResponseHeaders(x.w.Header())
	x.w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	x.w.Header().Set("X-Content-Type-Options", "nosniff")
	x.w.WriteHeader(code)
	_, _ = io.WriteString(x.w, http.StatusText(code)+"\n")
}

// deny answers 403 for an authorization policy, with Envoy's RBAC body
// and the deciding policy's name.
func (x *exchange) deny(policy string) {
	x.res.flag(FlagDenied)
	h := x.w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	x.w.WriteHeader(http.StatusForbidden)
	msg := "RBAC: access denied"
	if policy != "" {
		msg += " by " + policy
	}
	_, _ = io.WriteString(x.w, msg+"\n")
}

// grpcStatus returns the grpc-status of an answer: a response header
// (trailers-only) or a trailer.
func grpcStatus(h http.Header) string {
	if v := h.Get("Grpc-Status"); v != "" {
		return v
	}
	return h.Get(http.TrailerPrefix + "Grpc-Status")
}

// ctxFailed answers after ctx ended: 499 (nothing written) when the client
// went away, else 504 "UT".
func (x *exchange) ctxFailed(ctx context.Context) {
	if x.in.Context().Err() != nil {
		x.res.flag(FlagDownstreamTermination)
		x.res.Code = StatusClientClosedRequest
		return
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		x.fail(http.StatusGatewayTimeout, FlagUpstreamTimeout)
		return
	}
	x.fail(http.StatusServiceUnavailable, "")
}
