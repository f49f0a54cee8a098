package proxy

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/dnstest"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
)

// serveDNS runs a DNS server on addr until the test ends.
func serveDNS(t *testing.T, addr string, table map[string]netip.Addr) *dnstest.Server {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := dnstest.Serve(ln, table)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// serveSOCKS5 runs a node-level SOCKS5 server for shop/client on a
// loopback port until the test ends.
func serveSOCKS5(t *testing.T, env *Env) net.Addr {
	t.Helper()
	s := NewSOCKS5(env, "shop/client", nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(t.Context(), ln) }()
	t.Cleanup(func() { _ = s.Close() })
	return ln.Addr()
}

// TestSOCKS5ResolvesOutsideTheMesh checks that a SOCKS5 destination name
// that is not a service of the mesh is resolved by the nameservers (asked
// as an absolute name, over TCP), and answered 4 when they do not know it
// or when there are none.
func TestSOCKS5ResolvesOutsideTheMesh(t *testing.T) {
	echo := echoOn(t, "127.77.1.1:0")
	dns := serveDNS(t, "127.0.0.1:0", map[string]netip.Addr{"outside.example.": echo.Addr()})
	certs, err := identity.NewManager(identity.AuthorityFetcher{Authority: mustCA(t)}, identity.ManagerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	unknown := func() float64 {
		return sumCounter(t, m, "ztunnel_outbound_errors_total", map[string]string{"reason": "socks5_unknown_name"})
	}
	serve := func(nameservers []netip.AddrPort) net.Addr {
		return serveSOCKS5(t, &Env{Config: config.Empty, Certs: certs, Metrics: m, Nameservers: nameservers})
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

// TestResolverNames checks the search-list expansion: glibc's order by
// ndots, and a final dot that turns it off.
func TestResolverNames(t *testing.T) {
	r := resolver{searches: []string{"shop.svc.cluster.local", "corp.example."}, ndots: 2}
	for name, want := range map[string][]string{
		"db":           {"db.shop.svc.cluster.local.", "db.corp.example.", "db."},
		"db.other":     {"db.other.shop.svc.cluster.local.", "db.other.corp.example.", "db.other."},
		"a.b.example":  {"a.b.example.", "a.b.example.shop.svc.cluster.local.", "a.b.example.corp.example."},
		"db.example.":  {"db.example."},
		"db.other.svc": {"db.other.svc.", "db.other.svc.shop.svc.cluster.local.", "db.other.svc.corp.example."},
	} {
		if got := r.names(name); !slices.Equal(got, want) {
			t.Errorf("names(%q) = %q, want %q", name, got, want)
		}
	}
	if got := (resolver{ndots: 1}).names("db"); !slices.Equal(got, []string{"db."}) {
		t.Errorf("without a search list: %q", got)
	}
}

// TestResolverFor checks whose nameservers a workload's lookups go to:
// ztunnel's (the cluster's DNS) first unless the pod's dnsPolicy is None,
// then the pod's own, without duplicates and at most three, as the kubelet
// writes a resolv.conf.
func TestResolverFor(t *testing.T) {
	defer func(p uint16) { podNameserverPort = p }(podNameserverPort)
	podNameserverPort = 53
	cluster := []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:53"), netip.MustParseAddrPort("10.96.0.11:53")}
	wl := func(name string, d *configv1alpha1.DNSConfig) *config.Workload {
		return mustWorkload(t, &configv1alpha1.Workload{Name: name, Addresses: []string{"10.0.0.9"}, Identity: sid("x"), Dns: d})
	}
	snap := config.Build([]*config.Workload{
		wl("shop/first", &configv1alpha1.DNSConfig{Policy: configv1alpha1.DNSConfig_POLICY_CLUSTER_FIRST, Ndots: 5,
			Searches: []string{"shop.svc.cluster.local"}, Nameservers: []string{"10.96.0.11", "192.0.2.1", "192.0.2.2"}}),
		wl("shop/none", &configv1alpha1.DNSConfig{Policy: configv1alpha1.DNSConfig_POLICY_NONE, Ndots: 1,
			Nameservers: []string{"2001:db8::1", "::ffff:192.0.2.3"}}),
		wl("shop/old", nil),
	}, nil, nil)
	ap := netip.MustParseAddrPort
	for _, c := range []struct {
		source  string
		servers []netip.AddrPort
		ndots   int
	}{
		{"shop/first", []netip.AddrPort{cluster[0], cluster[1], ap("192.0.2.1:53")}, 5},
		{"shop/none", []netip.AddrPort{ap("[2001:db8::1]:53"), ap("192.0.2.3:53")}, 1},
		{"shop/old", cluster, 1},
		{"shop/unknown", cluster, 1},
	} {
		r := resolverFor(snap, c.source, cluster)
		if !slices.Equal(r.servers, c.servers) || r.ndots != c.ndots {
			t.Errorf("%s: servers %v ndots %d, want %v ndots %d", c.source, r.servers, r.ndots, c.servers, c.ndots)
		}
	}
}

// TestSOCKS5UsesThePodsDNSSettings checks that a name outside the mesh is
// resolved with the source pod's DNS settings: its search list, the
// cluster's DNS first and the pod's own nameservers only when it fails
// under ClusterFirst, and only the pod's own under None.
func TestSOCKS5UsesThePodsDNSSettings(t *testing.T) {
	echo := echoOn(t, "127.77.1.2:0")
	cluster := serveDNS(t, "127.0.0.1:0", map[string]netip.Addr{"db.shop.svc.cluster.local.": echo.Addr()})
	pod := serveDNS(t, "127.77.4.53:0", map[string]netip.Addr{"web.corp.example.": echo.Addr()})
	defer func(p uint16) { podNameserverPort = p }(podNameserverPort)
	podNameserverPort = pod.Addr.Port()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().(*net.TCPAddr).AddrPort()
	dead.Close()

	certs, err := identity.NewManager(identity.AuthorityFetcher{Authority: mustCA(t)}, identity.ManagerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var snap atomic.Pointer[config.Snapshot]
	setDNS := func(d *configv1alpha1.DNSConfig) {
		snap.Store(config.Build([]*config.Workload{mustWorkload(t, &configv1alpha1.Workload{
			Name: "shop/client", Addresses: []string{"127.77.0.2"}, Identity: sid("client"), Dns: d})}, nil, nil))
	}
	serve := func(nameservers ...netip.AddrPort) net.Addr {
		return serveSOCKS5(t, &Env{Config: snap.Load, Certs: certs, Metrics: metrics.New(), Nameservers: nameservers})
	}
	dial := func(proxy net.Addr, name string) byte {
		t.Helper()
		c, code := socksDialName(t, proxy, name, echo.Port())
		if code == socksSucceeded {
			roundTrip(t, c)
			c.Close()
		}
		return code
	}
	questions := func(s *dnstest.Server, from int) []string {
		var out []string
		for _, q := range s.Asked()[from:] {
			if name, typ, _ := strings.Cut(q, " "); typ == "TypeA" {
				out = append(out, name)
			}
		}
		return out
	}

	setDNS(&configv1alpha1.DNSConfig{Policy: configv1alpha1.DNSConfig_POLICY_CLUSTER_FIRST, Ndots: 5,
		Searches:    []string{"shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"},
		Nameservers: []string{"127.77.4.53"}})
	first := serve(cluster.Addr)
	if code := dial(first, "db"); code != socksSucceeded {
		t.Errorf("ClusterFirst, db: reply %d, want 0", code)
	}
	if got := questions(cluster, 0); !slices.Equal(got, []string{"db.shop.svc.cluster.local."}) {
		t.Errorf("ClusterFirst, db: the cluster's DNS was asked %q", got)
	}
	// The cluster's DNS says web.corp.example does not exist: that is the
	// answer, the pod's nameserver is not asked.
	n := len(cluster.Asked())
	if code := dial(first, "web"); code != socksHostUnreachable {
		t.Errorf("ClusterFirst, web: reply %d, want %d", code, socksHostUnreachable)
	}
	want := []string{"web.shop.svc.cluster.local.", "web.svc.cluster.local.", "web.cluster.local.", "web.corp.example.", "web."}
	if got := questions(cluster, n); !slices.Equal(got, want) {
		t.Errorf("ClusterFirst, web: the cluster's DNS was asked %q, want %q", got, want)
	}
	if got := pod.Asked(); len(got) != 0 {
		t.Errorf("ClusterFirst: the pod's nameserver was asked %q while the cluster's answered", got)
	}
	// When the cluster's DNS does not answer, the pod's nameserver does.
	failover := serve(deadAddr)
	if code := dial(failover, "web"); code != socksSucceeded {
		t.Errorf("ClusterFirst with the cluster's DNS down, web: reply %d, want 0", code)
	}
	if got := questions(pod, 0); len(got) == 0 || got[len(got)-1] != "web.corp.example." {
		t.Errorf("ClusterFirst with the cluster's DNS down: the pod's nameserver was asked %q", got)
	}

	// None: only the pod's nameserver and search list.
	setDNS(&configv1alpha1.DNSConfig{Policy: configv1alpha1.DNSConfig_POLICY_NONE, Ndots: 1,
		Searches: []string{"corp.example"}, Nameservers: []string{"127.77.4.53"}})
	n, p := len(cluster.Asked()), len(pod.Asked())
	if code := dial(first, "web"); code != socksSucceeded {
		t.Errorf("None, web: reply %d, want 0", code)
	}
	if got := questions(pod, p); !slices.Equal(got, []string{"web.corp.example."}) {
		t.Errorf("None, web: the pod's nameserver was asked %q", got)
	}
	if code := dial(first, "db.shop.svc.cluster.local"); code != socksHostUnreachable {
		t.Errorf("None, db.shop.svc.cluster.local: reply %d, want %d", code, socksHostUnreachable)
	}
	if got := cluster.Asked()[n:]; len(got) != 0 {
		t.Errorf("None: the cluster's DNS was asked %q", got)
	}
}
