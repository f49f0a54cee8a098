// Package authzmatch holds the matching that ztunnel's L4 policy
// (ztunnel/policy) and the waypoint's L7 policy (waypoint/authz) share for
// AuthorizationPolicy rules: value patterns, the rule's sources (principals
// and namespaces of the verified peer, the client's address) and its ports. The L7 parts
// (methods, paths, headers) stay in the waypoint.
package authzmatch

import (
	"fmt"
	"net/netip"
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

// SourceMatches reports whether the client (peer: its verified identity,
// the zero ID when not authenticated; addr: its address, invalid when
// unknown) is one of the rule source f: its principals, namespaces and IP
// blocks must match when listed (an unauthenticated peer matches no
// principals or namespaces, an unknown address no blocks), and its
// notPrincipals, notNamespaces and notIpBlocks must not.
func SourceMatches(f *configv1alpha1.AuthorizationRule_Source, peer identity.SPIFFEID, addr netip.Addr) bool {
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
	if len(f.GetIpBlocks()) > 0 && !InIPBlocks(f.GetIpBlocks(), addr) {
		return false
	}
	return !InIPBlocks(f.GetNotIpBlocks(), addr)
}

// ParseIPBlock parses an ipBlocks or notIpBlocks entry: a CIDR block
// ("10.1.2.0/24", "2001:db8::/32") or a single address ("10.1.2.3",
// "2001:db8::7"), which is a /32 or /128 block. It returns the block in
// canonical form: host bits cleared, an IPv4-mapped IPv6 block as IPv4.
// Zones ("fe80::1%eth0") are refused.
func ParseIPBlock(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		q, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("IP block %q is not an IP address or CIDR block", s)
		}
		p = q
		if a := p.Addr(); a.Is4In6() {
			if p.Bits() < 96 {
				return netip.Prefix{}, fmt.Errorf("IP block %q: an IPv4-mapped block shorter than /96", s)
			}
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("IP block %q is not an IP address or CIDR block", s)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("IP block %q: an address with a zone", s)
		}
		a = a.Unmap()
		p = netip.PrefixFrom(a, a.BitLen())
	}
	return p.Masked(), nil
}

// CheckIPBlocks returns the error of the first ipBlocks or notIpBlocks
// entry of source f that ParseIPBlock refuses, or nil: what a data plane
// checks before it accepts an Authorization.
func CheckIPBlocks(f *configv1alpha1.AuthorizationRule_Source) error {
	for _, blocks := range [][]string{f.GetIpBlocks(), f.GetNotIpBlocks()} {
		for _, b := range blocks {
			if _, err := ParseIPBlock(b); err != nil {
				return err
			}
		}
	}
	return nil
}

// InIPBlocks reports whether addr is in one of blocks (ParseIPBlock's
// forms; an entry that does not parse contains nothing). An IPv4-mapped
// IPv6 address counts as its IPv4 address; an invalid addr (unknown) is in
// no block.
func InIPBlocks(blocks []string, addr netip.Addr) bool {
	if !addr.IsValid() || len(blocks) == 0 {
		return false
	}
	addr = addr.Unmap().WithZone("")
	for _, b := range blocks {
		if p, err := ParseIPBlock(b); err == nil && p.Contains(addr) {
			return true
		}
	}
	return false
}

// PortMatches reports whether port is among the operation's ports (when
// listed) and not among its notPorts.
func PortMatches(op *configv1alpha1.AuthorizationRule_Operation, port uint32) bool {
	if len(op.GetPorts()) > 0 && !slices.Contains(op.GetPorts(), port) {
		return false
	}
	return !slices.Contains(op.GetNotPorts(), port)
}
