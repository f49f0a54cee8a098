//go:build netns

package redirecttest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// conntrackEntries lists the pod namespace's conntrack table
// (/proc/thread-self/net/nf_conntrack read from inside it), one line per
// connection.
func conntrackEntries(t *testing.T, p *netlab.Pod) []string {
	t.Helper()
	var raw []byte
	if err := p.Do(func() (err error) {
		raw, err = os.ReadFile("/proc/thread-self/net/nf_conntrack")
		return err
	}); err != nil {
		t.Fatalf("conntrack table of %s: %v", p.Name, err)
	}
	return strings.Split(strings.TrimSpace(string(raw)), "\n")
}

// tracked reports whether the conntrack table holds a TCP connection from
// src to dst (in its original direction).
func tracked(entries []string, src netip.Addr, dst netip.AddrPort) bool {
	want := []string{"src=" + src.String(), fmt.Sprintf("dst=%s", dst.Addr()), fmt.Sprintf("dport=%d", dst.Port())}
	for _, e := range entries {
		f := strings.Fields(e)
		if len(f) < 3 || f[2] != "tcp" {
			continue
		}
		// The first src=/dst=/dport= are the original direction.
		first := map[string]string{}
		for _, kv := range f {
			if k, _, ok := strings.Cut(kv, "="); ok {
				if _, seen := first[k]; !seen {
					first[k] = kv
				}
			}
		}
		if first["src"] == want[0] && first["dst"] == want[1] && first["dport"] == want[2] {
			return true
		}
	}
	return false
}

// TestConntrackBypass captures both pods, as ztunnel does (rules and its
// three listeners), and checks which connections conntrack sees: none of
// ztunnel's own (HBONE out and in, to the pod's own application) nor the
// pod talking to itself, while the redirected connections stay tracked and
// translated. A packet from outside with HBONE's source port is still
// redirected: the bypass recognises replies by the socket they reach, not
// by port.
func TestConntrackBypass(t *testing.T) {
	ctx := context.Background()
	_, a, b := lab(t)
	dumpOnFailure(t, a)
	dumpOnFailure(t, b)
	nsA, cfgA := podConfig(t, a)
	nsB, cfgB := podConfig(t, b)
	for _, p := range []struct {
		pod  *netlab.Pod
		ns   *redirect.Netns
		cfg  redirect.Config
		name string
	}{{a, nsA, cfgA, "a"}, {b, nsB, cfgB, "b"}} {
		ns, cfg := p.ns, p.cfg
		install(t, ns, cfg)
		ls, err := ns.ListenAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		serve(t, ls.Outbound, "outbound-"+p.name)
		serve(t, ls.Inbound, "inbound-"+p.name)
		serve(t, ls.HBONE, "hbone-"+p.name)
		listenIn(t, p.pod.Do, ":8080", "app-"+p.name)
	}
	podA, podB := netip.AddrPortFrom(a.IP, appPort), netip.AddrPortFrom(b.IP, appPort)
	hboneB := netip.AddrPortFrom(b.IP, redirect.HBONEPort)

	t.Run("a redirected connection is tracked (the check can see entries)", func(t *testing.T) {
		expect(t, "app a -> pod b:8080", connectFrom(t, a.Do, podB), "outbound-a", podB)
		if !tracked(conntrackEntries(t, a), a.IP, podB) {
			t.Errorf("no conntrack entry in pod a for its redirected connection to %v:\n%s", podB,
				strings.Join(conntrackEntries(t, a), "\n"))
		}
	})

	t.Run("HBONE out of a and into b is not tracked", func(t *testing.T) {
		c, err := nsA.Dialer().DialContext(ctx, "tcp", hboneB.String())
		if err != nil {
			t.Fatal(err)
		}
		r, err := readReply(c)
		if err != nil {
			t.Fatal(err)
		}
		// No conntrack entry in b: no original destination either.
		expect(t, "ztunnel a -> pod b:15008", r, "hbone-b", netip.AddrPort{})
		if r.OrigDst.IsValid() {
			t.Errorf("pod b's HBONE listener found an original destination %v: the tunnel was tracked", r.OrigDst)
		}
		for _, p := range []*netlab.Pod{a, b} {
			if es := conntrackEntries(t, p); tracked(es, a.IP, hboneB) {
				t.Errorf("pod %s tracks the tunnel %v -> %v:\n%s", p.Name, a.IP, hboneB, strings.Join(es, "\n"))
			}
		}
	})

	t.Run("ztunnel to the pod's own application is not tracked", func(t *testing.T) {
		c, err := nsA.Dialer().DialContext(ctx, "tcp", podA.String())
		if err != nil {
			t.Fatal(err)
		}
		r, err := readReply(c)
		if err != nil {
			t.Fatal(err)
		}
		expect(t, "ztunnel a -> app a", r, "app-a", netip.AddrPort{})
		expect(t, "app a -> its own address", connectFrom(t, a.Do, podA), "app-a", netip.AddrPort{})
		if es := conntrackEntries(t, a); tracked(es, a.IP, podA) {
			t.Errorf("pod a tracks its connections to itself:\n%s", strings.Join(es, "\n"))
		}
	})

	t.Run("a packet from outside with source port 15008 is still redirected", func(t *testing.T) {
		var c net.Conn
		err := b.Node.Do(func() (err error) {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{Port: int(redirect.HBONEPort)}}
			c, err = d.Dial("tcp", podA.String())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		r, err := readReply(c)
		if err != nil {
			t.Fatal(err)
		}
		expect(t, "node 1 :15008 -> pod a:8080", r, "inbound-a", podA)
	})

	t.Run("the bypass rules counted what they took", func(t *testing.T) {
		rs, err := redirect.Rules(ctx, nsA)
		if err != nil {
			t.Fatal(err)
		}
		hits := map[string]uint64{}
		for _, c := range rs.Chains {
			for _, r := range c.Rules {
				hits[c.Name+": "+r.Comment] += r.Packets
			}
		}
		for _, c := range []string{
			redirect.BypassOutChain + ": from ztunnel's own sockets (mark 0x539/0xfff)",
			redirect.BypassOutChain + ": the pod to itself over IPv4 (lo, not 127.0.0.0/8)",
			redirect.BypassInChain + ": to ztunnel's own sockets (mark 0x539/0xfff): replies to its connections",
		} {
			if hits[c] == 0 {
				t.Errorf("rule %q counted no packet (counters %v)", c, hits)
			}
		}
	})
}
