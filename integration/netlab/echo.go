package netlab

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// ServeEcho runs an echo server on port inside the pod until the test
// ends: every connection gets its bytes back, then a half-close. The test's
// cleanup closes the listener and every open connection.
func (p *Pod) ServeEcho(t testing.TB, port int) {
	t.Helper()
	var ln net.Listener
	if err := p.Do(func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				_ = c.SetDeadline(time.Now().Add(90 * time.Second))
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
			})
		}
	})
}

// DialTCP connects from inside the pod to dst (3 s timeout).
func (p *Pod) DialTCP(dst netip.AddrPort) (*net.TCPConn, error) {
	var c net.Conn
	err := p.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", dst.String(), 3*time.Second)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", dst, p.Name, err)
	}
	return c.(*net.TCPConn), nil
}

// Echo sends msg from the pod to dst, half-closes, and expects the same
// bytes back followed by EOF (an echo server such as ServeEcho's).
func (p *Pod) Echo(dst netip.AddrPort, msg []byte) error {
	c, err := p.DialTCP(dst)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("%s -> %s: write: %w", p.Name, dst, err)
	}
	if err := c.CloseWrite(); err != nil {
		return fmt.Errorf("%s -> %s: close write: %w", p.Name, dst, err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("%s -> %s: read: %w (after %d bytes)", p.Name, dst, err, len(got))
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("%s -> %s: echo returned %d bytes, want %d", p.Name, dst, len(got), len(msg))
	}
	return nil
}

// Hello is a message for Echo that names the pod, repeated n times.
func (p *Pod) Hello(n int) []byte { return bytes.Repeat([]byte("hello from "+p.Name+"; "), n) }

// ServeWhoami runs a server on port inside the pod until the test ends:
// every connection gets one line, the peer address the server saw, and is
// closed.
func (p *Pod) ServeWhoami(t testing.TB, port int) {
	t.Helper()
	var ln net.Listener
	if err := p.Do(func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).AddrPort())
			_ = c.Close()
		}
	})
}

// Whoami connects from the pod to a ServeWhoami server at dst and returns
// the peer address the server saw, and the connection's local address.
func (p *Pod) Whoami(dst netip.AddrPort) (seen, local netip.AddrPort, err error) {
	c, err := p.DialTCP(dst)
	if err != nil {
		return seen, local, err
	}
	defer c.Close()
	local = c.LocalAddr().(*net.TCPAddr).AddrPort()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := io.ReadAll(c)
	if err != nil {
		return seen, local, fmt.Errorf("%s -> %s: read: %w", p.Name, dst, err)
	}
	seen, err = netip.ParseAddrPort(string(bytes.TrimSpace(line)))
	if err != nil {
		return seen, local, fmt.Errorf("%s -> %s: answer %q: %w", p.Name, dst, line, err)
	}
	return netip.AddrPortFrom(seen.Addr().Unmap(), seen.Port()), local, nil
}
