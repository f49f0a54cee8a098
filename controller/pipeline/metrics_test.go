package pipeline

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ambit-mesh/ambit/controller/metrics"
	"github.com/ambit-mesh/ambit/controller/translate"
)

// TestMetrics scrapes the controller's registry: translations by result and
// their durations.
func TestMetrics(t *testing.T) {
	ok0 := testutil.ToFloat64(metrics.Translations.WithLabelValues("ok"))
	panic0 := testutil.ToFloat64(metrics.Translations.WithLabelValues("panic"))
	n0 := durationCount(t)

	p := New(fakeTranslate, translate.Options{}, &recorder{}, nil)
	_, _ = p.Run(t.Context(), namespaces("a"))
	_, _ = p.Run(t.Context(), namespaces("boom"))
	_, _ = p.Run(t.Context(), namespaces("b"))

	if d := testutil.ToFloat64(metrics.Translations.WithLabelValues("ok")) - ok0; d != 2 {
		t.Errorf(`translations{result="ok"} +%v, want +2`, d)
	}
	if d := testutil.ToFloat64(metrics.Translations.WithLabelValues("panic")) - panic0; d != 1 {
		t.Errorf(`translations{result="panic"} +%v, want +1`, d)
	}
	if d := durationCount(t) - n0; d != 3 {
		t.Errorf("translate durations observed +%d, want +3", d)
	}
	if n, err := testutil.GatherAndCount(metrics.Registry, "ambit_controller_translations_total", "ambit_controller_translate_duration_seconds"); err != nil || n < 3 {
		t.Errorf("GatherAndCount = %d, %v; want the ok and panic series and the histogram", n, err)
	}
}

func durationCount(t *testing.T) uint64 {
	t.Helper()
	mfs, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "ambit_controller_translate_duration_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatal("ambit_controller_translate_duration_seconds not registered")
	return 0
}
