package config

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/xds"
)

// Snapshot is one immutable view of the configuration. Its maps and the
// values they hold must not be modified.
type Snapshot struct {
	// Workloads by name.
	Workloads map[string]*Workload
	// Services by name.
	Services map[string]*Service
	// Authorizations by name.
	Authorizations map[string]*configv1alpha1.Authorization
	// Generation counts the snapshots a Store has made; 0 is the empty one.
	Generation uint64

	byIP  map[netip.Addr]*Workload
	byVIP map[netip.AddrPort]vipTarget
	// atEndpoint lists, for each endpoint address:target port, the
	// services that send there, by name.
	atEndpoint map[netip.AddrPort][]*Service
}

type vipTarget struct {
	svc  *Service
	port Port
}

// Workload returns the workload named "<namespace>/<pod>", or nil.
func (s *Snapshot) Workload(name string) *Workload { return s.Workloads[name] }

// WorkloadByIP returns the workload that has address a, or nil.
func (s *Snapshot) WorkloadByIP(a netip.Addr) *Workload { return s.byIP[a.Unmap()] }

// ServiceByVIP returns the service and port that own the VIP:port dst.
func (s *Snapshot) ServiceByVIP(dst netip.AddrPort) (*Service, Port, bool) {
	t, ok := s.byVIP[netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())]
	return t.svc, t.port, ok
}

// ServicesAt returns the services, by name, one of whose ports sends to
// an endpoint at dst (its address and target port): the services a
// connection to a workload's address and port may have been meant for.
func (s *Snapshot) ServicesAt(dst netip.AddrPort) []*Service {
	return s.atEndpoint[netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())]
}

// Empty returns a snapshot with nothing in it.
func Empty() *Snapshot { return build(nil, nil, nil, 0) }

// Build makes a snapshot from already validated parts (for tests and tools).
func Build(ws []*Workload, ss []*Service, as []*configv1alpha1.Authorization) *Snapshot {
	wm := map[string]*Workload{}
	for _, w := range ws {
		wm[w.Name] = w
	}
	sm := map[string]*Service{}
	for _, s := range ss {
		sm[s.Name] = s
	}
	am := map[string]*configv1alpha1.Authorization{}
	for _, a := range as {
		am[a.GetName()] = a
	}
	return build(wm, sm, am, 0)
}

// ParseWorkload validates a Workload resource, as the handler does.
func ParseWorkload(w *configv1alpha1.Workload) (*Workload, error) {
	return parseWorkload(w.GetName(), w)
}

// ParseService validates a Service resource, as the handler does.
func ParseService(s *configv1alpha1.Service) (*Service, error) { return parseService(s.GetName(), s) }

// ValidateAuthorization validates an Authorization resource, as the handler does.
func ValidateAuthorization(a *configv1alpha1.Authorization) error {
	return validateAuthorization(a.GetName(), a)
}

func build(ws map[string]*Workload, ss map[string]*Service, as map[string]*configv1alpha1.Authorization, gen uint64) *Snapshot {
	if ws == nil {
		ws = map[string]*Workload{}
	}
	if ss == nil {
		ss = map[string]*Service{}
	}
	if as == nil {
		as = map[string]*configv1alpha1.Authorization{}
	}
	snap := &Snapshot{Workloads: ws, Services: ss, Authorizations: as, Generation: gen,
		byIP: map[netip.Addr]*Workload{}, byVIP: map[netip.AddrPort]vipTarget{}, atEndpoint: map[netip.AddrPort][]*Service{}}
	// Deterministic winners when two resources claim one address: the
	// lexically first name.
	for _, name := range sortedKeys(ws) {
		w := ws[name]
		for _, a := range w.Addresses {
			if _, dup := snap.byIP[a]; !dup {
				snap.byIP[a] = w
			}
		}
	}
	for _, name := range sortedKeys(ss) {
		svc := ss[name]
		for _, v := range svc.VIPs {
			for _, p := range svc.Ports {
				k := netip.AddrPortFrom(v, p.Port)
				if _, dup := snap.byVIP[k]; !dup {
					snap.byVIP[k] = vipTarget{svc: svc, port: p}
				}
			}
		}
		for _, ep := range svc.Endpoints {
			for _, p := range svc.Ports {
				k := netip.AddrPortFrom(ep.Address.Unmap(), ep.TargetPort(p))
				if at := snap.atEndpoint[k]; len(at) == 0 || at[len(at)-1] != svc {
					snap.atEndpoint[k] = append(at, svc)
				}
			}
		}
	}
	return snap
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// Store turns xDS updates into Snapshots. Create it with NewStore.
type Store struct {
	log *slog.Logger

	mu        sync.Mutex // serialises writers
	workloads map[string]*Workload
	services  map[string]*Service
	authz     map[string]*configv1alpha1.Authorization
	gen       uint64

	cur     atomic.Pointer[Snapshot]
	changed chan struct{}
	// next is closed, and replaced, when a snapshot is swapped in.
	next chan struct{}
}

// NewStore returns a store holding the empty snapshot. A nil logger means
// slog.Default().
func NewStore(logger *slog.Logger) *Store {
	if logger == nil {
		logger = slog.Default()
	}
	s := &Store{log: logger, changed: make(chan struct{}, 1), next: make(chan struct{})}
	s.cur.Store(Empty())
	return s
}

// Snapshot returns the current snapshot. It never blocks.
func (s *Store) Snapshot() *Snapshot { return s.cur.Load() }

// Changed receives a value after a new snapshot has been swapped in (changes
// coalesce: one value may stand for several snapshots).
func (s *Store) Changed() <-chan struct{} { return s.changed }

// Next returns the current snapshot and a channel that is closed once a
// later one has been swapped in. Unlike Changed, any number of callers
// may wait on it.
func (s *Store) Next() (*Snapshot, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur.Load(), s.next
}

// Types returns the xDS subscriptions of the store: Workload, Service and
// Authorization, in that order.
func (s *Store) Types() []xds.Type {
	return []xds.Type{
		{URL: configv1alpha1.TypeWorkload, Handle: s.HandleWorkloads},
		{URL: configv1alpha1.TypeService, Handle: s.HandleServices},
		{URL: configv1alpha1.TypeAuthorization, Handle: s.HandleAuthorizations},
	}
}

// HandleWorkloads is the xDS handler of Workload resources.
func (s *Store) HandleWorkloads(rs map[string]*anypb.Any) error {
	ws := make(map[string]*Workload, len(rs))
	for name, body := range rs {
		w := new(configv1alpha1.Workload)
		if err := unmarshal(name, body, w); err != nil {
			return err
		}
		pw, err := parseWorkload(name, w)
		if err != nil {
			return err
		}
		ws[name] = pw
	}
	s.commit(func() { s.workloads = ws })
	return nil
}

// HandleServices is the xDS handler of Service resources.
func (s *Store) HandleServices(rs map[string]*anypb.Any) error {
	ss := make(map[string]*Service, len(rs))
	for name, body := range rs {
		m := new(configv1alpha1.Service)
		if err := unmarshal(name, body, m); err != nil {
			return err
		}
		ps, err := parseService(name, m)
		if err != nil {
			return err
		}
		ss[name] = ps
	}
	s.commit(func() { s.services = ss })
	return nil
}

// HandleAuthorizations is the xDS handler of Authorization resources.
func (s *Store) HandleAuthorizations(rs map[string]*anypb.Any) error {
	as := make(map[string]*configv1alpha1.Authorization, len(rs))
	for name, body := range rs {
		m := new(configv1alpha1.Authorization)
		if err := unmarshal(name, body, m); err != nil {
			return err
		}
		if err := validateAuthorization(name, m); err != nil {
			return err
		}
		as[name] = m
	}
	s.commit(func() { s.authz = as })
	return nil
}

func (s *Store) commit(set func()) {
	s.mu.Lock()
	set()
	s.gen++
	snap := build(s.workloads, s.services, s.authz, s.gen)
	s.cur.Store(snap)
	close(s.next)
	s.next = make(chan struct{})
	s.mu.Unlock()
	s.log.Debug("config snapshot applied", "generation", snap.Generation,
		"workloads", len(snap.Workloads), "services", len(snap.Services), "authorizations", len(snap.Authorizations))
	select {
	case s.changed <- struct{}{}:
	default:
	}
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
