// Package v1alpha1 holds the security.ambit.dev/v1alpha1 API: AuthorizationPolicy
// (who may reach a workload, a Service or a waypoint) and PeerAuthentication
// (whether plaintext is accepted next to mTLS).
//
// +kubebuilder:object:generate=true
// +groupName=security.ambit.dev
package v1alpha1
