// Package waypoint is the root of the waypoint module, Ambit's
// per-namespace L7 proxy; its binaries live under cmd/.
//
// The L7 request engine is in library packages:
//
//   - route compiles a WaypointConfig into an immutable routing table and
//     matches requests (Gateway API precedence, path/header/query/method
//     matches, weighted backends);
//   - filter applies HTTPRoute filters (header modifiers, redirects, URL
//     rewrites, mirrors) and fault injection;
//   - resilience holds retry policies, the retry budget, outlier detection
//     and request limits;
//   - proxy is the http.Handler that ties them together, with hooks for the
//     endpoint resolver, the upstream transport, authorization and
//     per-request results.
//
// Around it: server (HBONE in and out, xDS store, TCP pass-through), authz
// (L7 AuthorizationPolicy), telemetry (Istio-standard metrics, access
// log), tracing (W3C/B3 propagation, OTLP spans) and admin (readiness,
// metrics and config dump endpoints); cmd/waypoint wires them.
//
// docs/reference/waypoint.md describes the semantics and defaults.
package waypoint
