package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/ztunnel/metrics"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// joinThrough runs e.join between two loopback connections, sends up bytes
// from the client to the server end and down bytes back, and returns the
// bytes each end read and how often endThread was called.
func joinThrough(t *testing.T, e *Env, up, down int) (gotUp, gotDown int64, ends int32) {
	t.Helper()
	var calls atomic.Int32
	saved := endThread
	endThread = func() { calls.Add(1) }
	t.Cleanup(func() { endThread = saved })

	app, client := tcpPair(t)      // the application's end, ztunnel's client side
	upstream, server := tcpPair(t) // ztunnel's upstream side, the server's end
	mc := e.Metrics.Open(metrics.Labels{})
	joined := make(chan struct{})
	go func() {
		defer close(joined)
		e.join(client, upstream, mc)
	}()
	errs := make(chan error, 2)
	go func() {
		_, err := app.Write(bytes.Repeat([]byte{'u'}, up))
		if err == nil {
			err = app.(*net.TCPConn).CloseWrite()
		}
		errs <- err
	}()
	go func() {
		_, err := server.Write(bytes.Repeat([]byte{'d'}, down))
		if err == nil {
			err = server.(*net.TCPConn).CloseWrite()
		}
		errs <- err
	}()
	readAll := func(c net.Conn, n *int64) chan error {
		done := make(chan error, 1)
		go func() {
			k, err := io.Copy(io.Discard, c)
			*n = k
			done <- err
		}()
		return done
	}
	upDone, downDone := readAll(server, &gotUp), readAll(app, &gotDown)
	for _, ch := range []chan error{errs, errs, upDone, downDone} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("join did not finish")
		}
	}
	<-joined
	mc.Close()
	return gotUp, gotDown, calls.Load()
}

func TestJoinEndsThreadAfterBulk(t *testing.T) {
	const small = 64 << 10
	for _, tc := range []struct {
		name      string
		limit     int64
		up, down  int
		wantCalls int32
	}{
		{"small both ways", 0, small, small, 0},
		{"bulk upload", 0, DefaultBulkThreadBytes, small, 1},
		{"bulk download", 0, small, DefaultBulkThreadBytes, 1},
		{"just below the limit", 0, DefaultBulkThreadBytes - 1, DefaultBulkThreadBytes - 1, 0},
		{"lower limit", 1 << 20, 1 << 20, 0, 1},
		{"negative: never", -1, DefaultBulkThreadBytes, DefaultBulkThreadBytes, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &Env{Metrics: metrics.New(), BulkThreadBytes: tc.limit}
			up, down, calls := joinThrough(t, e, tc.up, tc.down)
			if up != int64(tc.up) || down != int64(tc.down) {
				t.Fatalf("the ends read %d and %d bytes, want %d and %d", up, down, tc.up, tc.down)
			}
			if calls != tc.wantCalls {
				t.Fatalf("endThread called %d times, want %d", calls, tc.wantCalls)
			}
		})
	}
}

// TestEndThreadEndsAThread checks what endThread relies on: a goroutine
// whose last act is lockAndExit takes its thread with it. (The main thread
// is parked for good instead of ended; if the goroutine lands there, the
// next one runs elsewhere.)
func TestEndThreadEndsAThread(t *testing.T) {
	for range 3 {
		tids := make(chan int, 1)
		go func() {
			tids <- unix.Gettid()
			lockAndExit()
		}()
		tid := <-tids
		if tid == os.Getpid() {
			continue
		}
		path := fmt.Sprintf("/proc/self/task/%d", tid)
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := os.Stat(path)
			if os.IsNotExist(err) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("thread %d still exists after its locked goroutine returned", tid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Fatal("every goroutine ran on the main thread")
}
