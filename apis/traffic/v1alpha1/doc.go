// Package v1alpha1 holds the traffic.ambit.dev/v1alpha1 API: what Gateway API
// lacks for resilient traffic at a waypoint. BackendPolicy sets outlier
// detection and connection/request limits for a Service's endpoints;
// FaultInjection is an HTTPRoute ExtensionRef filter that delays or aborts a
// share of requests.
//
// +kubebuilder:object:generate=true
// +groupName=traffic.ambit.dev
package v1alpha1
