package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type running struct {
	url  string
	stop context.CancelFunc
	done chan error
}

// startServe runs `ambit-demo serve` with args on a loopback port.
func startServe(t *testing.T, args ...string) *running {
	t.Helper()
	cfg, err := parseServe(append([]string{"-listen", "127.0.0.1:0"}, args...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{url: "http://" + ln.Addr().String(), stop: cancel, done: make(chan error, 1)}
	s := newDemoServer(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go func() { r.done <- s.serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

func get(t *testing.T, c *http.Client, url string, hdr map[string]string) (*http.Response, Response) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	var r Response
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("GET %s: %d %q is not JSON: %v", url, res.StatusCode, body, err)
	}
	return res, r
}

func TestServeAnswersWhoAndWhat(t *testing.T) {
	t.Setenv("POD_NAME", "catalog-v2-abc")
	t.Setenv("POD_NAMESPACE", "ambit-demo")
	t.Setenv("SERVICE_NAME", "catalog")
	t.Setenv("SERVICE_VERSION", "v2")
	s := startServe(t)
	res, r := get(t, http.DefaultClient, s.url+"/items/42?x=1", map[string]string{"X-User": "ana"})
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/json" || res.Header.Get("X-Version") != "v2" {
		t.Errorf("status %d, headers %v", res.StatusCode, res.Header)
	}
	want := Response{Service: "catalog", Version: "v2", Pod: "catalog-v2-abc", Namespace: "ambit-demo",
		Path: "/items/42", Method: "GET", Proto: "HTTP/1.1", Status: 200}
	got := r
	got.Headers, got.Host = nil, ""
	if got.Service != want.Service || got.Version != want.Version || got.Pod != want.Pod || got.Namespace != want.Namespace ||
		got.Path != want.Path || got.Method != want.Method || got.Proto != want.Proto || got.Status != want.Status || got.Upstreams != nil {
		t.Errorf("answer %+v, want %+v", got, want)
	}
	if r.Headers["x-user"] != "ana" || !strings.HasPrefix(r.Host, "127.0.0.1:") {
		t.Errorf("headers %v host %q", r.Headers, r.Host)
	}

	// Flags win over the environment.
	s2 := startServe(t, "-service", "ratings", "-version", "v9")
	_, r = get(t, http.DefaultClient, s2.url+"/", nil)
	if r.Service != "ratings" || r.Version != "v9" || r.Pod != "catalog-v2-abc" {
		t.Errorf("with flags: %+v", r)
	}

	hres, err := http.Get(s.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(hres.Body)
	hres.Body.Close()
	if hres.StatusCode != 200 || string(b) != "ok\n" {
		t.Errorf("/healthz: %d %q", hres.StatusCode, b)
	}
}

func TestServeH2C(t *testing.T) {
	s := startServe(t)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	res, r := get(t, &http.Client{Transport: tr}, s.url+"/h2", nil)
	if res.ProtoMajor != 2 || r.Proto != "HTTP/2.0" || r.Path != "/h2" {
		t.Errorf("client saw %s, server reported %q", res.Proto, r.Proto)
	}
}

func TestServeThreeTiers(t *testing.T) {
	ratings := startServe(t, "-service", "ratings")
	catalog := startServe(t, "-service", "catalog", "-version", "v2", "-call", ratings.url+"/ratings")
	frontend := startServe(t, "-service", "frontend", "-call", catalog.url+"/catalog")
	res, r := get(t, http.DefaultClient, frontend.url+"/", map[string]string{
		"x-version": "v2", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x-secret": "no",
	})
	if res.StatusCode != 200 {
		t.Fatalf("status %d: %+v", res.StatusCode, r)
	}
	if got := strings.Join(versions(&r), " "); got != "frontend@v1 catalog@v2 ratings@v1" {
		t.Fatalf("call chain %q", got)
	}
	c := r.Upstreams[0].Response
	rt := c.Upstreams[0].Response
	if r.Upstreams[0].URL != catalog.url+"/catalog" || r.Upstreams[0].Status != 200 || c.Path != "/catalog" || rt.Path != "/ratings" {
		t.Errorf("upstreams %+v / %+v", r.Upstreams, c.Upstreams)
	}
	for _, hop := range []*Response{c, rt} {
		if hop.Headers["x-version"] != "v2" || !strings.HasPrefix(hop.Headers["traceparent"], "00-0af765") {
			t.Errorf("%s did not receive the propagated headers: %v", hop.Service, hop.Headers)
		}
		if _, leaked := hop.Headers["x-secret"]; leaked {
			t.Errorf("%s received a header that is not propagated", hop.Service)
		}
	}
}

func TestServeFailureKnobs(t *testing.T) {
	always := startServe(t, "-status", "503")
	res, r := get(t, http.DefaultClient, always.url+"/", nil)
	if res.StatusCode != 503 || r.Status != 503 || r.Service != "demo" {
		t.Errorf("-status 503: %d %+v", res.StatusCode, r)
	}
	allFail := startServe(t, "-fail-rate", "1")
	if res, _ := get(t, http.DefaultClient, allFail.url+"/", nil); res.StatusCode != 503 {
		t.Errorf("-fail-rate 1: %d", res.StatusCode)
	}
	half := startServe(t, "-fail-rate", "0.5")
	failed := 0
	for i := 0; i < 400; i++ {
		if res, _ := get(t, http.DefaultClient, half.url+"/", nil); res.StatusCode == 503 {
			failed++
		} else if res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
	}
	if failed < 140 || failed > 260 {
		t.Errorf("-fail-rate 0.5: %d of 400 failed", failed)
	}

	// A failing or missing downstream makes the caller answer 502, with the reason.
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadURL := "http://" + dead.Addr().String()
	dead.Close()
	front := startServe(t, "-service", "frontend", "-call", always.url+","+deadURL, "-call-timeout", "1s")
	res, r = get(t, http.DefaultClient, front.url+"/", nil)
	if res.StatusCode != 502 || len(r.Upstreams) != 2 || r.Upstreams[0].Status != 503 || r.Upstreams[1].Error == "" {
		t.Errorf("failing downstreams: %d %+v", res.StatusCode, r.Upstreams)
	}
	// A downstream that is not an ambit-demo service is reported, not trusted.
	other := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "hello") })}
	oln, _ := net.Listen("tcp", "127.0.0.1:0")
	go func() { _ = other.Serve(oln) }()
	defer other.Close()
	front2 := startServe(t, "-call", "http://"+oln.Addr().String())
	res, r = get(t, http.DefaultClient, front2.url+"/", nil)
	if res.StatusCode != 502 || !strings.Contains(r.Upstreams[0].Error, "not an ambit-demo response") {
		t.Errorf("foreign downstream: %d %+v", res.StatusCode, r.Upstreams)
	}
}

func TestServeGracefulShutdown(t *testing.T) {
	s := startServe(t, "-latency", "700ms", "-shutdown-grace", "5s")
	type result struct {
		status int
		err    error
	}
	resc := make(chan result, 1)
	go func() {
		res, err := http.Get(s.url + "/slow")
		if err != nil {
			resc <- result{err: err}
			return
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		resc <- result{status: res.StatusCode}
	}()
	time.Sleep(200 * time.Millisecond)
	s.stop()
	select {
	case err := <-s.done:
		t.Fatalf("serve returned %v before the in-flight request finished", err)
	case <-time.After(100 * time.Millisecond):
	}
	r := <-resc
	if r.err != nil || r.status != 200 {
		t.Fatalf("in-flight request during shutdown: %d %v", r.status, r.err)
	}
	select {
	case err := <-s.done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
		s.done <- nil // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return after draining")
	}
	if _, err := http.Get(s.url + "/"); err == nil {
		t.Error("the server still accepts connections after shutdown")
	}
}

func TestServeFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-fail-rate", "1.5"}, "want a fraction"},
		{[]string{"-status", "42"}, "want an HTTP status"},
		{[]string{"-call", "ftp://x"}, "want an http:// URL"},
		{[]string{"-call", "catalog:8080"}, "want an http:// URL"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"-service", ""}, "-service is empty"},
	} {
		if _, err := parseServe(tc.args, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.args, err, tc.want)
		}
	}
	if _, err := parseServe([]string{"-help"}, io.Discard); !errors.Is(err, flagErrHelp()) {
		t.Errorf("-help: %v", err)
	}
	var out, errb bytes.Buffer
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage: ambit-demo"},
		{[]string{"dance"}, 2, `unknown command "dance"`},
		{[]string{"serve", "-status", "1000"}, 2, "want an HTTP status"},
		{[]string{"serve", "-listen", "256.0.0.1:1"}, 1, "ambit-demo serve:"},
		{[]string{"load"}, 2, "no URL"},
		{[]string{"serve", "-help"}, 0, "usage: ambit-demo serve"},
		{[]string{"load", "-help"}, 0, "usage: ambit-demo load"},
	} {
		out.Reset()
		errb.Reset()
		if code := run(context.Background(), tc.args, &out, &errb); code != tc.code || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", tc.args, code, errb.String(), tc.code, tc.want)
		}
	}
	// get: a 200 exits 0 with the body on stdout, a 503 exits 1.
	ok := startServe(t, "-service", "got")
	out.Reset()
	errb.Reset()
	if code := run(context.Background(), []string{"get", "-H", "x-user: me", ok.url + "/p"}, &out, &errb); code != 0 ||
		!strings.Contains(out.String(), `"service":"got"`) || !strings.Contains(out.String(), `"x-user":"me"`) || !strings.Contains(errb.String(), "200 OK") {
		t.Errorf("get: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	bad := startServe(t, "-status", "503")
	if code := run(context.Background(), []string{"get", bad.url}, &out, &errb); code != 1 {
		t.Errorf("get of a 503: exit %d, want 1", code)
	}
	if code := run(context.Background(), []string{"get", "a", "b"}, &out, &errb); code != 2 {
		t.Errorf("get with two URLs: exit %d, want 2", code)
	}
	out.Reset()
	if code := run(context.Background(), []string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "ambit-demo ") {
		t.Errorf("version: %d %q", code, out.String())
	}
}
