package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

const td = "cluster.local"

func sa(name string) identity.SPIFFEID {
	return identity.SPIFFEID{TrustDomain: td, Namespace: "default", ServiceAccount: name}
}

type peerKey struct{}

// echoHeaders are request headers the backends echo as X-Echo-<name>.
var echoHeaders = []string{"Traceparent", "Tracestate", "B3", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Parentspanid", "X-B3-Sampled", "Baggage",
	"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Client-Cert"}

// backend is an HBONE server on ip:port that answers HTTP (HTTP/1.1 and
// h2c) in its tunnels with its name and the tunnel's peer.
type backend struct {
	name  string
	srv   *hbone.Server
	http  *http.Server
	mu    sync.Mutex
	peers map[string]int
}

func startBackend(t testing.TB, ca *identity.Authority, name string, id identity.SPIFFEID, l net.Listener) *backend {
	t.Helper()
	cert, err := ca.Issue(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, peers: map[string]int{}}
	ln := newStreamListener(l.Addr())
	b.http = proxy.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "echo-test" {
			serveUpgrade(w, r, name)
			return
		}
		if r.URL.Path == "/echo" {
			// The body back, with its length, as make bench's echo
			// server does.
			body, _ := io.ReadAll(r.Body)
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			_, _ = w.Write(body)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		peer, _ := r.Context().Value(peerKey{}).(string)
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Peer", peer)
		w.Header().Set("X-Proto", r.Proto)
		for _, k := range echoHeaders {
			if v := r.Header.Values(k); len(v) > 0 {
				w.Header()["X-Echo-"+k] = v
			}
		}
		fmt.Fprint(w, name)
	}))
	b.http.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, peerKey{}, c.(*streamConn).Peer().String())
	}
	b.srv = &hbone.Server{
		TLSConfig: identity.ServerConfig(identity.StaticCert(cert), ca.Pool, nil),
		Handler: func(st *hbone.Stream) {
			b.mu.Lock()
			b.peers[st.Peer().String()]++
			b.mu.Unlock()
			if err := st.Accept(); err != nil {
				return
			}
			c := &streamConn{Stream: st, done: make(chan struct{})}
			if !ln.push(c) {
				return
			}
			select {
			case <-c.done:
			case <-st.Context().Done():
			}
		},
	}
	go func() { _ = b.http.Serve(ln) }()
	go func() { _ = b.srv.Serve(l) }()
	t.Cleanup(func() {
		_ = b.srv.Close()
		_ = b.http.Close()
	})
	return b
}

func (b *backend) peerCounts() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := make(map[string]int, len(b.peers))
	for k, v := range b.peers {
		m[k] = v
	}
	return m
}

// listenPair listens on 127.0.0.2 and 127.0.0.3 with the same port.
func listenPair(t testing.TB) (net.Listener, net.Listener, uint16) {
	t.Helper()
	for range 20 {
		l1, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Skipf("no 127.0.0.2 loopback: %v", err)
		}
		port := l1.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.3:%d", port))
		if err != nil {
			_ = l1.Close()
			continue
		}
		return l1, l2, uint16(port)
	}
	t.Fatal("no common free port on 127.0.0.2 and 127.0.0.3")
	return nil, nil, 0
}

func resources(t testing.TB, ms map[string]proto.Message) map[string]*anypb.Any {
	t.Helper()
	out := map[string]*anypb.Any{}
	for name, m := range ms {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = a
	}
	return out
}

func waypointConfig() *configv1alpha1.WaypointConfig {
	return &configv1alpha1.WaypointConfig{
		Name:     "default/waypoint",
		Identity: sa("waypoint").String(),
		Services: []*configv1alpha1.ServiceRoutes{{
			Service:  "default/echo",
			Port:     80,
			Protocol: configv1alpha1.ServiceRoutes_PROTOCOL_HTTP,
			Rules: []*configv1alpha1.RouteRule{
				{
					Route: "default/canary",
					Match: &configv1alpha1.RouteMatch{Headers: []*configv1alpha1.HeaderMatch{{
						Name:  "x-canary",
						Value: &configv1alpha1.StringMatch{Type: configv1alpha1.StringMatch_TYPE_EXACT, Value: "yes"},
					}}},
					Backends: []*configv1alpha1.WeightedBackend{{Service: "default/echo-v2", Port: 80, Weight: 1}},
				},
				{
					Route: "default/split",
					Backends: []*configv1alpha1.WeightedBackend{
						{Service: "default/echo-v1", Port: 80, Weight: 3},
						{Service: "default/echo-v2", Port: 80, Weight: 1},
					},
				},
			},
		}},
	}
}

func service(name, vip string, eps ...*configv1alpha1.Endpoint) *configv1alpha1.Service {
	return &configv1alpha1.Service{
		Name: name, Namespace: "default", Vips: []string{vip}, Hostname: name + ".default.svc.mesh.test",
		Ports:     []*configv1alpha1.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}},
		Endpoints: eps,
	}
}

// withVIP adds a VIP to svc (a dual-stack Service's second cluster IP).
func withVIP(svc *configv1alpha1.Service, vip string) *configv1alpha1.Service {
	svc.Vips = append(svc.Vips, vip)
	return svc
}

type env struct {
	ca       *identity.Authority
	store    *Store
	wp       *Server
	wpAddr   netip.AddrPort
	v1, v2   *backend
	client   *hbone.Dialer
	clientID identity.SPIFFEID
	cp       *controlPlane
}

// config returns the mesh configuration by type URL and resource name.
func config(v1, v2 string) map[string]map[string]proto.Message {
	return map[string]map[string]proto.Message{
		configv1alpha1.TypeWaypointConfig: {"default/waypoint": waypointConfig()},
		configv1alpha1.TypeService: {
			// dual-stack: both VIPs route alike.
			"default/echo": withVIP(service("echo", "10.96.0.10"), "fd00:96::10"),
			"default/echo-v1": service("echo-v1", "10.96.0.11",
				&configv1alpha1.Endpoint{Workload: "default/v1-pod", Address: v1, Ready: true},
				// not ready: must never be picked (nothing listens there).
				&configv1alpha1.Endpoint{Workload: "default/v1-pod-b", Address: "127.0.0.9", Ready: false}),
			"default/echo-v2": service("echo-v2", "10.96.0.12",
				&configv1alpha1.Endpoint{Workload: "default/v2-pod", Address: v2, Ready: true}),
		},
		configv1alpha1.TypeWorkload: {
			"default/v1-pod": &configv1alpha1.Workload{Name: "default/v1-pod", Namespace: "default", Identity: sa("echo-v1").String(), Addresses: []string{v1}, Ready: true,
				WorkloadName: "echo-v1", CanonicalName: "echo", CanonicalRevision: "v1"},
			"default/v1-pod-b": &configv1alpha1.Workload{Name: "default/v1-pod-b", Identity: sa("echo-v1").String(), Addresses: []string{"127.0.0.9"}},
			"default/v2-pod": &configv1alpha1.Workload{Name: "default/v2-pod", Namespace: "default", Identity: sa("echo-v2").String(), Addresses: []string{v2}, Ready: true,
				WorkloadName: "echo-v2", CanonicalName: "echo", CanonicalRevision: "v2"},
			// the test client, which connects from 127.0.0.1.
			"default/client-pod": &configv1alpha1.Workload{Name: "default/client-pod", Namespace: "default", Identity: sa("client").String(), Addresses: []string{"127.0.0.1"}, Ready: true,
				WorkloadName: "client-deploy", CanonicalName: "client", CanonicalRevision: "v7"},
		},
	}
}

func (e *env) feed(t testing.TB, v1, v2 string) {
	t.Helper()
	cfg := config(v1, v2)
	if e.cp == nil {
		for _, typ := range e.store.Types() {
			if err := typ.Handle(resources(t, cfg[typ.URL])); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	for url, ms := range cfg {
		for name, m := range ms {
			if err := e.cp.caches[url].UpdateResource(name, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.cp.run(t, e.store)
}

func setup(t testing.TB, opts ...func(*Config)) *env { return setupWith(t, nil, opts...) }

// setupWith starts the CA, two backends, the waypoint and a client. The
// configuration goes straight into the store's handlers, or through a
// delta ADS control plane if xds is not nil.
func setupWith(t testing.TB, cp *controlPlane, opts ...func(*Config)) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ca, err := identity.NewRootAuthority(td, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := identity.NewManager(identity.AuthorityFetcher{Authority: ca}, identity.ManagerOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	wpID := sa("waypoint")
	if err := mgr.Add(ctx, wpID); err != nil {
		t.Fatal(err)
	}

	l1, l2, port := listenPair(t)
	e := &env{ca: ca, cp: cp}
	e.v1 = startBackend(t, ca, "v1", sa("echo-v1"), l1)
	e.v2 = startBackend(t, ca, "v2", sa("echo-v2"), l2)

	e.store = NewStore(nil)
	e.feed(t, "127.0.0.2", "127.0.0.3")

	cfg := Config{Identity: wpID, Cert: mgr.Cert(wpID), Roots: mgr.Roots(), Store: e.store, HBONEPort: port}
	for _, o := range opts {
		o(&cfg)
	}
	e.wp, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	wl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.wpAddr = wl.Addr().(*net.TCPAddr).AddrPort()
	go func() { _ = e.wp.Serve(wl) }()
	t.Cleanup(func() { _ = e.wp.Close() })

	e.clientID = sa("client")
	ccert, err := ca.Issue(e.clientID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e.client = &hbone.Dialer{TLSConfig: func(_, dst identity.SPIFFEID) (*tls.Config, error) {
		return identity.ClientConfig(identity.StaticCert(ccert), ca.Pool, dst), nil
	}}
	t.Cleanup(func() { _ = e.client.Close() })
	return e
}

// httpClient sends requests through HBONE tunnels to the waypoint, with
// authority vip.
func (e *env) httpClient(vip string, h2c bool) *http.Client {
	return e.clientFor(e.client, e.clientID, vip, h2c, nil)
}

// clientAs is httpClient for another client identity; hdr are the
// tunnels' CONNECT headers.
func (e *env) clientAs(t testing.TB, id identity.SPIFFEID, vip string, hdr http.Header) *http.Client {
	t.Helper()
	cert, err := e.ca.Issue(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	d := &hbone.Dialer{TLSConfig: func(_, dst identity.SPIFFEID) (*tls.Config, error) {
		return identity.ClientConfig(identity.StaticCert(cert), e.ca.Pool, dst), nil
	}}
	t.Cleanup(func() { _ = d.Close() })
	c := e.clientFor(d, id, vip, false, hdr)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func (e *env) clientFor(d *hbone.Dialer, id identity.SPIFFEID, vip string, h2c bool, hdr http.Header) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.Dial(ctx, hbone.Request{
				Source: id, Destination: sa("waypoint"),
				Address: e.wpAddr, Authority: netip.MustParseAddrPort(vip), Header: hdr,
			})
		},
		DisableCompression: true,
	}
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func get(t *testing.T, c *http.Client, hdr map[string]string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://echo.default.svc/hello", nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d (%s): %s", resp.StatusCode, resp.Header, body)
	}
	if got := resp.Header.Get("X-Backend"); string(body) != got {
		t.Fatalf("body %q, X-Backend %q", body, got)
	}
	return resp
}

func TestWeightedSplitOverHBONE(t *testing.T) {
	for _, h2c := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2c=%v", h2c), func(t *testing.T) {
			e := setup(t)
			c := e.httpClient("10.96.0.10:80", h2c)
			defer c.CloseIdleConnections()
			const n = 200
			counts := map[string]int{}
			for range n {
				resp := get(t, c, nil)
				counts[resp.Header.Get("X-Backend")]++
				if p := resp.Header.Get("X-Peer"); p != sa("waypoint").String() {
					t.Fatalf("backend saw peer %q, want the waypoint", p)
				}
				if want := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2c]; resp.Header.Get("X-Proto") != want {
					t.Fatalf("upstream protocol %q, want %q", resp.Header.Get("X-Proto"), want)
				}
			}
			// 3:1 split: v1 expected 150 (sd ~6).
			if counts["v1"] < 120 || counts["v1"] > 180 || counts["v1"]+counts["v2"] != n {
				t.Fatalf("split %v, want about 150/50", counts)
			}
			for range 10 {
				if resp := get(t, c, map[string]string{"X-Canary": "yes"}); resp.Header.Get("X-Backend") != "v2" {
					t.Fatalf("header match went to %q, want v2", resp.Header.Get("X-Backend"))
				}
			}
			for _, b := range []*backend{e.v1, e.v2} {
				peers := b.peerCounts()
				if len(peers) != 1 || peers[sa("waypoint").String()] == 0 {
					t.Fatalf("backend %s saw tunnel peers %v, want only the waypoint", b.name, peers)
				}
			}
		})
	}
}

// TestIPv6VIP checks tunnels whose authority is the IPv6 VIP of a
// dual-stack Service: routed by the same rules as the IPv4 one.
func TestIPv6VIP(t *testing.T) {
	e := setup(t)
	c := e.httpClient("[fd00:96::10]:80", false)
	defer c.CloseIdleConnections()
	counts := map[string]int{}
	for range 40 {
		counts[get(t, c, nil).Header.Get("X-Backend")]++
	}
	if counts["v1"] == 0 || counts["v2"] == 0 || counts["v1"]+counts["v2"] != 40 {
		t.Errorf("split over the IPv6 VIP %v, want both backends", counts)
	}
	for range 5 {
		if resp := get(t, c, map[string]string{"X-Canary": "yes"}); resp.Header.Get("X-Backend") != "v2" {
			t.Fatalf("header match over the IPv6 VIP went to %q, want v2", resp.Header.Get("X-Backend"))
		}
	}
}

func TestUnknownVIPRejected(t *testing.T) {
	e := setup(t)
	_, err := e.client.Dial(context.Background(), hbone.Request{
		Source: e.clientID, Destination: sa("waypoint"),
		Address: e.wpAddr, Authority: netip.MustParseAddrPort("10.96.9.9:80"),
	})
	var se *hbone.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Fatalf("dial unknown VIP: %v, want 404", err)
	}
}

func TestUnknownPortNoRoute(t *testing.T) {
	e := setup(t)
	c := e.httpClient("10.96.0.10:81", false)
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://echo.default.svc/")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("status %d, want 404", resp.StatusCode)
	}
}

func TestBadConfigKeepsLastGood(t *testing.T) {
	s := NewStore(nil)
	good := waypointConfig()
	if err := s.HandleWaypointConfig(resources(t, map[string]proto.Message{"w": good})); err != nil {
		t.Fatal(err)
	}
	before := s.Table()
	bad := waypointConfig()
	bad.Services[0].Port = 0
	if err := s.HandleWaypointConfig(resources(t, map[string]proto.Message{"w": bad})); err == nil {
		t.Fatal("invalid config accepted")
	}
	if s.Table() != before || before == nil {
		t.Fatal("table replaced by a rejected config")
	}
	if err := s.HandleWaypointConfig(resources(t, map[string]proto.Message{"a": good, "b": good})); err == nil {
		t.Fatal("two WaypointConfigs accepted")
	}
	if len(s.Types()) != 4 {
		t.Fatalf("types %v", s.Types())
	}
	if !strings.Contains(configv1alpha1.TypeWaypointConfig, "WaypointConfig") {
		t.Fatal("type url")
	}
}

func TestEndpointsReadyOnly(t *testing.T) {
	s := NewStore(nil)
	svc := service("echo", "10.0.0.1",
		&configv1alpha1.Endpoint{Workload: "a", Address: "10.1.0.1", Ready: true},
		&configv1alpha1.Endpoint{Workload: "b", Address: "10.1.0.2", Ready: false},
		&configv1alpha1.Endpoint{Workload: "c", Address: "10.1.0.3", Ready: true, TargetPorts: map[uint32]uint32{80: 9090}})
	if err := s.HandleServices(resources(t, map[string]proto.Message{"default/echo": svc})); err != nil {
		t.Fatal(err)
	}
	got := s.Endpoints(context.Background(), "default/echo", 80)
	want := []proxy.Endpoint{{Address: "10.1.0.1:8080", Workload: "a"}, {Address: "10.1.0.3:9090", Workload: "c"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("endpoints %v, want %v", got, want)
	}
	if name, ok := s.ServiceByVIP(netip.MustParseAddr("10.0.0.1")); !ok || name != "default/echo" {
		t.Fatalf("ServiceByVIP = %q, %v", name, ok)
	}
}

// TestDualStackService checks a dual-stack Service: both VIPs name it,
// endpoints of both families are addressed in their own notation, and a
// workload is found by either address.
func TestDualStackService(t *testing.T) {
	s := NewStore(nil)
	svc := service("echo", "10.0.0.1",
		&configv1alpha1.Endpoint{Workload: "default/a", Address: "10.1.0.1", Ready: true},
		&configv1alpha1.Endpoint{Workload: "default/a", Address: "fd00:1::1", Ready: true})
	svc.Vips = append(svc.Vips, "fd00::1")
	w := &configv1alpha1.Workload{Name: "default/a", Namespace: "default", Addresses: []string{"10.1.0.1", "fd00:1::1"}}
	if err := s.HandleServices(resources(t, map[string]proto.Message{"default/echo": svc})); err != nil {
		t.Fatal(err)
	}
	if err := s.HandleWorkloads(resources(t, map[string]proto.Message{"default/a": w})); err != nil {
		t.Fatal(err)
	}
	for _, vip := range []string{"10.0.0.1", "fd00::1", "::ffff:10.0.0.1"} {
		if name, ok := s.ServiceByVIP(netip.MustParseAddr(vip)); !ok || name != "default/echo" {
			t.Errorf("ServiceByVIP(%s) = %q, %v", vip, name, ok)
		}
	}
	got := s.Endpoints(context.Background(), "default/echo", 80)
	want := []proxy.Endpoint{{Address: "10.1.0.1:8080", Workload: "default/a"}, {Address: "[fd00:1::1]:8080", Workload: "default/a"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("endpoints %v, want %v", got, want)
	}
	for _, a := range []string{"10.1.0.1", "fd00:1::1"} {
		if got := s.WorkloadByAddress(netip.MustParseAddr(a)); got.GetName() != "default/a" {
			t.Errorf("WorkloadByAddress(%s) = %v", a, got)
		}
	}
}

func TestShutdownWithIdleKeepAlive(t *testing.T) {
	e := setup(t)
	c := e.httpClient("10.96.0.10:80", false)
	defer c.CloseIdleConnections()
	get(t, c, nil) // leaves an idle keep-alive tunnel open
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := e.wp.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Shutdown took %v with only idle tunnels", d)
	}
}

func TestTransportsPrunedWithEndpoints(t *testing.T) {
	e := setup(t)
	c := e.httpClient("10.96.0.10:80", false)
	defer c.CloseIdleConnections()
	for range 40 {
		get(t, c, nil)
	}
	count := func() int {
		e.wp.mu.Lock()
		defer e.wp.mu.Unlock()
		return len(e.wp.transports)
	}
	if n := count(); n != 2 {
		t.Fatalf("%d transports, want 2 (v1 and v2)", n)
	}
	// v1's endpoint moves to v2's address: v1's old transport goes.
	cfg := config("127.0.0.3", "127.0.0.3")
	if err := e.store.HandleServices(resources(t, cfg[configv1alpha1.TypeService])); err != nil {
		t.Fatal(err)
	}
	if err := e.store.HandleWorkloads(resources(t, cfg[configv1alpha1.TypeWorkload])); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if b := get(t, c, map[string]string{"X-Canary": "yes"}).Header.Get("X-Backend"); b != "v2" {
			t.Fatalf("canary went to %s", b)
		}
	}
	e.wp.mu.Lock()
	defer e.wp.mu.Unlock()
	for k := range e.wp.transports {
		if k.endpoint.Addr() == netip.MustParseAddr("127.0.0.2") {
			t.Fatalf("transport to removed endpoint %v kept", k)
		}
	}
}

func TestEndpointIdentityEnforced(t *testing.T) {
	e := setup(t)
	// v1's workload (identity echo-v1) now claims 127.0.0.3, where the
	// HBONE server proves echo-v2: the waypoint must refuse the tunnel.
	cfg := config("127.0.0.3", "127.0.0.3")
	cfg[configv1alpha1.TypeWaypointConfig]["default/waypoint"].(*configv1alpha1.WaypointConfig).Services[0].Rules[1].Backends[1].Weight = 0
	for _, typ := range e.store.Types() {
		if err := typ.Handle(resources(t, cfg[typ.URL])); err != nil {
			t.Fatal(err)
		}
	}
	c := e.httpClient("10.96.0.10:80", false)
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://echo.default.svc/")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Backend") != "" {
		t.Fatalf("status %d from %q, want 503 from the waypoint", resp.StatusCode, resp.Header.Get("X-Backend"))
	}
}

// The transport of a target is looked up once per store generation: the
// same endpoint and workload get the same pooled transport, until an
// update changes the workload's identity.
func TestTransportLookupFollowsIdentity(t *testing.T) {
	e := setup(t)
	target := proxy.Target{Service: "default/echo", Port: 80, Endpoint: proxy.Endpoint{Address: "127.0.0.2:8080", Workload: "default/v1-pod"}}
	first := e.wp.hboneTransport(target)
	tr, ok := first.(*proxy.H1Transport)
	if !ok {
		t.Fatalf("transport %T, want *proxy.H1Transport", first)
	}
	if again := e.wp.hboneTransport(target); again != first {
		t.Fatal("a second lookup of the same target made a new transport")
	}
	cfg := config("127.0.0.2", "127.0.0.3")
	w := proto.Clone(cfg[configv1alpha1.TypeWorkload]["default/v1-pod"]).(*configv1alpha1.Workload)
	w.Identity = sa("echo-v1-renamed").String()
	cfg[configv1alpha1.TypeWorkload]["default/v1-pod"] = w
	if err := e.store.HandleWorkloads(resources(t, cfg[configv1alpha1.TypeWorkload])); err != nil {
		t.Fatal(err)
	}
	next := e.wp.hboneTransport(target)
	if next == first {
		t.Fatal("the workload's identity changed and its target kept the old identity's transport")
	}
	e.wp.mu.Lock()
	defer e.wp.mu.Unlock()
	for k, v := range e.wp.transports {
		if v == next && k.dst != sa("echo-v1-renamed") {
			t.Fatalf("the new transport is for %v, want %v", k.dst, sa("echo-v1-renamed"))
		}
		if v == upstreamTransport(tr) {
			t.Fatalf("the old identity's transport is still pooled under %v", k)
		}
	}
}

// TestForwardedHeaders: the endpoint learns the client's address from
// X-Forwarded-For (the tunnel's Forwarded for=, which the client's ztunnel
// sets, else the tunnel's source address), appended to what the client
// sent, X-Forwarded-Proto http unless the client set it, and the verified
// identities in X-Forwarded-Client-Cert (a forged one replaced); over
// HTTP/1.1 and h2c.
func TestForwardedHeaders(t *testing.T) {
	for _, h2c := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2c=%v", h2c), func(t *testing.T) {
			e := setup(t)
			// The client's certificate, one per tunnel connection: its hash
			// is X-Forwarded-Client-Cert's.
			var issued atomic.Pointer[tls.Certificate]
			d := &hbone.Dialer{TLSConfig: func(_, dst identity.SPIFFEID) (*tls.Config, error) {
				cert, err := e.ca.Issue(e.clientID, time.Hour)
				if err != nil {
					return nil, err
				}
				issued.Store(cert)
				return identity.ClientConfig(identity.StaticCert(cert), e.ca.Pool, dst), nil
			}}
			t.Cleanup(func() { _ = d.Close() })
			for _, tc := range []struct {
				name      string
				tunnel    http.Header
				req       map[string]string
				xff, prot string
			}{
				{name: "ztunnel's forwarded for", tunnel: http.Header{"Forwarded": {`for="[fd00::7]"`}}, xff: "fd00::7", prot: "http"},
				{name: "IPv4, appended, proto kept", tunnel: http.Header{"Forwarded": {"for=10.1.2.3"}},
					req: map[string]string{"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
						"X-Forwarded-Client-Cert": "By=spiffe://cluster.local/ns/default/sa/waypoint;URI=spiffe://cluster.local/ns/kube-system/sa/admin"},
					xff: "203.0.113.9, 10.1.2.3", prot: "https"},
				{name: "no forwarded: the tunnel's source", xff: "127.0.0.1", prot: "http"},
			} {
				c := e.clientFor(d, e.clientID, "10.96.0.10:80", h2c, tc.tunnel)
				resp := get(t, c, tc.req)
				c.CloseIdleConnections()
				if got := resp.Header.Get("X-Echo-X-Forwarded-For"); got != tc.xff {
					t.Errorf("%s: X-Forwarded-For %q, want %q", tc.name, got, tc.xff)
				}
				if got := resp.Header.Values("X-Echo-X-Forwarded-Proto"); len(got) != 1 || got[0] != tc.prot {
					t.Errorf("%s: X-Forwarded-Proto %q, want %q", tc.name, got, tc.prot)
				}
				// The verified identities, never what the client claimed.
				sum := sha256.Sum256(issued.Load().Certificate[0])
				want := "By=" + sa("waypoint").String() + ";Hash=" + hex.EncodeToString(sum[:]) + `;Subject="";URI=` + e.clientID.String()
				if got := resp.Header.Values("X-Echo-X-Forwarded-Client-Cert"); len(got) != 1 || got[0] != want {
					t.Errorf("%s: X-Forwarded-Client-Cert %q, want %q", tc.name, got, want)
				}
			}
		})
	}
}
