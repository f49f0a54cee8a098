package telemetry

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestParseBaggage(t *testing.T) {
	m := parseBaggage(" k8s.namespace.name=demo , k8s.workload.name=web;prop=1,bad,service.name=web")
	if m["k8s.namespace.name"] != "demo" || m["k8s.workload.name"] != "web" || m["service.name"] != "web" || len(m) != 3 {
		t.Fatalf("baggage %v", m)
	}
}

// Without metadata every workload label is "unknown", and baggage that
// claims another namespace than the identity's is ignored.
func TestLabelsWithoutMetadata(t *testing.T) {
	tel := New(nil, nil)
	r := httptest.NewRequest("POST", "/pkg.Svc/M", nil)
	r.Header.Set("Content-Type", "application/grpc+proto")
	res := &proxy.Result{
		Service: "demo/api", Backend: "demo/api-v2:8080", Workload: "demo/api-v2-pod", Code: 200, GRPCStatus: "0",
		Source: proxy.Source{
			Identity: identity.SPIFFEID{TrustDomain: "td", Namespace: "demo", ServiceAccount: "web"},
			Header:   http.Header{"Baggage": {"k8s.namespace.name=other,k8s.workload.name=spoofed"}},
		},
		Duration: 3 * time.Millisecond,
	}
	l := tel.Labels(r, res)
	want := RequestLabels{
		Source:      Peer{Workload: Unknown, Namespace: "demo", Principal: "spiffe://td/ns/demo/sa/web", CanonicalService: Unknown, CanonicalRevision: Unknown},
		Destination: Peer{Workload: Unknown, Namespace: "demo", Principal: Unknown, CanonicalService: Unknown, CanonicalRevision: Unknown},
		Service:     "api-v2.demo.svc.cluster.local", ServiceName: "api-v2", ServiceNamespace: "demo",
		Protocol: "grpc", Code: "200", GRPCStatus: "0", Flags: "-", SecurityPolicy: "mutual_tls",
	}
	if l != want {
		t.Fatalf("labels\n%+v\nwant\n%+v", l, want)
	}
	tel.Observe(r, res)
	if n := testutil.CollectAndCount(tel.requests); n != 1 {
		t.Fatalf("%d series", n)
	}
	// No route: the requested service labels the request.
	l = tel.Labels(httptest.NewRequest("GET", "/", nil), &proxy.Result{Service: "demo/api", Code: 404, Flags: []string{"NR"}})
	if l.ServiceName != "api" || l.Flags != "NR" || l.SecurityPolicy != "none" || l.Source.Principal != Unknown {
		t.Fatalf("no route labels %+v", l)
	}
}
