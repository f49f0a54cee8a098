package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Action is what an AuthorizationPolicy does with a request that matches it.
// +kubebuilder:validation:Enum=ALLOW;DENY
type Action string

const (
	// ActionAllow admits matching requests. Once any ALLOW policy selects a
	// target, requests that match no ALLOW policy are denied.
	ActionAllow Action = "ALLOW"
	// ActionDeny refuses matching requests. DENY wins over ALLOW.
	ActionDeny Action = "DENY"
)

// PolicyTargetReference names the object a policy applies to: a Gateway of
// class ambit-waypoint (the policy is enforced by that waypoint for all its
// traffic) or a Service (enforced by the Service's waypoint for that Service).
// +kubebuilder:validation:XValidation:rule="(self.group == 'gateway.networking.k8s.io' && self.kind == 'Gateway') || (size(self.group) == 0 && self.kind == 'Service')",message="targetRefs must name a gateway.networking.k8s.io Gateway or a core Service"
type PolicyTargetReference struct {
	// Group of the target: "gateway.networking.k8s.io" for a Gateway, "" for a Service.
	// +optional
	// +kubebuilder:default=""
	Group string `json:"group"`
	// Kind of the target: Gateway or Service.
	Kind string `json:"kind"`
	// Name of the target, in the policy's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// Source says where a request comes from. All set fields must match; within a
// field any listed value matches.
type Source struct {
	// Principals are SPIFFE IDs of the peer ("spiffe://td/ns/N/sa/S"). A trailing
	// or leading "*" matches any suffix or prefix; "*" alone matches any
	// authenticated peer.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Principals []string `json:"principals,omitempty"`
	// NotPrincipals excludes peers whose SPIFFE ID matches one of these.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	NotPrincipals []string `json:"notPrincipals,omitempty"`
	// Namespaces of the peer's identity.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Namespaces []string `json:"namespaces,omitempty"`
	// NotNamespaces excludes peers from these namespaces.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	NotNamespaces []string `json:"notNamespaces,omitempty"`
	// IPBlocks are the client's addresses: single IPs ("203.0.113.4",
	// "2001:db8::7") or CIDR blocks ("203.0.113.0/24"). The client's address
	// is the one the destination application sees: the client pod's for a
	// tunnel from its ztunnel or for plaintext, the original client's for a
	// tunnel from the destination's waypoint (which names it). At a waypoint
	// it is the address of the client the waypoint serves.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	IPBlocks []IPBlock `json:"ipBlocks,omitempty"`
	// NotIPBlocks excludes clients whose address is in one of these (IPs or
	// CIDR blocks, as ipBlocks).
	// +optional
	// +kubebuilder:validation:MaxItems=16
	NotIPBlocks []IPBlock `json:"notIpBlocks,omitempty"`
}

// IPBlock is an IP address ("203.0.113.4", "2001:db8::7") or a CIDR block
// ("203.0.113.0/24", "2001:db8::/32").
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=64
// +kubebuilder:validation:XValidation:rule="isIP(self) || isCIDR(self)",message="must be an IP address or a CIDR block"
type IPBlock string

// HeaderMatch matches one request header at a waypoint.
type HeaderMatch struct {
	// Name of the header, case-insensitive.
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// Values, any of which matches exactly; a trailing or leading "*" matches a
	// prefix or suffix.
	// +kubebuilder:validation:MinItems=1
	Values []string `json:"values"`
}

// Operation says what a request does. Ports apply everywhere; methods, paths
// and headers need L7 and are only honoured by a waypoint: a policy that uses
// them and selects workloads by `selector` is rejected with a status condition.
type Operation struct {
	// Ports of the destination.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Ports []int32 `json:"ports,omitempty"`
	// NotPorts excludes these destination ports.
	// +optional
	NotPorts []int32 `json:"notPorts,omitempty"`
	// Methods are HTTP methods, e.g. GET.
	// +optional
	Methods []string `json:"methods,omitempty"`
	// Paths are request paths: exact, "/prefix/*" or "*suffix".
	// +optional
	Paths []string `json:"paths,omitempty"`
	// NotPaths excludes these paths.
	// +optional
	NotPaths []string `json:"notPaths,omitempty"`
	// Headers that must all match.
	// +optional
	Headers []HeaderMatch `json:"headers,omitempty"`
}

// Rule matches a request when one of its `from` entries and one of its `to`
// entries match. An empty list matches anything.
type Rule struct {
	// +optional
	// +kubebuilder:validation:MaxItems=16
	From []Source `json:"from,omitempty"`
	// +optional
	To []Operation `json:"to,omitempty"`
}

// AuthorizationPolicySpec is the desired behaviour of an AuthorizationPolicy.
// +kubebuilder:validation:XValidation:rule="!(has(self.targetRefs) && size(self.targetRefs) > 0 && has(self.selector))",message="set targetRefs or selector, not both"
type AuthorizationPolicySpec struct {
	// TargetRefs name the Gateways (waypoints) or Services the policy applies
	// to. Enforced at the waypoint.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	TargetRefs []PolicyTargetReference `json:"targetRefs,omitempty"`
	// Selector picks workloads (pods) in the policy's namespace by label;
	// enforced by ztunnel at L4. Neither selector nor targetRefs: every
	// workload in the namespace (or the mesh, in ambit-system).
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`
	// Action taken on a match.
	// +optional
	// +kubebuilder:default=ALLOW
	Action Action `json:"action,omitempty"`
	// Rules; the policy matches when any rule matches. With no rules an ALLOW
	// policy matches nothing (so denies all) and a DENY policy matches nothing.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Rules []Rule `json:"rules,omitempty"`
}

// PolicyStatus reports whether the controller accepted a policy.
type PolicyStatus struct {
	// Conditions: Accepted (reason Accepted or Invalid).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// AuthorizationPolicy allows or denies traffic to workloads, Services or
// waypoints by source identity and, at a waypoint, by HTTP attributes.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ap,categories=ambit
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.action`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AuthorizationPolicySpec `json:"spec"`
	Status PolicyStatus            `json:"status,omitempty"`
}

// AuthorizationPolicyList is a list of AuthorizationPolicy.
// +kubebuilder:object:root=true
type AuthorizationPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AuthorizationPolicy `json:"items"`
}
