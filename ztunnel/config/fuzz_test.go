package config

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// FuzzHandlers feeds arbitrary bytes as resources of each type: the
// handlers must reject or accept them without panicking, and an accepted
// set must be indexed consistently.
func FuzzHandlers(f *testing.F) {
	for name, m := range map[string]proto.Message{
		"shop/a": goodWorkload("shop/a", "10.0.0.1"),
		"shop/s": &configv1alpha1.Service{Name: "shop/s", Vips: []string{"10.96.0.1"}, Ports: []*configv1alpha1.ServicePort{{Port: 80}}},
	} {
		a, err := anypb.New(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(name, a.Value)
	}
	f.Fuzz(func(t *testing.T, name string, value []byte) {
		s := NewStore(nil)
		for _, tc := range []struct {
			url string
			h   func(map[string]*anypb.Any) error
		}{
			{configv1alpha1.TypeWorkload, s.HandleWorkloads},
			{configv1alpha1.TypeService, s.HandleServices},
			{configv1alpha1.TypeAuthorization, s.HandleAuthorizations},
		} {
			if err := tc.h(map[string]*anypb.Any{name: {TypeUrl: tc.url, Value: value}}); err != nil {
				continue
			}
			snap := s.Snapshot()
			for _, w := range snap.Workloads {
				for _, a := range w.Addresses {
					if snap.WorkloadByIP(a) == nil {
						t.Fatalf("accepted workload %s not indexed by %s", w.Name, a)
					}
				}
			}
		}
	})
}
