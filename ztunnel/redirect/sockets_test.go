package redirect

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// count returns how many sockets of the family are kept.
func (s *spareSockets) count(family int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(*s.list(family))
}

// isOpen reports whether fd is an open descriptor.
func isOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

func newTCPSockets(t *testing.T, n int) []int {
	t.Helper()
	var fds []int
	for range n {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	return fds
}

// TestSpareSocketsBounded: no more than maxSpare sockets are kept per
// family, the rest are closed, and after close every kept or later returned
// socket is closed.
func TestSpareSocketsBounded(t *testing.T) {
	var s spareSockets
	fds := newTCPSockets(t, maxSpare+3)
	s.put(unix.AF_INET, fds)
	if got := s.count(unix.AF_INET); got != maxSpare {
		t.Fatalf("kept %d, want %d", got, maxSpare)
	}
	for i, fd := range fds {
		if want := i < maxSpare; isOpen(fd) != want {
			t.Errorf("socket %d open: %v, want %v", i, !want, want)
		}
	}
	if s.count(unix.AF_INET6) != 0 || s.take(unix.AF_INET6) != -1 {
		t.Error("an IPv6 socket from IPv4 spares")
	}
	got := s.take(unix.AF_INET)
	if got != fds[maxSpare-1] || s.count(unix.AF_INET) != maxSpare-1 {
		t.Errorf("take: %d, %d left", got, s.count(unix.AF_INET))
	}
	_ = unix.Close(got)
	s.close()
	for i, fd := range fds[:maxSpare-1] {
		if isOpen(fd) {
			t.Errorf("socket %d still open after close", i)
		}
	}
	late := newTCPSockets(t, 2)
	s.put(unix.AF_INET, late)
	if s.take(unix.AF_INET) != -1 || isOpen(late[0]) || isOpen(late[1]) {
		t.Error("sockets returned after close were kept")
	}
}

// serveLoopback sets the namespace's loopback up and serves a listener on it
// that accepts and closes, telling accepted (buffered; full, it drops) of
// each connection, until the test ends.
func serveLoopback(tb testing.TB, n *Netns) (netip.AddrPort, <-chan struct{}) {
	tb.Helper()
	upLoopback(tb, n)
	ln, err := n.Listen(context.Background(), 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	accepted := make(chan struct{}, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(ln.Addr().(*net.TCPAddr).Port)), accepted
}

// TestDialUsesSpareSockets: one dial creates a batch inside the namespace
// and keeps the rest; they belong to the namespace (SIOCGSKNS), later dials
// use them and still connect inside, and Close closes those left.
func TestDialUsesSpareSockets(t *testing.T) {
	ctx := context.Background()
	n := newNetns(t)
	dst, accepted := serveLoopback(t, n)
	d := n.Dialer()
	d.Timeout = 5 * time.Second

	var nsStat unix.Stat_t
	if err := unix.Fstat(n.Fd(), &nsStat); err != nil {
		t.Fatal(err)
	}
	inNamespace := func(fd int) bool {
		nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
		if err != nil {
			t.Fatalf("SIOCGSKNS: %v", err)
		}
		defer unix.Close(nsfd)
		var st unix.Stat_t
		if err := unix.Fstat(nsfd, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino == nsStat.Ino && st.Dev == nsStat.Dev
	}

	for i := range socketBatch + 2 {
		c, err := d.DialTCP(ctx, dst)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		c.Close()
		select {
		case <-accepted:
		case <-time.After(5 * time.Second):
			t.Fatalf("dial %d: not accepted inside the namespace", i)
		}
		// The first dial made a batch and kept the rest; each later one
		// took a spare, until the next batch.
		if got, want := n.spare.count(unix.AF_INET), (socketBatch-1-i%socketBatch+socketBatch)%socketBatch; got != want {
			t.Errorf("after dial %d: %d spare sockets, want %d", i, got, want)
		}
	}
	n.spare.mu.Lock()
	spares := append([]int(nil), n.spare.v4...)
	n.spare.mu.Unlock()
	if len(spares) == 0 {
		t.Fatal("no spare sockets to check")
	}
	for _, fd := range spares {
		if !inNamespace(fd) {
			t.Errorf("spare socket %d is not in the pod's namespace", fd)
		}
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	for _, fd := range spares {
		if isOpen(fd) {
			t.Errorf("spare socket %d open after Close", fd)
		}
	}
	if _, err := d.DialTCP(ctx, dst); err == nil {
		t.Error("dial after Close succeeded")
	}
}

// BenchmarkDial dials the namespace's loopback and closes, with the sockets
// made in batches and, as the baseline of the same run, one socket per dial
// (a locked thread and two setns each, as before the batches).
func BenchmarkDial(b *testing.B) {
	ctx := context.Background()
	n := newNetns(b)
	dst, _ := serveLoopback(b, n)
	for _, batch := range []int{1, socketBatch} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			defer func(v int) { socketBatch = v }(socketBatch)
			socketBatch = batch
			d := n.Dialer()
			for b.Loop() {
				c, err := d.DialTCP(ctx, dst)
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

// BenchmarkSocket takes a socket of the namespace and closes it, batched and
// one per call (the part of a dial that the batches change).
func BenchmarkSocket(b *testing.B) {
	ctx := context.Background()
	n := newNetns(b)
	for _, batch := range []int{1, socketBatch} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			defer func(v int) { socketBatch = v }(socketBatch)
			socketBatch = batch
			for b.Loop() {
				fd, err := n.socket(ctx, unix.AF_INET)
				if err != nil {
					b.Fatal(err)
				}
				_ = unix.Close(fd)
			}
		})
	}
}
