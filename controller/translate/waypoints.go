package translate

import (
	"cmp"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// LabelGatewayName is the Gateway API label the deployer puts on a
// waypoint's Deployment, Pods and Service. Pods and Services carrying it are
// the waypoint itself and never get a waypoint.
const LabelGatewayName = "gateway.networking.k8s.io/gateway-name"

// waypointState is a valid waypoint Gateway during translation.
type waypointState struct {
	gw       *gwapiv1.Gateway
	identity string
	// ref is nil until the waypoint's Service has a cluster IP: a waypoint
	// without an address is not ready, and nothing is sent to it.
	ref *WaypointRef
	// routes are the routes ("<kind>/<ns>/<name>") contributing rules.
	routes map[string]bool
	// forServices and forWorkloads say what traffic the waypoint handles
	// (its ambit.dev/waypoint-for label); badFor is the label's value when
	// it is not one Ambit knows (the waypoint then handles services).
	forServices, forWorkloads bool
	badFor                    string
}

// target is the kind of traffic a waypoint is resolved for.
type target int

const (
	forService target = iota
	forWorkload
)

func (t target) String() string {
	if t == forWorkload {
		return "workload"
	}
	return "service"
}

// object is the kind of object whose label selects a waypoint for t.
func (t target) object() string {
	if t == forWorkload {
		return "Pod"
	}
	return "Service"
}

// serves reports whether the waypoint handles traffic of kind t.
func (ws *waypointState) serves(t target) bool {
	if t == forWorkload {
		return ws.forWorkloads
	}
	return ws.forServices
}

// parseWaypointFor reads a Gateway's ambit.dev/waypoint-for label into ws;
// an unknown value means service and is kept in badFor.
func parseWaypointFor(ws *waypointState, value string) {
	switch value {
	case "", WaypointForService:
		ws.forServices = true
	case WaypointForWorkload:
		ws.forWorkloads = true
	case WaypointForAll:
		ws.forServices, ws.forWorkloads = true, true
	case WaypointForNone:
	default:
		ws.forServices, ws.badFor = true, value
	}
}

// gatewayClasses accepts ambit-waypoint; another class with Ambit's
// controllerName is refused (Ambit serves only ambit-waypoint).
func (b *builder) gatewayClasses() {
	for _, gc := range b.ix.gatewayClasses {
		if gc.Spec.ControllerName != ControllerName {
			continue
		}
		c := condition(string(gwapiv1.GatewayClassConditionStatusAccepted), true,
			string(gwapiv1.GatewayClassReasonAccepted), "Ambit serves this class as waypoints", gc.Generation)
		if gc.Name != WaypointClassName {
			c = condition(string(gwapiv1.GatewayClassConditionStatusAccepted), false,
				string(gwapiv1.GatewayClassReasonUnsupported),
				fmt.Sprintf("Ambit serves only the GatewayClass %q", WaypointClassName), gc.Generation)
		}
		b.status.GatewayClasses[gc.Name] = []metav1.Condition{c}
	}
}

// ours reports whether Ambit owns Gateways of the class ambit-waypoint: yes,
// unless a GatewayClass of that name names another controller. (A missing
// GatewayClass object is tolerated so that local mode works without one.)
func (b *builder) ours(gw *gwapiv1.Gateway) bool {
	if gw.Spec.GatewayClassName != WaypointClassName {
		return false
	}
	for _, gc := range b.ix.gatewayClasses {
		if gc.Name == WaypointClassName {
			return gc.Spec.ControllerName == ControllerName
		}
	}
	return true
}

// validateGateway checks a waypoint Gateway's shape.
func validateGateway(gw *gwapiv1.Gateway) error {
	if len(gw.Spec.Addresses) > 0 {
		return ErrUnsupportedAddress
	}
	if len(gw.Spec.Listeners) != 1 || listenerError(&gw.Spec.Listeners[0]) != nil {
		return ErrInvalidListener
	}
	return nil
}

// listenerError says what is wrong with a waypoint listener, with the
// listener condition reason.
func listenerError(l *gwapiv1.Listener) error {
	switch {
	case l.Protocol != WaypointListenerProtocol:
		return fmt.Errorf("%w: protocol %q, want %s", ErrInvalidListener, l.Protocol, WaypointListenerProtocol)
	case l.Port != WaypointListenerPort:
		return fmt.Errorf("%w: port %d, want %d", ErrInvalidListener, l.Port, WaypointListenerPort)
	case l.Name != "mesh":
		return fmt.Errorf("%w: name %q, want mesh", ErrInvalidListener, l.Name)
	case l.Hostname != nil || l.TLS != nil:
		return fmt.Errorf("%w: hostname and tls are not supported", ErrInvalidListener)
	case !defaultAllowedRoutes(l.AllowedRoutes):
		return fmt.Errorf("%w: allowedRoutes other than the default (namespaces from Same, no kinds) are not supported", ErrInvalidListener)
	}
	return nil
}

// defaultAllowedRoutes accepts what the Gateway CRD defaults allowedRoutes
// to ({namespaces: {from: Same}}), and its absence.
func defaultAllowedRoutes(ar *gwapiv1.AllowedRoutes) bool {
	if ar == nil {
		return true
	}
	if len(ar.Kinds) > 0 {
		return false
	}
	ns := ar.Namespaces
	return ns == nil || (ns.Selector == nil && (ns.From == nil || *ns.From == gwapiv1.NamespacesFromSame))
}

// gateways finds the valid waypoints and whether each is ready (its Service,
// named after the Gateway, has a cluster IP).
func (b *builder) gateways() {
	for _, gw := range b.ix.gateways {
		if !b.ours(gw) || validateGateway(gw) != nil {
			continue
		}
		k := keyOf(gw)
		ws := &waypointState{gw: gw, identity: b.spiffeID(gw.Namespace, gw.Name), routes: map[string]bool{}}
		parseWaypointFor(ws, gw.Labels[LabelWaypointFor])
		if svc := b.ix.servicesByKey[k]; svc != nil {
			if ips := clusterIPs(svc); len(ips) > 0 {
				ws.ref = &WaypointRef{Gateway: k, Address: ips[0], Identity: ws.identity}
			}
		}
		b.waypoints[k] = ws
	}
}

// waypointFor resolves the ambit.dev/use-waypoint label of a Service or
// Pod (or "" to use only the namespace's) for traffic of kind t. It
// returns the Gateway the label names and the ready waypoint, or an error
// saying why there is none (a waypoint whose ambit.dev/waypoint-for
// excludes t is none).
func (b *builder) waypointFor(ns, objectLabel string, t target) (types.NamespacedName, *WaypointRef, error) {
	name := objectLabel
	if name == "" {
		name = b.ix.nsLabel(ns, LabelUseWaypoint)
	}
	if name == "" {
		return types.NamespacedName{}, nil, fmt.Errorf("no %s label on the %s or its Namespace", LabelUseWaypoint, t.object())
	}
	k := types.NamespacedName{Namespace: ns, Name: name}
	ws := b.waypoints[k]
	switch {
	case ws == nil && b.ix.gatewaysByKey[k] == nil:
		return k, nil, fmt.Errorf("waypoint Gateway %s not found", k)
	case ws == nil:
		return k, nil, fmt.Errorf("the Gateway %s is not a valid %s Gateway", k, WaypointClassName)
	case !ws.serves(t):
		return k, nil, fmt.Errorf("waypoint %s does not handle %s traffic (%s: %s)", k, t, LabelWaypointFor, cmp.Or(ws.gw.Labels[LabelWaypointFor], "unset, service"))
	case ws.ref == nil:
		return k, nil, fmt.Errorf("waypoint %s has no Service address yet", k)
	}
	return k, ws.ref, nil
}

// gatewayStatus writes the status of every waypoint-class Gateway.
func (b *builder) gatewayStatus() {
	for _, gw := range b.ix.gateways {
		if !b.ours(gw) {
			continue
		}
		gen := gw.Generation
		st := gwapiv1.GatewayStatus{}
		err := validateGateway(gw)
		ws := b.waypoints[keyOf(gw)]
		supported := []gwapiv1.RouteGroupKind{}
		switch {
		case err != nil:
			reason := gwapiv1.GatewayReasonListenersNotValid
			if err == ErrUnsupportedAddress {
				reason = gwapiv1.GatewayReasonUnsupportedAddress
			}
			st.Conditions = []metav1.Condition{
				condition(string(gwapiv1.GatewayConditionAccepted), false, string(reason), err.Error(), gen),
				condition(string(gwapiv1.GatewayConditionProgrammed), false, string(gwapiv1.GatewayReasonInvalid), "the Gateway is not accepted", gen),
			}
		case ws.ref == nil:
			st.Conditions = []metav1.Condition{
				condition(string(gwapiv1.GatewayConditionAccepted), true, string(gwapiv1.GatewayReasonAccepted), "Accepted as a waypoint", gen),
				condition(string(gwapiv1.GatewayConditionProgrammed), false, string(gwapiv1.GatewayReasonPending),
					fmt.Sprintf("waiting for the waypoint Service %s/%s to have a cluster IP", gw.Namespace, gw.Name), gen),
			}
		default:
			st.Conditions = []metav1.Condition{
				condition(string(gwapiv1.GatewayConditionAccepted), true, string(gwapiv1.GatewayReasonAccepted), "Accepted as a waypoint", gen),
				condition(string(gwapiv1.GatewayConditionProgrammed), true, string(gwapiv1.GatewayReasonProgrammed), "Programmed", gen),
			}
			ipType := gwapiv1.IPAddressType
			for _, ip := range clusterIPs(b.ix.servicesByKey[keyOf(gw)]) {
				st.Addresses = append(st.Addresses, gwapiv1.GatewayStatusAddress{Type: &ipType, Value: ip})
			}
		}
		if err == nil && ws.badFor != "" {
			st.Conditions[0] = condition(string(gwapiv1.GatewayConditionAccepted), true, ReasonInvalidWaypointFor,
				fmt.Sprintf("Accepted as a waypoint, but %s=%q is not one of %s, %s, %s, %s: it handles %s traffic", LabelWaypointFor,
					ws.badFor, WaypointForService, WaypointForWorkload, WaypointForAll, WaypointForNone, WaypointForService), gen)
		}
		for i := range gw.Spec.Listeners {
			l := &gw.Spec.Listeners[i]
			ls := gwapiv1.ListenerStatus{Name: l.Name, SupportedKinds: supported}
			lerr := listenerError(l)
			if lerr == nil && err != nil {
				lerr = err
			}
			switch {
			case lerr != nil:
				reason := gwapiv1.ListenerReasonUnsupportedValue
				if l.Protocol != WaypointListenerProtocol {
					reason = gwapiv1.ListenerReasonUnsupportedProtocol
				} else if l.Port != WaypointListenerPort {
					reason = gwapiv1.ListenerReasonPortUnavailable
				}
				ls.Conditions = []metav1.Condition{
					condition(string(gwapiv1.ListenerConditionAccepted), false, string(reason), lerr.Error(), gen),
					condition(string(gwapiv1.ListenerConditionProgrammed), false, string(gwapiv1.ListenerReasonInvalid), "the listener is not accepted", gen),
					condition(string(gwapiv1.ListenerConditionResolvedRefs), true, string(gwapiv1.ListenerReasonResolvedRefs), "ResolvedRefs", gen),
				}
			default:
				ls.AttachedRoutes = int32(len(ws.routes))
				prog := condition(string(gwapiv1.ListenerConditionProgrammed), true, string(gwapiv1.ListenerReasonProgrammed), "Programmed", gen)
				if ws.ref == nil {
					prog = condition(string(gwapiv1.ListenerConditionProgrammed), false, string(gwapiv1.ListenerReasonPending), "waiting for the waypoint Service", gen)
				}
				ls.Conditions = []metav1.Condition{
					condition(string(gwapiv1.ListenerConditionAccepted), true, string(gwapiv1.ListenerReasonAccepted), "Accepted", gen),
					prog,
					condition(string(gwapiv1.ListenerConditionResolvedRefs), true, string(gwapiv1.ListenerReasonResolvedRefs), "ResolvedRefs", gen),
				}
			}
			st.Listeners = append(st.Listeners, ls)
		}
		b.status.Gateways[keyOf(gw)] = st
	}
}

// waypointsIR builds one Waypoint per valid waypoint Gateway, with a
// ServiceRoutes per port of every Service whose label selects it when it
// handles services (whether or not the waypoint is ready yet, so that it
// starts with its configuration).
func (b *builder) waypointsIR() {
	byGateway := map[types.NamespacedName]*Waypoint{}
	for _, k := range sortedKeys(b.waypoints) {
		w := &Waypoint{Key: k, Identity: b.waypoints[k].identity}
		byGateway[k] = w
		b.mesh.Waypoints = append(b.mesh.Waypoints, w)
	}
	for _, svc := range b.ix.services {
		if !meshService(svc) || svc.Labels[LabelGatewayName] != "" {
			continue
		}
		gk, _, _ := b.waypointFor(svc.Namespace, svc.Labels[LabelUseWaypoint], forService)
		w := byGateway[gk]
		if w == nil || !b.waypoints[gk].serves(forService) {
			continue
		}
		for _, p := range svc.Spec.Ports {
			if !validPort(p.Port) {
				continue
			}
			w.Services = append(w.Services, b.serviceRoutes(svc, p, b.waypoints[gk]))
		}
	}
}

// serviceRoutes compiles the rules of one Service port: those of producer
// routes (in the Service's namespace) and, per namespace, those of consumer
// routes (GAMMA: routes in another namespace, which apply only to clients
// in theirs and, for them, replace the producer routes). The port's
// protocol follows the routes of both.
func (b *builder) serviceRoutes(svc *corev1.Service, p corev1.ServicePort, ws *waypointState) *ServiceRoutes {
	sr := &ServiceRoutes{Service: keyOf(svc), Port: p.Port}
	attached := b.attachedRules(keyOf(svc), p.Port)
	type kinds struct{ http, grpc []*RouteRule }
	byNS := map[string]*kinds{}
	var hasHTTP, hasGRPC bool
	for _, r := range attached {
		k := byNS[r.ns]
		if k == nil {
			k = &kinds{}
			byNS[r.ns] = k
		}
		if r.kind == kindGRPCRoute {
			k.grpc = append(k.grpc, r.rules...)
			hasGRPC = true
		} else {
			k.http = append(k.http, r.rules...)
			hasHTTP = true
		}
	}
	sr.Protocol = portProtocol(p, hasHTTP, hasGRPC)
	pick := func(k *kinds) []*RouteRule {
		if k == nil {
			return nil
		}
		var rules []*RouteRule
		switch sr.Protocol {
		case configv1alpha1.ServiceRoutes_PROTOCOL_GRPC:
			rules = k.grpc
			if len(rules) == 0 {
				rules = k.http
			}
		case configv1alpha1.ServiceRoutes_PROTOCOL_HTTP:
			// GRPCRoute rules are path matches an HTTP port serves as well.
			rules = k.http
			if len(rules) == 0 {
				rules = k.grpc
			}
		}
		sortRules(rules)
		return rules
	}
	used := map[*RouteRule]bool{}
	for _, ns := range slices.Sorted(maps.Keys(byNS)) {
		rules := pick(byNS[ns])
		for _, r := range rules {
			used[r] = true
		}
		if ns == svc.Namespace {
			sr.Rules = rules
		} else if len(rules) > 0 {
			sr.Consumers = append(sr.Consumers, ConsumerRoutes{Namespace: ns, Rules: rules})
		}
	}
	for _, r := range attached {
		if used[r.rules[0]] {
			ws.routes[r.id] = true
		}
	}
	return sr
}
