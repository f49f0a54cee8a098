package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

var (
	clientID = identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "client"}
	serverID = identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "server"}
)

// pki is a test CA and workload certificates.
type pki struct {
	ca         *identity.Authority
	clientCert *tls.Certificate
	serverCert *tls.Certificate
}

var (
	pkiOnce sync.Once
	pkiVal  *pki
	pkiErr  error
)

func testPKI(t testing.TB) *pki {
	t.Helper()
	pkiOnce.Do(func() {
		ca, err := identity.NewRootAuthority("cluster.local", time.Hour)
		if err != nil {
			pkiErr = err
			return
		}
		p := &pki{ca: ca}
		if p.clientCert, err = ca.Issue(clientID, time.Hour); err != nil {
			pkiErr = err
			return
		}
		if p.serverCert, err = ca.Issue(serverID, time.Hour); err != nil {
			pkiErr = err
			return
		}
		pkiVal = p
	})
	if pkiErr != nil {
		t.Fatal(pkiErr)
	}
	return pkiVal
}

func (p *pki) serverTLS() *tls.Config {
	return identity.ServerConfig(identity.StaticCert(p.serverCert), identity.StaticRoots(p.ca.Pool()), nil)
}

func (p *pki) clientTLS(src, dst identity.SPIFFEID) (*tls.Config, error) {
	return identity.ClientConfig(identity.StaticCert(p.clientCert), identity.StaticRoots(p.ca.Pool()), dst), nil
}

// countingListener counts accepted connections and those still open.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
	open     atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.accepted.Add(1)
	l.open.Add(1)
	cc := &countedConn{Conn: c, l: l}
	l.mu.Lock()
	l.conns = append(l.conns, cc)
	l.mu.Unlock()
	return cc, nil
}

// closeAll closes every accepted connection abruptly.
func (l *countingListener) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

// testServer is a running Server on loopback.
type testServer struct {
	srv  *Server
	ln   *countingListener
	addr netip.AddrPort
	done chan error
}

func startServer(t testing.TB, srv *Server) *testServer {
	t.Helper()
	if srv.TLSConfig == nil {
		srv.TLSConfig = testPKI(t).serverTLS()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{srv: srv, ln: &countingListener{Listener: l}, done: make(chan error, 1)}
	ts.addr = l.Addr().(*net.TCPAddr).AddrPort()
	go func() { ts.done <- srv.Serve(ts.ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-ts.done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
		waitFor(t, "server-side TCP connections to close", func() bool { return ts.ln.open.Load() == 0 })
	})
	return ts
}

// countingDial counts TCP connections a Dialer opens.
type countingDial struct{ n atomic.Int64 }

func (c *countingDial) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c.n.Add(1)
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

func newDialer(t testing.TB, cd *countingDial) *Dialer {
	d := &Dialer{TLSConfig: testPKI(t).clientTLS}
	if cd != nil {
		d.DialContext = cd.DialContext
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// startUpstream runs a TCP server calling fn for each connection.
func startUpstream(t testing.TB, fn func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The accept loop is counted too, so that each connection's Add happens
	// while the count is above zero (an Add from zero may not race with
	// Cleanup's Wait).
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				fn(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	return l.Addr().(*net.TCPAddr).AddrPort()
}

// echo copies a connection back to itself, then half-closes.
func echo(c *net.TCPConn) {
	buf := make([]byte, 256<<10)
	_, _ = io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf)
	_ = c.CloseWrite()
}

func request(ts *testServer, authority netip.AddrPort) Request {
	return Request{Source: clientID, Destination: serverID, Address: ts.addr, Authority: authority}
}

// waitFor polls cond until it holds or 10s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkGoroutines records the goroutine count and, at cleanup (after every
// cleanup registered later), waits for it to come back.
func checkGoroutines(t *testing.T) {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("goroutines: %d, baseline %d; stacks:\n%s", runtime.NumGoroutine(), base, filterStacks(string(buf[:n])))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// filterStacks keeps goroutines that mention this package or x/net.
func filterStacks(all string) string {
	var out []string
	for _, g := range strings.Split(all, "\n\n") {
		if strings.Contains(g, "hbone") || strings.Contains(g, "x/net") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}
