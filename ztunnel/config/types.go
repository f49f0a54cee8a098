package config

import (
	"fmt"
	"net/netip"
	"strings"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/authzmatch"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// Workload is a validated configv1alpha1.Workload with its fields parsed.
type Workload struct {
	// Proto is the resource as received; do not modify it.
	Proto *configv1alpha1.Workload
	// Name is "<namespace>/<pod name>"; Namespace and PodName are its parts.
	Name, Namespace, PodName string
	// Addresses are the pod IPs.
	Addresses []netip.Addr
	// Identity is the workload's SPIFFE ID; zero when the resource has none
	// (a workload outside the mesh).
	Identity identity.SPIFFEID
	// Waypoint serves traffic sent to this workload, or nil.
	Waypoint *Waypoint
	// DNSNameservers are the pod's own nameservers (dns.nameservers).
	DNSNameservers []netip.Addr
}

// Enrolled reports whether ztunnel captures the workload's traffic.
func (w *Workload) Enrolled() bool { return w.Proto.GetEnrolled() }

// HasIdentity reports whether the workload has a SPIFFE ID.
func (w *Workload) HasIdentity() bool { return w.Identity != identity.SPIFFEID{} }

// Strict reports whether the workload refuses plaintext inbound on the
// ports that have no mode of their own (StrictOn).
func (w *Workload) Strict() bool {
	return w.Proto.GetMtlsMode() == configv1alpha1.MTLSMode_MTLS_MODE_STRICT
}

// StrictOn reports whether the workload refuses plaintext sent to its port:
// the port's own mode (port_mtls_modes) when it has one, else Strict.
func (w *Workload) StrictOn(port uint16) bool {
	if m, ok := w.Proto.GetPortMtlsModes()[uint32(port)]; ok {
		return m == configv1alpha1.MTLSMode_MTLS_MODE_STRICT
	}
	return w.Strict()
}

// HasAddress reports whether a is one of the workload's addresses.
func (w *Workload) HasAddress(a netip.Addr) bool {
	a = a.Unmap()
	for _, x := range w.Addresses {
		if x == a {
			return true
		}
	}
	return false
}

// Waypoint is a validated configv1alpha1.WaypointRef.
type Waypoint struct {
	// Gateway is "<namespace>/<name>".
	Gateway string
	// Address is the waypoint Service's VIP; HBONE goes to Address:15008.
	Address netip.Addr
	// Identity is what the waypoint's certificate must carry.
	Identity identity.SPIFFEID
}

// Service is a validated configv1alpha1.Service.
type Service struct {
	// Proto is the resource as received; do not modify it.
	Proto *configv1alpha1.Service
	// Name is "<namespace>/<name>".
	Name, Namespace string
	VIPs            []netip.Addr
	Ports           []Port
	Endpoints       []Endpoint
	// Waypoint serving the service, or nil.
	Waypoint *Waypoint
}

// Port is one service port.
type Port struct {
	Name string
	Port uint16
	// TargetPort is the numeric container port, 0 when the endpoints say.
	TargetPort uint16
}

// Endpoint is one backend of a service.
type Endpoint struct {
	// Workload is the backing Workload's name ("<namespace>/<pod>").
	Workload string
	Address  netip.Addr
	// TargetPorts maps service port to the endpoint's port.
	TargetPorts map[uint16]uint16
	Ready       bool
}

// TargetPort is where the endpoint receives traffic for service port p: the
// endpoint's own mapping, else the port's target port, else the port itself.
func (e Endpoint) TargetPort(p Port) uint16 {
	if t, ok := e.TargetPorts[p.Port]; ok && t != 0 {
		return t
	}
	if p.TargetPort != 0 {
		return p.TargetPort
	}
	return p.Port
}

// parseWorkload validates one Workload.
func parseWorkload(name string, w *configv1alpha1.Workload) (*Workload, error) {
	if w.GetName() != name {
		return nil, fmt.Errorf("workload %q: resource name %q differs from its name field", name, w.GetName())
	}
	ns, pod, ok := strings.Cut(name, "/")
	if !ok || ns == "" || pod == "" || strings.Contains(pod, "/") {
		return nil, fmt.Errorf("workload %q: name is not <namespace>/<pod>", name)
	}
	if w.GetNamespace() != "" && w.GetNamespace() != ns {
		return nil, fmt.Errorf("workload %q: namespace %q differs from the name's", name, w.GetNamespace())
	}
	out := &Workload{Proto: w, Name: name, Namespace: ns, PodName: pod}
	for _, s := range w.GetAddresses() {
		a, err := parseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("workload %q: address: %w", name, err)
		}
		out.Addresses = append(out.Addresses, a)
	}
	if id := w.GetIdentity(); id != "" {
		sid, err := identity.ParseSPIFFEID(id)
		if err != nil {
			return nil, fmt.Errorf("workload %q: identity: %w", name, err)
		}
		out.Identity = sid
	} else if w.GetEnrolled() {
		return nil, fmt.Errorf("workload %q: enrolled without an identity", name)
	}
	if w.GetMtlsMode() < configv1alpha1.MTLSMode_MTLS_MODE_UNSPECIFIED || w.GetMtlsMode() > configv1alpha1.MTLSMode_MTLS_MODE_STRICT {
		return nil, fmt.Errorf("workload %q: unknown mtls_mode %d", name, w.GetMtlsMode())
	}
	for port, m := range w.GetPortMtlsModes() {
		if port == 0 || port > 65535 {
			return nil, fmt.Errorf("workload %q: port_mtls_modes: port %d out of range", name, port)
		}
		if m != configv1alpha1.MTLSMode_MTLS_MODE_PERMISSIVE && m != configv1alpha1.MTLSMode_MTLS_MODE_STRICT {
			return nil, fmt.Errorf("workload %q: port_mtls_modes: port %d: mode %v is neither PERMISSIVE nor STRICT", name, port, m)
		}
	}
	wp, err := parseWaypoint(w.GetWaypoint())
	if err != nil {
		return nil, fmt.Errorf("workload %q: %w", name, err)
	}
	out.Waypoint = wp
	if out.DNSNameservers, err = parseDNS(w.GetDns()); err != nil {
		return nil, fmt.Errorf("workload %q: dns: %w", name, err)
	}
	return out, nil
}

// maxNdots is the largest ndots a resolver takes (glibc's limit, which the
// controller applies).
const maxNdots = 15

// parseDNS validates a workload's resolver configuration (nil is none) and
// returns its nameservers.
func parseDNS(d *configv1alpha1.DNSConfig) ([]netip.Addr, error) {
	if d == nil {
		return nil, nil
	}
	if d.GetPolicy() < configv1alpha1.DNSConfig_POLICY_UNSPECIFIED || d.GetPolicy() > configv1alpha1.DNSConfig_POLICY_NONE {
		return nil, fmt.Errorf("unknown policy %d", d.GetPolicy())
	}
	if d.GetNdots() > maxNdots {
		return nil, fmt.Errorf("ndots %d is above %d", d.GetNdots(), maxNdots)
	}
	for _, s := range d.GetSearches() {
		if strings.Trim(s, ".") == "" {
			return nil, fmt.Errorf("empty search domain %q", s)
		}
	}
	var out []netip.Addr
	for _, s := range d.GetNameservers() {
		a, err := parseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("nameserver: %w", err)
		}
		out = append(out, a)
	}
	return out, nil
}

// parseService validates one Service.
func parseService(name string, s *configv1alpha1.Service) (*Service, error) {
	if s.GetName() != name {
		return nil, fmt.Errorf("service %q: resource name %q differs from its name field", name, s.GetName())
	}
	ns, svc, ok := strings.Cut(name, "/")
	if !ok || ns == "" || svc == "" || strings.Contains(svc, "/") {
		return nil, fmt.Errorf("service %q: name is not <namespace>/<service>", name)
	}
	out := &Service{Proto: s, Name: name, Namespace: ns}
	for _, v := range s.GetVips() {
		a, err := parseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("service %q: vip: %w", name, err)
		}
		out.VIPs = append(out.VIPs, a)
	}
	seen := map[uint16]bool{}
	for _, p := range s.GetPorts() {
		if p.GetPort() == 0 || p.GetPort() > 65535 || p.GetTargetPort() > 65535 {
			return nil, fmt.Errorf("service %q: port %d (target %d) out of range", name, p.GetPort(), p.GetTargetPort())
		}
		if seen[uint16(p.GetPort())] {
			return nil, fmt.Errorf("service %q: port %d listed twice", name, p.GetPort())
		}
		seen[uint16(p.GetPort())] = true
		out.Ports = append(out.Ports, Port{Name: p.GetName(), Port: uint16(p.GetPort()), TargetPort: uint16(p.GetTargetPort())})
	}
	for i, e := range s.GetEndpoints() {
		a, err := parseAddr(e.GetAddress())
		if err != nil {
			return nil, fmt.Errorf("service %q: endpoint %d: %w", name, i, err)
		}
		ep := Endpoint{Workload: e.GetWorkload(), Address: a, Ready: e.GetReady()}
		if len(e.GetTargetPorts()) > 0 {
			ep.TargetPorts = map[uint16]uint16{}
			for sp, tp := range e.GetTargetPorts() {
				if sp == 0 || sp > 65535 || tp == 0 || tp > 65535 {
					return nil, fmt.Errorf("service %q: endpoint %s: target port %d->%d out of range", name, a, sp, tp)
				}
				ep.TargetPorts[uint16(sp)] = uint16(tp)
			}
		}
		out.Endpoints = append(out.Endpoints, ep)
	}
	wp, err := parseWaypoint(s.GetWaypoint())
	if err != nil {
		return nil, fmt.Errorf("service %q: %w", name, err)
	}
	out.Waypoint = wp
	return out, nil
}

// validateAuthorization checks one Authorization that ztunnel enforces.
// Policies of waypoint scopes are accepted (a controller may send them) but
// never applied here.
func validateAuthorization(name string, a *configv1alpha1.Authorization) error {
	if a.GetName() != name {
		return fmt.Errorf("authorization %q: resource name %q differs from its name field", name, a.GetName())
	}
	ns, _, ok := strings.Cut(name, "/")
	if !ok || ns == "" {
		return fmt.Errorf("authorization %q: name is not <namespace>/<name>", name)
	}
	if a.GetNamespace() != "" && a.GetNamespace() != ns {
		return fmt.Errorf("authorization %q: namespace %q differs from the name's", name, a.GetNamespace())
	}
	switch a.GetAction() {
	case configv1alpha1.Authorization_ACTION_ALLOW, configv1alpha1.Authorization_ACTION_DENY:
	default:
		return fmt.Errorf("authorization %q: unknown action %v", name, a.GetAction())
	}
	switch a.GetScope() {
	case configv1alpha1.Authorization_SCOPE_WORKLOAD_SELECTOR, configv1alpha1.Authorization_SCOPE_NAMESPACE,
		configv1alpha1.Authorization_SCOPE_GLOBAL:
	case configv1alpha1.Authorization_SCOPE_WAYPOINT, configv1alpha1.Authorization_SCOPE_SERVICE:
		return nil
	default:
		return fmt.Errorf("authorization %q: unknown scope %v", name, a.GetScope())
	}
	for i, r := range a.GetRules() {
		for _, op := range r.GetTo() {
			if len(op.GetMethods())+len(op.GetPaths())+len(op.GetNotPaths())+len(op.GetHeaders()) > 0 {
				return fmt.Errorf("authorization %q: rule %d: HTTP attributes in a policy ztunnel enforces at L4", name, i)
			}
			for _, p := range append(append([]uint32(nil), op.GetPorts()...), op.GetNotPorts()...) {
				if p == 0 || p > 65535 {
					return fmt.Errorf("authorization %q: rule %d: port %d out of range", name, i, p)
				}
			}
		}
		for _, f := range r.GetFrom() {
			if err := authzmatch.CheckIPBlocks(f); err != nil {
				return fmt.Errorf("authorization %q: rule %d: %w", name, i, err)
			}
		}
	}
	return nil
}

func parseWaypoint(w *configv1alpha1.WaypointRef) (*Waypoint, error) {
	if w == nil {
		return nil, nil
	}
	a, err := parseAddr(w.GetAddress())
	if err != nil {
		return nil, fmt.Errorf("waypoint %q: address: %w", w.GetGateway(), err)
	}
	id, err := identity.ParseSPIFFEID(w.GetIdentity())
	if err != nil {
		return nil, fmt.Errorf("waypoint %q: identity: %w", w.GetGateway(), err)
	}
	return &Waypoint{Gateway: w.GetGateway(), Address: a, Identity: id}, nil
}

func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	if a.Zone() != "" || a.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("%q is not a usable address", s)
	}
	return a.Unmap(), nil
}
