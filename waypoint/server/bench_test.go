package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/waypoint/telemetry"
	"github.com/ambit-mesh/ambit/waypoint/tracing"
)

// BenchmarkRequestOverHBONE measures one GET through the waypoint on
// loopback: client -> HBONE -> waypoint (routing, forwarding) -> HBONE ->
// backend, over kept-alive tunnels, in HTTP/1.1 or (-h2c) HTTP/2 without
// TLS inside the tunnels, as gRPC. "engine" has no observability;
// "observed" adds an ALLOW policy, metrics, the access log (to a discarded
// JSON handler) and spans (created and propagated, not exported), as the
// binary runs.
func BenchmarkRequestOverHBONE(b *testing.B) {
	for _, v := range []struct {
		observed, h2c bool
	}{{false, false}, {true, false}, {false, true}, {true, true}} {
		observed := v.observed
		name := map[bool]string{false: "engine", true: "observed"}[observed]
		if v.h2c {
			name += "-h2c"
		}
		b.Run(name, func(b *testing.B) {
			var opts []func(*Config)
			if observed {
				tr, err := tracing.New(context.Background(), tracing.Config{})
				if err != nil {
					b.Fatal(err)
				}
				opts = append(opts, func(c *Config) {
					tel := telemetry.New(c.Store, nil)
					tel.SetAccessWriter(io.Discard, "component", "access") // as the binary
					c.Tracer, c.OnResult, c.Gateway = tr, tel.Observe, "default/waypoint"
				})
			}
			e := setup(b, opts...)
			if observed {
				if err := e.store.HandleAuthorizations(resources(b, map[string]proto.Message{"default/metrics-get-only": metricsGetOnly()})); err != nil {
					b.Fatal(err)
				}
			}
			c := e.httpClient("10.96.0.10:80", v.h2c)
			defer c.CloseIdleConnections()
			req, _ := http.NewRequest(http.MethodGet, "http://echo.default.svc/metrics", nil)
			req.Header.Set("X-Canary", "yes")
			b.ReportAllocs()
			for b.Loop() {
				resp, err := c.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
}

// BenchmarkPacedRequests sends b.N requests through the observed waypoint
// at 1,000 requests/s over 8 kept-alive client connections, as make
// bench's load does, and reports the process's CPU time per request
// (client, waypoint and backend together: at a paced rate the goroutine
// wake-ups and syscalls per request dominate, which
// BenchmarkRequestOverHBONE's back-to-back loop hides), the median latency
// and the waypoint's upstream dials after warm-up (which must stay at the
// pool's size, not grow with requests). "get" sends GETs with an empty
// body; "post1k" sends make bench's request, a POST of 1 KiB that the
// backend echoes. Run it with -benchtime 2000x or more.
func BenchmarkPacedRequests(b *testing.B) {
	b.Run("get", func(b *testing.B) { pacedRequests(b, http.MethodGet, "/metrics", 0) })
	b.Run("post1k", func(b *testing.B) { pacedRequests(b, http.MethodPost, "/echo", 1024) })
}

// echoPost allows the client's POSTs to /echo.
func echoPost() *configv1alpha1.Authorization {
	return &configv1alpha1.Authorization{
		Name: "default/echo-post", Namespace: "default",
		Scope: configv1alpha1.Authorization_SCOPE_SERVICE, Action: configv1alpha1.Authorization_ACTION_ALLOW,
		Targets: []string{"default/echo"},
		Rules: []*configv1alpha1.AuthorizationRule{{
			From: []*configv1alpha1.AuthorizationRule_Source{{Principals: []string{sa("client").String()}}},
			To:   []*configv1alpha1.AuthorizationRule_Operation{{Methods: []string{"POST"}, Paths: []string{"/echo"}}},
		}},
	}
}

func pacedRequests(b *testing.B, method, path string, size int) {
	const conns, rate = 8, 1000
	var dials atomic.Int64
	tr, err := tracing.New(context.Background(), tracing.Config{})
	if err != nil {
		b.Fatal(err)
	}
	e := setup(b, func(c *Config) {
		tel := telemetry.New(c.Store, nil)
		tel.SetAccessWriter(io.Discard, "component", "access") // as the binary
		c.Tracer, c.OnResult, c.Gateway = tr, tel.Observe, "default/waypoint"
		dial := c.DialContext
		if dial == nil {
			dial = (&net.Dialer{}).DialContext
		}
		c.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return dial(ctx, network, addr)
		}
	})
	if err := e.store.HandleAuthorizations(resources(b, map[string]proto.Message{
		"default/metrics-get-only": metricsGetOnly(), "default/echo-post": echoPost(),
	})); err != nil {
		b.Fatal(err)
	}
	c := e.httpClient("10.96.0.10:80", false)
	defer c.CloseIdleConnections()
	payload := bytes.Repeat([]byte("x"), size)
	do := func() error {
		var body io.Reader
		if size > 0 {
			body = bytes.NewReader(payload)
		}
		req, _ := http.NewRequest(method, "http://echo.default.svc"+path, body)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		if size > 0 && n != int64(size) {
			return fmt.Errorf("echoed %d bytes, want %d", n, size)
		}
		return nil
	}
	for range conns * 2 { // warm the pools
		if err := do(); err != nil {
			b.Fatal(err)
		}
	}
	dials0 := dials.Load()
	if dials0 == 0 {
		b.Fatal("the waypoint dialled no endpoint: the counting dialer is not in use")
	}
	cpu0 := cpuTime(b)
	b.ResetTimer()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	per := (b.N + conns - 1) / conns
	start := time.Now()
	lat := make([][]time.Duration, conns)
	for i := range conns {
		wg.Go(func() {
			for n := range per {
				due := start.Add(time.Duration(n*conns+i) * time.Second / rate)
				time.Sleep(time.Until(due))
				t0 := time.Now()
				if err := do(); err != nil {
					errs <- err
					return
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(time.Microsecond)/float64(per*conns), "cpu-µs/req")
	b.ReportMetric(float64(dials.Load()-dials0), "upstream-dials")
	all := slices.Concat(lat...)
	slices.Sort(all)
	b.ReportMetric(float64(all[len(all)/2])/float64(time.Microsecond), "p50-µs")
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
