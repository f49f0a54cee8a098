package resilience

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// fakeClock is a manually advanced clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestCompileRetry(t *testing.T) {
	p, err := CompileRetry(&configv1alpha1.Retry{})
	if err != nil || p.Attempts != DefaultAttempts || p.Backoff != DefaultBackoff || len(p.Codes) != 3 {
		t.Fatalf("defaults: %+v %v", p, err)
	}
	p, err = CompileRetry(&configv1alpha1.Retry{Codes: []uint32{500}, Attempts: 4, Backoff: durationpb.New(time.Second)})
	if err != nil || p.Attempts != 4 || p.Backoff != time.Second || !p.RetryableStatus(500) || p.RetryableStatus(503) {
		t.Fatalf("%+v %v", p, err)
	}
	if p, _ := CompileRetry(nil); p != nil || p.RetryableStatus(503) || p.MethodAllowed("GET") {
		t.Error("nil policy retries")
	}
	for _, bad := range []*configv1alpha1.Retry{{Codes: []uint32{42}}, {Attempts: 1000}, {Backoff: durationpb.New(-time.Second)}} {
		if _, err := CompileRetry(bad); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}

func TestMethodAllowed(t *testing.T) {
	p := &RetryPolicy{}
	for _, m := range []string{"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"} {
		if !p.MethodAllowed(m) {
			t.Errorf("%s not retried", m)
		}
	}
	for _, m := range []string{"POST", "PATCH", "CONNECT"} {
		if p.MethodAllowed(m) {
			t.Errorf("%s retried", m)
		}
	}
	if !(&RetryPolicy{NonIdempotent: true}).MethodAllowed("POST") {
		t.Error("NonIdempotent POST not retried")
	}
}

func TestBackoffFullJitter(t *testing.T) {
	p := &RetryPolicy{Backoff: 10 * time.Millisecond}
	one := func() float64 { return 0.999999 }
	for n, want := range map[int]time.Duration{1: 10 * time.Millisecond, 2: 20 * time.Millisecond, 3: 40 * time.Millisecond,
		4: 80 * time.Millisecond, 5: 100 * time.Millisecond, 30: 100 * time.Millisecond} {
		got := p.BackoffFor(n, one)
		if got > want || got < want*99/100 {
			t.Errorf("retry %d: ceiling %v, want %v", n, got, want)
		}
	}
	if got := p.BackoffFor(3, func() float64 { return 0 }); got != 0 {
		t.Errorf("full jitter lower bound: %v", got)
	}
	if got := p.BackoffFor(2, func() float64 { return 0.5 }); got != 10*time.Millisecond {
		t.Errorf("half of 20ms: %v", got)
	}
}

func TestBudget(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1000, 0)}
	b := &Budget{MinConcurrent: -1, Now: clk.Now}
	for range 100 {
		b.Request()
	}
	allowed := 0
	for range 100 {
		if release, ok := b.TryRetry(); ok {
			allowed++
			release()
		}
	}
	if allowed != 20 {
		t.Errorf("allowed %d retries for 100 requests, want 20", allowed)
	}
	// The window slides: after 10s the old requests and retries are gone.
	clk.Advance(11 * time.Second)
	if _, ok := b.TryRetry(); ok {
		t.Error("retry allowed with no requests in the window")
	}
	// MinConcurrent retries are always allowed in flight.
	b2 := &Budget{Now: clk.Now}
	var releases []func()
	for range 3 {
		r, ok := b2.TryRetry()
		if !ok {
			t.Fatal("retry within the minimum concurrency refused")
		}
		releases = append(releases, r)
	}
	if _, ok := b2.TryRetry(); ok {
		t.Error("fourth concurrent retry allowed without requests")
	}
	releases[0]()
	releases[0]() // idempotent
	if r, ok := b2.TryRetry(); !ok {
		t.Error("retry refused after a release")
	} else {
		r()
	}
}

func TestOutlierEjectAndRecover(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1000, 0)}
	o := &Outlier{Config: &OutlierConfig{Consecutive5xx: 3, Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second,
		MaxEjectionPercent: 50}, Now: clk.Now}
	eps := []string{"a", "b", "c", "d"}
	if got := o.Healthy(eps); len(got) != 4 {
		t.Fatal(got)
	}
	o.Report("a", true)
	o.Report("a", true)
	o.Report("a", false) // a success resets the count
	o.Report("a", true)
	o.Report("a", true)
	if o.Ejected("a") {
		t.Fatal("ejected before 3 consecutive failures")
	}
	if !o.Report("a", true) || !o.Ejected("a") {
		t.Fatal("not ejected after 3 consecutive failures")
	}
	if got := o.Healthy(eps); len(got) != 3 || got[0] != "b" {
		t.Fatalf("healthy %v", got)
	}
	// MaxEjectionPercent 50 of 4: two at most.
	for _, ep := range []string{"b", "c"} {
		for range 3 {
			o.Report(ep, true)
		}
	}
	if !o.Ejected("b") || o.Ejected("c") {
		t.Errorf("b ejected %v, c ejected %v; want only b (cap 2 of 4)", o.Ejected("b"), o.Ejected("c"))
	}
	clk.Advance(30 * time.Second)
	if o.Ejected("a") || len(o.Healthy(eps)) != 4 {
		t.Fatal("a still ejected after the base ejection time")
	}
	// A second ejection lasts twice as long.
	for range 3 {
		o.Report("a", true)
	}
	clk.Advance(59 * time.Second)
	if !o.Ejected("a") {
		t.Error("second ejection ended before 2 x base")
	}
	clk.Advance(time.Second)
	if o.Ejected("a") {
		t.Error("second ejection did not end after 2 x base")
	}
	// Healthy for long enough, the multiplier decays back.
	clk.Advance(25 * time.Second)
	for range 3 {
		o.Report("a", true)
	}
	clk.Advance(30 * time.Second)
	if o.Ejected("a") {
		t.Error("ejection multiplier did not decay")
	}
	o.Forget([]string{"b"})
	if o.Ejected("a") {
		t.Error("forgotten endpoint ejected")
	}
	var nilO *Outlier
	if nilO.Report("x", true) || nilO.Ejected("x") || len(nilO.Healthy(eps)) != 4 {
		t.Error("nil outlier acts")
	}
}

func TestCompileOutlier(t *testing.T) {
	c, err := CompileOutlier(&configv1alpha1.OutlierDetection{})
	if err != nil || c.Consecutive5xx != 5 || c.Interval != 10*time.Second || c.BaseEjectionTime != 30*time.Second || c.MaxEjectionPercent != 10 {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := CompileOutlier(&configv1alpha1.OutlierDetection{MaxEjectionPercent: 101}); err == nil {
		t.Error("101% accepted")
	}
	if _, err := CompileOutlier(&configv1alpha1.OutlierDetection{Interval: durationpb.New(-time.Second)}); err == nil {
		t.Error("negative interval accepted")
	}
}

func TestLimiter(t *testing.T) {
	l := NewLimiter(&configv1alpha1.Limits{MaxRequests: 2, MaxPendingRequests: 1})
	r1, ok1 := l.Acquire(context.Background())
	r2, ok2 := l.Acquire(context.Background())
	if !ok1 || !ok2 {
		t.Fatal("refused under the limit")
	}
	got := make(chan bool)
	go func() {
		r, ok := l.Acquire(context.Background())
		if ok {
			r()
		}
		got <- ok
	}()
	for {
		if _, p := l.InFlight(); p == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if _, ok := l.Acquire(context.Background()); ok {
		t.Error("admitted over max pending")
	}
	r1()
	if !<-got {
		t.Error("pending request not admitted after a release")
	}
	ctx, cancel := context.WithCancel(context.Background())
	r3, _ := l.Acquire(ctx)
	go cancel()
	if _, ok := l.Acquire(ctx); ok {
		t.Error("admitted after cancel")
	}
	r2()
	r3()
	if f, p := l.InFlight(); f != 0 || p != 0 {
		t.Errorf("in flight %d pending %d", f, p)
	}
	if NewLimiter(nil) != nil || NewLimiter(&configv1alpha1.Limits{}) != nil {
		t.Error("no limits gave a limiter")
	}
	if l := NewLimiter(&configv1alpha1.Limits{MaxRequests: 10, MaxConnections: 4}); l.MaxRequests != 4 {
		t.Errorf("max connections not applied: %d", l.MaxRequests)
	}
	if r, ok := (*Limiter)(nil).Acquire(context.Background()); !ok {
		t.Error("nil limiter refused")
	} else {
		r()
	}
}
