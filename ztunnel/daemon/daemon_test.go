package daemon

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
)

func TestNewValidates(t *testing.T) {
	conn, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ca, _ := identity.NewRootAuthority("cluster.local", time.Hour)
	for name, cfg := range map[string]Config{
		"no node":    {XDSConn: conn, Fetcher: identity.AuthorityFetcher{Authority: ca}},
		"no fetcher": {NodeName: "n", XDSConn: conn},
		"no xds":     {NodeName: "n", Fetcher: identity.AuthorityFetcher{Authority: ca}},
	} {
		dir := t.TempDir()
		cfg.Enroll = enroll.Options{SocketPath: filepath.Join(dir, "s.sock"), StateFile: filepath.Join(dir, "pods.json")}
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted the config", name)
		}
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestEndpointsWithoutController runs a daemon whose controller is
// unreachable: not ready, xds disconnected, and a dump without keys.
func TestEndpointsWithoutController(t *testing.T) {
	conn, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ca, err := identity.NewRootAuthority("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	d, err := New(Config{
		NodeName: "node-a", XDSConn: conn, XDSStateFile: filepath.Join(dir, "xds.pb"),
		XDSMinBackoff: 10 * time.Millisecond, XDSMaxBackoff: 50 * time.Millisecond,
		Fetcher:    identity.AuthorityFetcher{Authority: ca},
		Enroll:     enroll.Options{SocketPath: filepath.Join(dir, "zt.sock"), StateFile: filepath.Join(dir, "pods.json")},
		ResyncWait: 50 * time.Millisecond,
		AdminAddr:  "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", ReadyAddr: "127.0.0.1:0",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for d.HTTPAddr("ready") == nil || d.HTTPAddr("metrics") == nil || d.HTTPAddr("admin") == nil {
		if time.Now().After(deadline) {
			t.Fatal("listeners never opened")
		}
		time.Sleep(5 * time.Millisecond)
	}
	code, body := get(t, "http://"+d.HTTPAddr("ready").String()+"/healthz/ready")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "configuration not received") {
		t.Errorf("ready: %d %q", code, body)
	}
	code, body = get(t, "http://"+d.HTTPAddr("metrics").String()+"/metrics")
	if code != 200 || !strings.Contains(body, "ztunnel_xds_connected 0") || !strings.Contains(body, "ztunnel_enrolled_pods 0") {
		t.Errorf("metrics: %d\n%s", code, body)
	}
	// Not compressed even when the scraper offers gzip (a gzip writer
	// allocates about 1 MiB per scrape).
	req, _ := http.NewRequest("GET", "http://"+d.HTTPAddr("metrics").String()+"/metrics", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Errorf("metrics with Accept-Encoding gzip: %v", err)
	} else {
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if ce := resp.Header.Get("Content-Encoding"); ce != "" || !strings.Contains(string(raw), "ztunnel_enrolled_pods 0") {
			t.Errorf("metrics with Accept-Encoding gzip: Content-Encoding %q, %.200q", ce, raw)
		}
	}
	code, body = get(t, "http://"+d.HTTPAddr("admin").String()+"/config_dump")
	var dump ConfigDump
	if err := json.Unmarshal([]byte(body), &dump); code != 200 || err != nil || dump.Node != "node-a" {
		t.Errorf("config dump: %d %v %+v", code, err, dump)
	}
	// Goroutine dumps for diagnosing a stuck ztunnel, on the admin port only.
	code, body = get(t, "http://"+d.HTTPAddr("admin").String()+"/debug/pprof/goroutine?debug=2")
	if code != 200 || !strings.Contains(body, "goroutine ") || !strings.Contains(body, "daemon.(*Daemon).Run") {
		t.Errorf("admin goroutine dump: %d\n%.300s", code, body)
	}
	if code, _ = get(t, "http://"+d.HTTPAddr("metrics").String()+"/debug/pprof/goroutine"); code != http.StatusNotFound {
		t.Errorf("metrics port serves profiles: %d", code)
	}
	// The enrolment API is up: a pod can be listed (none yet).
	pods, err := enroll.NewClient(filepath.Join(dir, "zt.sock")).ListPods(t.Context())
	if err != nil || len(pods) != 0 {
		t.Errorf("ListPods = %v, %v", pods, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}
