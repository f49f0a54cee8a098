package proxy

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

func TestAuthorizeHook(t *testing.T) {
	up := newBackend(t, nil)
	tb := compile(t, &configv1alpha1.RouteRule{Route: "r", Backends: []*configv1alpha1.WeightedBackend{be("ns/v1", 1)}})
	var seenPath string
	h := newHarness(t, tb, resolver{key("ns/v1"): {up.addr()}}, func(p *Proxy) {
		p.Authorize = func(r *http.Request, service string, port uint32) AuthzDecision {
			seenPath = r.URL.Path
			if service != "ns/svc" || port != 80 {
				t.Errorf("authorize %s:%d", service, port)
			}
			switch {
			case strings.HasPrefix(r.URL.Path, "/admin"):
				return AuthzDecision{Policy: "ns/no-admin"}
			case r.URL.Path == "/anon":
				return AuthzDecision{}
			}
			return AuthzDecision{Allow: true, Policy: "ns/ok"}
		}
	})
	resp, body := h.do("GET", "/admin/x", nil, nil)
	if resp.StatusCode != 403 || body != "RBAC: access denied by ns/no-admin\n" || up.count() != 0 {
		t.Fatalf("denied: %d %q, upstream saw %d", resp.StatusCode, body, up.count())
	}
	res := nthResult(h, 1)
	if res.FlagString() != FlagDenied || res.Code != 403 || !res.Authz.Evaluated || res.Authz.Allow || res.Authz.Policy != "ns/no-admin" || res.Route != "" {
		t.Fatalf("result %+v", res)
	}
	if resp, body := h.do("GET", "/anon", nil, nil); resp.StatusCode != 403 || body != "RBAC: access denied\n" {
		t.Fatalf("denied without policy: %d %q", resp.StatusCode, body)
	}
	if resp, _ := h.do("GET", "/fine", nil, nil); resp.StatusCode != 200 || up.count() != 1 {
		t.Fatalf("allowed: %d", resp.StatusCode)
	}
	if res := nthResult(h, 3); !res.Authz.Allow || res.Authz.Policy != "ns/ok" || res.FlagString() != "-" {
		t.Fatalf("allowed result %+v", res)
	}

	// Dot segments are resolved before the policy sees the path, and the
	// endpoint gets the same path. The raw request line keeps them (a Go
	// client would clean them).
	c, err := net.Dial("tcp", h.server.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET /public/../admin/x HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
	raw, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(raw), "HTTP/1.1 403") || seenPath != "/admin/x" {
		t.Fatalf("dot segments: policy saw %q, answer %q", seenPath, raw)
	}
}

// nthResult waits for the n-th Result (from 1): OnResult runs just after
// the answer is written.
func nthResult(h *harness, n int) *Result {
	h.t.Helper()
	for range 400 {
		h.mu.Lock()
		var r *Result
		if len(h.results) >= n {
			r = h.results[n-1]
		}
		h.mu.Unlock()
		if r != nil {
			return r
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.t.Fatalf("no result %d", n)
	return nil
}

func TestRemoveDotSegments(t *testing.T) {
	for in, want := range map[string]string{
		"/a/b/../c":     "/a/c",
		"/a/./b":        "/a/b",
		"/..":           "/",
		"/../../x":      "/x",
		"/a/..":         "/",
		"/a/b/.":        "/a/b/",
		"/a/b/..":       "/a/",
		"/a/./b/":       "/a/b/",
		"//a/../b":      "//b",
		"/a/%2e%2e/b/c": "/a/%2e%2e/b/c", // not decoded here: Path is already decoded
	} {
		if !hasDotSegment(in) {
			if in != want {
				t.Errorf("%q has no dot segment, want %q", in, want)
			}
			continue
		}
		if got := removeDotSegments(in); got != want {
			t.Errorf("removeDotSegments(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestGRPCStatusInResult(t *testing.T) {
	up := newBackend(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		w.WriteHeader(200)
		_, _ = w.Write([]byte{0, 0, 0, 0, 0})
		w.Header().Set("Grpc-Status", "5")
	})
	tb := compile(t, &configv1alpha1.RouteRule{Route: "r", Backends: []*configv1alpha1.WeightedBackend{be("ns/v1", 1)}})
	h := newHarness(t, tb, resolver{key("ns/v1"): {up.addr()}})
	req, _ := http.NewRequest("POST", h.server.URL+"/pkg.Svc/Get", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	resp, err := h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.Trailer.Get("Grpc-Status") != "5" {
		t.Fatalf("client trailer %v", resp.Trailer)
	}
	if res := h.lastResult(); res.GRPCStatus != "5" {
		t.Fatalf("result grpc status %q", res.GRPCStatus)
	}
}
