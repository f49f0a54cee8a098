package server

import (
	"testing"

	"google.golang.org/protobuf/proto"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// TestConsumerRoutesOverHBONE: consumer routes (GAMMA) of namespace
// team-a send team-a's clients, known by their tunnel certificate, to
// echo-v2 with a response header; clients of other namespaces keep the
// producer routes (the 3:1 split, no header).
func TestConsumerRoutesOverHBONE(t *testing.T) {
	e := setup(t)
	wc := waypointConfig()
	wc.Services[0].Consumers = []*configv1alpha1.ConsumerRoutes{{Namespace: "team-a", Rules: []*configv1alpha1.RouteRule{{
		Route: "HTTPRoute/team-a/add-header/0",
		Filters: []*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_ResponseHeaderModifier{
			ResponseHeaderModifier: &configv1alpha1.HeaderModifier{Set: map[string]string{"X-Header-Set": "set"}}}}},
		Backends: []*configv1alpha1.WeightedBackend{{Service: "default/echo-v2", Port: 80, Weight: 1}},
	}}}}
	if err := e.store.HandleWaypointConfig(resources(t, map[string]proto.Message{"default/waypoint": wc})); err != nil {
		t.Fatal(err)
	}
	consumer := e.clientAs(t, identity.SPIFFEID{TrustDomain: td, Namespace: "team-a", ServiceAccount: "client"}, "10.96.0.10:80", nil)
	for range 20 {
		resp := get(t, consumer, nil)
		if resp.Header.Get("X-Backend") != "v2" || resp.Header.Get("X-Header-Set") != "set" {
			t.Fatalf("team-a client: backend %q, X-Header-Set %q; want v2 and set", resp.Header.Get("X-Backend"), resp.Header.Get("X-Header-Set"))
		}
	}
	for name, id := range map[string]identity.SPIFFEID{
		"service namespace": e.clientID,
		"team-b":            {TrustDomain: td, Namespace: "team-b", ServiceAccount: "client"},
	} {
		c := e.clientAs(t, id, "10.96.0.10:80", nil)
		counts := map[string]int{}
		for range 60 {
			resp := get(t, c, nil)
			if h := resp.Header.Get("X-Header-Set"); h != "" {
				t.Fatalf("%s client got the consumer route's header %q", name, h)
			}
			counts[resp.Header.Get("X-Backend")]++
		}
		// The producer split is 3:1: v1 expected 45 of 60 (sd ~3.4).
		if counts["v1"] < 30 {
			t.Errorf("%s client: backends %v, want the producer's 3:1 split", name, counts)
		}
	}
}
