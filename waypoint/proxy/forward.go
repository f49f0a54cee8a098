package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/waypoint/filter"
	"github.com/ambit-mesh/ambit/waypoint/resilience"
	"github.com/ambit-mesh/ambit/waypoint/route"
)

// backendState is what the proxy keeps per backend service port: outlier
// detection, limits, the retry budget and the round-robin cursor. Fields
// other than next are guarded by Proxy.stateMu.
type backendState struct {
	outlierCfg resilience.OutlierConfig
	limitsCfg  [2]int // MaxRequests, MaxPending
	built      bool
	outlier    *resilience.Outlier
	limiter    *resilience.Limiter
	budget     *resilience.Budget
	next       atomic.Uint64
}

// backendView is a consistent snapshot of a backendState's parts.
type backendView struct {
	outlier *resilience.Outlier
	limiter *resilience.Limiter
	budget  *resilience.Budget
	next    *atomic.Uint64
}

// state returns the state of a backend, rebuilding the parts whose
// configuration changed (an ejection or a queue survives a new table with
// the same policy).
func (p *Proxy) state(be *route.Backend) backendView {
	var oc resilience.OutlierConfig
	if be.Outlier != nil {
		oc = *be.Outlier
	}
	var lc [2]int
	if l := resilience.NewLimiter(be.Limits); l != nil {
		lc = [2]int{l.MaxRequests, l.MaxPending}
	}
	p.stateMu.Lock()
	defer p.stateMu.Unlock()
	if be.Endpoint != "" {
		// A workload destination: one endpoint, no policy; the budget is
		// shared (direct rules never retry).
		if p.direct == nil {
			p.direct = &resilience.Budget{Now: p.Now}
		}
		return backendView{budget: p.direct, next: new(atomic.Uint64)}
	}
	k := be.Key()
	st := p.states[k]
	if st == nil {
		st = &backendState{}
		if p.NewBudget != nil {
			st.budget = p.NewBudget(k)
		}
		if st.budget == nil {
			st.budget = &resilience.Budget{Now: p.Now}
		}
		p.states[k] = st
	}
	if !st.built || st.outlierCfg != oc {
		st.outlierCfg, st.outlier = oc, nil
		if be.Outlier != nil {
			cfg := oc
			st.outlier = &resilience.Outlier{Config: &cfg, Now: p.Now}
		}
	}
	if !st.built || st.limitsCfg != lc {
		st.limitsCfg, st.limiter = lc, nil
		if lc[0] > 0 {
			st.limiter = &resilience.Limiter{MaxRequests: lc[0], MaxPending: lc[1]}
		}
	}
	st.built = true
	return backendView{outlier: st.outlier, limiter: st.limiter, budget: st.budget, next: &st.next}
}

// outcome of one try that did not produce a response to forward.
type tryError struct {
	code int
	flag string
}

// forward sends the request to the backend's endpoints, retrying as the
// rule allows, and writes the answer.
func (x *exchange) forward(ctx context.Context) {
	p, rule, res := x.p, x.rule, x.res
	st := p.state(x.be)
	st.budget.Request()
	policy := rule.Retry
	if !policy.MethodAllowed(x.in.Method) || !x.replayable || x.upgrade != "" {
		policy = nil
	}
	maxTries := 1
	if policy != nil {
		maxTries += policy.Attempts
	}
	var releaseRetry func()
	defer func() {
		if releaseRetry != nil {
			releaseRetry()
		}
	}()
	for try := 1; ; try++ {
		if try > 1 {
			if err := p.sleep(ctx, policy.BackoffFor(try-1, p.draw)); err != nil {
				x.ctxFailed(ctx)
				return
			}
		}
		resp, cancelTry, release, terr := x.try(ctx, st)
		last := try >= maxTries
		retriable := (terr != nil && terr.flag != FlagUpstreamOverflow && terr.flag != FlagNoHealthyUpstream ||
			resp != nil && policy.RetryableStatus(resp.StatusCode)) && ctx.Err() == nil
		if retriable && !last {
			if releaseRetry != nil {
				releaseRetry()
				releaseRetry = nil
			}
			r, ok := st.budget.TryRetry()
			if ok {
				releaseRetry = r
				if resp != nil {
					drain(resp.Body)
				}
				cancelTry()
				release()
				continue
			}
			last = true
			p.log().DebugContext(ctx, "retry budget exhausted", "backend", res.Backend, "route", res.Route)
		}
		if retriable && policy != nil {
			res.flag(FlagRetryLimitExceeded)
		}
		if terr != nil {
			cancelTry()
			release()
			if ctx.Err() != nil {
				x.ctxFailed(ctx)
				return
			}
			x.fail(terr.code, terr.flag)
			return
		}
		defer cancelTry() // deferred: writeResponse may abort the handler
		defer release()
		x.writeResponse(resp)
		return
	}
}

// try sends one try to a healthy endpoint. It returns the response (with
// the funcs to call once its body is done) or why there is none.
func (x *exchange) try(ctx context.Context, st backendView) (resp *http.Response, cancel context.CancelFunc, release func(), terr *tryError) {
	p, rule, be, res := x.p, x.rule, x.be, x.res
	noop := func() {}
	if ctx.Err() != nil {
		return nil, noop, noop, &tryError{http.StatusGatewayTimeout, FlagUpstreamTimeout}
	}
	eps := []Endpoint{{Address: be.Endpoint, Workload: be.Workload}}
	if be.Endpoint == "" {
		eps = p.endpoints(ctx, be.Service, be.Port)
	}
	addrs := make([]string, len(eps))
	for i, ep := range eps {
		addrs[i] = ep.Address
	}
	healthy := st.outlier.Healthy(addrs)
	if len(healthy) == 0 {
		return nil, noop, noop, &tryError{http.StatusServiceUnavailable, FlagNoHealthyUpstream}
	}
	addr := healthy[int((st.next.Add(1)-1)%uint64(len(healthy)))]
	ep := Endpoint{Address: addr}
	for _, e := range eps {
		if e.Address == addr {
			ep = e
			break
		}
	}
	release, ok := st.limiter.Acquire(ctx)
	if !ok {
		if ctx.Err() != nil {
			return nil, noop, noop, &tryError{http.StatusGatewayTimeout, FlagUpstreamTimeout}
		}
		return nil, noop, noop, &tryError{http.StatusServiceUnavailable, FlagUpstreamOverflow}
	}
	tryCtx, cancel := ctx, context.CancelFunc(noop)
	if rule.BackendRequestTimeout > 0 && x.upgrade == "" {
		// (An upgrade has one try: the request timeout bounds it.)
		tryCtx, cancel = context.WithTimeout(ctx, rule.BackendRequestTimeout)
	}
	out := x.out.WithContext(tryCtx)
	u := *x.out.URL
	u.Scheme, u.Host = "http", ep.Address
	out.URL = &u
	if x.body != nil {
		data := x.body
		out.Body = io.NopCloser(bytes.NewReader(data))
		out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
	}
	res.Attempts++
	res.Endpoint, res.Workload = ep.Address, ep.Workload
	rt := p.transport(Target{Service: be.Service, Port: be.Port, Endpoint: ep, HTTP2: x.in.ProtoMajor == 2})
	resp, err := rt.RoundTrip(out)
	if err != nil {
		cancel()
		release()
		if x.in.Context().Err() == nil { // a client going away is not the endpoint's fault
			st.outlier.Report(ep.Address, true)
		}
		p.log().DebugContext(ctx, "upstream try failed", "endpoint", ep.Address, "backend", res.Backend, "error", err)
		switch {
		case ctx.Err() != nil:
			return nil, noop, noop, &tryError{http.StatusGatewayTimeout, FlagUpstreamTimeout}
		case tryCtx.Err() != nil:
			return nil, noop, noop, &tryError{http.StatusGatewayTimeout, FlagUpstreamTimeout}
		case isConnectError(err):
			return nil, noop, noop, &tryError{http.StatusServiceUnavailable, FlagUpstreamConnectionFailure}
		}
		return nil, noop, noop, &tryError{http.StatusServiceUnavailable, FlagUpstreamReset}
	}
	st.outlier.Report(ep.Address, resp.StatusCode >= 500)
	return resp, cancel, release, nil
}

func isConnectError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// drain reads a little of a body that is thrown away, so that its
// connection can be reused, and closes it.
func drain(b io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(b, 4<<10))
	_ = b.Close()
}

// mirror sends a copy of the request to a mirror backend, fire and forget:
// its answer, error or slowness never affect the client. Requests whose
// body was not buffered are not mirrored.
func (x *exchange) mirror(ctx context.Context, m *filter.Mirror) {
	p := x.p
	if !filter.Hit(m.Percent, p.draw) {
		return
	}
	if x.out.Body != nil && x.body == nil {
		p.log().DebugContext(ctx, "request body too large to mirror", "mirror", m.Service)
		return
	}
	eps := p.endpoints(ctx, m.Service, m.Port)
	if len(eps) == 0 {
		return
	}
	select {
	case p.mirrors <- struct{}{}:
	default:
		p.log().DebugContext(ctx, "too many mirrored requests in flight; dropping", "mirror", m.Service)
		return
	}
	ep := eps[int(p.draw()*float64(len(eps)))%len(eps)]
	timeout := x.rule.RequestTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	out := x.out.Clone(mctx)
	u := *x.out.URL
	u.Scheme, u.Host = "http", ep.Address
	out.URL = &u
	if x.body != nil {
		out.Body = io.NopCloser(bytes.NewReader(x.body))
	}
	rt := p.transport(Target{Service: m.Service, Port: m.Port, Endpoint: ep, HTTP2: x.in.ProtoMajor == 2})
	go func() {
		defer func() { <-p.mirrors }()
		defer cancel()
		resp, err := rt.RoundTrip(out)
		if err != nil {
			p.log().DebugContext(mctx, "mirror failed", "mirror", m.Service, "error", err)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}()
}
