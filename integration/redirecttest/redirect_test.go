//go:build netns

package redirecttest

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

const appPort = 8080

// TestRedirection installs the capture rules in pod a (node 0) with ztunnel's
// three listeners inside it, and checks every path in and out of the pod.
func TestRedirection(t *testing.T) {
	ctx := context.Background()
	_, a, b := lab(t)
	dumpOnFailure(t, a)

	// The probe sources come from the pod's default gateway: node 0's
	// address on the pod network.
	ns, cfg := podConfig(t, a)
	gw := a.Node.PodCIDR.Addr().Next()
	if !slices.Equal(cfg.ProbeSources, []netip.Prefix{netip.PrefixFrom(gw, 32)}) {
		t.Fatalf("DefaultConfig probe sources %v, want [%s/32]", cfg.ProbeSources, gw)
	}
	install(t, ns, cfg)

	ls, err := ns.ListenAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ls.Outbound, "outbound")
	serve(t, ls.Inbound, "inbound")
	serve(t, ls.HBONE, "hbone")
	listenIn(t, a.Do, ":8080", "app-a")
	listenIn(t, b.Do, ":8080", "app-b")

	podA := netip.AddrPortFrom(a.IP, appPort)
	podB := netip.AddrPortFrom(b.IP, appPort)

	t.Run("outbound is captured with its original destination", func(t *testing.T) {
		r := connectFrom(t, a.Do, podB)
		expect(t, "pod a -> pod b:8080", r, "outbound", podB)
		// REDIRECT rewrites only the destination (to loopback): ztunnel
		// sees the application's own source address.
		if r.Remote.Addr() != a.IP || r.Local.Addr() != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("redirected outbound %v -> %v, want %v -> 127.0.0.1", r.Remote, r.Local, a.IP)
		}
	})

	t.Run("the marked dialer is not captured and keeps the pod's source", func(t *testing.T) {
		c, err := ns.Dialer().DialContext(ctx, "tcp", podB.String())
		if err != nil {
			t.Fatal(err)
		}
		if got := c.RemoteAddr().(*net.TCPAddr).AddrPort(); got != podB {
			t.Errorf("dialer RemoteAddr %v, want %v", got, podB)
		}
		r, err := readReply(c)
		if err != nil {
			t.Fatal(err)
		}
		expect(t, "ztunnel a -> pod b:8080", r, "app-b", netip.AddrPort{})
		if r.Remote.Addr() != a.IP {
			t.Errorf("pod b sees source %v, want pod a %v", r.Remote.Addr(), a.IP)
		}
	})

	t.Run("inbound plaintext is captured with its original destination", func(t *testing.T) {
		r := connectFrom(t, b.Do, podA)
		expect(t, "pod b -> pod a:8080", r, "inbound", podA)
		if r.Remote.Addr() != b.IP {
			t.Errorf("inbound source %v, want pod b %v", r.Remote.Addr(), b.IP)
		}
	})

	t.Run("inbound HBONE is not redirected", func(t *testing.T) {
		dst := netip.AddrPortFrom(a.IP, redirect.HBONEPort)
		r := connectFrom(t, b.Do, dst)
		// Not tracked either (the conntrack bypass): no original
		// destination, which HBONE does not use.
		expect(t, "pod b -> pod a:15008", r, "hbone", netip.AddrPort{})
		if r.OrigDst.IsValid() {
			t.Errorf("HBONE connection tracked: original destination %v", r.OrigDst)
		}
		if r.Local != dst {
			t.Errorf("HBONE connection local address %v, want %v", r.Local, dst)
		}
	})

	t.Run("kubelet probes from the node reach the app", func(t *testing.T) {
		r := connectFrom(t, a.Node.Do, podA)
		expect(t, "node 0 -> pod a:8080", r, "app-a", netip.AddrPort{})
		if r.Remote.Addr() != gw {
			t.Errorf("probe source %v, want node address %v", r.Remote.Addr(), gw)
		}
	})

	t.Run("another node is not exempt", func(t *testing.T) {
		r := connectFrom(t, b.Node.Do, podA)
		expect(t, "node 1 -> pod a:8080", r, "inbound", podA)
	})

	t.Run("loopback is not captured", func(t *testing.T) {
		for _, dst := range []netip.AddrPort{
			netip.MustParseAddrPort("127.0.0.1:8080"),
			netip.MustParseAddrPort("127.0.0.53:8080"),
			netip.MustParseAddrPort("[::1]:8080"),
			podA, // the pod's own address is routed over lo
		} {
			r := connectFrom(t, a.Do, dst)
			expect(t, "pod a -> "+dst.String(), r, "app-a", netip.AddrPort{})
		}
	})

	t.Run("Rules lists the installed rules with counters", func(t *testing.T) {
		rs, err := redirect.Rules(ctx, ns)
		if err != nil {
			t.Fatal(err)
		}
		if !rs.Installed || len(rs.Chains) != 4 {
			t.Fatalf("ruleset %+v", rs)
		}
		hits := map[string]uint64{}
		for _, c := range rs.Chains {
			for _, r := range c.Rules {
				hits[r.Comment] += r.Packets
				if r.Expr == "" || strings.Contains(r.Expr, "*expr.") {
					t.Errorf("rule %q renders as %q", r.Comment, r.Expr)
				}
			}
		}
		// HBONE and ztunnel's own sockets are counted by the conntrack
		// bypass, before the nat chains (TestConntrackBypass).
		for _, c := range []string{"outbound TCP to ztunnel :15001", "inbound TCP to ztunnel :15006",
			"HBONE to this pod (tcp dport 15008)", "kubelet probes from " + gw.String() + "/32",
			"from ztunnel's own sockets (mark 0x539/0xfff)"} {
			if hits[c] == 0 {
				t.Errorf("rule %q counted no connection (counters %v)", c, hits)
			}
		}
	})

	t.Run("removal restores direct connectivity; re-installing is idempotent", func(t *testing.T) {
		if err := redirect.Remove(ctx, ns); err != nil {
			t.Fatal(err)
		}
		if err := redirect.Remove(ctx, ns); err != nil {
			t.Fatalf("second Remove: %v", err)
		}
		rs, err := redirect.Rules(ctx, ns)
		if err != nil || rs.Installed {
			t.Fatalf("after Remove: %+v, %v", rs, err)
		}
		expect(t, "pod a -> pod b:8080 unredirected", connectFrom(t, a.Do, podB), "app-b", netip.AddrPort{})
		expect(t, "pod b -> pod a:8080 unredirected", connectFrom(t, b.Do, podA), "app-a", netip.AddrPort{})

		install(t, ns, cfg)
		first, err := redirect.Rules(ctx, ns)
		if err != nil {
			t.Fatal(err)
		}
		install(t, ns, cfg)
		install(t, ns, cfg)
		again, err := redirect.Rules(ctx, ns)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := shape(again), shape(first); got != want {
			t.Errorf("after re-install:\n%s\nwant:\n%s", got, want)
		}
		// 3 + 3 conntrack bypass, 5 outbound, 6 inbound (loopback, 2 SNAT,
		// the gateway, HBONE, redirect).
		if n := strings.Count(shape(again), "\n"); n != 17 {
			t.Errorf("%d rules installed, want 17:\n%s", n, shape(again))
		}
		expect(t, "pod a -> pod b:8080 re-captured", connectFrom(t, a.Do, podB), "outbound", podB)
		expect(t, "pod b -> pod a:8080 re-captured", connectFrom(t, b.Do, podA), "inbound", podA)
	})
}

// shape renders a ruleset without handles and counters.
func shape(rs *redirect.Ruleset) string {
	var sb strings.Builder
	for _, c := range rs.Chains {
		for _, r := range c.Rules {
			e := r.Expr
			if i := strings.Index(e, "counter packets"); i >= 0 {
				e = e[:i] + "counter" // the verdict follows the counter
			}
			sb.WriteString(c.Name + "/" + c.Hook + ": " + r.Comment + ": " + e + "\n")
		}
	}
	return sb.String()
}

// TestDialTimeout checks that the marked dialer honours its context against
// an address that never answers (inside the lab: a pod address nobody holds).
func TestDialTimeout(t *testing.T) {
	_, a, b := lab(t)
	ns, err := redirect.OpenNetns(a.NetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	// Nothing listens on pod b's port 1: the dial is refused, fast.
	_, err = ns.Dialer().DialContext(context.Background(), "tcp", netip.AddrPortFrom(b.IP, 1).String())
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("dial to a closed port: %v, want connection refused", err)
	}
	// An unused lab address on node 1's pod network: ARP goes unanswered.
	ghost := netip.AddrPortFrom(b.Node.PodCIDR.Addr().Next().Next().Next().Next(), 80)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = ns.Dialer().DialContext(ctx, "tcp", ghost.String())
	if err == nil {
		t.Fatal("dial to an absent host succeeded")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("dial took %v after a 300ms deadline", d)
	}
}
