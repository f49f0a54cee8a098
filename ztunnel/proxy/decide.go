package proxy

import (
	"net/netip"

	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/config"
)

// Kind says how an outbound connection is forwarded.
type Kind int

const (
	// Passthrough: plain TCP to the original destination (outside the mesh).
	Passthrough Kind = iota
	// Plain: plain TCP to a mesh destination that is not enrolled (a chosen
	// service endpoint, or the workload itself).
	Plain
	// HBONE: a tunnel to the destination pod's ztunnel.
	HBONE
	// Waypoint: a tunnel to the destination's waypoint.
	Waypoint
	// NoEndpoint: the destination is a service without a ready endpoint for
	// the port; the connection is refused.
	NoEndpoint
)

// String names the kind for logs.
func (k Kind) String() string {
	switch k {
	case Passthrough:
		return "passthrough"
	case Plain:
		return "plain"
	case HBONE:
		return "hbone"
	case Waypoint:
		return "waypoint"
	case NoEndpoint:
		return "no-endpoint"
	}
	return "unknown"
}

// Route is the outcome of Decide.
type Route struct {
	Kind Kind
	// Address is where to connect: the HBONE server (pod or waypoint IP,
	// port 15008) for HBONE and Waypoint, the TCP destination otherwise.
	Address netip.AddrPort
	// Authority is the tunnel's :authority (HBONE and Waypoint).
	Authority netip.AddrPort
	// Identity is what the HBONE server must prove (HBONE and Waypoint).
	Identity identity.SPIFFEID
	// Service is the destination service when dst was a VIP, else nil.
	Service *config.Service
	// Workload is the destination workload when known, else nil (for a
	// Waypoint route to a service it is nil: the waypoint picks).
	Workload *config.Workload
}

// Picker chooses one of n candidates (0 <= result < n).
type Picker func(n int) int

// Decide is ztunnel's outbound decision for the original destination dst:
//
//	service VIP:port? -> service waypoint? -> HBONE to the waypoint (authority VIP:port)
//	                  -> pick a ready endpoint -> as the workload below, at endpointIP:targetPort
//	workload IP?      -> enrolled? -> its waypoint? -> HBONE to the waypoint (authority ip:port)
//	                                -> HBONE to ip:15008 (authority ip:port, the workload's identity)
//	                  -> plain TCP to ip:port
//	anything else     -> passthrough
//
// "The waypoint" is one of the ready endpoints of the waypoint's Service
// when the configuration has it (see waypointAddress). A VIP:port without a
// ready endpoint gives NoEndpoint. pick is called only
// to choose among several ready endpoints.
func Decide(snap *config.Snapshot, dst netip.AddrPort, pick Picker) Route {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if svc, port, ok := snap.ServiceByVIP(dst); ok {
		if wp := svc.Waypoint; wp != nil {
			return Route{Kind: Waypoint, Address: waypointAddress(snap, wp, pick),
				Authority: dst, Identity: wp.Identity, Service: svc}
		}
		eps := readyEndpointsFor(svc, dst.Addr())
		if len(eps) == 0 {
			return Route{Kind: NoEndpoint, Address: dst, Service: svc}
		}
		i := 0
		if len(eps) > 1 && pick != nil {
			i = pick(len(eps))
			if i < 0 || i >= len(eps) {
				i = 0
			}
		}
		ep := eps[i]
		w := snap.Workload(ep.Workload)
		if w == nil || !w.HasAddress(ep.Address) {
			w = snap.WorkloadByIP(ep.Address)
		}
		r := toWorkload(snap, w, netip.AddrPortFrom(ep.Address, ep.TargetPort(port)), pick)
		r.Service = svc
		return r
	}
	if w := snap.WorkloadByIP(dst.Addr()); w != nil {
		return toWorkload(snap, w, dst, pick)
	}
	return Route{Kind: Passthrough, Address: dst}
}

// toWorkload routes to a workload (nil: unknown, plain TCP) at dst.
func toWorkload(snap *config.Snapshot, w *config.Workload, dst netip.AddrPort, pick Picker) Route {
	switch {
	case w == nil:
		return Route{Kind: Plain, Address: dst}
	case !w.Enrolled() || !w.HasIdentity():
		return Route{Kind: Plain, Address: dst, Workload: w}
	case w.Waypoint != nil:
		return Route{Kind: Waypoint, Address: waypointAddress(snap, w.Waypoint, pick),
			Authority: dst, Identity: w.Waypoint.Identity, Workload: w}
	default:
		return Route{Kind: HBONE, Address: netip.AddrPortFrom(dst.Addr(), hbone.Port),
			Authority: dst, Identity: w.Identity, Workload: w}
	}
}

// waypointAddress is where HBONE to a waypoint goes. The waypoint's address
// is its Service's VIP: when the configuration knows that Service, ztunnel
// picks one of its ready endpoints itself (the VIP needs no kube-proxy);
// otherwise it dials VIP:15008 and relies on the node's service routing.
func waypointAddress(snap *config.Snapshot, wp *config.Waypoint, pick Picker) netip.AddrPort {
	vip := netip.AddrPortFrom(wp.Address, hbone.Port)
	svc, port, ok := snap.ServiceByVIP(vip)
	if !ok {
		return vip
	}
	eps := readyEndpointsFor(svc, wp.Address)
	if len(eps) == 0 {
		return vip
	}
	i := 0
	if len(eps) > 1 && pick != nil {
		if i = pick(len(eps)); i < 0 || i >= len(eps) {
			i = 0
		}
	}
	return netip.AddrPortFrom(eps[i].Address, eps[i].TargetPort(port))
}

// readyEndpointsFor returns the service's ready endpoints of the address
// family of vip, the address the client connected to, in order; if it has
// none of that family, all of them (HBONE carries either family). A
// dual-stack Service's endpoints hold both families (one EndpointSlice
// each), and a connection to its IPv4 VIP goes to an IPv4 endpoint, as
// kube-proxy would send it, not to one picked from both.
func readyEndpointsFor(svc *config.Service, vip netip.Addr) []config.Endpoint {
	eps := ReadyEndpoints(svc)
	same := eps[:0:0]
	for _, ep := range eps {
		if ep.Address.Unmap().Is4() == vip.Unmap().Is4() {
			same = append(same, ep)
		}
	}
	if len(same) == 0 {
		return eps
	}
	return same
}

// ReadyEndpoints returns the service's ready endpoints, in order.
func ReadyEndpoints(svc *config.Service) []config.Endpoint {
	var out []config.Endpoint
	for _, ep := range svc.Endpoints {
		if ep.Ready {
			out = append(out, ep)
		}
	}
	return out
}
