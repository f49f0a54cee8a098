package resilience

import (
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// OutlierConfig is a compiled OutlierDetection.
type OutlierConfig struct {
	// Consecutive5xx failures (5xx answers or connection failures) in a row
	// eject an endpoint.
	Consecutive5xx int
	// Interval: an endpoint that stays healthy this long after an ejection
	// has its ejection count lowered by one.
	Interval time.Duration
	// BaseEjectionTime times the number of ejections is how long an
	// ejection lasts.
	BaseEjectionTime time.Duration
	// MaxEjectionPercent of the known endpoints may be ejected at once (at
	// least one, when above 0).
	MaxEjectionPercent int
}

// CompileOutlier compiles a wire OutlierDetection, filling the CRD's
// defaults (5, 10s, 30s, 10%) for unset fields; nil gives nil.
func CompileOutlier(in *configv1alpha1.OutlierDetection) (*OutlierConfig, error) {
	if in == nil {
		return nil, nil
	}
	c := &OutlierConfig{Consecutive5xx: int(in.GetConsecutive_5XxErrors()), Interval: 10 * time.Second,
		BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: int(in.GetMaxEjectionPercent())}
	if c.Consecutive5xx == 0 {
		c.Consecutive5xx = 5
	}
	if c.MaxEjectionPercent == 0 {
		c.MaxEjectionPercent = 10
	}
	if c.MaxEjectionPercent > 100 {
		return nil, fmt.Errorf("maxEjectionPercent %d is more than 100", c.MaxEjectionPercent)
	}
	for _, d := range []struct {
		name string
		in   *durationpb.Duration
		out  *time.Duration
	}{{"interval", in.GetInterval(), &c.Interval}, {"baseEjectionTime", in.GetBaseEjectionTime(), &c.BaseEjectionTime}} {
		if d.in == nil {
			continue
		}
		if err := d.in.CheckValid(); err != nil || d.in.AsDuration() < 0 {
			return nil, fmt.Errorf("%s %v is not a positive duration", d.name, d.in)
		}
		if v := d.in.AsDuration(); v > 0 {
			*d.out = v
		}
	}
	return c, nil
}

// Outlier tracks the endpoints of one backend service and ejects those that
// keep failing. Ejections end lazily: Healthy and Ejected compare the end of
// an ejection with Now, so no goroutine is needed.
type Outlier struct {
	// Config; a nil Config never ejects.
	Config *OutlierConfig
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu    sync.Mutex
	hosts map[string]*hostState
	known int
}

type hostState struct {
	consecutive  int
	ejections    int
	ejectedTill  time.Time // zero: not ejected
	healthySince time.Time
}

func (o *Outlier) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// host returns the state of an endpoint. Called with mu held.
func (o *Outlier) host(ep string) *hostState {
	if o.hosts == nil {
		o.hosts = map[string]*hostState{}
	}
	h := o.hosts[ep]
	if h == nil {
		h = &hostState{}
		o.hosts[ep] = h
	}
	return h
}

// refresh ends an expired ejection and decays the ejection count. Called
// with mu held.
func (o *Outlier) refresh(h *hostState, now time.Time) {
	if !h.ejectedTill.IsZero() && !now.Before(h.ejectedTill) {
		h.ejectedTill = time.Time{}
		h.consecutive = 0
		h.healthySince = now
	}
	if h.ejectedTill.IsZero() && h.ejections > 0 && o.Config.Interval > 0 {
		for h.ejections > 0 && now.Sub(h.healthySince) >= o.Config.Interval {
			h.ejections--
			h.healthySince = h.healthySince.Add(o.Config.Interval)
		}
	}
}

// Healthy returns the endpoints that are not ejected, in order, and records
// how many endpoints the service has (for MaxEjectionPercent). It returns
// eps itself when nothing is ejected.
func (o *Outlier) Healthy(eps []string) []string {
	if o == nil || o.Config == nil {
		return eps
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.known = len(eps)
	if len(o.hosts) > 2*len(eps)+16 {
		o.prune(eps)
	}
	now := o.now()
	var out []string
	for i, ep := range eps {
		h := o.hosts[ep]
		if h != nil {
			o.refresh(h, now)
		}
		if h != nil && !h.ejectedTill.IsZero() {
			if out == nil {
				out = append(make([]string, 0, len(eps)), eps[:i]...)
			}
			continue
		}
		if out != nil {
			out = append(out, ep)
		}
	}
	if out == nil {
		return eps
	}
	return out
}

// Ejected reports whether an endpoint is ejected now.
func (o *Outlier) Ejected(ep string) bool {
	if o == nil || o.Config == nil {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	h := o.hosts[ep]
	if h == nil {
		return false
	}
	o.refresh(h, o.now())
	return !h.ejectedTill.IsZero()
}

// Report records the outcome of one request to an endpoint: failed is a 5xx
// answer or a connection failure. It reports whether the endpoint was
// ejected by this failure.
func (o *Outlier) Report(ep string, failed bool) bool {
	if o == nil || o.Config == nil {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	h := o.host(ep)
	o.refresh(h, now)
	if !failed {
		h.consecutive = 0
		return false
	}
	h.consecutive++
	if h.consecutive < o.Config.Consecutive5xx || !h.ejectedTill.IsZero() {
		return false
	}
	if !o.mayEject(now) {
		return false
	}
	h.ejections++
	h.consecutive = 0
	h.ejectedTill = now.Add(o.Config.BaseEjectionTime * time.Duration(h.ejections))
	return true
}

// mayEject applies MaxEjectionPercent. Called with mu held.
func (o *Outlier) mayEject(now time.Time) bool {
	if o.Config.MaxEjectionPercent <= 0 {
		return false
	}
	ejected := 0
	for _, h := range o.hosts {
		o.refresh(h, now)
		if !h.ejectedTill.IsZero() {
			ejected++
		}
	}
	total := max(o.known, len(o.hosts))
	allowed := max(1, total*o.Config.MaxEjectionPercent/100)
	return ejected < allowed
}

// Forget drops the state of endpoints that are no longer in eps. Healthy
// also does this when the state grows well past the endpoints it is given.
func (o *Outlier) Forget(eps []string) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.prune(eps)
	o.known = len(eps)
}

// prune drops the state of endpoints not in eps. Called with mu held.
func (o *Outlier) prune(eps []string) {
	keep := make(map[string]bool, len(eps))
	for _, ep := range eps {
		keep[ep] = true
	}
	for ep := range o.hosts {
		if !keep[ep] {
			delete(o.hosts, ep)
		}
	}
}
