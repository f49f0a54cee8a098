package hbone

import (
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (local, peer *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   *net.TCPConn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.AcceptTCP()
		ch <- res{c, err}
	}()
	local, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { local.Close(); r.c.Close() })
	return local, r.c
}

// TestJoinEndsWhenAnEndIsClosedLocally: when the owner of one end closes
// it (a proxy shutting down closes the client connections it tracks) while
// both peers are idle (a keep-alive client and server between requests),
// Join must end, and close the other end so its peer learns it, rather
// than wait forever for the idle peer of the other end to send.
func TestJoinEndsWhenAnEndIsClosedLocally(t *testing.T) {
	for _, closeA := range []bool{true, false} {
		name := "close b"
		if closeA {
			name = "close a"
		}
		t.Run(name, func(t *testing.T) {
			a, aPeer := tcpPair(t)
			b, bPeer := tcpPair(t)
			done := make(chan struct{})
			go func() {
				defer close(done)
				Join(a, b)
			}()
			// Some traffic first, so both copies are running.
			if _, err := aPeer.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(bPeer, buf); err != nil {
				t.Fatal(err)
			}
			closed, otherPeer := a, bPeer
			if !closeA {
				closed, otherPeer = b, aPeer
			}
			_ = closed.Close()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Join did not return after one end was closed by its owner")
			}
			_ = otherPeer.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := otherPeer.Read(buf); err != io.EOF {
				t.Fatalf("the other end's peer read %d bytes, %v; want EOF (the end closed)", n, err)
			}
		})
	}
}
