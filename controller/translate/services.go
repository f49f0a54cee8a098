package translate

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// clusterIPs are a Service's cluster IPs; none for headless and
// ExternalName Services.
func clusterIPs(svc *corev1.Service) []string {
	if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	if len(ips) == 0 || ips[0] == corev1.ClusterIPNone {
		return nil
	}
	return ips
}

// meshService reports whether a Service has a VIP the mesh captures. Headless
// Services do not: clients reach their pods by pod IP, which the Workloads
// already describe, so they are not emitted and cannot be route parents.
func meshService(svc *corev1.Service) bool { return len(clusterIPs(svc)) > 0 }

// servicesIR builds a Service per Service with a cluster IP.
func (b *builder) servicesIR() {
	for _, svc := range b.ix.services {
		if !meshService(svc) {
			continue
		}
		s := &Service{
			Key:      keyOf(svc),
			Hostname: fmt.Sprintf("%s.%s.svc.%s", svc.Name, svc.Namespace, b.opts.ClusterDomain),
			VIPs:     slices.Clone(clusterIPs(svc)),
		}
		for _, p := range svc.Spec.Ports {
			// The mesh carries TCP only: UDP and SCTP ports (DNS's 53/UDP
			// beside 53/TCP) stay outside it and out of the config.
			if !validPort(p.Port) || (p.Protocol != "" && p.Protocol != corev1.ProtocolTCP) {
				continue
			}
			sp := ServicePort{Name: p.Name, Port: p.Port, AppProtocol: derefOr(p.AppProtocol, "")}
			switch {
			case p.TargetPort.StrVal != "":
			case p.TargetPort.IntVal != 0:
				sp.TargetPort = p.TargetPort.IntVal
			default: // unset: the API server defaults it to the port
				sp.TargetPort = p.Port
			}
			s.Ports = append(s.Ports, sp)
		}
		s.Endpoints = b.endpoints(svc, s.Ports)
		if svc.Labels[LabelGatewayName] == "" {
			_, s.Waypoint, _ = b.waypointFor(svc.Namespace, svc.Labels[LabelUseWaypoint], forService)
		}
		b.mesh.Services = append(b.mesh.Services, s)
	}
}

// endpoints reads the EndpointSlices of a Service: one Endpoint per address,
// sorted by address; an address in several slices keeps its first (by slice
// name) occurrence.
func (b *builder) endpoints(svc *corev1.Service, ports []ServicePort) []Endpoint {
	seen := map[string]bool{}
	var out []Endpoint
	for _, es := range b.ix.slicesByService[keyOf(svc)] {
		if es.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		// The slice's ports carry the Service port names, resolved.
		byName := map[string]int32{}
		for _, p := range es.Ports {
			if p.Port != nil {
				byName[derefOr(p.Name, "")] = *p.Port
			}
		}
		targets := map[int32]int32{}
		for _, sp := range ports {
			if port, ok := byName[sp.Name]; ok {
				targets[sp.Port] = port
			} else if sp.TargetPort != 0 {
				targets[sp.Port] = sp.TargetPort
			}
		}
		for _, ep := range es.Endpoints {
			workload := ""
			if ref := ep.TargetRef; ref != nil && ref.Kind == "Pod" {
				workload = types.NamespacedName{Namespace: cmp.Or(ref.Namespace, es.Namespace), Name: ref.Name}.String()
			}
			for _, addr := range ep.Addresses {
				if addr == "" || seen[addr] {
					continue
				}
				seen[addr] = true
				out = append(out, Endpoint{
					Workload:    workload,
					Address:     addr,
					TargetPorts: maps.Clone(targets),
					Ready:       ep.Conditions.Ready == nil || *ep.Conditions.Ready,
				})
			}
		}
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return cmp.Compare(a.Address, b.Address) })
	return out
}

// portProtocol decides how a waypoint handles a Service port: appProtocol
// first (http, http2, kubernetes.io/h2c, kubernetes.io/ws: HTTP; grpc,
// grpc-web: GRPC; tcp and anything else: TCP), then, when it is empty, the
// port name's Istio-style prefix (http, http2, h2c, grpc), then the routes
// attached to the port (GRPCRoutes only: GRPC; any HTTPRoute: HTTP), and
// UNSPECIFIED when nothing declares the protocol: the waypoint then sniffs
// the first bytes of each tunnel (HTTP/1.1, HTTP/2 or TCP).
func portProtocol(p corev1.ServicePort, hasHTTP, hasGRPC bool) configv1alpha1.ServiceRoutes_Protocol {
	const (
		tcp   = configv1alpha1.ServiceRoutes_PROTOCOL_TCP
		http  = configv1alpha1.ServiceRoutes_PROTOCOL_HTTP
		grpcP = configv1alpha1.ServiceRoutes_PROTOCOL_GRPC
	)
	switch strings.ToLower(derefOr(p.AppProtocol, "")) {
	case "http", "http2", "kubernetes.io/h2c", "kubernetes.io/ws":
		return http
	case "grpc", "grpc-web", "kubernetes.io/grpc":
		return grpcP
	case "":
	default:
		return tcp
	}
	prefix, _, _ := strings.Cut(strings.ToLower(p.Name), "-")
	switch prefix {
	case "http", "http2", "h2c":
		return http
	case "grpc":
		return grpcP
	}
	switch {
	case hasGRPC && !hasHTTP:
		return grpcP
	case hasHTTP:
		return http
	}
	return configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED
}

func derefOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// sortedKeys are a map's namespaced-name keys in order.
func sortedKeys[V any](m map[types.NamespacedName]V) []types.NamespacedName {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b types.NamespacedName) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return keys
}

func validPort(p int32) bool { return p >= 1 && p <= 65535 }
