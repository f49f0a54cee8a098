package hbone

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
)

// TestBulkStreamRetiresConnection: a stream that carries BulkStreamBytes
// one way (sent, or received) takes its connection out of the pool: the
// next tunnel gets a new connection while the bulk stream goes on, and the
// retired connection closes once that stream ends. Streams below the
// threshold share the connection as before.
func TestBulkStreamRetiresConnection(t *testing.T) {
	checkGoroutines(t)
	const bulk = 256 << 10
	echoUp := startUpstream(t, echo)
	// source sends bulk bytes, then echoes.
	sourceUp := startUpstream(t, func(c *net.TCPConn) {
		if _, err := c.Write(make([]byte, bulk)); err != nil {
			return
		}
		echo(c)
	})
	ts := startServer(t, &Server{})
	var cd countingDial
	d := newDialer(t, &cd)
	d.BulkStreamBytes = bulk

	dial := func(up netip.AddrPort) *Conn {
		t.Helper()
		c, err := d.Dial(context.Background(), request(ts, up))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	roundTrip := func(c *Conn, n int) {
		t.Helper()
		msg := bytes.Repeat([]byte("b"), n)
		errc := make(chan error, 1)
		go func() { _, err := c.Write(msg); errc <- err }()
		got := make([]byte, n)
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo of %d bytes: %v (equal %v)", n, err, bytes.Equal(got, msg))
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	wantDials := func(n int64) {
		t.Helper()
		if got := cd.n.Load(); got != n {
			t.Fatalf("%d connections dialled, want %d", got, n)
		}
	}

	// Small streams share one connection.
	small := dial(echoUp)
	roundTrip(small, bulk-1)
	other := dial(echoUp)
	roundTrip(other, 1024)
	wantDials(1)
	other.Close()

	// Sending: the stream reaches the threshold and retires the connection,
	// which stays open for it (and for the small stream still on it).
	sender := dial(echoUp)
	roundTrip(sender, bulk)
	next := dial(echoUp)
	wantDials(2)
	roundTrip(next, 10)
	roundTrip(sender, 10) // the bulk stream goes on
	roundTrip(small, 10)
	if got := ts.ln.open.Load(); got != 2 {
		t.Fatalf("server has %d connections open, want 2", got)
	}
	sender.Close()
	small.Close()
	waitFor(t, "the retired connection to close after its last stream", func() bool { return ts.ln.open.Load() == 1 })

	// Receiving: the same, for bytes from the server.
	receiver := dial(sourceUp)
	if _, err := io.ReadFull(receiver, make([]byte, bulk)); err != nil {
		t.Fatal(err)
	}
	wantDials(2)
	after := dial(echoUp)
	wantDials(3)
	roundTrip(after, 10)
	roundTrip(receiver, 10)
	next.Close()
	receiver.Close()
	waitFor(t, "the second retired connection to close", func() bool { return ts.ln.open.Load() == 1 })
	roundTrip(after, 10)
	after.Close()
}

// TestBulkStreamBytesNegative: a negative BulkStreamBytes never retires a
// connection.
func TestBulkStreamBytesNegative(t *testing.T) {
	checkGoroutines(t)
	up := startUpstream(t, echo)
	ts := startServer(t, &Server{})
	var cd countingDial
	d := newDialer(t, &cd)
	d.BulkStreamBytes = -1
	for range 2 {
		c, err := d.Dial(context.Background(), request(ts, up))
		if err != nil {
			t.Fatal(err)
		}
		msg := make([]byte, 8<<20)
		go c.Write(msg)
		if _, err := io.ReadFull(c, msg); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	if got := cd.n.Load(); got != 1 {
		t.Errorf("%d connections dialled, want 1", got)
	}
}
