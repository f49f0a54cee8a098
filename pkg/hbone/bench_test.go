package hbone

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// benchUpstream serves two modes, chosen by a 9-byte header: 'u' + size
// reads until EOF and answers one byte; 'd' + size sends size bytes and
// half-closes. Anything else is an echo.
func benchUpstream(b *testing.B) netip.AddrPort {
	return startUpstream(b, func(c *net.TCPConn) {
		var hdr [9]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		size := int64(binary.BigEndian.Uint64(hdr[1:]))
		buf := make([]byte, copyBufferSize)
		switch hdr[0] {
		case 'u':
			_, _ = io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{c}, buf)
			_, _ = c.Write([]byte{1})
		case 'd':
			for size > 0 {
				n, err := c.Write(buf[:min(int64(len(buf)), size)])
				if err != nil {
					return
				}
				size -= int64(n)
			}
			_ = c.CloseWrite()
			_, _ = io.Copy(io.Discard, c)
		default:
			_, _ = c.Write(hdr[:])
			echo(c)
		}
	})
}

type benchEnv struct {
	up netip.AddrPort
	ts *testServer
	d  *Dialer
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	up := benchUpstream(b)
	ts := startServer(b, &Server{Logger: discardLogger})
	return &benchEnv{up: up, ts: ts, d: newDialer(b, nil)}
}

func (e *benchEnv) dialDirect(b *testing.B) net.Conn {
	c, err := net.Dial("tcp", e.up.String())
	if err != nil {
		b.Fatal(err)
	}
	return c
}

func (e *benchEnv) dialTunnel(b *testing.B) net.Conn {
	c, err := e.d.Dial(context.Background(), request(e.ts, e.up))
	if err != nil {
		b.Fatal(err)
	}
	return c
}

type closeWriter interface {
	net.Conn
	CloseWrite() error
}

// transfer moves total bytes over a fresh connection in the given
// direction and returns the elapsed time, including the final
// acknowledgement (upload) or EOF (download).
func transfer(b *testing.B, c net.Conn, mode byte, total int64) time.Duration {
	defer c.Close()
	var hdr [9]byte
	hdr[0] = mode
	binary.BigEndian.PutUint64(hdr[1:], uint64(total))
	buf := make([]byte, copyBufferSize)
	start := time.Now()
	if _, err := c.Write(hdr[:]); err != nil {
		b.Fatal(err)
	}
	switch mode {
	case 'u':
		for left := total; left > 0; {
			n, err := c.Write(buf[:min(int64(len(buf)), left)])
			if err != nil {
				b.Fatal(err)
			}
			left -= int64(n)
		}
		if err := c.(closeWriter).CloseWrite(); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf[:1]); err != nil {
			b.Fatal(err)
		}
	case 'd':
		n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{c}, buf)
		if err != nil || n != total {
			b.Fatalf("downloaded %d of %d bytes: %v", n, total, err)
		}
	}
	return time.Since(start)
}

// BenchmarkBulkThroughput moves b.N * 256 KiB through one tunnelled stream
// and, for comparison, directly over loopback TCP to the same upstream.
func BenchmarkBulkThroughput(b *testing.B) {
	for _, dir := range []struct {
		name string
		mode byte
	}{{"upload", 'u'}, {"download", 'd'}} {
		b.Run(dir.name, func(b *testing.B) {
			e := newBenchEnv(b)
			// Warm the pooled connection.
			transfer(b, e.dialTunnel(b), dir.mode, 1<<20)
			// Alternate direct and tunnelled rounds so that background load
			// on the machine hits both alike.
			const rounds = 4
			per := int64(b.N) * copyBufferSize / rounds
			per = max(per, 1)
			total := per * rounds
			b.SetBytes(copyBufferSize)
			b.ResetTimer()
			var direct, tunnel time.Duration
			for range rounds {
				direct += transfer(b, e.dialDirect(b), dir.mode, per)
				tunnel += transfer(b, e.dialTunnel(b), dir.mode, per)
			}
			b.StopTimer()
			mbs := func(d time.Duration) float64 { return float64(total) / 1e6 / d.Seconds() }
			b.ReportMetric(mbs(direct), "direct-MB/s")
			b.ReportMetric(mbs(tunnel), "tunnel-MB/s")
			b.ReportMetric(mbs(tunnel)/mbs(direct), "ratio")
		})
	}
}

// BenchmarkRoundTrip1KiB sends 1 KiB and reads the 1 KiB echo, over a warm
// tunnel and directly over TCP, and reports latency percentiles.
func BenchmarkRoundTrip1KiB(b *testing.B) {
	e := newBenchEnv(b)
	dc, tc := e.dialDirect(b), e.dialTunnel(b)
	defer dc.Close()
	defer tc.Close()
	startEcho(b, dc)
	startEcho(b, tc)
	measure := func(c net.Conn, ds []time.Duration) { roundTrips(b, c, ds) }
	measure(dc, make([]time.Duration, 100)) // warm up
	measure(tc, make([]time.Duration, 100))
	direct := make([]time.Duration, b.N)
	tunnel := make([]time.Duration, b.N)
	b.ResetTimer()
	// Alternate batches of direct and tunnelled round trips so that
	// background load on the machine hits both alike.
	const batch = 1000
	for i := 0; i < b.N; i += batch {
		j := min(i+batch, b.N)
		measure(dc, direct[i:j])
		measure(tc, tunnel[i:j])
	}
	b.StopTimer()
	slices.Sort(direct)
	slices.Sort(tunnel)
	pct := percentileUS
	b.ReportMetric(pct(direct, 0.50), "direct-p50-us")
	b.ReportMetric(pct(direct, 0.99), "direct-p99-us")
	b.ReportMetric(pct(tunnel, 0.50), "tunnel-p50-us")
	b.ReportMetric(pct(tunnel, 0.99), "tunnel-p99-us")
	b.ReportMetric(pct(tunnel, 0.50)-pct(direct, 0.50), "added-p50-us")
	b.ReportMetric(pct(tunnel, 0.99)-pct(direct, 0.99), "added-p99-us")
}

// BenchmarkStreamOpen opens and closes one tunnel per op over a warm
// connection. Allocations include the server side (same process).
func BenchmarkStreamOpen(b *testing.B) {
	ts := startServer(b, &Server{Logger: discardLogger, Handler: func(s *Stream) {
		if s.Accept() == nil {
			_, _ = io.Copy(io.Discard, s)
		}
	}})
	d := newDialer(b, nil)
	r := request(ts, netip.MustParseAddrPort("10.0.0.1:80"))
	open := func() {
		c, err := d.Dial(context.Background(), r)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	open()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		open()
	}
}

// BenchmarkRoundTripDuringBulk measures 1 KiB round trips on a new tunnel
// opened while a bulk upload (past DefaultBulkStreamBytes) runs on another
// tunnel to the same peer. "retired" is the default Dialer: the bulk
// stream's connection takes no new tunnel, so the round trips get a
// connection of their own. "shared" is the baseline, BulkStreamBytes = -1:
// they share the bulk stream's connection and queue behind its bytes.
// Batches of the two alternate, each with its own bulk stream, so that
// background load on the machine hits both alike.
func BenchmarkRoundTripDuringBulk(b *testing.B) {
	type variant struct {
		e  *benchEnv
		ds []time.Duration
	}
	shared, retired := &variant{e: newBenchEnv(b)}, &variant{e: newBenchEnv(b)}
	shared.e.d.BulkStreamBytes = -1
	hdr := []byte{'u', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	batch := func(v *variant, n int) {
		bulk := v.e.dialTunnel(b)
		if _, err := bulk.Write(hdr); err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, copyBufferSize)
		for sent := 0; sent <= DefaultBulkStreamBytes; sent += len(buf) {
			if _, err := bulk.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				if _, err := bulk.Write(buf); err != nil {
					return
				}
			}
		}()
		c := v.e.dialTunnel(b)
		startEcho(b, c)
		v.ds = append(v.ds, make([]time.Duration, n)...)
		roundTrips(b, c, v.ds[len(v.ds)-n:])
		c.Close()
		bulk.Close()
		<-done
	}
	b.ResetTimer()
	const per = 250
	for i := 0; i < b.N; i += per {
		n := min(per, b.N-i)
		batch(shared, n)
		batch(retired, n)
	}
	b.StopTimer()
	slices.Sort(shared.ds)
	slices.Sort(retired.ds)
	pct := percentileUS
	s50, s99 := pct(shared.ds, 0.50), pct(shared.ds, 0.99)
	r50, r99 := pct(retired.ds, 0.50), pct(retired.ds, 0.99)
	b.ReportMetric(s50, "shared-p50-us")
	b.ReportMetric(s99, "shared-p99-us")
	b.ReportMetric(r50, "retired-p50-us")
	b.ReportMetric(r99, "retired-p99-us")
	b.ReportMetric(r50/s50, "p50-retired/shared")
	b.ReportMetric(r99/s99, "p99-retired/shared")
}

// startEcho puts a connection to benchUpstream in echo mode.
func startEcho(b *testing.B, c net.Conn) {
	b.Helper()
	if _, err := c.Write([]byte("e........")); err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 9)); err != nil {
		b.Fatal(err)
	}
}

// roundTrips sends 1 KiB and reads its echo once per element of ds,
// recording each round trip's time there.
func roundTrips(b *testing.B, c net.Conn, ds []time.Duration) {
	b.Helper()
	msg, reply := make([]byte, 1024), make([]byte, 1024)
	for i := range ds {
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			b.Fatal(err)
		}
		ds[i] = time.Since(t0)
	}
}

// percentileUS is the p-th percentile (0 < p < 1) of sorted, in µs.
func percentileUS(sorted []time.Duration, p float64) float64 {
	return float64(sorted[min(len(sorted)-1, int(float64(len(sorted))*p))].Nanoseconds()) / 1e3
}
