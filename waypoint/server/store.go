package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/xds"
	"github.com/ambit-mesh/ambit/waypoint/authz"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
	"github.com/ambit-mesh/ambit/waypoint/route"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Store holds the waypoint's configuration: the compiled route table of its
// WaypointConfig, and the Services and Workloads that resolve VIPs,
// endpoints and endpoint identities. Readers see immutable snapshots; the
// xDS handlers replace them. It is safe for concurrent use.
type Store struct {
	log *slog.Logger

	mu        sync.Mutex // serialises writers
	table     atomic.Pointer[route.Table]
	authz     atomic.Pointer[authz.Policies]
	snap      atomic.Pointer[snapshot]
	services  map[string]*configv1alpha1.Service
	workloads map[string]*configv1alpha1.Workload
	gen       uint64

	// current is the WaypointConfig's table; table is current plus the
	// service ports that are draining (see drain.go).
	current *route.Table
	drains
}

type snapshot struct {
	gen       uint64                             // bumped by every commit
	services  map[string]*configv1alpha1.Service // by "<namespace>/<name>"
	byVIP     map[netip.Addr]string              // VIP -> service name
	workloads map[string]*configv1alpha1.Workload
	byAddr    map[netip.Addr]*configv1alpha1.Workload
	// targets are, by endpoint IP and target port, the Service ports that
	// send to it (for the protocol of workload-addressed tunnels).
	targets map[netip.Addr]map[uint32][]servicePort
}

// servicePort is one port of a Service, as an endpoint's target.
type servicePort struct {
	service string
	port    *configv1alpha1.ServicePort
}

// NewStore returns an empty store. A nil logger means slog.Default().
func NewStore(log *slog.Logger) *Store {
	if log == nil {
		log = slog.Default()
	}
	s := &Store{log: log}
	s.drains.init()
	s.snap.Store(&snapshot{})
	return s
}

// Types returns the xDS subscriptions of the store: WaypointConfig,
// Service, Workload and Authorization.
func (s *Store) Types() []xds.Type {
	return []xds.Type{
		{URL: configv1alpha1.TypeWaypointConfig, Handle: s.HandleWaypointConfig},
		{URL: configv1alpha1.TypeService, Handle: s.HandleServices},
		{URL: configv1alpha1.TypeWorkload, Handle: s.HandleWorkloads},
		{URL: configv1alpha1.TypeAuthorization, Handle: s.HandleAuthorizations},
	}
}

// HandleAuthorizations is the xDS handler of Authorization resources (the
// policies that target this waypoint's Gateway or a Service it serves). An
// invalid policy rejects the update and the last good set stays.
func (s *Store) HandleAuthorizations(rs map[string]*anypb.Any) error {
	ms := make(map[string]*configv1alpha1.Authorization, len(rs))
	for name, body := range rs {
		m := new(configv1alpha1.Authorization)
		if err := unmarshal(name, body, m); err != nil {
			return err
		}
		ms[name] = m
	}
	p, err := authz.Compile(ms)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.authz.Store(p)
	s.mu.Unlock()
	s.log.Debug("authorization policies applied", "policies", p.Len())
	return nil
}

// Authorizations returns the current policies; nil before the first
// update (the server then denies every request).
func (s *Store) Authorizations() *authz.Policies { return s.authz.Load() }

// Table returns the current route table (nil before the first
// WaypointConfig); it is the proxy.Proxy Table hook.
func (s *Store) Table() *route.Table { return s.table.Load() }

// HandleWaypointConfig is the xDS handler of WaypointConfig resources. The
// waypoint expects at most one; the config is compiled with route.Compile
// and a compile error rejects the update (the last good table stays).
func (s *Store) HandleWaypointConfig(rs map[string]*anypb.Any) error {
	if len(rs) > 1 {
		return fmt.Errorf("got %d WaypointConfig resources, want at most one", len(rs))
	}
	var t *route.Table
	for name, body := range rs {
		cfg := new(configv1alpha1.WaypointConfig)
		if err := unmarshal(name, body, cfg); err != nil {
			return err
		}
		var err error
		if t, err = route.Compile(cfg); err != nil {
			return fmt.Errorf("WaypointConfig %q: %w", name, err)
		}
	}
	s.mu.Lock()
	old := s.current
	s.current = t
	s.drainRoutesLocked(old, t)
	s.mu.Unlock()
	s.log.Debug("route table applied", "configs", len(rs))
	return nil
}

// HandleServices is the xDS handler of Service resources.
func (s *Store) HandleServices(rs map[string]*anypb.Any) error {
	ss := make(map[string]*configv1alpha1.Service, len(rs))
	for name, body := range rs {
		m := new(configv1alpha1.Service)
		if err := unmarshal(name, body, m); err != nil {
			return err
		}
		for _, v := range m.GetVips() {
			if _, err := netip.ParseAddr(v); err != nil {
				return fmt.Errorf("service %q: vip %q: %w", name, v, err)
			}
		}
		ss[serviceName(name, m)] = m
	}
	s.commit(func() {
		s.drainServicesLocked(s.services, ss)
		s.services = ss
	})
	return nil
}

// HandleWorkloads is the xDS handler of Workload resources.
func (s *Store) HandleWorkloads(rs map[string]*anypb.Any) error {
	ws := make(map[string]*configv1alpha1.Workload, len(rs))
	for name, body := range rs {
		m := new(configv1alpha1.Workload)
		if err := unmarshal(name, body, m); err != nil {
			return err
		}
		n := m.GetName()
		if n == "" {
			n = name
		}
		ws[n] = m
	}
	s.commit(func() {
		s.drainWorkloadsLocked(s.workloads, ws)
		s.workloads = ws
	})
	return nil
}

func (s *Store) commit(set func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	set()
	s.commitLocked()
}

// commitLocked publishes a snapshot of the Services and Workloads, with
// those that are draining (the last version the waypoint served).
func (s *Store) commitLocked() {
	s.gen++
	services, workloads := s.withDrainingLocked()
	snap := &snapshot{gen: s.gen, services: services, workloads: workloads, byVIP: map[netip.Addr]string{},
		byAddr: map[netip.Addr]*configv1alpha1.Workload{}, targets: map[netip.Addr]map[uint32][]servicePort{}}
	for _, w := range workloads {
		for _, a := range w.GetAddresses() {
			if ip, err := netip.ParseAddr(a); err == nil {
				snap.byAddr[ip.Unmap()] = w
			}
		}
	}
	// A draining workload's addresses are its own, whatever else claims
	// them meanwhile.
	for name := range s.drainWorkloads {
		for _, a := range workloads[name].GetAddresses() {
			if ip, err := netip.ParseAddr(a); err == nil {
				snap.byAddr[ip.Unmap()] = workloads[name]
			}
		}
	}
	for name, svc := range services {
		for _, v := range svc.GetVips() {
			if a, err := netip.ParseAddr(v); err == nil {
				snap.byVIP[a.Unmap()] = name
			}
		}
		for _, ep := range svc.GetEndpoints() {
			ip, err := netip.ParseAddr(ep.GetAddress())
			if err != nil {
				continue
			}
			ip = ip.Unmap()
			for _, p := range svc.GetPorts() {
				target := cmp.Or(ep.GetTargetPorts()[p.GetPort()], p.GetTargetPort(), p.GetPort())
				if snap.targets[ip] == nil {
					snap.targets[ip] = map[uint32][]servicePort{}
				}
				snap.targets[ip][target] = append(snap.targets[ip][target], servicePort{service: name, port: p})
			}
		}
	}
	s.snap.Store(snap)
}

func serviceName(resource string, m *configv1alpha1.Service) string {
	switch name := m.GetName(); {
	case strings.Contains(name, "/"): // "<namespace>/<name>", as the controller sends it
		return name
	case m.GetNamespace() != "" && name != "":
		return m.GetNamespace() + "/" + name
	}
	return resource
}

func unmarshal(name string, body *anypb.Any, m proto.Message) error {
	if body == nil {
		return fmt.Errorf("resource %q has no body", name)
	}
	if err := body.UnmarshalTo(m); err != nil {
		return fmt.Errorf("resource %q: %w", name, err)
	}
	return nil
}

// ServiceByVIP returns the service ("<namespace>/<name>") that has vip.
func (s *Store) ServiceByVIP(vip netip.Addr) (string, bool) {
	name, ok := s.snap.Load().byVIP[vip.Unmap()]
	return name, ok
}

// Service returns the Service resource of "<namespace>/<name>", or nil.
func (s *Store) Service(name string) *configv1alpha1.Service {
	return s.snap.Load().services[name]
}

// Workload returns the Workload resource of "<namespace>/<pod>", or nil.
func (s *Store) Workload(name string) *configv1alpha1.Workload {
	return s.snap.Load().workloads[name]
}

// WorkloadByAddress returns the Workload that has ip, or nil.
func (s *Store) WorkloadByAddress(ip netip.Addr) *configv1alpha1.Workload {
	return s.snap.Load().byAddr[ip.Unmap()]
}

// Endpoints implements proxy.Resolver: the ready endpoints of service, at
// the endpoint's target port for port (the endpoint's own mapping, else the
// service port's target port, else port itself).
func (s *Store) Endpoints(_ context.Context, service string, port uint32) []proxy.Endpoint {
	svc := s.snap.Load().services[service]
	if svc == nil {
		return nil
	}
	target := port
	for _, p := range svc.GetPorts() {
		if p.GetPort() == port && p.GetTargetPort() != 0 {
			target = p.GetTargetPort()
		}
	}
	var eps []proxy.Endpoint
	for _, ep := range svc.GetEndpoints() {
		if !ep.GetReady() {
			continue
		}
		a, err := netip.ParseAddr(ep.GetAddress())
		if err != nil {
			continue
		}
		tp := target
		if p := ep.GetTargetPorts()[port]; p != 0 {
			tp = p
		}
		if tp == 0 || tp > 65535 {
			continue
		}
		eps = append(eps, proxy.Endpoint{
			Address:  netip.AddrPortFrom(a.Unmap(), uint16(tp)).String(),
			Workload: ep.GetWorkload(),
		})
	}
	return eps
}

// workloadProtocol is the protocol of a tunnel addressed to a workload's
// ip:port: what the Service ports targeting it say (the route table's
// protocol for a service port the waypoint serves, else the port's
// appProtocol, else its name's prefix), UNSPECIFIED (sniff) when none says
// anything or they disagree.
func (s *Store) workloadProtocol(ip netip.Addr, port uint32) configv1alpha1.ServiceRoutes_Protocol {
	table := s.Table()
	found := configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED
	for _, sp := range s.snap.Load().targets[ip.Unmap()][port] {
		proto := configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED
		if rs := table.Service(sp.service, sp.port.GetPort()); rs != nil {
			proto = rs.Protocol
		}
		if proto == configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED {
			proto = declaredProtocol(sp.port.GetAppProtocol(), sp.port.GetName())
		}
		switch {
		case proto == configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED:
		case found == configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED:
			found = proto
		case found != proto:
			return configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED
		}
	}
	return found
}

// declaredProtocol is what a Service port's appProtocol, else its name's
// prefix, declares, as the controller reads them: http, http2,
// kubernetes.io/h2c and kubernetes.io/ws are HTTP; grpc, grpc-web and
// kubernetes.io/grpc GRPC; any other appProtocol TCP; a name "http",
// "http2", "h2c" or "grpc", alone or before "-", HTTP or GRPC; else
// UNSPECIFIED.
func declaredProtocol(appProtocol, name string) configv1alpha1.ServiceRoutes_Protocol {
	switch strings.ToLower(appProtocol) {
	case "http", "http2", "kubernetes.io/h2c", "kubernetes.io/ws":
		return configv1alpha1.ServiceRoutes_PROTOCOL_HTTP
	case "grpc", "grpc-web", "kubernetes.io/grpc":
		return configv1alpha1.ServiceRoutes_PROTOCOL_GRPC
	case "":
	default:
		return configv1alpha1.ServiceRoutes_PROTOCOL_TCP
	}
	prefix, _, _ := strings.Cut(strings.ToLower(name), "-")
	switch prefix {
	case "http", "http2", "h2c":
		return configv1alpha1.ServiceRoutes_PROTOCOL_HTTP
	case "grpc":
		return configv1alpha1.ServiceRoutes_PROTOCOL_GRPC
	}
	return configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED
}

var errNoWorkload = errors.New("unknown workload")

// workloadIdentity returns the SPIFFE ID string of a workload.
func (s *Store) workloadIdentity(name string) (string, error) {
	w := s.snap.Load().workloads[name]
	if w == nil || w.GetIdentity() == "" {
		return "", fmt.Errorf("%w %s", errNoWorkload, strconv.Quote(name))
	}
	return w.GetIdentity(), nil
}

// upstreams returns the generation of the snapshot and the set of
// (endpoint IP, workload identity) pairs its ready endpoints and the
// workloads that have a waypoint make.
func (s *Store) upstreams() (uint64, map[upstream]bool) {
	snap := s.snap.Load()
	set := map[upstream]bool{}
	for _, svc := range snap.services {
		for _, ep := range svc.GetEndpoints() {
			a, err := netip.ParseAddr(ep.GetAddress())
			w := snap.workloads[ep.GetWorkload()]
			if err != nil || w == nil || !ep.GetReady() {
				continue
			}
			id, err := identity.ParseSPIFFEID(w.GetIdentity())
			if err != nil {
				continue
			}
			set[upstream{ip: a.Unmap(), id: id}] = true
		}
	}
	// Workloads this waypoint serves are reached directly (tunnels
	// addressed to them).
	for _, w := range snap.workloads {
		if w.GetWaypoint() == nil {
			continue
		}
		id, err := identity.ParseSPIFFEID(w.GetIdentity())
		if err != nil {
			continue
		}
		for _, a := range w.GetAddresses() {
			if ip, err := netip.ParseAddr(a); err == nil {
				set[upstream{ip: ip.Unmap(), id: id}] = true
			}
		}
	}
	return snap.gen, set
}

// generation is the snapshot's generation.
func (s *Store) generation() uint64 { return s.snap.Load().gen }

type upstream struct {
	ip netip.Addr
	id identity.SPIFFEID
}

// StoreDump is the store's state for the admin config dump.
type StoreDump struct {
	// Routes are the service ports of the route table with their protocol
	// and rule count, sorted.
	Routes []RouteDump `json:"routes"`
	// Services and Workloads count the resources known.
	Services  int `json:"services"`
	Workloads int `json:"workloads"`
	// Authorizations are the names of the policies in force.
	Authorizations []string `json:"authorizations"`
	// Generation counts Service and Workload updates.
	Generation uint64 `json:"generation"`
	// Draining are the service ports ("<namespace>/<name>:<port>"),
	// Services and workloads ("workload <namespace>/<pod>") that left the
	// configuration and are still served until their drain ends, sorted.
	Draining []string `json:"draining"`
}

// RouteDump is one service port of the route table.
type RouteDump struct {
	Service  string `json:"service"`
	Protocol string `json:"protocol"`
	Rules    int    `json:"rules"`
}

// Dump returns the store's state.
func (s *Store) Dump() StoreDump {
	snap := s.snap.Load()
	d := StoreDump{Services: len(snap.services), Workloads: len(snap.workloads), Generation: snap.gen,
		Authorizations: s.Authorizations().Names(), Routes: []RouteDump{}}
	if d.Authorizations == nil {
		d.Authorizations = []string{}
	}
	d.Draining = s.drainingNames()
	s.mu.Lock()
	t := s.current
	s.mu.Unlock()
	for _, k := range t.Keys() {
		svc := t.Service(k.Service, k.Port)
		d.Routes = append(d.Routes, RouteDump{Service: k.String(), Protocol: strings.TrimPrefix(svc.Protocol.String(), "PROTOCOL_"), Rules: len(svc.Rules)})
	}
	slices.SortFunc(d.Routes, func(a, b RouteDump) int { return strings.Compare(a.Service, b.Service) })
	return d
}
