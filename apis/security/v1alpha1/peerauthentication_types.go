package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MTLSMode says whether a workload accepts plaintext.
// +kubebuilder:validation:Enum=STRICT;PERMISSIVE;UNSET
type MTLSMode string

const (
	// MTLSStrict refuses plaintext: only HBONE (mTLS) connections are accepted.
	MTLSStrict MTLSMode = "STRICT"
	// MTLSPermissive accepts plaintext next to mTLS. The mesh default.
	MTLSPermissive MTLSMode = "PERMISSIVE"
	// MTLSUnset inherits the namespace or mesh-wide setting.
	MTLSUnset MTLSMode = "UNSET"
)

// MutualTLS holds the mTLS mode.
type MutualTLS struct {
	// Mode of mTLS for the selected workloads.
	// +optional
	// +kubebuilder:default=UNSET
	Mode MTLSMode `json:"mode,omitempty"`
}

// PeerAuthenticationSpec is the desired behaviour of a PeerAuthentication.
type PeerAuthenticationSpec struct {
	// Selector picks workloads in the policy's namespace; empty selects all of
	// them (and in ambit-system, the whole mesh). The most specific policy wins:
	// workload, then namespace, then mesh.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`
	// MTLS settings.
	// +optional
	MTLS *MutualTLS `json:"mtls,omitempty"`
}

// PeerAuthentication sets whether enrolled workloads accept plaintext.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=pa,categories=ambit
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mtls.mode`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type PeerAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   PeerAuthenticationSpec `json:"spec"`
	Status PolicyStatus           `json:"status,omitempty"`
}

// PeerAuthenticationList is a list of PeerAuthentication.
// +kubebuilder:object:root=true
type PeerAuthenticationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PeerAuthentication `json:"items"`
}
