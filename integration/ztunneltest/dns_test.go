//go:build netns

package ztunneltest

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/pkg/dnstest"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/daemon"
)

// podResolver resolves from inside pod p through the nameserver at ns over
// UDP, as the pod's resolv.conf would have it: each socket is opened in the
// pod's namespace, so the capture rules see the query.
func podResolver(p *netlab.Pod, ns netip.AddrPort) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var c net.Conn
		err := p.Do(func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, "udp", ns.String())
			return err
		})
		return c, err
	}}
}

// TestDNSCapture: with -dns-capture, pod a's DNS query to the cluster's
// nameserver (in pod u here) over UDP is captured in a's namespace: the
// hostname of a service of the mesh is answered by ztunnel with the
// service's VIP without the nameserver seeing it, and another name is
// forwarded to the nameserver from inside the pod, its answer coming back
// as if from the nameserver's address (the pod's resolver only accepts
// that). Released, the pod asks the nameserver itself again.
func TestDNSCapture(t *testing.T) {
	tier.RequireRoot(t)
	l := newEchoServiceLab(t)
	a, u, b := l.a, l.u, l.b
	ca, svcVIP, x, workloads, publish := l.ca, echoServiceVIP, l.x, l.workloads, l.publish
	// The cluster's nameserver, in pod u on port 53 (UDP).
	var pc net.PacketConn
	if err := u.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(u.IP, 53).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	upstream := dnstest.ServePacket(pc, map[string]netip.Addr{"outside.example.": b.IP})
	t.Cleanup(func() { _ = upstream.Close() })

	z0 := startZtunnel(t, "node0", x.addr, ztunnelFiles{dir: t.TempDir()}, ca, func(c *daemon.Config) {
		c.DNSCapture = true
		c.SOCKS5Nameservers = []netip.AddrPort{upstream.Addr}
	})
	startZtunnel(t, "node1", x.addr, ztunnelFiles{dir: t.TempDir()}, ca)
	z0.enrol(t, a)
	z0.enrol(t, u)
	eventually(t, "pod a captured", func() bool { return z0.captured("a") && !z0.captured("u") })

	r := podResolver(a, upstream.Addr)
	lookup := func(name string) ([]netip.Addr, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		return r.LookupNetIP(ctx, "ip4", name)
	}
	got, err := lookup("echo.shop.svc.cluster.local.")
	if err != nil || !slices.Equal(got, []netip.Addr{svcVIP}) {
		t.Fatalf("echo from pod a: %v, %v; want %v", got, err, svcVIP)
	}
	if slices.Contains(upstream.Asked(), "echo.shop.svc.cluster.local. TypeA") {
		t.Error("the nameserver was asked for a service of the mesh")
	}
	got, err = lookup("outside.example.")
	if err != nil || !slices.Equal(got, []netip.Addr{b.IP}) {
		t.Fatalf("outside.example. from pod a: %v, %v; want %v (asked: %v)", got, err, b.IP, upstream.Asked())
	}
	if !slices.Contains(upstream.Asked(), "outside.example. TypeA") {
		t.Errorf("the nameserver was not asked for outside.example.: %v", upstream.Asked())
	}
	if v := metricValue(t, z0, "ztunnel_dns_requests_total", map[string]string{"result": "local"}); v < 1 {
		t.Errorf("local answers counted: %v", v)
	}
	if v := metricValue(t, z0, "ztunnel_dns_requests_total", map[string]string{"result": "forwarded"}); v < 1 {
		t.Errorf("forwarded answers counted: %v", v)
	}
	// Pod u is not captured: its queries reach the nameserver.
	if _, err := podResolver(u, upstream.Addr).LookupNetIP(t.Context(), "ip4", "echo.shop.svc.cluster.local."); err == nil {
		t.Error("pod u, outside the mesh, got an answer for the mesh's service from a nameserver that does not know it")
	}

	// Released: the nameserver answers pod a itself ("no such name").
	workloads["a"] = workload(a, "node0", false)
	publish()
	eventually(t, "pod a released", func() bool { return !z0.captured("a") })
	_, err = lookup("echo.shop.svc.cluster.local.")
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsNotFound {
		t.Errorf("echo from released pod a: %v, want the nameserver's no such name", err)
	}

	// Captured again with dnsPolicy Default: its DNS (the node's resolver,
	// which ztunnel does not know) is left alone, its TCP is captured.
	def := workload(a, "node0", true)
	def.Dns = &configv1alpha1.DNSConfig{Policy: configv1alpha1.DNSConfig_POLICY_DEFAULT, Ndots: 1}
	workloads["a"] = def
	publish()
	eventually(t, "pod a captured again", func() bool { return z0.captured("a") })
	_, err = lookup("echo.shop.svc.cluster.local.")
	if !errors.As(err, &de) || !de.IsNotFound {
		t.Errorf("echo from pod a with dnsPolicy Default: %v, want the nameserver's no such name", err)
	}
}

// TestDNSCaptureIPv6: in a dual-stack lab, a query to an IPv6 nameserver
// is captured too (redirected to [::1]:15053): the service's IPv6 and IPv4
// VIPs come from ztunnel, another name from the nameserver, forwarded over
// IPv6 from inside the pod.
func TestDNSCaptureIPv6(t *testing.T) {
	tier.RequireRoot(t)
	pods := twoNodeLab(t, []string{"a", "u"}, []string{"b"}, netlab.DualStack())
	a, u, b := pods["a"], pods["u"], pods["b"]
	ca, err := identity.NewRootAuthority(trustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	x := startXDS(t)
	x.srv.Publish(&translate.Output{
		Workloads: []*configv1alpha1.Workload{workload(a, "node0", true), workload(u, "node0", false), workload(b, "node1", true)},
		Services: []*configv1alpha1.Service{{
			Name: ns + "/echo", Namespace: ns, Hostname: "echo.shop.svc.cluster.local", Vips: []string{vip.String(), vip6.String()},
			Ports: []*configv1alpha1.ServicePort{{Name: "tcp", Port: 80, TargetPort: echoPort}},
		}},
		Authorizations: noopAuthorization(),
	})
	var pc net.PacketConn
	if err := u.Do(func() (err error) {
		pc, err = net.ListenPacket("udp6", netip.AddrPortFrom(u.IP6, 53).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	upstream := dnstest.ServePacket(pc, map[string]netip.Addr{"outside.example.": b.IP6})
	t.Cleanup(func() { _ = upstream.Close() })
	z0 := startZtunnel(t, "node0", x.addr, ztunnelFiles{dir: t.TempDir()}, ca, func(c *daemon.Config) {
		c.DNSCapture = true
		c.SOCKS5Nameservers = []netip.AddrPort{upstream.Addr}
	})
	z0.enrol(t, a)
	eventually(t, "pod a captured", func() bool { return z0.captured("a") })

	r := podResolver(a, upstream.Addr)
	for _, c := range []struct {
		network, name string
		want          netip.Addr
	}{
		{"ip6", "echo.shop.svc.cluster.local.", vip6},
		{"ip4", "echo.shop.svc.cluster.local.", vip},
		{"ip6", "outside.example.", b.IP6},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		got, err := r.LookupNetIP(ctx, c.network, c.name)
		cancel()
		if err != nil || !slices.Equal(got, []netip.Addr{c.want}) {
			t.Errorf("%s %s from pod a over IPv6: %v, %v; want %v (the nameserver was asked %v)", c.network, c.name, got, err, c.want, upstream.Asked())
		}
	}
	if slices.ContainsFunc(upstream.Asked(), func(q string) bool { return strings.HasPrefix(q, "echo.") }) {
		t.Errorf("the nameserver was asked for a service of the mesh: %v", upstream.Asked())
	}
}
