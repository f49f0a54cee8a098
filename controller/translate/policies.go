package translate

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"

	trafficv1alpha1 "github.com/ambit-mesh/ambit/apis/traffic/v1alpha1"
)

// backendPolicy is an accepted BackendPolicy, compiled.
type backendPolicy struct {
	key              types.NamespacedName
	outlierDetection *OutlierDetection
	limits           *Limits
}

// faultInjections compiles the valid FaultInjections.
func (b *builder) faultInjections() {
	for _, fi := range b.ix.faults {
		f, err := compileFault(&fi.Spec)
		b.status.Policies[PolicyKey{Kind: "FaultInjection", NamespacedName: keyOf(fi)}] = accepted(err, "", fi.Generation)
		if err == nil {
			b.faults[keyOf(fi)] = f
		}
	}
}

func compileFault(spec *trafficv1alpha1.FaultInjectionSpec) (*Fault, error) {
	f := &Fault{}
	pct := func(p int32) error {
		if p < 0 || p > 100 {
			return fmt.Errorf("%w: percent %d is not within 0-100", ErrInvalidPolicy, p)
		}
		return nil
	}
	if spec.Delay == nil && spec.Abort == nil {
		return nil, fmt.Errorf("%w: set delay, abort or both", ErrInvalidPolicy)
	}
	if d := spec.Delay; d != nil {
		fixed, err := parseDuration(string(d.FixedDelay))
		if err != nil {
			return nil, fmt.Errorf("%w: delay.fixedDelay: %v", ErrInvalidPolicy, err)
		}
		if err := pct(d.Percent); err != nil {
			return nil, err
		}
		f.Delay, f.DelayPercent = &fixed, float64(d.Percent)
	}
	if a := spec.Abort; a != nil {
		switch {
		case (a.HTTPStatus == nil) == (a.GRPCStatus == nil):
			return nil, fmt.Errorf("%w: abort: set exactly one of httpStatus and grpcStatus", ErrInvalidPolicy)
		case a.HTTPStatus != nil && (*a.HTTPStatus < 200 || *a.HTTPStatus > 599):
			return nil, fmt.Errorf("%w: abort.httpStatus %d is not within 200-599", ErrInvalidPolicy, *a.HTTPStatus)
		case a.GRPCStatus != nil && (*a.GRPCStatus < 1 || *a.GRPCStatus > 16):
			return nil, fmt.Errorf("%w: abort.grpcStatus %d is not within 1-16", ErrInvalidPolicy, *a.GRPCStatus)
		}
		if err := pct(a.Percent); err != nil {
			return nil, err
		}
		f.AbortHTTP, f.AbortGRPC, f.AbortPercent = derefOr(a.HTTPStatus, 0), derefOr(a.GRPCStatus, 0), float64(a.Percent)
	}
	return f, nil
}

// backendPolicyTargets compiles BackendPolicies and attaches each to its
// target Services. When several policies target one Service the oldest
// wins; a policy that wins no target is Accepted=False (Conflicted).
func (b *builder) backendPolicyTargets() {
	ordered := slices.Clone(b.ix.backendPolicies)
	slices.SortStableFunc(ordered, func(x, y *trafficv1alpha1.BackendPolicy) int { return olderFirst(x, y) })
	for _, bp := range ordered {
		compiled, err := compileBackendPolicy(bp)
		var notes, lost []string
		won := 0
		if err == nil {
			for _, ref := range bp.Spec.TargetRefs {
				k := types.NamespacedName{Namespace: bp.Namespace, Name: ref.Name}
				if prev := b.backendPolicies[k]; prev != nil {
					if prev.key != keyOf(bp) {
						lost = append(lost, fmt.Sprintf("Service %s is configured by the older BackendPolicy %s", k, prev.key))
					}
					continue
				}
				won++
				b.backendPolicies[k] = compiled
				if b.ix.servicesByKey[k] == nil {
					notes = append(notes, fmt.Sprintf("target Service %s not found (yet)", k))
				}
			}
			if won == 0 {
				err = fmt.Errorf("%w: %s", ErrConflicted, strings.Join(lost, "; "))
			}
		}
		b.status.Policies[PolicyKey{Kind: "BackendPolicy", NamespacedName: keyOf(bp)}] =
			accepted(err, strings.Join(append(notes, lost...), "; "), bp.Generation)
	}
}

func compileBackendPolicy(bp *trafficv1alpha1.BackendPolicy) (*backendPolicy, error) {
	p := &backendPolicy{key: keyOf(bp)}
	if len(bp.Spec.TargetRefs) == 0 {
		return nil, fmt.Errorf("%w: no targetRefs", ErrInvalidPolicy)
	}
	for _, ref := range bp.Spec.TargetRefs {
		if ref.Group != "" || ref.Kind != "Service" || ref.Name == "" {
			return nil, fmt.Errorf("%w: targetRef %s/%s %q: only core Services", ErrInvalidPolicy, ref.Group, ref.Kind, ref.Name)
		}
	}
	if od := bp.Spec.OutlierDetection; od != nil {
		// The CRD's defaults, for objects that did not pass the API server.
		o := &OutlierDetection{Consecutive5xx: 5, Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 10}
		if od.Consecutive5xxErrors != 0 {
			o.Consecutive5xx = od.Consecutive5xxErrors
		}
		if od.MaxEjectionPercent != 0 {
			o.MaxEjectionPercent = od.MaxEjectionPercent
		}
		for _, d := range []struct {
			field string
			in    trafficv1alpha1.Duration
			out   *time.Duration
		}{{"interval", od.Interval, &o.Interval}, {"baseEjectionTime", od.BaseEjectionTime, &o.BaseEjectionTime}} {
			if d.in == "" {
				continue
			}
			v, err := parseDuration(string(d.in))
			if err != nil {
				return nil, fmt.Errorf("%w: outlierDetection.%s: %v", ErrInvalidPolicy, d.field, err)
			}
			*d.out = v
		}
		if o.Consecutive5xx < 1 || o.MaxEjectionPercent < 0 || o.MaxEjectionPercent > 100 {
			return nil, fmt.Errorf("%w: outlierDetection: consecutive5xxErrors must be >= 1 and maxEjectionPercent within 0-100", ErrInvalidPolicy)
		}
		p.outlierDetection = o
	}
	if l := bp.Spec.Limits; l != nil {
		if l.MaxConnections < 0 || l.MaxPendingRequests < 0 || l.MaxRequests < 0 {
			return nil, fmt.Errorf("%w: limits must not be negative", ErrInvalidPolicy)
		}
		p.limits = &Limits{MaxConnections: l.MaxConnections, MaxPendingRequests: l.MaxPendingRequests, MaxRequests: l.MaxRequests}
	}
	return p, nil
}
