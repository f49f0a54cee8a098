//go:build linux

package hbone

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// BenchmarkPacedRequests measures what a tunnel costs at a fixed request
// rate, the way the data-plane benchmark loads ztunnel: 8 connections send
// 1 KiB and read the 1 KiB echo, 1000 requests/s in all, once directly to
// an echo server and once through two proxy processes, a client side that
// accepts plain TCP and opens a tunnel per connection (Dialer, Join) and a
// server side that forwards each stream to the echo server (Server, Join).
// The proxies are child processes of the test binary with ztunnel's
// runtime defaults (GOMAXPROCS 1, GOGC 50), so the CPU they use (utime +
// stime from /proc) is theirs alone, including the Go runtime's parking
// and waking of threads between requests, which an in-process benchmark
// does not show. It reports the proxies' CPU per 1000 requests and the
// latency the tunnel adds. b.N is ignored: each path is loaded for
// HBONE_PACED_DURATION (default 4s, in two rounds; -benchtime 1x).
// HBONE_PACED_PROCS sets the proxies' GOMAXPROCS; HBONE_PACED_WRAP=1 makes
// them count bytes through a wrapper around the client-side conn, as
// ztunnel once did, instead of with JoinCounting; HBONE_PACED_MEMSTATS=1
// makes them print their allocation and GC counts when they end.
func BenchmarkPacedRequests(b *testing.B) {
	const (
		conns = 8
		rate  = 1000 // requests/s over all connections
	)
	dur := 4 * time.Second
	if s := os.Getenv("HBONE_PACED_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatal(err)
		}
		dur = d
	}
	dir := b.TempDir()
	writePKI(b, dir)
	up := startUpstream(b, echo)
	server := startPacedChild(b, dir, "server", up.String())
	client := startPacedChild(b, dir, "client", server.addr)

	// With HBONE_PACED_HAPROXY=1, an HAProxy pair in TCP mode with mutual
	// TLS 1.3 (as in integration/meshbench) is measured as a third path.
	var hap []*pacedChild
	if os.Getenv("HBONE_PACED_HAPROXY") == "1" {
		hap = startHAProxyPair(b, dir, up.String())
	}
	var hapLat []time.Duration
	var hapCPU time.Duration
	var hapRequests int

	var directLat, tunnelLat []time.Duration
	var cpu time.Duration
	var requests, switches int
	// Alternate direct and tunnelled rounds so that background load on the
	// machine hits both alike.
	for range 2 {
		directLat = append(directLat, pacedLoad(b, up.String(), conns, rate, dur/2)...)
		c0 := server.cpu(b) + client.cpu(b)
		s0 := server.switches(b) + client.switches(b)
		lat := pacedLoad(b, client.addr, conns, rate, dur/2)
		cpu += server.cpu(b) + client.cpu(b) - c0
		switches += server.switches(b) + client.switches(b) - s0
		tunnelLat = append(tunnelLat, lat...)
		requests += len(lat)
		if hap != nil {
			c0 := hap[0].cpu(b) + hap[1].cpu(b)
			lat := pacedLoad(b, hap[0].addr, conns, rate, dur/2)
			hapCPU += hap[0].cpu(b) + hap[1].cpu(b) - c0
			hapLat = append(hapLat, lat...)
			hapRequests += len(lat)
		}
	}
	slices.Sort(directLat)
	slices.Sort(tunnelLat)
	pct := percentileUS
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(cpu.Seconds()/float64(requests)*1000, "cpu-s/1000req")
	b.ReportMetric(float64(switches)/float64(requests), "ctxsw/req")
	b.ReportMetric(pct(directLat, 0.5), "direct-p50-us")
	b.ReportMetric(pct(tunnelLat, 0.5)-pct(directLat, 0.5), "added-p50-us")
	b.ReportMetric(pct(tunnelLat, 0.90)-pct(directLat, 0.90), "added-p90-us")
	b.ReportMetric(pct(tunnelLat, 0.99)-pct(directLat, 0.99), "added-p99-us")
	if hap != nil {
		slices.Sort(hapLat)
		b.ReportMetric(hapCPU.Seconds()/float64(hapRequests)*1000, "haproxy-cpu-s/1000req")
		b.ReportMetric(pct(hapLat, 0.5)-pct(directLat, 0.5), "haproxy-added-p50-us")
		b.ReportMetric(pct(hapLat, 0.90)-pct(directLat, 0.90), "haproxy-added-p90-us")
		b.ReportMetric(pct(hapLat, 0.99)-pct(directLat, 0.99), "haproxy-added-p99-us")
	}
}

// startHAProxyPair starts a client-side and a server-side haproxy on
// loopback, TCP mode, mutual TLS 1.3 between them, forwarding to target.
func startHAProxyPair(b *testing.B, dir, target string) []*pacedChild {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"client", "server"} {
		certs, err := os.ReadFile(filepath.Join(dir, name+".pem"))
		if err != nil {
			b.Fatal(err)
		}
		key, err := os.ReadFile(filepath.Join(dir, name+".key"))
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+"-haproxy.pem"), append(certs, key...), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	freePort := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	in, tlsAddr := freePort(), freePort()
	global := "global\n  maxconn 4096\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\n" +
		"defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 2m\n  timeout server 2m\n"
	pem := func(name string) string { return filepath.Join(dir, name) }
	server := global + fmt.Sprintf("frontend f\n  bind %s ssl crt %s ca-file %s verify required\n  default_backend b\nbackend b\n  server app %s\n",
		tlsAddr, pem("server-haproxy.pem"), pem("ca.pem"), target)
	client := global + fmt.Sprintf("frontend f\n  bind %s\n  default_backend b\nbackend b\n  server peer %s ssl crt %s ca-file %s verify required\n",
		in, tlsAddr, pem("client-haproxy.pem"), pem("ca.pem"))
	var out []*pacedChild
	for _, c := range []struct{ name, cfg, addr string }{{"client", client, in}, {"server", server, tlsAddr}} {
		cfg := filepath.Join(dir, "haproxy-"+c.name+".cfg")
		if err := os.WriteFile(cfg, []byte(c.cfg), 0o600); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(bin, "-db", "-f", cfg)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		out = append(out, &pacedChild{pid: cmd.Process.Pid, addr: c.addr})
	}
	for _, c := range out {
		for i := 0; ; i++ {
			conn, err := net.Dial("tcp", c.addr)
			if err == nil {
				conn.Close()
				break
			}
			if i == 100 {
				b.Fatalf("haproxy at %s: %v", c.addr, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return out
}

// pacedLoad runs conns connections to addr, each sending a 1 KiB request
// and reading its echo at evenly spaced times, rate requests/s in all, for
// d, and returns the latencies.
func pacedLoad(b *testing.B, addr string, conns, rate int, d time.Duration) []time.Duration {
	b.Helper()
	interval := time.Duration(conns) * time.Second / time.Duration(rate)
	var mu sync.Mutex
	var all []time.Duration
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	start := time.Now().Add(20 * time.Millisecond)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg := make([]byte, 1024)
			for j := range msg {
				msg[j] = byte(i + j)
			}
			reply := make([]byte, len(msg))
			var lat []time.Duration
			// Connections are spread over the interval.
			next := start.Add(interval * time.Duration(i) / time.Duration(conns))
			end := start.Add(d)
			for next.Before(end) {
				time.Sleep(time.Until(next))
				t0 := time.Now()
				if _, err := c.Write(msg); err != nil {
					errs <- err
					return
				}
				if _, err := io.ReadFull(c, reply); err != nil {
					errs <- err
					return
				}
				lat = append(lat, time.Since(t0))
				if string(reply) != string(msg) {
					errs <- fmt.Errorf("echo differs")
					return
				}
				next = next.Add(interval)
				if now := time.Now(); next.Before(now) {
					next = now // no catching up
				}
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return all
}

// writePKI writes a CA and the client's and server's certificates to dir.
func writePKI(b *testing.B, dir string) {
	p := testPKI(b)
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	for name, c := range map[string]*tls.Certificate{"client": p.clientCert, "server": p.serverCert} {
		var certs []byte
		for _, der := range c.Certificate {
			certs = append(certs, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		}
		key, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
		if err != nil {
			b.Fatal(err)
		}
		write(name+".pem", certs)
		write(name+".key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}))
	}
	roots := identity.EncodeCertsPEM(p.ca.Cert)
	write("ca.pem", roots)
}

type pacedChild struct {
	pid  int
	addr string
}

// cpu is the child's utime + stime.
func (c *pacedChild) cpu(b *testing.B) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.pid))
	if err != nil {
		b.Fatal(err)
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// switches is the number of context switches of the child's threads.
func (c *pacedChild) switches(b *testing.B) int {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", c.pid))
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", c.pid, t.Name()))
		if err != nil {
			continue // the thread ended
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				k, _ := strconv.Atoi(strings.TrimSpace(v))
				n += k
			} else if v, ok := strings.CutPrefix(line, "nonvoluntary_ctxt_switches:"); ok {
				k, _ := strconv.Atoi(strings.TrimSpace(v))
				n += k
			}
		}
	}
	return n
}

func startPacedChild(b *testing.B, dir, role, target string) *pacedChild {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "HBONE_PACED_ROLE="+role, "HBONE_PACED_DIR="+dir,
		"HBONE_PACED_TARGET="+target, "GOMAXPROCS="+envOr("HBONE_PACED_PROCS", "1"), "GOGC=50")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
			go func() { _, _ = io.Copy(io.Discard, out) }()
			return &pacedChild{pid: cmd.Process.Pid, addr: a}
		}
	}
	b.Fatalf("%s proxy did not start", role)
	return nil
}

// TestMain runs the test binary as a proxy process of
// BenchmarkPacedRequests when the benchmark started it (HBONE_PACED_ROLE),
// else the tests.
func TestMain(m *testing.M) {
	if role := os.Getenv("HBONE_PACED_ROLE"); role != "" {
		if err := runPacedProxy(role); err != nil {
			fmt.Fprintf(os.Stderr, "paced %s proxy: %v\n", role, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runPacedProxy is one proxy process of BenchmarkPacedRequests: it serves
// until its standard input closes.
func runPacedProxy(role string) error {
	dir, target := os.Getenv("HBONE_PACED_DIR"), os.Getenv("HBONE_PACED_TARGET")
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) }
	certPEM, err := read(role + ".pem")
	if err != nil {
		return err
	}
	keyPEM, err := read(role + ".key")
	if err != nil {
		return err
	}
	caPEM, err := read("ca.pem")
	if err != nil {
		return err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	switch role {
	case "server":
		srv := &Server{
			TLSConfig: identity.ServerConfig(identity.StaticCert(&cert), identity.StaticRoots(roots), nil),
			Logger:    discardLogger,
			Handler: func(st *Stream) {
				up, err := net.Dial("tcp", target)
				if err != nil {
					_ = st.Reject(503, "upstream unreachable")
					return
				}
				defer up.Close()
				if st.Accept() != nil {
					return
				}
				pacedJoin(st, up)
			},
		}
		go func() { _ = srv.Serve(l) }()
		defer srv.Close()
	case "client":
		d := &Dialer{TLSConfig: func(src, dst identity.SPIFFEID) (*tls.Config, error) {
			return identity.ClientConfig(identity.StaticCert(&cert), identity.StaticRoots(roots), dst), nil
		}}
		defer d.Close()
		addr := netip.MustParseAddrPort(target)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					tc, err := d.Dial(context.Background(), Request{Source: clientID, Destination: serverID, Address: addr, Authority: netip.MustParseAddrPort("127.0.0.1:1")})
					if err != nil {
						return
					}
					defer tc.Close()
					pacedJoin(c, tc)
				}()
			}
		}()
	default:
		return fmt.Errorf("unknown role %q", role)
	}
	fmt.Printf("listening %s\n", l.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	if os.Getenv("HBONE_PACED_MEMSTATS") == "1" {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Fprintf(os.Stderr, "%s: %d GCs, %d mallocs, %d bytes allocated, heap in use %d KiB\n", role, ms.NumGC, ms.Mallocs, ms.TotalAlloc, ms.HeapInuse>>10)
	}
	return nil
}

// pacedJoin joins as ztunnel does, counting bytes for its metrics.
func pacedJoin(a, b net.Conn) {
	var in, out atomic.Int64
	if os.Getenv("HBONE_PACED_WRAP") == "1" {
		_, _ = Join(countingConn{a}, b)
		return
	}
	_, _ = JoinCounting(a, b, func(n int) { in.Add(int64(n)) }, func(n int) { out.Add(int64(n)) })
}

// countingConn wraps a conn as ztunnel did to count bytes for metrics.
type countingConn struct{ net.Conn }

func (c countingConn) CloseWrite() error {
	return c.Conn.(interface{ CloseWrite() error }).CloseWrite()
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
