package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Duration is a Gateway API style duration: up to four groups of a number and
// a unit (h, m, s, ms), e.g. "1s", "1m30s", "250ms".
// +kubebuilder:validation:Pattern=`^([0-9]{1,5}(h|m|s|ms)){1,4}$`
type Duration string

// ServiceReference names a Service in the policy's namespace.
type ServiceReference struct {
	// Group must be "" (core).
	// +optional
	// +kubebuilder:default=""
	// +kubebuilder:validation:MaxLength=0
	Group string `json:"group"`
	// Kind must be Service.
	// +kubebuilder:validation:Enum=Service
	Kind string `json:"kind"`
	// Name of the Service.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// OutlierDetection ejects endpoints that keep failing from load balancing for
// a while, as Envoy and Istio do.
type OutlierDetection struct {
	// Consecutive5xxErrors ejects an endpoint after this many 5xx answers (or
	// connection failures) in a row.
	// +optional
	// +kubebuilder:default=5
	// +kubebuilder:validation:Minimum=1
	Consecutive5xxErrors int32 `json:"consecutive5xxErrors,omitempty"`
	// Interval between ejection sweeps.
	// +optional
	// +kubebuilder:default="10s"
	Interval Duration `json:"interval,omitempty"`
	// BaseEjectionTime is how long an endpoint stays ejected the first time;
	// each further ejection multiplies it by the number of ejections.
	// +optional
	// +kubebuilder:default="30s"
	BaseEjectionTime Duration `json:"baseEjectionTime,omitempty"`
	// MaxEjectionPercent caps the share of a Service's endpoints ejected at once.
	// +optional
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	MaxEjectionPercent int32 `json:"maxEjectionPercent,omitempty"`
}

// ConnectionLimits bound the load a waypoint puts on a Service's endpoints
// (circuit breaking). Requests over a limit fail at once with 503 and the
// response flag "UO" (upstream overflow). Zero or unset means no limit.
type ConnectionLimits struct {
	// MaxConnections to all endpoints of the Service together.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxConnections int32 `json:"maxConnections,omitempty"`
	// MaxPendingRequests waiting for a connection.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxPendingRequests int32 `json:"maxPendingRequests,omitempty"`
	// MaxRequests in flight to the Service.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxRequests int32 `json:"maxRequests,omitempty"`
}

// BackendPolicySpec is the desired behaviour of a BackendPolicy.
type BackendPolicySpec struct {
	// TargetRefs are the Services whose endpoints the policy governs.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	TargetRefs []ServiceReference `json:"targetRefs"`
	// OutlierDetection; unset disables it.
	// +optional
	OutlierDetection *OutlierDetection `json:"outlierDetection,omitempty"`
	// Limits; unset means no limits.
	// +optional
	Limits *ConnectionLimits `json:"limits,omitempty"`
}

// PolicyStatus reports whether the controller accepted a traffic resource.
type PolicyStatus struct {
	// Conditions: Accepted (reason Accepted or Invalid).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// BackendPolicy sets outlier detection and connection limits for Services
// reached through a waypoint.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=bp,categories=ambit
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type BackendPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   BackendPolicySpec `json:"spec"`
	Status PolicyStatus      `json:"status,omitempty"`
}

// BackendPolicyList is a list of BackendPolicy.
// +kubebuilder:object:root=true
type BackendPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BackendPolicy `json:"items"`
}

// FaultDelay delays a share of requests before they are forwarded.
type FaultDelay struct {
	// FixedDelay added to each delayed request.
	FixedDelay Duration `json:"fixedDelay"`
	// Percent of requests delayed, 0-100.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Percent int32 `json:"percent"`
}

// FaultAbort answers a share of requests at once, without forwarding them.
// +kubebuilder:validation:XValidation:rule="has(self.httpStatus) != has(self.grpcStatus)",message="set exactly one of httpStatus and grpcStatus"
type FaultAbort struct {
	// HTTPStatus of the answer.
	// +optional
	// +kubebuilder:validation:Minimum=200
	// +kubebuilder:validation:Maximum=599
	HTTPStatus *int32 `json:"httpStatus,omitempty"`
	// GRPCStatus code of the answer (for gRPC routes), 1-16.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=16
	GRPCStatus *int32 `json:"grpcStatus,omitempty"`
	// Percent of requests aborted, 0-100.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Percent int32 `json:"percent"`
}

// FaultInjectionSpec is the desired behaviour of a FaultInjection.
// +kubebuilder:validation:XValidation:rule="has(self.delay) || has(self.abort)",message="set delay, abort or both"
type FaultInjectionSpec struct {
	// Delay some requests.
	// +optional
	Delay *FaultDelay `json:"delay,omitempty"`
	// Abort some requests. A request picked for both is delayed, then aborted.
	// +optional
	Abort *FaultAbort `json:"abort,omitempty"`
}

// FaultInjection delays or aborts a share of the requests of an HTTPRoute or
// GRPCRoute rule that references it as a filter:
//
//	filters:
//	- type: ExtensionRef
//	  extensionRef: {group: traffic.ambit.dev, kind: FaultInjection, name: NAME}
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=fi,categories=ambit
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type FaultInjection struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   FaultInjectionSpec `json:"spec"`
	Status PolicyStatus       `json:"status,omitempty"`
}

// FaultInjectionList is a list of FaultInjection.
// +kubebuilder:object:root=true
type FaultInjectionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []FaultInjection `json:"items"`
}
