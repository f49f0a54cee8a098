package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func flagErrHelp() error { return flag.ErrHelp }

func newTestLoader(t *testing.T, logs io.Writer, args ...string) *loader {
	t.Helper()
	cfg, err := parseLoad(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return newLoader(cfg, slog.New(slog.NewTextHandler(logs, nil)))
}

func scrape(t *testing.T, l *loader) string {
	t.Helper()
	srv := httptest.NewServer(l.metricsHandler())
	defer srv.Close()
	res, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

func TestLoadRateCountsAndMetrics(t *testing.T) {
	ratings := startServe(t, "-service", "ratings")
	v1 := startServe(t, "-service", "catalog", "-version", "v1", "-call", ratings.url)
	v2 := startServe(t, "-service", "catalog", "-version", "v2")
	broken := startServe(t, "-service", "catalog", "-version", "v3", "-status", "503")
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadURL := "http://" + dead.Addr().String() + "/"
	dead.Close()

	logs := &syncBuffer{}
	l := newTestLoader(t, logs, "-qps", "100", "-duration", "2s", "-report", "500ms", "-timeout", "1s",
		"-H", "x-version: v2", v1.url+"/a", v2.url+"/b", broken.url+"/c", deadURL)
	start := time.Now()
	l.run(context.Background())
	elapsed := time.Since(start)
	if elapsed < 2*time.Second || elapsed > 5*time.Second {
		t.Errorf("ran %v for -duration 2s", elapsed)
	}
	c := l.totals()
	// Constant rate: one request at once, then one per 10ms for 2s.
	if c.requests < 120 || c.requests > 201 || c.dropped != 0 {
		t.Fatalf("%d requests (%d dropped) in 2s at 100 qps", c.requests, c.dropped)
	}
	// Round-robin over four URLs: each got a quarter, within one.
	per := c.requests / 4
	for code, want := range map[string]uint64{"200": 2 * per, "503": per, "error": per} {
		if got := c.codes[code]; got < want || got > want+2 {
			t.Errorf("code %s: %d, want about %d (all: %v)", code, got, want, c.codes)
		}
	}
	if c.versions["catalog@v1"] != c.versions["ratings@v1"] || c.versions["catalog@v1"] < per ||
		c.versions["catalog@v2"] < per || c.versions["catalog@v3"] < per {
		t.Errorf("versions %v", c.versions)
	}

	m := scrape(t, l)
	line := func(name string, labels string, v uint64) {
		t.Helper()
		want := fmt.Sprintf("%s{%s} %d\n", name, labels, v)
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	line("ambit_demo_load_requests_total", fmt.Sprintf(`code="error",url=%q`, deadURL), c.codes["error"])
	line("ambit_demo_load_requests_total", fmt.Sprintf(`code="503",url=%q`, broken.url+"/c"), c.codes["503"])
	line("ambit_demo_load_responses_total", `service="catalog",version="v2"`, c.versions["catalog@v2"])
	line("ambit_demo_load_responses_total", `service="ratings",version="v1"`, c.versions["ratings@v1"])
	if !strings.Contains(m, "ambit_demo_load_request_duration_seconds_bucket") {
		t.Error("metrics lack the duration histogram")
	}

	out := logs.String()
	if n := strings.Count(out, `msg="load summary"`); n < 2 || n > 4 {
		t.Errorf("%d summary lines in 2s at -report 500ms:\n%s", n, out)
	}
	if !strings.Contains(out, `msg="load done"`) || !strings.Contains(out, fmt.Sprintf("requests=%d ", c.requests)) {
		t.Errorf("no final summary with the total:\n%s", out)
	}
	if !strings.Contains(out, "catalog@v2=") || !strings.Contains(out, "503=") {
		t.Errorf("summaries lack codes and versions:\n%s", out)
	}
}

func TestLoadH2CAndHeaders(t *testing.T) {
	var h2, total atomic.Int64
	var sawHeader atomic.Bool
	cfg, _ := parseServe([]string{"-service", "h2"}, io.Discard)
	demo := newDemoServer(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		total.Add(1)
		if r.ProtoMajor == 2 {
			h2.Add(1)
		}
		if r.Header.Get("X-User") == "tester" {
			sawHeader.Store(true)
		}
		demo.ServeHTTP(w, r)
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	defer srv.Close()
	l := newTestLoader(t, io.Discard, "-qps", "50", "-duration", "500ms", "-h2c", "-H", "X-User: tester", "-url", srv.URL+"/x")
	l.run(context.Background())
	// About 25 requests at 50/s for 500 ms; a loaded machine sends fewer,
	// and this test is about the protocol and the header, not the rate.
	if total.Load() < 3 || h2.Load() != total.Load() || !sawHeader.Load() {
		t.Errorf("%d requests, %d over HTTP/2, header seen %v", total.Load(), h2.Load(), sawHeader.Load())
	}
	// Every answer the loader read is counted; a request still in flight
	// when -duration ends reaches the server but not the counts.
	if c, n := l.totals(), uint64(total.Load()); c.versions["h2@v1"] > n || c.versions["h2@v1"]+3 < n {
		t.Errorf("versions %v for %d requests", c.versions, n)
	}
}

func TestLoadDropsWhenSaturated(t *testing.T) {
	slow := startServe(t, "-latency", "2s")
	l := newTestLoader(t, io.Discard, "-qps", "50", "-duration", "500ms", "-concurrency", "2", "-timeout", "5s", slow.url)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	l.run(ctx)
	c := l.totals()
	if c.dropped < 15 || c.requests > 2 {
		t.Errorf("dropped %d, completed %d; want most ticks dropped and at most 2 requests", c.dropped, c.requests)
	}
}

func TestLoadFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no URL"},
		{[]string{"-qps", "0", "http://a/"}, "-qps 0"},
		{[]string{"-H", "novalue", "http://a/"}, `want "Name: value"`},
		{[]string{"ftp://a/"}, "want http://"},
		{[]string{"-url", "a:80", "http://a/"}, "want http://"},
		{[]string{"-concurrency", "0", "http://a/"}, "-concurrency 0"},
		{[]string{"-report", "0s", "http://a/"}, "must be positive"},
	} {
		if _, err := parseLoad(tc.args, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.args, err, tc.want)
		}
	}
}
