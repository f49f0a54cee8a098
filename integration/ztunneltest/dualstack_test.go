//go:build netns

package ztunneltest

import (
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// vip6 is the echo Service's IPv6 VIP in TestDualStack: inside the lab's
// IPv6 range, on no interface.
var vip6 = netip.MustParseAddr("fdab:250:ff00:ffff::10")

const whoamiPort = 8081

// TestDualStack runs the L4 data path over IPv6 in a dual-stack lab, where
// every pod has an IPv4 and an IPv6 address and the Workloads, the
// enrolments and the Service list both, as the controller sends them for a
// dual-stack cluster:
//
//   - a pod's connection to another pod's IPv6 address is captured and
//     carried in HBONE over IPv6 (mutual TLS from the client's identity),
//     and the application sees the client's IPv6 address;
//   - a connection to the Service's IPv6 VIP goes to the endpoint's IPv6
//     address and one to its IPv4 VIP to the IPv4 one (the Service's
//     endpoints hold both families, as its two EndpointSlices do), every
//     time;
//   - plaintext from a pod outside the mesh reaches the IPv6 address under
//     PERMISSIVE.
func TestDualStack(t *testing.T) {
	tier.RequireRoot(t)
	pods := twoNodeLab(t, []string{"a", "u"}, []string{"b"}, netlab.DualStack())
	a, u, b := pods["a"], pods["u"], pods["b"]
	b.ServeEcho(t, echoPort)
	b.ServeWhoami(t, whoamiPort)

	ca, err := identity.NewRootAuthority(trustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	x := startXDS(t)
	ports := map[uint32]uint32{80: echoPort, 81: whoamiPort}
	x.srv.Publish(&translate.Output{
		Workloads: []*configv1alpha1.Workload{workload(a, "node0", true), workload(u, "node0", false), workload(b, "node1", true)},
		Services: []*configv1alpha1.Service{{
			Name: ns + "/echo", Namespace: ns, Hostname: "echo.shop.svc.cluster.local", Vips: []string{vip.String(), vip6.String()},
			Ports: []*configv1alpha1.ServicePort{{Name: "tcp", Port: 80, TargetPort: echoPort}, {Name: "whoami", Port: 81, TargetPort: whoamiPort}},
			Endpoints: []*configv1alpha1.Endpoint{
				{Workload: ns + "/b", Address: b.IP.String(), TargetPorts: ports, Ready: true},
				{Workload: ns + "/b", Address: b.IP6.String(), TargetPorts: ports, Ready: true},
			},
		}},
		Authorizations: noopAuthorization(),
	})
	z0 := startZtunnel(t, "node0", x.addr, ztunnelFiles{dir: t.TempDir()}, ca)
	z1 := startZtunnel(t, "node1", x.addr, ztunnelFiles{dir: t.TempDir()}, ca)
	z0.enrol(t, a)
	z0.enrol(t, u)
	z1.enrol(t, b)
	eventually(t, "pods captured, ztunnels ready", func() bool {
		return z0.captured("a") && z1.captured("b") && !z0.captured("u") && z0.d.Ready() == nil && z1.d.Ready() == nil
	})

	// tunnels counts the tunnels b's ztunnel accepted from a's identity.
	tunnels := func() float64 {
		return metricValue(t, z1, "istio_tcp_connections_opened_total", map[string]string{
			"reporter": "destination", "source_principal": spiffe("a"), "destination_principal": spiffe("b"),
			"connection_security_policy": "mutual_tls",
		})
	}
	// whoami connects a to dst and checks that b's application saw a's
	// address want, over a tunnel.
	whoami := func(t *testing.T, dst netip.AddrPort, want netip.Addr) {
		t.Helper()
		before := tunnels()
		seen, _, err := a.Whoami(dst)
		if err != nil {
			t.Fatal(err)
		}
		if seen.Addr().Unmap() != want {
			t.Errorf("a -> %s: the application saw %s, want a's %s", dst, seen.Addr(), want)
		}
		if got := tunnels(); got != before+1 {
			t.Errorf("a -> %s: b's ztunnel counted %v new tunnels from a, want 1 (the connection bypassed the mesh)", dst, got-before)
		}
	}

	t.Run("pod to pod over IPv6", func(t *testing.T) {
		if err := a.Echo(netip.AddrPortFrom(b.IP6, echoPort), a.Hello(5000)); err != nil {
			t.Fatal(err)
		}
		whoami(t, netip.AddrPortFrom(b.IP6, whoamiPort), a.IP6)
	})

	t.Run("service VIP of each family", func(t *testing.T) {
		// Several in a row per family: ztunnel picks among endpoints
		// round-robin, which alternating families would hide.
		for _, v := range []struct{ vip, from netip.Addr }{{vip6, a.IP6}, {vip, a.IP}} {
			for range 4 {
				whoami(t, netip.AddrPortFrom(v.vip, 81), v.from)
			}
		}
		if err := a.Echo(netip.AddrPortFrom(vip6, 80), a.Hello(5000)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a tunnel over IPv4 to the IPv6 address", func(t *testing.T) {
		// A peer may tunnel over one family to an address of the other.
		// The client's address cannot be kept across families, so the
		// application sees the pod's own IPv6 address.
		aSID, bSID := identity.SPIFFEID{TrustDomain: trustDomain, Namespace: ns, ServiceAccount: "a"},
			identity.SPIFFEID{TrustDomain: trustDomain, Namespace: ns, ServiceAccount: "b"}
		c, err := tunnelFrom(t, u, ca, aSID, bSID, b.IP, netip.AddrPortFrom(b.IP6, whoamiPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		seen, err := netip.ParseAddrPort(strings.TrimSpace(string(line)))
		if err != nil {
			t.Fatalf("whoami answered %q: %v", line, err)
		}
		if seen.Addr().Unmap() != b.IP6 {
			t.Errorf("the application saw %s, want the pod's own %s", seen.Addr(), b.IP6)
		}
	})

	t.Run("plaintext over IPv6 under PERMISSIVE", func(t *testing.T) {
		if err := u.Echo(netip.AddrPortFrom(b.IP6, echoPort), u.Hello(1000)); err != nil {
			t.Fatal(err)
		}
		seen, _, err := u.Whoami(netip.AddrPortFrom(b.IP6, whoamiPort))
		if err != nil {
			t.Fatal(err)
		}
		if seen.Addr().Unmap() != u.IP6 {
			t.Errorf("u -> b: the application saw %s, want u's %s", seen.Addr(), u.IP6)
		}
	})
}
