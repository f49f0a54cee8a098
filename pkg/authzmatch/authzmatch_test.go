package authzmatch

import (
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
		if got := SourceMatches(c.src, c.peer); got != c.want {
			t.Errorf("%s: SourceMatches = %v, want %v", name, got, c.want)
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
