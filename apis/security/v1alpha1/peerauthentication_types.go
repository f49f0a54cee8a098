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
// +kubebuilder:validation:XValidation:rule="!has(self.portLevelMtls) || size(self.portLevelMtls) == 0 || (has(self.selector) && ((has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0) || (has(self.selector.matchExpressions) && size(self.selector.matchExpressions) > 0)))",message="portLevelMtls needs a selector that picks workloads"
type PeerAuthenticationSpec struct {
	// Selector picks workloads in the policy's namespace; empty selects all of
	// them (and in ambit-system, the whole mesh). The most specific policy wins:
	// workload, then namespace, then mesh.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`
	// MTLS settings.
	// +optional
	MTLS *MutualTLS `json:"mtls,omitempty"`
	// PortLevelMTLS overrides the mode on some ports of the selected
	// workloads, keyed by the port the pod listens on (a decimal string):
	// "9090": {mode: PERMISSIVE} lets a scraper outside the mesh reach the
	// metrics port of a STRICT workload. It needs a selector. A port's UNSET,
	// like a port not listed, takes the workload's mode.
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	// +kubebuilder:validation:XValidation:rule="self.all(k, k.matches('^[1-9][0-9]{0,4}$') && int(k) <= 65535)",message="portLevelMtls keys must be port numbers from 1 to 65535"
	PortLevelMTLS map[string]MutualTLS `json:"portLevelMtls,omitempty"`
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
