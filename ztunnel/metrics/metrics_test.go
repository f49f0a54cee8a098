package metrics

import (
	"net"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/ztunnel/config"
)

func TestLabelsAndCounting(t *testing.T) {
	m := New()
	src, err := config.ParseWorkload(&configv1alpha1.Workload{Name: "shop/web-1", Identity: "spiffe://cluster.local/ns/shop/sa/web",
		WorkloadName: "web", CanonicalName: "web-app"})
	if err != nil {
		t.Fatal(err)
	}
	l := Labels{Reporter: ReporterSource, Source: PeerOf(src), Destination: PeerOf(nil),
		DestinationService: "db.shop.svc.cluster.local", Security: SecurityMutualTLS}
	c := m.Open(l)
	a, b := net.Pipe()
	wrapped := c.Wrap(a, true)
	go func() {
		_, _ = b.Write([]byte("hello"))
		buf := make([]byte, 3)
		_, _ = b.Read(buf)
	}()
	buf := make([]byte, 5)
	if _, err := wrapped.Read(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := wrapped.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	m.Failed(Labels{Reporter: ReporterDestination, ResponseFlags: FlagDenied})

	want := `
# HELP istio_tcp_received_bytes_total Bytes received from the client by the server (request direction).
# TYPE istio_tcp_received_bytes_total counter
istio_tcp_received_bytes_total{connection_security_policy="mutual_tls",destination_canonical_revision="unknown",destination_canonical_service="unknown",destination_principal="unknown",destination_service="db.shop.svc.cluster.local",destination_workload="unknown",destination_workload_namespace="unknown",reporter="source",request_protocol="tcp",response_flags="-",source_canonical_revision="latest",source_canonical_service="web-app",source_principal="spiffe://cluster.local/ns/shop/sa/web",source_workload="web",source_workload_namespace="shop"} 5
# HELP istio_tcp_sent_bytes_total Bytes sent from the server to the client (response direction).
# TYPE istio_tcp_sent_bytes_total counter
istio_tcp_sent_bytes_total{connection_security_policy="mutual_tls",destination_canonical_revision="unknown",destination_canonical_service="unknown",destination_principal="unknown",destination_service="db.shop.svc.cluster.local",destination_workload="unknown",destination_workload_namespace="unknown",reporter="source",request_protocol="tcp",response_flags="-",source_canonical_revision="latest",source_canonical_service="web-app",source_principal="spiffe://cluster.local/ns/shop/sa/web",source_workload="web",source_workload_namespace="shop"} 3
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.opened); n != 2 {
		t.Errorf("opened %v", n)
	}
	if n := testutil.ToFloat64(m.closed.WithLabelValues(Labels{Reporter: ReporterDestination, ResponseFlags: FlagDenied}.values()...)); n != 1 {
		t.Errorf("closed denied %v", n)
	}
}
