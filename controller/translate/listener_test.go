package translate

import (
	"errors"
	"testing"

	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func TestListenerAllowedRoutes(t *testing.T) {
	base := gwapiv1.Listener{Name: "mesh", Port: WaypointListenerPort, Protocol: WaypointListenerProtocol}
	for name, tc := range map[string]struct {
		ar *gwapiv1.AllowedRoutes
		ok bool
	}{
		"absent":             {nil, true},
		"CRD default (Same)": {&gwapiv1.AllowedRoutes{Namespaces: &gwapiv1.RouteNamespaces{From: ptr(gwapiv1.NamespacesFromSame)}}, true},
		"empty":              {&gwapiv1.AllowedRoutes{}, true},
		"from All":           {&gwapiv1.AllowedRoutes{Namespaces: &gwapiv1.RouteNamespaces{From: ptr(gwapiv1.NamespacesFromAll)}}, false},
		"kinds":              {&gwapiv1.AllowedRoutes{Kinds: []gwapiv1.RouteGroupKind{{Kind: "HTTPRoute"}}}, false},
	} {
		l := base
		l.AllowedRoutes = tc.ar
		err := listenerError(&l)
		if tc.ok && err != nil {
			t.Errorf("%s: rejected: %v", name, err)
		}
		if !tc.ok && !errors.Is(err, ErrInvalidListener) {
			t.Errorf("%s: err = %v, want ErrInvalidListener", name, err)
		}
	}
}
