package authz

import (
	"errors"
	"net/http"
	"net/netip"
	"testing"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

const gw = "demo/waypoint"

type (
	rule = configv1alpha1.AuthorizationRule
	src  = configv1alpha1.AuthorizationRule_Source
	op   = configv1alpha1.AuthorizationRule_Operation
	hdr  = configv1alpha1.AuthorizationRule_HeaderMatch
)

func policy(name string, action configv1alpha1.Authorization_Action, scope configv1alpha1.Authorization_Scope, targets []string, rules ...*rule) *configv1alpha1.Authorization {
	return &configv1alpha1.Authorization{Name: name, Namespace: "demo", Action: action, Scope: scope, Targets: targets, Rules: rules}
}

const (
	allow = configv1alpha1.Authorization_ACTION_ALLOW
	deny  = configv1alpha1.Authorization_ACTION_DENY
	svcS  = configv1alpha1.Authorization_SCOPE_SERVICE
	wpS   = configv1alpha1.Authorization_SCOPE_WAYPOINT
)

func peer(ns, sa string) identity.SPIFFEID {
	return identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa}
}

func req(p identity.SPIFFEID, method, path string, hdrs ...string) Request {
	h := http.Header{}
	for i := 0; i+1 < len(hdrs); i += 2 {
		h.Add(hdrs[i], hdrs[i+1])
	}
	return Request{Peer: p, Service: "demo/metrics", Port: 80, Method: method, Path: path, Header: h}
}

func compile(t *testing.T, ps ...*configv1alpha1.Authorization) *Policies {
	t.Helper()
	m := map[string]*configv1alpha1.Authorization{}
	for _, p := range ps {
		m[p.GetName()] = p
	}
	c, err := Compile(m)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestEvaluate(t *testing.T) {
	client, other := peer("demo", "client"), peer("other", "client")
	metricsGetOnly := policy("demo/metrics-get-only", allow, svcS, []string{"demo/metrics"}, &rule{
		From: []*src{{Principals: []string{client.String()}}},
		To:   []*op{{Methods: []string{"GET"}, Paths: []string{"/metrics", "/metrics/*"}}},
	})
	cases := []struct {
		name     string
		policies []*configv1alpha1.Authorization
		req      Request
		allow    bool
		policy   string
	}{
		{"no policy allows", nil, req(client, "POST", "/x"), true, ""},
		{"allowed GET", []*configv1alpha1.Authorization{metricsGetOnly}, req(client, "GET", "/metrics"), true, "demo/metrics-get-only"},
		{"prefix path", []*configv1alpha1.Authorization{metricsGetOnly}, req(client, "GET", "/metrics/cpu"), true, "demo/metrics-get-only"},
		{"prefix is not a bare string prefix", []*configv1alpha1.Authorization{metricsGetOnly}, req(client, "GET", "/metricsx"), false, "demo/metrics-get-only"},
		{"POST denied", []*configv1alpha1.Authorization{metricsGetOnly}, req(client, "POST", "/metrics"), false, "demo/metrics-get-only"},
		{"other principal denied", []*configv1alpha1.Authorization{metricsGetOnly}, req(other, "GET", "/metrics"), false, "demo/metrics-get-only"},
		{"unauthenticated denied", []*configv1alpha1.Authorization{metricsGetOnly}, req(identity.SPIFFEID{}, "GET", "/metrics"), false, "demo/metrics-get-only"},
		{"policy for another service does not apply", []*configv1alpha1.Authorization{
			policy("demo/a", allow, svcS, []string{"demo/other"}, &rule{}),
		}, req(other, "POST", "/"), true, ""},
		{"waypoint policy of another gateway does not apply", []*configv1alpha1.Authorization{
			policy("demo/a", deny, wpS, []string{"demo/other-waypoint"}, &rule{}),
		}, req(client, "GET", "/"), true, ""},
		{"deny wins over allow", []*configv1alpha1.Authorization{
			metricsGetOnly,
			policy("demo/no-debug", deny, wpS, []string{gw}, &rule{To: []*op{{Paths: []string{"/metrics/debug"}}}}),
		}, req(client, "GET", "/metrics/debug"), false, "demo/no-debug"},
		{"deny not matching leaves allow", []*configv1alpha1.Authorization{
			metricsGetOnly,
			policy("demo/no-debug", deny, wpS, []string{gw}, &rule{To: []*op{{Paths: []string{"/metrics/debug"}}}}),
		}, req(client, "GET", "/metrics"), true, "demo/metrics-get-only"},
		{"suffix path", []*configv1alpha1.Authorization{
			policy("demo/png", deny, svcS, []string{"demo/metrics"}, &rule{To: []*op{{Paths: []string{"*.png"}}}}),
		}, req(client, "GET", "/img/a.png"), false, "demo/png"},
		{"not paths", []*configv1alpha1.Authorization{
			policy("demo/all-but-health", deny, svcS, []string{"demo/metrics"}, &rule{To: []*op{{NotPaths: []string{"/healthz"}}}}),
		}, req(client, "GET", "/healthz"), true, ""},
		{"namespaces", []*configv1alpha1.Authorization{
			policy("demo/ns", allow, wpS, []string{gw}, &rule{From: []*src{{Namespaces: []string{"demo"}}}}),
		}, req(other, "GET", "/"), false, "demo/ns"},
		{"not namespaces", []*configv1alpha1.Authorization{
			policy("demo/ns", deny, wpS, []string{gw}, &rule{From: []*src{{NotNamespaces: []string{"demo"}}}}),
		}, req(other, "GET", "/"), false, "demo/ns"},
		{"principal wildcard", []*configv1alpha1.Authorization{
			policy("demo/p", allow, wpS, []string{gw}, &rule{From: []*src{{Principals: []string{"spiffe://cluster.local/ns/demo/*"}}}}),
		}, req(client, "GET", "/"), true, "demo/p"},
		{"not principals", []*configv1alpha1.Authorization{
			policy("demo/p", allow, wpS, []string{gw}, &rule{From: []*src{{Principals: []string{"*"}, NotPrincipals: []string{client.String()}}}}),
		}, req(client, "GET", "/"), false, "demo/p"},
		{"header exact", []*configv1alpha1.Authorization{
			policy("demo/h", allow, wpS, []string{gw}, &rule{To: []*op{{Headers: []*hdr{{Name: "x-team", Values: []string{"blue"}}}}}}),
		}, req(client, "GET", "/", "X-Team", "blue"), true, "demo/h"},
		{"header prefix", []*configv1alpha1.Authorization{
			policy("demo/h", allow, wpS, []string{gw}, &rule{To: []*op{{Headers: []*hdr{{Name: "X-Team", Values: []string{"bl*"}}}}}}),
		}, req(client, "GET", "/", "x-team", "blue"), true, "demo/h"},
		{"header missing", []*configv1alpha1.Authorization{
			policy("demo/h", allow, wpS, []string{gw}, &rule{To: []*op{{Headers: []*hdr{{Name: "x-team", Values: []string{"*"}}}}}}),
		}, req(client, "GET", "/"), false, "demo/h"},
		{"ports", []*configv1alpha1.Authorization{
			policy("demo/port", allow, svcS, []string{"demo/metrics"}, &rule{To: []*op{{Ports: []uint32{8080}}}}),
		}, req(client, "GET", "/"), false, "demo/port"},
		{"not ports", []*configv1alpha1.Authorization{
			policy("demo/port", deny, svcS, []string{"demo/metrics"}, &rule{To: []*op{{NotPorts: []uint32{80}}}}),
		}, req(client, "GET", "/"), true, ""},
		{"allow without rules denies", []*configv1alpha1.Authorization{
			policy("demo/nothing", allow, wpS, []string{gw}),
		}, req(client, "GET", "/"), false, "demo/nothing"},
		{"deny without rules matches nothing", []*configv1alpha1.Authorization{
			policy("demo/nothing", deny, wpS, []string{gw}),
		}, req(client, "GET", "/"), true, ""},
		{"empty rule matches everything", []*configv1alpha1.Authorization{
			policy("demo/all", deny, wpS, []string{gw}, &rule{}),
		}, req(client, "GET", "/"), false, "demo/all"},
		{"several allows: one matching is enough", []*configv1alpha1.Authorization{
			policy("demo/a", allow, wpS, []string{gw}, &rule{To: []*op{{Methods: []string{"PUT"}}}}),
			policy("demo/b", allow, svcS, []string{"demo/metrics"}, &rule{To: []*op{{Methods: []string{"GET"}}}}),
		}, req(client, "GET", "/"), true, "demo/b"},
		{"several allows, none matching: both named", []*configv1alpha1.Authorization{
			policy("demo/a", allow, wpS, []string{gw}, &rule{To: []*op{{Methods: []string{"PUT"}}}}),
			policy("demo/b", allow, svcS, []string{"demo/metrics"}, &rule{To: []*op{{Methods: []string{"GET"}}}}),
		}, req(client, "POST", "/"), false, "demo/a, demo/b"},
		{"ztunnel scopes ignored", []*configv1alpha1.Authorization{
			policy("demo/l4", deny, configv1alpha1.Authorization_SCOPE_NAMESPACE, nil, &rule{}),
		}, req(client, "GET", "/"), true, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := compile(t, c.policies...).Evaluate(gw, c.req)
			if d.Allow != c.allow || d.Policy != c.policy {
				t.Fatalf("got allow=%v policy=%q (%s), want allow=%v policy=%q", d.Allow, d.Policy, d.Reason, c.allow, c.policy)
			}
		})
	}
}

func TestL4Connections(t *testing.T) {
	client := peer("demo", "client")
	l4 := Request{Peer: client, Service: "demo/metrics", Port: 80, L4: true}
	for _, c := range []struct {
		name   string
		p      *configv1alpha1.Authorization
		allow  bool
		policy string
	}{
		{"ALLOW with HTTP fields never matches", policy("demo/get", allow, svcS, []string{"demo/metrics"}, &rule{To: []*op{{Methods: []string{"GET"}}}}), false, "demo/get"},
		{"ALLOW on principal and port matches", policy("demo/p", allow, svcS, []string{"demo/metrics"}, &rule{
			From: []*src{{Principals: []string{client.String()}}}, To: []*op{{Ports: []uint32{80}}}}), true, "demo/p"},
		{"DENY with HTTP fields matches on ports", policy("demo/d", deny, svcS, []string{"demo/metrics"}, &rule{To: []*op{{Paths: []string{"/x"}, Ports: []uint32{80}}}}), false, "demo/d"},
		{"DENY with HTTP fields on another port", policy("demo/d", deny, svcS, []string{"demo/metrics"}, &rule{To: []*op{{Paths: []string{"/x"}, Ports: []uint32{81}}}}), true, ""},
	} {
		d := compile(t, c.p).Evaluate(gw, l4)
		if d.Allow != c.allow || d.Policy != c.policy {
			t.Errorf("%s: allow=%v policy=%q, want %v %q", c.name, d.Allow, d.Policy, c.allow, c.policy)
		}
	}
}

func TestIPBlocks(t *testing.T) {
	client := peer("demo", "client")
	fromOffice := policy("demo/office", allow, svcS, []string{"demo/metrics"}, &rule{From: []*src{{IpBlocks: []string{"10.250.1.0/24", "fd00:1::/64"}}}})
	notScanner := policy("demo/scanner", deny, wpS, []string{gw}, &rule{From: []*src{{IpBlocks: []string{"10.250.0.0/16"}, NotIpBlocks: []string{"10.250.1.0/24"}}}})
	p := compile(t, fromOffice, notScanner)
	for _, c := range []struct {
		addr   string
		allow  bool
		policy string
	}{
		{"10.250.1.2", true, "demo/office"},
		{"fd00:1::9", true, "demo/office"},
		{"10.250.2.2", false, "demo/scanner"}, // in the DENY's block, not in its exception
		{"192.0.2.1", false, "demo/office"},   // no ALLOW matches
		{"", false, "demo/office"},            // unknown address: in no block
	} {
		r := req(client, "GET", "/")
		if c.addr != "" {
			r.Addr = netip.MustParseAddr(c.addr)
		}
		if d := p.Evaluate(gw, r); d.Allow != c.allow || d.Policy != c.policy {
			t.Errorf("client %q: allow=%v policy=%q, want %v %q", c.addr, d.Allow, d.Policy, c.allow, c.policy)
		}
		r.L4, r.Method, r.Path = true, "", ""
		if d := p.Evaluate(gw, r); d.Allow != c.allow {
			t.Errorf("TCP client %q: allow=%v, want %v", c.addr, d.Allow, c.allow)
		}
	}
}

func TestNilPoliciesAllow(t *testing.T) {
	var p *Policies
	if d := p.Evaluate(gw, req(peer("a", "b"), "GET", "/")); !d.Allow || p.Len() != 0 {
		t.Fatalf("nil policies: %+v", d)
	}
}

func TestCompileRejects(t *testing.T) {
	for name, a := range map[string]*configv1alpha1.Authorization{
		"unknown action":  policy("demo/x", configv1alpha1.Authorization_ACTION_UNSPECIFIED, wpS, []string{gw}),
		"no targets":      policy("demo/x", allow, svcS, nil),
		"header no name":  policy("demo/x", allow, wpS, []string{gw}, &rule{To: []*op{{Headers: []*hdr{{Values: []string{"a"}}}}}}),
		"header no value": policy("demo/x", allow, wpS, []string{gw}, &rule{To: []*op{{Headers: []*hdr{{Name: "a"}}}}}),
		"bad IP block":    policy("demo/x", allow, wpS, []string{gw}, &rule{From: []*src{{IpBlocks: []string{"10.0.0.0/8"}}, {NotIpBlocks: []string{"ten/8"}}}}),
	} {
		if _, err := Compile(map[string]*configv1alpha1.Authorization{"demo/x": a}); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", name, err)
		}
	}
	// The resource name stands in for a missing name field.
	p, err := Compile(map[string]*configv1alpha1.Authorization{"demo/named-by-key": {Action: deny, Scope: wpS, Targets: []string{gw}, Rules: []*rule{{}}}})
	if err != nil {
		t.Fatal(err)
	}
	if d := p.Evaluate(gw, req(peer("a", "b"), "GET", "/")); d.Allow || d.Policy != "demo/named-by-key" {
		t.Fatalf("decision %+v", d)
	}
}
