package server

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/waypoint/admin"
	"github.com/ambit-mesh/ambit/waypoint/telemetry"
)

// scrape fetches /metrics over HTTP and parses it.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// find returns the metric of family name whose labels include want.
func find(mfs map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	for _, m := range mfs[name].GetMetric() {
		labels := map[string]string{}
		for _, lp := range m.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		ok := true
		for k, v := range want {
			if labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			return m
		}
	}
	return nil
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Count(s.b.Bytes(), []byte("\n"))
}

func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if l == "" {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("access log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func TestMetricsAfterRequests(t *testing.T) {
	var tel *telemetry.Telemetry
	logs := &syncBuffer{}
	e := setup(t, func(c *Config) {
		tel = telemetry.New(c.Store, nil)
		tel.SetAccessWriter(logs, "component", "access") // as the binary
		c.OnResult = tel.Observe
		c.Gateway = "default/waypoint"
	})
	if err := e.store.HandleAuthorizations(resources(t, map[string]proto.Message{"default/metrics-get-only": metricsGetOnly()})); err != nil {
		t.Fatal(err)
	}
	admin := httptest.NewServer(admin.MetricsHandler(tel.Registry))
	defer admin.Close()

	client := e.httpClient("10.96.0.10:80", false)
	defer client.CloseIdleConnections()
	const gets = 20
	for range gets {
		if resp, body := do(t, client, "GET", "/metrics", map[string]string{"X-Canary": "yes"}); resp.StatusCode != 200 || body != "v2" {
			t.Fatalf("GET: %d %q", resp.StatusCode, body)
		}
	}
	if resp, _ := do(t, client, "POST", "/metrics", nil); resp.StatusCode != 403 {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
	// A client without a Workload at its address: labels from its identity
	// and the tunnel's baggage.
	other := e.clientAs(t, sa("other"), "10.96.0.10:80", http.Header{
		"Forwarded": {"for=10.1.2.3"},
		"Baggage":   {"k8s.namespace.name=default,k8s.workload.name=other-deploy,service.name=other,service.version=v3"},
	})
	if resp, _ := do(t, other, "GET", "/metrics", nil); resp.StatusCode != 403 {
		t.Fatal("other principal allowed")
	}

	// Observe runs just after each answer is written: wait for the last.
	eventually(t, "every request observed", func() bool { return logs.count() == gets+2 })
	mfs := scrape(t, admin.URL)
	ok := find(mfs, "istio_requests_total", map[string]string{
		"reporter":                       "waypoint",
		"source_workload":                "client-deploy",
		"source_workload_namespace":      "default",
		"source_principal":               sa("client").String(),
		"source_canonical_service":       "client",
		"source_canonical_revision":      "v7",
		"destination_workload":           "echo-v2",
		"destination_workload_namespace": "default",
		"destination_principal":          sa("echo-v2").String(),
		"destination_canonical_service":  "echo",
		"destination_canonical_revision": "v2",
		"destination_service":            "echo-v2.default.svc.mesh.test",
		"destination_service_name":       "echo-v2",
		"destination_service_namespace":  "default",
		"request_protocol":               "http",
		"response_code":                  "200",
		"grpc_response_status":           "",
		"response_flags":                 "-",
		"connection_security_policy":     "mutual_tls",
	})
	if ok == nil || ok.GetCounter().GetValue() != gets {
		t.Fatalf("istio_requests_total for the GETs: %v\n%v", ok, mfs["istio_requests_total"])
	}
	denied := find(mfs, "istio_requests_total", map[string]string{
		"source_workload": "client-deploy", "response_code": "403", "response_flags": "DENY",
		"destination_service": "echo.default.svc.mesh.test", "destination_workload": "unknown",
	})
	if denied == nil || denied.GetCounter().GetValue() != 1 {
		t.Fatalf("denied POST: %v\n%v", denied, mfs["istio_requests_total"])
	}
	fromBaggage := find(mfs, "istio_requests_total", map[string]string{
		"source_workload": "other-deploy", "source_canonical_service": "other", "source_canonical_revision": "v3",
		"source_principal": sa("other").String(), "response_code": "403",
	})
	if fromBaggage == nil || fromBaggage.GetCounter().GetValue() != 1 {
		t.Fatalf("baggage-labelled request: %v\n%v", fromBaggage, mfs["istio_requests_total"])
	}
	for _, name := range []string{"istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"} {
		h := find(mfs, name, map[string]string{"source_workload": "client-deploy", "response_code": "200"})
		if h == nil || h.GetHistogram().GetSampleCount() != gets {
			t.Fatalf("%s: %v", name, h)
		}
		if name == "istio_response_bytes" && h.GetHistogram().GetSampleSum() != 2*gets { // "v2" each
			t.Fatalf("response bytes sum %v, want %d", h.GetHistogram().GetSampleSum(), 2*gets)
		}
	}
	// Bounded cardinality: no label carries the path.
	for _, m := range mfs["istio_requests_total"].GetMetric() {
		for _, lp := range m.GetLabel() {
			if strings.Contains(lp.GetValue(), "/metrics") {
				t.Fatalf("label %s=%q carries the path", lp.GetName(), lp.GetValue())
			}
		}
	}

	// One access-log line per request, with principals and the decision.
	lines := logs.lines(t)
	if len(lines) != gets+2 {
		t.Fatalf("%d access-log lines, want %d", len(lines), gets+2)
	}
	first, post := lines[0], lines[gets]
	if first["source_principal"] != sa("client").String() || first["destination_principal"] != sa("echo-v2").String() ||
		first["authz"] != "allow" || first["authz_policy"] != "default/metrics-get-only" || first["code"] != float64(200) {
		t.Fatalf("access log of a GET: %v", first)
	}
	if post["authz"] != "deny" || post["flags"] != "DENY" || post["code"] != float64(403) || post["method"] != "POST" {
		t.Fatalf("access log of the POST: %v", post)
	}
}

// gather scrapes a Telemetry's registry through the metrics handler.
func gather(t *testing.T, tel *telemetry.Telemetry) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(admin.MetricsHandler(tel.Registry))
	defer srv.Close()
	return scrape(t, srv.URL)
}
