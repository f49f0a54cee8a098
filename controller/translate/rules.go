package translate

import (
	"fmt"
	"regexp"

	"k8s.io/apimachinery/pkg/types"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	trafficv1alpha1 "github.com/ambit-mesh/ambit/apis/traffic/v1alpha1"
)

// ruleContext is what compiling one rule needs to know about its route.
type ruleContext struct {
	kind routeKind
	ns   string
	// consumerOf are the parent Services of a consumer route.
	consumerOf map[types.NamespacedName]bool
	// refErrs collects unresolved references (ResolvedRefs=False): the rule
	// stays, and what the reference would have served answers 500.
	refErrs *[]error
}

func (c ruleContext) refErr(err error) { *c.refErrs = append(*c.refErrs, err) }

// compileMatchHTTP compiles an HTTPRouteMatch; nil is the default match,
// a "/" prefix.
func compileMatchHTTP(m *gwapiv1.HTTPRouteMatch) (Match, Precedence, error) {
	var out Match
	var p Precedence
	path := StringMatch{Type: configv1alpha1.StringMatch_TYPE_PREFIX, Value: "/"}
	if m != nil && m.Path != nil {
		path.Value = derefOr(m.Path.Value, "/")
		switch derefOr(m.Path.Type, gwapiv1.PathMatchPathPrefix) {
		case gwapiv1.PathMatchExact:
			path.Type = configv1alpha1.StringMatch_TYPE_EXACT
		case gwapiv1.PathMatchPathPrefix:
		case gwapiv1.PathMatchRegularExpression:
			path.Type = configv1alpha1.StringMatch_TYPE_REGEX
			if _, err := regexp.Compile(path.Value); err != nil {
				return out, p, fmt.Errorf("%w: path regular expression %q: %v", ErrUnsupportedValue, path.Value, err)
			}
		default:
			return out, p, fmt.Errorf("%w: path match type %q", ErrUnsupportedValue, *m.Path.Type)
		}
	}
	out.Path = &path
	p.PathKind = map[configv1alpha1.StringMatch_Type]int{
		configv1alpha1.StringMatch_TYPE_EXACT: pathExact, configv1alpha1.StringMatch_TYPE_REGEX: pathRegex,
		configv1alpha1.StringMatch_TYPE_PREFIX: pathPrefix}[path.Type]
	p.PathLength = len(path.Value)
	if m == nil {
		return out, p, nil
	}
	for _, h := range m.Headers {
		sm, err := valueMatch(string(derefOr(h.Type, gwapiv1.HeaderMatchExact)), h.Value)
		if err != nil {
			return out, p, fmt.Errorf("header %s: %w", h.Name, err)
		}
		out.Headers = append(out.Headers, HeaderMatch{Name: string(h.Name), Value: sm})
	}
	for _, q := range m.QueryParams {
		sm, err := valueMatch(string(derefOr(q.Type, gwapiv1.QueryParamMatchExact)), q.Value)
		if err != nil {
			return out, p, fmt.Errorf("query parameter %s: %w", q.Name, err)
		}
		out.QueryParams = append(out.QueryParams, HeaderMatch{Name: string(q.Name), Value: sm})
	}
	out.Method = string(derefOr(m.Method, ""))
	p.Method, p.Headers, p.Query = out.Method != "", len(out.Headers), len(out.QueryParams)
	return out, p, nil
}

// valueMatch compiles an Exact or RegularExpression header/query match.
func valueMatch(typ, value string) (StringMatch, error) {
	switch typ {
	case "Exact":
		return StringMatch{Type: configv1alpha1.StringMatch_TYPE_EXACT, Value: value}, nil
	case "RegularExpression":
		if _, err := regexp.Compile(value); err != nil {
			return StringMatch{}, fmt.Errorf("%w: regular expression %q: %v", ErrUnsupportedValue, value, err)
		}
		return StringMatch{Type: configv1alpha1.StringMatch_TYPE_REGEX, Value: value}, nil
	}
	return StringMatch{}, fmt.Errorf("%w: match type %q", ErrUnsupportedValue, typ)
}

// compileMatchGRPC compiles a GRPCRouteMatch to a path match on
// /<service>/<method>; nil matches every request.
func compileMatchGRPC(m *gwapiv1.GRPCRouteMatch) (Match, Precedence, error) {
	var out Match
	var p Precedence
	path := StringMatch{Type: configv1alpha1.StringMatch_TYPE_PREFIX, Value: "/"}
	if m != nil && m.Method != nil {
		svc, method := derefOr(m.Method.Service, ""), derefOr(m.Method.Method, "")
		p.ServiceLen, p.MethodLen = len(svc), len(method)
		switch derefOr(m.Method.Type, gwapiv1.GRPCMethodMatchExact) {
		case gwapiv1.GRPCMethodMatchExact:
			switch {
			case svc != "" && method != "":
				path = StringMatch{Type: configv1alpha1.StringMatch_TYPE_EXACT, Value: "/" + svc + "/" + method}
			case svc != "":
				path = StringMatch{Type: configv1alpha1.StringMatch_TYPE_PREFIX, Value: "/" + svc + "/"}
			case method != "":
				path = StringMatch{Type: configv1alpha1.StringMatch_TYPE_REGEX, Value: "/[^/]+/" + regexp.QuoteMeta(method)}
			}
		case gwapiv1.GRPCMethodMatchRegularExpression:
			svcRE, methodRE := "[^/]+", "[^/]+"
			if svc != "" {
				svcRE = svc
			}
			if method != "" {
				methodRE = method
			}
			path = StringMatch{Type: configv1alpha1.StringMatch_TYPE_REGEX, Value: "/" + svcRE + "/" + methodRE}
			if _, err := regexp.Compile(path.Value); err != nil {
				return out, p, fmt.Errorf("%w: method regular expression: %v", ErrUnsupportedValue, err)
			}
		default:
			return out, p, fmt.Errorf("%w: method match type %q", ErrUnsupportedValue, *m.Method.Type)
		}
	}
	out.Path = &path
	if m == nil {
		return out, p, nil
	}
	for _, h := range m.Headers {
		sm, err := valueMatch(string(derefOr(h.Type, gwapiv1.GRPCHeaderMatchExact)), h.Value)
		if err != nil {
			return out, p, fmt.Errorf("header %s: %w", h.Name, err)
		}
		out.Headers = append(out.Headers, HeaderMatch{Name: string(h.Name), Value: sm})
	}
	p.Headers = len(out.Headers)
	return out, p, nil
}

// resolveBackend resolves a backend object reference to a Service port. An
// error is a reference error (the backend answers 500).
func (b *builder) resolveBackend(c ruleContext, ref *gwapiv1.BackendObjectReference) (types.NamespacedName, int32, error) {
	group, kind := string(derefOr(ref.Group, "")), string(derefOr(ref.Kind, "Service"))
	k := types.NamespacedName{Namespace: string(derefOr(ref.Namespace, gwapiv1.Namespace(c.ns))), Name: string(ref.Name)}
	if group != "" || kind != "Service" {
		return k, 0, fmt.Errorf("%w: backendRef %s: %s/%s is not a core Service", ErrInvalidKind, k, group, kind)
	}
	// A consumer route may send its clients to its parent Services without
	// a ReferenceGrant: they reach them anyway (GAMMA: a mesh route needs
	// a grant only where it widens what a client can reach).
	if k.Namespace != c.ns && !c.consumerOf[k] && !b.ix.grantAllows(string(c.kind), c.ns, k) {
		return k, 0, fmt.Errorf("%w: backendRef to Service %s: no ReferenceGrant in %s allows %s from %s", ErrRefNotPermitted, k, k.Namespace, c.kind, c.ns)
	}
	svc := b.ix.servicesByKey[k]
	if svc == nil {
		return k, 0, fmt.Errorf("%w: Service %s not found", ErrBackendNotFound, k)
	}
	if ref.Port == nil {
		return k, 0, fmt.Errorf("%w: backendRef to Service %s needs a port", ErrUnsupportedValue, k)
	}
	for _, p := range svc.Spec.Ports {
		if p.Port == *ref.Port {
			return k, p.Port, nil
		}
	}
	return k, 0, fmt.Errorf("%w: Service %s has no port %d", ErrBackendNotFound, k, *ref.Port)
}

// compileBackend resolves one weighted backendRef with its filters.
func (b *builder) compileBackend(c ruleContext, ref *gwapiv1.BackendRef, filters []gwapiv1.HTTPRouteFilter) (Backend, error) {
	be := Backend{Weight: derefOr(ref.Weight, 1)}
	k, port, err := b.resolveBackend(c, &ref.BackendObjectReference)
	if err != nil {
		c.refErr(err)
		be.Invalid = true
		return be, nil
	}
	be.Service, be.Port = k, port
	if bp := b.backendPolicies[k]; bp != nil {
		be.OutlierDetection, be.Limits = bp.outlierDetection, bp.limits
	}
	fs, extErr, err := b.compileFilters(c, filters)
	if err != nil {
		return be, err
	}
	if extErr != nil {
		c.refErr(extErr)
		return Backend{Weight: be.Weight, Invalid: true}, nil
	}
	be.Filters = fs
	return be, nil
}

// compileFilters compiles filters. err makes the rule invalid (dropped);
// extErr is an unresolvable ExtensionRef, which must not be skipped: what it
// would have filtered answers 500.
func (b *builder) compileFilters(c ruleContext, filters []gwapiv1.HTTPRouteFilter) (out []Filter, extErr, err error) {
	for i := range filters {
		f := &filters[i]
		var nf Filter
		switch f.Type {
		case gwapiv1.HTTPRouteFilterRequestHeaderModifier, gwapiv1.HTTPRouteFilterResponseHeaderModifier:
			hf := f.RequestHeaderModifier
			if f.Type == gwapiv1.HTTPRouteFilterResponseHeaderModifier {
				hf = f.ResponseHeaderModifier
			}
			if hf == nil {
				return nil, nil, fmt.Errorf("%w: filter %s without its configuration", ErrUnsupportedValue, f.Type)
			}
			hm := &HeaderModifier{Remove: hf.Remove}
			for _, h := range hf.Set {
				if hm.Set == nil {
					hm.Set = map[string]string{}
				}
				hm.Set[string(h.Name)] = h.Value
			}
			for _, h := range hf.Add {
				if hm.Add == nil {
					hm.Add = map[string]string{}
				}
				hm.Add[string(h.Name)] = h.Value
			}
			if f.Type == gwapiv1.HTTPRouteFilterRequestHeaderModifier {
				nf.RequestHeaders = hm
			} else {
				nf.ResponseHeaders = hm
			}
		case gwapiv1.HTTPRouteFilterRequestRedirect:
			r := f.RequestRedirect
			if r == nil || c.kind == kindGRPCRoute {
				return nil, nil, fmt.Errorf("%w: filter %s", ErrUnsupportedValue, f.Type)
			}
			pm, err := pathModifier(r.Path)
			if err != nil {
				return nil, nil, err
			}
			nf.Redirect = &Redirect{Scheme: derefOr(r.Scheme, ""), Hostname: string(derefOr(r.Hostname, "")), Path: pm,
				Port: derefOr(r.Port, 0), StatusCode: int32(derefOr(r.StatusCode, 302))}
		case gwapiv1.HTTPRouteFilterURLRewrite:
			r := f.URLRewrite
			if r == nil || c.kind == kindGRPCRoute {
				return nil, nil, fmt.Errorf("%w: filter %s", ErrUnsupportedValue, f.Type)
			}
			pm, err := pathModifier(r.Path)
			if err != nil {
				return nil, nil, err
			}
			nf.Rewrite = &Rewrite{Hostname: string(derefOr(r.Hostname, "")), Path: pm}
		case gwapiv1.HTTPRouteFilterRequestMirror:
			m := f.RequestMirror
			if m == nil {
				return nil, nil, fmt.Errorf("%w: filter %s without its configuration", ErrUnsupportedValue, f.Type)
			}
			k, port, rerr := b.resolveBackend(c, &m.BackendRef)
			if rerr != nil {
				c.refErr(rerr) // an unresolved mirror is dropped
				continue
			}
			pct := 100.0
			switch {
			case m.Percent != nil:
				pct = float64(*m.Percent)
			case m.Fraction != nil:
				den := derefOr(m.Fraction.Denominator, 100)
				if den <= 0 || m.Fraction.Numerator < 0 || m.Fraction.Numerator > den {
					return nil, nil, fmt.Errorf("%w: mirror fraction %d/%d", ErrUnsupportedValue, m.Fraction.Numerator, den)
				}
				pct = 100 * float64(m.Fraction.Numerator) / float64(den)
			}
			nf.Mirror = &Mirror{Backend: Backend{Service: k, Port: port, Weight: 1}, Percent: pct}
		case gwapiv1.HTTPRouteFilterExtensionRef:
			e := f.ExtensionRef
			if e == nil {
				return nil, nil, fmt.Errorf("%w: ExtensionRef filter without extensionRef", ErrUnsupportedValue)
			}
			k := types.NamespacedName{Namespace: c.ns, Name: string(e.Name)}
			switch {
			case string(e.Group) != trafficv1alpha1.GroupVersion.Group || e.Kind != "FaultInjection":
				extErr = fmt.Errorf("%w: ExtensionRef %s/%s: only %s FaultInjection", ErrInvalidKind, e.Group, e.Kind, trafficv1alpha1.GroupVersion.Group)
			case b.faults[k] == nil && b.ix.fault(k) != nil:
				extErr = fmt.Errorf("%w: FaultInjection %s is not accepted", ErrBackendNotFound, k)
			case b.faults[k] == nil:
				extErr = fmt.Errorf("%w: FaultInjection %s not found", ErrBackendNotFound, k)
			default:
				fault := *b.faults[k]
				nf.Fault = &fault
			}
			if extErr != nil {
				continue
			}
		default:
			return nil, nil, fmt.Errorf("%w: filter type %q is not supported", ErrUnsupportedValue, f.Type)
		}
		out = append(out, nf)
	}
	return out, extErr, nil
}

func pathModifier(m *gwapiv1.HTTPPathModifier) (*PathModifier, error) {
	if m == nil {
		return nil, nil
	}
	switch m.Type {
	case gwapiv1.FullPathHTTPPathModifier:
		if m.ReplaceFullPath != nil {
			return &PathModifier{FullPath: m.ReplaceFullPath}, nil
		}
	case gwapiv1.PrefixMatchHTTPPathModifier:
		if m.ReplacePrefixMatch != nil {
			return &PathModifier{PrefixMatch: m.ReplacePrefixMatch}, nil
		}
	}
	return nil, fmt.Errorf("%w: path modifier %q without its value", ErrUnsupportedValue, m.Type)
}
