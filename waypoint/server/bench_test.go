package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/waypoint/telemetry"
	"github.com/ambit-mesh/ambit/waypoint/tracing"
)

// BenchmarkRequestOverHBONE measures one GET through the waypoint on
// loopback: client -> HBONE -> waypoint (routing, forwarding) -> HBONE ->
// backend, over kept-alive tunnels. "engine" has no observability;
// "observed" adds an ALLOW policy, metrics, the access log (to a discarded
// JSON handler) and spans (created and propagated, not exported), as the
// binary runs.
func BenchmarkRequestOverHBONE(b *testing.B) {
	for _, observed := range []bool{false, true} {
		name := map[bool]string{false: "engine", true: "observed"}[observed]
		b.Run(name, func(b *testing.B) {
			var opts []func(*Config)
			if observed {
				tr, err := tracing.New(context.Background(), tracing.Config{})
				if err != nil {
					b.Fatal(err)
				}
				opts = append(opts, func(c *Config) {
					tel := telemetry.New(c.Store, slog.New(slog.NewJSONHandler(io.Discard, nil)))
					c.Tracer, c.OnResult, c.Gateway = tr, tel.Observe, "default/waypoint"
				})
			}
			e := setup(b, opts...)
			if observed {
				if err := e.store.HandleAuthorizations(resources(b, map[string]proto.Message{"default/metrics-get-only": metricsGetOnly()})); err != nil {
					b.Fatal(err)
				}
			}
			c := e.httpClient("10.96.0.10:80", false)
			defer c.CloseIdleConnections()
			req, _ := http.NewRequest(http.MethodGet, "http://echo.default.svc/metrics", nil)
			req.Header.Set("X-Canary", "yes")
			b.ReportAllocs()
			for b.Loop() {
				resp, err := c.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
}
