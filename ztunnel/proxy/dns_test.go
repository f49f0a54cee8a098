package proxy

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/pkg/dnstest"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
)

// TestSOCKS5ResolvesOutsideTheMesh checks that a SOCKS5 destination name
// that is not a service of the mesh is resolved by the nameservers (asked
// as an absolute name, over TCP), and answered 4 when they do not know it
// or when there are none.
func TestSOCKS5ResolvesOutsideTheMesh(t *testing.T) {
	echo := echoOn(t, "127.77.1.1:0")
	dnsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dns := dnstest.Serve(dnsLn, map[string]netip.Addr{"outside.example.": echo.Addr()})
	defer dns.Close()
	certs, err := identity.NewManager(identity.AuthorityFetcher{Authority: mustCA(t)}, identity.ManagerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	unknown := func() float64 {
		return sumCounter(t, m, "ztunnel_outbound_errors_total", map[string]string{"reason": "socks5_unknown_name"})
	}
	serve := func(nameservers []netip.AddrPort) net.Addr {
		env := &Env{Config: config.Empty, Certs: certs, Metrics: m, Nameservers: nameservers}
		s := NewSOCKS5(env, "shop/client", nil)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = s.Serve(t.Context(), ln) }()
		t.Cleanup(func() { _ = s.Close() })
		return ln.Addr()
	}

	with := serve([]netip.AddrPort{dns.Addr})
	c, code := socksDialName(t, with, "Outside.Example", echo.Port())
	if code != socksSucceeded {
		t.Fatalf("outside.example: reply %d, want 0", code)
	}
	roundTrip(t, c)
	c.Close()
	if got := countOpened(t, m, map[string]string{"reporter": "source", "connection_security_policy": "none"}); got != 1 {
		t.Errorf("plain connections counted: %v, want 1", got)
	}
	for _, a := range dns.Asked() {
		if !strings.HasPrefix(a, "outside.example. ") {
			t.Errorf("the nameserver was asked %q: want only the absolute name outside.example.", a)
		}
	}
	if len(dns.Asked()) == 0 {
		t.Fatal("the nameserver was not asked")
	}

	if c, code := socksDialName(t, with, "nosuch.example", 80); code != socksHostUnreachable {
		t.Errorf("nosuch.example: reply %d, want %d", code, socksHostUnreachable)
	} else {
		c.Close()
	}
	if got := unknown(); got != 1 {
		t.Errorf("socks5_unknown_name = %v, want 1", got)
	}

	asked := len(dns.Asked())
	without := serve(nil)
	if c, code := socksDialName(t, without, "outside.example", echo.Port()); code != socksHostUnreachable {
		t.Errorf("without nameservers: reply %d, want %d", code, socksHostUnreachable)
	} else {
		c.Close()
	}
	if got := unknown(); got != 2 {
		t.Errorf("socks5_unknown_name = %v, want 2", got)
	}
	if n := len(dns.Asked()); n != asked {
		t.Errorf("without nameservers the nameserver was asked %d more times", n-asked)
	}
}
