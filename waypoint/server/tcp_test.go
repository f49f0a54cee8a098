package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
	"github.com/ambit-mesh/ambit/waypoint/telemetry"
)

// TestTCPPassThrough: a service port whose protocol is TCP is passed
// through as bytes to the service's endpoint over HBONE, with L4 policy.
func TestTCPPassThrough(t *testing.T) {
	var (
		mu    sync.Mutex
		conns []proxy.ConnResult
		tel   *telemetry.Telemetry
	)
	httpResults := &results{}
	e := setup(t, func(c *Config) {
		tel = telemetry.New(c.Store, nil)
		c.Gateway = "default/waypoint"
		c.OnResult = httpResults.add
		c.OnConn = func(r *proxy.ConnResult, done bool) {
			tel.ObserveConn(r, done)
			if done {
				mu.Lock()
				conns = append(conns, *r)
				mu.Unlock()
			}
		}
	})
	cfg := waypointConfig()
	cfg.Services = append(cfg.Services, &configv1alpha1.ServiceRoutes{Service: "default/echo-v1", Port: 80, Protocol: configv1alpha1.ServiceRoutes_PROTOCOL_TCP})
	if err := e.store.HandleWaypointConfig(resources(t, map[string]proto.Message{"default/waypoint": cfg})); err != nil {
		t.Fatal(err)
	}
	lastConn := func(n int) proxy.ConnResult {
		t.Helper()
		var r proxy.ConnResult
		eventually(t, fmt.Sprintf("tunnel %d reported", n), func() bool {
			mu.Lock()
			defer mu.Unlock()
			if len(conns) < n {
				return false
			}
			r = conns[n-1]
			return true
		})
		return r
	}
	dial := func(id identity.SPIFFEID) (*hbone.Conn, error) {
		cert, err := e.ca.Issue(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		d := &hbone.Dialer{TLSConfig: func(_, dst identity.SPIFFEID) (*tls.Config, error) {
			return identity.ClientConfig(identity.StaticCert(cert), e.ca.Pool, dst), nil
		}}
		t.Cleanup(func() { _ = d.Close() })
		return d.Dial(context.Background(), hbone.Request{Source: id, Destination: sa("waypoint"),
			Address: e.wpAddr, Authority: netip.MustParseAddrPort("10.96.0.11:80")})
	}

	c, err := dial(sa("client"))
	if err != nil {
		t.Fatal(err)
	}
	const req = "GET /raw HTTP/1.1\r\nHost: echo-v1\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = c.Close()
	if resp.StatusCode != 200 || string(body) != "v1" || resp.Header.Get("X-Peer") != sa("waypoint").String() {
		t.Fatalf("through the TCP tunnel: %d %q, peer %q", resp.StatusCode, body, resp.Header.Get("X-Peer"))
	}
	r := lastConn(1)
	if !r.Opened || r.Flags != "" || r.Endpoint != "127.0.0.2:8080" || r.BytesReceived != int64(len(req)) || r.BytesSent == 0 ||
		r.Source.Identity != sa("client") {
		t.Fatalf("tunnel result %+v", r)
	}
	httpResults.mu.Lock()
	if n := len(httpResults.list); n != 0 {
		t.Fatalf("%d HTTP results for a TCP port", n)
	}
	httpResults.mu.Unlock()

	// L4 policy: a DENY for the other principal refuses its tunnel with 403;
	// an ALLOW that needs HTTP attributes never matches a TCP tunnel.
	deny := &configv1alpha1.Authorization{Name: "default/no-other", Scope: configv1alpha1.Authorization_SCOPE_SERVICE,
		Action: configv1alpha1.Authorization_ACTION_DENY, Targets: []string{"default/echo-v1"},
		Rules: []*configv1alpha1.AuthorizationRule{{From: []*configv1alpha1.AuthorizationRule_Source{{Principals: []string{sa("other").String()}}}}}}
	if err := e.store.HandleAuthorizations(resources(t, map[string]proto.Message{"default/no-other": deny})); err != nil {
		t.Fatal(err)
	}
	_, err = dial(sa("other"))
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden {
		t.Fatalf("other principal: %v, want 403", err)
	}
	if r := lastConn(2); r.Flags != proxy.FlagDenied || r.Opened || r.Authz.Policy != "default/no-other" {
		t.Fatalf("denied tunnel result %+v", r)
	}
	getOnly := metricsGetOnly()
	getOnly.Targets = []string{"default/echo-v1"}
	if err := e.store.HandleAuthorizations(resources(t, map[string]proto.Message{"default/metrics-get-only": getOnly})); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(sa("client")); !errors.As(err, &se) || se.Code != http.StatusForbidden || !strings.Contains(err.Error(), "metrics-get-only") {
		t.Fatalf("L7 ALLOW policy on a TCP port: %v, want 403 naming it", err)
	}

	// No endpoint: 503.
	if err := e.store.HandleAuthorizations(nil); err != nil {
		t.Fatal(err)
	}
	svcs := config("127.0.0.2", "127.0.0.3")[configv1alpha1.TypeService]
	svcs["default/echo-v1"].(*configv1alpha1.Service).Endpoints = nil
	if err := e.store.HandleServices(resources(t, svcs)); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(sa("client")); !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable {
		t.Fatalf("no endpoint: %v, want 503", err)
	}

	// TCP metrics.
	mfs := gather(t, tel)
	opened := find(mfs, "istio_tcp_connections_opened_total", map[string]string{
		"reporter": "waypoint", "source_principal": sa("client").String(), "destination_workload": "echo-v1",
		"destination_service": "echo-v1.default.svc.mesh.test", "request_protocol": "tcp", "response_flags": "-",
	})
	received := find(mfs, "istio_tcp_received_bytes_total", map[string]string{"destination_workload": "echo-v1", "response_flags": "-"})
	denied := find(mfs, "istio_tcp_connections_closed_total", map[string]string{"source_principal": sa("other").String(), "response_flags": "DENY"})
	if opened.GetCounter().GetValue() != 1 || received.GetCounter().GetValue() != float64(len(req)) || denied.GetCounter().GetValue() != 1 {
		t.Fatalf("tcp metrics: opened %v, received %v, denied %v", opened, received, denied)
	}
}
