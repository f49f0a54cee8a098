package resilience

import (
	"context"
	"sync"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// Limiter bounds the requests in flight to one backend service (circuit
// breaking). A request over the limit waits for a slot only while fewer
// than MaxPending requests wait; otherwise it is refused at once, and the
// proxy answers 503 with the response flag "UO".
//
// The zero Limiter admits everything.
type Limiter struct {
	// MaxRequests in flight; 0 means no limit.
	MaxRequests int
	// MaxPending requests waiting for a slot; 0 means none wait (a request
	// over MaxRequests is refused at once).
	MaxPending int

	mu       sync.Mutex
	inFlight int
	pending  int
	wake     chan struct{} // closed and replaced when a slot frees
}

// NewLimiter builds the limiter of a wire Limits; nil gives nil (no
// limits). MaxConnections is enforced as a cap on requests in flight as
// well: a request in flight over HTTP/1.1 holds a connection, and the
// transport factory pools connections as it sees fit.
func NewLimiter(l *configv1alpha1.Limits) *Limiter {
	if l == nil {
		return nil
	}
	maxReq := int(l.GetMaxRequests())
	if mc := int(l.GetMaxConnections()); mc > 0 && (maxReq == 0 || mc < maxReq) {
		maxReq = mc
	}
	if maxReq == 0 && l.GetMaxPendingRequests() == 0 {
		return nil
	}
	return &Limiter{MaxRequests: maxReq, MaxPending: int(l.GetMaxPendingRequests())}
}

// Acquire takes a slot. It returns a release func (call it once the
// request and its response body are done) and true, or false when the
// request overflows (or ctx ended while it waited). A nil Limiter always
// admits.
func (l *Limiter) Acquire(ctx context.Context) (release func(), ok bool) {
	if l == nil || l.MaxRequests <= 0 {
		return func() {}, true
	}
	l.mu.Lock()
	waiting := false
	for l.inFlight >= l.MaxRequests {
		if !waiting {
			if l.pending >= l.MaxPending {
				l.mu.Unlock()
				return nil, false
			}
			l.pending++
			waiting = true
		}
		if l.wake == nil {
			l.wake = make(chan struct{})
		}
		wake := l.wake
		l.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			l.mu.Lock()
			l.pending--
			l.mu.Unlock()
			return nil, false
		}
		l.mu.Lock()
	}
	if waiting {
		l.pending--
	}
	l.inFlight++
	l.mu.Unlock()
	var once sync.Once
	return func() { once.Do(l.release) }, true
}

func (l *Limiter) release() {
	l.mu.Lock()
	l.inFlight--
	if l.wake != nil {
		close(l.wake)
		l.wake = nil
	}
	l.mu.Unlock()
}

// InFlight returns the requests in flight and waiting.
func (l *Limiter) InFlight() (inFlight, pending int) {
	if l == nil {
		return 0, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inFlight, l.pending
}
