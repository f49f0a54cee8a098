package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
)

func echoOn(t *testing.T, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// socksDial performs a SOCKS5 CONNECT to dst and returns the reply code.
func socksDial(t *testing.T, proxy net.Addr, dst netip.AddrPort, atyp byte) (net.Conn, byte) {
	t.Helper()
	c, err := net.Dial("tcp", proxy.String())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		t.Fatal(err)
	}
	var sel [2]byte
	if _, err := io.ReadFull(c, sel[:]); err != nil || sel != [2]byte{5, 0} {
		t.Fatalf("method selection %v %v", sel, err)
	}
	req := []byte{5, 1, 0, atyp}
	switch atyp {
	case 1:
		a := dst.Addr().As4()
		req = append(req, a[:]...)
	case 3:
		req = append(req, 9)
		req = append(req, "localhost"...)
	}
	req = binary.BigEndian.AppendUint16(req, dst.Port())
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	var rep [10]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		t.Fatal(err)
	}
	return c, rep[1]
}

func roundTrip(t *testing.T, c net.Conn) {
	t.Helper()
	msg := bytes.Repeat([]byte("x"), 100000)
	go func() {
		_, _ = c.Write(msg)
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through SOCKS5: %d bytes, %v", len(got), err)
	}
}

func TestSOCKS5(t *testing.T) {
	ca, err := identity.NewRootAuthority("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := identity.NewManager(identity.AuthorityFetcher{Authority: ca}, identity.ManagerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Pod b lives at 127.77.0.1: its "ztunnel" is an HBONE server on :15008
	// that forwards to its echo server.
	bEcho := echoOn(t, "127.77.0.1:0")
	bID, _ := identity.ParseSPIFFEID(sid("b"))
	if err := certs.Add(t.Context(), bID); err != nil {
		t.Fatal(err)
	}
	hln, err := net.Listen("tcp", "127.77.0.1:15008")
	if err != nil {
		t.Skipf("cannot listen on the HBONE port: %v", err)
	}
	var (
		mu          sync.Mutex
		authorities []string
	)
	srv := &hbone.Server{TLSConfig: identity.ServerConfig(certs.Cert(bID), certs.Roots(), nil), Handler: func(st *hbone.Stream) {
		mu.Lock()
		authorities = append(authorities, st.Authority().String()+" "+st.Peer().String())
		mu.Unlock()
		(&hbone.Forwarder{}).ServeStream(st)
	}}
	go func() { _ = srv.Serve(hln) }()
	defer srv.Close()

	snap := config.Build([]*config.Workload{
		mustWorkload(t, &configv1alpha1.Workload{Name: "shop/client", Addresses: []string{"127.77.0.2"}, Identity: sid("client"), Enrolled: true}),
		mustWorkload(t, &configv1alpha1.Workload{Name: "shop/b", Addresses: []string{"127.77.0.1"}, Identity: sid("b"), Enrolled: true}),
	}, nil, nil)
	m := metrics.New()
	env := &Env{Config: func() *config.Snapshot { return snap }, Certs: certs, Metrics: m}
	s := NewSOCKS5(env, "shop/client", nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(t.Context())
	go func() { done <- s.Serve(ctx, ln) }()

	t.Run("passthrough outside the mesh", func(t *testing.T) {
		dst := echoOn(t, "127.0.0.1:0")
		c, code := socksDial(t, ln.Addr(), dst, 1)
		defer c.Close()
		if code != socksSucceeded {
			t.Fatalf("reply %d", code)
		}
		roundTrip(t, c)
	})
	t.Run("HBONE to an enrolled workload", func(t *testing.T) {
		c, code := socksDial(t, ln.Addr(), bEcho, 1)
		defer c.Close()
		if code != socksSucceeded {
			t.Fatalf("reply %d", code)
		}
		roundTrip(t, c)
		mu.Lock()
		defer mu.Unlock()
		if len(authorities) != 1 || authorities[0] != bEcho.String()+" "+sid("client") {
			t.Errorf("HBONE server saw %v", authorities)
		}
	})
	t.Run("domain names refused", func(t *testing.T) {
		c, code := socksDial(t, ln.Addr(), netip.MustParseAddrPort("127.0.0.1:80"), 3)
		defer c.Close()
		if code != socksAddrUnsupported {
			t.Fatalf("reply %d", code)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		c, code := socksDial(t, ln.Addr(), netip.MustParseAddrPort("127.77.0.3:1"), 1)
		defer c.Close()
		if code != socksRefused {
			t.Fatalf("reply %d", code)
		}
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}
