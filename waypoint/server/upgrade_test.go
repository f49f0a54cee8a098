package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
)

// serveUpgrade is the backends' answer to "Upgrade: echo-test": on
// /refuse a 426, else a 101 and then every byte back until the client
// half-closes.
func serveUpgrade(w http.ResponseWriter, r *http.Request, name string) {
	if !strings.Contains(strings.ToLower(r.Header.Get("Connection")), "upgrade") {
		http.Error(w, "an Upgrade without Connection: Upgrade", http.StatusBadRequest)
		return
	}
	if strings.HasSuffix(r.URL.Path, "/refuse") {
		w.Header().Set("X-Backend", name)
		http.Error(w, "not here", http.StatusUpgradeRequired)
		return
	}
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer c.Close()
	_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo-test\r\nX-Backend: " + name + "\r\n\r\n")
	_ = brw.Flush()
	_, _ = io.Copy(c, brw.Reader)
}

// TestUpgrade checks an HTTP/1.1 upgrade through the waypoint (what a
// WebSocket does): the request is routed as any other and reaches the
// endpoint with its Connection and Upgrade headers; the 101 comes back;
// the bytes then flow both ways, 1 MiB whole, past the route's 1 s
// timeout; a half-close from the client ends the session after the
// endpoint's last bytes; the request is reported with 101 and its bytes.
// An upgrade the endpoint refuses is an ordinary answer.
func TestUpgrade(t *testing.T) {
	results := make(chan *proxy.Result, 8)
	e := setup(t, func(c *Config) { c.OnResult = func(_ *http.Request, r *proxy.Result) { results <- r } })
	// A route under /ws with timeouts far shorter than the session.
	cfg := waypointConfig()
	cfg.Services[0].Rules = append([]*configv1alpha1.RouteRule{{
		Route:                 "default/ws",
		Match:                 &configv1alpha1.RouteMatch{Path: &configv1alpha1.StringMatch{Type: configv1alpha1.StringMatch_TYPE_PREFIX, Value: "/ws"}},
		Backends:              []*configv1alpha1.WeightedBackend{{Service: "default/echo-v1", Port: 80, Weight: 1}},
		RequestTimeout:        durationpb.New(time.Second),
		BackendRequestTimeout: durationpb.New(500 * time.Millisecond),
	}}, cfg.Services[0].Rules...)
	if err := e.store.HandleWaypointConfig(resources(t, map[string]proto.Message{"default/waypoint": cfg})); err != nil {
		t.Fatal(err)
	}
	tunnel := func() (*bufio.Reader, *hbone.Conn) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		c, err := e.client.Dial(ctx, hbone.Request{Source: e.clientID, Destination: sa("waypoint"),
			Address: e.wpAddr, Authority: netip.MustParseAddrPort("10.96.0.10:80")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		return bufio.NewReader(c), c
	}
	request := func(path string) *http.Request {
		req, _ := http.NewRequest(http.MethodGet, "http://echo.default.svc"+path, nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "echo-test")
		return req
	}

	t.Run("switched", func(t *testing.T) {
		br, c := tunnel()
		req := request("/ws/upgrade")
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "echo-test" ||
			!strings.EqualFold(resp.Header.Get("Connection"), "upgrade") {
			t.Fatalf("answer %d %v, want 101 with Connection: Upgrade and Upgrade: echo-test", resp.StatusCode, resp.Header)
		}
		if backend := resp.Header.Get("X-Backend"); backend != "v1" {
			t.Fatalf("X-Backend %q, want v1 (the /ws route's)", backend)
		}
		time.Sleep(1200 * time.Millisecond) // past the route's timeout (below)
		payload := make([]byte, 1<<20)
		_, _ = rand.Read(payload)
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(payload)
			if err == nil {
				err = c.CloseWrite()
			}
			werr <- err
		}()
		got, err := io.ReadAll(br)
		if err != nil {
			t.Fatalf("read the echo: %v (after %d bytes)", err, len(got))
		}
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("echo: %d bytes back, differing from the %d sent", len(got), len(payload))
		}
		select {
		case r := <-results:
			if r.Code != http.StatusSwitchingProtocols || r.Route != "default/ws" || r.BytesReceived < int64(len(payload)) || r.BytesSent < int64(len(payload)) || len(r.Flags) != 0 {
				t.Errorf("result %+v, want 101 with the session's bytes", r)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the session was not reported")
		}
	})

	t.Run("refused", func(t *testing.T) {
		br, c := tunnel()
		req := request("/ws/refuse")
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUpgradeRequired || resp.Header.Get("Upgrade") != "" || !strings.Contains(string(body), "not here") {
			t.Fatalf("answer %d %v %q, want the endpoint's 426 without Upgrade", resp.StatusCode, resp.Header, body)
		}
		if r := <-results; r.Code != http.StatusUpgradeRequired {
			t.Errorf("result code %d, want 426", r.Code)
		}
	})
}
