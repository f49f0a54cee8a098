package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/dnstest"
	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
)

// startPodDNS serves a DNSServer for shop/client on a loopback UDP port
// and returns a resolver that asks it, as the pod's resolver would once
// its query is redirected.
func startPodDNS(t *testing.T, env *Env) (*DNSServer, *net.Resolver, net.Addr) {
	t.Helper()
	s := NewPodDNS(env, "shop/client", func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "udp", dst.String())
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Serve(pc)
	t.Cleanup(func() { _ = s.Close() })
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "udp", pc.LocalAddr().String())
	}}
	return s, r, pc.LocalAddr()
}

// dnsSnapshot: Service shop/echo (one IPv4 and one IPv6 VIP), headless
// shop/db (no VIP), and the client workload.
func dnsSnapshot(t *testing.T) *config.Snapshot {
	t.Helper()
	echo := mustService(t, &configv1alpha1.Service{Name: "shop/echo", Namespace: "shop", Hostname: "echo.shop.svc.cluster.local",
		Vips: []string{"10.96.0.20", "fd00::20"}, Ports: []*configv1alpha1.ServicePort{{Port: 80, TargetPort: 8080}}})
	db := mustService(t, &configv1alpha1.Service{Name: "shop/db", Namespace: "shop", Hostname: "db.shop.svc.cluster.local",
		Ports: []*configv1alpha1.ServicePort{{Port: 5432, TargetPort: 5432}}})
	client := mustWorkload(t, &configv1alpha1.Workload{Name: "shop/client", Namespace: "shop",
		Dns: &configv1alpha1.DNSConfig{Policy: configv1alpha1.DNSConfig_POLICY_CLUSTER_FIRST, Ndots: 5,
			Searches: []string{"shop.svc.cluster.local", "svc.cluster.local", "cluster.local"}}})
	return config.Build([]*config.Workload{client}, []*config.Service{echo, db}, nil)
}

// TestPodDNSAnswersMeshServices: a service's hostname is answered from the
// configuration (its VIPs of the asked family, also through the search
// list), without asking the nameserver; other names (a headless service
// among them) are forwarded and their answers, "no such name" included,
// come back as the nameserver gave them.
func TestPodDNSAnswersMeshServices(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upstream := dnstest.ServePacket(pc, map[string]netip.Addr{
		"outside.example.":           netip.MustParseAddr("192.0.2.9"),
		"db.shop.svc.cluster.local.": netip.MustParseAddr("10.7.0.5"),
	})
	t.Cleanup(func() { _ = upstream.Close() })
	snap := dnsSnapshot(t)
	m := metrics.New()
	_, r, _ := startPodDNS(t, &Env{Config: func() *config.Snapshot { return snap }, Metrics: m, Nameservers: []netip.AddrPort{upstream.Addr}})

	for _, c := range []struct{ network, name, want string }{
		{"ip4", "echo.shop.svc.cluster.local.", "10.96.0.20"},
		{"ip6", "ECHO.shop.svc.cluster.local.", "fd00::20"},
		{"ip4", "outside.example.", "192.0.2.9"},
		{"ip4", "db.shop.svc.cluster.local.", "10.7.0.5"},
	} {
		got, err := r.LookupNetIP(t.Context(), c.network, c.name)
		if err != nil || !slices.Equal(got, []netip.Addr{netip.MustParseAddr(c.want)}) {
			t.Errorf("%s %s: %v, %v; want %s", c.network, c.name, got, err, c.want)
		}
	}
	for _, a := range upstream.Asked() {
		if a == "echo.shop.svc.cluster.local. TypeA" || a == "echo.shop.svc.cluster.local. TypeAAAA" {
			t.Errorf("the nameserver was asked %q, a service of the mesh", a)
		}
	}
	if !slices.Contains(upstream.Asked(), "outside.example. TypeA") {
		t.Errorf("the nameserver was not asked for outside.example.: %v", upstream.Asked())
	}
	_, err = r.LookupNetIP(t.Context(), "ip4", "nosuch.example.")
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsNotFound {
		t.Errorf("nosuch.example.: %v, want not found", err)
	}
	if local := sumCounter(t, m, "ztunnel_dns_requests_total", map[string]string{"result": "local"}); local != 2 {
		t.Errorf("answered locally: %v, want 2", local)
	}
	if fwd := sumCounter(t, m, "ztunnel_dns_requests_total", map[string]string{"result": "forwarded"}); fwd < 3 {
		t.Errorf("forwarded: %v, want at least 3", fwd)
	}
}

// TestPodDNSFailures: with no nameserver answering, a forwarded query gets
// SERVFAIL (not "no such name", not silence); a malformed message gets no
// answer; a service of the mesh is still answered.
func TestPodDNSFailures(t *testing.T) {
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().(*net.UDPAddr).AddrPort()
	_ = dead.Close() // nothing listens: the forward is refused at once
	snap := dnsSnapshot(t)
	m := metrics.New()
	_, r, addr := startPodDNS(t, &Env{Config: func() *config.Snapshot { return snap }, Metrics: m, Nameservers: []netip.AddrPort{deadAddr}})

	_, err = r.LookupNetIP(t.Context(), "ip4", "outside.example.")
	var de *net.DNSError
	if !errors.As(err, &de) || de.IsNotFound || de.IsTimeout {
		t.Errorf("outside.example. with no nameserver: %v, want a server failure", err)
	}
	if got, err := r.LookupNetIP(t.Context(), "ip4", "echo.shop.svc.cluster.local."); err != nil || len(got) != 1 {
		t.Errorf("echo with no nameserver: %v, %v", got, err)
	}
	if failed := sumCounter(t, m, "ztunnel_dns_requests_total", map[string]string{"result": "failed"}); failed < 1 {
		t.Errorf("failed: %v", failed)
	}

	c, err := net.Dial("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("not dns")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := c.Read(make([]byte, 512)); err == nil {
		t.Errorf("a malformed query was answered (%d bytes)", n)
	}
	if bad := sumCounter(t, m, "ztunnel_dns_requests_total", map[string]string{"result": "malformed"}); bad != 1 {
		t.Errorf("malformed: %v, want 1", bad)
	}
}
