//go:build netns

package redirecttest

import (
	"context"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// v6Net is a unique-local range the test puts on node 0's pod bridge only:
// it exists inside the lab's namespaces and nowhere else.
var v6Net = netip.MustParsePrefix("fdab:250:1::/64")

func v6Addr(host byte) netip.Addr {
	a := v6Net.Addr().As16()
	a[15] = host
	return netip.AddrFrom16(a)
}

// netlinkAt opens a netlink handle in the namespace at path; close it.
func netlinkAt(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	h, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	return nh
}

// addV6 gives link in the namespace at path an address of v6Net, without
// duplicate address detection so that it is usable at once.
func addV6(t *testing.T, path, link string, host byte) netip.Addr {
	t.Helper()
	nh := netlinkAt(t, path)
	defer nh.Close()
	l, err := nh.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	ip := v6Addr(host)
	a, err := netlink.ParseAddr(netip.PrefixFrom(ip, v6Net.Bits()).String())
	if err != nil {
		t.Fatal(err)
	}
	a.Flags = 0x02 // IFA_F_NODAD
	if err := nh.AddrAdd(l, a); err != nil {
		t.Fatalf("add %s to %s in %s: %v", ip, link, path, err)
	}
	return ip
}

// TestRedirectionIPv6 checks capture, original destinations (through
// IP6T_SO_ORIGINAL_DST), the marked dialer and an explicitly configured probe
// source over IPv6, between two pods and their node on one pod bridge.
func TestRedirectionIPv6(t *testing.T) {
	ctx := context.Background()
	l, a, _ := lab(t)
	dumpOnFailure(t, a)
	node := l.Nodes()[0]
	c, err := node.AddPod("c")
	if err != nil {
		t.Fatal(err)
	}
	nodeIP := addV6(t, node.NetnsPath(), "cbr0", 1)
	aIP := addV6(t, a.NetnsPath(), "eth0", 2)
	cIP := addV6(t, c.NetnsPath(), "eth0", 3)

	ns := openNetns(t, a)
	install(t, ns, redirect.Config{ProbeSources: []netip.Prefix{netip.PrefixFrom(nodeIP, 128)}})
	ls, err := ns.ListenAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ls.Outbound, "outbound")
	serve(t, ls.Inbound, "inbound")
	serve(t, ls.HBONE, "hbone")
	listenIn(t, a.Do, ":8080", "app-a")
	listenIn(t, c.Do, ":8080", "app-c")

	podA := netip.AddrPortFrom(aIP, appPort)
	podC := netip.AddrPortFrom(cIP, appPort)

	r := connectFrom(t, a.Do, podC)
	expect(t, "pod a -> [pod c]:8080", r, "outbound", podC)
	if r.Remote.Addr() != aIP || r.Local.Addr() != netip.IPv6Loopback() {
		t.Errorf("redirected outbound %v -> %v, want %v -> ::1", r.Remote, r.Local, aIP)
	}

	conn, err := ns.Dialer().DialContext(ctx, "tcp6", podC.String())
	if err != nil {
		t.Fatal(err)
	}
	r, err = readReply(conn)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, "ztunnel a -> [pod c]:8080", r, "app-c", netip.AddrPort{})
	if r.Remote.Addr() != aIP {
		t.Errorf("pod c sees source %v, want %v", r.Remote.Addr(), aIP)
	}

	r = connectFrom(t, c.Do, podA)
	expect(t, "pod c -> [pod a]:8080", r, "inbound", podA)
	if r.Remote.Addr() != cIP {
		t.Errorf("inbound source %v, want %v", r.Remote.Addr(), cIP)
	}

	hbone := netip.AddrPortFrom(aIP, redirect.HBONEPort)
	// Untracked (the conntrack bypass): no original destination.
	if r := connectFrom(t, c.Do, hbone); r.Server != "hbone" || r.OrigDst.IsValid() || r.Local != hbone {
		t.Errorf("pod c -> [pod a]:15008: %+v, want hbone, untracked, local %v", r, hbone)
	}
	expect(t, "node -> [pod a]:8080", connectFrom(t, node.Do, podA), "app-a", netip.AddrPort{})
	expect(t, "pod a -> [pod a]:8080", connectFrom(t, a.Do, podA), "app-a", netip.AddrPort{})
}
