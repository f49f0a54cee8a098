package translate

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	securityv1alpha1 "github.com/ambit-mesh/ambit/apis/security/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/authzmatch"
)

// The intermediate representation (IR) sits between Kubernetes objects and
// the wire protobufs: objects are resolved and validated into IR values (every
// reference looked up, every default applied, every error turned into
// status), and emit.go turns IR into protobufs mechanically. Each IR type's
// Validate reports broken invariants wrapped in ErrInvalidIR or a more
// specific sentinel.

// Mesh is the IR of one translation.
type Mesh struct {
	Workloads      []*Workload
	Services       []*Service
	Authorizations []*Authorization
	Waypoints      []*Waypoint
}

// Workload is a Pod as the data planes see it.
type Workload struct {
	Key             types.NamespacedName
	UID             string
	ServiceAccount  string
	Identity        string
	TrustDomain     string
	Node            string
	Addresses       []string
	Enrolled, Ready bool
	Waypoint        *WaypointRef
	MTLS            configv1alpha1.MTLSMode
	// PortMTLS overrides MTLS on some of the pod's ports (PERMISSIVE or
	// STRICT), from the selecting PeerAuthentication's portLevelMtls.
	PortMTLS          map[uint32]configv1alpha1.MTLSMode
	CanonicalName     string
	CanonicalRevision string
	WorkloadName      string
	// Authorizations are the WORKLOAD_SELECTOR policies selecting the pod, sorted.
	Authorizations []string
	// DNS is the pod's resolver configuration.
	DNS DNSConfig
}

// DNSConfig is a pod's resolver configuration as the kubelet forms it:
// Nameservers are the pod's own (dnsConfig), the cluster's or node's are
// the data plane's to add.
type DNSConfig struct {
	Policy      configv1alpha1.DNSConfig_Policy
	Nameservers []string
	Searches    []string
	Ndots       uint32
}

// WaypointRef is a ready waypoint: its Gateway has been accepted and its
// Service has an address.
type WaypointRef struct {
	Gateway  types.NamespacedName
	Address  string
	Identity string
}

// Service is a Kubernetes Service with a cluster IP, and its endpoints.
type Service struct {
	Key       types.NamespacedName
	Hostname  string
	VIPs      []string
	Ports     []ServicePort
	Endpoints []Endpoint
	Waypoint  *WaypointRef
}

// ServicePort is one Service port; TargetPort is 0 when it is named.
type ServicePort struct {
	Name        string
	Port        int32
	TargetPort  int32
	AppProtocol string
}

// Endpoint is one address backing a Service.
type Endpoint struct {
	Workload    string
	Address     string
	TargetPorts map[int32]int32
	Ready       bool
}

// Authorization is an accepted (or fail-closed) AuthorizationPolicy.
type Authorization struct {
	Key     types.NamespacedName
	Scope   configv1alpha1.Authorization_Scope
	Action  configv1alpha1.Authorization_Action
	Rules   []securityv1alpha1.Rule
	Targets []types.NamespacedName
}

// Waypoint is a valid waypoint Gateway and what it serves.
type Waypoint struct {
	Key      types.NamespacedName
	Identity string
	Services []*ServiceRoutes
}

// ServiceRoutes are the compiled rules of one Service port at a waypoint.
type ServiceRoutes struct {
	Service  types.NamespacedName
	Port     int32
	Protocol configv1alpha1.ServiceRoutes_Protocol
	// Rules of the producer routes (in the Service's namespace).
	Rules []*RouteRule
	// Consumers are the rules of consumer routes (GAMMA: routes in another
	// namespace), by namespace in name order; for requests from that
	// namespace they replace Rules.
	Consumers []ConsumerRoutes
}

// ConsumerRoutes are the rules of one namespace's consumer routes for a
// Service port, in precedence order.
type ConsumerRoutes struct {
	Namespace string
	Rules     []*RouteRule
}

// RouteRule is one rule of an HTTPRoute or GRPCRoute with one of its matches.
type RouteRule struct {
	// Route is "<kind>/<namespace>/<name>/<rule index>".
	Route   string
	Match   Match
	Filters []Filter
	// Backends; an entry with Invalid set answers 500 for its share.
	Backends              []Backend
	RequestTimeout        *time.Duration
	BackendRequestTimeout *time.Duration
	Retry                 *Retry
	// InvalidBackends: nothing can serve the rule, it answers 500.
	InvalidBackends bool
	// Precedence orders rules across routes (see precedence.go).
	Precedence Precedence
}

// Match is an HTTP match; GRPC method matches are compiled to paths.
type Match struct {
	Path        *StringMatch
	Headers     []HeaderMatch
	QueryParams []HeaderMatch
	Method      string
}

// StringMatch matches a value exactly, by prefix or by regular expression.
type StringMatch struct {
	Type  configv1alpha1.StringMatch_Type
	Value string
}

// HeaderMatch matches a header or query parameter.
type HeaderMatch struct {
	Name  string
	Value StringMatch
}

// Filter is one filter; exactly one field is set.
type Filter struct {
	RequestHeaders  *HeaderModifier
	ResponseHeaders *HeaderModifier
	Redirect        *Redirect
	Rewrite         *Rewrite
	Mirror          *Mirror
	Fault           *Fault
}

// HeaderModifier sets, adds and removes headers.
type HeaderModifier struct {
	Set, Add map[string]string
	Remove   []string
}

// PathModifier replaces the full path or the matched prefix; one is set.
type PathModifier struct {
	FullPath, PrefixMatch *string
}

// Redirect answers with a redirect.
type Redirect struct {
	Scheme, Hostname string
	Path             *PathModifier
	Port             int32
	StatusCode       int32
}

// Rewrite changes the forwarded request.
type Rewrite struct {
	Hostname string
	Path     *PathModifier
}

// Mirror copies requests to a backend.
type Mirror struct {
	Backend Backend
	Percent float64
}

// Fault is a resolved FaultInjection.
type Fault struct {
	Delay        *time.Duration
	DelayPercent float64
	AbortHTTP    int32
	AbortGRPC    int32
	AbortPercent float64
}

// Backend is one resolved backendRef.
type Backend struct {
	Service types.NamespacedName
	Port    int32
	Weight  int32
	Filters []Filter
	// Invalid: the reference did not resolve; requests sent here get 500.
	Invalid          bool
	OutlierDetection *OutlierDetection
	Limits           *Limits
}

// OutlierDetection from a BackendPolicy, defaults applied.
type OutlierDetection struct {
	Consecutive5xx     int32
	Interval           time.Duration
	BaseEjectionTime   time.Duration
	MaxEjectionPercent int32
}

// Limits from a BackendPolicy.
type Limits struct {
	MaxConnections, MaxPendingRequests, MaxRequests int32
}

// Retry is an HTTPRouteRetry.
type Retry struct {
	Codes    []int32
	Attempts int32
	Backoff  *time.Duration
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidIR, fmt.Sprintf(format, args...))
}

// Validate checks every element of the mesh.
func (m *Mesh) Validate() error {
	var errs []error
	for _, w := range m.Workloads {
		errs = append(errs, w.Validate())
	}
	for _, s := range m.Services {
		errs = append(errs, s.Validate())
	}
	for _, a := range m.Authorizations {
		errs = append(errs, a.Validate())
	}
	for _, w := range m.Waypoints {
		errs = append(errs, w.Validate())
	}
	return errors.Join(errs...)
}

// Validate checks a workload.
func (w *Workload) Validate() error {
	switch {
	case w.Key.Namespace == "" || w.Key.Name == "":
		return invalid("workload without namespace or name")
	case len(w.Addresses) == 0 && w.Node == "":
		return invalid("workload %s has neither an address nor a node", w.Key)
	case !strings.HasPrefix(w.Identity, "spiffe://"):
		return invalid("workload %s identity %q is not a SPIFFE ID", w.Key, w.Identity)
	case w.MTLS == configv1alpha1.MTLSMode_MTLS_MODE_UNSPECIFIED:
		return invalid("workload %s has no mTLS mode", w.Key)
	case w.DNS.Policy == configv1alpha1.DNSConfig_POLICY_UNSPECIFIED:
		return invalid("workload %s has no DNS policy", w.Key)
	}
	for port, m := range w.PortMTLS {
		if port < 1 || port > 65535 || m == configv1alpha1.MTLSMode_MTLS_MODE_UNSPECIFIED {
			return invalid("workload %s: port %d mTLS mode %s", w.Key, port, m)
		}
	}
	return w.Waypoint.Validate()
}

// Validate checks a waypoint reference; nil is valid (no waypoint).
func (r *WaypointRef) Validate() error {
	if r == nil {
		return nil
	}
	if r.Address == "" || r.Gateway.Name == "" || !strings.HasPrefix(r.Identity, "spiffe://") {
		return invalid("waypoint reference %s is incomplete", r.Gateway)
	}
	return nil
}

// Validate checks a service.
func (s *Service) Validate() error {
	if s.Key.Name == "" || s.Hostname == "" || len(s.VIPs) == 0 {
		return invalid("service %s without name, hostname or VIP", s.Key)
	}
	for _, p := range s.Ports {
		if p.Port < 1 || p.Port > 65535 {
			return invalid("service %s port %d out of range", s.Key, p.Port)
		}
	}
	for _, e := range s.Endpoints {
		if e.Address == "" {
			return invalid("service %s has an endpoint without address", s.Key)
		}
	}
	return s.Waypoint.Validate()
}

// Validate checks an authorization: the scope decides what must be set.
func (a *Authorization) Validate() error {
	if a.Action == configv1alpha1.Authorization_ACTION_UNSPECIFIED {
		return invalid("authorization %s without action", a.Key)
	}
	switch a.Scope {
	case configv1alpha1.Authorization_SCOPE_WAYPOINT, configv1alpha1.Authorization_SCOPE_SERVICE:
		if len(a.Targets) == 0 {
			return invalid("authorization %s: scope %s without targets", a.Key, a.Scope)
		}
	case configv1alpha1.Authorization_SCOPE_WORKLOAD_SELECTOR, configv1alpha1.Authorization_SCOPE_NAMESPACE, configv1alpha1.Authorization_SCOPE_GLOBAL:
		if len(a.Targets) != 0 {
			return invalid("authorization %s: scope %s with targets", a.Key, a.Scope)
		}
		for _, r := range a.Rules {
			for _, op := range r.To {
				if len(op.Methods)+len(op.Paths)+len(op.NotPaths)+len(op.Headers) > 0 {
					return fmt.Errorf("%w: authorization %s", ErrL7AtL4, a.Key)
				}
			}
		}
	default:
		return invalid("authorization %s without scope", a.Key)
	}
	for _, r := range a.Rules {
		for _, op := range r.To {
			for _, p := range append(append([]int32(nil), op.Ports...), op.NotPorts...) {
				if p < 1 || p > 65535 {
					return fmt.Errorf("%w: port %d out of range", ErrInvalidPolicy, p)
				}
			}
		}
		for _, f := range r.From {
			for _, b := range append(append([]securityv1alpha1.IPBlock(nil), f.IPBlocks...), f.NotIPBlocks...) {
				if _, err := authzmatch.ParseIPBlock(string(b)); err != nil {
					return fmt.Errorf("%w: %v", ErrInvalidPolicy, err)
				}
			}
		}
	}
	return nil
}

// Validate checks a waypoint and its rules.
func (w *Waypoint) Validate() error {
	if w.Key.Name == "" || !strings.HasPrefix(w.Identity, "spiffe://") {
		return invalid("waypoint %s without name or identity", w.Key)
	}
	var errs []error
	for _, s := range w.Services {
		// PROTOCOL_UNSPECIFIED is valid: the waypoint sniffs. Rules need HTTP.
		if s.Protocol == configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED && (len(s.Rules) > 0 || len(s.Consumers) > 0) {
			errs = append(errs, invalid("waypoint %s service %s:%d has rules but no protocol", w.Key, s.Service, s.Port))
		}
		for _, r := range s.Rules {
			errs = append(errs, r.Validate())
		}
		seen := map[string]bool{}
		for _, c := range s.Consumers {
			switch {
			case c.Namespace == "" || c.Namespace == s.Service.Namespace:
				errs = append(errs, invalid("waypoint %s service %s:%d: consumer namespace %q is empty or the service's own", w.Key, s.Service, s.Port, c.Namespace))
			case seen[c.Namespace]:
				errs = append(errs, invalid("waypoint %s service %s:%d: consumer namespace %s listed twice", w.Key, s.Service, s.Port, c.Namespace))
			case len(c.Rules) == 0:
				errs = append(errs, invalid("waypoint %s service %s:%d: consumer namespace %s has no rules", w.Key, s.Service, s.Port, c.Namespace))
			}
			seen[c.Namespace] = true
			for _, r := range c.Rules {
				errs = append(errs, r.Validate())
			}
		}
	}
	return errors.Join(errs...)
}

// Validate checks a compiled rule.
func (r *RouteRule) Validate() error {
	redirect := 0
	rewrite := 0
	for _, f := range r.Filters {
		if err := f.Validate(); err != nil {
			return fmt.Errorf("%s: %w", r.Route, err)
		}
		if f.Redirect != nil {
			redirect++
		}
		if f.Rewrite != nil {
			rewrite++
		}
	}
	if redirect > 0 && rewrite > 0 {
		return fmt.Errorf("%w: %s: RequestRedirect and URLRewrite in one rule", ErrIncompatibleFilters, r.Route)
	}
	if redirect > 1 || rewrite > 1 {
		return fmt.Errorf("%w: %s: at most one RequestRedirect and one URLRewrite per rule", ErrUnsupportedValue, r.Route)
	}
	if r.RequestTimeout != nil && r.BackendRequestTimeout != nil && *r.BackendRequestTimeout > *r.RequestTimeout {
		return fmt.Errorf("%w: %s: backendRequest timeout exceeds request timeout", ErrUnsupportedValue, r.Route)
	}
	if r.Match.Path == nil {
		return invalid("%s: match without path", r.Route)
	}
	for _, f := range r.Filters {
		if (f.Rewrite != nil && f.Rewrite.Path != nil && f.Rewrite.Path.PrefixMatch != nil) ||
			(f.Redirect != nil && f.Redirect.Path != nil && f.Redirect.Path.PrefixMatch != nil) {
			if r.Match.Path.Type != configv1alpha1.StringMatch_TYPE_PREFIX {
				return fmt.Errorf("%w: %s: ReplacePrefixMatch needs a PathPrefix match", ErrUnsupportedValue, r.Route)
			}
		}
	}
	for _, b := range r.Backends {
		if !b.Invalid && (b.Service.Name == "" || b.Port < 1 || b.Port > 65535) {
			return invalid("%s: backend %s:%d incomplete", r.Route, b.Service, b.Port)
		}
		if b.Weight < 0 {
			return fmt.Errorf("%w: %s: negative weight", ErrUnsupportedValue, r.Route)
		}
	}
	return nil
}

// Validate checks a filter: exactly one kind, sane percentages.
func (f *Filter) Validate() error {
	n := 0
	for _, set := range []bool{f.RequestHeaders != nil, f.ResponseHeaders != nil, f.Redirect != nil, f.Rewrite != nil, f.Mirror != nil, f.Fault != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return invalid("filter with %d kinds", n)
	}
	pct := func(p float64) bool { return p >= 0 && p <= 100 }
	if f.Mirror != nil && !pct(f.Mirror.Percent) {
		return fmt.Errorf("%w: mirror percent %v", ErrUnsupportedValue, f.Mirror.Percent)
	}
	if f.Fault != nil && (!pct(f.Fault.DelayPercent) || !pct(f.Fault.AbortPercent)) {
		return fmt.Errorf("%w: fault percent out of range", ErrUnsupportedValue)
	}
	if f.Redirect != nil && f.Redirect.StatusCode != 0 && f.Redirect.StatusCode != 301 && f.Redirect.StatusCode != 302 &&
		f.Redirect.StatusCode != 303 && f.Redirect.StatusCode != 307 && f.Redirect.StatusCode != 308 {
		return fmt.Errorf("%w: redirect status %d", ErrUnsupportedValue, f.Redirect.StatusCode)
	}
	return nil
}
