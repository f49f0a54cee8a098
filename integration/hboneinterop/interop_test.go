package hboneinterop

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	istiohbone "istio.io/istio/pkg/hbone"

	"github.com/ambit-mesh/ambit/integration/internal/echo"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// mesh holds a CA and the two identities of the tests.
type mesh struct {
	ca                     *identity.Authority
	client, server         identity.SPIFFEID
	clientCert, serverCert *tls.Certificate
}

func newMesh(t *testing.T) *mesh {
	t.Helper()
	ca, err := identity.NewRootAuthority("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{
		ca:     ca,
		client: identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "frontend"},
		server: identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "reviews"},
	}
	if m.clientCert, err = ca.Issue(m.client, time.Hour); err != nil {
		t.Fatal(err)
	}
	if m.serverCert, err = ca.Issue(m.server, time.Hour); err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *mesh) roots() identity.RootsSource { return identity.StaticRoots(m.ca.Pool()) }

func payload(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// TestIstioClientToAmbitServer drives Ambit's HBONE server with Istio's own
// HBONE dialer over mTLS.
func TestIstioClientToAmbitServer(t *testing.T) {
	m := newMesh(t)
	upstream := echo.Loopback(t)

	var mu sync.Mutex
	var peers []identity.SPIFFEID
	var authorities []netip.AddrPort
	fwd := &hbone.Forwarder{}
	srv := &hbone.Server{
		TLSConfig: identity.ServerConfig(identity.StaticCert(m.serverCert), m.roots(), nil),
		Handler: func(s *hbone.Stream) {
			mu.Lock()
			peers = append(peers, s.Peer())
			authorities = append(authorities, s.Authority())
			mu.Unlock()
			if s.Authority().Port() == 1 { // stands for a port that policy denies
				_ = s.Reject(http.StatusForbidden, "denied by test policy")
				return
			}
			fwd.ServeStream(s)
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	d := istiohbone.NewDialer(istiohbone.Config{
		ProxyAddress: ln.Addr().String(),
		TLS:          identity.ClientConfig(identity.StaticCert(m.clientCert), m.roots(), m.server),
	})
	for i := range 3 { // several tunnels, over Istio's pooled HTTP/2 connection
		conn, err := d.Dial("tcp", upstream.String())
		if err != nil {
			t.Fatalf("tunnel %d: Istio dialer to Ambit server: %v", i, err)
		}
		want := payload(256 << 10)
		go func() { _, _ = conn.Write(want) }()
		got := make([]byte, len(want))
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(conn, got); err != nil {
			t.Fatalf("tunnel %d: read echo: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("tunnel %d: echo differs", i)
		}
		conn.Close()
	}
	mu.Lock()
	for i, p := range peers {
		if p != m.client {
			t.Errorf("stream %d: server saw peer %s, want %s", i, p, m.client)
		}
		if authorities[i] != upstream {
			t.Errorf("stream %d: authority %s, want %s", i, authorities[i], upstream)
		}
	}
	mu.Unlock()

	// A policy rejection reaches Istio's dialer as a failed CONNECT.
	_, err = d.Dial("tcp", "127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("Istio dialer to a denied port: err = %v, want a 403", err)
	}

	// Istio's dialer expecting another identity refuses Ambit's server.
	wrong := istiohbone.NewDialer(istiohbone.Config{
		ProxyAddress: ln.Addr().String(),
		TLS:          identity.ClientConfig(identity.StaticCert(m.clientCert), m.roots(), m.client),
	})
	if _, err := wrong.Dial("tcp", upstream.String()); err == nil {
		t.Error("Istio dialer accepted a server with an unexpected identity")
	}
}

// TestAmbitClientToIstioServer drives Istio's HBONE server with Ambit's
// pooled dialer over mTLS, including half-close.
func TestAmbitClientToIstioServer(t *testing.T) {
	m := newMesh(t)
	upstream := echo.Loopback(t)

	var mu sync.Mutex
	var seen []*http.Request
	srv := istiohbone.NewServer()
	// Istio's server enables HTTP/1 and cleartext HTTP/2 (ztunnel terminates
	// TLS in front of it); here it serves HTTP/2 over mTLS itself.
	srv.Protocols.SetHTTP2(true)
	srv.TLSConfig = identity.ServerConfig(identity.StaticCert(m.serverCert), m.roots(), nil)
	inner := srv.Handler
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r)
		mu.Unlock()
		inner.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })

	d := &hbone.Dialer{TLSConfig: func(src, dst identity.SPIFFEID) (*tls.Config, error) {
		if src != m.client {
			return nil, errors.New("unknown source identity")
		}
		return identity.ClientConfig(identity.StaticCert(m.clientCert), m.roots(), dst), nil
	}}
	t.Cleanup(func() { _ = d.Close() })
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	for i := range 3 {
		want := payload(1 << 20)
		// The later tunnels send their first bytes with the CONNECT, before
		// Istio's server answers.
		var early []byte
		if i > 0 {
			early = want[:16<<10]
		}
		conn, err := d.Dial(ctx, hbone.Request{
			Source: m.client, Destination: m.server, Address: addr, Authority: upstream,
			Header:    http.Header{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}},
			EarlyData: early,
		})
		if err != nil {
			t.Fatalf("tunnel %d: Ambit dialer to Istio server: %v", i, err)
		}
		werr := make(chan error, 1)
		go func() {
			_, err := conn.Write(want[len(early):])
			if err == nil {
				err = conn.CloseWrite() // END_STREAM: Istio half-closes the upstream
			}
			werr <- err
		}()
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(conn) // EOF once the upstream's FIN came back
		if err != nil {
			t.Fatalf("tunnel %d: read: %v", i, err)
		}
		if err := <-werr; err != nil {
			t.Fatalf("tunnel %d: write: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("tunnel %d: got %d bytes back, want the %d sent", i, len(got), len(want))
		}
		conn.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 {
		t.Fatalf("Istio server saw %d CONNECTs, want 3", len(seen))
	}
	conns := map[string]bool{}
	for _, r := range seen {
		if r.Method != http.MethodConnect || r.Host != upstream.String() || r.ProtoMajor != 2 {
			t.Errorf("Istio server saw %s %s over HTTP/%d, want CONNECT %s over HTTP/2", r.Method, r.Host, r.ProtoMajor, upstream)
		}
		if r.Header.Get("Traceparent") == "" {
			t.Error("traceparent header not carried")
		}
		if id, err := identity.PeerID(*r.TLS); err != nil || id != m.client {
			t.Errorf("Istio server's peer is %v (%v), want %s", id, err, m.client)
		}
		conns[r.RemoteAddr] = true
	}
	if len(conns) != 1 {
		t.Errorf("the three tunnels used %d connections, want 1 pooled connection", len(conns))
	}
}
