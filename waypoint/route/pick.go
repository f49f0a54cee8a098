package route

import "math/rand/v2"

// Pick chooses a backend by weight. draw returns uniform numbers in [0, 1);
// nil is math/rand/v2.Float64. A zero-weight backend is never chosen. It
// returns nil when the rule has invalid backends, no backends or a zero
// total weight: the proxy answers 500. A chosen backend may be Unresolved,
// which also answers 500 (its share of the weight, as Gateway API says).
func (r *Rule) Pick(draw func() float64) *Backend {
	if r.InvalidBackends || r.totalWeight == 0 {
		return nil
	}
	if len(r.Backends) == 1 {
		return r.Backends[0]
	}
	if draw == nil {
		draw = rand.Float64
	}
	n := uint64(draw() * float64(r.totalWeight))
	if n >= r.totalWeight {
		n = r.totalWeight - 1
	}
	for _, b := range r.Backends {
		if n < uint64(b.Weight) {
			return b
		}
		n -= uint64(b.Weight)
	}
	return nil
}
