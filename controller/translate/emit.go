package translate

import (
	"maps"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	securityv1alpha1 "github.com/ambit-mesh/ambit/apis/security/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/authzmatch"
)

// emit turns the IR into protobufs. Elements failing Validate (translation
// bugs, since every user error was handled earlier) are left out.
func (b *builder) emit() Output {
	out := Output{Status: b.status}
	for _, w := range b.mesh.Workloads {
		if w.Validate() == nil {
			out.Workloads = append(out.Workloads, emitWorkload(w))
		}
	}
	for _, s := range b.mesh.Services {
		if s.Validate() == nil {
			out.Services = append(out.Services, emitService(s))
		}
	}
	for _, a := range b.mesh.Authorizations {
		out.Authorizations = append(out.Authorizations, emitAuthorization(a))
	}
	for _, w := range b.mesh.Waypoints {
		if w.Validate() == nil {
			out.Waypoints = append(out.Waypoints, emitWaypoint(w))
		}
	}
	sortByName(out.Workloads)
	sortByName(out.Services)
	sortByName(out.Authorizations)
	sortByName(out.Waypoints)
	return out
}

// sortByName sorts resources by their name field, as Output promises.
func sortByName[M interface{ GetName() string }](s []M) {
	slices.SortStableFunc(s, func(a, b M) int { return strings.Compare(a.GetName(), b.GetName()) })
}

func emitWaypointRef(r *WaypointRef) *configv1alpha1.WaypointRef {
	if r == nil {
		return nil
	}
	return &configv1alpha1.WaypointRef{Gateway: r.Gateway.String(), Address: r.Address, Identity: r.Identity}
}

func emitWorkload(w *Workload) *configv1alpha1.Workload {
	return &configv1alpha1.Workload{
		Name: w.Key.String(), Uid: w.UID, Namespace: w.Key.Namespace, ServiceAccount: w.ServiceAccount,
		Identity: w.Identity, Node: w.Node, Addresses: slices.Clone(w.Addresses), Enrolled: w.Enrolled, Ready: w.Ready,
		Waypoint: emitWaypointRef(w.Waypoint), MtlsMode: w.MTLS, PortMtlsModes: maps.Clone(w.PortMTLS), CanonicalName: w.CanonicalName,
		CanonicalRevision: w.CanonicalRevision, WorkloadName: w.WorkloadName,
		AuthorizationPolicies: slices.Clone(w.Authorizations), TrustDomain: w.TrustDomain,
		Dns: &configv1alpha1.DNSConfig{Policy: w.DNS.Policy, Nameservers: slices.Clone(w.DNS.Nameservers),
			Searches: slices.Clone(w.DNS.Searches), Ndots: w.DNS.Ndots},
	}
}

func emitService(s *Service) *configv1alpha1.Service {
	out := &configv1alpha1.Service{Name: s.Key.String(), Namespace: s.Key.Namespace, Hostname: s.Hostname,
		Vips: slices.Clone(s.VIPs), Waypoint: emitWaypointRef(s.Waypoint)}
	for _, p := range s.Ports {
		out.Ports = append(out.Ports, &configv1alpha1.ServicePort{Name: p.Name, Port: uint32(p.Port),
			TargetPort: uint32(p.TargetPort), AppProtocol: p.AppProtocol})
	}
	for _, e := range s.Endpoints {
		ep := &configv1alpha1.Endpoint{Workload: e.Workload, Address: e.Address, Ready: e.Ready}
		if len(e.TargetPorts) > 0 {
			ep.TargetPorts = map[uint32]uint32{}
			for k, v := range e.TargetPorts {
				ep.TargetPorts[uint32(k)] = uint32(v)
			}
		}
		out.Endpoints = append(out.Endpoints, ep)
	}
	return out
}

func emitAuthorization(a *Authorization) *configv1alpha1.Authorization {
	out := &configv1alpha1.Authorization{Name: a.Key.String(), Namespace: a.Key.Namespace, Scope: a.Scope, Action: a.Action}
	for _, t := range a.Targets {
		out.Targets = append(out.Targets, t.String())
	}
	for _, r := range a.Rules {
		out.Rules = append(out.Rules, emitAuthzRule(r))
	}
	return out
}

// ipBlocks returns the blocks in canonical CIDR form ("10.1.2.3" ->
// "10.1.2.3/32", "10.1.2.3/24" -> "10.1.2.0/24"), the form the data planes
// are sent. Entries that do not parse are dropped: Authorization.Validate
// has refused them already (the policy is emitted fail-closed instead).
func ipBlocks(in []securityv1alpha1.IPBlock) []string {
	var out []string
	for _, b := range in {
		if p, err := authzmatch.ParseIPBlock(string(b)); err == nil {
			out = append(out, p.String())
		}
	}
	return out
}

func emitAuthzRule(r securityv1alpha1.Rule) *configv1alpha1.AuthorizationRule {
	out := &configv1alpha1.AuthorizationRule{}
	for _, f := range r.From {
		out.From = append(out.From, &configv1alpha1.AuthorizationRule_Source{
			Principals: slices.Clone(f.Principals), NotPrincipals: slices.Clone(f.NotPrincipals),
			Namespaces: slices.Clone(f.Namespaces), NotNamespaces: slices.Clone(f.NotNamespaces),
			IpBlocks: ipBlocks(f.IPBlocks), NotIpBlocks: ipBlocks(f.NotIPBlocks)})
	}
	for _, t := range r.To {
		op := &configv1alpha1.AuthorizationRule_Operation{Ports: ports(t.Ports), NotPorts: ports(t.NotPorts),
			Methods: slices.Clone(t.Methods), Paths: slices.Clone(t.Paths), NotPaths: slices.Clone(t.NotPaths)}
		for _, h := range t.Headers {
			op.Headers = append(op.Headers, &configv1alpha1.AuthorizationRule_HeaderMatch{Name: h.Name, Values: slices.Clone(h.Values)})
		}
		out.To = append(out.To, op)
	}
	return out
}

func ports(in []int32) []uint32 {
	var out []uint32
	for _, p := range in {
		out = append(out, uint32(p))
	}
	return out
}

func emitWaypoint(w *Waypoint) *configv1alpha1.WaypointConfig {
	out := &configv1alpha1.WaypointConfig{Name: w.Key.String(), Identity: w.Identity}
	for _, s := range w.Services {
		sr := &configv1alpha1.ServiceRoutes{Service: s.Service.String(), Port: uint32(s.Port), Protocol: s.Protocol}
		for _, r := range s.Rules {
			sr.Rules = append(sr.Rules, emitRule(r))
		}
		for _, c := range s.Consumers {
			cr := &configv1alpha1.ConsumerRoutes{Namespace: c.Namespace}
			for _, r := range c.Rules {
				cr.Rules = append(cr.Rules, emitRule(r))
			}
			sr.Consumers = append(sr.Consumers, cr)
		}
		out.Services = append(out.Services, sr)
	}
	return out
}

func dur(d *time.Duration) *durationpb.Duration {
	if d == nil {
		return nil
	}
	return durationpb.New(*d)
}

func emitRule(r *RouteRule) *configv1alpha1.RouteRule {
	out := &configv1alpha1.RouteRule{Route: r.Route, Match: emitMatch(&r.Match), Filters: emitFilters(r.Filters),
		RequestTimeout: dur(r.RequestTimeout), BackendRequestTimeout: dur(r.BackendRequestTimeout),
		InvalidBackends: r.InvalidBackends}
	for i := range r.Backends {
		out.Backends = append(out.Backends, emitBackend(&r.Backends[i]))
	}
	if r.Retry != nil {
		out.Retry = &configv1alpha1.Retry{Attempts: uint32(r.Retry.Attempts), Backoff: dur(r.Retry.Backoff)}
		out.Retry.Codes = ports(r.Retry.Codes)
	}
	return out
}

func emitString(m StringMatch) *configv1alpha1.StringMatch {
	return &configv1alpha1.StringMatch{Type: m.Type, Value: m.Value}
}

func emitMatch(m *Match) *configv1alpha1.RouteMatch {
	out := &configv1alpha1.RouteMatch{Method: m.Method}
	if m.Path != nil {
		out.Path = emitString(*m.Path)
	}
	for _, h := range m.Headers {
		out.Headers = append(out.Headers, &configv1alpha1.HeaderMatch{Name: h.Name, Value: emitString(h.Value)})
	}
	for _, q := range m.QueryParams {
		out.QueryParams = append(out.QueryParams, &configv1alpha1.HeaderMatch{Name: q.Name, Value: emitString(q.Value)})
	}
	return out
}

// emitBackend emits a backend; an invalid one has no service: the waypoint
// answers 500 to the requests it picks for it.
func emitBackend(b *Backend) *configv1alpha1.WeightedBackend {
	out := &configv1alpha1.WeightedBackend{Weight: uint32(b.Weight), Filters: emitFilters(b.Filters)}
	if b.Invalid {
		return out
	}
	out.Service, out.Port = b.Service.String(), uint32(b.Port)
	if o := b.OutlierDetection; o != nil {
		out.OutlierDetection = &configv1alpha1.OutlierDetection{Consecutive_5XxErrors: uint32(o.Consecutive5xx),
			Interval: durationpb.New(o.Interval), BaseEjectionTime: durationpb.New(o.BaseEjectionTime),
			MaxEjectionPercent: uint32(o.MaxEjectionPercent)}
	}
	if l := b.Limits; l != nil {
		out.Limits = &configv1alpha1.Limits{MaxConnections: uint32(l.MaxConnections),
			MaxPendingRequests: uint32(l.MaxPendingRequests), MaxRequests: uint32(l.MaxRequests)}
	}
	return out
}

func emitHeaders(h *HeaderModifier) *configv1alpha1.HeaderModifier {
	return &configv1alpha1.HeaderModifier{Set: h.Set, Add: h.Add, Remove: slices.Clone(h.Remove)}
}

func emitPath(p *PathModifier) *configv1alpha1.PathModifier {
	switch {
	case p == nil:
		return nil
	case p.FullPath != nil:
		return &configv1alpha1.PathModifier{Kind: &configv1alpha1.PathModifier_ReplaceFullPath{ReplaceFullPath: *p.FullPath}}
	case p.PrefixMatch != nil:
		return &configv1alpha1.PathModifier{Kind: &configv1alpha1.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: *p.PrefixMatch}}
	}
	return nil
}

func emitFilters(fs []Filter) []*configv1alpha1.Filter {
	var out []*configv1alpha1.Filter
	for _, f := range fs {
		pf := &configv1alpha1.Filter{}
		switch {
		case f.RequestHeaders != nil:
			pf.Kind = &configv1alpha1.Filter_RequestHeaderModifier{RequestHeaderModifier: emitHeaders(f.RequestHeaders)}
		case f.ResponseHeaders != nil:
			pf.Kind = &configv1alpha1.Filter_ResponseHeaderModifier{ResponseHeaderModifier: emitHeaders(f.ResponseHeaders)}
		case f.Redirect != nil:
			r := f.Redirect
			pf.Kind = &configv1alpha1.Filter_RequestRedirect{RequestRedirect: &configv1alpha1.Redirect{Scheme: r.Scheme,
				Hostname: r.Hostname, Path: emitPath(r.Path), Port: uint32(r.Port), StatusCode: uint32(r.StatusCode)}}
		case f.Rewrite != nil:
			pf.Kind = &configv1alpha1.Filter_UrlRewrite{UrlRewrite: &configv1alpha1.Rewrite{Hostname: f.Rewrite.Hostname, Path: emitPath(f.Rewrite.Path)}}
		case f.Mirror != nil:
			pf.Kind = &configv1alpha1.Filter_RequestMirror{RequestMirror: &configv1alpha1.Mirror{
				Backend: emitBackend(&f.Mirror.Backend), Percent: f.Mirror.Percent}}
		case f.Fault != nil:
			x := f.Fault
			pf.Kind = &configv1alpha1.Filter_Fault{Fault: &configv1alpha1.Fault{Delay: dur(x.Delay), DelayPercent: x.DelayPercent,
				AbortHttpStatus: uint32(x.AbortHTTP), AbortGrpcStatus: uint32(x.AbortGRPC), AbortPercent: x.AbortPercent}}
		}
		out = append(out, pf)
	}
	return out
}
