// Package contracttest checks the contract between the controller and the
// data planes without a network: what the controller's translation emits,
// the data planes accept.
package contracttest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/translate"
	waypoint "github.com/ambit-mesh/ambit/waypoint/server"
	"github.com/ambit-mesh/ambit/ztunnel/config"
)

// translations translates every golden input of controller/translate
// (malformed objects included: translation turns them into status, and
// must not emit what a data plane refuses), by case name.
func translations(t *testing.T) map[string]translate.Output {
	t.Helper()
	cases, err := filepath.Glob("../../controller/translate/testdata/*.in.yaml")
	if err != nil || len(cases) == 0 {
		t.Fatalf("no translation inputs: %v", err)
	}
	out := map[string]translate.Output{}
	for _, path := range cases {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		in, err := translate.LoadInput(data)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out[strings.TrimSuffix(filepath.Base(path), ".in.yaml")] = translate.Translate(in, translate.Options{TrustDomain: "example.org"})
	}
	return out
}

// TestZtunnelAcceptsTranslation hands each translation's Workloads,
// Services and Authorizations to ztunnel's xDS handlers, which refuse a
// whole set over one resource they reject.
func TestZtunnelAcceptsTranslation(t *testing.T) {
	for name, out := range translations(t) {
		t.Run(name, func(t *testing.T) {
			store := config.NewStore(nil)
			if err := store.HandleWorkloads(resources(t, out.Workloads, (*configv1alpha1.Workload).GetName)); err != nil {
				t.Errorf("ztunnel refuses the Workloads: %v", err)
			}
			if err := store.HandleServices(resources(t, out.Services, (*configv1alpha1.Service).GetName)); err != nil {
				t.Errorf("ztunnel refuses the Services: %v", err)
			}
			if err := store.HandleAuthorizations(resources(t, out.Authorizations, (*configv1alpha1.Authorization).GetName)); err != nil {
				t.Errorf("ztunnel refuses the Authorizations: %v", err)
			}
			if n := len(store.Snapshot().Workloads); n != len(out.Workloads) {
				t.Errorf("ztunnel holds %d workloads, translation emitted %d", n, len(out.Workloads))
			}
		})
	}
}

// TestWaypointAcceptsTranslation hands each translation's resources to the
// waypoint's xDS handlers: every WaypointConfig (each waypoint receives its
// own) and the Services, Workloads and Authorizations.
func TestWaypointAcceptsTranslation(t *testing.T) {
	for name, out := range translations(t) {
		t.Run(name, func(t *testing.T) {
			for _, wc := range out.Waypoints {
				store := waypoint.NewStore(nil)
				if err := store.HandleWaypointConfig(resources(t, []*configv1alpha1.WaypointConfig{wc}, (*configv1alpha1.WaypointConfig).GetName)); err != nil {
					t.Errorf("waypoint %s refuses its WaypointConfig: %v", wc.GetName(), err)
				}
			}
			store := waypoint.NewStore(nil)
			if err := store.HandleServices(resources(t, out.Services, (*configv1alpha1.Service).GetName)); err != nil {
				t.Errorf("the waypoint refuses the Services: %v", err)
			}
			if err := store.HandleWorkloads(resources(t, out.Workloads, (*configv1alpha1.Workload).GetName)); err != nil {
				t.Errorf("the waypoint refuses the Workloads: %v", err)
			}
			if err := store.HandleAuthorizations(resources(t, out.Authorizations, (*configv1alpha1.Authorization).GetName)); err != nil {
				t.Errorf("the waypoint refuses the Authorizations: %v", err)
			}
		})
	}
}

// resources packs messages as an xDS update does: by name, each in an Any.
func resources[M proto.Message](t *testing.T, ms []M, name func(M) string) map[string]*anypb.Any {
	t.Helper()
	out := make(map[string]*anypb.Any, len(ms))
	for _, m := range ms {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		out[name(m)] = a
	}
	return out
}
