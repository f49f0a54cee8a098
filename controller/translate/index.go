package translate

import (
	"cmp"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapiv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"

	securityv1alpha1 "github.com/ambit-mesh/ambit/apis/security/v1alpha1"
	trafficv1alpha1 "github.com/ambit-mesh/ambit/apis/traffic/v1alpha1"
)

// index is the input sorted by namespace/name (so that every loop is
// deterministic) with lookup maps. It points into copies of the input
// slices: translation never modifies its input.
type index struct {
	namespaces      map[string]*corev1.Namespace
	pods            []*corev1.Pod
	services        []*corev1.Service
	servicesByKey   map[types.NamespacedName]*corev1.Service
	slicesByService map[types.NamespacedName][]*discoveryv1.EndpointSlice
	gatewayClasses  []*gwapiv1.GatewayClass
	gateways        []*gwapiv1.Gateway
	gatewaysByKey   map[types.NamespacedName]*gwapiv1.Gateway
	httpRoutes      []*gwapiv1.HTTPRoute
	grpcRoutes      []*gwapiv1.GRPCRoute
	grantsByNS      map[string][]*gwapiv1beta1.ReferenceGrant
	authz           []*securityv1alpha1.AuthorizationPolicy
	peerAuth        []*securityv1alpha1.PeerAuthentication
	backendPolicies []*trafficv1alpha1.BackendPolicy
	faults          []*trafficv1alpha1.FaultInjection
}

// sorted returns pointers to a copy of in, ordered by namespace/name (then
// UID, so that duplicates sort the same way whatever the input order), with
// later duplicates of a namespace/name dropped.
func sorted[T any, P interface {
	*T
	metav1.Object
}](in []T) []P {
	cp := slices.Clone(in)
	out := make([]P, 0, len(cp))
	for i := range cp {
		out = append(out, P(&cp[i]))
	}
	slices.SortStableFunc(out, func(a, b P) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()),
			cmp.Compare(a.GetName(), b.GetName()), cmp.Compare(a.GetUID(), b.GetUID()))
	})
	return slices.CompactFunc(out, func(a, b P) bool {
		return a.GetNamespace() == b.GetNamespace() && a.GetName() == b.GetName()
	})
}

func keyOf(o metav1.Object) types.NamespacedName {
	return types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetName()}
}

// olderFirst orders objects oldest first, then by namespace/name: the
// tie-break Gateway API and Ambit use when objects conflict.
func olderFirst(a, b metav1.Object) int {
	ta, tb := a.GetCreationTimestamp(), b.GetCreationTimestamp()
	if !ta.Equal(&tb) {
		if ta.Before(&tb) {
			return -1
		}
		return 1
	}
	return cmp.Compare(keyOf(a).String(), keyOf(b).String())
}

func newIndex(in Input) *index {
	ix := &index{
		namespaces:      map[string]*corev1.Namespace{},
		pods:            sorted(in.Pods),
		services:        sorted(in.Services),
		servicesByKey:   map[types.NamespacedName]*corev1.Service{},
		slicesByService: map[types.NamespacedName][]*discoveryv1.EndpointSlice{},
		gatewayClasses:  sorted(in.GatewayClasses),
		gateways:        sorted(in.Gateways),
		gatewaysByKey:   map[types.NamespacedName]*gwapiv1.Gateway{},
		httpRoutes:      sorted(in.HTTPRoutes),
		grpcRoutes:      sorted(in.GRPCRoutes),
		grantsByNS:      map[string][]*gwapiv1beta1.ReferenceGrant{},
		authz:           sorted(in.AuthorizationPolicies),
		peerAuth:        sorted(in.PeerAuthentications),
		backendPolicies: sorted(in.BackendPolicies),
		faults:          sorted(in.FaultInjections),
	}
	for _, ns := range sorted(in.Namespaces) {
		ix.namespaces[ns.Name] = ns
	}
	for _, s := range ix.services {
		ix.servicesByKey[keyOf(s)] = s
	}
	for _, es := range sorted(in.EndpointSlices) {
		name := es.Labels[discoveryv1.LabelServiceName]
		if name == "" {
			continue
		}
		k := types.NamespacedName{Namespace: es.Namespace, Name: name}
		ix.slicesByService[k] = append(ix.slicesByService[k], es)
	}
	for _, g := range ix.gateways {
		ix.gatewaysByKey[keyOf(g)] = g
	}
	for _, g := range sorted(in.ReferenceGrants) {
		ix.grantsByNS[g.Namespace] = append(ix.grantsByNS[g.Namespace], g)
	}
	return ix
}

// nsLabel is a label of a namespace ("" when the namespace is unknown).
func (ix *index) nsLabel(ns, label string) string {
	if n := ix.namespaces[ns]; n != nil {
		return n.Labels[label]
	}
	return ""
}

// fault finds a FaultInjection.
func (ix *index) fault(k types.NamespacedName) *trafficv1alpha1.FaultInjection {
	i, ok := slices.BinarySearchFunc(ix.faults, k, func(f *trafficv1alpha1.FaultInjection, k types.NamespacedName) int {
		return cmp.Or(cmp.Compare(f.Namespace, k.Namespace), cmp.Compare(f.Name, k.Name))
	})
	if !ok {
		return nil
	}
	return ix.faults[i]
}

// grantAllows reports whether a ReferenceGrant in the target namespace lets
// objects of fromKind in fromNS refer to the core Service name.
func (ix *index) grantAllows(fromKind, fromNS string, to types.NamespacedName) bool {
	for _, g := range ix.grantsByNS[to.Namespace] {
		from := slices.ContainsFunc(g.Spec.From, func(f gwapiv1beta1.ReferenceGrantFrom) bool {
			return f.Group == gwapiv1.GroupName && string(f.Kind) == fromKind && string(f.Namespace) == fromNS
		})
		toOK := slices.ContainsFunc(g.Spec.To, func(t gwapiv1beta1.ReferenceGrantTo) bool {
			return t.Group == "" && t.Kind == "Service" && (t.Name == nil || *t.Name == "" || string(*t.Name) == to.Name)
		})
		if from && toOK {
			return true
		}
	}
	return false
}
