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
	}, []*config.Service{
		mustService(t, &configv1alpha1.Service{Name: "shop/b", Hostname: "b.shop.svc.cluster.local", Vips: []string{"10.96.7.1"},
			Ports:     []*configv1alpha1.ServicePort{{Port: 80, TargetPort: uint32(bEcho.Port())}},
			Endpoints: []*configv1alpha1.Endpoint{{Workload: "shop/b", Address: "127.77.0.1", Ready: true}}}),
		mustService(t, &configv1alpha1.Service{Name: "shop/down", Hostname: "down.shop.svc.cluster.local", Vips: []string{"10.96.7.2"},
			Ports:     []*configv1alpha1.ServicePort{{Port: 80}},
			Endpoints: []*configv1alpha1.Endpoint{{Workload: "shop/b", Address: "127.77.0.1", Ready: false}}}),
	}, nil)
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
	t.Run("names outside the mesh are unreachable", func(t *testing.T) {
		c, code := socksDial(t, ln.Addr(), netip.MustParseAddrPort("127.0.0.1:80"), 3)
		defer c.Close()
		if code != socksHostUnreachable {
			t.Fatalf("reply %d", code)
		}
	})
	t.Run("service name through HBONE", func(t *testing.T) {
		c, code := socksDialName(t, ln.Addr(), "B.shop.svc.cluster.local.", 80)
		defer c.Close()
		if code != socksSucceeded {
			t.Fatalf("reply %d", code)
		}
		roundTrip(t, c)
		mu.Lock()
		defer mu.Unlock()
		if len(authorities) != 2 || authorities[1] != bEcho.String()+" "+sid("client") {
			t.Errorf("HBONE server saw %v", authorities)
		}
	})
	t.Run("service without ready endpoint", func(t *testing.T) {
		c, code := socksDialName(t, ln.Addr(), "down", 80)
		defer c.Close()
		if code != socksHostUnreachable {
			t.Fatalf("reply %d", code)
		}
	})
	t.Run("metrics as captured outbound", func(t *testing.T) {
		want := map[string]string{"reporter": "source", "source_workload_namespace": "shop",
			"source_principal": sid("client"), "destination_principal": sid("b"),
			"connection_security_policy": "mutual_tls", "destination_service": "b.shop.svc.cluster.local"}
		if n := countOpened(t, m, want); n != 1 {
			t.Errorf("istio_tcp_connections_opened_total%v = %v, want 1", want, n)
		}
		// roundTrip echoed 100000 bytes: both directions are counted,
		// including what the tunnel's read loop wrote to the client itself.
		for _, name := range []string{"istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total"} {
			if n := sumCounter(t, m, name, want); n != 100000 {
				t.Errorf("%s%v = %v, want 100000", name, want, n)
			}
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

// socksDialName performs a SOCKS5 CONNECT to a domain name.
func socksDialName(t *testing.T, proxy net.Addr, name string, port uint16) (net.Conn, byte) {
	t.Helper()
	c, err := net.Dial("tcp", proxy.String())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	req := []byte{5, 1, 0, 5, 1, 0, socksDomain, byte(len(name))}
	req = append(req, name...)
	req = binary.BigEndian.AppendUint16(req, port)
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	var rep [12]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		t.Fatal(err)
	}
	if rep[0] != 5 || rep[1] != 0 || rep[2] != 5 {
		t.Fatalf("reply %v", rep)
	}
	_ = c.SetDeadline(time.Time{})
	return c, rep[3]
}

// countOpened sums istio_tcp_connections_opened_total over the series
// that carry every label of want.
func countOpened(t *testing.T, m *metrics.Metrics, want map[string]string) float64 {
	t.Helper()
	return sumCounter(t, m, "istio_tcp_connections_opened_total", want)
}

// sumCounter sums the counter name over the series that carry every label
// of want.
func sumCounter(t *testing.T, m *metrics.Metrics, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, s := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range s.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue series
				}
			}
			n += s.GetCounter().GetValue()
		}
	}
	return n
}

// TestSOCKSHandshake checks the negotiation's answers to good and bad
// requests: the reply bytes written and the request or error returned.
func TestSOCKSHandshake(t *testing.T) {
	ip4 := []byte{5, 1, 0, 5, 1, 0, 1, 10, 1, 2, 3, 0, 80}
	ip6 := append([]byte{5, 1, 0, 5, 1, 0, 4}, netip.MustParseAddr("fd00::7").AsSlice()...)
	ip6 = append(ip6, 1, 187)
	name := append([]byte{5, 2, 2, 0, 5, 1, 0, 3, 7}, "web.app"...)
	name = append(name, 0x1f, 0x90)
	for _, tc := range []struct {
		name    string
		in      []byte
		replies []byte // everything the server writes
		want    socksRequest
		err     bool
	}{
		{name: "ipv4", in: ip4, replies: []byte{5, 0}, want: socksRequest{addr: netip.MustParseAddrPort("10.1.2.3:80")}},
		{name: "ipv6", in: ip6, replies: []byte{5, 0}, want: socksRequest{addr: netip.MustParseAddrPort("[fd00::7]:443")}},
		{name: "domain name", in: name, replies: []byte{5, 0}, want: socksRequest{addr: netip.AddrPortFrom(netip.Addr{}, 8080), name: "web.app"}},
		{name: "SOCKS4", in: []byte{4, 1, 0, 80, 10, 0, 0, 1, 0}, err: true},
		{name: "version 5 then 4 in the request", in: []byte{5, 1, 0, 4, 1, 0, 1, 10, 0, 0, 1, 0, 80}, replies: []byte{5, 0}, err: true},
		{name: "no acceptable method", in: []byte{5, 1, 2}, replies: []byte{5, 0xff}, err: true},
		{name: "no method at all", in: []byte{5, 0}, replies: []byte{5, 0xff}, err: true},
		{name: "BIND", in: []byte{5, 1, 0, 5, 2, 0, 1, 10, 0, 0, 1, 0, 80}, replies: []byte{5, 0, 5, socksCommandUnsupported, 0, 1, 0, 0, 0, 0, 0, 0}, err: true},
		{name: "UDP ASSOCIATE", in: []byte{5, 1, 0, 5, 3, 0, 1, 10, 0, 0, 1, 0, 80}, replies: []byte{5, 0, 5, socksCommandUnsupported, 0, 1, 0, 0, 0, 0, 0, 0}, err: true},
		{name: "unknown address type", in: []byte{5, 1, 0, 5, 1, 0, 9, 10, 0, 0, 1, 0, 80}, replies: []byte{5, 0, 5, socksAddrUnsupported, 0, 1, 0, 0, 0, 0, 0, 0}, err: true},
		{name: "empty name", in: []byte{5, 1, 0, 5, 1, 0, 3, 0, 0, 80}, replies: []byte{5, 0, 5, socksHostUnreachable, 0, 1, 0, 0, 0, 0, 0, 0}, err: true},
		{name: "port 0", in: []byte{5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0, 0}, replies: []byte{5, 0, 5, socksHostUnreachable, 0, 1, 0, 0, 0, 0, 0, 0}, err: true},
		{name: "nothing", in: nil, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, replies, err := runHandshake(t, tc.in)
			if (err != nil) != tc.err {
				t.Fatalf("error %v, want error %v", err, tc.err)
			}
			if !bytes.Equal(replies, tc.replies) {
				t.Errorf("replies %v, want %v", replies, tc.replies)
			}
			if err == nil && got != tc.want {
				t.Errorf("request %+v, want %+v", got, tc.want)
			}
		})
	}
	// Every truncation of valid requests is an error, never a hang or a
	// request.
	for _, full := range [][]byte{ip4, ip6, name} {
		for n := range len(full) {
			if _, _, err := runHandshake(t, full[:n]); err == nil {
				t.Errorf("truncated request %v accepted", full[:n])
			}
		}
	}
}

// runHandshake feeds in to socksHandshake (then end of stream) and
// returns what it decided and everything it wrote back.
func runHandshake(t *testing.T, in []byte) (socksRequest, []byte, error) {
	t.Helper()
	c := &scriptConn{r: bytes.NewReader(in)}
	req, err := socksHandshake(c)
	if err == nil && req.addr.Addr().IsValid() == (req.name != "") {
		t.Errorf("request %+v has both or neither of address and name", req)
	}
	return req, c.w.Bytes(), err
}

// scriptConn reads a script and records what is written; the handshake
// uses nothing else of a net.Conn.
type scriptConn struct {
	net.Conn
	r io.Reader
	w bytes.Buffer
}

func (c *scriptConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error) { return c.w.Write(p) }

func TestResolveName(t *testing.T) {
	snap := config.Build(nil, []*config.Service{
		mustService(t, &configv1alpha1.Service{Name: "shop/web", Hostname: "web.shop.svc.cluster.local", Vips: []string{"fd00::1", "10.96.0.1"}}),
		mustService(t, &configv1alpha1.Service{Name: "other/web", Hostname: "web.other.svc.cluster.local", Vips: []string{"10.96.0.2"}}),
		mustService(t, &configv1alpha1.Service{Name: "shop/v6", Hostname: "v6.shop.svc.cluster.local", Vips: []string{"fd00::6"}}),
		mustService(t, &configv1alpha1.Service{Name: "shop/headless", Hostname: "headless.shop.svc.cluster.local"}),
		mustService(t, &configv1alpha1.Service{Name: "ext/api", Hostname: "api.example.com", Vips: []string{"240.240.0.1"}}),
	}, nil)
	for name, want := range map[string]string{
		"web.shop.svc.cluster.local":  "10.96.0.1",
		"WEB.Shop.svc.cluster.local.": "10.96.0.1",
		"web.other.svc.cluster.local": "10.96.0.2",
		"web.other":                   "10.96.0.2",
		"web.other.svc":               "10.96.0.2",
		"web":                         "10.96.0.1", // the source's namespace
		"v6":                          "fd00::6",
		"api.example.com":             "240.240.0.1",
		"10.9.8.7":                    "10.9.8.7",
		"[fd00::9]":                   "fd00::9",
		"headless":                    "",
		"api":                         "",
		"web.nowhere":                 "",
		"example.com":                 "",
		"":                            "",
		".":                           "",
	} {
		a, ok := resolveName(snap, "shop/client", name)
		if got := a.String(); !ok && want != "" || ok && got != want {
			t.Errorf("resolveName(%q) = %v %v, want %q", name, a, ok, want)
		}
	}
}

// TestSOCKS5Drain checks that Accept returns when its listener closes
// while the connections being served go on, and that Drain ends them once
// the timeout passes.
func TestSOCKS5Drain(t *testing.T) {
	certs, err := identity.NewManager(identity.AuthorityFetcher{Authority: mustCA(t)}, identity.ManagerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env := &Env{Config: config.Empty, Certs: certs, Metrics: metrics.New()}
	s := NewPodSOCKS5(env, "shop/client", netip.MustParseAddr("127.0.0.1"), nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan error, 1)
	go func() { accepted <- s.Accept(ln) }()
	dst := echoOn(t, "127.0.0.1:0")
	c, code := socksDial(t, ln.Addr(), dst, 1)
	defer c.Close()
	if code != socksSucceeded {
		t.Fatalf("reply %d", code)
	}
	_ = ln.Close()
	if err := <-accepted; err != nil {
		t.Fatalf("Accept: %v", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Fatal("listener still accepts after Close")
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("connection after the listener closed: %q %v", buf, err)
	}
	if n := s.Active(); n != 1 {
		t.Fatalf("Active = %d", n)
	}
	start := time.Now()
	select {
	case <-s.Drain(200 * time.Millisecond):
	case <-time.After(5 * time.Second):
		t.Fatal("Drain did not end")
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("Drain ended after %v with a connection open", d)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("after Drain: %v", err)
	}
	if n := s.Active(); n != 0 {
		t.Fatalf("Active after Drain = %d", n)
	}
}

func mustCA(t *testing.T) *identity.Authority {
	t.Helper()
	ca, err := identity.NewRootAuthority("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}
