// Package authzmatch holds the matching that ztunnel's L4 policy
// (ztunnel/policy) and the waypoint's L7 policy (waypoint/authz) share for
// AuthorizationPolicy rules: value patterns, the rule's sources (principals
// and namespaces of the verified peer) and its ports. The L7 parts
// (methods, paths, headers) stay in the waypoint.
package authzmatch

import (
	"slices"
	"strings"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// Match reports whether value matches pattern: "*" matches anything
// non-empty, "prefix*" a prefix, "*suffix" a suffix, otherwise exact.
func Match(pattern, value string) bool {
	switch {
	case pattern == "*":
		return value != ""
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(value, strings.TrimSuffix(pattern, "*"))
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(value, strings.TrimPrefix(pattern, "*"))
	default:
		return pattern == value
	}
}

// AnyMatch reports whether v matches one of patterns (see Match).
func AnyMatch(patterns []string, v string) bool {
	for _, p := range patterns {
		if Match(p, v) {
			return true
		}
	}
	return false
}

// SourceMatches reports whether the peer (the zero ID: not authenticated)
// is one of the rule source f: its principals and namespaces must match
// when listed (an unauthenticated peer matches none), and its
// notPrincipals and notNamespaces must not.
func SourceMatches(f *configv1alpha1.AuthorizationRule_Source, peer identity.SPIFFEID) bool {
	authenticated := peer != identity.SPIFFEID{}
	principal, namespace := "", ""
	if authenticated {
		principal, namespace = peer.String(), peer.Namespace
	}
	if len(f.GetPrincipals()) > 0 && !(authenticated && AnyMatch(f.GetPrincipals(), principal)) {
		return false
	}
	if authenticated && AnyMatch(f.GetNotPrincipals(), principal) {
		return false
	}
	if len(f.GetNamespaces()) > 0 && !(authenticated && AnyMatch(f.GetNamespaces(), namespace)) {
		return false
	}
	if authenticated && AnyMatch(f.GetNotNamespaces(), namespace) {
		return false
	}
	return true
}

// PortMatches reports whether port is among the operation's ports (when
// listed) and not among its notPorts.
func PortMatches(op *configv1alpha1.AuthorizationRule_Operation, port uint32) bool {
	if len(op.GetPorts()) > 0 && !slices.Contains(op.GetPorts(), port) {
		return false
	}
	return !slices.Contains(op.GetNotPorts(), port)
}
