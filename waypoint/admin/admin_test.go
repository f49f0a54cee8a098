package admin

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestReadiness(t *testing.T) {
	var cert, config atomic.Bool
	h := NewHealth(
		Check{Name: "certificate", Err: func() error {
			if !cert.Load() {
				return errors.New("none yet")
			}
			return nil
		}},
		Check{Name: "config", Err: func() error {
			if !config.Load() {
				return errors.New("no xDS config yet")
			}
			return nil
		}},
	)
	rh := ReadyHandler(h)
	if code, body := get(t, rh, "/healthz/ready"); code != 503 || !strings.Contains(body, "certificate: none yet") {
		t.Fatalf("no cert: %d %q", code, body)
	}
	cert.Store(true)
	if code, body := get(t, rh, "/healthz/ready"); code != 503 || !strings.Contains(body, "config: no xDS config yet") {
		t.Fatalf("no config: %d %q", code, body)
	}
	config.Store(true)
	if code, body := get(t, rh, "/healthz/ready"); code != 200 || body != "ready\n" {
		t.Fatalf("ready: %d %q", code, body)
	}
	if code, _ := get(t, rh, "/healthz/live"); code != 200 {
		t.Fatalf("live: %d", code)
	}
	h.Drain()
	if code, body := get(t, rh, "/healthz/ready"); code != 503 || !strings.Contains(body, "draining") {
		t.Fatalf("draining: %d %q", code, body)
	}
	if code, _ := get(t, rh, "/healthz/live"); code != 200 {
		t.Fatalf("live while draining: %d", code)
	}
	if code, _ := get(t, rh, "/metrics"); code != 404 {
		t.Fatalf("metrics on the readiness port: %d", code)
	}
}

func TestMetricsHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_total", Help: "t"})
	reg.MustRegister(c)
	c.Add(3)
	if code, body := get(t, MetricsHandler(reg), "/metrics"); code != 200 || !strings.Contains(body, "test_total 3") {
		t.Fatalf("metrics: %d %q", code, body)
	}
	// Not compressed even when the scraper offers gzip.
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	rec := httptest.NewRecorder()
	MetricsHandler(reg).ServeHTTP(rec, req)
	if ce := rec.Header().Get("Content-Encoding"); rec.Code != 200 || ce != "" || !strings.Contains(rec.Body.String(), "test_total 3") {
		t.Fatalf("metrics with Accept-Encoding gzip: %d, Content-Encoding %q, %q", rec.Code, ce, rec.Body.String())
	}
}

func TestAdminHandler(t *testing.T) {
	h := NewHealth()
	ah := AdminHandler(h, func() any { return map[string]int{"routes": 3} })
	if code, body := get(t, ah, "/config_dump"); code != 200 || !strings.Contains(body, `"routes": 3`) {
		t.Fatalf("config_dump: %d %q", code, body)
	}
	if code, _ := get(t, ah, "/healthz/ready"); code != 200 {
		t.Fatalf("ready: %d", code)
	}
}
