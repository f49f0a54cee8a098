package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
)

func TestClassify(t *testing.T) {
	cases := map[string]sniffed{
		"":                                      sniffMore,
		"G":                                     sniffMore,
		"GET":                                   sniffMore,
		"GET /":                                 sniffMore,
		"GET / HTTP/1.1":                        sniffMore,
		"GET / HTTP/1.1\r":                      sniffMore,
		"GET / HTTP/1.1\r\n":                    sniffHTTP1,
		"GET / HTTP/1.1\n":                      sniffHTTP1,
		"POST /a?b=c HTTP/1.0\r\nHost: x\r\n":   sniffHTTP1,
		"M-SEARCH * HTTP/1.1\r\n":               sniffHTTP1,
		"PRI":                                   sniffMore,
		"PRI * HTTP/2.0\r\n\r\nSM\r\n":          sniffMore,
		http2Preface:                            sniffHTTP2,
		http2Preface + "\x00\x00\x12\x04":       sniffHTTP2,
		"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n":      sniffTCP,
		"GET / HTTP/2.0\r\n":                    sniffTCP,
		"GET / SSH-2.0\r\n":                     sniffTCP,
		"GET /\r\n":                             sniffTCP,
		"GET  / HTTP/1.1\r\n":                   sniffTCP,
		"GET / HTTP/1.1\rX":                     sniffTCP,
		"SSH-2.0-OpenSSH_9.2\r\n":               sniffTCP,
		"\x16\x03\x01\x02\x00\x01":              sniffTCP,
		"\x00":                                  sniffTCP,
		" GET / HTTP/1.1\r\n":                   sniffTCP,
		strings.Repeat("A", 40):                 sniffTCP,
		"GET /" + strings.Repeat("a", maxSniff): sniffTCP,
	}
	for in, want := range cases {
		if got := classify([]byte(in)); got != want {
			t.Errorf("classify(%q) = %v, want %v", in, got, want)
		}
	}
}

// rawBackend is an HBONE server that speaks first (a greeting naming the
// tunnel's peer, as server-first protocols do) and then echoes.
type rawBackend struct {
	mu    sync.Mutex
	peers map[string]int
}

func (b *rawBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, c := range b.peers {
		n += c
	}
	return n
}

func startRawBackend(t *testing.T, e *env, ip string, id identity.SPIFFEID) *rawBackend {
	t.Helper()
	l, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, e.wp.cfg.HBONEPort))
	if err != nil {
		t.Fatalf("raw backend on the backends' HBONE port: %v", err)
	}
	cert, err := e.ca.Issue(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b := &rawBackend{peers: map[string]int{}}
	srv := &hbone.Server{
		TLSConfig: identity.ServerConfig(identity.StaticCert(cert), e.ca.Pool, nil),
		Handler: func(st *hbone.Stream) {
			b.mu.Lock()
			b.peers[st.Peer().String()]++
			b.mu.Unlock()
			if err := st.Accept(); err != nil {
				return
			}
			// The tunnel's Forwarded names the waypoint's client.
			fmt.Fprintf(st, "hello %s %s\n", st.Peer(), st.Header().Get("Forwarded"))
			_, _ = io.Copy(st, st)
			_ = st.CloseWrite()
		},
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return b
}

// mesh is config() with the raw service and pod, the echo-v1 and raw ports
// undeclared in the WaypointConfig, and edit applied.
func (e *env) mesh(t *testing.T, edit func(m map[string]map[string]proto.Message)) {
	t.Helper()
	m := config("127.0.0.2", "127.0.0.3")
	wc := waypointConfig()
	wc.Services = append(wc.Services,
		&configv1alpha1.ServiceRoutes{Service: "default/echo-v1", Port: 80},
		&configv1alpha1.ServiceRoutes{Service: "default/raw", Port: 9000})
	m[configv1alpha1.TypeWaypointConfig]["default/waypoint"] = wc
	raw := service("raw", "10.96.0.20", &configv1alpha1.Endpoint{Workload: "default/raw-pod", Address: "127.0.0.4", Ready: true})
	raw.Ports = []*configv1alpha1.ServicePort{{Name: "db", Port: 9000, TargetPort: 9000}}
	m[configv1alpha1.TypeService]["default/raw"] = raw
	m[configv1alpha1.TypeWorkload]["default/raw-pod"] = &configv1alpha1.Workload{Name: "default/raw-pod", Namespace: "default",
		Identity: sa("raw").String(), Addresses: []string{"127.0.0.4"}, Ready: true, WorkloadName: "raw"}
	if edit != nil {
		edit(m)
	}
	for _, typ := range e.store.Types() {
		if err := typ.Handle(resources(t, m[typ.URL])); err != nil {
			t.Fatal(err)
		}
	}
}

// rawDial opens a tunnel to the waypoint with the given authority.
func (e *env) rawDial(authority string) (*hbone.Conn, error) {
	return e.client.Dial(context.Background(), hbone.Request{Source: e.clientID, Destination: sa("waypoint"),
		Address: e.wpAddr, Authority: netip.MustParseAddrPort(authority)})
}

type connResults struct {
	mu   sync.Mutex
	list []proxy.ConnResult
}

func (c *connResults) add(r *proxy.ConnResult, done bool) {
	if done {
		c.mu.Lock()
		c.list = append(c.list, *r)
		c.mu.Unlock()
	}
}

func (c *connResults) nth(t *testing.T, n int) proxy.ConnResult {
	t.Helper()
	var r proxy.ConnResult
	eventually(t, fmt.Sprintf("tunnel %d reported", n), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if len(c.list) < n {
			return false
		}
		r = c.list[n-1]
		return true
	})
	return r
}

// echoThrough sends payload through a tunnel to the raw backend and
// returns what came back after the greeting.
func echoThrough(t *testing.T, c *hbone.Conn, payload []byte) (greeting string, echoed []byte) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	br := bufio.NewReader(c)
	greeting, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("greeting: %v", err)
	}
	echoed, err = io.ReadAll(br)
	if err != nil {
		t.Fatalf("echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	return greeting, echoed
}

// TestSniffedProtocols: on a service port whose protocol nothing declares
// (PROTOCOL_UNSPECIFIED) the waypoint serves HTTP/1.1 and h2c as HTTP
// (routes, metrics) and passes anything else through as TCP, the sniffed
// bytes replayed; a client that sends nothing (a server-first protocol) is
// passed through once the sniff timeout passes.
func TestSniffedProtocols(t *testing.T) {
	const sniffTimeout = time.Second
	rs, conns := &results{}, &connResults{}
	e := setup(t, func(c *Config) {
		c.Gateway = "default/waypoint"
		c.OnResult, c.OnConn = rs.add, conns.add
		c.SniffTimeout = sniffTimeout
	})
	e.mesh(t, nil)
	raw := startRawBackend(t, e, "127.0.0.4", sa("raw"))
	wantGreeting := fmt.Sprintf("hello %s for=127.0.0.1\n", sa("waypoint"))

	for i, h2c := range []bool{false, true} {
		c := e.httpClient("10.96.0.11:80", h2c)
		body := strings.Repeat("x", 100<<10)
		resp, err := c.Post("http://echo-v1.default.svc/sniffed", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatalf("h2c=%v: %v", h2c, err)
		}
		got, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		wantProto := "HTTP/1.1"
		if h2c {
			wantProto = "HTTP/2.0"
		}
		if resp.StatusCode != 200 || string(got) != "v1" || resp.Header.Get("X-Proto") != wantProto || resp.Proto != wantProto {
			t.Fatalf("h2c=%v: %d %q, upstream %q, downstream %q", h2c, resp.StatusCode, got, resp.Header.Get("X-Proto"), resp.Proto)
		}
		r := rs.nth(t, i+1)
		if r.Service != "default/echo-v1" || r.Port != 80 || r.Code != 200 || r.BytesReceived != int64(len(body)) || r.Endpoint != "127.0.0.2:8080" {
			t.Fatalf("h2c=%v: result %+v", h2c, r)
		}
		c.CloseIdleConnections()
	}

	// A client-first binary protocol: passed through, every byte.
	payload := make([]byte, 200<<10)
	_, _ = rand.Read(payload)
	payload[0] = 0x16 // TLS-like: not HTTP from the first byte
	c, err := e.rawDial("10.96.0.20:9000")
	if err != nil {
		t.Fatal(err)
	}
	greeting, echoed := echoThrough(t, c, payload)
	_ = c.Close()
	if greeting != wantGreeting || !bytes.Equal(echoed, payload) {
		t.Fatalf("tcp: greeting %q, %d of %d bytes echoed intact=%v", greeting, len(echoed), len(payload), bytes.Equal(echoed, payload))
	}
	if r := conns.nth(t, 1); !r.Opened || r.Service != "default/raw" || r.Endpoint != "127.0.0.4:9000" || r.BytesReceived != int64(len(payload)) {
		t.Fatalf("tcp tunnel result %+v", r)
	}

	// A client that starts like HTTP but is not (a half request line, then
	// a non-HTTP version): TCP, the bytes replayed.
	c, err = e.rawDial("10.96.0.20:9000")
	if err != nil {
		t.Fatal(err)
	}
	notHTTP := []byte("GET / SSH-2.0\r\nrest")
	greeting, echoed = echoThrough(t, c, notHTTP)
	_ = c.Close()
	if greeting != wantGreeting || !bytes.Equal(echoed, notHTTP) {
		t.Fatalf("http-like tcp: greeting %q, echoed %q", greeting, echoed)
	}

	// Server-first: the client waits for the greeting, which comes once
	// sniffing gave up.
	c, err = e.rawDial("10.96.0.20:9000")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	greeting, err = br.ReadString('\n')
	if err != nil || greeting != wantGreeting {
		t.Fatalf("server-first greeting %q: %v", greeting, err)
	}
	if waited := time.Since(start); waited < sniffTimeout {
		t.Fatalf("greeting after %v, before the sniff timeout %v", waited, sniffTimeout)
	}
	if _, err := io.WriteString(c, "QUIT\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	rest, err := io.ReadAll(br)
	_ = c.Close()
	if err != nil || string(rest) != "QUIT\r\n" {
		t.Fatalf("server-first echo %q: %v", rest, err)
	}
	if n := raw.count(); n != 3 {
		t.Fatalf("raw backend saw %d tunnels, want 3", n)
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if len(rs.list) != 2 {
		t.Fatalf("%d HTTP results, want the 2 HTTP requests only", len(rs.list))
	}
}

// TestExplicitTCPNotSniffed: a port declared TCP is never sniffed: a
// client that sends nothing gets the server's greeting at once.
func TestExplicitTCPNotSniffed(t *testing.T) {
	e := setup(t, func(c *Config) { c.SniffTimeout = 5 * time.Second })
	e.mesh(t, func(m map[string]map[string]proto.Message) {
		wc := m[configv1alpha1.TypeWaypointConfig]["default/waypoint"].(*configv1alpha1.WaypointConfig)
		wc.Services[len(wc.Services)-1].Protocol = configv1alpha1.ServiceRoutes_PROTOCOL_TCP
	})
	startRawBackend(t, e, "127.0.0.4", sa("raw"))
	c, err := e.rawDial("10.96.0.20:9000")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "hello ") {
		t.Fatalf("greeting %q: %v", line, err)
	}
	// The waypoint's tunnel to the endpoint names its client (here the
	// tunnel's source, 127.0.0.1: the client set no Forwarded).
	if want := "hello " + sa("waypoint").String() + " for=127.0.0.1\n"; line != want {
		t.Errorf("greeting %q, want %q", line, want)
	}
	if waited := time.Since(start); waited >= 2*time.Second {
		t.Fatalf("greeting after %v: the TCP port was sniffed", waited)
	}
}

// TestWorkloadAddressedTunnels: with Workload.waypoint naming this
// waypoint, a tunnel whose authority is the pod's IP:port is authorized
// (WAYPOINT-scoped policies, L7 for HTTP, L4 for TCP) and forwarded to that
// pod over HBONE as the waypoint: HTTP when a Service port declares it,
// else sniffed (TCP pass-through here). Pods without this waypoint are
// refused.
func TestWorkloadAddressedTunnels(t *testing.T) {
	rs, conns := &results{}, &connResults{}
	e := setup(t, func(c *Config) {
		c.Gateway = "default/waypoint"
		c.OnResult, c.OnConn = rs.add, conns.add
		c.SniffTimeout = 200 * time.Millisecond
	})
	wp := &configv1alpha1.WaypointRef{Gateway: "default/waypoint", Address: "10.96.0.1", Identity: sa("waypoint").String()}
	e.mesh(t, func(m map[string]map[string]proto.Message) {
		ws := m[configv1alpha1.TypeWorkload]
		ws["default/v1-pod"].(*configv1alpha1.Workload).Waypoint = wp
		ws["default/raw-pod"].(*configv1alpha1.Workload).Waypoint = wp
		ws["default/other-pod"] = &configv1alpha1.Workload{Name: "default/other-pod", Namespace: "default", Identity: sa("other").String(),
			Addresses: []string{"127.0.0.5"}, Ready: true,
			Waypoint: &configv1alpha1.WaypointRef{Gateway: "default/other", Address: "10.96.0.2", Identity: sa("other-wp").String()}}
	})
	raw := startRawBackend(t, e, "127.0.0.4", sa("raw"))

	// HTTP (the echo-v1 Service's port "http" targets 8080), both versions.
	for i, h2c := range []bool{false, true} {
		c := e.httpClient("127.0.0.2:8080", h2c)
		resp, err := c.Get("http://10.1.2.3:8080/direct")
		if err != nil {
			t.Fatalf("h2c=%v: %v", h2c, err)
		}
		got, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		c.CloseIdleConnections()
		if resp.StatusCode != 200 || string(got) != "v1" || resp.Header.Get("X-Peer") != sa("waypoint").String() {
			t.Fatalf("h2c=%v: %d %q peer %q", h2c, resp.StatusCode, got, resp.Header.Get("X-Peer"))
		}
		r := rs.nth(t, i+1)
		if r.Service != "" || r.Port != 8080 || r.Workload != "default/v1-pod" || r.Endpoint != "127.0.0.2:8080" || r.Backend != "" || r.Code != 200 {
			t.Fatalf("h2c=%v: result %+v", h2c, r)
		}
	}
	if n := e.v2.peerCounts()[sa("waypoint").String()]; n != 0 {
		t.Fatalf("v2 got %d tunnels for requests addressed to v1's pod", n)
	}

	// Sniffed TCP to the raw pod (no Service declares port 9000).
	c, err := e.rawDial("127.0.0.4:9000")
	if err != nil {
		t.Fatal(err)
	}
	greeting, echoed := echoThrough(t, c, []byte("\x00binary"))
	_ = c.Close()
	if greeting != fmt.Sprintf("hello %s for=127.0.0.1\n", sa("waypoint")) || string(echoed) != "\x00binary" {
		t.Fatalf("workload tcp: %q %q", greeting, echoed)
	}
	if r := conns.nth(t, 1); !r.Opened || r.Service != "" || r.Workload != "default/raw-pod" || r.Endpoint != "127.0.0.4:9000" {
		t.Fatalf("workload tcp result %+v", r)
	}

	// Pods without this waypoint: refused.
	var se *hbone.StatusError
	for _, a := range []string{"127.0.0.3:8080", "127.0.0.5:80", "127.0.0.99:80"} {
		if _, err := e.rawDial(a); !errors.As(err, &se) || se.Code != http.StatusNotFound {
			t.Fatalf("%s: %v, want 404", a, err)
		}
	}

	// A WAYPOINT-scoped policy: only GET /metrics from the client. L7 for
	// HTTP: GET /metrics 200, POST 403 naming it; at L4 an ALLOW needing
	// HTTP attributes never matches: the sniffed TCP tunnel is reset and
	// the pod never reached.
	pol := metricsGetOnly()
	pol.Scope, pol.Targets = configv1alpha1.Authorization_SCOPE_WAYPOINT, []string{"default/waypoint"}
	if err := e.store.HandleAuthorizations(resources(t, map[string]proto.Message{"default/metrics-get-only": pol})); err != nil {
		t.Fatal(err)
	}
	hc := e.httpClient("127.0.0.2:8080", false)
	defer hc.CloseIdleConnections()
	if resp, body := do(t, hc, http.MethodGet, "/metrics", nil); resp.StatusCode != 200 || body != "v1" {
		t.Fatalf("allowed GET: %d %q", resp.StatusCode, body)
	}
	if resp, body := do(t, hc, http.MethodPost, "/metrics", nil); resp.StatusCode != 403 || !strings.Contains(body, "default/metrics-get-only") {
		t.Fatalf("denied POST: %d %q", resp.StatusCode, body)
	}
	before := raw.count()
	c, err = e.rawDial("127.0.0.4:9000")
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Write([]byte("\x00denied"))
	got, err := io.ReadAll(c)
	_ = c.Close()
	if len(got) > 0 {
		t.Fatalf("denied tcp tunnel read %q (%v)", got, err)
	}
	if r := conns.nth(t, 2); r.Opened || r.Flags != proxy.FlagDenied || r.Authz.Policy != "default/metrics-get-only" {
		t.Fatalf("denied workload tunnel result %+v", r)
	}
	if n := raw.count(); n != before {
		t.Fatalf("the denied tunnel reached the pod (%d tunnels, was %d)", n, before)
	}
}

// TestWorkloadProtocol: the protocol of a workload-addressed tunnel comes
// from the Service ports that target the pod's port.
func TestWorkloadProtocol(t *testing.T) {
	st := NewStore(nil)
	svc := func(name string, ports ...*configv1alpha1.ServicePort) *configv1alpha1.Service {
		return &configv1alpha1.Service{Name: "ns/" + name, Vips: []string{"10.96.0.1"}, Ports: ports,
			Endpoints: []*configv1alpha1.Endpoint{{Address: "10.1.0.1", Ready: true, TargetPorts: map[uint32]uint32{81: 8081}}}}
	}
	if err := st.HandleServices(resources(t, map[string]proto.Message{
		"ns/a": svc("a", &configv1alpha1.ServicePort{Name: "web", Port: 80, TargetPort: 8080},
			&configv1alpha1.ServicePort{Name: "http", Port: 81}, // the endpoint maps it to 8081
			&configv1alpha1.ServicePort{Name: "db", Port: 5432, AppProtocol: "tcp"},
			&configv1alpha1.ServicePort{Name: "grpc", Port: 9090},
			&configv1alpha1.ServicePort{Name: "x", Port: 7000}),
		"ns/b": svc("b", &configv1alpha1.ServicePort{Name: "grpc-x", Port: 7000}, &configv1alpha1.ServicePort{Name: "y", Port: 9090, AppProtocol: "http"}),
	})); err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("10.1.0.1")
	want := map[uint32]configv1alpha1.ServiceRoutes_Protocol{
		8080: configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED, // nothing declares it
		8081: configv1alpha1.ServiceRoutes_PROTOCOL_HTTP,
		5432: configv1alpha1.ServiceRoutes_PROTOCOL_TCP,
		7000: configv1alpha1.ServiceRoutes_PROTOCOL_GRPC,        // b declares, a does not
		9090: configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED, // GRPC and HTTP disagree
		1234: configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED, // no Service port
	}
	for port, w := range want {
		if got := st.workloadProtocol(ip, port); got != w {
			t.Errorf("port %d: %v, want %v", port, got, w)
		}
	}
	// The route table's protocol of a served port wins.
	if err := st.HandleWaypointConfig(resources(t, map[string]proto.Message{"ns/wp": &configv1alpha1.WaypointConfig{Name: "ns/wp",
		Services: []*configv1alpha1.ServiceRoutes{{Service: "ns/a", Port: 80, Protocol: configv1alpha1.ServiceRoutes_PROTOCOL_HTTP}}}})); err != nil {
		t.Fatal(err)
	}
	if got := st.workloadProtocol(ip, 8080); got != configv1alpha1.ServiceRoutes_PROTOCOL_HTTP {
		t.Errorf("port 8080 with a route table entry: %v, want HTTP", got)
	}
}
