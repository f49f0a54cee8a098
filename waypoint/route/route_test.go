package route

import (
	"math"
	"math/rand/v2"
	"net/http/httptest"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/durationpb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

const (
	exact  = configv1alpha1.StringMatch_TYPE_EXACT
	prefix = configv1alpha1.StringMatch_TYPE_PREFIX
	regex  = configv1alpha1.StringMatch_TYPE_REGEX
)

func sm(t configv1alpha1.StringMatch_Type, v string) *configv1alpha1.StringMatch {
	return &configv1alpha1.StringMatch{Type: t, Value: v}
}

func rule(name string, m *configv1alpha1.RouteMatch, backends ...*configv1alpha1.WeightedBackend) *configv1alpha1.RouteRule {
	if len(backends) == 0 {
		backends = []*configv1alpha1.WeightedBackend{{Service: "ns/" + name, Port: 80, Weight: 1}}
	}
	return &configv1alpha1.RouteRule{Route: name, Match: m, Backends: backends}
}

func table(t testing.TB, rules ...*configv1alpha1.RouteRule) *Table {
	t.Helper()
	tb, err := Compile(&configv1alpha1.WaypointConfig{Name: "ns/wp", Services: []*configv1alpha1.ServiceRoutes{
		{Service: "ns/svc", Port: 80, Protocol: configv1alpha1.ServiceRoutes_PROTOCOL_HTTP, Rules: rules},
		{Service: "ns/plain", Port: 8080},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func TestMatchTable(t *testing.T) {
	// Rules in the order the controller sorts them: exact, regex, longer
	// prefix, method, more headers, more query parameters.
	tb := table(t,
		rule("exact", &configv1alpha1.RouteMatch{Path: sm(exact, "/login")}),
		rule("regex", &configv1alpha1.RouteMatch{Path: sm(regex, `/items/[0-9]+`)}),
		rule("api-v2", &configv1alpha1.RouteMatch{Path: sm(prefix, "/api/v2/")}),
		rule("api-post", &configv1alpha1.RouteMatch{Path: sm(prefix, "/api"), Method: "POST"}),
		rule("api-canary", &configv1alpha1.RouteMatch{Path: sm(prefix, "/api"), Headers: []*configv1alpha1.HeaderMatch{
			{Name: "x-canary", Value: sm(exact, "yes")}, {Name: "X-Env", Value: sm(regex, "dev|test")}}}),
		rule("api-query", &configv1alpha1.RouteMatch{Path: sm(prefix, "/api"), QueryParams: []*configv1alpha1.HeaderMatch{
			{Name: "version", Value: sm(exact, "2")}, {Name: "debug", Value: sm(regex, "on|1")}}}),
		rule("api", &configv1alpha1.RouteMatch{Path: sm(prefix, "/api")}),
		rule("host", &configv1alpha1.RouteMatch{Path: sm(prefix, "/"), Headers: []*configv1alpha1.HeaderMatch{{Name: "host", Value: sm(exact, "special")}}}),
		rule("root", nil),
	)
	for _, c := range []struct {
		method, url string
		headers     map[string][]string
		want        string
	}{
		{"GET", "http://svc/login", nil, "exact"},
		{"GET", "http://svc/login/", nil, "root"},
		{"GET", "http://svc/items/42", nil, "regex"},
		{"GET", "http://svc/items/42/x", nil, "root"}, // regex is a full match
		{"GET", "http://svc/items/x42", nil, "root"},
		{"GET", "http://svc/api/v2", nil, "api-v2"}, // trailing slash of the prefix ignored
		{"GET", "http://svc/api/v2/x", nil, "api-v2"},
		{"GET", "http://svc/api/v2x", nil, "api"},
		{"POST", "http://svc/api/v2", nil, "api-v2"},
		{"POST", "http://svc/api/x", nil, "api-post"},
		{"GET", "http://svc/api", map[string][]string{"X-Canary": {"yes"}, "X-Env": {"dev"}}, "api-canary"},
		{"GET", "http://svc/api", map[string][]string{"x-canary": {"yes"}, "x-env": {"test"}}, "api-canary"},
		{"GET", "http://svc/api", map[string][]string{"X-Canary": {"yes"}, "X-Env": {"prod"}}, "api"},
		{"GET", "http://svc/api", map[string][]string{"X-Canary": {"yes"}}, "api"},
		{"GET", "http://svc/api", map[string][]string{"X-Canary": {"yes", "no"}, "X-Env": {"dev"}}, "api"}, // "yes,no"
		{"GET", "http://svc/api/q?version=2&debug=1", nil, "api-query"},
		{"GET", "http://svc/api/q?version=2&debug=off", nil, "api"},
		{"GET", "http://svc/api/q?version=2&version=3&debug=on", nil, "api-query"}, // first value counts
		{"GET", "http://svc/api/q?Version=2&debug=on", nil, "api"},                 // names are case-sensitive
		{"GET", "http://svc/apix", nil, "root"},
		{"GET", "http://special/anything", nil, "host"},
		{"GET", "http://svc/", nil, "root"},
	} {
		r := httptest.NewRequest(c.method, c.url, nil)
		for k, vs := range c.headers {
			for _, v := range vs {
				r.Header.Add(k, v) // as the server's parser does: canonical names
			}
		}
		got, ok := tb.Match(r, "ns/svc", 80)
		if !ok || got.Name != c.want {
			name := "<none>"
			if ok {
				name = got.Name
			}
			t.Errorf("%s %s %v: got %s, want %s", c.method, c.url, c.headers, name, c.want)
		}
	}
}

func TestPrefixBoundaries(t *testing.T) {
	for _, c := range []struct {
		prefix, path string
		want         bool
	}{
		{"/foo", "/foo", true}, {"/foo", "/foo/", true}, {"/foo", "/foo/bar", true}, {"/foo", "/foobar", false},
		{"/foo/", "/foo", true}, {"/foo/", "/foo/bar", true}, {"/foo/", "/foobar", false},
		{"/", "/anything", true}, {"/", "/", true}, {"/foo/bar", "/foo", false}, {"/foo", "/fo", false},
	} {
		if got := prefixMatch(c.path, c.prefix); got != c.want {
			t.Errorf("prefix %s path %s: %v", c.prefix, c.path, got)
		}
	}
}

func TestNoMatchAndDefault(t *testing.T) {
	tb := table(t, rule("only", &configv1alpha1.RouteMatch{Path: sm(exact, "/only")}))
	if _, ok := tb.Match(httptest.NewRequest("GET", "/other", nil), "ns/svc", 80); ok {
		t.Error("matched without a fitting rule")
	}
	if _, ok := tb.Match(httptest.NewRequest("GET", "/", nil), "ns/unknown", 80); ok {
		t.Error("matched an unknown service")
	}
	r, ok := tb.Match(httptest.NewRequest("GET", "/x", nil), "ns/plain", 8080)
	if !ok || r.Name != "" || len(r.Backends) != 1 || r.Backends[0].Service != "ns/plain" || r.Backends[0].Port != 8080 {
		t.Errorf("default route: %+v %v", r, ok)
	}
	var nilTable *Table
	if _, ok := nilTable.Match(httptest.NewRequest("GET", "/", nil), "ns/svc", 80); ok {
		t.Error("nil table matched")
	}
}

func TestCompileErrors(t *testing.T) {
	bad := map[string]*configv1alpha1.WaypointConfig{
		"no service": {Services: []*configv1alpha1.ServiceRoutes{{Port: 80}}},
		"no port":    {Services: []*configv1alpha1.ServiceRoutes{{Service: "ns/a"}}},
		"twice":      {Services: []*configv1alpha1.ServiceRoutes{{Service: "ns/a", Port: 1}, {Service: "ns/a", Port: 1}}},
	}
	add := func(name string, r *configv1alpha1.RouteRule) {
		bad[name] = &configv1alpha1.WaypointConfig{Services: []*configv1alpha1.ServiceRoutes{{Service: "ns/a", Port: 80,
			Rules: []*configv1alpha1.RouteRule{r}}}}
	}
	add("path regex", rule("r", &configv1alpha1.RouteMatch{Path: sm(regex, "(")}))
	add("header regex", rule("r", &configv1alpha1.RouteMatch{Headers: []*configv1alpha1.HeaderMatch{{Name: "a", Value: sm(regex, "[")}}}))
	add("query regex", rule("r", &configv1alpha1.RouteMatch{QueryParams: []*configv1alpha1.HeaderMatch{{Name: "a", Value: sm(regex, "*")}}}))
	add("header name", rule("r", &configv1alpha1.RouteMatch{Headers: []*configv1alpha1.HeaderMatch{{Value: sm(exact, "x")}}}))
	add("relative path", rule("r", &configv1alpha1.RouteMatch{Path: sm(prefix, "api")}))
	add("backend port", rule("r", nil, &configv1alpha1.WeightedBackend{Service: "ns/b", Weight: 1}))
	add("timeout", &configv1alpha1.RouteRule{Route: "r", RequestTimeout: durationpb.New(-1)})
	add("retry", &configv1alpha1.RouteRule{Route: "r", Retry: &configv1alpha1.Retry{Codes: []uint32{7}}})
	add("filter", &configv1alpha1.RouteRule{Route: "r", Filters: []*configv1alpha1.Filter{{}}})
	add("prefix rewrite on exact", &configv1alpha1.RouteRule{Route: "r", Match: &configv1alpha1.RouteMatch{Path: sm(exact, "/a")},
		Filters: []*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_UrlRewrite{UrlRewrite: &configv1alpha1.Rewrite{
			Path: &configv1alpha1.PathModifier{Kind: &configv1alpha1.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: "/b"}}}}}}})
	add("outlier", rule("r", nil, &configv1alpha1.WeightedBackend{Service: "ns/b", Port: 80, Weight: 1,
		OutlierDetection: &configv1alpha1.OutlierDetection{MaxEjectionPercent: 200}}))
	for name, cfg := range bad {
		if _, err := Compile(cfg); err == nil {
			t.Errorf("%s: no error", name)
		} else if name == "path regex" && !strings.Contains(err.Error(), "ns/a:80: r:") {
			t.Errorf("error does not name the rule: %v", err)
		}
	}
}

func TestWeightedSplit(t *testing.T) {
	tb := table(t, rule("split", nil,
		&configv1alpha1.WeightedBackend{Service: "ns/v1", Port: 80, Weight: 90},
		&configv1alpha1.WeightedBackend{Service: "ns/zero", Port: 80, Weight: 0},
		&configv1alpha1.WeightedBackend{Service: "ns/v2", Port: 80, Weight: 10}))
	r, _ := tb.Match(httptest.NewRequest("GET", "/", nil), "ns/svc", 80)
	rng := rand.New(rand.NewPCG(42, 7))
	const n = 2000
	counts := map[string]int{}
	for range n {
		counts[r.Pick(rng.Float64).Service]++
	}
	// Binomial(n, 0.1): sd = sqrt(2000*0.1*0.9) = 13.4; allow 4 sd.
	sd := math.Sqrt(n * 0.1 * 0.9)
	if d := math.Abs(float64(counts["ns/v2"]) - n*0.1); d > 4*sd || counts["ns/zero"] != 0 || counts["ns/v1"]+counts["ns/v2"] != n {
		t.Errorf("split %v", counts)
	}
	// The edges of the draw stay within range.
	if b := r.Pick(func() float64 { return 0 }); b.Service != "ns/v1" {
		t.Errorf("draw 0: %s", b.Service)
	}
	if b := r.Pick(func() float64 { return 0.9999999 }); b.Service != "ns/v2" {
		t.Errorf("draw ~1: %s", b.Service)
	}
}

func TestPickUnresolvedAndInvalid(t *testing.T) {
	tb := table(t,
		rule("half", &configv1alpha1.RouteMatch{Path: sm(exact, "/half")},
			&configv1alpha1.WeightedBackend{Service: "ns/ok", Port: 80, Weight: 1},
			&configv1alpha1.WeightedBackend{Weight: 1}),
		&configv1alpha1.RouteRule{Route: "invalid", Match: &configv1alpha1.RouteMatch{Path: sm(exact, "/invalid")}, InvalidBackends: true},
		rule("zero", nil, &configv1alpha1.WeightedBackend{Service: "ns/z", Port: 80}),
	)
	r, _ := tb.Match(httptest.NewRequest("GET", "/half", nil), "ns/svc", 80)
	if b := r.Pick(func() float64 { return 0.75 }); !b.Unresolved() {
		t.Errorf("second half: %+v", b)
	}
	if b := r.Pick(func() float64 { return 0.25 }); b.Unresolved() || b.Key().String() != "ns/ok:80" {
		t.Errorf("first half: %+v", b)
	}
	r, _ = tb.Match(httptest.NewRequest("GET", "/invalid", nil), "ns/svc", 80)
	if b := r.Pick(nil); b != nil {
		t.Errorf("invalid backends picked %+v", b)
	}
	r, _ = tb.Match(httptest.NewRequest("GET", "/z", nil), "ns/svc", 80)
	if b := r.Pick(nil); b != nil {
		t.Errorf("zero weight picked %+v", b)
	}
}

func FuzzMatch(f *testing.F) {
	tb := table(f,
		rule("exact", &configv1alpha1.RouteMatch{Path: sm(exact, "/login")}),
		rule("regex", &configv1alpha1.RouteMatch{Path: sm(regex, `/items/[0-9]+`)}),
		rule("hdr", &configv1alpha1.RouteMatch{Path: sm(prefix, "/api/"), Method: "GET", Headers: []*configv1alpha1.HeaderMatch{
			{Name: "x-a", Value: sm(regex, "a.*")}}, QueryParams: []*configv1alpha1.HeaderMatch{{Name: "q", Value: sm(exact, "1")}}}),
	)
	f.Add("/api/x?q=1", "x-a", "abc", "GET")
	f.Add("/login", "", "", "POST")
	f.Add("/%zz?%%", "x-a", "\x00", "")
	f.Add("", "Host", "h", "GET")
	f.Fuzz(func(t *testing.T, target, name, value, method string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.Method = method
		r.URL.RawQuery = ""
		if i := strings.IndexByte(target, '?'); i >= 0 {
			r.URL.Path, r.URL.RawQuery = target[:i], target[i+1:]
		} else {
			r.URL.Path = target
		}
		if name != "" {
			r.Header[name] = []string{value}
		}
		rl, ok := tb.Match(r, "ns/svc", 80)
		if ok {
			_ = rl.Pick(nil)
		}
	})
}

func TestTableWith(t *testing.T) {
	a, err := Compile(&configv1alpha1.WaypointConfig{Name: "ns/wp", Services: []*configv1alpha1.ServiceRoutes{{Service: "ns/a", Port: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Compile(&configv1alpha1.WaypointConfig{Services: []*configv1alpha1.ServiceRoutes{
		{Service: "ns/a", Port: 80, Protocol: configv1alpha1.ServiceRoutes_PROTOCOL_TCP}, {Service: "ns/b", Port: 81}}})
	if err != nil {
		t.Fatal(err)
	}
	m := a.With([]*Service{b.Service("ns/a", 80), b.Service("ns/b", 81), nil})
	if m.Name != "ns/wp" || len(m.Keys()) != 2 || m.Service("ns/a", 80) != a.Service("ns/a", 80) || m.Service("ns/b", 81) != b.Service("ns/b", 81) {
		t.Fatalf("merged table %+v", m)
	}
	if len(a.Keys()) != 1 {
		t.Fatal("With changed its receiver")
	}
	var none *Table
	if n := none.With([]*Service{b.Service("ns/b", 81)}); n.Service("ns/b", 81) == nil || len(n.Keys()) != 1 {
		t.Fatalf("nil table With: %v", n.Keys())
	}
}

// consumerTable has producer rules for ns/svc:80 (/p) and consumer rules
// of namespaces a (/a exact, then /) and b (/b only).
func consumerTable(t testing.TB) *Table {
	t.Helper()
	tb, err := Compile(&configv1alpha1.WaypointConfig{Name: "ns/wp", Services: []*configv1alpha1.ServiceRoutes{
		{Service: "ns/svc", Port: 80, Protocol: configv1alpha1.ServiceRoutes_PROTOCOL_HTTP,
			Rules: []*configv1alpha1.RouteRule{rule("producer", &configv1alpha1.RouteMatch{Path: sm(prefix, "/p")})},
			Consumers: []*configv1alpha1.ConsumerRoutes{
				{Namespace: "a", Rules: []*configv1alpha1.RouteRule{
					rule("a-exact", &configv1alpha1.RouteMatch{Path: sm(exact, "/a")}),
					rule("a-all", &configv1alpha1.RouteMatch{Path: sm(prefix, "/")}),
				}},
				{Namespace: "b", Rules: []*configv1alpha1.RouteRule{rule("b-only", &configv1alpha1.RouteMatch{Path: sm(prefix, "/b")})}},
			}},
		{Service: "ns/plain", Port: 8080, Protocol: configv1alpha1.ServiceRoutes_PROTOCOL_HTTP,
			Consumers: []*configv1alpha1.ConsumerRoutes{{Namespace: "a", Rules: []*configv1alpha1.RouteRule{
				rule("plain-a", &configv1alpha1.RouteMatch{Path: sm(prefix, "/")})}}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// TestConsumerPrecedence: a namespace's consumer rules replace the
// producer rules for its clients only; other namespaces, the service's own
// and unknown clients get the producer rules (or the default route).
func TestConsumerPrecedence(t *testing.T) {
	tb := consumerTable(t)
	for _, c := range []struct {
		ns, svc, path string
		port          uint32
		want          string // rule name; "-" no match; "" default route
	}{
		{"a", "ns/svc", "/a", 80, "a-exact"},
		{"a", "ns/svc", "/p", 80, "a-all"}, // the producer rule does not apply
		{"a", "ns/svc", "/x", 80, "a-all"},
		{"b", "ns/svc", "/b/1", 80, "b-only"},
		{"b", "ns/svc", "/p", 80, "-"}, // b's rules replace, no fallback to the producer
		{"ns", "ns/svc", "/p", 80, "producer"},
		{"ns", "ns/svc", "/a", 80, "-"},
		{"c", "ns/svc", "/p", 80, "producer"},
		{"c", "ns/svc", "/a", 80, "-"},
		{"", "ns/svc", "/p", 80, "producer"},
		{"", "ns/svc", "/x", 80, "-"},
		{"a", "ns/plain", "/x", 8080, "plain-a"},
		{"c", "ns/plain", "/x", 8080, ""}, // no producer rules: the default route
		{"", "ns/plain", "/x", 8080, ""},
	} {
		r, ok := tb.MatchFrom(httptest.NewRequest("GET", c.path, nil), c.svc, c.port, c.ns)
		got := "-"
		if ok {
			got = r.Name
		}
		if got != c.want {
			t.Errorf("from %q %s:%d %s: rule %q, want %q", c.ns, c.svc, c.port, c.path, got, c.want)
		}
	}
	// Match is MatchFrom with an unknown client.
	if r, ok := tb.Match(httptest.NewRequest("GET", "/p", nil), "ns/svc", 80); !ok || r.Name != "producer" {
		t.Errorf("Match: %+v %v", r, ok)
	}
	if r, ok := tb.Match(httptest.NewRequest("GET", "/a", nil), "ns/svc", 80); ok {
		t.Errorf("Match applied a consumer rule: %s", r.Name)
	}
	if got := len(tb.Service("ns/svc", 80).RulesFor("a")); got != 2 {
		t.Errorf("RulesFor(a): %d rules, want 2", got)
	}
}

func TestConsumerCompileErrors(t *testing.T) {
	ok := []*configv1alpha1.RouteRule{rule("r", nil)}
	for name, c := range map[string]struct {
		consumers []*configv1alpha1.ConsumerRoutes
		want      string
	}{
		"no namespace":  {[]*configv1alpha1.ConsumerRoutes{{Rules: ok}}, "is not a namespace name"},
		"slash":         {[]*configv1alpha1.ConsumerRoutes{{Namespace: "a/b", Rules: ok}}, "is not a namespace name"},
		"own namespace": {[]*configv1alpha1.ConsumerRoutes{{Namespace: "ns", Rules: ok}}, "the service's own"},
		"twice":         {[]*configv1alpha1.ConsumerRoutes{{Namespace: "a", Rules: ok}, {Namespace: "a", Rules: ok}}, "listed twice"},
		"no rules":      {[]*configv1alpha1.ConsumerRoutes{{Namespace: "a"}}, "has no rules"},
		"bad rule": {[]*configv1alpha1.ConsumerRoutes{{Namespace: "a", Rules: []*configv1alpha1.RouteRule{
			rule("bad", &configv1alpha1.RouteMatch{Path: sm(regex, "(")})}}}, "ns/svc:80: bad:"},
	} {
		_, err := Compile(&configv1alpha1.WaypointConfig{Services: []*configv1alpha1.ServiceRoutes{{Service: "ns/svc", Port: 80,
			Protocol: configv1alpha1.ServiceRoutes_PROTOCOL_HTTP, Consumers: c.consumers}}})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error with %q", name, err, c.want)
		}
	}
}
