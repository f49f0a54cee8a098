//go:build netns

package redirecttest

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// TestStopCaptureKeepsTranslation shows why a release stops the capture
// before it closes the connections ztunnel proxies, and removes the table
// only after: connections redirected while the rules were in place must
// still see the end that ztunnel sends them (from the address the
// application dialled), whereas with the table deleted first that end is
// lost and the application's connection never ends. And after StopCapture
// no new connection is redirected.
func TestStopCaptureKeepsTranslation(t *testing.T) {
	ctx := context.Background()
	_, a, b := lab(t)
	dumpOnFailure(t, a)
	ns, cfg := podConfig(t, a)
	listenIn(t, b.Do, ":8080", "app-b")
	podB := netip.AddrPortFrom(b.IP, appPort)

	// redirected installs the rules and opens the outbound listener (what
	// ztunnel captures with), then dials pod b from the application: the
	// connection reaches the listener; it returns both ends.
	redirected := func(t *testing.T) (app, proxied *net.TCPConn, ln net.Listener) {
		t.Helper()
		install(t, ns, cfg)
		ln, err := ns.Listen(ctx, redirect.OutboundPort)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		c, err := a.DialTCP(podB)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
		s, err := ln.Accept()
		if err != nil {
			t.Fatalf("the outbound listener got no connection: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		if od, err := redirect.OriginalDst(s.(*net.TCPConn)); err != nil || od != podB {
			t.Fatalf("accepted connection's original destination %v (%v), want %v", od, err, podB)
		}
		return c, s.(*net.TCPConn), ln
	}
	// readEnd reads from the application's connection for up to 2 s: EOF
	// is the proxy's FIN, a timeout means nothing arrived.
	readEnd := func(app *net.TCPConn) (timedOut bool, err error) {
		_ = app.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = app.Read(make([]byte, 1))
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout(), err
	}

	t.Run("stop, close, remove: the application sees the end", func(t *testing.T) {
		app, proxied, ln := redirected(t)
		if err := redirect.StopCapture(ctx, ns); err != nil {
			t.Fatal(err)
		}
		rs, err := redirect.Rules(ctx, ns)
		if err != nil {
			t.Fatal(err)
		}
		var rules []string
		for _, c := range rs.Chains {
			for _, r := range c.Rules {
				rules = append(rules, c.Name+": "+r.Expr)
			}
		}
		if len(rules) != 1 || rules[0] != redirect.OutboundChain+": ct state new accept" {
			t.Errorf("rules after StopCapture: %q, want only the outbound chain's ct state rule", rules)
		}
		// A new connection is not redirected any more: it reaches pod b.
		expect(t, "new connection after StopCapture", connectFrom(t, a.Do, podB), "app-b", netip.AddrPort{})
		_ = ln.Close()
		_ = proxied.Close()
		if _, err := readEnd(app); err != io.EOF {
			t.Errorf("the application's connection did not end with the proxy's FIN (read: %v)", err)
		}
		if err := redirect.Remove(ctx, ns); err != nil {
			t.Fatal(err)
		}
		if rs, err := redirect.Rules(ctx, ns); err != nil || rs.Installed {
			t.Errorf("after Remove: installed=%v err=%v", rs != nil && rs.Installed, err)
		}
	})

	// The control: in the order releases used before (the table first),
	// the end ztunnel sends is lost. If a kernel kept translating without
	// the rules, the subtest above would no longer show anything.
	t.Run("remove, then close: the end is lost", func(t *testing.T) {
		app, proxied, ln := redirected(t)
		if err := redirect.Remove(ctx, ns); err != nil {
			t.Fatal(err)
		}
		_ = ln.Close()
		_ = proxied.Close()
		if timedOut, err := readEnd(app); !timedOut {
			t.Errorf("with the table removed first the application still heard from the proxy (read: %v): this kernel keeps the translation without rules, so the subtest above proves nothing here", err)
		}
	})

	t.Run("a namespace without the table is left as it is", func(t *testing.T) {
		if err := redirect.StopCapture(ctx, ns); err != nil {
			t.Fatal(err)
		}
		if rs, err := redirect.Rules(ctx, ns); err != nil || rs.Installed {
			t.Errorf("StopCapture without the table: installed=%v err=%v", rs != nil && rs.Installed, err)
		}
	})
}
