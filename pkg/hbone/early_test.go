package hbone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var earlyAuthority = netip.MustParseAddrPort("10.0.0.1:80")

// echoStream accepts s and echoes it back until the client half-closes.
func echoStream(s *Stream) {
	if err := s.Accept(); err != nil {
		return
	}
	_, _ = io.Copy(s, s)
	_ = s.CloseWrite()
}

// exchange writes more on c, half-closes, and returns everything read back.
func exchange(t *testing.T, c *Conn, more []byte) []byte {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(more)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return got
}

// TestEarlyDataBeforeAnswer: the early bytes reach the server before it
// answers (its handler reads them before Accept), and come first in the
// tunnel, followed by what the client writes after Dial.
func TestEarlyDataBeforeAnswer(t *testing.T) {
	checkGoroutines(t)
	early := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	seen := make(chan []byte, 1)
	ts := startServer(t, &Server{Handler: func(s *Stream) {
		buf := make([]byte, len(early))
		_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.ReadFull(s, buf)
		if err != nil {
			seen <- nil
			_ = s.Reject(500, err.Error())
			return
		}
		_ = s.SetReadDeadline(time.Time{})
		seen <- buf
		if err := s.Accept(); err != nil {
			return
		}
		_, _ = s.Write(buf)
		_, _ = io.Copy(s, s)
		_ = s.CloseWrite()
	}})
	d := newDialer(t, nil)
	r := request(ts, earlyAuthority)
	r.EarlyData = early
	c, err := d.Dial(context.Background(), r)
	if err != nil {
		t.Fatalf("Dial with early data: %v", err)
	}
	defer c.Close()
	if got := <-seen; !bytes.Equal(got, early) {
		t.Fatalf("before answering the server read %q, want %q", got, early)
	}
	got := exchange(t, c, []byte("and the rest"))
	if want := string(early) + "and the rest"; string(got) != want {
		t.Errorf("tunnel carried %q, want %q", got, want)
	}
}

// TestEarlyDataBeyondWindow: early data that flow control does not allow at
// once (here the connection's window is taken by streams whose handlers do
// not read yet) is sent after the answer, in order; more than MaxEarlyData
// is refused.
func TestEarlyDataBeyondWindow(t *testing.T) {
	checkGoroutines(t)
	release := make(chan struct{})
	ts := startServer(t, &Server{Handler: func(s *Stream) {
		if s.Header().Get("X-Stall") != "" {
			_ = s.Accept()
			select {
			case <-release:
			case <-s.Context().Done():
				return
			}
		}
		echoStream(s)
	}})
	d := newDialer(t, nil)
	stall := request(ts, earlyAuthority)
	stall.Header = map[string][]string{"X-Stall": {"1"}}
	var stalled []*Conn
	defer func() {
		for _, c := range stalled {
			c.Close()
		}
	}()
	for {
		c, err := d.Dial(context.Background(), stall)
		if err != nil {
			t.Fatal(err)
		}
		stalled = append(stalled, c)
		c.cc.mu.Lock()
		n := min(c.sendWindow, c.cc.sendWindow)
		c.cc.mu.Unlock()
		if _, err := c.Write(make([]byte, n)); err != nil {
			t.Fatal(err)
		}
		c.cc.mu.Lock()
		left := c.cc.sendWindow
		c.cc.mu.Unlock()
		if left == 0 {
			break
		}
		if len(stalled) > 32 {
			t.Fatalf("the connection's window is not exhausted after %d streams", len(stalled))
		}
	}
	early := make([]byte, MaxEarlyData)
	for i := range early {
		early[i] = byte(i * 7)
	}
	r := request(ts, earlyAuthority)
	r.EarlyData = early
	time.AfterFunc(100*time.Millisecond, func() { close(release) })
	c, err := d.Dial(context.Background(), r)
	if err != nil {
		t.Fatalf("Dial with %d bytes of early data: %v", len(early), err)
	}
	defer c.Close()
	if c.cc != stalled[0].cc {
		t.Fatal("the tunnel did not use the pooled connection")
	}
	got := exchange(t, c, []byte("tail"))
	if want := append(append([]byte{}, early...), "tail"...); !bytes.Equal(got, want) {
		t.Errorf("tunnel carried %d bytes, want the %d early bytes then %q in order", len(got), len(early), "tail")
	}

	r.EarlyData = make([]byte, MaxEarlyData+1)
	if _, err := d.Dial(context.Background(), r); err == nil || !strings.Contains(err.Error(), "early data") {
		t.Errorf("Dial with %d bytes of early data: %v, want an error", len(r.EarlyData), err)
	}
}

// TestEarlyDataRefused: a server that refuses the tunnel discards its early
// data, and the connection's flow control gets the bytes back: many refused
// tunnels with large early data leave the connection usable.
func TestEarlyDataRefused(t *testing.T) {
	checkGoroutines(t)
	var refuse atomic.Bool
	refuse.Store(true)
	ts := startServer(t, &Server{Handler: func(s *Stream) {
		if refuse.Load() {
			_ = s.Reject(403, "no")
			return
		}
		echoStream(s)
	}})
	cd := &countingDial{}
	d := newDialer(t, cd)
	early := bytes.Repeat([]byte("x"), MaxEarlyData)
	for i := range 64 { // 4 MiB in all, more than the connection's window
		r := request(ts, earlyAuthority)
		r.EarlyData = early
		_, err := d.Dial(context.Background(), r)
		var se *StatusError
		if !errors.As(err, &se) || se.Code != 403 {
			t.Fatalf("refused Dial %d: %v, want a 403 StatusError", i, err)
		}
	}
	refuse.Store(false)
	r := request(ts, earlyAuthority)
	r.EarlyData = []byte("hello")
	c, err := d.Dial(context.Background(), r)
	if err != nil {
		t.Fatalf("Dial after the refusals: %v", err)
	}
	defer c.Close()
	if got := exchange(t, c, []byte(" world")); string(got) != "hello world" {
		t.Errorf("tunnel carried %q", got)
	}
	if n := cd.n.Load(); n != 1 {
		t.Errorf("%d TCP connections dialled, want 1: the refusals must not break the pooled connection", n)
	}
}

// saturated returns a dialer whose pooled connection to a server allowing
// one stream already carries one, while the dialer believes the server
// allows more (as before its SETTINGS arrive): the next stream on that
// connection is refused and retried on another. The server echoes.
func saturated(t *testing.T) (*Dialer, *testServer, *clientConn) {
	t.Helper()
	release := make(chan struct{})
	ts := startServer(t, &Server{MaxConcurrentStreams: 1, Handler: func(s *Stream) {
		if s.Header().Get("X-Hold") != "" {
			_ = s.Accept()
			select {
			case <-release:
			case <-s.Context().Done():
			}
			return
		}
		echoStream(s)
	}})
	d := newDialer(t, nil)
	hold := request(ts, earlyAuthority)
	hold.Header = map[string][]string{"X-Hold": {"1"}}
	first, err := d.Dial(context.Background(), hold)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(release); first.Close() })
	first.cc.mu.Lock()
	first.cc.maxStreams = 100
	first.cc.mu.Unlock()
	return d, ts, first.cc
}

// TestEarlyDataRetried: a stream refused before the server saw it is retried
// on another connection with its early bytes (Request.EarlyData, and those
// written with Pending.Write), which the server then gets exactly once.
func TestEarlyDataRetried(t *testing.T) {
	checkGoroutines(t)
	t.Run("Dial", func(t *testing.T) {
		d, ts, held := saturated(t)
		r := request(ts, earlyAuthority)
		r.EarlyData = []byte("once")
		c, err := d.Dial(context.Background(), r)
		if err != nil {
			t.Fatalf("Dial beyond the server's limit: %v", err)
		}
		defer c.Close()
		if c.cc == held {
			t.Fatal("the refused stream was not retried on another connection")
		}
		if got := exchange(t, c, []byte(" only")); string(got) != "once only" {
			t.Errorf("tunnel carried %q, want %q", got, "once only")
		}
	})
	t.Run("Start, Write, Wait", func(t *testing.T) {
		d, ts, held := saturated(t)
		r := request(ts, earlyAuthority)
		r.EarlyData = []byte("on")
		p, err := d.Start(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		_ = p.Write([]byte("ce")) // the stream may already be refused: kept anyway
		c, err := p.Wait(context.Background())
		if err != nil {
			t.Fatalf("Wait: %v", err)
		}
		defer c.Close()
		if c.cc == held {
			t.Fatal("the refused stream was not retried on another connection")
		}
		if got := exchange(t, c, []byte(" only")); string(got) != "once only" {
			t.Errorf("tunnel carried %q, want %q", got, "once only")
		}
	})
}

// TestPendingWriteBeforeAnswer: bytes written on a started tunnel reach the
// server before it answers, and Answered fires once it has.
func TestPendingWriteBeforeAnswer(t *testing.T) {
	checkGoroutines(t)
	first := []byte("hello, ")
	ts := startServer(t, &Server{Handler: func(s *Stream) {
		buf := make([]byte, len(first))
		_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(s, buf); err != nil || !bytes.Equal(buf, first) {
			_ = s.Reject(500, "early bytes missing")
			return
		}
		_ = s.SetReadDeadline(time.Time{})
		if err := s.Accept(); err != nil {
			return
		}
		_, _ = s.Write(buf)
		_, _ = io.Copy(s, s)
		_ = s.CloseWrite()
	}})
	d := newDialer(t, nil)
	p, err := d.Start(context.Background(), request(ts, earlyAuthority))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Answered():
		t.Fatal("answered before the server could read anything")
	case <-time.After(20 * time.Millisecond):
	}
	if err := p.Write(first); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Answered():
	case <-time.After(5 * time.Second):
		t.Fatal("Answered did not fire")
	}
	c, err := p.Wait(context.Background())
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	defer c.Close()
	if got := exchange(t, c, []byte("world")); string(got) != "hello, world" {
		t.Errorf("tunnel carried %q", got)
	}
	if err := p.Write(make([]byte, MaxEarlyData)); err == nil {
		t.Error("Write beyond MaxEarlyData: no error")
	}
}
