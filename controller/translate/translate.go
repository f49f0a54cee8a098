package translate

import (
	"fmt"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// withDefaults fills the empty options with the mesh defaults.
func (o Options) withDefaults() Options {
	if o.TrustDomain == "" {
		o.TrustDomain = "cluster.local"
	}
	if o.ClusterDomain == "" {
		o.ClusterDomain = "cluster.local"
	}
	if o.SystemNamespace == "" {
		o.SystemNamespace = "ambit-system"
	}
	return o
}

// builder carries one translation's state. Each stage (waypoints.go,
// policies, services.go, workloads.go, routes.go) reads the index and the
// results of earlier stages and adds to the IR and the status.
type builder struct {
	ix     *index
	opts   Options
	status Status
	// waypoints are the valid waypoint Gateways.
	waypoints map[types.NamespacedName]*waypointState
	// backendPolicies is the winning BackendPolicy per Service.
	backendPolicies map[types.NamespacedName]*backendPolicy
	// faults are the valid FaultInjections.
	faults map[types.NamespacedName]*Fault
	// peerAuth are the accepted PeerAuthentications, oldest first.
	peerAuth []*peerAuthPolicy
	// authzSelectors are the selectors of WORKLOAD_SELECTOR policies.
	authzSelectors map[types.NamespacedName]labels.Selector
	// attachments are the accepted routes per parent Service.
	attachments map[types.NamespacedName][]attachment
	// clusterSearches is the ClusterFirst search list per namespace,
	// shared by the namespace's workloads (see dnsConfig).
	clusterSearches map[string][]string
	mesh            Mesh
}

// Translate turns the objects of in into data-plane configuration and status.
// It is a pure function: no client calls, no clock, no globals; the same
// objects in any order give the same Output. Errors in objects never stop it:
// they become status conditions, and the objects (or the parts of them) that
// cannot be applied are left out of the configuration (failing closed where
// leaving them out would open access; see authz.go).
func Translate(in Input, opts Options) Output {
	return newBuilder(in, opts).run().emit()
}

// buildMesh is Translate up to the IR, for tests.
func buildMesh(in Input, opts Options) *Mesh {
	return &newBuilder(in, opts).run().mesh
}

func newBuilder(in Input, opts Options) *builder {
	return &builder{
		ix:              newIndex(in),
		opts:            opts.withDefaults(),
		waypoints:       map[types.NamespacedName]*waypointState{},
		backendPolicies: map[types.NamespacedName]*backendPolicy{},
		faults:          map[types.NamespacedName]*Fault{},
		status: Status{
			GatewayClasses: map[string][]metav1Condition{},
			Gateways:       map[types.NamespacedName]gwapiv1.GatewayStatus{},
			HTTPRoutes:     map[types.NamespacedName][]gwapiv1.RouteParentStatus{},
			GRPCRoutes:     map[types.NamespacedName][]gwapiv1.RouteParentStatus{},
			Policies:       map[PolicyKey][]metav1Condition{},
		},
	}
}

func (b *builder) run() *builder {
	b.gatewayClasses()
	b.gateways()
	b.faultInjections()
	b.backendPolicyTargets()
	b.peerAuthentications()
	b.authorizations()
	b.servicesIR()
	b.workloadsIR()
	b.routes()
	b.waypointsIR()
	b.gatewayStatus()
	return b
}

// spiffeID is the identity of a service account.
func (b *builder) spiffeID(ns, sa string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", b.opts.TrustDomain, ns, sa)
}
