package route

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/waypoint/filter"
	"github.com/ambit-mesh/ambit/waypoint/resilience"
)

// Table is a compiled WaypointConfig: the rules of every service port the
// waypoint serves.
type Table struct {
	// Name and Identity of the waypoint, from the config.
	Name, Identity string

	services map[Key]*Service
}

// Key names a service port.
type Key struct {
	// Service is "<namespace>/<name>".
	Service string
	Port    uint32
}

func (k Key) String() string { return fmt.Sprintf("%s:%d", k.Service, k.Port) }

// Service is the compiled routes of one service port.
type Service struct {
	Key
	Protocol configv1alpha1.ServiceRoutes_Protocol
	// Rules in precedence order; empty means every request takes Default.
	Rules []*Rule
	// Default is the route to the service itself, used when Rules is empty.
	Default *Rule
	// Consumers are the rules of consumer routes (GAMMA) by client
	// namespace, each non-empty and in precedence order: for a request from
	// that namespace they replace Rules (see RulesFor).
	Consumers map[string][]*Rule
}

// Rule is one compiled route rule.
type Rule struct {
	// Name is the rule's route ("<kind>/<namespace>/<name>/<rule index>");
	// empty for a default route.
	Name string
	// Match decides which requests the rule takes.
	Match Match
	// Filters of the rule (never nil).
	Filters *filter.Chain
	// Backends with their weights; see Pick.
	Backends []*Backend
	// InvalidBackends: every backend is invalid, answer 500.
	InvalidBackends bool
	// RequestTimeout bounds the whole request (timeouts.request); 0 is none.
	RequestTimeout time.Duration
	// BackendRequestTimeout bounds each try (timeouts.backendRequest); 0 is
	// none.
	BackendRequestTimeout time.Duration
	// Retry policy; nil never retries.
	Retry *resilience.RetryPolicy

	totalWeight uint64
}

// Backend is one weighted backendRef of a rule.
type Backend struct {
	// Service ("<namespace>/<name>") and Port; an empty Service is a
	// backendRef that did not resolve: its share of requests answers 500.
	Service string
	Port    uint32
	Weight  uint32
	// Filters of the backendRef (never nil).
	Filters *filter.Chain
	// Outlier detection of the backend service; nil disables it.
	Outlier *resilience.OutlierConfig
	// Limits of the backend service (nil: none).
	Limits *configv1alpha1.Limits
	// Endpoint ("ip:port") and Workload are set, and Service is empty,
	// for the backend of a DirectRule: that one endpoint, not a service.
	Endpoint, Workload string
}

// Key returns the backend's service port.
func (b *Backend) Key() Key { return Key{Service: b.Service, Port: b.Port} }

// Unresolved reports whether the backend did not resolve (answer 500).
func (b *Backend) Unresolved() bool { return b.Service == "" && b.Endpoint == "" }

// DirectRule is the rule of a request addressed to a workload rather than
// a service: every request goes to endpoint ("ip:port", the workload's
// address) as it is, without filters, timeouts or retries.
func DirectRule(endpoint, workload string, port uint32) *Rule {
	return &Rule{Match: Match{path: pathMatch{kind: configv1alpha1.StringMatch_TYPE_PREFIX, value: "/"}},
		Filters: &filter.Chain{}, Backends: []*Backend{{Port: port, Weight: 1, Filters: &filter.Chain{}, Endpoint: endpoint, Workload: workload}},
		totalWeight: 1}
}

// Compile validates cfg and builds its Table. A nil cfg gives an empty
// table.
func Compile(cfg *configv1alpha1.WaypointConfig) (*Table, error) {
	t := &Table{Name: cfg.GetName(), Identity: cfg.GetIdentity(), services: map[Key]*Service{}}
	for i, sr := range cfg.GetServices() {
		k := Key{Service: sr.GetService(), Port: sr.GetPort()}
		switch {
		case k.Service == "" || !strings.Contains(k.Service, "/"):
			return nil, fmt.Errorf("services[%d]: service %q is not <namespace>/<name>", i, k.Service)
		case k.Port == 0 || k.Port > 65535:
			return nil, fmt.Errorf("services[%d] %s: port %d is not within 1-65535", i, k.Service, k.Port)
		case t.services[k] != nil:
			return nil, fmt.Errorf("services[%d]: %s listed twice", i, k)
		}
		s := &Service{Key: k, Protocol: sr.GetProtocol(), Default: defaultRule(k)}
		var err error
		if s.Rules, err = compileRules(k, "rules", sr.GetRules()); err != nil {
			return nil, err
		}
		if s.Consumers, err = compileConsumers(k, sr.GetConsumers()); err != nil {
			return nil, err
		}
		t.services[k] = s
	}
	return t, nil
}

// Service returns the compiled routes of a service port, or nil.
func (t *Table) Service(service string, port uint32) *Service {
	if t == nil {
		return nil
	}
	return t.services[Key{Service: service, Port: port}]
}

// defaultRule routes everything to the service port itself.
func defaultRule(k Key) *Rule {
	return &Rule{Match: Match{path: pathMatch{kind: configv1alpha1.StringMatch_TYPE_PREFIX, value: "/"}},
		Filters: &filter.Chain{}, Backends: []*Backend{{Service: k.Service, Port: k.Port, Weight: 1, Filters: &filter.Chain{}}},
		totalWeight: 1}
}

// compileRules compiles the rules of service port k; field names them in
// errors.
func compileRules(k Key, field string, rules []*configv1alpha1.RouteRule) ([]*Rule, error) {
	var out []*Rule
	for j, r := range rules {
		cr, err := compileRule(r)
		if err != nil {
			name := r.GetRoute()
			if name == "" {
				name = fmt.Sprintf("%s[%d]", field, j)
			}
			return nil, fmt.Errorf("%s: %s: %w", k, name, err)
		}
		out = append(out, cr)
	}
	return out, nil
}

// compileConsumers compiles the consumer routes of service port k: one
// entry per namespace other than the service's, each with rules.
func compileConsumers(k Key, in []*configv1alpha1.ConsumerRoutes) (map[string][]*Rule, error) {
	if len(in) == 0 {
		return nil, nil
	}
	own, _, _ := strings.Cut(k.Service, "/")
	out := map[string][]*Rule{}
	for i, c := range in {
		ns := c.GetNamespace()
		switch {
		case ns == "" || strings.Contains(ns, "/"):
			return nil, fmt.Errorf("%s: consumers[%d]: namespace %q is not a namespace name", k, i, ns)
		case ns == own:
			return nil, fmt.Errorf("%s: consumers[%d]: namespace %s is the service's own (its routes are rules)", k, i, ns)
		case out[ns] != nil:
			return nil, fmt.Errorf("%s: consumers[%d]: namespace %s listed twice", k, i, ns)
		case len(c.GetRules()) == 0:
			return nil, fmt.Errorf("%s: consumers[%d]: namespace %s has no rules", k, i, ns)
		}
		rules, err := compileRules(k, fmt.Sprintf("consumers[%d].rules", i), c.GetRules())
		if err != nil {
			return nil, err
		}
		out[ns] = rules
	}
	return out, nil
}

func compileRule(r *configv1alpha1.RouteRule) (*Rule, error) {
	m, err := compileMatch(r.GetMatch())
	if err != nil {
		return nil, err
	}
	out := &Rule{Name: r.GetRoute(), Match: m, InvalidBackends: r.GetInvalidBackends()}
	if out.Filters, err = filter.Compile(r.GetFilters()); err != nil {
		return nil, err
	}
	if prefixRewrite(out.Filters) && m.path.kind != configv1alpha1.StringMatch_TYPE_PREFIX {
		return nil, fmt.Errorf("urlRewrite replacePrefixMatch needs a PathPrefix match")
	}
	if out.Filters.Redirect != nil && out.Filters.Redirect.Path != nil && !out.Filters.Redirect.Path.IsFull &&
		m.path.kind != configv1alpha1.StringMatch_TYPE_PREFIX {
		return nil, fmt.Errorf("requestRedirect replacePrefixMatch needs a PathPrefix match")
	}
	for i, b := range r.GetBackends() {
		cb, err := compileBackend(b)
		if err != nil {
			return nil, fmt.Errorf("backends[%d]: %w", i, err)
		}
		if prefixRewrite(cb.Filters) && m.path.kind != configv1alpha1.StringMatch_TYPE_PREFIX {
			return nil, fmt.Errorf("backends[%d]: urlRewrite replacePrefixMatch needs a PathPrefix match", i)
		}
		out.Backends = append(out.Backends, cb)
		out.totalWeight += uint64(cb.Weight)
	}
	if out.RequestTimeout, err = optDuration(r.GetRequestTimeout()); err != nil {
		return nil, fmt.Errorf("request timeout: %w", err)
	}
	if out.BackendRequestTimeout, err = optDuration(r.GetBackendRequestTimeout()); err != nil {
		return nil, fmt.Errorf("backend request timeout: %w", err)
	}
	if out.Retry, err = resilience.CompileRetry(r.GetRetry()); err != nil {
		return nil, err
	}
	return out, nil
}

func compileBackend(b *configv1alpha1.WeightedBackend) (*Backend, error) {
	out := &Backend{Service: b.GetService(), Port: b.GetPort(), Weight: b.GetWeight(), Limits: b.GetLimits()}
	if out.Service != "" && (out.Port == 0 || out.Port > 65535) {
		return nil, fmt.Errorf("%s: port %d is not within 1-65535", out.Service, out.Port)
	}
	var err error
	if out.Filters, err = filter.Compile(b.GetFilters()); err != nil {
		return nil, err
	}
	if out.Filters.Redirect != nil {
		return nil, fmt.Errorf("a backend cannot redirect")
	}
	if out.Outlier, err = resilience.CompileOutlier(b.GetOutlierDetection()); err != nil {
		return nil, fmt.Errorf("outlier detection: %w", err)
	}
	return out, nil
}

func prefixRewrite(c *filter.Chain) bool {
	return c.Rewrite != nil && c.Rewrite.Path != nil && !c.Rewrite.Path.IsFull
}

// optDuration converts an optional duration: nil and 0 are 0 (none).
func optDuration(d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, err
	}
	if v := d.AsDuration(); v >= 0 {
		return v, nil
	}
	return 0, fmt.Errorf("negative duration %v", d.AsDuration())
}

// compileRegex compiles a Gateway API RegularExpression: RE2, matched
// against the whole value.
func compileRegex(s string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + s + `)$`)
	if err != nil {
		return nil, fmt.Errorf("regular expression %q: %w", s, err)
	}
	return re, nil
}

// Keys returns the service ports of the table, in no particular order.
func (t *Table) Keys() []Key {
	if t == nil {
		return nil
	}
	out := make([]Key, 0, len(t.services))
	for k := range t.services {
		out = append(out, k)
	}
	return out
}

// With returns a table that has t's service ports plus those of extra
// that t lacks (t's win); t is not changed. A nil t gives a table of extra
// alone.
func (t *Table) With(extra []*Service) *Table {
	out := &Table{services: map[Key]*Service{}}
	if t != nil {
		out.Name, out.Identity = t.Name, t.Identity
		for k, s := range t.services {
			out.services[k] = s
		}
	}
	for _, s := range extra {
		if s != nil && out.services[s.Key] == nil {
			out.services[s.Key] = s
		}
	}
	return out
}
