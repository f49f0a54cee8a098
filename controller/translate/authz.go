package translate

import (
	"errors"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	securityv1alpha1 "github.com/ambit-mesh/ambit/apis/security/v1alpha1"
)

// authorizations translates AuthorizationPolicies.
//
// Scope: a selector makes a WORKLOAD_SELECTOR policy (listed by the Workloads
// it selects); targetRefs make a WAYPOINT (Gateways) or SERVICE (Services)
// policy; neither makes a NAMESPACE policy, or GLOBAL in the system
// namespace.
//
// A policy that is invalid in a way that still says whom it protects (the
// usual case: HTTP attributes in a policy ztunnel enforces, or a port out of
// range) fails closed, as Istio's ztunnel does: it is emitted with no rules
// if it is an ALLOW policy (matching nothing, so it denies what no other
// ALLOW policy allows) and with one match-everything rule if it is a DENY
// policy, and its Accepted condition is False (Invalid) and says so. A policy
// whose scope cannot be known (bad selector, targetRefs of an unsupported
// kind, unknown action) is not emitted.
func (b *builder) authorizations() {
	b.authzSelectors = map[types.NamespacedName]labels.Selector{}
	for _, ap := range b.ix.authz {
		a, sel, note, err := b.authorization(ap)
		if a != nil {
			if verr := a.Validate(); verr != nil {
				err = verr
				if a.Action == configv1alpha1.Authorization_ACTION_ALLOW {
					a.Rules = nil
					note = "enforced fail-closed: as an ALLOW policy with no rules"
				} else {
					a.Rules = []securityv1alpha1.Rule{{}}
					note = "enforced fail-closed: as a DENY policy matching all traffic"
				}
			}
			b.mesh.Authorizations = append(b.mesh.Authorizations, a)
			if sel != nil {
				b.authzSelectors[a.Key] = sel
			}
		}
		var conds []metav1.Condition
		if err != nil {
			msg := err.Error()
			if note != "" {
				msg += "; " + note
			}
			conds = accepted(errors.New(msg), "", ap.Generation)
		} else {
			conds = accepted(nil, note, ap.Generation)
		}
		b.status.Policies[PolicyKey{Kind: "AuthorizationPolicy", NamespacedName: keyOf(ap)}] = conds
	}
}

// authorization builds the IR of one policy. note is a remark for the
// Accepted message (missing targets).
func (b *builder) authorization(ap *securityv1alpha1.AuthorizationPolicy) (*Authorization, labels.Selector, string, error) {
	a := &Authorization{Key: keyOf(ap), Rules: ap.Spec.Rules}
	switch ap.Spec.Action {
	case securityv1alpha1.ActionAllow, "":
		a.Action = configv1alpha1.Authorization_ACTION_ALLOW
	case securityv1alpha1.ActionDeny:
		a.Action = configv1alpha1.Authorization_ACTION_DENY
	default:
		return nil, nil, "", fmt.Errorf("%w: action %q", ErrInvalidPolicy, ap.Spec.Action)
	}
	if ap.Spec.Selector != nil && len(ap.Spec.TargetRefs) > 0 {
		return nil, nil, "", fmt.Errorf("%w: set targetRefs or selector, not both", ErrInvalidPolicy)
	}
	var sel labels.Selector
	var notes []string
	switch {
	case ap.Spec.Selector != nil:
		s, err := metav1.LabelSelectorAsSelector(ap.Spec.Selector)
		if err != nil {
			return nil, nil, "", fmt.Errorf("%w: selector: %v", ErrInvalidPolicy, err)
		}
		sel = s
		a.Scope = configv1alpha1.Authorization_SCOPE_WORKLOAD_SELECTOR
	case len(ap.Spec.TargetRefs) > 0:
		for _, ref := range ap.Spec.TargetRefs {
			k := types.NamespacedName{Namespace: ap.Namespace, Name: ref.Name}
			var scope configv1alpha1.Authorization_Scope
			switch {
			case ref.Group == gwapiv1.GroupName && ref.Kind == "Gateway":
				scope = configv1alpha1.Authorization_SCOPE_WAYPOINT
				if b.waypoints[k] == nil {
					notes = append(notes, fmt.Sprintf("target Gateway %s is not a valid waypoint (yet)", k))
				}
			case ref.Group == "" && ref.Kind == "Service":
				scope = configv1alpha1.Authorization_SCOPE_SERVICE
				if b.ix.servicesByKey[k] == nil {
					notes = append(notes, fmt.Sprintf("target Service %s not found (yet)", k))
				}
			default:
				return nil, nil, "", fmt.Errorf("%w: targetRef %s/%s: only Gateways and Services", ErrInvalidPolicy, ref.Group, ref.Kind)
			}
			if a.Scope != configv1alpha1.Authorization_SCOPE_UNSPECIFIED && a.Scope != scope {
				return nil, nil, "", fmt.Errorf("%w: targetRefs mix Gateways and Services; split the policy", ErrInvalidPolicy)
			}
			a.Scope = scope
			a.Targets = append(a.Targets, k)
		}
	case ap.Namespace == b.opts.SystemNamespace:
		a.Scope = configv1alpha1.Authorization_SCOPE_GLOBAL
	default:
		a.Scope = configv1alpha1.Authorization_SCOPE_NAMESPACE
	}
	return a, sel, strings.Join(notes, "; "), nil
}
