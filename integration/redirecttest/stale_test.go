//go:build netns

package redirecttest

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// dialFromPort connects from the pod to dst from local port port
// (SO_REUSEADDR, so that a port whose last connection is gone can be
// taken again at once).
func dialFromPort(t *testing.T, do func(func() error) error, port int, dst netip.AddrPort) (net.Conn, error) {
	t.Helper()
	d := net.Dialer{
		Timeout:   3 * time.Second,
		LocalAddr: &net.TCPAddr{Port: port},
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
			if err != nil {
				return err
			}
			return serr
		},
	}
	var c net.Conn
	err := do(func() (err error) { c, err = d.Dial("tcp", dst.String()); return err })
	return c, err
}

// TestNoStaleConntrackAfterRemove: a connection opened while the capture
// was stopped is tracked without translation; if it ends after Remove
// (connection tracking then stops in the namespace), its entry would stay
// "established" for days, and a later connection that happens to reuse its
// addresses and ports, once the pod is captured again, would match it and
// bypass the redirection. Remove forgets the namespace's entries, so that
// connection is captured.
func TestNoStaleConntrackAfterRemove(t *testing.T) {
	ctx := context.Background()
	_, a, b := lab(t)
	dumpOnFailure(t, a)
	ns, cfg := podConfig(t, a)
	listenIn(t, b.Do, ":8080", "app-b")
	podB := netip.AddrPortFrom(b.IP, appPort)
	const port = 41234

	install(t, ns, cfg)
	if err := redirect.StopCapture(ctx, ns); err != nil {
		t.Fatal(err)
	}
	// The server answers and closes first, so that the client's side of
	// the port is free at once.
	c, err := dialFromPort(t, a.Do, port, podB)
	if err != nil {
		t.Fatal(err)
	}
	if err := redirect.Remove(ctx, ns); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatal(err)
	}
	c.Close()
	time.Sleep(100 * time.Millisecond)

	install(t, ns, cfg)
	ls, err := ns.ListenAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ls.Outbound, "outbound-a")
	t.Cleanup(func() { ls.Close() })
	c, err = dialFromPort(t, a.Do, port, podB)
	if err != nil {
		t.Fatal(err)
	}
	r, err := readReply(c)
	if err != nil {
		t.Fatal(err)
	}
	if r.Server != "outbound-a" {
		t.Errorf("a new connection from port %d to %v after the capture came back was answered by %q, not ztunnel's outbound listener: it bypassed the capture\nconntrack:\n%s",
			port, podB, r.Server, strings.Join(conntrackEntries(t, a), "\n"))
	}
}
