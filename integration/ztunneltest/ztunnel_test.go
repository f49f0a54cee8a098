//go:build netns

package ztunneltest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/ambitctl"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/daemon"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

var vip = netip.MustParseAddr("10.250.255.10")

// mesh is the hand-built configuration the test publishes and edits.
type mesh struct {
	x         *xdsControl
	workloads map[string]*configv1alpha1.Workload
	service   *configv1alpha1.Service
	extra     []*configv1alpha1.Service
	authz     []*configv1alpha1.Authorization
}

func (m *mesh) publish() {
	out := &translate.Output{Services: append([]*configv1alpha1.Service{proto.Clone(m.service).(*configv1alpha1.Service)}, m.extra...)}
	for _, n := range []string{"a", "b", "c", "u", "wp"} {
		out.Workloads = append(out.Workloads, proto.Clone(m.workloads[n]).(*configv1alpha1.Workload))
	}
	out.Authorizations = append(noopAuthorization(), m.authz...)
	m.x.srv.Publish(out)
}

// TestZtunnelEndToEnd drives two ztunnels through the whole L4 data path.
func TestZtunnelEndToEnd(t *testing.T) {
	tier.RequireRoot(t)
	pods := twoNodeLab(t, []string{"a", "c", "u"}, []string{"b", "wp"})
	a, b, c, u, wp := pods["a"], pods["b"], pods["c"], pods["u"], pods["wp"]
	b.ServeEcho(t, echoPort)
	bAddr := netip.AddrPortFrom(b.IP, echoPort)
	vipAddr := netip.AddrPortFrom(vip, 80)

	ca, err := identity.NewRootAuthority(trustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	x := startXDS(t)
	m := &mesh{x: x, workloads: map[string]*configv1alpha1.Workload{
		"a":  workload(a, "node0", true),
		"c":  workload(c, "node0", true),
		"u":  workload(u, "node0", false),
		"b":  workload(b, "node1", true),
		"wp": workload(wp, "node1", false),
	}}
	m.service = &configv1alpha1.Service{
		Name: ns + "/echo", Namespace: ns, Hostname: "echo.shop.svc.cluster.local", Vips: []string{vip.String()},
		Ports: []*configv1alpha1.ServicePort{{Name: "tcp", Port: 80, TargetPort: echoPort}},
		Endpoints: []*configv1alpha1.Endpoint{
			{Workload: ns + "/b", Address: b.IP.String(), TargetPorts: map[uint32]uint32{80: echoPort}, Ready: true},
			// An unready endpoint that does not exist: never picked.
			{Workload: ns + "/gone", Address: "10.250.2.200", Ready: false},
		},
	}
	m.publish()

	files0, files1 := ztunnelFiles{dir: t.TempDir()}, ztunnelFiles{dir: t.TempDir()}
	z0 := startZtunnel(t, "node0", x.addr, files0, ca)
	z1 := startZtunnel(t, "node1", x.addr, files1, ca)
	for _, p := range []*netlab.Pod{a, c, u} {
		z0.enrol(t, p)
	}
	z1.enrol(t, b)
	eventually(t, "pods captured", func() bool {
		return z0.captured("a") && z0.captured("c") && z1.captured("b") && !z0.captured("u")
	})
	eventually(t, "ztunnels ready", func() bool { return z0.d.Ready() == nil && z1.d.Ready() == nil })
	for name, want := range map[string]string{"a": daemon.PodCaptured, "u": daemon.PodNotEnrolled} {
		if got := podDump(z0, name).State; got != want {
			t.Errorf("admin dump: pod %s state %q, want %q", name, got, want)
		}
	}

	aID, bID := spiffe("a"), spiffe("b")
	t.Run("pod to pod over HBONE", func(t *testing.T) {
		if err := a.Echo(bAddr, a.Hello(1000)); err != nil {
			t.Fatal(err)
		}
		// The server side saw a tunnel whose verified peer is pod a.
		if v := metricValue(t, z1, "istio_tcp_connections_opened_total", map[string]string{
			"reporter": "destination", "source_principal": aID, "destination_principal": bID,
			"source_workload": "a-deploy", "destination_workload": "b-deploy", "destination_workload_namespace": ns,
			"connection_security_policy": "mutual_tls", "response_flags": "-", "request_protocol": "tcp",
		}); v < 1 {
			t.Errorf("destination ztunnel counted %v HBONE connections from a", v)
		}
		if v := metricValue(t, z0, "istio_tcp_received_bytes_total", map[string]string{
			"reporter": "source", "source_principal": aID, "destination_principal": bID, "connection_security_policy": "mutual_tls",
		}); v < 1000 {
			t.Errorf("source ztunnel counted %v received bytes", v)
		}
	})

	t.Run("service VIP", func(t *testing.T) {
		for range 3 {
			if err := a.Echo(vipAddr, a.Hello(1000)); err != nil {
				t.Fatal(err)
			}
		}
		// Counted once ztunnel has seen both directions end, by both
		// sides: the destination's ztunnel learns the service from the
		// tunnel's Forwarded host=.
		for _, c := range []struct {
			z        *ztunnel
			reporter string
		}{{z0, "source"}, {z1, "destination"}} {
			eventually(t, "3 closed connections to the service, reporter "+c.reporter, func() bool {
				return metricValue(t, c.z, "istio_tcp_connections_closed_total", map[string]string{
					"reporter": c.reporter, "destination_service": "echo.shop.svc.cluster.local", "destination_workload": "b-deploy",
					"source_principal": aID, "connection_security_policy": "mutual_tls",
				}) >= 3
			})
		}
	})

	t.Run("plaintext from an unenrolled pod under PERMISSIVE", func(t *testing.T) {
		if err := u.Echo(bAddr, u.Hello(1000)); err != nil {
			t.Fatal(err)
		}
		if v := metricValue(t, z1, "istio_tcp_connections_opened_total", map[string]string{
			"reporter": "destination", "connection_security_policy": "none", "source_workload": "u-deploy",
		}); v < 1 {
			t.Errorf("destination ztunnel counted %v plaintext connections", v)
		}
	})

	t.Run("edge cases", func(t *testing.T) {
		aSID, _ := identity.ParseSPIFFEID(aID)
		bSID, _ := identity.ParseSPIFFEID(bID)
		// A tunnel whose authority is not the pod's address: 400, no relay.
		var se *hbone.StatusError
		if err := dialHBONEFrom(t, u, ca, aSID, bSID, b.IP, netip.AddrPortFrom(c.IP, echoPort)); !errors.As(err, &se) || se.Code != 400 {
			t.Errorf("foreign authority: %v, want 400", err)
		}
		// A closed port behind the tunnel: 503.
		if err := dialHBONEFrom(t, u, ca, aSID, bSID, b.IP, netip.AddrPortFrom(b.IP, 9999)); !errors.As(err, &se) || se.Code != 503 {
			t.Errorf("closed port: %v, want 503", err)
		}
		// An unenrolled destination is reached in plain TCP.
		u.ServeEcho(t, echoPort)
		if err := a.Echo(netip.AddrPortFrom(u.IP, echoPort), a.Hello(1000)); err != nil {
			t.Fatal(err)
		}
		if v := metricValue(t, z0, "istio_tcp_connections_opened_total", map[string]string{
			"reporter": "source", "source_workload": "a-deploy", "destination_workload": "u-deploy", "connection_security_policy": "none"}); v != 1 {
			t.Errorf("plain connections to u counted: %v", v)
		}
		// A service without a ready endpoint refuses the connection.
		m.extra = []*configv1alpha1.Service{{Name: ns + "/down", Namespace: ns, Vips: []string{"10.250.255.30"},
			Ports:     []*configv1alpha1.ServicePort{{Port: 80, TargetPort: echoPort}},
			Endpoints: []*configv1alpha1.Endpoint{{Workload: ns + "/b", Address: b.IP.String(), Ready: false}}}}
		m.publish()
		eventually(t, "service without endpoint refused", func() bool {
			return a.Echo(netip.MustParseAddrPort("10.250.255.30:80"), a.Hello(1000)) != nil &&
				metricValue(t, z0, "ztunnel_outbound_errors_total", map[string]string{"reason": "no_endpoint"}) >= 1
		})
		m.extra = nil
		m.publish()
	})

	t.Run("authorization policy", func(t *testing.T) {
		m.authz = []*configv1alpha1.Authorization{{
			Name: ns + "/deny-a", Namespace: ns, Scope: configv1alpha1.Authorization_SCOPE_WORKLOAD_SELECTOR,
			Action: configv1alpha1.Authorization_ACTION_DENY,
			Rules:  []*configv1alpha1.AuthorizationRule{{From: []*configv1alpha1.AuthorizationRule_Source{{Principals: []string{aID}}}}},
		}}
		m.workloads["b"].AuthorizationPolicies = []string{ns + "/deny-a"}
		m.publish()
		eventually(t, "policy applied", func() bool { return a.Echo(bAddr, a.Hello(1000)) != nil })
		if err := a.Echo(vipAddr, a.Hello(1000)); err == nil {
			t.Error("a reached b through the service despite the DENY policy")
		}
		if err := c.Echo(bAddr, c.Hello(1000)); err != nil {
			t.Errorf("c was denied: %v", err)
		}
		if v := metricValue(t, z1, "ztunnel_connections_denied_total", map[string]string{"reason": "policy"}); v < 1 {
			t.Errorf("denials counted: %v", v)
		}
		// A namespace-wide ALLOW for c only: once an ALLOW applies, what it
		// does not match is denied.
		m.authz = []*configv1alpha1.Authorization{{
			Name: ns + "/allow-c", Namespace: ns, Scope: configv1alpha1.Authorization_SCOPE_NAMESPACE,
			Action: configv1alpha1.Authorization_ACTION_ALLOW,
			Rules: []*configv1alpha1.AuthorizationRule{{
				From: []*configv1alpha1.AuthorizationRule_Source{{Principals: []string{"*/sa/c"}}},
				To:   []*configv1alpha1.AuthorizationRule_Operation{{Ports: []uint32{echoPort}}},
			}},
		}}
		m.workloads["b"].AuthorizationPolicies = nil
		m.publish()
		// Plaintext (no principal) matches no ALLOW on principals: u is
		// refused only once the ALLOW policy is in place.
		eventually(t, "ALLOW applied", func() bool { return u.Echo(bAddr, u.Hello(1000)) != nil })
		if err := a.Echo(bAddr, a.Hello(1000)); err == nil {
			t.Error("a matched an ALLOW for c")
		}
		if err := c.Echo(bAddr, c.Hello(1000)); err != nil {
			t.Errorf("c was refused by an ALLOW for c: %v", err)
		}

		// IP blocks match the client pod's own address, for tunnels (the
		// client's ztunnel dials from inside the pod) as for plaintext.
		m.authz = []*configv1alpha1.Authorization{{
			Name: ns + "/deny-a-by-address", Namespace: ns, Scope: configv1alpha1.Authorization_SCOPE_NAMESPACE,
			Action: configv1alpha1.Authorization_ACTION_DENY,
			Rules:  []*configv1alpha1.AuthorizationRule{{From: []*configv1alpha1.AuthorizationRule_Source{{IpBlocks: []string{netip.PrefixFrom(a.IP, 32).String()}}}}},
		}}
		m.publish()
		eventually(t, "ipBlocks DENY applied", func() bool { return a.Echo(bAddr, a.Hello(1000)) != nil })
		if err := c.Echo(bAddr, c.Hello(1000)); err != nil {
			t.Errorf("c was refused by a DENY of a's address: %v", err)
		}
		if err := u.Echo(bAddr, u.Hello(1000)); err != nil {
			t.Errorf("plaintext u was refused by a DENY of a's address: %v", err)
		}
		// An ALLOW of the lab's pod network except a: c and plaintext u in,
		// a out, though it has a valid identity.
		m.authz = []*configv1alpha1.Authorization{{
			Name: ns + "/allow-lab-but-a", Namespace: ns, Scope: configv1alpha1.Authorization_SCOPE_NAMESPACE,
			Action: configv1alpha1.Authorization_ACTION_ALLOW,
			Rules: []*configv1alpha1.AuthorizationRule{{From: []*configv1alpha1.AuthorizationRule_Source{{
				IpBlocks: []string{"10.250.0.0/16"}, NotIpBlocks: []string{netip.PrefixFrom(a.IP, 32).String()},
			}}}},
		}}
		m.publish()
		eventually(t, "ipBlocks ALLOW applied", func() bool {
			return a.Echo(bAddr, a.Hello(1000)) != nil && c.Echo(bAddr, c.Hello(1000)) == nil
		})
		if err := u.Echo(bAddr, u.Hello(1000)); err != nil {
			t.Errorf("plaintext u in the allowed block was refused: %v", err)
		}
		if err := a.Echo(vipAddr, a.Hello(1000)); err == nil {
			t.Error("a reached b through the service despite being outside the ALLOW's blocks")
		}
		m.authz = nil
		m.publish()
		eventually(t, "policy removed", func() bool { return a.Echo(bAddr, a.Hello(1000)) == nil })
	})

	t.Run("STRICT refuses plaintext", func(t *testing.T) {
		m.workloads["b"].MtlsMode = configv1alpha1.MTLSMode_MTLS_MODE_STRICT
		m.publish()
		eventually(t, "STRICT applied", func() bool { return u.Echo(bAddr, u.Hello(1000)) != nil })
		if err := a.Echo(bAddr, a.Hello(1000)); err != nil {
			t.Errorf("HBONE refused under STRICT: %v", err)
		}
		if v := metricValue(t, z1, "ztunnel_connections_denied_total", map[string]string{"reason": "strict"}); v < 1 {
			t.Errorf("strict refusals counted: %v", v)
		}
		// A port-level PERMISSIVE (PeerAuthentication portLevelMtls): plaintext
		// reaches that port of the STRICT pod, and no other.
		const metricsPort = 9090
		b.ServeEcho(t, metricsPort)
		m.workloads["b"].PortMtlsModes = map[uint32]configv1alpha1.MTLSMode{metricsPort: configv1alpha1.MTLSMode_MTLS_MODE_PERMISSIVE}
		m.publish()
		eventually(t, "port-level PERMISSIVE applied", func() bool {
			return u.Echo(netip.AddrPortFrom(b.IP, metricsPort), u.Hello(1000)) == nil
		})
		if err := u.Echo(bAddr, u.Hello(1000)); err == nil {
			t.Error("plaintext reached a STRICT port of b")
		}
		// And the reverse: a STRICT port on a PERMISSIVE pod.
		m.workloads["b"].MtlsMode = configv1alpha1.MTLSMode_MTLS_MODE_PERMISSIVE
		m.workloads["b"].PortMtlsModes = map[uint32]configv1alpha1.MTLSMode{metricsPort: configv1alpha1.MTLSMode_MTLS_MODE_STRICT}
		m.publish()
		eventually(t, "port-level STRICT applied", func() bool {
			return u.Echo(netip.AddrPortFrom(b.IP, metricsPort), u.Hello(1000)) != nil && u.Echo(bAddr, u.Hello(1000)) == nil
		})
		if err := a.Echo(netip.AddrPortFrom(b.IP, metricsPort), a.Hello(1000)); err != nil {
			t.Errorf("HBONE refused on a STRICT port: %v", err)
		}
		m.workloads["b"].PortMtlsModes = nil
		m.publish()
		eventually(t, "PERMISSIVE applied", func() bool { return u.Echo(bAddr, u.Hello(1000)) == nil })
	})

	t.Run("unenrolling a pod stops capture without restart", func(t *testing.T) {
		m.workloads["a"].Enrolled = false
		m.publish()
		eventually(t, "a released", func() bool { return !z0.captured("a") })
		before := metricValue(t, z1, "istio_tcp_connections_opened_total", map[string]string{
			"reporter": "destination", "connection_security_policy": "none", "source_workload": "a-deploy"})
		if err := a.Echo(bAddr, a.Hello(1000)); err != nil {
			t.Fatal(err)
		}
		after := metricValue(t, z1, "istio_tcp_connections_opened_total", map[string]string{
			"reporter": "destination", "connection_security_policy": "none", "source_workload": "a-deploy"})
		if after != before+1 {
			t.Errorf("a's connection should arrive as plaintext: %v -> %v", before, after)
		}
		m.workloads["a"].Enrolled = true
		m.publish()
		eventually(t, "a captured again", func() bool { return z0.captured("a") })
		if err := a.Echo(bAddr, a.Hello(1000)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("waypoint", func(t *testing.T) {
		wpID, _ := identity.ParseSPIFFEID(spiffe("wp"))
		bSID, _ := identity.ParseSPIFFEID(bID)
		aSID, _ := identity.ParseSPIFFEID(aID)
		fw := startFakeWaypoint(t, wp, ca, wpID, func(auth netip.AddrPort) (netip.AddrPort, identity.SPIFFEID) {
			if auth == vipAddr {
				return bAddr, bSID
			}
			return auth, bSID
		})
		ref := &configv1alpha1.WaypointRef{Gateway: ns + "/wp", Address: "10.250.255.20", Identity: wpID.String()}
		m.extra = []*configv1alpha1.Service{{Name: ns + "/wp", Namespace: ns, Vips: []string{"10.250.255.20"},
			Ports:     []*configv1alpha1.ServicePort{{Name: "mesh", Port: 15008, TargetPort: 15008}},
			Endpoints: []*configv1alpha1.Endpoint{{Workload: ns + "/wp", Address: wp.IP.String(), Ready: true}}}}
		m.service.Waypoint = ref
		m.workloads["b"].Waypoint = ref
		m.publish()
		eventually(t, "service traffic through the waypoint", func() bool {
			return a.Echo(vipAddr, a.Hello(1000)) == nil && fw.saw(vipAddr.String()+" "+aID)
		})
		// Workloads and Services arrive as separate xDS types: wait for b's
		// waypoint too.
		eventually(t, "pod traffic through the waypoint", func() bool {
			return a.Echo(bAddr, a.Hello(1000)) == nil && fw.saw(bAddr.String()+" "+aID)
		})
		h := fw.lastHeader()
		if got := h.Get("Forwarded"); got != "for="+a.IP.String() {
			t.Errorf("forwarded header %q", got)
		}
		// The waypoint passes a's connection through and names a in its
		// tunnel's Forwarded: b's application sees a's address, as without
		// the mesh, not the waypoint's.
		b.ServeWhoami(t, 8082)
		sawFrom, _, err := a.Whoami(netip.AddrPortFrom(b.IP, 8082))
		if err != nil || sawFrom.Addr() != a.IP || !fw.saw(netip.AddrPortFrom(b.IP, 8082).String()+" "+aID) {
			t.Errorf("through the waypoint b's application saw %v (%v), want a's address %s", sawFrom, err, a.IP)
		}
		if got := h.Get("Baggage"); !contains(got, "k8s.namespace.name=shop", "k8s.pod.name=a", "k8s.workload.name=a-deploy", "service.name=a") {
			t.Errorf("baggage header %q", got)
		}
		// b now accepts tunnels only from its waypoint.
		if v := metricValue(t, z1, "istio_tcp_connections_opened_total", map[string]string{
			"reporter": "destination", "source_principal": wpID.String(), "connection_security_policy": "mutual_tls"}); v < 2 {
			t.Errorf("b counted %v tunnels from the waypoint", v)
		}
		err = dialHBONEFrom(t, u, ca, aSID, bSID, b.IP, bAddr)
		var se *hbone.StatusError
		if !errors.As(err, &se) || se.Code != 403 {
			t.Errorf("a tunnel that bypasses the waypoint: %v, want 403", err)
		}
		m.extra = nil
		m.service.Waypoint = nil
		m.workloads["b"].Waypoint = nil
		m.publish()
		// Both ztunnels must have the change: b's accepts a direct tunnel,
		// a's no longer routes to the waypoint, which stops with this
		// subtest. a's echo alone would pass through the waypoint.
		eventually(t, "waypoint removed", func() bool {
			return !z0.hasWaypoint(ns+"/b", ns+"/echo") && !z1.hasWaypoint(ns+"/b", ns+"/echo") &&
				dialHBONEFrom(t, u, ca, aSID, bSID, b.IP, bAddr) == nil && a.Echo(bAddr, a.Hello(10)) == nil
		})
		seen := fw.count()
		if err := a.Echo(bAddr, a.Hello(10)); err != nil {
			t.Fatal(err)
		}
		if fw.count() != seen {
			t.Error("a's traffic to b still goes through the removed waypoint")
		}
	})

	t.Run("identity change recaptures the pod", func(t *testing.T) {
		// A connection open across the change drains: it keeps working.
		var long net.Conn
		if err := a.Do(func() (err error) { long, err = net.DialTimeout("tcp", bAddr.String(), 3*time.Second); return err }); err != nil {
			t.Fatal(err)
		}
		defer long.Close()
		_ = long.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 5)
		if _, err := long.Write([]byte("first")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(long, buf); err != nil || string(buf) != "first" {
			t.Fatalf("long-lived connection: %q %v", buf, err)
		}
		m.workloads["b"].ServiceAccount = "b2"
		m.workloads["b"].Identity = spiffe("b2")
		m.publish()
		eventually(t, "b serves as b2", func() bool {
			return a.Echo(bAddr, a.Hello(1000)) == nil && metricValue(t, z1, "istio_tcp_connections_opened_total", map[string]string{
				"reporter": "destination", "destination_principal": spiffe("b2"), "source_principal": aID}) >= 1
		})
		if _, err := long.Write([]byte("after")); err != nil {
			t.Fatalf("write after the change: %v", err)
		}
		if err := long.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if rest, err := io.ReadAll(long); err != nil || string(rest) != "after" {
			t.Errorf("connection across the identity change: %q %v", rest, err)
		}
		m.workloads["b"].ServiceAccount = "b"
		m.workloads["b"].Identity = bID
		m.publish()
		eventually(t, "b serves as b again", func() bool {
			for _, c := range z1.d.Certs().Snapshot().Identities {
				if c.ID == spiffe("b2") {
					return false
				}
			}
			return a.Echo(bAddr, a.Hello(1000)) == nil
		})
	})

	t.Run("malformed configuration is rejected and the last good one kept", func(t *testing.T) {
		nacks := z0.d.XDS().Status().Nacks
		bad := proto.Clone(m.workloads["c"]).(*configv1alpha1.Workload)
		bad.Addresses = []string{"not-an-ip"}
		good := m.workloads["c"]
		m.workloads["c"] = bad
		m.publish()
		eventually(t, "NACK", func() bool { return z0.d.XDS().Status().Nacks > nacks })
		if err := c.Echo(bAddr, c.Hello(1000)); err != nil {
			t.Errorf("traffic with the last good configuration: %v", err)
		}
		if w := z0.d.Store().Snapshot().Workload(ns + "/c"); w == nil || len(w.Addresses) != 1 || w.Addresses[0] != c.IP {
			t.Errorf("workload c after the NACK: %+v", w)
		}
		acks := z0.d.XDS().Status().Acks
		m.workloads["c"] = good
		m.publish()
		eventually(t, "good config accepted again", func() bool { return z0.d.XDS().Status().Acks > acks })
	})

	t.Run("metrics and admin over HTTP", func(t *testing.T) {
		body := httpGet(t, "http://"+z1.d.HTTPAddr("metrics").String()+"/metrics")
		if !contains(body, "istio_tcp_connections_opened_total{", `source_principal="`+aID+`"`, "ztunnel_enrolled_pods 1", "ztunnel_xds_connected 1") {
			t.Errorf("metrics page lacks expected series:\n%s", body)
		}
		if ready := httpGet(t, "http://"+z1.d.HTTPAddr("ready").String()+"/healthz/ready"); ready != "ready\n" {
			t.Errorf("readiness: %q", ready)
		}
		dump := httpGet(t, "http://"+z1.d.HTTPAddr("admin").String()+"/config_dump")
		if !contains(dump, `"shop/b"`, `"echo.shop.svc.cluster.local"`, `"captured": true`, `"table": "inet ambit"`, bID) || contains(dump, "PRIVATE KEY") {
			t.Errorf("config dump:\n%s", dump)
		}
		// ambitctl ztunnel-config reads the same document.
		var tables strings.Builder
		if err := ambitctl.WriteZtunnelConfig(&tables, []byte(dump), "all", "table", ""); err != nil {
			t.Fatalf("ambitctl: %v", err)
		}
		if !contains(tables.String(), "ztunnel on node node1: ready: ready; controller: connected", "captured", bID, "echo", "NOT AFTER") {
			t.Errorf("ambitctl ztunnel-config all:\n%s", tables.String())
		}
	})

	t.Run("removing a pod uncaptures it", func(t *testing.T) {
		if _, err := z0.client.RemovePod(t.Context(), "uid-c", ""); err != nil {
			t.Fatal(err)
		}
		cns, err := redirect.OpenNetns(c.NetnsPath())
		if err != nil {
			t.Fatal(err)
		}
		defer cns.Close()
		if rules, err := redirect.Rules(t.Context(), cns); err != nil || rules.Installed {
			t.Errorf("rules after removal: %+v, %v", rules, err)
		}
		if err := c.Echo(bAddr, c.Hello(1000)); err != nil {
			t.Fatal(err)
		}
		if v := metricValue(t, z1, "istio_tcp_connections_opened_total", map[string]string{
			"reporter": "destination", "connection_security_policy": "none", "source_workload": "c-deploy"}); v != 1 {
			t.Errorf("c's plaintext connections counted: %v", v)
		}
		z0.enrol(t, c)
		if !z0.captured("c") {
			t.Error("c not captured again")
		}
	})

	t.Run("restart resyncs pods and starts from persisted config", func(t *testing.T) {
		// Graceful drain: a connection open when ztunnel stops goes on until
		// it closes (within the shutdown drain), and then ztunnel exits.
		var long net.Conn
		if err := a.Do(func() (err error) { long, err = net.DialTimeout("tcp", bAddr.String(), 3*time.Second); return err }); err != nil {
			t.Fatal(err)
		}
		roundTrip := func() error {
			_ = long.SetDeadline(time.Now().Add(3 * time.Second))
			msg := []byte("still here")
			if _, err := long.Write(msg); err != nil {
				return err
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(long, got); err != nil {
				return err
			}
			if string(got) != string(msg) {
				return fmt.Errorf("echo %q, want %q", got, msg)
			}
			return nil
		}
		if err := roundTrip(); err != nil {
			t.Fatal(err)
		}
		stopped := make(chan time.Duration, 1)
		begin := time.Now()
		go func() { z1.stop(); stopped <- time.Since(begin) }()
		time.Sleep(300 * time.Millisecond)
		if err := roundTrip(); err != nil {
			t.Errorf("an open connection broke while ztunnel drained: %v", err)
		}
		select {
		case <-stopped:
			t.Error("ztunnel stopped before its open connection closed")
		default:
		}
		long.Close()
		select {
		case d := <-stopped:
			if d > 4*time.Second {
				t.Errorf("ztunnel took %v to stop after the last connection closed", d)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("ztunnel did not stop after its drain")
		}
		x.g.Stop()
		// While ztunnel is away the rules stay: b is not reachable around the mesh.
		if err := u.Echo(bAddr, u.Hello(1000)); err == nil {
			t.Error("plaintext reached b while its ztunnel was down")
		}
		z1b := startZtunnel(t, "node1", x.addr, files1, ca)
		eventually(t, "b captured after restart", func() bool { return z1b.captured("b") && z1b.d.Ready() == nil })
		if st := z1b.d.XDS().Status(); !st.FromDisk || st.Connected {
			t.Errorf("xds status after restart without controller: %+v", st)
		}
		eventually(t, "a reaches b again", func() bool { return a.Echo(bAddr, a.Hello(1000)) == nil })
		if err := c.Echo(vipAddr, c.Hello(1000)); err != nil {
			t.Error(err)
		}
		if v := metricValue(t, z1b, "istio_tcp_connections_opened_total", map[string]string{
			"reporter": "destination", "source_principal": spiffe("c"), "connection_security_policy": "mutual_tls"}); v < 1 {
			t.Errorf("restarted ztunnel counted %v tunnels from c", v)
		}

		// Stopped ztunnels leave no goroutine of the data path behind.
		if leftovers() == "" {
			t.Fatal("the leak check sees no ztunnel goroutine while ztunnels run")
		}
		z0.stop()
		z1b.stop()
		deadline := time.Now().Add(5 * time.Second)
		for left := leftovers(); left != ""; left = leftovers() {
			if time.Now().After(deadline) {
				t.Fatalf("goroutines left after stopping the ztunnels:\n%s", left)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// leftovers returns the stacks of goroutines still running ztunnel or
// HBONE code, or "".
func leftovers() string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "ambit/ztunnel/") || strings.Contains(g, "ambit/pkg/hbone.") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}
