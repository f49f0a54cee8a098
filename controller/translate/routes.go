package translate

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
)

type routeKind string

const (
	kindHTTPRoute routeKind = "HTTPRoute"
	kindGRPCRoute routeKind = "GRPCRoute"
)

// compiledRoute is an HTTPRoute or GRPCRoute compiled independently of its
// parents.
type compiledRoute struct {
	kind routeKind
	obj  metav1.Object
	// id is "<kind>/<namespace>/<name>".
	id    string
	rules []*RouteRule
	// refErrs are unresolved references of the kept rules.
	refErrs []error
	// dropped are the errors of invalid rules, which are left out.
	dropped []error
	total   int
	// consumerOf are the parent Services of a consumer route: one whose
	// Service parentRefs are all in other namespaces. Its backendRefs to
	// them need no ReferenceGrant (see resolveBackend).
	consumerOf map[types.NamespacedName]bool
}

// attachment is a route attached to some ports of a Service.
type attachment struct {
	route *compiledRoute
	ports map[int32]bool
	// parent is the index of the parentRef's RouteParentStatus in the
	// route's status.
	parent int
}

// attachedRoute is what serviceRoutes sees of an attachment.
type attachedRoute struct {
	kind routeKind
	id   string
	// ns is the route's namespace.
	ns    string
	rules []*RouteRule
}

// backendSpec is a backendRef of either route kind.
type backendSpec struct {
	ref     gwapiv1.BackendRef
	filters []gwapiv1.HTTPRouteFilter
}

// routes compiles every route and writes its parent statuses.
func (b *builder) routes() {
	b.attachments = map[types.NamespacedName][]attachment{}
	for _, r := range b.ix.httpRoutes {
		cr := b.newRoute(kindHTTPRoute, r, r.Spec.ParentRefs)
		for i := range r.Spec.Rules {
			rule := &r.Spec.Rules[i]
			var backends []backendSpec
			for _, br := range rule.BackendRefs {
				backends = append(backends, backendSpec{ref: br.BackendRef, filters: br.Filters})
			}
			var matches []matchResult
			for j := range rule.Matches {
				m, p, err := compileMatchHTTP(&rule.Matches[j])
				matches = append(matches, matchResult{m, p, err})
			}
			if len(matches) == 0 {
				m, p, err := compileMatchHTTP(nil)
				matches = append(matches, matchResult{m, p, err})
			}
			b.compileRule(cr, i, matches, rule.Filters, backends, rule.Timeouts, rule.Retry)
		}
		b.status.HTTPRoutes[keyOf(r)] = b.attach(cr, r.Spec.ParentRefs)
	}
	for _, r := range b.ix.grpcRoutes {
		cr := b.newRoute(kindGRPCRoute, r, r.Spec.ParentRefs)
		for i := range r.Spec.Rules {
			rule := &r.Spec.Rules[i]
			var backends []backendSpec
			for _, br := range rule.BackendRefs {
				backends = append(backends, backendSpec{ref: br.BackendRef, filters: grpcFilters(br.Filters)})
			}
			var matches []matchResult
			for j := range rule.Matches {
				m, p, err := compileMatchGRPC(&rule.Matches[j])
				matches = append(matches, matchResult{m, p, err})
			}
			if len(matches) == 0 {
				m, p, err := compileMatchGRPC(nil)
				matches = append(matches, matchResult{m, p, err})
			}
			b.compileRule(cr, i, matches, grpcFilters(rule.Filters), backends, nil, nil)
		}
		b.status.GRPCRoutes[keyOf(r)] = b.attach(cr, r.Spec.ParentRefs)
	}
	b.kindConflicts()
	for k, v := range b.status.HTTPRoutes {
		if len(v) == 0 {
			delete(b.status.HTTPRoutes, k)
		}
	}
	for k, v := range b.status.GRPCRoutes {
		if len(v) == 0 {
			delete(b.status.GRPCRoutes, k)
		}
	}
}

func (b *builder) newRoute(kind routeKind, obj metav1.Object, parents []gwapiv1.ParentReference) *compiledRoute {
	cr := &compiledRoute{kind: kind, obj: obj, id: fmt.Sprintf("%s/%s/%s", kind, obj.GetNamespace(), obj.GetName())}
	consumerOf := map[types.NamespacedName]bool{}
	for _, pr := range parents {
		if derefOr(pr.Group, gwapiv1.GroupName) != "" || derefOr(pr.Kind, "Gateway") != "Service" {
			continue
		}
		ns := string(derefOr(pr.Namespace, gwapiv1.Namespace(obj.GetNamespace())))
		if ns == obj.GetNamespace() {
			return cr
		}
		consumerOf[types.NamespacedName{Namespace: ns, Name: string(pr.Name)}] = true
	}
	if len(consumerOf) > 0 {
		cr.consumerOf = consumerOf
	}
	return cr
}

// grpcFilters are GRPCRoute filters as HTTPRoute filters (same fields).
func grpcFilters(in []gwapiv1.GRPCRouteFilter) []gwapiv1.HTTPRouteFilter {
	var out []gwapiv1.HTTPRouteFilter
	for _, f := range in {
		out = append(out, gwapiv1.HTTPRouteFilter{
			Type:                   gwapiv1.HTTPRouteFilterType(f.Type),
			RequestHeaderModifier:  f.RequestHeaderModifier,
			ResponseHeaderModifier: f.ResponseHeaderModifier,
			RequestMirror:          f.RequestMirror,
			ExtensionRef:           f.ExtensionRef,
		})
	}
	return out
}

type matchResult struct {
	match Match
	prec  Precedence
	err   error
}

// compileRule compiles rule i of a route, one RouteRule per match, or
// records why it is dropped.
func (b *builder) compileRule(cr *compiledRoute, i int, matches []matchResult, filters []gwapiv1.HTTPRouteFilter,
	backends []backendSpec, timeouts *gwapiv1.HTTPRouteTimeouts, retry *gwapiv1.HTTPRouteRetry) {
	cr.total++
	var refErrs []error
	c := ruleContext{kind: cr.kind, ns: cr.obj.GetNamespace(), consumerOf: cr.consumerOf, refErrs: &refErrs}
	rule, err := b.ruleTemplate(c, filters, backends, timeouts, retry)
	var expanded []*RouteRule
	for j, m := range matches {
		if err != nil {
			break
		}
		if m.err != nil {
			err = m.err
			break
		}
		r := *rule
		r.Route = fmt.Sprintf("%s/%d", cr.id, i)
		r.Match = m.match
		r.Precedence = m.prec
		r.Precedence.Created = cr.obj.GetCreationTimestamp().Time
		r.Precedence.Route = cr.obj.GetNamespace() + "/" + cr.obj.GetName()
		r.Precedence.Rule, r.Precedence.Match = i, j
		err = r.Validate()
		expanded = append(expanded, &r)
	}
	if err != nil {
		cr.dropped = append(cr.dropped, fmt.Errorf("rule %d: %w", i, err))
		return
	}
	cr.rules = append(cr.rules, expanded...)
	cr.refErrs = append(cr.refErrs, refErrs...)
}

// ruleTemplate compiles what the matches of a rule share.
func (b *builder) ruleTemplate(c ruleContext, filters []gwapiv1.HTTPRouteFilter, backends []backendSpec,
	timeouts *gwapiv1.HTTPRouteTimeouts, retry *gwapiv1.HTTPRouteRetry) (*RouteRule, error) {
	fs, extErr, err := b.compileFilters(c, filters)
	if err != nil {
		return nil, err
	}
	rule := &RouteRule{Filters: fs}
	redirect := false
	for _, f := range fs {
		redirect = redirect || f.Redirect != nil
	}
	valid, weight := 0, int32(0)
	for i := range backends {
		be, err := b.compileBackend(c, &backends[i].ref, backends[i].filters)
		if err != nil {
			return nil, err
		}
		if !be.Invalid {
			valid++
		}
		weight += be.Weight
		rule.Backends = append(rule.Backends, be)
	}
	switch {
	case extErr != nil:
		c.refErr(extErr)
		rule.InvalidBackends, rule.Backends = true, nil
	case redirect:
	case valid == 0 || weight == 0:
		rule.InvalidBackends, rule.Backends = true, nil
	}
	if timeouts != nil {
		if rule.RequestTimeout, err = timeout(timeouts.Request); err != nil {
			return nil, fmt.Errorf("timeouts.request: %w", err)
		}
		if rule.BackendRequestTimeout, err = timeout(timeouts.BackendRequest); err != nil {
			return nil, fmt.Errorf("timeouts.backendRequest: %w", err)
		}
	}
	if retry != nil {
		r := &Retry{}
		// The CRD's bounds (codes 400-599, attempts >= 1), for objects that
		// did not pass the API server (local mode).
		for _, code := range retry.Codes {
			if code < 400 || code > 599 {
				return nil, fmt.Errorf("%w: retry code %d is not within 400-599", ErrUnsupportedValue, code)
			}
			r.Codes = append(r.Codes, int32(code))
		}
		if retry.Attempts != nil {
			if *retry.Attempts < 1 {
				return nil, fmt.Errorf("%w: retry.attempts %d is less than 1", ErrUnsupportedValue, *retry.Attempts)
			}
			r.Attempts = int32(*retry.Attempts)
		}
		if retry.Backoff != nil {
			if r.Backoff, err = optDuration(string(*retry.Backoff)); err != nil {
				return nil, fmt.Errorf("retry.backoff: %w", err)
			}
		}
		rule.Retry = r
	}
	return rule, nil
}

// timeout parses a route timeout; unset and zero ("0s" disables the
// timeout) give nil.
func timeout(d *gwapiv1.Duration) (*time.Duration, error) {
	if d == nil {
		return nil, nil
	}
	v, err := optDuration(string(*d))
	if err != nil || v == nil || *v == 0 {
		return nil, err
	}
	return v, nil
}

// attach attaches a compiled route to its Service parents and returns the
// RouteParentStatus of every parentRef Ambit owns: Services (GAMMA) and
// ambit-waypoint Gateways (whose mesh listener accepts no routes). A parent
// Service in another namespace makes a consumer route (GAMMA), which
// applies only to clients in the route's namespace (see serviceRoutes).
func (b *builder) attach(cr *compiledRoute, parents []gwapiv1.ParentReference) []gwapiv1.RouteParentStatus {
	var out []gwapiv1.RouteParentStatus
	gen := cr.obj.GetGeneration()
	resolved := condition(string(gwapiv1.RouteConditionResolvedRefs), true, string(gwapiv1.RouteReasonResolvedRefs), "All references resolved", gen)
	if len(cr.refErrs) > 0 {
		resolved = condition(string(gwapiv1.RouteConditionResolvedRefs), false, reasonOf(cr.refErrs[0]), joinErrs(cr.refErrs), gen)
	}
	for _, pr := range parents {
		group, kind := string(derefOr(pr.Group, gwapiv1.GroupName)), string(derefOr(pr.Kind, "Gateway"))
		k := types.NamespacedName{Namespace: string(derefOr(pr.Namespace, gwapiv1.Namespace(cr.obj.GetNamespace()))), Name: string(pr.Name)}
		st := gwapiv1.RouteParentStatus{ParentRef: pr, ControllerName: ControllerName}
		reject := func(reason gwapiv1.RouteConditionReason, msg string) {
			st.Conditions = append(st.Conditions, condition(string(gwapiv1.RouteConditionAccepted), false, string(reason), msg, gen), resolved)
		}
		switch {
		case group == gwapiv1.GroupName && kind == "Gateway":
			gw := b.ix.gatewaysByKey[k]
			if gw == nil || !b.ours(gw) {
				continue
			}
			reject(gwapiv1.RouteReasonNotAllowedByListeners, "the HBONE listener of a waypoint accepts no routes: attach routes to a Service (GAMMA)")
		case group == "" && kind == "Service":
			svc := b.ix.servicesByKey[k]
			ports := map[int32]bool{}
			if svc != nil {
				for _, p := range svc.Spec.Ports {
					if (pr.Port == nil || *pr.Port == p.Port) && (pr.SectionName == nil || string(*pr.SectionName) == p.Name) {
						ports[p.Port] = true
					}
				}
			}
			switch {
			case svc == nil:
				reject(gwapiv1.RouteReasonNoMatchingParent, fmt.Sprintf("parent Service %s not found", k))
			case !meshService(svc):
				reject(gwapiv1.RouteReasonNoMatchingParent, fmt.Sprintf("parent Service %s has no cluster IP (headless or ExternalName)", k))
			case len(ports) == 0:
				reject(gwapiv1.RouteReasonNoMatchingParent, fmt.Sprintf("parent Service %s has no port matching the parentRef's port/sectionName", k))
			case len(cr.rules) == 0 && len(cr.dropped) > 0:
				reject(gwapiv1.RouteConditionReason(reasonOf(cr.dropped[0])), "no valid rule: "+joinErrs(cr.dropped))
			default:
				st.Conditions = append(st.Conditions, condition(string(gwapiv1.RouteConditionAccepted), true, string(gwapiv1.RouteReasonAccepted), "Route was valid", gen), resolved)
				if len(cr.dropped) > 0 {
					st.Conditions = append(st.Conditions, condition(string(gwapiv1.RouteConditionPartiallyInvalid), true,
						string(gwapiv1.RouteReasonUnsupportedValue), "Dropped Rule(s): "+joinErrs(cr.dropped), gen))
				}
				b.attachments[k] = append(b.attachments[k], attachment{route: cr, ports: ports, parent: len(out)})
			}
			if !meshService(svc) {
				msg := "parent not found"
				if svc != nil {
					msg = "the parent Service has no cluster IP"
				}
				st.Conditions = append(st.Conditions, condition(ConditionResolvedWaypoints, false,
					string(gwapiv1.RouteReasonNoMatchingParent), msg, gen))
			} else if _, _, werr := b.waypointFor(k.Namespace, labelOf(svc, LabelUseWaypoint), forService); werr != nil {
				st.Conditions = append(st.Conditions, condition(ConditionResolvedWaypoints, false, ReasonNoWaypoint,
					"the rules apply only at a waypoint: "+werr.Error(), gen))
			} else {
				st.Conditions = append(st.Conditions, condition(ConditionResolvedWaypoints, true, ReasonResolvedWaypoints, "The parent Service has a waypoint", gen))
			}
		default:
			continue
		}
		out = append(out, st)
	}
	return out
}

// kindConflicts settles HTTPRoutes and GRPCRoutes attached to one Service
// port. Gateway API (GRPCRoute spec.hostnames) accepts exactly one of the two
// kinds on a listener: the oldest route's, then the first by
// "<namespace>/<name>"; in GAMMA a Service port plays the listener. Routes
// of the other kind lose the port; a route that loses every port of a
// parentRef is Accepted=False (Conflicted) for it. Producer routes and the
// consumer routes of each namespace are settled apart: they never apply to
// the same requests (GAMMA merges routes only within such a group).
func (b *builder) kindConflicts() {
	type groupPort struct {
		ns   string
		port int32
	}
	for _, svc := range sortedKeys(b.attachments) {
		atts := b.attachments[svc]
		winner := map[groupPort]*compiledRoute{}
		for _, a := range atts {
			for p := range a.ports {
				gp := groupPort{a.route.obj.GetNamespace(), p}
				if w := winner[gp]; w == nil || olderFirst(a.route.obj, w.obj) < 0 {
					winner[gp] = a.route
				}
			}
		}
		kept := atts[:0]
		for _, a := range atts {
			var lostTo *compiledRoute
			for _, p := range slices.Sorted(maps.Keys(a.ports)) {
				if w := winner[groupPort{a.route.obj.GetNamespace(), p}]; w.kind != a.route.kind {
					delete(a.ports, p)
					lostTo = w
				}
			}
			if len(a.ports) > 0 {
				kept = append(kept, a)
				continue
			}
			statuses := b.status.HTTPRoutes[keyOf(a.route.obj)]
			if a.route.kind == kindGRPCRoute {
				statuses = b.status.GRPCRoutes[keyOf(a.route.obj)]
			}
			st := &statuses[a.parent]
			gen := a.route.obj.GetGeneration()
			conds := st.Conditions[:0]
			for _, c := range st.Conditions {
				switch c.Type {
				case string(gwapiv1.RouteConditionAccepted):
					c = condition(c.Type, false, ReasonConflicted, fmt.Sprintf(
						"the older %s %s/%s is attached to the same port of Service %s; HTTPRoutes and GRPCRoutes cannot share a port",
						lostTo.kind, lostTo.obj.GetNamespace(), lostTo.obj.GetName(), svc), gen)
				case string(gwapiv1.RouteConditionPartiallyInvalid):
					continue
				}
				conds = append(conds, c)
			}
			st.Conditions = conds
		}
		b.attachments[svc] = kept
	}
}

// attachedRules are the routes attached to a Service port, each once.
func (b *builder) attachedRules(svc types.NamespacedName, port int32) []attachedRoute {
	var out []attachedRoute
	seen := map[string]bool{}
	for _, a := range b.attachments[svc] {
		if !a.ports[port] || seen[a.route.id] || len(a.route.rules) == 0 {
			continue
		}
		seen[a.route.id] = true
		out = append(out, attachedRoute{kind: a.route.kind, id: a.route.id, ns: a.route.obj.GetNamespace(), rules: a.route.rules})
	}
	return out
}

func labelOf(svc *corev1.Service, label string) string {
	if svc == nil {
		return ""
	}
	return svc.Labels[label]
}

func joinErrs(errs []error) string {
	var s []string
	for _, e := range errs {
		s = append(s, e.Error())
	}
	return strings.Join(s, "; ")
}
