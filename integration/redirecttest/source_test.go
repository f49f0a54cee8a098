//go:build netns

package redirecttest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// roundTrip sends a line on c and reads it back.
func roundTrip(c net.Conn, line string) error {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err == nil && got != line+"\n" {
		err = os.ErrInvalid
	}
	return err
}

// sourceRouting lists the original-source policy rules and the routes of
// its table in the namespace at path.
func sourceRouting(t *testing.T, path string) (rules []netlink.Rule, routes []netlink.Route) {
	t.Helper()
	nh := netlinkAt(t, path)
	defer nh.Close()
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := nh.RuleList(fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.Table == redirect.SourceRouteTable {
				rules = append(rules, r)
			}
		}
		rt, err := nh.RouteListFiltered(fam, &netlink.Route{Table: redirect.SourceRouteTable}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		routes = append(routes, rt...)
	}
	return rules, routes
}

// trackedFrom is tracked for a connection from src's address and port.
func trackedFrom(entries []string, src, dst netip.AddrPort) bool {
	var mine []string
	for _, e := range entries {
		if strings.Contains(e, fmt.Sprintf(" sport=%d dport=%d ", src.Port(), dst.Port())) {
			mine = append(mine, e)
		}
	}
	return tracked(mine, src.Addr(), dst)
}

// fwmarkAccept reads net.ipv4.tcp_fwmark_accept in the pod's namespace.
func fwmarkAccept(t *testing.T, p *netlab.Pod) string {
	t.Helper()
	var v []byte
	if err := p.Do(func() (err error) {
		v, err = os.ReadFile("/proc/sys/net/ipv4/tcp_fwmark_accept")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

// TestOriginalSource: with Config.OriginalSource, ztunnel's dialer connects
// to the pod's application from another pod's address (the application
// sees that address), the replies come back to it without conntrack, the
// connection survives StopCapture, and Remove takes the routing away. Without the option's rules
// such a connection cannot open.
func TestOriginalSource(t *testing.T) {
	ctx := context.Background()
	_, a, b := lab(t)
	dumpOnFailure(t, b)
	ns, cfg := podConfig(t, b)
	listenIn(t, b.Do, ":8080", "app-b")
	b.ServeEcho(t, 8081)
	app, echo := netip.AddrPortFrom(b.IP, appPort), netip.AddrPortFrom(b.IP, 8081)
	d := ns.Dialer()
	d.Timeout = 2 * time.Second

	cfg.OriginalSource = true
	install(t, ns, cfg)
	rules, routes := sourceRouting(t, b.NetnsPath())
	if len(rules) != 2 || len(routes) != 2 {
		t.Errorf("after Install: %d rules, %d routes in table %d, want one of each per family: %v %v",
			len(rules), len(routes), redirect.SourceRouteTable, rules, routes)
	}
	for _, r := range rules {
		if r.Mark != redirect.SourceMark || r.Mask == nil || *r.Mask != redirect.MarkMask || r.Priority != redirect.SourceRulePriority {
			t.Errorf("rule %v: want fwmark %#x/%#x priority %d", r, redirect.SourceMark, redirect.MarkMask, redirect.SourceRulePriority)
		}
	}
	if v := fwmarkAccept(t, b); v != "1" {
		t.Errorf("after Install: net.ipv4.tcp_fwmark_accept = %q, want 1", v)
	}
	// Installing again leaves one copy of each.
	install(t, ns, cfg)
	if r2, rt2 := sourceRouting(t, b.NetnsPath()); len(r2) != 2 || len(rt2) != 2 {
		t.Errorf("after a second Install: %d rules, %d routes, want 2 and 2", len(r2), len(rt2))
	}

	t.Run("the application sees the client's address", func(t *testing.T) {
		c, err := d.DialFrom(ctx, netip.AddrPortFrom(a.IP, 0), app)
		if err != nil {
			t.Fatalf("DialFrom %v: %v", a.IP, err)
		}
		r, err := readReply(c)
		if err != nil {
			t.Fatal(err)
		}
		if r.Remote.Addr() != a.IP || r.Remote.Port() == 0 || r.Local != app {
			t.Errorf("the application saw %v -> %v, want %v -> %v", r.Remote, r.Local, a.IP, app)
		}
		// The plain dialer still connects from the pod's own address.
		c2, err := d.DialTCP(ctx, app)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := readReply(c2); err != nil || r.Remote.Addr() != b.IP {
			t.Errorf("DialTCP: the application saw %v (%v), want %v", r.Remote, err, b.IP)
		}
	})

	t.Run("never the client's own port", func(t *testing.T) {
		// Two ephemeral ports in the pod's namespace: whichever the kernel
		// picks first, the dialer must end on the other one.
		if err := b.Do(func() error {
			return os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("40000 40001"), 0)
		}); err != nil {
			t.Fatal(err)
		}
		defer func() {
			_ = b.Do(func() error {
				return os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("32768 60999"), 0)
			})
		}()
		for _, avoid := range []uint16{40001, 40000} {
			c, err := d.DialFrom(ctx, netip.AddrPortFrom(a.IP, avoid), app)
			if err != nil {
				t.Fatalf("DialFrom %v:%d: %v", a.IP, avoid, err)
			}
			r, err := readReply(c)
			if err != nil {
				t.Fatal(err)
			}
			if want := uint16(80001 - int(avoid)); r.Remote != netip.AddrPortFrom(a.IP, want) {
				t.Errorf("avoiding port %d: the application saw %v, want %v:%d", avoid, r.Remote, a.IP, want)
			}
		}
	})

	t.Run("a connection survives StopCapture", func(t *testing.T) {
		c, err := d.DialFrom(ctx, netip.AddrPortFrom(a.IP, 0), echo)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := roundTrip(c, "before"); err != nil {
			t.Fatalf("echo before StopCapture: %v", err)
		}
		if err := redirect.StopCapture(ctx, ns); err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(c, "after"); err != nil {
			t.Errorf("echo after StopCapture: %v", err)
		}
	})

	t.Run("no conntrack entry", func(t *testing.T) {
		install(t, ns, cfg)
		c, err := d.DialFrom(ctx, netip.AddrPortFrom(a.IP, 0), echo)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := roundTrip(c, "tracked?"); err != nil {
			t.Fatal(err)
		}
		entries := conntrackEntries(t, b)
		if trackedFrom(entries, c.LocalAddr().(*net.TCPAddr).AddrPort(), echo) {
			t.Errorf("the original-source connection %v -> %v is in conntrack:\n%s", c.LocalAddr(), echo, strings.Join(entries, "\n"))
		}
		// The same dial in a namespace that tracks: the helper does see it.
		plain := cfg
		plain.NoConntrackBypass = true
		install(t, ns, plain)
		c2, err := d.DialFrom(ctx, netip.AddrPortFrom(a.IP, 0), echo)
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		if err := roundTrip(c2, "tracked!"); err != nil {
			t.Fatal(err)
		}
		if !trackedFrom(conntrackEntries(t, b), c2.LocalAddr().(*net.TCPAddr).AddrPort(), echo) {
			t.Error("without the bypass the original-source connection is not in conntrack either: the check above proves nothing")
		}
		install(t, ns, cfg)
	})

	t.Run("Remove takes the routing away", func(t *testing.T) {
		if err := redirect.Remove(ctx, ns); err != nil {
			t.Fatal(err)
		}
		if rules, routes := sourceRouting(t, b.NetnsPath()); len(rules)+len(routes) != 0 {
			t.Errorf("after Remove: rules %v, routes %v", rules, routes)
		}
		if v := fwmarkAccept(t, b); v != "0" {
			t.Errorf("after Remove: net.ipv4.tcp_fwmark_accept = %q, want 0", v)
		}
		if err := redirect.Remove(ctx, ns); err != nil {
			t.Errorf("a second Remove: %v", err)
		}
	})

	t.Run("without the option the connection cannot open", func(t *testing.T) {
		plain := cfg
		plain.OriginalSource = false
		install(t, ns, plain)
		t.Cleanup(func() { _ = redirect.Remove(ctx, ns) })
		if c, err := d.DialFrom(ctx, netip.AddrPortFrom(a.IP, 0), app); err == nil {
			r, _ := readReply(c)
			t.Errorf("DialFrom without the original-source rules connected (the application saw %v); want the replies lost", r.Remote)
		}
		if rules, routes := sourceRouting(t, b.NetnsPath()); len(rules)+len(routes) != 0 {
			t.Errorf("Install without the option added rules %v, routes %v", rules, routes)
		}
	})
}

// TestOriginalSourceIPv6: the same over IPv6, between two pods of one node.
func TestOriginalSourceIPv6(t *testing.T) {
	ctx := context.Background()
	l, a, _ := lab(t)
	dumpOnFailure(t, a)
	node := l.Nodes()[0]
	c, err := node.AddPod("c")
	if err != nil {
		t.Fatal(err)
	}
	addV6(t, node.NetnsPath(), "cbr0", 1)
	aIP := addV6(t, a.NetnsPath(), "eth0", 2)
	cIP := addV6(t, c.NetnsPath(), "eth0", 3)
	ns := openNetns(t, a)
	install(t, ns, redirect.Config{OriginalSource: true})
	listenIn(t, a.Do, "[::]:8080", "app-a")
	d := ns.Dialer()
	d.Timeout = 2 * time.Second
	conn, err := d.DialFrom(ctx, netip.AddrPortFrom(cIP, 0), netip.AddrPortFrom(aIP, appPort))
	if err != nil {
		t.Fatalf("DialFrom %v: %v", cIP, err)
	}
	r, err := readReply(conn)
	if err != nil {
		t.Fatal(err)
	}
	if r.Remote.Addr() != cIP {
		t.Errorf("the application saw %v, want %v", r.Remote, cIP)
	}
	// An IPv4 source for an IPv6 destination is ignored: the pod's own
	// address is used.
	conn, err = d.DialFrom(ctx, netip.AddrPortFrom(netip.MustParseAddr("10.250.9.9"), 0), netip.AddrPortFrom(aIP, appPort))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := readReply(conn); err != nil || r.Remote.Addr() != aIP {
		t.Errorf("IPv4 source to IPv6: the application saw %v (%v), want the pod's %v", r.Remote, err, aIP)
	}
}
