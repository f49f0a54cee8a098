package server

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
	"google.golang.org/protobuf/proto"
)

// results collects the proxy's Results.
type results struct {
	mu   sync.Mutex
	list []proxy.Result
}

func (rs *results) add(_ *http.Request, r *proxy.Result) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.list = append(rs.list, *r)
}

// nth waits for the n-th Result (from 1): OnResult runs just after the
// answer is written, so the client may see the answer first.
func (rs *results) nth(t *testing.T, n int) proxy.Result {
	t.Helper()
	var r proxy.Result
	eventually(t, fmt.Sprintf("result %d", n), func() bool {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		if len(rs.list) < n {
			return false
		}
		r = rs.list[n-1]
		return true
	})
	return r
}

func do(t *testing.T, c *http.Client, method, path string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://echo.default.svc"+path, strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	return resp, string(body)
}

// metricsGetOnly is "the client may only GET /metrics on echo".
func metricsGetOnly() *configv1alpha1.Authorization {
	return &configv1alpha1.Authorization{
		Name: "default/metrics-get-only", Namespace: "default",
		Scope: configv1alpha1.Authorization_SCOPE_SERVICE, Action: configv1alpha1.Authorization_ACTION_ALLOW,
		Targets: []string{"default/echo"},
		Rules: []*configv1alpha1.AuthorizationRule{{
			From: []*configv1alpha1.AuthorizationRule_Source{{Principals: []string{sa("client").String()}}},
			To:   []*configv1alpha1.AuthorizationRule_Operation{{Methods: []string{"GET"}, Paths: []string{"/metrics", "/metrics/*"}}},
		}},
	}
}

func TestAuthorizationOverHBONE(t *testing.T) {
	rs := &results{}
	e := setup(t, func(c *Config) { c.Gateway = "default/waypoint"; c.OnResult = rs.add })
	noSecrets := &configv1alpha1.Authorization{
		Name: "default/no-secrets", Namespace: "default",
		Scope: configv1alpha1.Authorization_SCOPE_WAYPOINT, Action: configv1alpha1.Authorization_ACTION_DENY,
		Targets: []string{"default/waypoint"},
		Rules: []*configv1alpha1.AuthorizationRule{{
			To: []*configv1alpha1.AuthorizationRule_Operation{{Paths: []string{"/metrics/secret"}}},
		}},
	}
	if err := e.store.HandleAuthorizations(resources(t, map[string]proto.Message{
		"default/metrics-get-only": metricsGetOnly(), "default/no-secrets": noSecrets,
	})); err != nil {
		t.Fatal(err)
	}
	client := e.httpClient("10.96.0.10:80", false)
	defer client.CloseIdleConnections()
	other := e.clientAs(t, sa("other"), "10.96.0.10:80", http.Header{"Forwarded": {"for=10.1.2.3"}})
	n := 0

	for _, c := range []struct {
		name         string
		c            *http.Client
		method, path string
		code         int
		body         string
		principal    string
		addr         string
	}{
		{"allowed GET", client, "GET", "/metrics", 200, "", sa("client").String(), "127.0.0.1"},
		{"allowed GET below", client, "GET", "/metrics/cpu", 200, "", sa("client").String(), "127.0.0.1"},
		{"POST denied", client, "POST", "/metrics", 403, "RBAC: access denied by default/metrics-get-only\n", sa("client").String(), "127.0.0.1"},
		{"other path denied", client, "GET", "/admin", 403, "RBAC: access denied by default/metrics-get-only\n", sa("client").String(), "127.0.0.1"},
		{"other principal denied", other, "GET", "/metrics", 403, "RBAC: access denied by default/metrics-get-only\n", sa("other").String(), "10.1.2.3"},
		{"deny wins", client, "GET", "/metrics/secret", 403, "RBAC: access denied by default/no-secrets\n", sa("client").String(), "127.0.0.1"},
		{"dot segments resolved before policy", client, "GET", "/metrics/cpu/../secret", 403, "RBAC: access denied by default/no-secrets\n", sa("client").String(), "127.0.0.1"},
	} {
		n++
		t.Run(c.name, func(t *testing.T) {
			resp, body := do(t, c.c, c.method, c.path, nil)
			if resp.StatusCode != c.code {
				t.Fatalf("status %d (%q), want %d", resp.StatusCode, body, c.code)
			}
			if c.code == 403 && (body != c.body || resp.Header.Get("X-Backend") != "") {
				t.Fatalf("body %q from %q, want %q from the waypoint", body, resp.Header.Get("X-Backend"), c.body)
			}
			res := rs.nth(t, n)
			if res.Source.Identity.String() != c.principal || res.Source.Address != netip.MustParseAddr(c.addr) {
				t.Fatalf("result source %s at %v, want %s at %s", res.Source.Identity, res.Source.Address, c.principal, c.addr)
			}
			if !res.Authz.Evaluated || res.Authz.Allow != (c.code == 200) {
				t.Fatalf("authz %+v", res.Authz)
			}
			if denied := res.FlagString() == proxy.FlagDenied; denied != (c.code == 403) {
				t.Fatalf("flags %s", res.FlagString())
			}
		})
	}

	// Removing the policies allows everything again.
	if err := e.store.HandleAuthorizations(nil); err != nil {
		t.Fatal(err)
	}
	if resp, _ := do(t, other, "POST", "/anything", nil); resp.StatusCode != 200 {
		t.Fatalf("no policy: status %d", resp.StatusCode)
	}
	// An invalid update is rejected and the previous (empty) set stays.
	bad := metricsGetOnly()
	bad.Targets = nil
	if err := e.store.HandleAuthorizations(resources(t, map[string]proto.Message{"x": bad})); err == nil {
		t.Fatal("policy without targets accepted")
	}
	if resp, _ := do(t, other, "GET", "/metrics", nil); resp.StatusCode != 200 {
		t.Fatalf("after a rejected update: status %d", resp.StatusCode)
	}
}

// ipBlocks match the client's address: the one the sending ztunnel names
// in the tunnel's Forwarded header, else the tunnel's source.
func TestAuthorizationByAddress(t *testing.T) {
	e := setup(t, func(c *Config) { c.Gateway = "default/waypoint" })
	fromOffice := &configv1alpha1.Authorization{
		Name: "default/from-office", Namespace: "default",
		Scope: configv1alpha1.Authorization_SCOPE_SERVICE, Action: configv1alpha1.Authorization_ACTION_ALLOW,
		Targets: []string{"default/echo"},
		Rules: []*configv1alpha1.AuthorizationRule{{
			From: []*configv1alpha1.AuthorizationRule_Source{{IpBlocks: []string{"10.1.2.0/24"}, NotIpBlocks: []string{"10.1.2.66/32"}}},
		}},
	}
	if err := e.store.HandleAuthorizations(resources(t, map[string]proto.Message{"default/from-office": fromOffice})); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		hdr  http.Header
		code int
	}{
		{"named client in the block", http.Header{"Forwarded": {"for=10.1.2.3"}}, 200},
		{"named client excepted", http.Header{"Forwarded": {"for=10.1.2.66"}}, 403},
		{"named client outside", http.Header{"Forwarded": {"for=10.9.9.9"}}, 403},
		{"tunnel's source outside", nil, 403}, // 127.0.0.1
	} {
		t.Run(c.name, func(t *testing.T) {
			cl := e.clientAs(t, sa("client"), "10.96.0.10:80", c.hdr)
			defer cl.CloseIdleConnections()
			resp, body := do(t, cl, "GET", "/", nil)
			if resp.StatusCode != c.code {
				t.Fatalf("status %d (%q), want %d", resp.StatusCode, body, c.code)
			}
			if c.code == 403 && body != "RBAC: access denied by default/from-office\n" {
				t.Fatalf("body %q", body)
			}
		})
	}
	// A block that does not parse is refused, and the set in force stays.
	bad := proto.Clone(fromOffice).(*configv1alpha1.Authorization)
	bad.Rules[0].From[0].IpBlocks = []string{"10.1.2.0/99"}
	if err := e.store.HandleAuthorizations(resources(t, map[string]proto.Message{"default/from-office": bad})); err == nil {
		t.Fatal("an unparsable IP block was accepted")
	}
	cl := e.clientAs(t, sa("client"), "10.96.0.10:80", http.Header{"Forwarded": {"for=10.1.2.3"}})
	defer cl.CloseIdleConnections()
	if resp, _ := do(t, cl, "GET", "/", nil); resp.StatusCode != 200 {
		t.Fatalf("after a rejected update: status %d", resp.StatusCode)
	}
}

func TestStoreDump(t *testing.T) {
	e := setup(t)
	if err := e.store.HandleAuthorizations(resources(t, map[string]proto.Message{"default/metrics-get-only": metricsGetOnly()})); err != nil {
		t.Fatal(err)
	}
	d := e.store.Dump()
	if len(d.Routes) != 1 || d.Routes[0] != (RouteDump{Service: "default/echo:80", Protocol: "HTTP", Rules: 2}) ||
		d.Services != 3 || d.Workloads != 4 || fmt.Sprint(d.Authorizations) != "[default/metrics-get-only]" {
		t.Fatalf("dump %+v", d)
	}
}

// Before the first Authorization update the waypoint fails closed.
func TestDeniedBeforePoliciesArrive(t *testing.T) {
	fresh := NewStore(nil)
	cfg := config("127.0.0.2", "127.0.0.3")
	for _, typ := range fresh.Types() {
		if typ.URL == configv1alpha1.TypeAuthorization {
			continue
		}
		if err := typ.Handle(resources(t, cfg[typ.URL])); err != nil {
			t.Fatal(err)
		}
	}
	e := setup(t, func(c *Config) { c.Store = fresh })
	c := e.httpClient("10.96.0.10:80", false)
	defer c.CloseIdleConnections()
	if resp, body := do(t, c, "GET", "/", nil); resp.StatusCode != 403 || body != "RBAC: access denied\n" {
		t.Fatalf("before policies: %d %q", resp.StatusCode, body)
	}
	if err := fresh.HandleAuthorizations(nil); err != nil {
		t.Fatal(err)
	}
	if resp, _ := do(t, c, "GET", "/", nil); resp.StatusCode != 200 {
		t.Fatalf("after an empty policy set: %d", resp.StatusCode)
	}
}
