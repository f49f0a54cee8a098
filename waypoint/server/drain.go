package server

import (
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/waypoint/authz"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
	"github.com/ambit-mesh/ambit/waypoint/route"
)

// DefaultDrainRemoved is how long a service port, Service or workload that
// left the waypoint's configuration is still served (see
// Store.SetDrainPeriod).
const DefaultDrainRemoved = 30 * time.Second

// drains is the Store's state of what left the configuration and is
// still served: when a service port leaves the WaypointConfig (its
// ambit.dev/use-waypoint label was removed, say), a Service the table
// serves is deleted, or a workload stops using this waypoint, the
// waypoint keeps serving it with its last routes, Service, Workload and
// authorization policies for the drain period, and marks its answers
// "Connection: close" so that clients reconnect (and their ztunnel then
// decides where the new connection goes). A service that comes back is
// simply current again. The fields are guarded by Store.mu; view is the
// readers' snapshot.
type drains struct {
	period         time.Duration
	gateway        string // this waypoint's Gateway; "" accepts any
	drainRoutes    map[route.Key]*drainedRoutes
	drainServices  map[string]*drainedService
	drainWorkloads map[string]*drainedWorkload
	view           atomic.Pointer[drainView]
	onExpire       []func() // run after drains ended, without the lock
}

type drainedRoutes struct {
	routes   *route.Service
	policies *authz.Policies // in force when the drain started
	until    time.Time
}

type drainedService struct {
	svc   *configv1alpha1.Service
	until time.Time
}

type drainedWorkload struct {
	w     *configv1alpha1.Workload
	until time.Time
}

// drainView is what readers need: the draining service ports with their
// policies, and the draining Services and workloads by name.
type drainView struct {
	routes    map[route.Key]*authz.Policies
	services  map[string]bool
	workloads map[string]bool
}

func (d *drains) init() {
	d.period = DefaultDrainRemoved
	d.drainRoutes = map[route.Key]*drainedRoutes{}
	d.drainServices = map[string]*drainedService{}
	d.drainWorkloads = map[string]*drainedWorkload{}
	d.view.Store(&drainView{})
}

// SetDrainPeriod sets how long what leaves the configuration is still
// served (DefaultDrainRemoved unless set); 0 or less stops serving it at
// once. It applies to drains that start afterwards.
func (s *Store) SetDrainPeriod(d time.Duration) {
	s.mu.Lock()
	s.period = max(d, 0)
	s.mu.Unlock()
}

// setGateway sets the Gateway ("<namespace>/<name>") whose workloads
// drain when they stop using it; "" means any waypoint.
func (s *Store) setGateway(gw string) {
	s.mu.Lock()
	s.gateway = gw
	s.mu.Unlock()
}

// drainRoutesLocked starts the drain of the service ports old has and t
// lacks, ends that of those t has again, and publishes the served table.
func (s *Store) drainRoutesLocked(old, t *route.Table) {
	now := time.Now()
	for _, k := range old.Keys() {
		if t.Service(k.Service, k.Port) != nil || s.drainRoutes[k] != nil || s.period <= 0 {
			continue
		}
		s.drainRoutes[k] = &drainedRoutes{routes: old.Service(k.Service, k.Port), policies: s.authz.Load(), until: now.Add(s.period)}
		s.log.Info("service port left the configuration: draining", "service", k.String(), "drain", s.period.String())
		s.scheduleExpiry(s.period)
	}
	for k := range s.drainRoutes {
		if t.Service(k.Service, k.Port) != nil {
			delete(s.drainRoutes, k)
			s.log.Info("service port back in the configuration: drain stopped", "service", k.String())
		}
	}
	s.publishTableLocked()
}

// publishTableLocked stores the served table: the config's plus the
// draining service ports.
func (s *Store) publishTableLocked() {
	if len(s.drainRoutes) == 0 {
		s.table.Store(s.current)
	} else {
		extra := make([]*route.Service, 0, len(s.drainRoutes))
		for _, d := range s.drainRoutes {
			extra = append(extra, d.routes)
		}
		s.table.Store(s.current.With(extra))
	}
	s.publishViewLocked()
}

// servedLocked reports whether the served table has a port of service.
func (s *Store) servedLocked(service string) bool {
	for _, k := range s.table.Load().Keys() {
		if k.Service == service {
			return true
		}
	}
	return false
}

// drainServicesLocked starts the drain of the Services the table serves
// that the update removes, and ends that of those it brings back.
func (s *Store) drainServicesLocked(old, cur map[string]*configv1alpha1.Service) {
	now := time.Now()
	for name, svc := range old {
		if cur[name] != nil || s.drainServices[name] != nil || s.period <= 0 || !s.servedLocked(name) {
			continue
		}
		s.drainServices[name] = &drainedService{svc: svc, until: now.Add(s.period)}
		s.log.Info("service removed: draining", "service", name, "drain", s.period.String())
		s.scheduleExpiry(s.period)
	}
	for name := range s.drainServices {
		if cur[name] != nil {
			delete(s.drainServices, name)
		}
	}
	s.publishViewLocked()
}

// usesLocked reports whether w has this waypoint.
func (s *Store) usesLocked(w *configv1alpha1.Workload) bool {
	gw := w.GetWaypoint().GetGateway()
	return gw != "" && (s.gateway == "" || gw == s.gateway)
}

// drainWorkloadsLocked starts the drain of the workloads that stop using
// this waypoint (or disappear), and ends that of those that use it again.
func (s *Store) drainWorkloadsLocked(old, cur map[string]*configv1alpha1.Workload) {
	now := time.Now()
	for name, w := range old {
		if !s.usesLocked(w) || s.usesLocked(cur[name]) || s.drainWorkloads[name] != nil || s.period <= 0 {
			continue
		}
		s.drainWorkloads[name] = &drainedWorkload{w: w, until: now.Add(s.period)}
		s.log.Info("workload stopped using this waypoint: draining", "workload", name, "drain", s.period.String())
		s.scheduleExpiry(s.period)
	}
	for name := range s.drainWorkloads {
		if s.usesLocked(cur[name]) {
			delete(s.drainWorkloads, name)
			s.log.Info("workload uses this waypoint again: drain stopped", "workload", name)
		}
	}
	s.publishViewLocked()
}

// withDrainingLocked returns the Services and Workloads with the draining
// ones: a removed Service as it last was; a draining workload as it was
// when it used this waypoint.
func (s *Store) withDrainingLocked() (map[string]*configv1alpha1.Service, map[string]*configv1alpha1.Workload) {
	services, workloads := s.services, s.workloads
	if len(s.drainServices) > 0 {
		services = maps.Clone(services)
		if services == nil {
			services = map[string]*configv1alpha1.Service{}
		}
		for name, d := range s.drainServices {
			if services[name] == nil {
				services[name] = d.svc
			}
		}
	}
	if len(s.drainWorkloads) > 0 {
		workloads = maps.Clone(workloads)
		if workloads == nil {
			workloads = map[string]*configv1alpha1.Workload{}
		}
		for name, d := range s.drainWorkloads {
			workloads[name] = d.w
		}
	}
	return services, workloads
}

func (s *Store) publishViewLocked() {
	v := &drainView{routes: map[route.Key]*authz.Policies{}, services: map[string]bool{}, workloads: map[string]bool{}}
	for k, d := range s.drainRoutes {
		v.routes[k] = d.policies
		v.services[k.Service] = true
	}
	for name := range s.drainServices {
		v.services[name] = true
	}
	for name := range s.drainWorkloads {
		v.workloads[name] = true
	}
	s.view.Store(v)
}

// scheduleExpiry runs expire after d (plus a little, so that what is due
// is past its deadline).
func (s *Store) scheduleExpiry(d time.Duration) {
	time.AfterFunc(d+time.Millisecond, s.expire)
}

// expire ends the drains that are due: the service ports, Services and
// workloads leave the served configuration.
func (s *Store) expire() {
	s.mu.Lock()
	ended, hooks := s.expireLocked(), s.onExpire
	s.mu.Unlock()
	if ended {
		for _, f := range hooks {
			f()
		}
	}
}

// addOnExpire adds f to what runs after drains ended.
func (s *Store) addOnExpire(f func()) {
	s.mu.Lock()
	s.onExpire = append(s.onExpire, f)
	s.mu.Unlock()
}

func (s *Store) expireLocked() bool {
	now := time.Now()
	var routes, services, workloads bool
	for k, d := range s.drainRoutes {
		if !now.Before(d.until) {
			delete(s.drainRoutes, k)
			routes = true
			s.log.Info("drain ended: service port no longer served", "service", k.String())
		}
	}
	for name, d := range s.drainServices {
		if !now.Before(d.until) {
			delete(s.drainServices, name)
			services = true
			s.log.Info("drain ended: removed service no longer served", "service", name)
		}
	}
	for name, d := range s.drainWorkloads {
		if !now.Before(d.until) {
			delete(s.drainWorkloads, name)
			workloads = true
			s.log.Info("drain ended: workload no longer served", "workload", name)
		}
	}
	if routes {
		s.publishTableLocked()
	}
	if services || workloads {
		s.commitLocked()
		s.publishViewLocked()
	}
	return routes || services || workloads
}

// Draining returns the number of Services (by name, whether one of their
// ports left the route table or the Service was removed) and of workloads
// that are draining.
func (s *Store) Draining() (services, workloads int) {
	v := s.view.Load()
	return len(v.services), len(v.workloads)
}

// drainingNames lists what is draining, for the config dump.
func (s *Store) drainingNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []string{}
	for k := range s.drainRoutes {
		out = append(out, k.String())
	}
	for name := range s.drainServices {
		out = append(out, "service "+name)
	}
	for name := range s.drainWorkloads {
		out = append(out, "workload "+name)
	}
	slices.Sort(out)
	return out
}

// drainingDestination reports whether what a request was sent to is
// draining: its service port or Service, or its workload.
func (s *Store) drainingDestination(service string, port uint32, workload string) bool {
	v := s.view.Load()
	if service != "" {
		_, ok := v.routes[route.Key{Service: service, Port: port}]
		return ok || v.services[service]
	}
	return workload != "" && v.workloads[workload]
}

// policiesFor returns the authorization policies of service:port: those
// in force when its drain started while it drains, else the current ones.
func (s *Store) policiesFor(service string, port uint32) *authz.Policies {
	if p, ok := s.view.Load().routes[route.Key{Service: service, Port: port}]; ok {
		return p
	}
	return s.Authorizations()
}

// drainMark wraps the HTTP handler: an answer to a request whose service
// port, Service or workload is draining (checked when the answer starts,
// so requests in flight when the drain starts are marked too) carries
// "Connection: close". The HTTP/1.1 server then closes the connection
// after the response; the HTTP/2 server sends GOAWAY, finishes the streams
// in flight and closes the connection.
func (s *Server) drainMark(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := &drainWriter{ResponseWriter: w, store: s.cfg.Store}
		if svc, port, ok := proxy.DestinationFromContext(r.Context()); ok {
			d.service, d.port = svc, port
		} else if ep, ok := proxy.WorkloadDestinationFromContext(r.Context()); ok {
			d.workload = ep.Workload
		}
		h.ServeHTTP(d, r)
	})
}

type drainWriter struct {
	http.ResponseWriter
	store    *Store
	service  string
	port     uint32
	workload string
	wrote    bool
}

func (w *drainWriter) WriteHeader(code int) {
	if !w.wrote && code >= 200 {
		w.wrote = true
		if w.store.drainingDestination(w.service, w.port, w.workload) {
			w.Header().Set("Connection", "close")
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *drainWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

// Flush sends what is buffered (a status first if none was written).
func (w *drainWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *drainWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// trackConn is the HTTP server's ConnState hook: it keeps the state of
// the tunnels it serves.
func (s *Server) trackConn(c net.Conn, st http.ConnState) {
	sc, ok := c.(*streamConn)
	if !ok {
		return
	}
	s.connMu.Lock()
	defer s.connMu.Unlock()
	switch st {
	case http.StateClosed, http.StateHijacked:
		delete(s.conns, sc)
	default:
		s.conns[sc] = st
	}
}

// closeIdleUnserved closes the idle HTTP connections whose destination is
// no longer served (a drain ended): a client that kept one idle for the
// whole drain reconnects, as after any server's idle timeout, rather than
// get 404 on it.
func (s *Server) closeIdleUnserved() {
	var idle []*streamConn
	s.connMu.Lock()
	for c, st := range s.conns {
		if st == http.StateIdle && !s.serves(c.dest) {
			idle = append(idle, c)
		}
	}
	s.connMu.Unlock()
	for _, c := range idle {
		s.log.Debug("closing an idle connection whose destination is no longer served", "service", c.dest.service, "port", c.dest.port)
		_ = c.Close()
	}
	s.closeIdleH1(s.serves)
}

// serves reports whether the configuration (with what is draining) still
// serves d.
func (s *Server) serves(d destination) bool {
	if d.workload != nil {
		ap, err := netip.ParseAddrPort(d.workload.Address)
		if err != nil {
			return false
		}
		w := s.cfg.Store.WorkloadByAddress(ap.Addr())
		gw := w.GetWaypoint().GetGateway()
		return gw != "" && (s.cfg.Gateway == "" || gw == s.cfg.Gateway)
	}
	return s.cfg.Store.Table().Service(d.service, d.port) != nil
}
