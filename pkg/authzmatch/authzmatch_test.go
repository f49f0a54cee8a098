package authzmatch

import (
	"net/netip"
	"testing"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		p, v string
		want bool
	}{
		{"*", "x", true}, {"*", "", false}, {"a*", "abc", true}, {"a*", "ba", false},
		{"*c", "abc", true}, {"*c", "cb", false}, {"abc", "abc", true}, {"abc", "abcd", false},
		{"/a/*", "/a/b", true}, {"/a/*", "/a", false}, {"*.png", "/x.png", true}, {"*.png", "/x.jpg", false},
		{"/a", "/a/", false},
	} {
		if got := Match(c.p, c.v); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.p, c.v, got, c.want)
		}
	}
}

func TestSourceMatches(t *testing.T) {
	peer := identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	web := "spiffe://cluster.local/ns/shop/sa/web"
	for name, c := range map[string]struct {
		src  *configv1alpha1.AuthorizationRule_Source
		peer identity.SPIFFEID
		want bool
	}{
		"empty source, any peer":        {&configv1alpha1.AuthorizationRule_Source{}, identity.SPIFFEID{}, true},
		"principal":                     {&configv1alpha1.AuthorizationRule_Source{Principals: []string{web}}, peer, true},
		"principal prefix":              {&configv1alpha1.AuthorizationRule_Source{Principals: []string{"spiffe://cluster.local/ns/shop/*"}}, peer, true},
		"other principal":               {&configv1alpha1.AuthorizationRule_Source{Principals: []string{"spiffe://cluster.local/ns/shop/sa/db"}}, peer, false},
		"principal, unauthenticated":    {&configv1alpha1.AuthorizationRule_Source{Principals: []string{"*"}}, identity.SPIFFEID{}, false},
		"notPrincipal":                  {&configv1alpha1.AuthorizationRule_Source{NotPrincipals: []string{web}}, peer, false},
		"notPrincipal, unauthenticated": {&configv1alpha1.AuthorizationRule_Source{NotPrincipals: []string{web}}, identity.SPIFFEID{}, true},
		"namespace":                     {&configv1alpha1.AuthorizationRule_Source{Namespaces: []string{"shop"}}, peer, true},
		"other namespace":               {&configv1alpha1.AuthorizationRule_Source{Namespaces: []string{"bank"}}, peer, false},
		"namespace, unauthenticated":    {&configv1alpha1.AuthorizationRule_Source{Namespaces: []string{"shop"}}, identity.SPIFFEID{}, false},
		"notNamespace":                  {&configv1alpha1.AuthorizationRule_Source{NotNamespaces: []string{"shop"}}, peer, false},
		"principal and other namespace": {&configv1alpha1.AuthorizationRule_Source{Principals: []string{web}, Namespaces: []string{"bank"}}, peer, false},
	} {
		if got := SourceMatches(c.src, c.peer, netip.MustParseAddr("10.1.2.3")); got != c.want {
			t.Errorf("%s: SourceMatches = %v, want %v", name, got, c.want)
		}
	}
}

func TestSourceMatchesIPBlocks(t *testing.T) {
	peer := identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	src := func(blocks, not []string) *configv1alpha1.AuthorizationRule_Source {
		return &configv1alpha1.AuthorizationRule_Source{IpBlocks: blocks, NotIpBlocks: not}
	}
	v4, v6 := netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("fd00::12")
	for name, c := range map[string]struct {
		src  *configv1alpha1.AuthorizationRule_Source
		addr netip.Addr
		want bool
	}{
		"in block":                      {src([]string{"10.1.2.0/24"}, nil), v4, true},
		"exact address":                 {src([]string{"10.1.2.3/32"}, nil), v4, true},
		"outside block":                 {src([]string{"10.1.3.0/24"}, nil), v4, false},
		"second block":                  {src([]string{"192.0.2.0/24", "10.0.0.0/8"}, nil), v4, true},
		"IPv6 in block":                 {src([]string{"fd00::/64"}, nil), v6, true},
		"IPv6 against IPv4 block":       {src([]string{"10.0.0.0/8"}, nil), v6, false},
		"IPv4-mapped address":           {src([]string{"10.1.2.0/24"}, nil), netip.MustParseAddr("::ffff:10.1.2.3"), true},
		"unknown address":               {src([]string{"0.0.0.0/0"}, nil), netip.Addr{}, false},
		"notIpBlocks":                   {src(nil, []string{"10.1.0.0/16"}), v4, false},
		"notIpBlocks other":             {src(nil, []string{"10.2.0.0/16"}), v4, true},
		"notIpBlocks, unknown address":  {src(nil, []string{"0.0.0.0/0"}), netip.Addr{}, true},
		"block and exception":           {src([]string{"10.0.0.0/8"}, []string{"10.1.2.3/32"}), v4, false},
		"unparsable entry matches none": {src([]string{"10.1.2.0/33"}, nil), v4, false},
	} {
		if got := SourceMatches(c.src, peer, c.addr); got != c.want {
			t.Errorf("%s: SourceMatches = %v, want %v", name, got, c.want)
		}
	}
	both := &configv1alpha1.AuthorizationRule_Source{Principals: []string{"spiffe://cluster.local/ns/shop/sa/web"}, IpBlocks: []string{"10.1.2.0/24"}}
	if SourceMatches(both, identity.SPIFFEID{}, v4) {
		t.Error("principal and block: an unauthenticated client in the block matched")
	}
	if !SourceMatches(both, peer, v4) || SourceMatches(both, peer, netip.MustParseAddr("10.9.9.9")) {
		t.Error("principal and block: want a match only with both")
	}
}

func TestParseIPBlock(t *testing.T) {
	for in, want := range map[string]string{
		"10.1.2.3":            "10.1.2.3/32",
		"10.1.2.0/24":         "10.1.2.0/24",
		"10.1.2.3/24":         "10.1.2.0/24",
		"2001:db8::7":         "2001:db8::7/128",
		"2001:db8::1/32":      "2001:db8::/32",
		"::ffff:10.1.2.3":     "10.1.2.3/32",
		"::ffff:10.1.2.0/120": "10.1.2.0/24",
		"0.0.0.0/0":           "0.0.0.0/0",
		"10.1.2.3/33":         "",
		"10.1.2":              "",
		"fe80::1%eth0":        "",
		"fe80::/10%eth0":      "",
		"::ffff:10.0.0.0/80":  "",
		"":                    "",
		"example.com":         "",
		" 10.1.2.3":           "",
	} {
		p, err := ParseIPBlock(in)
		switch {
		case want == "" && err == nil:
			t.Errorf("ParseIPBlock(%q) = %v, want an error", in, p)
		case want != "" && err != nil:
			t.Errorf("ParseIPBlock(%q): %v", in, err)
		case want != "" && p.String() != want:
			t.Errorf("ParseIPBlock(%q) = %v, want %s", in, p, want)
		}
	}
}

func TestPortMatches(t *testing.T) {
	for name, c := range map[string]struct {
		op   *configv1alpha1.AuthorizationRule_Operation
		port uint32
		want bool
	}{
		"no ports":       {&configv1alpha1.AuthorizationRule_Operation{}, 80, true},
		"listed":         {&configv1alpha1.AuthorizationRule_Operation{Ports: []uint32{80, 443}}, 443, true},
		"not listed":     {&configv1alpha1.AuthorizationRule_Operation{Ports: []uint32{80}}, 8080, false},
		"notPorts":       {&configv1alpha1.AuthorizationRule_Operation{NotPorts: []uint32{22}}, 22, false},
		"notPorts other": {&configv1alpha1.AuthorizationRule_Operation{NotPorts: []uint32{22}}, 80, true},
	} {
		if got := PortMatches(c.op, c.port); got != c.want {
			t.Errorf("%s: PortMatches = %v, want %v", name, got, c.want)
		}
	}
}
