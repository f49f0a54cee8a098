package translate

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	securityv1alpha1 "github.com/ambit-mesh/ambit/apis/security/v1alpha1"
)

// peerAuthPolicy is an accepted PeerAuthentication.
type peerAuthPolicy struct {
	obj *securityv1alpha1.PeerAuthentication
	// selector is nil for a namespace-wide (or, in the system namespace,
	// mesh-wide) policy.
	selector labels.Selector
	mode     securityv1alpha1.MTLSMode
	// ports are the portLevelMtls modes other than UNSET, by port, as
	// the Workload's port_mtls_modes says them.
	ports map[uint32]configv1alpha1.MTLSMode
}

// peerAuthentications validates PeerAuthentications; the accepted ones are
// kept oldest first, which is the order conflicts are settled in.
func (b *builder) peerAuthentications() {
	for _, pa := range b.ix.peerAuth {
		p := &peerAuthPolicy{obj: pa, mode: securityv1alpha1.MTLSUnset}
		var err error
		if pa.Spec.MTLS != nil && pa.Spec.MTLS.Mode != "" {
			p.mode = pa.Spec.MTLS.Mode
		}
		switch p.mode {
		case securityv1alpha1.MTLSStrict, securityv1alpha1.MTLSPermissive, securityv1alpha1.MTLSUnset:
		default:
			err = fmt.Errorf("%w: mtls.mode %q is not STRICT, PERMISSIVE or UNSET", ErrInvalidPolicy, p.mode)
		}
		if err == nil {
			p.ports, err = portLevelMTLS(pa)
		}
		if err == nil && !emptySelector(pa.Spec.Selector) {
			p.selector, err = metav1.LabelSelectorAsSelector(pa.Spec.Selector)
			if err != nil {
				err = fmt.Errorf("%w: selector: %v", ErrInvalidPolicy, err)
			}
		}
		b.status.Policies[PolicyKey{Kind: "PeerAuthentication", NamespacedName: keyOf(pa)}] = accepted(err, "", pa.Generation)
		if err == nil {
			b.peerAuth = append(b.peerAuth, p)
		}
	}
	slices.SortStableFunc(b.peerAuth, func(x, y *peerAuthPolicy) int { return olderFirst(x.obj, y.obj) })
}

// portLevelMTLS validates a PeerAuthentication's portLevelMtls and returns
// its modes other than UNSET by port. Port-level modes need a selector:
// they are about the ports of particular workloads.
func portLevelMTLS(pa *securityv1alpha1.PeerAuthentication) (map[uint32]configv1alpha1.MTLSMode, error) {
	if len(pa.Spec.PortLevelMTLS) == 0 {
		return nil, nil
	}
	if emptySelector(pa.Spec.Selector) {
		return nil, fmt.Errorf("%w: portLevelMtls needs a selector that picks workloads", ErrInvalidPolicy)
	}
	out := map[uint32]configv1alpha1.MTLSMode{}
	for _, k := range slices.Sorted(maps.Keys(pa.Spec.PortLevelMTLS)) {
		port, err := strconv.ParseUint(k, 10, 16)
		if err != nil || port == 0 || strconv.FormatUint(port, 10) != k {
			return nil, fmt.Errorf("%w: portLevelMtls key %q is not a port number from 1 to 65535", ErrInvalidPolicy, k)
		}
		switch m := cmp.Or(pa.Spec.PortLevelMTLS[k].Mode, securityv1alpha1.MTLSUnset); m {
		case securityv1alpha1.MTLSStrict:
			out[uint32(port)] = configv1alpha1.MTLSMode_MTLS_MODE_STRICT
		case securityv1alpha1.MTLSPermissive:
			out[uint32(port)] = configv1alpha1.MTLSMode_MTLS_MODE_PERMISSIVE
		case securityv1alpha1.MTLSUnset:
		default:
			return nil, fmt.Errorf("%w: portLevelMtls[%s].mode %q is not STRICT, PERMISSIVE or UNSET", ErrInvalidPolicy, k, m)
		}
	}
	return out, nil
}

func emptySelector(s *metav1.LabelSelector) bool {
	return s == nil || (len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0)
}

// mtlsModes resolves a pod's mode: the oldest workload policy selecting it,
// then the oldest namespace-wide policy, then the oldest mesh-wide one; a
// policy whose mode is UNSET defers to the next level; PERMISSIVE by
// default. ports are the port-level modes of that workload policy (nil
// when none selects the pod).
func (b *builder) mtlsModes(pod *corev1.Pod) (mode configv1alpha1.MTLSMode, ports map[uint32]configv1alpha1.MTLSMode) {
	first := func(match func(p *peerAuthPolicy) bool) *peerAuthPolicy {
		for _, p := range b.peerAuth {
			if match(p) {
				return p
			}
		}
		return nil
	}
	podLabels := labels.Set(pod.Labels)
	workload := first(func(p *peerAuthPolicy) bool {
		return p.obj.Namespace == pod.Namespace && p.selector != nil && p.selector.Matches(podLabels)
	})
	if workload != nil && len(workload.ports) > 0 {
		ports = maps.Clone(workload.ports)
	}
	for _, p := range []*peerAuthPolicy{
		workload,
		first(func(p *peerAuthPolicy) bool { return p.obj.Namespace == pod.Namespace && p.selector == nil }),
		first(func(p *peerAuthPolicy) bool { return p.obj.Namespace == b.opts.SystemNamespace && p.selector == nil }),
	} {
		switch {
		case p == nil:
		case p.mode == securityv1alpha1.MTLSStrict:
			return configv1alpha1.MTLSMode_MTLS_MODE_STRICT, ports
		case p.mode == securityv1alpha1.MTLSPermissive:
			return configv1alpha1.MTLSMode_MTLS_MODE_PERMISSIVE, ports
		}
	}
	return configv1alpha1.MTLSMode_MTLS_MODE_PERMISSIVE, ports
}

// workloadsIR builds a Workload per Pod that is scheduled or has an IP and
// has not finished. A scheduled pod gets its Workload before it has an IP:
// its node's ztunnel must know it when the CNI plugin reports the pod,
// which happens before the kubelet can report the IP, so that it captures
// the pod before its containers start (the addresses then come from the
// CNI plugin, and the Workload gets them once the kubelet reports them).
func (b *builder) workloadsIR() {
	for _, pod := range b.ix.pods {
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		var addrs []string
		for _, ip := range pod.Status.PodIPs {
			if ip.IP != "" {
				addrs = append(addrs, ip.IP)
			}
		}
		if len(addrs) == 0 && pod.Status.PodIP != "" {
			addrs = []string{pod.Status.PodIP}
		}
		if len(addrs) == 0 && pod.Spec.NodeName == "" {
			continue
		}
		sa := cmp.Or(pod.Spec.ServiceAccountName, "default")
		mode, portModes := b.mtlsModes(pod)
		w := &Workload{
			Key:            keyOf(pod),
			UID:            string(pod.UID),
			ServiceAccount: sa,
			Identity:       b.spiffeID(pod.Namespace, sa),
			TrustDomain:    b.opts.TrustDomain,
			Node:           pod.Spec.NodeName,
			Addresses:      addrs,
			Enrolled: b.ix.nsLabel(pod.Namespace, LabelDataplaneMode) == DataplaneModeAmbient &&
				pod.Labels[LabelDataplaneMode] != DataplaneModeNone && !pod.Spec.HostNetwork,
			MTLS:         mode,
			PortMTLS:     portModes,
			WorkloadName: workloadName(pod),
			DNS:          dnsConfig(pod, b.searchesFor(pod.Namespace)),
		}
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodReady {
				w.Ready = c.Status == corev1.ConditionTrue
			}
		}
		w.CanonicalName = cmp.Or(pod.Labels["app.kubernetes.io/name"], pod.Labels["app"], w.WorkloadName)
		w.CanonicalRevision = cmp.Or(pod.Labels["app.kubernetes.io/version"], pod.Labels["version"], "latest")
		// The pod's or its namespace's label gives a pod a waypoint when
		// that waypoint handles workload traffic (ambit.dev/waypoint-for
		// workload or all; the Service label applies only to traffic
		// addressed to the Service); a waypoint's own pods never get one.
		if pod.Labels[LabelGatewayName] == "" {
			_, w.Waypoint, _ = b.waypointFor(pod.Namespace, pod.Labels[LabelUseWaypoint], forWorkload)
		}
		for _, a := range b.mesh.Authorizations {
			if a.Scope == configv1alpha1.Authorization_SCOPE_WORKLOAD_SELECTOR && a.Key.Namespace == pod.Namespace &&
				b.authzSelectors[a.Key].Matches(labels.Set(pod.Labels)) {
				w.Authorizations = append(w.Authorizations, a.Key.String())
			}
		}
		b.mesh.Workloads = append(b.mesh.Workloads, w)
	}
}

// workloadName is the name of the pod's controller: a ReplicaSet's
// Deployment (the ReplicaSet name without its pod-template-hash suffix), any
// other owner's name, or the pod's own name.
func workloadName(pod *corev1.Pod) string {
	var owner *metav1.OwnerReference
	for i := range pod.OwnerReferences {
		if ref := &pod.OwnerReferences[i]; owner == nil || (ref.Controller != nil && *ref.Controller) {
			owner = ref
			if ref.Controller != nil && *ref.Controller {
				break
			}
		}
	}
	if owner == nil || owner.Name == "" {
		return pod.Name
	}
	if owner.Kind == "ReplicaSet" {
		if hash := pod.Labels["pod-template-hash"]; hash != "" {
			if name, ok := strings.CutSuffix(owner.Name, "-"+hash); ok && name != "" {
				return name
			}
		}
		if i := strings.LastIndexByte(owner.Name, '-'); i > 0 {
			return owner.Name[:i]
		}
	}
	return owner.Name
}

// Resolver limits the kubelet applies: at most three nameservers in a
// resolv.conf, and glibc's largest ndots.
const (
	maxNameservers = 3
	maxNdots       = 15
)

// searchesFor returns the ClusterFirst search list of namespace ns:
// "<ns>.svc.<domain>", "svc.<domain>", "<domain>". The namespace's pods
// share one slice (a slice literal has no spare capacity, so appending to
// it copies).
func (b *builder) searchesFor(ns string) []string {
	if s, ok := b.clusterSearches[ns]; ok {
		return s
	}
	if b.clusterSearches == nil {
		b.clusterSearches = map[string][]string{}
	}
	d := b.opts.ClusterDomain
	s := []string{ns + ".svc." + d, "svc." + d, d}
	b.clusterSearches[ns] = s
	return s
}

// dnsConfig is the resolver configuration the kubelet gives pod: its
// dnsPolicy says whose nameservers come first (the cluster's DNS, the
// node's, or none) and the search list (clusterSearches for ClusterFirst);
// dnsConfig's nameservers and searches are appended without duplicates,
// and its ndots option overrides. A pod with host networking and
// ClusterFirst gets the node's resolver, as the kubelet does.
func dnsConfig(pod *corev1.Pod, clusterSearches []string) DNSConfig {
	var d DNSConfig
	switch pod.Spec.DNSPolicy {
	case corev1.DNSNone:
		d.Policy, d.Ndots = configv1alpha1.DNSConfig_POLICY_NONE, 1
	case corev1.DNSDefault:
		d.Policy, d.Ndots = configv1alpha1.DNSConfig_POLICY_DEFAULT, 1
	case corev1.DNSClusterFirst, "":
		if pod.Spec.HostNetwork {
			d.Policy, d.Ndots = configv1alpha1.DNSConfig_POLICY_DEFAULT, 1
			break
		}
		fallthrough
	default: // ClusterFirstWithHostNet
		d.Policy, d.Ndots = configv1alpha1.DNSConfig_POLICY_CLUSTER_FIRST, 5
		d.Searches = clusterSearches
	}
	c := pod.Spec.DNSConfig
	if c == nil {
		return d
	}
	for _, ns := range c.Nameservers {
		// The API server checks that these are IP addresses; one that
		// cannot be asked (0.0.0.0, ::, zoned) is left out, as the data
		// plane would refuse the Workload.
		a, err := netip.ParseAddr(ns)
		if err != nil || a.IsUnspecified() || a.Zone() != "" {
			continue
		}
		if ns = a.Unmap().String(); !slices.Contains(d.Nameservers, ns) && len(d.Nameservers) < maxNameservers {
			d.Nameservers = append(d.Nameservers, ns)
		}
	}
	for _, s := range c.Searches {
		if s = strings.TrimSuffix(s, "."); strings.Trim(s, ".") != "" && !slices.Contains(d.Searches, s) {
			d.Searches = append(d.Searches, s) // copies a shared list: it has no spare capacity
		}
	}
	for _, o := range c.Options {
		if o.Name != "ndots" || o.Value == nil {
			continue
		}
		if n, err := strconv.Atoi(*o.Value); err == nil && n >= 0 {
			d.Ndots = uint32(min(n, maxNdots))
		}
	}
	return d
}
