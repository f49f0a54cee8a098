// Package proxy is ztunnel's data path for one enrolled pod: it serves the
// three capture listeners that package redirect opened inside the pod's
// network namespace.
//
//   - Outbound (15001): each connection the application makes is accepted,
//     its original destination read from conntrack, routed by Decide, and
//     forwarded over HBONE (to the destination pod's ztunnel or to a
//     waypoint) or as plain TCP. Upstream sockets are created inside the
//     pod's namespace with ztunnel's mark, so the source address stays the
//     pod's and the capture rules let them through.
//   - Inbound HBONE (15008): tunnels from other meshed workloads. The
//     :authority must be one of the pod's addresses; a pod behind a waypoint
//     accepts only its waypoint's identity; the L4 AuthorizationPolicies of
//     package policy decide; then the application is dialled from inside the
//     namespace (marked, so not captured again) and bytes are joined.
//   - Inbound plaintext (15006): TCP sent to the pod by something outside the
//     mesh. Refused under STRICT mTLS; under PERMISSIVE checked against the
//     policies (as a peer without identity) and passed to the application.
//
// Limitation: the application sees inbound connections (HBONE and
// plaintext) as coming from its own address, since ztunnel dials it from
// inside its namespace; Istio makes the original source visible with
// IP_TRANSPARENT, which Ambit does not do yet. The source is carried in the
// `forwarded` header of the tunnel and in the metrics.
package proxy
