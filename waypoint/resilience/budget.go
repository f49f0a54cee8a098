package resilience

import (
	"sync"
	"time"
)

// Budget defaults, like Linkerd's retry budget and Envoy's
// retry_budget.min_retry_concurrency.
const (
	DefaultBudgetRatio         = 0.2
	DefaultBudgetMinConcurrent = 3
	DefaultBudgetWindow        = 10 * time.Second
)

// Budget limits retries so that they cannot amplify an outage: within a
// sliding window, retries may add at most Ratio on top of the requests,
// except that MinConcurrent retries may always be in flight. One Budget
// covers one backend service.
//
// The zero Budget uses the defaults (20%, 3, 10s) and the real clock.
type Budget struct {
	// Ratio of retries to requests allowed in the window; 0 means 0.2.
	Ratio float64
	// MinConcurrent retries are always allowed in flight; 0 means 3,
	// negative means none.
	MinConcurrent int
	// Window is the sliding window; 0 means 10s. It is kept in ten buckets.
	Window time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu       sync.Mutex
	buckets  [10]budgetBucket
	inFlight int
}

type budgetBucket struct {
	slot              int64
	requests, retries int64
}

func (b *Budget) now() time.Time {
	if b.Now != nil {
		return b.Now()
	}
	return time.Now()
}

// bucket returns the current bucket, resetting it if it is stale. Called
// with mu held.
func (b *Budget) bucket() *budgetBucket {
	w := b.Window
	if w <= 0 {
		w = DefaultBudgetWindow
	}
	width := max(w/time.Duration(len(b.buckets)), time.Nanosecond)
	slot := b.now().UnixNano() / int64(width)
	bk := &b.buckets[slot%int64(len(b.buckets))]
	if bk.slot != slot {
		*bk = budgetBucket{slot: slot}
	}
	return bk
}

// totals sums the buckets of the window. Called with mu held.
func (b *Budget) totals() (requests, retries int64) {
	cur := b.bucket().slot
	for i := range b.buckets {
		if bk := &b.buckets[i]; cur-bk.slot < int64(len(b.buckets)) {
			requests += bk.requests
			retries += bk.retries
		}
	}
	return requests, retries
}

// Request records one original (not retried) request.
func (b *Budget) Request() {
	b.mu.Lock()
	b.bucket().requests++
	b.mu.Unlock()
}

// TryRetry asks to retry. When allowed it records the retry and returns a
// release func to call when the retry has finished; otherwise ok is false.
func (b *Budget) TryRetry() (release func(), ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ratio := b.Ratio
	if ratio <= 0 {
		ratio = DefaultBudgetRatio
	}
	minc := b.MinConcurrent
	if minc == 0 {
		minc = DefaultBudgetMinConcurrent
	}
	requests, retries := b.totals()
	if b.inFlight >= minc && float64(retries+1) > ratio*float64(requests) {
		return nil, false
	}
	b.bucket().retries++
	b.inFlight++
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			b.inFlight--
			b.mu.Unlock()
		})
	}, true
}
