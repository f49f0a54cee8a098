package translate

import (
	"errors"

	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Sentinel errors of translation. Every error translation finds wraps one of
// these; reasonOf maps it to the status condition Reason the user sees.
var (
	// ErrInvalidListener: a waypoint Gateway's listeners are not exactly
	// {name: mesh, port: 15008, protocol: HBONE}.
	ErrInvalidListener = errors.New("a waypoint needs exactly one listener {name: mesh, port: 15008, protocol: HBONE}")
	// ErrUnsupportedAddress: a waypoint Gateway sets spec.addresses.
	ErrUnsupportedAddress = errors.New("waypoints do not support spec.addresses")
	// ErrParentNotFound: a route's parentRef names a Service that does not
	// exist or cannot be a parent (headless, ExternalName, no such port).
	ErrParentNotFound = errors.New("no matching parent")
	// ErrBackendNotFound: a backendRef or filter reference names an object
	// that does not exist.
	ErrBackendNotFound = errors.New("backend not found")
	// ErrRefNotPermitted: a cross-namespace reference no ReferenceGrant allows.
	ErrRefNotPermitted = errors.New("reference not permitted")
	// ErrInvalidKind: a reference to an unsupported group/kind.
	ErrInvalidKind = errors.New("unsupported kind")
	// ErrUnsupportedValue: a field value Ambit does not support (filter
	// type, match type, consumer route, out-of-range number).
	ErrUnsupportedValue = errors.New("unsupported value")
	// ErrIncompatibleFilters: RequestRedirect and URLRewrite in one rule.
	ErrIncompatibleFilters = errors.New("incompatible filters")
	// ErrInvalidDuration: not a Gateway API duration (GEP-2257).
	ErrInvalidDuration = errors.New("invalid duration")
	// ErrL7AtL4: an AuthorizationPolicy enforced by ztunnel (selector,
	// namespace or mesh scope) uses HTTP attributes only a waypoint sees.
	ErrL7AtL4 = errors.New("methods, paths and headers need a waypoint (use targetRefs)")
	// ErrInvalidPolicy: a policy that cannot be applied as written.
	ErrInvalidPolicy = errors.New("invalid policy")
	// ErrConflicted: an older policy already configures the same target.
	ErrConflicted = errors.New("conflicts with an older policy")
	// ErrInvalidIR: the intermediate representation breaks an invariant; a
	// translation bug rather than a user error.
	ErrInvalidIR = errors.New("invalid intermediate representation")
)

// Condition reasons Ambit adds to Gateway API's.
const (
	// ReasonInvalid is the Accepted=False reason of a policy.
	ReasonInvalid = "Invalid"
	// ReasonConflicted is the Accepted=False reason of a policy that lost to
	// an older one.
	ReasonConflicted = "Conflicted"
	// ConditionResolvedWaypoints on a route parent says whether the parent
	// Service is served by a ready waypoint (without one, its rules are not
	// applied). Same name as Istio's.
	ConditionResolvedWaypoints = "ResolvedWaypoints"
	// ReasonResolvedWaypoints: the parent Service has a ready waypoint.
	ReasonResolvedWaypoints = "ResolvedWaypoints"
	// ReasonNoWaypoint: the parent Service has no (ready) waypoint.
	ReasonNoWaypoint = "NoWaypoint"
	// ReasonInvalidWaypointFor is the Accepted=True reason of a waypoint
	// Gateway whose ambit.dev/waypoint-for label has an unknown value (the
	// message names it); the waypoint handles services.
	ReasonInvalidWaypointFor = "InvalidWaypointFor"
)

// reasonOf is the route condition reason for err.
func reasonOf(err error) string {
	switch {
	case errors.Is(err, ErrParentNotFound):
		return string(gwapiv1.RouteReasonNoMatchingParent)
	case errors.Is(err, ErrBackendNotFound):
		return string(gwapiv1.RouteReasonBackendNotFound)
	case errors.Is(err, ErrRefNotPermitted):
		return string(gwapiv1.RouteReasonRefNotPermitted)
	case errors.Is(err, ErrInvalidKind):
		return string(gwapiv1.RouteReasonInvalidKind)
	case errors.Is(err, ErrIncompatibleFilters):
		return string(gwapiv1.RouteReasonIncompatibleFilters)
	case errors.Is(err, ErrConflicted):
		return ReasonConflicted
	case errors.Is(err, ErrL7AtL4), errors.Is(err, ErrInvalidPolicy):
		return ReasonInvalid
	default:
		return string(gwapiv1.RouteReasonUnsupportedValue)
	}
}
