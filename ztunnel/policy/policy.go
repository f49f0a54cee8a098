package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/authzmatch"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/config"
)

// Conn describes a connection to authorize.
type Conn struct {
	// Peer is the verified SPIFFE ID of the source; the zero value means
	// plaintext (no identity).
	Peer identity.SPIFFEID
	// DstPort is the destination port the source asked for.
	DstPort uint16
	// Src is the client's address as the destination application sees it
	// (ipBlocks match it); invalid when unknown.
	Src netip.Addr
}

// Decision is the outcome of Evaluate.
type Decision struct {
	Allow bool
	// Policy names the deciding policy ("<ns>/<name>"): the matching DENY,
	// or the matching ALLOW; empty when no policy decided.
	Policy string
	// Reason is a short text for logs and the 403 body.
	Reason string
}

// Applicable returns the policies that apply to w, sorted by name.
func Applicable(snap *config.Snapshot, w *config.Workload, systemNamespace string) []*configv1alpha1.Authorization {
	var out []*configv1alpha1.Authorization
	listed := map[string]bool{}
	for _, n := range w.Proto.GetAuthorizationPolicies() {
		listed[n] = true
	}
	for name, a := range snap.Authorizations {
		ns := a.GetNamespace()
		if ns == "" {
			ns, _, _ = strings.Cut(name, "/")
		}
		switch a.GetScope() {
		case configv1alpha1.Authorization_SCOPE_WORKLOAD_SELECTOR:
			if !listed[name] || ns != w.Namespace {
				continue
			}
		case configv1alpha1.Authorization_SCOPE_NAMESPACE:
			if ns != w.Namespace {
				continue
			}
		case configv1alpha1.Authorization_SCOPE_GLOBAL:
			if ns != systemNamespace {
				continue
			}
		default:
			continue
		}
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b *configv1alpha1.Authorization) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

// Evaluate decides whether c may reach a workload to which policies apply.
func Evaluate(policies []*configv1alpha1.Authorization, c Conn) Decision {
	var allows []*configv1alpha1.Authorization
	for _, a := range policies {
		switch a.GetAction() {
		case configv1alpha1.Authorization_ACTION_DENY:
			if matches(a, c) {
				return Decision{Policy: a.GetName(), Reason: fmt.Sprintf("denied by policy %s", a.GetName())}
			}
		case configv1alpha1.Authorization_ACTION_ALLOW:
			allows = append(allows, a)
		}
	}
	if len(allows) == 0 {
		return Decision{Allow: true, Reason: "no policy applies"}
	}
	for _, a := range allows {
		if matches(a, c) {
			return Decision{Allow: true, Policy: a.GetName(), Reason: fmt.Sprintf("allowed by policy %s", a.GetName())}
		}
	}
	return Decision{Reason: fmt.Sprintf("no ALLOW policy matched (%d apply)", len(allows))}
}

func matches(a *configv1alpha1.Authorization, c Conn) bool {
	for _, r := range a.GetRules() {
		if ruleMatches(r, c) {
			return true
		}
	}
	return false
}

func ruleMatches(r *configv1alpha1.AuthorizationRule, c Conn) bool {
	fromOK := len(r.GetFrom()) == 0
	for _, f := range r.GetFrom() {
		if authzmatch.SourceMatches(f, c.Peer, c.Src) {
			fromOK = true
			break
		}
	}
	if !fromOK {
		return false
	}
	if len(r.GetTo()) == 0 {
		return true
	}
	for _, op := range r.GetTo() {
		if authzmatch.PortMatches(op, uint32(c.DstPort)) {
			return true
		}
	}
	return false
}
