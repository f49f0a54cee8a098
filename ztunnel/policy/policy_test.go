package policy

import (
	"net/netip"
	"strings"
	"testing"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/config"
)

func id(ns, sa string) identity.SPIFFEID {
	return identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa}
}

type rule = configv1alpha1.AuthorizationRule
type src = configv1alpha1.AuthorizationRule_Source
type op = configv1alpha1.AuthorizationRule_Operation

func pol(name string, action configv1alpha1.Authorization_Action, rules ...*rule) *configv1alpha1.Authorization {
	return &configv1alpha1.Authorization{Name: "shop/" + name, Namespace: "shop",
		Scope: configv1alpha1.Authorization_SCOPE_NAMESPACE, Action: action, Rules: rules}
}

const (
	allow = configv1alpha1.Authorization_ACTION_ALLOW
	deny  = configv1alpha1.Authorization_ACTION_DENY
)

func from(s *src) *rule { return &rule{From: []*src{s}} }

func TestEvaluate(t *testing.T) {
	web, db, other := id("shop", "web"), id("shop", "db"), id("other", "x")
	plain := identity.SPIFFEID{}
	near, far := netip.MustParseAddr("10.250.1.2"), netip.MustParseAddr("192.0.2.7")
	tests := []struct {
		name     string
		policies []*configv1alpha1.Authorization
		conn     Conn
		allow    bool
		byPolicy string
	}{
		{"no policy allows", nil, Conn{Peer: web, DstPort: 80}, true, ""},
		{"no policy allows plaintext", nil, Conn{Peer: plain, DstPort: 80}, true, ""},
		{"allow matches", []*configv1alpha1.Authorization{pol("a", allow, from(&src{Principals: []string{web.String()}}))},
			Conn{Peer: web, DstPort: 80}, true, "shop/a"},
		{"allow applies, no match denies", []*configv1alpha1.Authorization{pol("a", allow, from(&src{Principals: []string{web.String()}}))},
			Conn{Peer: db, DstPort: 80}, false, ""},
		{"allow without rules denies everything", []*configv1alpha1.Authorization{pol("a", allow)},
			Conn{Peer: web, DstPort: 80}, false, ""},
		{"empty rule matches everything", []*configv1alpha1.Authorization{pol("a", allow, &rule{})},
			Conn{Peer: plain, DstPort: 80}, true, "shop/a"},
		{"deny matches", []*configv1alpha1.Authorization{pol("d", deny, from(&src{Principals: []string{web.String()}}))},
			Conn{Peer: web, DstPort: 80}, false, "shop/d"},
		{"deny does not match: default allow", []*configv1alpha1.Authorization{pol("d", deny, from(&src{Principals: []string{web.String()}}))},
			Conn{Peer: db, DstPort: 80}, true, ""},
		{"deny wins over allow", []*configv1alpha1.Authorization{
			pol("a", allow, &rule{}),
			pol("d", deny, from(&src{Namespaces: []string{"shop"}})),
		}, Conn{Peer: web, DstPort: 80}, false, "shop/d"},
		{"prefix wildcard", []*configv1alpha1.Authorization{pol("a", allow, from(&src{Principals: []string{"spiffe://cluster.local/ns/shop/*"}}))},
			Conn{Peer: db, DstPort: 80}, true, "shop/a"},
		{"prefix wildcard other ns", []*configv1alpha1.Authorization{pol("a", allow, from(&src{Principals: []string{"spiffe://cluster.local/ns/shop/*"}}))},
			Conn{Peer: other, DstPort: 80}, false, ""},
		{"suffix wildcard", []*configv1alpha1.Authorization{pol("a", allow, from(&src{Principals: []string{"*/sa/web"}}))},
			Conn{Peer: web, DstPort: 80}, true, "shop/a"},
		{"star needs authentication", []*configv1alpha1.Authorization{pol("a", allow, from(&src{Principals: []string{"*"}}))},
			Conn{Peer: plain, DstPort: 80}, false, ""},
		{"star matches any identity", []*configv1alpha1.Authorization{pol("a", allow, from(&src{Principals: []string{"*"}}))},
			Conn{Peer: other, DstPort: 80}, true, "shop/a"},
		{"namespaces", []*configv1alpha1.Authorization{pol("a", allow, from(&src{Namespaces: []string{"other"}}))},
			Conn{Peer: other, DstPort: 80}, true, "shop/a"},
		{"namespaces no match", []*configv1alpha1.Authorization{pol("a", allow, from(&src{Namespaces: []string{"other"}}))},
			Conn{Peer: web, DstPort: 80}, false, ""},
		{"not_namespaces", []*configv1alpha1.Authorization{pol("d", deny, from(&src{NotNamespaces: []string{"shop"}}))},
			Conn{Peer: other, DstPort: 80}, false, "shop/d"},
		{"not_principals spares listed", []*configv1alpha1.Authorization{pol("d", deny, from(&src{NotPrincipals: []string{web.String()}}))},
			Conn{Peer: web, DstPort: 80}, true, ""},
		{"not_principals matches plaintext", []*configv1alpha1.Authorization{pol("d", deny, from(&src{NotPrincipals: []string{web.String()}}))},
			Conn{Peer: plain, DstPort: 80}, false, "shop/d"},
		{"all source fields must match", []*configv1alpha1.Authorization{pol("a", allow, from(&src{Principals: []string{web.String()}, Namespaces: []string{"other"}}))},
			Conn{Peer: web, DstPort: 80}, false, ""},
		{"ports", []*configv1alpha1.Authorization{pol("a", allow, &rule{To: []*op{{Ports: []uint32{80, 443}}}})},
			Conn{Peer: web, DstPort: 443}, true, "shop/a"},
		{"ports no match", []*configv1alpha1.Authorization{pol("a", allow, &rule{To: []*op{{Ports: []uint32{80}}}})},
			Conn{Peer: web, DstPort: 8080}, false, ""},
		{"not_ports", []*configv1alpha1.Authorization{pol("d", deny, &rule{To: []*op{{NotPorts: []uint32{80}}}})},
			Conn{Peer: web, DstPort: 22}, false, "shop/d"},
		{"from and to both needed", []*configv1alpha1.Authorization{pol("a", allow, &rule{From: []*src{{Principals: []string{web.String()}}}, To: []*op{{Ports: []uint32{80}}}})},
			Conn{Peer: web, DstPort: 81}, false, ""},
		{"any of several rules", []*configv1alpha1.Authorization{pol("a", allow,
			from(&src{Principals: []string{db.String()}}), &rule{To: []*op{{Ports: []uint32{81}}}})},
			Conn{Peer: web, DstPort: 81}, true, "shop/a"},
		{"any of several from entries", []*configv1alpha1.Authorization{pol("a", allow, &rule{From: []*src{
			{Principals: []string{db.String()}}, {Namespaces: []string{"shop"}}}})},
			Conn{Peer: web, DstPort: 81}, true, "shop/a"},
		{"ip_blocks admit the block", []*configv1alpha1.Authorization{pol("a", allow, from(&src{IpBlocks: []string{"10.250.0.0/16"}}))},
			Conn{Peer: web, DstPort: 80, Src: near}, true, "shop/a"},
		{"ip_blocks refuse outside", []*configv1alpha1.Authorization{pol("a", allow, from(&src{IpBlocks: []string{"10.250.0.0/16"}}))},
			Conn{Peer: web, DstPort: 80, Src: far}, false, ""},
		{"ip_blocks admit plaintext by address", []*configv1alpha1.Authorization{pol("a", allow, from(&src{IpBlocks: []string{"10.250.1.2/32"}}))},
			Conn{Peer: plain, DstPort: 80, Src: near}, true, "shop/a"},
		{"ip_blocks with an unknown address", []*configv1alpha1.Authorization{pol("a", allow, from(&src{IpBlocks: []string{"0.0.0.0/0"}}))},
			Conn{Peer: web, DstPort: 80}, false, ""},
		{"deny by ip_blocks", []*configv1alpha1.Authorization{pol("a", allow, &rule{}), pol("d", deny, from(&src{IpBlocks: []string{"192.0.2.0/24"}}))},
			Conn{Peer: web, DstPort: 80, Src: far}, false, "shop/d"},
		{"deny all but not_ip_blocks", []*configv1alpha1.Authorization{pol("d", deny, from(&src{NotIpBlocks: []string{"10.250.0.0/16"}}))},
			Conn{Peer: web, DstPort: 80, Src: near}, true, ""},
		{"deny all but not_ip_blocks, outside", []*configv1alpha1.Authorization{pol("d", deny, from(&src{NotIpBlocks: []string{"10.250.0.0/16"}}))},
			Conn{Peer: web, DstPort: 80, Src: far}, false, "shop/d"},
		{"principal and ip_blocks both needed", []*configv1alpha1.Authorization{pol("a", allow, from(&src{Principals: []string{web.String()}, IpBlocks: []string{"10.250.0.0/16"}}))},
			Conn{Peer: web, DstPort: 80, Src: far}, false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := Evaluate(tc.policies, tc.conn)
			if d.Allow != tc.allow || d.Policy != tc.byPolicy {
				t.Errorf("Evaluate = %+v, want allow=%v policy=%q", d, tc.allow, tc.byPolicy)
			}
			if d.Reason == "" {
				t.Error("decision without reason")
			}
		})
	}
}

func TestApplicable(t *testing.T) {
	mk := func(name string, scope configv1alpha1.Authorization_Scope) *configv1alpha1.Authorization {
		ns, _, _ := strings.Cut(name, "/")
		return &configv1alpha1.Authorization{Name: name, Namespace: ns, Scope: scope, Action: allow}
	}
	as := []*configv1alpha1.Authorization{
		mk("shop/selected", configv1alpha1.Authorization_SCOPE_WORKLOAD_SELECTOR),
		mk("shop/not-selected", configv1alpha1.Authorization_SCOPE_WORKLOAD_SELECTOR),
		mk("shop/ns", configv1alpha1.Authorization_SCOPE_NAMESPACE),
		mk("other/ns", configv1alpha1.Authorization_SCOPE_NAMESPACE),
		mk("ambit-system/mesh", configv1alpha1.Authorization_SCOPE_GLOBAL),
		mk("shop/global-elsewhere", configv1alpha1.Authorization_SCOPE_GLOBAL),
		{Name: "shop/wp", Namespace: "shop", Scope: configv1alpha1.Authorization_SCOPE_WAYPOINT, Action: allow, Targets: []string{"shop/wp"}},
	}
	w, err := config.ParseWorkload(&configv1alpha1.Workload{Name: "shop/web-1", Namespace: "shop",
		AuthorizationPolicies: []string{"shop/selected", "other/ns"}})
	if err != nil {
		t.Fatal(err)
	}
	snap := config.Build([]*config.Workload{w}, nil, as)
	var got []string
	for _, a := range Applicable(snap, w, "ambit-system") {
		got = append(got, a.GetName())
	}
	want := []string{"ambit-system/mesh", "shop/ns", "shop/selected"}
	if len(got) != len(want) {
		t.Fatalf("Applicable = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Applicable = %v, want %v", got, want)
		}
	}
}
