package echo

import (
	"io"
	"net"
	"net/netip"
	"testing"
)

// Serve echoes every connection accepted on ln until ln is closed.
func Serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
		}()
	}
}

// Loopback starts an echo server on 127.0.0.1 for the test and returns its
// address; it stops at test cleanup.
func Loopback(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go Serve(ln)
	return ln.Addr().(*net.TCPAddr).AddrPort()
}
