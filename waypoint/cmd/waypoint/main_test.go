package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// newControlPlane listens on loopback for a delta ADS server of the
// waypoint's four types (without resources); it serves once start is
// called; until then connections wait in the listen queue.
func newControlPlane(t *testing.T) (addr string, caches map[string]*cachev3.LinearCache, start func()) {
	t.Helper()
	caches = map[string]*cachev3.LinearCache{}
	mux := &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cachev3.Cache{},
	}
	for _, url := range []string{configv1alpha1.TypeWaypointConfig, configv1alpha1.TypeService, configv1alpha1.TypeWorkload, configv1alpha1.TypeAuthorization} {
		c := cachev3.NewLinearCache(url)
		caches[url] = c
		mux.Caches[url] = c
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(t.Context(), mux, nil))
	t.Cleanup(func() { g.Stop(); _ = ln.Close() })
	return ln.Addr().String(), caches, func() { go func() { _ = g.Serve(ln) }() }
}

func httpGet(url string) (int, string) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServeReadinessAndDrain runs the waypoint in-process with a local CA
// and a delta ADS server: readiness is 503 until the configuration
// arrives, 200 then, and 503 at once after SIGTERM (ctx) while the HBONE
// listener still accepts during the shutdown delay.
func TestServeReadinessAndDrain(t *testing.T) {
	xdsAddr, caches, startXDS := newControlPlane(t)
	o, err := parseOptions([]string{
		"-local-ca-trust-domain", "example.org", "-xds-insecure",
		"-xds-address", xdsAddr,
		"-hbone-address", "127.0.0.1:0", "-metrics-address", "127.0.0.1:0", "-ready-address", "127.0.0.1:0", "-admin-address", "127.0.0.1:0",
		"-shutdown-delay", "1s", "-shutdown-drain", "1s",
	}, env(podEnv()), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o.xdsStateFile = "" // not the pod's /var/lib/ambit
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrs := make(chan listeners, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, o, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, func(l listeners) { addrs <- l })
	}()
	var l listeners
	select {
	case l = <-addrs:
	case err := <-done:
		t.Fatalf("serve returned %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("waypoint did not start")
	}
	ready := "http://" + l.ready.String() + "/healthz/ready"
	if code, body := httpGet(ready); code != 503 || !strings.Contains(body, "config") {
		t.Fatalf("before config: %d %q", code, body)
	}
	if code, _ := httpGet("http://" + l.ready.String() + "/healthz/live"); code != 200 {
		t.Fatalf("live: %d", code)
	}
	startXDS()

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(caches[configv1alpha1.TypeWaypointConfig].UpdateResource("demo/waypoint", &configv1alpha1.WaypointConfig{Name: "demo/waypoint"}))
	must(caches[configv1alpha1.TypeService].UpdateResource("demo/echo", &configv1alpha1.Service{Name: "echo", Namespace: "demo", Vips: []string{"10.96.0.1"}}))
	must(caches[configv1alpha1.TypeWorkload].UpdateResource("demo/echo-1", &configv1alpha1.Workload{Name: "demo/echo-1", Identity: "spiffe://cluster.local/ns/demo/sa/echo"}))
	must(caches[configv1alpha1.TypeAuthorization].UpdateResource("demo/p", &configv1alpha1.Authorization{Name: "demo/p",
		Scope: configv1alpha1.Authorization_SCOPE_WAYPOINT, Action: configv1alpha1.Authorization_ACTION_ALLOW, Targets: []string{"demo/waypoint"}}))
	waitFor(t, "ready", func() bool { code, _ := httpGet(ready); return code == 200 })

	waitFor(t, "the policy in force", func() bool {
		_, body := httpGet("http://" + l.metrics.String() + "/metrics")
		return strings.Contains(body, "\nwaypoint_authorization_policies 1\n")
	})
	code, body := httpGet("http://" + l.metrics.String() + "/metrics")
	for _, want := range []string{"go_goroutines", "\nwaypoint_xds_connected 1\n", "\nwaypoint_certificate_valid 1\n", "\nwaypoint_ready 1\n",
		"\nwaypoint_draining 0\n", "\nwaypoint_xds_config_from_disk 0\n", "\nwaypoint_draining_services 0\n", "\nwaypoint_draining_workloads 0\n"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Fatalf("metrics (%d) lack %q:\n%s", code, want, body)
		}
	}

	code, body = httpGet("http://" + l.admin.String() + "/config_dump")
	for _, want := range []string{`"gateway": "demo/waypoint"`, `"ready": "ready"`, `"demo/p"`, `"id": "spiffe://example.org/ns/demo/sa/waypoint"`, `"connected": true`} {
		if code != 200 || !strings.Contains(body, want) {
			t.Fatalf("config_dump (%d) lacks %s:\n%s", code, want, body)
		}
	}
	if strings.Contains(body, "PRIVATE KEY") {
		t.Fatal("config_dump shows a private key")
	}

	cancel() // SIGTERM
	waitFor(t, "readiness to fail", func() bool {
		code, body := httpGet(ready)
		return code == 503 && strings.Contains(body, "draining")
	})
	// Still accepting during the shutdown delay.
	c, err := net.DialTimeout("tcp", l.hbone.String(), time.Second)
	if err != nil {
		t.Fatalf("HBONE listener closed during the shutdown delay: %v", err)
	}
	_ = c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waypoint did not stop")
	}
	if _, err := net.DialTimeout("tcp", l.hbone.String(), time.Second); err == nil {
		t.Fatal("HBONE listener open after shutdown")
	}
}
