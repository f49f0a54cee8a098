package telemetry

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
)

// BenchmarkObserve is the telemetry of one request: labels, the four
// metrics and the access-log line (JSON, discarded): none, through slog,
// or through SetAccessWriter as the binary writes it.
func BenchmarkObserve(b *testing.B) {
	for _, log := range []string{"none", "slog", "writer"} {
		b.Run("log="+log, func(b *testing.B) {
			var access *slog.Logger
			if log == "slog" {
				access = slog.New(slog.NewJSONHandler(io.Discard, nil)).With("component", "access")
			}
			tel := New(nil, access)
			if log == "writer" {
				tel.SetAccessWriter(io.Discard, "component", "access")
			}
			r := httptest.NewRequest("POST", "/bench/echo", nil)
			res := &proxy.Result{
				Service: "bench/http", Port: 80, Route: "bench/http.0", Backend: "bench/http:80", Endpoint: "10.250.2.2:8080",
				Workload: "bench/server", Code: 200, Attempts: 1, BytesReceived: 1024, BytesSent: 1024,
				Source: proxy.Source{
					Identity: identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "bench", ServiceAccount: "client"},
					Address:  netip.MustParseAddr("10.250.1.2"),
					Header:   http.Header{},
				},
				Duration: 300 * time.Microsecond,
			}
			b.ReportAllocs()
			for b.Loop() {
				tel.Observe(r, res)
			}
		})
	}
}
