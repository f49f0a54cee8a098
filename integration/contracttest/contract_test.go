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
	"github.com/ambit-mesh/ambit/ztunnel/config"
)

// TestZtunnelAcceptsTranslation translates every golden input of
// controller/translate (malformed objects included: translation turns them
// into status, and must not emit what a data plane refuses) and hands the
// Workloads, Services and Authorizations to ztunnel's xDS handlers, which
// refuse a whole set over one resource they reject.
func TestZtunnelAcceptsTranslation(t *testing.T) {
	cases, err := filepath.Glob("../../controller/translate/testdata/*.in.yaml")
	if err != nil || len(cases) == 0 {
		t.Fatalf("no translation inputs: %v", err)
	}
	for _, path := range cases {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".in.yaml"), func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			in, err := translate.LoadInput(data)
			if err != nil {
				t.Fatal(err)
			}
			out := translate.Translate(in, translate.Options{TrustDomain: "example.org"})
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
