package configv1alpha1

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestTypeURLsMatchMessages(t *testing.T) {
	for url, msg := range map[string]interface {
		proto.Message
		GetName() string
	}{
		TypeWorkload:       &Workload{Name: "ns/pod"},
		TypeService:        &Service{Name: "ns/svc"},
		TypeAuthorization:  &Authorization{Name: "ns/policy"},
		TypeWaypointConfig: &WaypointConfig{Name: "ns/waypoint"},
	} {
		a, err := anypb.New(msg)
		if err != nil {
			t.Fatal(err)
		}
		if a.GetTypeUrl() != url {
			t.Errorf("constant %q, message packs as %q", url, a.GetTypeUrl())
		}
		back, err := a.UnmarshalNew()
		if err != nil || !proto.Equal(back, msg) {
			t.Errorf("%s round trip: %v", url, err)
		}
	}
}
