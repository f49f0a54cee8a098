package route

import (
	"fmt"
	"net/http/httptest"
	"testing"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// BenchmarkMatch matches against 50 rules where the last one fits.
func BenchmarkMatch(b *testing.B) {
	var rules []*configv1alpha1.RouteRule
	for i := range 49 {
		rules = append(rules, rule(fmt.Sprintf("r%d", i), &configv1alpha1.RouteMatch{Path: sm(prefix, fmt.Sprintf("/svc%d", i)),
			Headers: []*configv1alpha1.HeaderMatch{{Name: "x-version", Value: sm(regex, "v[0-9]+")}}}))
	}
	rules = append(rules, rule("last", nil))
	tb := table(b, rules...)
	r := httptest.NewRequest("GET", "/other/path?x=1", nil)
	r.Header.Set("X-Version", "v2")
	b.ReportAllocs()
	for b.Loop() {
		if got, ok := tb.Match(r, "ns/svc", 80); !ok || got.Name != "last" {
			b.Fatal("no match")
		}
	}
}

func TestKeys(t *testing.T) {
	tb := table(t)
	if len(tb.Keys()) != 2 || (*Table)(nil).Keys() != nil {
		t.Errorf("keys %v", tb.Keys())
	}
}
