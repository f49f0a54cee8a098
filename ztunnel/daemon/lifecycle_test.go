package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/cniinstall"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
)

// The decision against a real kube-apiserver is tested in
// integration/cniinstalltest (envtest); this covers what a real apiserver
// cannot be made to do: fail with 5xx, or not answer at all.
func TestDaemonSetCheckUnanswered(t *testing.T) {
	var calls atomic.Int32
	var failFirst atomic.Int32
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("secret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.Header.Get("Authorization") != "Bearer secret-token" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if failFirst.Add(-1) >= 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		switch r.URL.Path {
		case "/apis/apps/v1/namespaces/ambit-system/daemonsets/ztunnel":
			_, _ = w.Write([]byte(`{"metadata":{"name":"ztunnel"}}`))
		default:
			w.WriteHeader(http.StatusForbidden) // no permission on namespaces: ignored
		}
	}))
	defer srv.Close()
	c := &DaemonSetCheck{Namespace: "ambit-system", Name: "ztunnel", Server: srv.URL, TokenFile: tok, RetryDelay: time.Millisecond}

	failFirst.Store(2)
	if u, why := c.Uninstalling(t.Context()); u {
		t.Fatalf("two 503s then the DaemonSet: uninstall (%s)", why)
	}
	failFirst.Store(100)
	if u, why := c.Uninstalling(t.Context()); !u || !strings.Contains(why, "503") {
		t.Fatalf("always 503: uninstall %v (%s)", u, why)
	}
	failFirst.Store(0)
	c.TokenFile = filepath.Join(t.TempDir(), "missing")
	if u, why := c.Uninstalling(t.Context()); !u || !strings.Contains(why, "token") {
		t.Fatalf("no token: uninstall %v (%s)", u, why)
	}
	c.TokenFile = tok
	srv.Close()
	calls.Store(0)
	if u, why := c.Uninstalling(t.Context()); !u || !strings.Contains(why, "cannot read") {
		t.Fatalf("unreachable: uninstall %v (%s)", u, why)
	}
}

func TestInClusterDaemonSetCheckErrors(t *testing.T) {
	for _, ref := range []string{"", "ztunnel", "/ztunnel", "ambit-system/", "a/b/c"} {
		if _, err := InClusterDaemonSetCheck(ref); err == nil || !strings.Contains(err.Error(), "<namespace>/<name>") {
			t.Errorf("%q: err = %v", ref, err)
		}
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := InClusterDaemonSetCheck("ambit-system/ztunnel"); err == nil || !strings.Contains(err.Error(), "KUBERNETES_SERVICE_HOST") {
		t.Errorf("outside a pod: err = %v", err)
	}
}

const testConflist = `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}]}`

type lifecycleEnv struct {
	dir, confDir, binDir string
	cni                  *cniinstall.Installer
	d                    *Daemon
}

func newLifecycle(t *testing.T, uninstall bool) *lifecycleEnv {
	t.Helper()
	e := &lifecycleEnv{dir: t.TempDir()}
	e.confDir, e.binDir = filepath.Join(e.dir, "net.d"), filepath.Join(e.dir, "bin")
	plugin := filepath.Join(e.dir, "ambit-cni-src")
	for _, d := range []string{e.confDir, e.binDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(plugin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var err error
	e.cni, err = cniinstall.New(cniinstall.Options{BinDir: e.binDir, ConfDir: e.confDir, PluginBinary: plugin,
		Plugin: cniinstall.PluginConfig{SocketPath: filepath.Join(e.dir, "zt.sock")}, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ca, err := identity.NewRootAuthority("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e.d, err = New(Config{
		NodeName: "node-a", XDSConn: conn, XDSStateFile: filepath.Join(e.dir, "xds.pb"),
		Fetcher:    identity.AuthorityFetcher{Authority: ca},
		Enroll:     enroll.Options{SocketPath: filepath.Join(e.dir, "zt.sock"), StateFile: filepath.Join(e.dir, "pods.json")},
		ResyncWait: 50 * time.Millisecond,
		ReadyAddr:  "127.0.0.1:0",
		CNI:        e.cni,
		Shutdown: ShutdownFunc(func(context.Context) (bool, string) {
			return uninstall, "decided by the test"
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestShutdownUninstallOrRestart: readiness waits for the CNI chain; at stop,
// a restart keeps the chain and the state files, an uninstall removes them.
func TestShutdownUninstallOrRestart(t *testing.T) {
	for _, uninstall := range []bool{false, true} {
		name := map[bool]string{false: "restart", true: "uninstall"}[uninstall]
		t.Run(name, func(t *testing.T) {
			e := newLifecycle(t, uninstall)
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- e.d.Run(ctx) }()
			waitFor(t, "ready listener", func() bool { return e.d.HTTPAddr("ready") != nil })
			readyURL := "http://" + e.d.HTTPAddr("ready").String() + "/healthz/ready"

			// No CNI configuration on the node yet: not ready, and why (once
			// the installer has made its first attempt; before it, readiness
			// says the plugin is not installed yet).
			var code int
			var body string
			waitFor(t, "readiness naming the missing CNI configuration", func() bool {
				code, body = get(t, readyURL)
				if code != http.StatusServiceUnavailable || !strings.Contains(body, "CNI plugin not chained") {
					t.Fatalf("ready without CNI config: %d %q", code, body)
				}
				return strings.Contains(body, "no CNI configuration")
			})
			list := filepath.Join(e.confDir, "10-k8s.conflist")
			if err := os.WriteFile(list, []byte(testConflist), 0o644); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "CNI chained", func() bool { return e.cni.Ready() == nil })
			// The CNI condition is met; the next one (no controller here) is reported.
			code, body = get(t, readyURL)
			if code != http.StatusServiceUnavailable || strings.Contains(body, "CNI") || !strings.Contains(body, "configuration not received") {
				t.Fatalf("ready with CNI chained: %d %q", code, body)
			}
			waitFor(t, "pods.json written", func() bool {
				_, err := enroll.NewClient(filepath.Join(e.dir, "zt.sock")).ListPods(t.Context())
				return err == nil
			})
			// State files as a running ztunnel leaves them.
			for _, f := range []string{"xds.pb", "pods.json"} {
				if err := os.WriteFile(filepath.Join(e.dir, f), []byte(`{"version":1,"pods":[]}`), 0o600); err != nil {
					t.Fatal(err)
				}
			}

			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return")
			}
			b, err := os.ReadFile(list)
			if err != nil {
				t.Fatal(err)
			}
			chained := strings.Contains(string(b), cniinstall.PluginType)
			_, binErr := os.Stat(filepath.Join(e.binDir, cniinstall.PluginType))
			for _, f := range []string{"xds.pb", "pods.json"} {
				_, err := os.Stat(filepath.Join(e.dir, f))
				if uninstall != errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s: state file %s: %v", name, f, err)
				}
			}
			if uninstall {
				var l struct{ Plugins []json.RawMessage }
				if chained || binErr == nil || json.Unmarshal(b, &l) != nil || len(l.Plugins) != 1 {
					t.Fatalf("after uninstall: chained %v, binary %v, conflist %s", chained, binErr, b)
				}
			} else if !chained || binErr != nil {
				t.Fatalf("after restart: chained %v, binary %v", chained, binErr)
			}
		})
	}
}

// TestUninstallUnchainsWhileStuck: at uninstall the CNI plugin leaves the
// node's chain before the stop waits for anything that holds the daemon's
// lock, so that a stop that hangs (and ends with the kubelet's SIGKILL)
// never leaves new pods failing on a plugin whose ztunnel is gone.
func TestUninstallUnchainsWhileStuck(t *testing.T) {
	e := newLifecycle(t, true)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- e.d.Run(ctx) }()
	waitFor(t, "ready listener", func() bool { return e.d.HTTPAddr("ready") != nil })
	list := filepath.Join(e.confDir, "10-k8s.conflist")
	if err := os.WriteFile(list, []byte(testConflist), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "CNI chained", func() bool { return e.cni.Ready() == nil })
	waitFor(t, "first resync", func() bool {
		select {
		case <-e.d.resynced:
			return true
		default:
			return false
		}
	})
	// Something holds the daemon's lock and does not let go (as a pod
	// whose connections never end once did); the configuration loop
	// blocks on it at its next pass.
	e.d.mu.Lock()
	e.d.store.HandleWorkloads(nil)
	time.Sleep(50 * time.Millisecond)
	cancel()
	waitFor(t, "CNI plugin unchained while the stop is stuck", func() bool {
		b, err := os.ReadFile(list)
		return err == nil && !strings.Contains(string(b), cniinstall.PluginType)
	})
	select {
	case err := <-done:
		t.Fatalf("Run returned while the lock was held: %v", err)
	default:
	}
	e.d.mu.Unlock()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
}
