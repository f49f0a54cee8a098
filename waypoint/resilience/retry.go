package resilience

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// Defaults of a retry policy whose fields are unset.
const (
	// DefaultAttempts is the number of retries when a rule has a retry
	// policy without attempts (Gateway API leaves it to the implementation;
	// Istio uses 2).
	DefaultAttempts = 2
	// DefaultBackoff is the base backoff when none is configured (Envoy's).
	DefaultBackoff = 25 * time.Millisecond
	// MaxBackoffFactor caps the backoff at this multiple of the base.
	MaxBackoffFactor = 10
)

// DefaultCodes are retried when a retry policy lists no codes: the gateway
// errors 502, 503 and 504.
var DefaultCodes = []int{http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout}

// RetryPolicy is a compiled Gateway API HTTPRouteRetry. A nil policy never
// retries (the default when a rule has no retry).
type RetryPolicy struct {
	// Codes are the response statuses that are retried.
	Codes []int
	// Attempts is the maximum number of retries (so at most Attempts+1
	// tries), as Gateway API defines it.
	Attempts int
	// Backoff is the base of the exponential backoff.
	Backoff time.Duration
	// NonIdempotent allows retrying methods that are not idempotent (POST,
	// PATCH, CONNECT). No configuration sets it yet; it exists so that an
	// extension can.
	NonIdempotent bool
}

// CompileRetry compiles a wire retry policy; nil gives nil.
func CompileRetry(in *configv1alpha1.Retry) (*RetryPolicy, error) {
	if in == nil {
		return nil, nil
	}
	p := &RetryPolicy{Attempts: int(in.GetAttempts()), Backoff: DefaultBackoff}
	if p.Attempts == 0 {
		p.Attempts = DefaultAttempts
	}
	if p.Attempts > 100 {
		return nil, fmt.Errorf("retry attempts %d is more than 100", p.Attempts)
	}
	for _, c := range in.GetCodes() {
		if c < 100 || c > 599 {
			return nil, fmt.Errorf("retry code %d is not an HTTP status", c)
		}
		p.Codes = append(p.Codes, int(c))
	}
	if len(p.Codes) == 0 {
		p.Codes = slices.Clone(DefaultCodes)
	}
	if b := in.GetBackoff(); b != nil {
		if err := b.CheckValid(); err != nil || b.AsDuration() < 0 {
			return nil, fmt.Errorf("retry backoff %v is not a positive duration", b)
		}
		if b.AsDuration() > 0 {
			p.Backoff = b.AsDuration()
		}
	}
	return p, nil
}

// RetryableStatus reports whether a response with this status is retried.
func (p *RetryPolicy) RetryableStatus(code int) bool {
	return p != nil && slices.Contains(p.Codes, code)
}

// MethodAllowed reports whether requests with this method may be retried:
// the idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), others
// only when NonIdempotent is set.
func (p *RetryPolicy) MethodAllowed(method string) bool {
	if p == nil {
		return false
	}
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete, http.MethodTrace:
		return true
	}
	return p.NonIdempotent
}

// BackoffFor is how long to wait before retry number n (1 for the first
// retry): "full jitter", a uniform draw from [0, min(cap, base*2^(n-1))),
// where cap is MaxBackoffFactor*base. draw returns numbers in [0, 1); nil
// is math/rand/v2.Float64.
func (p *RetryPolicy) BackoffFor(n int, draw func() float64) time.Duration {
	if p == nil || p.Backoff <= 0 {
		return 0
	}
	if draw == nil {
		draw = rand.Float64
	}
	ceil := p.Backoff
	limit := p.Backoff * MaxBackoffFactor
	for i := 1; i < n && ceil < limit; i++ {
		ceil *= 2
	}
	ceil = min(ceil, limit)
	return time.Duration(draw() * float64(ceil))
}
