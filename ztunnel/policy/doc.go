// Package policy evaluates L4 AuthorizationPolicies for connections ztunnel
// accepts on behalf of a workload (inbound HBONE and inbound plaintext).
//
// Which policies apply to a workload: those of scope WORKLOAD_SELECTOR that
// the Workload lists in authorization_policies, those of scope NAMESPACE in
// the workload's namespace, and those of scope GLOBAL (the system namespace).
// Policies of waypoint scopes are never applied by ztunnel.
//
// The decision, as Istio defines it: a connection matching any applicable
// DENY policy is denied (deny wins); otherwise, if any ALLOW policy applies to
// the workload, the connection must match one of them; if none applies, it is
// allowed.
//
// A policy matches when any of its rules matches (no rules: matches nothing).
// A rule matches when one of its `from` and one of its `to` entries match
// (an empty list matches anything). Within a `from` entry every set field
// must match: principals are whole SPIFFE URIs, "*" matches any authenticated
// peer, and a leading or trailing "*" matches a suffix or prefix; namespaces
// are those of the peer's identity, with the same wildcards; ip_blocks and
// not_ip_blocks are CIDR blocks holding the client's address as the
// destination application sees it (the tunnel's source, the client a
// waypoint serving the workload names, or the plaintext connection's
// source). A plaintext connection has no principal and no namespace: it
// matches no principals or namespaces list and every not_principals or
// not_namespaces list.
package policy
