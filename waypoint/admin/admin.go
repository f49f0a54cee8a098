package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check is one readiness condition: Err returns nil once it holds, or why
// it does not yet.
type Check struct {
	Name string
	Err  func() error
}

// Health is the waypoint's readiness: every Check holds and the waypoint
// is not draining. It is safe for concurrent use.
type Health struct {
	checks   []Check
	draining atomic.Bool
}

// NewHealth returns a Health over checks, evaluated in order.
func NewHealth(checks ...Check) *Health { return &Health{checks: checks} }

// ErrDraining is the readiness error once Drain was called.
var ErrDraining = errors.New("draining: shutting down")

// Drain makes readiness fail from now on (SIGTERM received), so that the
// waypoint's Service stops sending it new connections while the open ones
// finish.
func (h *Health) Drain() { h.draining.Store(true) }

// Draining reports whether Drain was called.
func (h *Health) Draining() bool { return h.draining.Load() }

// Ready returns nil when the waypoint is ready, else the first reason it
// is not.
func (h *Health) Ready() error {
	if h.draining.Load() {
		return ErrDraining
	}
	for _, c := range h.checks {
		if err := c.Err(); err != nil {
			return fmt.Errorf("%s: %w", c.Name, err)
		}
	}
	return nil
}

// ReadyHandler serves GET /healthz/ready (200 "ready", or 503 with the
// reason) and GET /healthz/live (200 while the process serves HTTP).
func ReadyHandler(h *Health) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := h.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /healthz/live", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("live\n"))
	})
	return mux
}

// AdminHandler serves GET /config_dump (the JSON document dump returns)
// and GET /healthz/ready, for the localhost admin port.
func AdminHandler(h *Health, dump func() any) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(dump())
	})
	mux.Handle("GET /healthz/ready", ReadyHandler(h))
	return mux
}

// MetricsHandler serves GET /metrics from reg in the Prometheus text (or
// OpenMetrics, when asked) format, uncompressed: a gzip writer allocates
// about 1 MiB per scrape, for a text of tens of KiB.
func MetricsHandler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, DisableCompression: true}))
	return mux
}
