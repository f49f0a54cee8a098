//go:build netns

package redirecttest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// reply is what a test server answers on every connection.
type reply struct {
	Server  string         // the server's name
	OrigDst netip.AddrPort // OriginalDst of the accepted connection (invalid if it failed)
	Remote  netip.AddrPort // the peer the server saw
	Local   netip.AddrPort // the accepted socket's local address
}

// serve answers every connection on ln with one line describing it, until ln
// is closed (at test cleanup).
func serve(t *testing.T, ln net.Listener, name string) {
	t.Helper()
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*net.TCPConn)
				od, err := redirect.OriginalDst(tc)
				ods := od.String()
				if err != nil {
					ods = "-"
				}
				_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(c, "%s %s %s %s\n", name, ods,
					tc.RemoteAddr().(*net.TCPAddr).AddrPort(), tc.LocalAddr().(*net.TCPAddr).AddrPort())
			}()
		}
	}()
}

// listenIn opens a TCP listener inside a lab namespace.
func listenIn(t *testing.T, do func(func() error) error, addr string, name string) {
	t.Helper()
	var ln net.Listener
	if err := do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatalf("listen %s for %s: %v", addr, name, err)
	}
	serve(t, ln, name)
}

// readReply reads and parses a server's line from c, then closes c.
func readReply(c net.Conn) (reply, error) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return reply{}, fmt.Errorf("read reply: %w", err)
	}
	f := strings.Fields(line)
	if len(f) != 4 {
		return reply{}, fmt.Errorf("bad reply %q", line)
	}
	r := reply{Server: f[0]}
	if f[1] != "-" {
		if r.OrigDst, err = netip.ParseAddrPort(f[1]); err != nil {
			return reply{}, err
		}
	}
	if r.Remote, err = netip.ParseAddrPort(f[2]); err != nil {
		return reply{}, err
	}
	if r.Local, err = netip.ParseAddrPort(f[3]); err != nil {
		return reply{}, err
	}
	r.Remote = netip.AddrPortFrom(r.Remote.Addr().Unmap(), r.Remote.Port())
	r.Local = netip.AddrPortFrom(r.Local.Addr().Unmap(), r.Local.Port())
	return r, nil
}

// connectFrom dials dst with an ordinary (application) socket created inside
// a lab namespace and returns the server's reply.
func connectFrom(t *testing.T, do func(func() error) error, dst netip.AddrPort) reply {
	t.Helper()
	var c net.Conn
	err := do(func() (err error) {
		c, err = net.DialTimeout("tcp", dst.String(), 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s: %v", dst, err)
	}
	r, err := readReply(c)
	if err != nil {
		t.Fatalf("dial %s: %v", dst, err)
	}
	return r
}

// expect checks the server that answered and, when want is valid, the
// original destination it saw.
func expect(t *testing.T, what string, r reply, server string, origDst netip.AddrPort) {
	t.Helper()
	if r.Server != server {
		t.Errorf("%s: answered by %q (%+v), want %q", what, r.Server, r, server)
		return
	}
	if origDst.IsValid() && r.OrigDst != origDst {
		t.Errorf("%s: original destination %v, want %v", what, r.OrigDst, origDst)
	}
}

// openNetns opens a lab pod's namespace for the redirect package, closed at
// the end of the test.
func openNetns(t *testing.T, p *netlab.Pod) *redirect.Netns {
	t.Helper()
	ns, err := redirect.OpenNetns(p.NetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// podConfig opens the pod's namespace (see openNetns) and returns it with
// the configuration ztunnel would use for it (redirect.DefaultConfig).
func podConfig(t *testing.T, p *netlab.Pod) (*redirect.Netns, redirect.Config) {
	t.Helper()
	ns := openNetns(t, p)
	cfg, err := redirect.DefaultConfig(context.Background(), ns)
	if err != nil {
		t.Fatal(err)
	}
	return ns, cfg
}

// install installs the rules; a kernel without nftables NAT support skips the
// test on a developer machine and fails it under CI, as does one that
// installs the rules without the original-source routing asked for.
func install(t *testing.T, ns *redirect.Netns, cfg redirect.Config) redirect.Config {
	t.Helper()
	got, err := redirect.Install(context.Background(), ns, cfg)
	if err != nil && (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EOPNOTSUPP) ||
		errors.Is(err, syscall.EPROTONOSUPPORT) || errors.Is(err, syscall.EAFNOSUPPORT)) {
		tier.Require(t, "nftables NAT support in the kernel", err)
	}
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	if cfg.OriginalSource && !got.OriginalSource {
		tier.Require(t, "nftables route chains and policy routing for the original source", errors.New("installed without them"))
	}
	return got
}

// dumpOnFailure logs the pod's ruleset with the nft binary (diagnostics only)
// when the test fails.
func dumpOnFailure(t *testing.T, pod *netlab.Pod) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		nft, err := exec.LookPath("nft")
		if err != nil {
			t.Logf("nft not installed: no ruleset dump")
			return
		}
		var out bytes.Buffer
		cmd := exec.Command(nft, "list", "ruleset")
		cmd.Stdout, cmd.Stderr = &out, &out
		if err = pod.Start(cmd); err == nil {
			err = cmd.Wait()
		}
		t.Logf("nft list ruleset in %s (err %v):\n%s", pod.Name, err, out.String())
	})
}

// lab builds two nodes with pod a on node 0 and pod b on node 1.
func lab(t *testing.T) (l *netlab.Lab, a, b *netlab.Pod) {
	t.Helper()
	l = netlab.New(t)
	n0, err := l.AddNode("n0")
	if err != nil {
		t.Fatal(err)
	}
	n1, err := l.AddNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	if a, err = n0.AddPod("a"); err != nil {
		t.Fatal(err)
	}
	if b, err = n1.AddPod("b"); err != nil {
		t.Fatal(err)
	}
	return l, a, b
}
