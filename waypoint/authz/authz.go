package authz

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/authzmatch"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// Request is what a policy is evaluated against.
type Request struct {
	// Peer is the verified SPIFFE ID of the client (the HBONE tunnel's
	// peer); the zero value is an unauthenticated client.
	Peer identity.SPIFFEID
	// Addr is the client's address (proxy.Source.Address: the one the
	// sending ztunnel names, else the tunnel's source), which ipBlocks
	// match; invalid when unknown (in no block).
	Addr netip.Addr
	// Service ("<namespace>/<name>") and Port the request was sent to.
	Service string
	Port    uint32
	// Method, Path (decoded, without query) and Header of the request.
	Method string
	Path   string
	Header http.Header
	// L4 is true for a TCP connection (no HTTP attributes): an operation
	// that names methods, paths, notPaths or headers never matches in an
	// ALLOW policy, and in a DENY policy matches on its ports alone (so an
	// L4 connection is never allowed, nor let through, by an attribute it
	// does not have).
	L4 bool
}

// Decision is the outcome of Evaluate.
type Decision struct {
	Allow bool
	// Policy names what decided: the matching DENY policy, the matching
	// ALLOW policy, or (denied for want of a match) the ALLOW policies that
	// apply, joined with ", ". Empty when no policy applies.
	Policy string
	// Reason is a short text for logs.
	Reason string
}

// Policies is a compiled, immutable set of Authorization resources as a
// waypoint receives them: WAYPOINT-scoped policies (targets are Gateways)
// and SERVICE-scoped ones (targets are Services). A nil *Policies allows
// everything.
type Policies struct {
	list []*configv1alpha1.Authorization // sorted by name
}

// ErrInvalid wraps every reason Compile rejects a policy.
var ErrInvalid = errors.New("invalid authorization")

// Compile validates the resources (by xDS resource name) and returns them
// as Policies. Policies of scopes a waypoint does not enforce (workload
// selector, namespace, mesh-wide: ztunnel's) are ignored. It rejects an
// unknown action, a WAYPOINT or SERVICE policy without targets, an IP block
// that does not parse, an empty header name and a header match without
// values, so that the xDS client NACKs the update and the last good set
// stays in force.
func Compile(rs map[string]*configv1alpha1.Authorization) (*Policies, error) {
	p := &Policies{}
	for key, a := range rs {
		name := a.GetName()
		if name == "" {
			name = key
		}
		switch a.GetScope() {
		case configv1alpha1.Authorization_SCOPE_WAYPOINT, configv1alpha1.Authorization_SCOPE_SERVICE:
		default:
			continue
		}
		switch a.GetAction() {
		case configv1alpha1.Authorization_ACTION_ALLOW, configv1alpha1.Authorization_ACTION_DENY:
		default:
			return nil, fmt.Errorf("%w %s: action %s", ErrInvalid, name, a.GetAction())
		}
		if len(a.GetTargets()) == 0 {
			return nil, fmt.Errorf("%w %s: scope %s without targets", ErrInvalid, name, a.GetScope())
		}
		for i, r := range a.GetRules() {
			for j, f := range r.GetFrom() {
				if err := authzmatch.CheckIPBlocks(f); err != nil {
					return nil, fmt.Errorf("%w %s: rule %d, from %d: %v", ErrInvalid, name, i, j, err)
				}
			}
			for j, op := range r.GetTo() {
				for _, h := range op.GetHeaders() {
					if h.GetName() == "" {
						return nil, fmt.Errorf("%w %s: rule %d, to %d: header without name", ErrInvalid, name, i, j)
					}
					if len(h.GetValues()) == 0 {
						return nil, fmt.Errorf("%w %s: rule %d, to %d: header %q without values", ErrInvalid, name, i, j, h.GetName())
					}
				}
			}
		}
		if a.GetName() != name {
			a = cloneNamed(a, name)
		}
		p.list = append(p.list, a)
	}
	slices.SortFunc(p.list, func(a, b *configv1alpha1.Authorization) int { return strings.Compare(a.GetName(), b.GetName()) })
	return p, nil
}

func cloneNamed(a *configv1alpha1.Authorization, name string) *configv1alpha1.Authorization {
	c := &configv1alpha1.Authorization{
		Name: name, Namespace: a.GetNamespace(), Scope: a.GetScope(), Action: a.GetAction(),
		Rules: a.GetRules(), Targets: a.GetTargets(),
	}
	return c
}

// Len is the number of policies the waypoint enforces.
func (p *Policies) Len() int {
	if p == nil {
		return 0
	}
	return len(p.list)
}

// Names returns the names of the policies in force, sorted.
func (p *Policies) Names() []string {
	if p == nil {
		return nil
	}
	out := make([]string, len(p.list))
	for i, a := range p.list {
		out[i] = a.GetName()
	}
	return out
}

// Applicable returns the policies that apply to a request for service at
// the waypoint gateway ("<namespace>/<name>"): WAYPOINT policies that
// target gateway (all of them when gateway is empty) and SERVICE policies
// that target service.
func (p *Policies) Applicable(gateway, service string) []*configv1alpha1.Authorization {
	if p == nil {
		return nil
	}
	var out []*configv1alpha1.Authorization
	for _, a := range p.list {
		switch a.GetScope() {
		case configv1alpha1.Authorization_SCOPE_WAYPOINT:
			if gateway == "" || slices.Contains(a.GetTargets(), gateway) {
				out = append(out, a)
			}
		case configv1alpha1.Authorization_SCOPE_SERVICE:
			if service != "" && slices.Contains(a.GetTargets(), service) {
				out = append(out, a)
			}
		}
	}
	return out
}

// Evaluate decides a request at the waypoint gateway: a matching DENY
// policy denies; otherwise, when no ALLOW policy applies the request is
// allowed, and when some do, one of them must match.
func (p *Policies) Evaluate(gateway string, r Request) Decision {
	return Evaluate(p.Applicable(gateway, r.Service), r)
}

// Evaluate decides r against the policies that apply to it.
func Evaluate(policies []*configv1alpha1.Authorization, r Request) Decision {
	var allows []string
	matched := ""
	for _, a := range policies {
		switch a.GetAction() {
		case configv1alpha1.Authorization_ACTION_DENY:
			if matches(a, r) {
				return Decision{Policy: a.GetName(), Reason: "denied by policy " + a.GetName()}
			}
		case configv1alpha1.Authorization_ACTION_ALLOW:
			allows = append(allows, a.GetName())
			if matched == "" && matches(a, r) {
				matched = a.GetName()
			}
		}
	}
	switch {
	case len(allows) == 0:
		return Decision{Allow: true, Reason: "no policy applies"}
	case matched != "":
		return Decision{Allow: true, Policy: matched, Reason: "allowed by policy " + matched}
	}
	names := allows
	if len(names) > 3 {
		names = append(names[:3:3], "...")
	}
	return Decision{Policy: strings.Join(names, ", "), Reason: fmt.Sprintf("no ALLOW policy matched (%d apply)", len(allows))}
}

func matches(a *configv1alpha1.Authorization, r Request) bool {
	deny := a.GetAction() == configv1alpha1.Authorization_ACTION_DENY
	for _, rule := range a.GetRules() {
		if ruleMatches(rule, r, deny) {
			return true
		}
	}
	return false
}

func ruleMatches(rule *configv1alpha1.AuthorizationRule, r Request, deny bool) bool {
	fromOK := len(rule.GetFrom()) == 0
	for _, f := range rule.GetFrom() {
		if authzmatch.SourceMatches(f, r.Peer, r.Addr) {
			fromOK = true
			break
		}
	}
	if !fromOK {
		return false
	}
	if len(rule.GetTo()) == 0 {
		return true
	}
	for _, op := range rule.GetTo() {
		if operationMatches(op, r, deny) {
			return true
		}
	}
	return false
}

func operationMatches(op *configv1alpha1.AuthorizationRule_Operation, r Request, deny bool) bool {
	if !authzmatch.PortMatches(op, r.Port) {
		return false
	}
	if r.L4 {
		l7 := len(op.GetMethods()) > 0 || len(op.GetPaths()) > 0 || len(op.GetNotPaths()) > 0 || len(op.GetHeaders()) > 0
		return !l7 || deny
	}
	if len(op.GetMethods()) > 0 && !slices.Contains(op.GetMethods(), r.Method) {
		return false
	}
	if len(op.GetPaths()) > 0 && !authzmatch.AnyMatch(op.GetPaths(), r.Path) {
		return false
	}
	if authzmatch.AnyMatch(op.GetNotPaths(), r.Path) {
		return false
	}
	for _, h := range op.GetHeaders() {
		vs := r.Header.Values(h.GetName())
		if len(vs) == 0 || !authzmatch.AnyMatch(h.GetValues(), strings.Join(vs, ",")) {
			return false
		}
	}
	return true
}
