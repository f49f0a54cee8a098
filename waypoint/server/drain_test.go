package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"google.golang.org/protobuf/proto"
)

// countingClient is httpClient with a count of the tunnels it opened.
func (e *env) countingClient(vip string, h2c bool) (*http.Client, *atomic.Int64) {
	var dials atomic.Int64
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			dials.Add(1)
			return e.client.Dial(ctx, hbone.Request{
				Source: e.clientID, Destination: sa("waypoint"),
				Address: e.wpAddr, Authority: netip.MustParseAddrPort(vip),
			})
		},
		DisableCompression:  true,
		MaxIdleConnsPerHost: 16,
	}
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, &dials
}

// setWaypointConfig replaces the WaypointConfig with one that serves
// echo:80 (serve) or nothing.
func (e *env) setWaypointConfig(t *testing.T, serve bool) {
	t.Helper()
	wc := waypointConfig()
	if !serve {
		wc.Services = nil
	}
	if err := e.store.HandleWaypointConfig(resources(t, map[string]proto.Message{"default/waypoint": wc})); err != nil {
		t.Fatal(err)
	}
}

// load sends requests from workers goroutines until stop is closed and
// counts the answers: ok (200), failed (anything else, or an error), and
// closing (200 with Connection: close, HTTP/1.1 only).
type load struct {
	ok, failed, closing atomic.Int64
	mu                  sync.Mutex
	errs                []string
	wg                  sync.WaitGroup
	stop                chan struct{}
}

func startLoad(c *http.Client, workers int) *load {
	l := &load{stop: make(chan struct{})}
	for range workers {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				resp, err := c.Get("http://echo.default.svc/hello")
				if err != nil {
					l.fail(err.Error())
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					l.fail(fmt.Sprintf("status %d", resp.StatusCode))
					continue
				}
				l.ok.Add(1)
				if resp.Close {
					l.closing.Add(1)
				}
			}
		})
	}
	return l
}

func (l *load) fail(msg string) {
	l.failed.Add(1)
	l.mu.Lock()
	if len(l.errs) < 5 {
		l.errs = append(l.errs, msg)
	}
	l.mu.Unlock()
}

func (l *load) finish() {
	close(l.stop)
	l.wg.Wait()
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDrainRemovedService: a keep-alive HTTP/1.1 client and an h2c client
// keep sending while the Service leaves the waypoint's config. Not one
// request fails; answers on their connections say Connection: close (the
// HTTP/1.1 connection closes after it, the h2c one is GOAWAYed), so the
// clients open new tunnels; those are served while the drain lasts; after
// it a new tunnel gets 404.
func TestDrainRemovedService(t *testing.T) {
	for _, h2c := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2c=%v", h2c), func(t *testing.T) {
			e := setup(t)
			const drain = 1500 * time.Millisecond
			e.store.SetDrainPeriod(drain)
			c, dials := e.countingClient("10.96.0.10:80", h2c)
			defer c.CloseIdleConnections()

			l := startLoad(c, 4)
			waitFor(t, "requests before the change", func() bool { return l.ok.Load() >= 50 })
			before := dials.Load()
			if l.closing.Load() != 0 || l.failed.Load() != 0 {
				t.Fatalf("before the change: %d closing answers, %d failed (%v)", l.closing.Load(), l.failed.Load(), l.errs)
			}
			removed := time.Now()
			e.setWaypointConfig(t, false)
			okAtChange := l.ok.Load()
			waitFor(t, "requests after the change", func() bool { return l.ok.Load() >= okAtChange+100 })
			if svcs, wls := e.store.Draining(); svcs != 1 || wls != 0 {
				t.Fatalf("Draining() = %d services, %d workloads, want 1, 0", svcs, wls)
			}
			l.finish()
			if time.Since(removed) >= drain {
				t.Fatalf("the load outlasted the drain period (%v); the test proves nothing", time.Since(removed))
			}
			if n := l.failed.Load(); n != 0 {
				t.Fatalf("%d requests failed across the removal: %v", n, l.errs)
			}
			// HTTP/2 has no Connection header: the waypoint's GOAWAY shows
			// as new tunnels.
			if !h2c && l.closing.Load() == 0 {
				t.Fatal("no answer said Connection: close during the drain")
			}
			if dials.Load() <= before {
				t.Fatalf("the client opened no new tunnel after the change (%d dials)", dials.Load())
			}
			t.Logf("before: %d tunnels; drain: %d answers, %d with Connection: close, %d tunnels",
				before, l.ok.Load()-okAtChange, l.closing.Load(), dials.Load()-before)
			if d := e.store.Dump(); len(d.Draining) != 1 || d.Draining[0] != "default/echo:80" {
				t.Fatalf("dump draining %v, want [default/echo:80]", d.Draining)
			}

			// After the drain: a new tunnel gets the current answer, 404.
			waitFor(t, "the drain to end", func() bool { s, _ := e.store.Draining(); return s == 0 })
			c2 := e.httpClient("10.96.0.10:80", h2c)
			defer c2.CloseIdleConnections()
			resp, err := c2.Get("http://echo.default.svc/hello")
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Fatalf("after the drain: status %d, want 404", resp.StatusCode)
			}
		})
	}
}

// TestDrainConnectionClosed: on a keep-alive HTTP/1.1 connection, the
// answer after the change carries Connection: close and the waypoint then
// closes the connection (the tunnel ends).
func TestDrainConnectionClosed(t *testing.T) {
	e := setup(t)
	e.store.SetDrainPeriod(time.Minute)
	conn, err := e.client.Dial(context.Background(), hbone.Request{
		Source: e.clientID, Destination: sa("waypoint"),
		Address: e.wpAddr, Authority: netip.MustParseAddrPort("10.96.0.10:80"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const req = "GET /hello HTTP/1.1\r\nHost: echo.default.svc\r\n\r\n"
	br := bufio.NewReader(conn)
	send := func() *http.Response {
		t.Helper()
		if _, err := io.WriteString(conn, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp
	}
	if resp := send(); resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("before: status %d, close %v", resp.StatusCode, resp.Close)
	}
	e.setWaypointConfig(t, false)
	resp := send()
	if resp.StatusCode != http.StatusOK || !resp.Close {
		t.Fatalf("during the drain: status %d, close %v, want 200 and Connection: close", resp.StatusCode, resp.Close)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := br.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("after the closing answer: read %d bytes, %v; want EOF", n, err)
	}
}

// TestDrainServiceBack: a service that comes back during its drain is
// current again: no more Connection: close, and it stays served past the
// drain period.
func TestDrainServiceBack(t *testing.T) {
	e := setup(t)
	const drain = 300 * time.Millisecond
	e.store.SetDrainPeriod(drain)
	c := e.httpClient("10.96.0.10:80", false)
	defer c.CloseIdleConnections()
	e.setWaypointConfig(t, false)
	if resp := get(t, c, nil); !resp.Close {
		t.Fatal("during the drain: answer without Connection: close")
	}
	e.setWaypointConfig(t, true)
	if s, _ := e.store.Draining(); s != 0 {
		t.Fatalf("%d services draining after the service came back", s)
	}
	time.Sleep(drain + 100*time.Millisecond)
	for range 3 {
		if resp := get(t, c, nil); resp.Close {
			t.Fatal("answer with Connection: close after the service came back")
		}
	}
}

// TestDrainDisabled: with a drain period of 0 a removed service answers
// 404 at once.
func TestDrainDisabled(t *testing.T) {
	e := setup(t)
	e.store.SetDrainPeriod(0)
	c := e.httpClient("10.96.0.10:80", false)
	defer c.CloseIdleConnections()
	get(t, c, nil)
	e.setWaypointConfig(t, false)
	resp, err := c.Get("http://echo.default.svc/hello")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("status %d, want 404", resp.StatusCode)
	}
	if s, w := e.store.Draining(); s != 0 || w != 0 {
		t.Fatalf("Draining() = %d, %d with the drain disabled", s, w)
	}
}

// TestDrainGoAway: on an h2c connection, the answer after the change
// completes and the waypoint sends GOAWAY: the next request goes on a new
// tunnel.
func TestDrainGoAway(t *testing.T) {
	e := setup(t)
	e.store.SetDrainPeriod(time.Minute)
	c, dials := e.countingClient("10.96.0.10:80", true)
	defer c.CloseIdleConnections()
	if resp := get(t, c, nil); resp.ProtoMajor != 2 || dials.Load() != 1 {
		t.Fatalf("before: %s over %d tunnels", resp.Proto, dials.Load())
	}
	get(t, c, nil)
	if n := dials.Load(); n != 1 {
		t.Fatalf("before the change: %d tunnels, want 1", n)
	}
	e.setWaypointConfig(t, false)
	get(t, c, nil) // the old connection: answered, then GOAWAY
	waitFor(t, "a new tunnel after GOAWAY", func() bool {
		get(t, c, nil)
		return dials.Load() == 2
	})
}

// TestDrainWorkload: a workload that stops using this waypoint (waypoint
// for workload) is served for the drain period with Connection: close,
// then tunnels to it are refused.
func TestDrainWorkload(t *testing.T) {
	e := setup(t, func(c *Config) { c.Gateway = "default/waypoint" })
	const drain = 400 * time.Millisecond
	e.store.SetDrainPeriod(drain)
	wp := &configv1alpha1.WaypointRef{Gateway: "default/waypoint", Address: "10.96.0.1", Identity: sa("waypoint").String()}
	other := &configv1alpha1.WaypointRef{Gateway: "default/other", Address: "10.96.0.2", Identity: sa("other-wp").String()}
	withWaypoint := func(ref *configv1alpha1.WaypointRef) {
		e.mesh(t, func(m map[string]map[string]proto.Message) {
			ws := m[configv1alpha1.TypeWorkload]
			ws["default/v1-pod"].(*configv1alpha1.Workload).Waypoint = ref
			// another waypoint's workload leaving it is not this one's drain
			ws["default/v2-pod"].(*configv1alpha1.Workload).Waypoint = other
			if ref == nil {
				ws["default/v2-pod"].(*configv1alpha1.Workload).Waypoint = nil
			}
		})
	}
	withWaypoint(wp)
	c := e.httpClient("127.0.0.2:8080", false)
	defer c.CloseIdleConnections()
	if resp := get(t, c, nil); resp.Close {
		t.Fatal("Connection: close before the change")
	}
	withWaypoint(nil)
	if s, w := e.store.Draining(); s != 0 || w != 1 {
		t.Fatalf("Draining() = %d services, %d workloads, want 0, 1", s, w)
	}
	for range 3 { // each on a new tunnel, each told to close
		if resp := get(t, c, nil); !resp.Close {
			t.Fatal("during the drain: answer without Connection: close")
		}
	}
	waitFor(t, "the drain to end", func() bool { _, w := e.store.Draining(); return w == 0 })
	var se *hbone.StatusError
	if _, err := e.rawDial("127.0.0.2:8080"); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Fatalf("after the drain: %v, want 404", err)
	}
}

// TestDrainTCPTunnel: a TCP pass-through tunnel open when its service
// leaves the config keeps running past the drain; a new one during the
// drain is passed through; after the drain a new one is not (the port is
// unknown: the tunnel goes to the HTTP server).
func TestDrainTCPTunnel(t *testing.T) {
	e := setup(t)
	const drain = 400 * time.Millisecond
	e.store.SetDrainPeriod(drain)
	e.mesh(t, func(m map[string]map[string]proto.Message) {
		wc := m[configv1alpha1.TypeWaypointConfig]["default/waypoint"].(*configv1alpha1.WaypointConfig)
		wc.Services[2].Protocol = configv1alpha1.ServiceRoutes_PROTOCOL_TCP
	})
	startRawBackend(t, e, "127.0.0.4", sa("raw"))
	open, err := e.rawDial("10.96.0.20:9000")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	_ = open.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(open)
	if greeting, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(greeting, "hello ") {
		t.Fatalf("greeting %q, %v", greeting, err)
	}
	roundTrip := func(msg string) {
		t.Helper()
		if _, err := io.WriteString(open, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil || string(got) != msg {
			t.Fatalf("echo %q, %v; want %q", got, err, msg)
		}
	}
	roundTrip("one")
	e.mesh(t, func(m map[string]map[string]proto.Message) {
		wc := m[configv1alpha1.TypeWaypointConfig]["default/waypoint"].(*configv1alpha1.WaypointConfig)
		wc.Services = wc.Services[:2] // raw leaves
	})
	if s, _ := e.store.Draining(); s != 1 {
		t.Fatalf("%d services draining, want 1", s)
	}
	roundTrip("two")
	fresh, err := e.rawDial("10.96.0.20:9000")
	if err != nil {
		t.Fatalf("new tunnel during the drain: %v", err)
	}
	if greeting, echoed := echoThrough(t, fresh, []byte("new")); !strings.HasPrefix(greeting, "hello ") || string(echoed) != "new" {
		t.Fatalf("new tunnel during the drain: %q %q", greeting, echoed)
	}
	_ = fresh.Close()
	waitFor(t, "the drain to end", func() bool { s, _ := e.store.Draining(); return s == 0 })
	roundTrip("three")

	late, err := e.rawDial("10.96.0.20:9000")
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	_ = late.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(late, "GET / HTTP/1.1\r\nHost: raw\r\n\r\n")
	if line, err := bufio.NewReader(late).ReadString('\n'); err != nil || !strings.HasPrefix(line, "HTTP/1.1 404") {
		t.Fatalf("new tunnel after the drain answered %q, %v; want the HTTP server's 404", line, err)
	}
}

// TestDrainInFlight: a request whose body is still being sent when the
// service leaves the config completes normally (and, on HTTP/1.1, is told
// to close).
func TestDrainInFlight(t *testing.T) {
	for _, h2c := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2c=%v", h2c), func(t *testing.T) {
			e := setup(t)
			e.store.SetDrainPeriod(time.Minute)
			c := e.httpClient("10.96.0.10:80", h2c)
			defer c.CloseIdleConnections()
			get(t, c, nil)
			pr, pw := io.Pipe()
			req, _ := http.NewRequest(http.MethodPost, "http://echo.default.svc/upload", pr)
			type answer struct {
				resp *http.Response
				body string
				err  error
			}
			done := make(chan answer, 1)
			go func() {
				resp, err := c.Do(req)
				if err != nil {
					done <- answer{err: err}
					return
				}
				b, err := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				done <- answer{resp: resp, body: string(b), err: err}
			}()
			if _, err := io.WriteString(pw, "first half,"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond) // the request reaches the backend
			e.setWaypointConfig(t, false)
			if _, err := io.WriteString(pw, "second half"); err != nil {
				t.Fatal(err)
			}
			_ = pw.Close()
			a := <-done
			if a.err != nil {
				t.Fatal(a.err)
			}
			if a.resp.StatusCode != http.StatusOK || a.body != a.resp.Header.Get("X-Backend") {
				t.Fatalf("in-flight request: %d %q", a.resp.StatusCode, a.body)
			}
			if !h2c && !a.resp.Close {
				t.Fatal("in-flight HTTP/1.1 answer without Connection: close")
			}
		})
	}
}

// TestDrainKeepsPolicies: a draining service port keeps the policies in
// force when its drain started, though the update that removed it also
// took away its SERVICE-scoped policy.
func TestDrainKeepsPolicies(t *testing.T) {
	e := setup(t, func(c *Config) { c.Gateway = "default/waypoint" })
	e.store.SetDrainPeriod(time.Minute)
	if err := e.store.HandleAuthorizations(resources(t, map[string]proto.Message{"default/metrics-get-only": metricsGetOnly()})); err != nil {
		t.Fatal(err)
	}
	c := e.httpClient("10.96.0.10:80", false)
	defer c.CloseIdleConnections()
	check := func(when string) {
		t.Helper()
		if resp, body := do(t, c, http.MethodGet, "/metrics", nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: allowed GET: %d %q", when, resp.StatusCode, body)
		}
		if resp, body := do(t, c, http.MethodGet, "/other", nil); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%s: GET /other: %d %q, want 403", when, resp.StatusCode, body)
		}
	}
	check("before")
	e.setWaypointConfig(t, false)
	if err := e.store.HandleAuthorizations(resources(t, map[string]proto.Message{})); err != nil {
		t.Fatal(err)
	}
	check("during the drain")
}

// TestDrainClosesIdleAtEnd: a keep-alive connection left idle for the
// whole drain is closed when the drain ends, so its client reconnects
// rather than get 404 on it.
func TestDrainClosesIdleAtEnd(t *testing.T) {
	e := setup(t)
	e.store.SetDrainPeriod(300 * time.Millisecond)
	idle := func(vip string) (*bufio.Reader, *hbone.Conn) {
		t.Helper()
		conn, err := e.client.Dial(context.Background(), hbone.Request{
			Source: e.clientID, Destination: sa("waypoint"),
			Address: e.wpAddr, Authority: netip.MustParseAddrPort(vip),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		br := bufio.NewReader(conn)
		if _, err := io.WriteString(conn, "GET /hello HTTP/1.1\r\nHost: echo.default.svc\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return br, conn
	}
	e.mesh(t, nil) // echo:80, echo-v1:80, raw:9000
	gone, goneConn := idle("10.96.0.10:80")
	kept, keptConn := idle("10.96.0.11:80")
	e.mesh(t, func(m map[string]map[string]proto.Message) {
		wc := m[configv1alpha1.TypeWaypointConfig]["default/waypoint"].(*configv1alpha1.WaypointConfig)
		wc.Services = wc.Services[1:] // echo leaves
	})
	waitFor(t, "the drain to end", func() bool { s, _ := e.store.Draining(); return s == 0 })
	_ = goneConn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := gone.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection of the drained service: read %d, %v; want EOF", n, err)
	}
	_ = keptConn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := kept.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("idle connection of a service still served: %v, want it left open", err)
	}
}
