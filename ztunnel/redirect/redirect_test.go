package redirect

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func TestOpenNetnsErrors(t *testing.T) {
	if _, err := OpenNetns(""); err == nil {
		t.Error("empty path: no error")
	}
	if _, err := OpenNetns("/nonexistent/netns"); err == nil {
		t.Error("missing path: no error")
	}
	if err := InNetns(context.Background(), "/nonexistent/netns", func() error { return nil }); err == nil {
		t.Error("InNetns on a missing path: no error")
	}
}

func TestParseSockaddrIn(t *testing.T) {
	b := make([]byte, 16)
	binary.NativeEndian.PutUint16(b, unix.AF_INET)
	binary.BigEndian.PutUint16(b[2:], 8080)
	copy(b[4:], []byte{10, 250, 2, 2})
	got, err := parseSockaddrIn(b)
	if err != nil || got != netip.MustParseAddrPort("10.250.2.2:8080") {
		t.Errorf("parseSockaddrIn = %v, %v", got, err)
	}
	binary.NativeEndian.PutUint16(b, unix.AF_INET6)
	if _, err := parseSockaddrIn(b); err == nil {
		t.Error("wrong family: no error")
	}
	if _, err := parseSockaddrIn(b[:4]); err == nil {
		t.Error("short: no error")
	}
}

func TestOriginalDstBadInput(t *testing.T) {
	if _, err := OriginalDst(nil); err == nil {
		t.Error("nil conn: no error")
	}
}

func TestDialerBadInput(t *testing.T) {
	ctx := context.Background()
	if _, err := (&Dialer{}).DialTCP(ctx, netip.MustParseAddrPort("127.0.0.1:1")); err == nil {
		t.Error("no netns: no error")
	}
	d := &Dialer{Netns: &Netns{path: "x", handle: netns.None()}}
	for _, c := range []struct{ network, addr string }{
		{"tcp", "localhost:80"},
		{"tcp", "127.0.0.1"},
		{"udp", "127.0.0.1:80"},
		{"tcp6", "127.0.0.1:80"},
		{"tcp4", "[::1]:80"},
		{"tcp", "127.0.0.1:0"},
		{"tcp", "[fe80::1%lo]:80"},
		{"tcp", "127.0.0.1:80"}, // closed handle
	} {
		if _, err := d.DialContext(ctx, c.network, c.addr); err == nil {
			t.Errorf("DialContext(%q, %q): no error", c.network, c.addr)
		}
	}
	if err := d.Netns.Do(ctx, func() error { return nil }); err == nil {
		t.Error("Do on a closed handle: no error")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := (&Netns{handle: netns.None()}).Do(cctx, func() error { return nil }); err == nil {
		t.Error("Do with a cancelled context: no error")
	}
}

// requireRoot skips without root, and fails under CI where root is expected.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root (CI=true)")
	}
	t.Skip("needs root")
}

// newNetns creates an unnamed network namespace with loopback up and returns
// a Netns on it.
func newNetns(t testing.TB) *Netns {
	t.Helper()
	requireRoot(t)
	done := make(chan struct{})
	var h netns.NsHandle
	var err error
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, e := netns.Get()
		if e != nil {
			err = e
			runtime.UnlockOSThread()
			return
		}
		defer orig.Close()
		if h, err = netns.New(); err != nil {
			runtime.UnlockOSThread()
			return
		}
		if err = netns.Set(orig); err != nil {
			return // the thread stays locked, so the runtime ends it
		}
		runtime.UnlockOSThread()
	}()
	<-done
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	n := &Netns{path: "test", handle: h}
	t.Cleanup(func() { n.Close() })
	return n
}

// upLoopback sets the namespace's loopback up.
func upLoopback(t testing.TB, n *Netns) {
	t.Helper()
	nh, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	lo, err := nh.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nh.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
}

// TestNamespaceIsolation runs in a private namespace on loopback only: Do
// runs inside it, and a listener opened inside is reachable through the
// namespace's Dialer, whose socket carries the mark.
func TestNamespaceIsolation(t *testing.T) {
	ctx := context.Background()
	n := newNetns(t)
	upLoopback(t, n)
	err := n.Do(ctx, func() error {
		cur, err := netns.Get()
		if err != nil {
			return err
		}
		defer cur.Close()
		if !cur.Equal(n.handle) {
			t.Error("Do did not run inside the namespace")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Every thread is back in the process's own namespace afterwards.
	for range 20 {
		if err := n.Do(ctx, func() error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if got, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net"); err == nil && got != want {
			t.Errorf("thread %s is in %s after Do, want the process's %s", task.Name(), got, want)
		}
	}
	ln, err := n.Listen(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("ok"))
			c.Close()
		}
	}()
	dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	d := n.Dialer()
	d.Timeout = 5 * time.Second
	c, err := d.DialTCP(ctx, dst)
	if err != nil {
		t.Fatalf("dial inside: %v", err)
	}
	defer c.Close()
	buf := make([]byte, 2)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ok" {
		t.Errorf("read %q, %v", buf, err)
	}
	if got := c.RemoteAddr().(*net.TCPAddr).AddrPort(); got != dst {
		t.Errorf("RemoteAddr %v, want %v", got, dst)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	_ = rc.Control(func(fd uintptr) { mark, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if uint32(mark) != Mark {
		t.Errorf("socket mark %#x, want %#x", mark, Mark)
	}
	// Nothing listens on port 1 inside: refused, not hanging.
	if _, err := d.DialTCP(ctx, netip.MustParseAddrPort("127.0.0.1:1")); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("dial to a closed port: %v", err)
	}
}
