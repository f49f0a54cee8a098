package translate

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapiv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	securityv1alpha1 "github.com/ambit-mesh/ambit/apis/security/v1alpha1"
	trafficv1alpha1 "github.com/ambit-mesh/ambit/apis/traffic/v1alpha1"
)

// Labels, names and values of the user-facing contract.
const (
	// LabelDataplaneMode on a Namespace ("ambient") enrols its pods; on a Pod
	// ("none") opts that pod out.
	LabelDataplaneMode = "ambit.dev/dataplane-mode"
	// DataplaneModeAmbient enrols.
	DataplaneModeAmbient = "ambient"
	// DataplaneModeNone opts a pod out.
	DataplaneModeNone = "none"
	// LabelUseWaypoint on a Namespace, Service or Pod names the waypoint
	// Gateway (same namespace) that serves it; the Service's or Pod's label
	// wins over the Namespace's. Whether the waypoint takes a Service's or a
	// Pod's traffic depends on its LabelWaypointFor.
	LabelUseWaypoint = "ambit.dev/use-waypoint"
	// LabelWaypointFor on a waypoint Gateway says what traffic it handles:
	// WaypointForService (the default), WaypointForWorkload, WaypointForAll
	// or WaypointForNone. Another value is treated as WaypointForService
	// and reported in the Gateway's Accepted condition.
	LabelWaypointFor = "ambit.dev/waypoint-for"
	// WaypointForService: traffic addressed to Services (their VIPs).
	WaypointForService = "service"
	// WaypointForWorkload: traffic addressed to pods (their IPs).
	WaypointForWorkload = "workload"
	// WaypointForAll: both.
	WaypointForAll = "all"
	// WaypointForNone: neither; the waypoint is deployed but idle.
	WaypointForNone = "none"
	// WaypointClassName is the GatewayClass of waypoints.
	WaypointClassName = "ambit-waypoint"
	// ControllerName is the GatewayClass controllerName Ambit accepts.
	ControllerName = "ambit.dev/waypoint-controller"
	// WaypointListenerPort and WaypointListenerProtocol are the one listener a
	// waypoint Gateway must have.
	WaypointListenerPort     = 15008
	WaypointListenerProtocol = "HBONE"
)

// Options are the mesh-wide settings translation depends on.
type Options struct {
	// TrustDomain of SPIFFE identities; "" means "cluster.local".
	TrustDomain string
	// ClusterDomain of Service hostnames; "" means "cluster.local".
	ClusterDomain string
	// SystemNamespace holds mesh-wide policies; "" means "ambit-system".
	SystemNamespace string
}

// Input is every object translation reads. Slices may be in any order;
// Translate sorts what it needs, so the same objects always give the same
// Output.
type Input struct {
	Namespaces            []corev1.Namespace
	Pods                  []corev1.Pod
	Services              []corev1.Service
	EndpointSlices        []discoveryv1.EndpointSlice
	ServiceAccounts       []corev1.ServiceAccount
	GatewayClasses        []gwapiv1.GatewayClass
	Gateways              []gwapiv1.Gateway
	HTTPRoutes            []gwapiv1.HTTPRoute
	GRPCRoutes            []gwapiv1.GRPCRoute
	ReferenceGrants       []gwapiv1beta1.ReferenceGrant
	AuthorizationPolicies []securityv1alpha1.AuthorizationPolicy
	PeerAuthentications   []securityv1alpha1.PeerAuthentication
	BackendPolicies       []trafficv1alpha1.BackendPolicy
	FaultInjections       []trafficv1alpha1.FaultInjection
}

// Output is the translated configuration and the status of every object
// translation has an opinion on. Resource slices are sorted by name.
type Output struct {
	Workloads      []*configv1alpha1.Workload
	Services       []*configv1alpha1.Service
	Authorizations []*configv1alpha1.Authorization
	Waypoints      []*configv1alpha1.WaypointConfig
	Status         Status
}

// Status is the status translation computed. The status writer applies it
// (only when it differs from what the object has), stamping
// observedGeneration and lastTransitionTime itself; conditions here carry
// Type, Status, Reason and Message.
type Status struct {
	// GatewayClasses of controller ControllerName: Accepted.
	GatewayClasses map[string][]metav1.Condition
	// Gateways of class ambit-waypoint: conditions Accepted and Programmed,
	// listener status, and addresses (the waypoint Service's ClusterIPs).
	Gateways map[types.NamespacedName]gwapiv1.GatewayStatus
	// HTTPRoutes and GRPCRoutes: one RouteParentStatus per parentRef that
	// names a Service (GAMMA) or an ambit-waypoint Gateway, with
	// ControllerName as controllerName; parentRefs Ambit does not own are
	// absent, so other controllers' entries are left alone.
	HTTPRoutes map[types.NamespacedName][]gwapiv1.RouteParentStatus
	GRPCRoutes map[types.NamespacedName][]gwapiv1.RouteParentStatus
	// Policies (AuthorizationPolicy, PeerAuthentication, BackendPolicy,
	// FaultInjection), keyed by kind: Accepted (reason Accepted or Invalid).
	Policies map[PolicyKey][]metav1.Condition
}

// PolicyKey names an Ambit policy object.
type PolicyKey struct {
	Kind string // "AuthorizationPolicy", "PeerAuthentication", "BackendPolicy", "FaultInjection"
	types.NamespacedName
}
