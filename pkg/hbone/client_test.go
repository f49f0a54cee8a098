package hbone

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

func TestConnDeadlineAbortsTunnel(t *testing.T) {
	checkGoroutines(t)
	reset := make(chan error, 1)
	ts := startServer(t, &Server{Handler: func(s *Stream) {
		s.Accept()
		_, err := io.Copy(io.Discard, s) // ends when the client resets
		reset <- err
	}})
	d := newDialer(t, nil)
	c, err := d.Dial(context.Background(), request(ts, netip.MustParseAddrPort("10.0.0.1:80")))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read = %v, want deadline exceeded", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Read returned after %v", el)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write after the deadline = %v, want deadline exceeded", err)
	}
	select {
	case err := <-reset:
		var re *StreamResetError
		if !errors.As(err, &re) || !re.Remote || re.Code != uint32(http2.ErrCodeCancel) {
			t.Errorf("server saw %v, want a remote CANCEL reset", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server stream not reset")
	}
	// A later deadline in the future does not disturb a fresh tunnel.
	c2, err := d.Dial(context.Background(), request(ts, netip.MustParseAddrPort("10.0.0.1:80")))
	if err != nil {
		t.Fatal(err)
	}
	c2.SetDeadline(time.Now().Add(time.Hour))
	c2.SetDeadline(time.Time{})
	if _, err := c2.Write([]byte("x")); err != nil {
		t.Errorf("Write = %v", err)
	}
	c2.Close()
}

func TestHealthCheckKeepsConnection(t *testing.T) {
	checkGoroutines(t)
	up := startUpstream(t, echo)
	ts := startServer(t, &Server{})
	var cd countingDial
	d := newDialer(t, &cd)
	d.HealthCheckInterval = 10 * time.Millisecond
	c, err := d.Dial(context.Background(), request(ts, up))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // several PINGs, all answered
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "ping" {
		t.Fatalf("got %q, %v", b, err)
	}
	c.Close()
	c, err = d.Dial(context.Background(), request(ts, up))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n := cd.n.Load(); n != 1 {
		t.Errorf("dialled %d connections, want 1", n)
	}
}

// TestRefusedStreamIsRetried opens streams beyond a server limit the client
// has not learnt yet: the server refuses the extra ones (REFUSED_STREAM) and
// Dial retries them on other connections.
func TestRefusedStreamIsRetried(t *testing.T) {
	checkGoroutines(t)
	release := make(chan struct{})
	ts := startServer(t, &Server{MaxConcurrentStreams: 1, Handler: func(s *Stream) {
		s.Accept()
		select {
		case <-release:
		case <-s.Context().Done():
		}
	}})
	d := newDialer(t, nil)
	// Pretend the server allows more, as before its SETTINGS arrive.
	first, err := d.Dial(context.Background(), request(ts, netip.MustParseAddrPort("10.0.0.1:80")))
	if err != nil {
		t.Fatal(err)
	}
	first.cc.mu.Lock()
	first.cc.maxStreams = 100
	first.cc.mu.Unlock()
	second, err := d.Dial(context.Background(), request(ts, netip.MustParseAddrPort("10.0.0.1:80")))
	if err != nil {
		t.Fatalf("Dial beyond the server's limit: %v", err)
	}
	if second.cc == first.cc {
		t.Error("the refused stream was not retried on another connection")
	}
	close(release)
	first.Close()
	second.Close()
}
