package translate

import (
	"testing"

	"k8s.io/apimachinery/pkg/types"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// TestKindConflictTie: an HTTPRoute and a GRPCRoute of the same name and age
// on one Service port: exactly one is accepted, and only its rule is served.
func TestKindConflictTie(t *testing.T) {
	const doc = `
apiVersion: v1
kind: Namespace
metadata: {name: k, labels: {ambit.dev/use-waypoint: wp}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: k}
spec: {gatewayClassName: ambit-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: wp, namespace: k}
spec: {clusterIP: 10.96.0.1, ports: [{name: mesh, port: 15008}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: k}
spec: {clusterIP: 10.96.0.2, ports: [{name: grpc, port: 9090}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: same, namespace: k, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: api}]
  rules: [{backendRefs: [{name: api, port: 9090}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: same, namespace: k, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: api}]
  rules: [{backendRefs: [{name: api, port: 9090}]}]
`
	in, err := LoadInput([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	key := types.NamespacedName{Namespace: "k", Name: "same"}
	accepted := func(st []gwapiv1.RouteParentStatus) bool {
		for _, c := range st[0].Conditions {
			if c.Type == string(gwapiv1.RouteConditionAccepted) {
				return c.Status == "True"
			}
		}
		t.Fatal("no Accepted condition")
		return false
	}
	out := Translate(in, testOptions)
	h, g := accepted(out.Status.HTTPRoutes[key]), accepted(out.Status.GRPCRoutes[key])
	if h == g {
		t.Fatalf("HTTPRoute accepted %v, GRPCRoute accepted %v; want exactly one", h, g)
	}
	rules := out.Waypoints[0].GetServices()[0].GetRules()
	if len(rules) != 1 {
		t.Fatalf("%d rules at the port, want 1", len(rules))
	}
}
