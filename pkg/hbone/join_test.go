package hbone

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"math/big"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// joinProxies runs the two ends of a tunnel as ztunnel does: a client-side
// proxy that accepts TCP and joins each connection to a tunnel, and a
// server whose handler joins each stream to the upstream, both with
// JoinCounting. It returns the client proxy's address, and channels that
// receive the byte counts of each Join when it returns.
type joinCounts struct{ in, out int64 }

func joinProxies(t *testing.T) (addr string, client, server chan joinCounts) {
	t.Helper()
	up := startUpstream(t, echo)
	client, server = make(chan joinCounts, 1), make(chan joinCounts, 1)
	ts := startServer(t, &Server{Handler: func(st *Stream) {
		u, err := net.Dial("tcp", up.String())
		if err != nil {
			_ = st.Reject(503, "upstream unreachable")
			return
		}
		defer u.Close()
		if st.Accept() != nil {
			return
		}
		var in, out atomic.Int64
		_, _ = JoinCounting(st, u, func(n int) { in.Add(int64(n)) }, func(n int) { out.Add(int64(n)) })
		server <- joinCounts{in.Load(), out.Load()}
	}})
	d := newDialer(t, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc, err := d.Dial(context.Background(), request(ts, up))
				if err != nil {
					t.Error(err)
					return
				}
				defer tc.Close()
				var in, out atomic.Int64
				_, _ = JoinCounting(c, tc, func(n int) { in.Add(int64(n)) }, func(n int) { out.Add(int64(n)) })
				client <- joinCounts{in.Load(), out.Load()}
			}()
		}
	}()
	return l.Addr().String(), client, server
}

func waitCounts(t *testing.T, name string, ch chan joinCounts, want int64) {
	t.Helper()
	select {
	case got := <-ch:
		if got.in != want || got.out != want {
			t.Errorf("%s proxy counted %d bytes in and %d out, want %d each way", name, got.in, got.out, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s proxy's Join did not return", name)
	}
}

// TestJoinThroughTunnel sends requests of mixed sizes through both proxies
// (small payloads take the read loops' direct writes to the sockets, large
// ones the copiers) and checks every echo, the half-close and the counts.
func TestJoinThroughTunnel(t *testing.T) {
	checkGoroutines(t)
	addr, client, server := joinProxies(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var total int64
	buf := make([]byte, 64<<10)
	reply := make([]byte, len(buf))
	for i := range 1000 {
		size := 1 + i%1500
		if i%50 == 0 {
			k, _ := rand.Int(rand.Reader, big.NewInt(int64(len(buf))))
			size = 1 + int(k.Int64())
		}
		msg := buf[:size]
		_, _ = rand.Read(msg)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, reply[:size]); err != nil {
			t.Fatalf("request %d (%d bytes): %v", i, size, err)
		}
		if !bytes.Equal(reply[:size], msg) {
			t.Fatalf("request %d (%d bytes): echo differs", i, size)
		}
		total += int64(size)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(reply); n != 0 || err != io.EOF {
		t.Fatalf("after the half-close, Read = %d, %v; want 0, EOF", n, err)
	}
	waitCounts(t, "client", client, total)
	waitCounts(t, "server", server, total)
}

// TestJoinSlowReader sends 16 MiB in 1 KiB writes through both proxies
// while the receiving application does not read for a while: the bytes
// that the client side's direct writes could not place in the socket stay
// in the stream's buffer, flow control stops the sender, and all of them
// arrive in order once the application reads.
func TestJoinSlowReader(t *testing.T) {
	checkGoroutines(t)
	const size = 16 << 20
	addr, client, server := joinProxies(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sent := sha256.New()
	errc := make(chan error, 1)
	go func() {
		msg := make([]byte, 1024)
		for range size / len(msg) {
			_, _ = rand.Read(msg)
			sent.Write(msg)
			if _, err := c.Write(msg); err != nil {
				errc <- err
				return
			}
		}
		errc <- c.(*net.TCPConn).CloseWrite()
	}()
	time.Sleep(300 * time.Millisecond)
	recv := sha256.New()
	n, err := io.Copy(recv, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n != size || !bytes.Equal(sent.Sum(nil), recv.Sum(nil)) {
		t.Fatalf("received %d of %d bytes, digest match %v", n, size, bytes.Equal(sent.Sum(nil), recv.Sum(nil)))
	}
	waitCounts(t, "client", client, size)
	waitCounts(t, "server", server, size)
}

// TestPrefaceTimeout: a client that completes the TLS handshake but sends
// no HTTP/2 preface is disconnected once HandshakeTimeout passes (the read
// deadline applies to the raw socket reads under TLS).
func TestPrefaceTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	ts := startServer(t, &Server{HandshakeTimeout: timeout, Logger: discardLogger})
	cfg, _ := testPKI(t).clientTLS(clientID, serverID)
	start := time.Now()
	tc, err := tls.Dial("tcp", ts.addr.String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	_ = tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	// The server's SETTINGS come first; then the connection must end.
	_, err = io.Copy(io.Discard, tc)
	elapsed := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server kept the connection open without a preface: %v", err)
	}
	if elapsed < timeout-50*time.Millisecond {
		t.Fatalf("connection ended after %v, before the %v timeout", elapsed, timeout)
	}
}
