package route

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// Match is a compiled RouteMatch: all of its conditions must hold.
type Match struct {
	path    pathMatch
	headers []valueMatch
	query   []valueMatch
	method  string
}

type pathMatch struct {
	kind  configv1alpha1.StringMatch_Type
	value string
	re    *regexp.Regexp
}

type valueMatch struct {
	name  string // canonical header name, or the query parameter name
	kind  configv1alpha1.StringMatch_Type
	value string
	re    *regexp.Regexp
}

// PathPrefix returns the path prefix the rule matches on, for
// ReplacePrefixMatch, and whether the path match is a prefix match.
func (m *Match) PathPrefix() (string, bool) {
	return m.path.value, m.path.kind == configv1alpha1.StringMatch_TYPE_PREFIX
}

func compileMatch(in *configv1alpha1.RouteMatch) (Match, error) {
	m := Match{method: in.GetMethod(), path: pathMatch{kind: configv1alpha1.StringMatch_TYPE_PREFIX, value: "/"}}
	if p := in.GetPath(); p != nil {
		m.path = pathMatch{kind: p.GetType(), value: p.GetValue()}
		switch p.GetType() {
		case configv1alpha1.StringMatch_TYPE_UNSPECIFIED, configv1alpha1.StringMatch_TYPE_PREFIX:
			m.path.kind = configv1alpha1.StringMatch_TYPE_PREFIX
			if m.path.value == "" {
				m.path.value = "/"
			}
			if !strings.HasPrefix(m.path.value, "/") {
				return m, fmt.Errorf("path prefix %q does not start with /", m.path.value)
			}
		case configv1alpha1.StringMatch_TYPE_EXACT:
			if !strings.HasPrefix(m.path.value, "/") {
				return m, fmt.Errorf("exact path %q does not start with /", m.path.value)
			}
		case configv1alpha1.StringMatch_TYPE_REGEX:
			re, err := compileRegex(m.path.value)
			if err != nil {
				return m, fmt.Errorf("path: %w", err)
			}
			m.path.re = re
		default:
			return m, fmt.Errorf("path match type %v is not supported", p.GetType())
		}
	}
	// Gateway API: of entries with equivalent names, only the first counts.
	seen := map[string]bool{}
	for _, h := range in.GetHeaders() {
		name := http.CanonicalHeaderKey(h.GetName())
		if h.GetName() == "" {
			return m, fmt.Errorf("header match without a name")
		}
		vm, err := compileValue(name, h.GetValue())
		if err != nil {
			return m, fmt.Errorf("header %s: %w", name, err)
		}
		if !seen[name] {
			seen[name] = true
			m.headers = append(m.headers, vm)
		}
	}
	seen = map[string]bool{}
	for _, q := range in.GetQueryParams() {
		if q.GetName() == "" {
			return m, fmt.Errorf("query parameter match without a name")
		}
		vm, err := compileValue(q.GetName(), q.GetValue())
		if err != nil {
			return m, fmt.Errorf("query parameter %s: %w", q.GetName(), err)
		}
		if !seen[q.GetName()] {
			seen[q.GetName()] = true
			m.query = append(m.query, vm)
		}
	}
	return m, nil
}

func compileValue(name string, sm *configv1alpha1.StringMatch) (valueMatch, error) {
	vm := valueMatch{name: name, kind: sm.GetType(), value: sm.GetValue()}
	switch vm.kind {
	case configv1alpha1.StringMatch_TYPE_UNSPECIFIED:
		vm.kind = configv1alpha1.StringMatch_TYPE_EXACT
	case configv1alpha1.StringMatch_TYPE_EXACT, configv1alpha1.StringMatch_TYPE_PREFIX:
	case configv1alpha1.StringMatch_TYPE_REGEX:
		re, err := compileRegex(vm.value)
		if err != nil {
			return vm, err
		}
		vm.re = re
	default:
		return vm, fmt.Errorf("match type %v is not supported", vm.kind)
	}
	return vm, nil
}

func (v *valueMatch) matches(s string) bool {
	switch v.kind {
	case configv1alpha1.StringMatch_TYPE_EXACT:
		return s == v.value
	case configv1alpha1.StringMatch_TYPE_PREFIX:
		return strings.HasPrefix(s, v.value)
	case configv1alpha1.StringMatch_TYPE_REGEX:
		return v.re.MatchString(s)
	}
	return false
}

// Matches reports whether r fits every condition.
func (m *Match) Matches(r *http.Request) bool {
	if m.method != "" && r.Method != m.method {
		return false
	}
	if !m.matchPath(requestPath(r)) {
		return false
	}
	for i := range m.headers {
		h := &m.headers[i]
		vals, ok := r.Header[h.name]
		if h.name == "Host" {
			vals, ok = []string{r.Host}, r.Host != ""
		}
		// A repeated header is matched as one comma-separated value, as RFC
		// 9110 section 5.3 combines field lines.
		if !ok || !h.matches(strings.Join(vals, ",")) {
			return false
		}
	}
	if len(m.query) > 0 {
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil && q == nil {
			return false
		}
		for i := range m.query {
			v := &m.query[i]
			vals, ok := q[v.name]
			// A repeated parameter: the first value counts, as in Envoy.
			if !ok || !v.matches(vals[0]) {
				return false
			}
		}
	}
	return true
}

func (m *Match) matchPath(path string) bool {
	switch m.path.kind {
	case configv1alpha1.StringMatch_TYPE_EXACT:
		return path == m.path.value
	case configv1alpha1.StringMatch_TYPE_REGEX:
		return m.path.re.MatchString(path)
	}
	return prefixMatch(path, m.path.value)
}

// prefixMatch is Gateway API's PathPrefix: element by element, a trailing
// "/" in the prefix ignored: "/foo" and "/foo/" match "/foo", "/foo/" and
// "/foo/bar", not "/foobar".
func prefixMatch(path, prefix string) bool {
	p := strings.TrimSuffix(prefix, "/")
	if p == "" {
		return true
	}
	return path == p || strings.HasPrefix(path, p) && path[len(p)] == '/'
}

// requestPath is the path matched on: the decoded path, "/" when empty.
func requestPath(r *http.Request) string {
	if r.URL == nil || r.URL.Path == "" {
		return "/"
	}
	return r.URL.Path
}

// Match finds the rule for a request sent to service:port by a client of
// unknown namespace: MatchFrom with none, so only producer routes apply.
func (t *Table) Match(r *http.Request, service string, port uint32) (*Rule, bool) {
	return t.MatchFrom(r, service, port, "")
}

// RulesFor returns the rules for a request from a client in namespace ns:
// ns's consumer routes when it has any (GAMMA: they take precedence over
// the producer routes, which then do not apply at all), else the producer
// rules. An empty ns (client unknown) gets the producer rules.
func (s *Service) RulesFor(ns string) []*Rule {
	if c := s.Consumers[ns]; ns != "" && len(c) > 0 {
		return c
	}
	return s.Rules
}

// MatchFrom finds the rule for a request sent to service:port by a client
// in namespace clientNS (from its verified identity; empty when unknown):
// the first matching rule of RulesFor, or the default route when there is
// none. It returns false when the service port is unknown or no rule
// matches (the proxy answers 404 with flag "NR").
func (t *Table) MatchFrom(r *http.Request, service string, port uint32, clientNS string) (*Rule, bool) {
	s := t.Service(service, port)
	if s == nil {
		return nil, false
	}
	rules := s.RulesFor(clientNS)
	if len(rules) == 0 {
		return s.Default, true
	}
	for _, rule := range rules {
		if rule.Match.Matches(r) {
			return rule, true
		}
	}
	return nil, false
}
