//go:build netns

package cnitest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/ztunnel/cni"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
)

// buildPlugin builds ambit-cni into a temporary folder and returns it.
func buildPlugin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "ambit-cni"),
		"github.com/ambit-mesh/ambit/ztunnel/cmd/ambit-cni").CombinedOutput()
	tier.Require(t, "go toolchain to build ambit-cni", err)
	if err != nil {
		t.Fatalf("%s", out)
	}
	return dir
}

// netnsHooks checks, as ztunnel will, that each pod's netns path leads into
// the namespace that holds the pod's IP.
type netnsHooks struct {
	mu      sync.Mutex
	seen    []enroll.Pod
	removed []enroll.Pod
}

func (h *netnsHooks) OnAdd(_ context.Context, p enroll.Pod) error {
	if err := podHasIP(p.NetnsPath, p.PodIPs[0]); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen = append(h.seen, p)
	return nil
}

func (h *netnsHooks) OnRemove(_ context.Context, p enroll.Pod) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.removed = append(h.removed, p)
	return nil
}

func (h *netnsHooks) adds() []enroll.Pod {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]enroll.Pod(nil), h.seen...)
}

// podHasIP opens the namespace at path and looks for ip on its interfaces.
func podHasIP(path string, ip netip.Addr) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			return nil
		}
	}
	return fmt.Errorf("netns %s has no address %s", path, ip)
}

// server runs an enrolment server in dir until the test ends or stop is called.
func server(t *testing.T, dir string, hooks enroll.Hooks) (*enroll.Server, func()) {
	t.Helper()
	srv, err := enroll.NewServer(enroll.Options{
		SocketPath: filepath.Join(dir, "ztunnel.sock"),
		StateFile:  filepath.Join(dir, "pods.json"),
		Hooks:      hooks,
		Logger:     slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, ln) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return srv, stop
}

// netconf is ambit-cni's config after a bridge plugin that gave pod its
// address.
func netconf(t *testing.T, sock string, pod *netlab.Pod, netnsPath string) []byte {
	t.Helper()
	gw := pod.Node.PodCIDR.Addr().Next()
	c := map[string]any{
		"cniVersion": "1.1.0",
		"name":       "ambit-lab",
		"type":       "ambit-cni",
		"socketPath": sock,
		"timeout":    "10s",
		"prevResult": map[string]any{
			"cniVersion": "1.1.0",
			"interfaces": []any{
				map[string]any{"name": "cbr0"},
				map[string]any{"name": "eth0", "sandbox": netnsPath},
			},
			"ips": []any{map[string]any{
				"address": netip.PrefixFrom(pod.IP, 24).String(), "gateway": gw.String(), "interface": 1,
			}},
			"routes": []any{map[string]any{"dst": "0.0.0.0/0", "gw": gw.String()}},
		},
	}
	data, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func args(cmd, pluginDir, netnsPath, uid, name string) *invoke.Args {
	return &invoke.Args{
		Command: cmd, ContainerID: "sandbox-" + uid, NetNS: netnsPath, IfName: "eth0", Path: pluginDir,
		PluginArgsStr: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=" + name + ";K8S_POD_UID=" + uid,
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestAddDelWithRealPodNetns(t *testing.T) {
	lab := netlab.New(t)
	plugins := buildPlugin(t)
	node, err := lab.AddNode("n0")
	if err != nil {
		t.Fatal(err)
	}
	pod, err := node.AddPod("web")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	hooks := &netnsHooks{}
	srv, _ := server(t, dir, hooks)
	sock := srv.SocketPath()
	bin := filepath.Join(plugins, "ambit-cni")

	conf := netconf(t, sock, pod, pod.NetnsPath())
	res, err := invoke.ExecPluginWithResult(ctxT(t), bin, conf, args("ADD", plugins, pod.NetnsPath(), "uid-web", "web"), nil)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	out, _ := json.Marshal(res)
	if !strings.Contains(string(out), pod.IP.String()) {
		t.Errorf("result %s lost the pod IP", out)
	}
	got := hooks.adds()
	if len(got) != 1 || got[0].NetnsPath != pod.NetnsPath() || got[0].PodIPs[0] != pod.IP ||
		got[0].NodeIPs[0] != node.PodCIDR.Addr().Next() {
		t.Fatalf("OnAdd saw %+v", got)
	}
	if err := invoke.ExecPluginWithoutResult(ctxT(t), bin, conf, args("CHECK", plugins, pod.NetnsPath(), "uid-web", "web"), nil); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := invoke.ExecPluginWithoutResult(ctxT(t), bin, conf, args("DEL", plugins, pod.NetnsPath(), "uid-web", "web"), nil); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if len(srv.Pods()) != 0 {
		t.Fatalf("pods after DEL: %+v", srv.Pods())
	}
}

func TestAddRejectsPathsThatAreNotNetns(t *testing.T) {
	lab := netlab.New(t)
	plugins := buildPlugin(t)
	node, err := lab.AddNode("n0")
	if err != nil {
		t.Fatal(err)
	}
	pod, err := node.AddPod("web")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, _ := server(t, dir, &netnsHooks{})
	bin := filepath.Join(plugins, "ambit-cni")
	regular := filepath.Join(dir, "not-a-netns")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{regular, "is not a namespace file"},
		{"/var/run/netns/ambit-no-such-netns", "does not exist"},
	} {
		conf := netconf(t, srv.SocketPath(), pod, tc.path)
		_, err := invoke.ExecPluginWithResult(ctxT(t), bin, conf, args("ADD", plugins, tc.path, "uid-web", "web"), nil)
		var ce *types.Error
		if !errors.As(err, &ce) || ce.Code != cni.ErrZtunnelRefused || !strings.Contains(ce.Msg, tc.want) {
			t.Errorf("ADD with netns %s: %v, want CNI error %d containing %q", tc.path, err, cni.ErrZtunnelRefused, tc.want)
		}
	}
	if len(srv.Pods()) != 0 {
		t.Fatalf("pods enrolled with bad netns paths: %+v", srv.Pods())
	}
}

func TestResyncAfterRestartDropsDeletedNetns(t *testing.T) {
	lab := netlab.New(t)
	node, err := lab.AddNode("n0")
	if err != nil {
		t.Fatal(err)
	}
	stays, err := node.AddPod("stays")
	if err != nil {
		t.Fatal(err)
	}
	// A pod whose netns is deleted while ztunnel is down: a process in a
	// namespace of its own.
	proc := exec.Command("unshare", "--net", "sleep", "300")
	if err := proc.Start(); err != nil {
		tier.Require(t, "unshare(1)", err)
	}
	t.Cleanup(func() { _ = proc.Process.Kill(); _ = proc.Wait() })
	gonePath := fmt.Sprintf("/proc/%d/ns/net", proc.Process.Pid)
	waitForOwnNetns(t, gonePath)

	dir := t.TempDir()
	srv, stop := server(t, dir, enroll.HookFuncs{})
	client := enroll.NewClient(srv.SocketPath())
	for _, req := range []enroll.AddPodRequest{
		{UID: "uid-0", Namespace: "shop", Name: "stays", NetnsPath: stays.NetnsPath(), PodIPs: []string{stays.IP.String()}},
		{UID: "uid-1", Namespace: "shop", Name: "goes", NetnsPath: gonePath, PodIPs: []string{"10.250.1.99"}},
	} {
		if _, err := client.AddPod(ctxT(t), req); err != nil {
			t.Fatal(err)
		}
	}
	stop()
	_ = proc.Process.Kill()
	_ = proc.Wait()

	hooks := &netnsHooks{}
	srv2, _ := server(t, dir, hooks)
	if err := srv2.Resync(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	got := hooks.adds()
	if len(got) != 1 || got[0].Name != "stays" {
		t.Fatalf("Resync replayed %+v, want only the pod whose netns exists", got)
	}
	if pods := srv2.Pods(); len(pods) != 1 || pods[0].Name != "stays" {
		t.Fatalf("pods after Resync: %+v", pods)
	}
}

// waitForOwnNetns waits until path is another network namespace than the
// test's (unshare has switched namespaces).
func waitForOwnNetns(t *testing.T, path string) {
	t.Helper()
	self, err := os.Stat("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if fi, err := os.Stat(path); err == nil && !os.SameFile(fi, self) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never became a namespace of its own", path)
}
