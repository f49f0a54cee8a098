package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestLint runs promlint on the controller's own metrics (naming, units,
// help texts).
func TestLint(t *testing.T) {
	// Make every vector have a series so that it is gathered.
	Translations.WithLabelValues(ResultOK)
	XDSConnections.WithLabelValues("ztunnel")
	XDSRefused.WithLabelValues("Unauthenticated")
	XDSPushes.WithLabelValues("Workload")
	XDSNacks.WithLabelValues("Workload")
	CARequests.WithLabelValues("OK")
	mfs, err := Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var ours int
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "ambit_controller_") {
			continue
		}
		ours++
	}
	if ours != 11 {
		t.Errorf("%d ambit_controller_ metrics registered, want 11", ours)
	}
	problems, err := testutil.GatherAndLint(Registry, "ambit_controller_translations_total",
		"ambit_controller_translate_duration_seconds", "ambit_controller_xds_connections", "ambit_controller_xds_refused_total",
		"ambit_controller_xds_pushes_total", "ambit_controller_xds_nacks_total",
		"ambit_controller_xds_publish_duration_seconds", "ambit_controller_xds_push_ack_duration_seconds",
		"ambit_controller_ca_requests_total", "ambit_controller_ca_request_duration_seconds",
		"ambit_controller_ca_sign_duration_seconds")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}
