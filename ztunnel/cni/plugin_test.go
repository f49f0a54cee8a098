package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/ambit-mesh/ambit/ztunnel/enroll"
)

// The plugin is built once, into pluginDir, by TestMain.
var pluginDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ambit-cni-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "ambit-cni"),
		"github.com/ambit-mesh/ambit/ztunnel/cmd/ambit-cni").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building ambit-cni: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	pluginDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// selfNetns is a network namespace any user may open. It is the plugin's own
// netns too, which skel refuses unless CNI_NETNS_OVERRIDE is set; the
// netns tier (integration/cnitest) uses real pod namespaces instead.
const selfNetns = "/proc/self/ns/net"

// hooks records the enrolment server's hook calls.
type hooks struct {
	mu      sync.Mutex
	adds    []enroll.Pod
	removes []enroll.Pod
	addErr  error
}

func (h *hooks) OnAdd(_ context.Context, p enroll.Pod) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.addErr != nil {
		return h.addErr
	}
	h.adds = append(h.adds, p)
	return nil
}

func (h *hooks) OnRemove(_ context.Context, p enroll.Pod) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.removes = append(h.removes, p)
	return nil
}

// env is one test's ztunnel socket and, when started, the server on it.
type env struct {
	t      *testing.T
	sock   string
	srv    *enroll.Server
	hooks  *hooks
	logDir string
}

// newEnv prepares a socket path; start runs a server on it.
func newEnv(t *testing.T) *env {
	t.Setenv("CNI_NETNS_OVERRIDE", "1")
	dir := t.TempDir()
	return &env{t: t, sock: filepath.Join(dir, "ztunnel.sock"), hooks: &hooks{}, logDir: dir}
}

func (e *env) start() *env {
	e.t.Helper()
	srv, err := enroll.NewServer(enroll.Options{
		SocketPath: e.sock,
		StateFile:  filepath.Join(e.logDir, "pods.json"),
		Hooks:      e.hooks,
		Logger:     slog.New(slog.DiscardHandler),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	ln, err := srv.Listen()
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, ln) }()
	e.t.Cleanup(func() { cancel(); <-done })
	e.srv = srv
	return e
}

// prevResult is what a bridge plugin would have returned for the pod.
func prevResult(netns string) map[string]any {
	return map[string]any{
		"cniVersion": "1.1.0",
		"interfaces": []any{
			map[string]any{"name": "cbr0", "mac": "02:00:00:00:00:01"},
			map[string]any{"name": "veth1234", "mac": "02:00:00:00:00:02"},
			map[string]any{"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": netns},
		},
		"ips": []any{
			map[string]any{"address": "10.250.1.5/24", "gateway": "10.250.1.1", "interface": 2},
			map[string]any{"address": "fd00:250:1::5/64", "gateway": "fd00:250:1::1", "interface": 2},
		},
		"routes": []any{map[string]any{"dst": "0.0.0.0/0", "gw": "10.250.1.1"}},
		"dns":    map[string]any{"nameservers": []any{"10.96.0.10"}},
	}
}

// netconf is the plugin's config with a prevResult; mod edits it.
func (e *env) netconf(mod func(map[string]any)) []byte {
	c := map[string]any{
		"cniVersion": "1.1.0",
		"name":       "k8s-pod-network",
		"type":       "ambit-cni",
		"socketPath": e.sock,
		"timeout":    "5s",
		"logFile":    filepath.Join(e.logDir, "ambit-cni.log"),
		"logLevel":   "debug",
		"prevResult": prevResult(selfNetns),
	}
	if mod != nil {
		mod(c)
	}
	data, err := json.Marshal(c)
	if err != nil {
		e.t.Fatal(err)
	}
	return data
}

// cniArgs are the invocation arguments of pod web-0 in namespace ns.
func cniArgs(cmd, ns, uid string) *invoke.Args {
	return &invoke.Args{
		Command:       cmd,
		ContainerID:   "sandbox-" + uid,
		NetNS:         selfNetns,
		IfName:        "eth0",
		Path:          pluginDir,
		PluginArgsStr: "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=sandbox-" + uid + ";K8S_POD_UID=" + uid,
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func plugin() string { return filepath.Join(pluginDir, "ambit-cni") }

func (e *env) add(conf []byte, args *invoke.Args) (types.Result, error) {
	return invoke.ExecPluginWithResult(ctxT(e.t), plugin(), conf, args, nil)
}

func (e *env) run(conf []byte, args *invoke.Args) error {
	return invoke.ExecPluginWithoutResult(ctxT(e.t), plugin(), conf, args, nil)
}

// wantCNIError checks that err is a CNI error with this code whose message
// contains substr.
func wantCNIError(t *testing.T, err error, code uint, substr string) {
	t.Helper()
	var ce *types.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error = %v (%T), want a CNI error %d", err, err, code)
	}
	if ce.Code != code || !strings.Contains(ce.Msg, substr) {
		t.Fatalf("CNI error = %d %q, want %d containing %q", ce.Code, ce.Msg, code, substr)
	}
}

// samePrevResult checks that res is the prevResult, unchanged.
func samePrevResult(t *testing.T, res types.Result, netns string) {
	t.Helper()
	got, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	wantRaw, _ := json.Marshal(prevResult(netns))
	want, err := types100.NewResult(wantRaw)
	if err != nil {
		t.Fatal(err)
	}
	wantJSON, _ := json.Marshal(want)
	if string(got) != string(wantJSON) {
		t.Fatalf("result is not prevResult:\n got %s\nwant %s", got, wantJSON)
	}
}

func TestAddReportsPodAndPassesPrevResult(t *testing.T) {
	e := newEnv(t).start()
	res, err := e.add(e.netconf(nil), cniArgs("ADD", "shop", "uid-1"))
	if err != nil {
		t.Fatal(err)
	}
	samePrevResult(t, res, selfNetns)
	pods := e.srv.Pods()
	if len(pods) != 1 {
		t.Fatalf("ztunnel has %d pods, want 1", len(pods))
	}
	p := pods[0]
	if p.UID != "uid-1" || p.Namespace != "shop" || p.Name != "web-0" || p.NetnsPath != selfNetns ||
		p.ContainerID != "sandbox-uid-1" {
		t.Errorf("pod = %+v", p)
	}
	if fmt.Sprint(p.PodIPs) != "[10.250.1.5 fd00:250:1::5]" || fmt.Sprint(p.NodeIPs) != "[10.250.1.1 fd00:250:1::1]" {
		t.Errorf("pod IPs %v, node IPs %v", p.PodIPs, p.NodeIPs)
	}
	if len(e.hooks.adds) != 1 {
		t.Errorf("OnAdd called %d times", len(e.hooks.adds))
	}
	// A repeated ADD (runtime retry) is fine and changes nothing.
	if _, err := e.add(e.netconf(nil), cniArgs("ADD", "shop", "uid-1")); err != nil {
		t.Fatal(err)
	}
	if len(e.hooks.adds) != 1 {
		t.Errorf("repeat ADD called OnAdd again")
	}
	logData, _ := os.ReadFile(filepath.Join(e.logDir, "ambit-cni.log"))
	if !strings.Contains(string(logData), "pod reported to ztunnel") {
		t.Errorf("log file lacks the ADD: %s", logData)
	}
}

func TestAddOlderSpecVersion(t *testing.T) {
	e := newEnv(t).start()
	conf := e.netconf(func(c map[string]any) {
		c["cniVersion"] = "0.4.0"
		pr := prevResult(selfNetns)
		pr["cniVersion"] = "0.4.0"
		for _, ip := range pr["ips"].([]any) {
			ip.(map[string]any)["version"] = "4"
		}
		pr["ips"] = pr["ips"].([]any)[:1]
		c["prevResult"] = pr
	})
	res, err := e.add(conf, cniArgs("ADD", "shop", "uid-1"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Version() != "0.4.0" {
		t.Errorf("result version %s, want 0.4.0", res.Version())
	}
	if pods := e.srv.Pods(); len(pods) != 1 || fmt.Sprint(pods[0].PodIPs) != "[10.250.1.5]" {
		t.Fatalf("pods = %+v", pods)
	}
}

func TestDelRemovesPod(t *testing.T) {
	e := newEnv(t).start()
	if _, err := e.add(e.netconf(nil), cniArgs("ADD", "shop", "uid-1")); err != nil {
		t.Fatal(err)
	}
	del := cniArgs("DEL", "shop", "uid-1")
	del.NetNS = "" // runtimes may pass no netns on DEL
	if err := e.run(e.netconf(nil), del); err != nil {
		t.Fatal(err)
	}
	if pods := e.srv.Pods(); len(pods) != 0 {
		t.Fatalf("pod still enrolled after DEL: %+v", pods)
	}
	if len(e.hooks.removes) != 1 || e.hooks.removes[0].UID != "uid-1" {
		t.Fatalf("OnRemove calls = %+v", e.hooks.removes)
	}
	// DEL is idempotent: again, and for a pod never seen.
	if err := e.run(e.netconf(nil), del); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	if err := e.run(e.netconf(nil), cniArgs("DEL", "shop", "never-added")); err != nil {
		t.Fatalf("DEL of an unknown pod: %v", err)
	}
}

func TestDelIgnoresOldSandbox(t *testing.T) {
	e := newEnv(t).start()
	if _, err := e.add(e.netconf(nil), cniArgs("ADD", "shop", "uid-1")); err != nil {
		t.Fatal(err)
	}
	old := cniArgs("DEL", "shop", "uid-1")
	old.ContainerID = "an-older-sandbox"
	if err := e.run(e.netconf(nil), old); err != nil {
		t.Fatal(err)
	}
	if len(e.srv.Pods()) != 1 {
		t.Fatal("a DEL of an older sandbox removed the current one")
	}
}

func TestDelWithZtunnelDownSucceeds(t *testing.T) {
	e := newEnv(t) // no server
	if err := e.run(e.netconf(nil), cniArgs("DEL", "shop", "uid-1")); err != nil {
		t.Fatalf("DEL with ztunnel down: %v", err)
	}
}

func TestAddWithZtunnelDown(t *testing.T) {
	e := newEnv(t) // no server
	_, err := e.add(e.netconf(nil), cniArgs("ADD", "shop", "uid-1"))
	wantCNIError(t, err, types.ErrTryAgainLater, "ztunnel is unreachable at "+e.sock+", so pod shop/web-0 cannot be set up in the mesh")

	res, err := e.add(e.netconf(func(c map[string]any) { c["failOpen"] = true }), cniArgs("ADD", "shop", "uid-1"))
	if err != nil {
		t.Fatalf("ADD with failOpen: %v", err)
	}
	samePrevResult(t, res, selfNetns)
}

func TestAddExcludedNamespacePassesThrough(t *testing.T) {
	e := newEnv(t) // no server: excluded pods never need one
	res, err := e.add(e.netconf(nil), cniArgs("ADD", "kube-system", "uid-1"))
	if err != nil {
		t.Fatalf("ADD in kube-system: %v", err)
	}
	samePrevResult(t, res, selfNetns)
	// An explicit empty list excludes nothing.
	_, err = e.add(e.netconf(func(c map[string]any) { c["excludeNamespaces"] = []string{} }), cniArgs("ADD", "kube-system", "uid-1"))
	wantCNIError(t, err, types.ErrTryAgainLater, "unreachable")
	// A call that is not for a Kubernetes pod passes through.
	args := cniArgs("ADD", "x", "uid-1")
	args.PluginArgsStr = "IgnoreUnknown=1"
	if _, err := e.add(e.netconf(nil), args); err != nil {
		t.Fatalf("ADD without pod args: %v", err)
	}
}

func TestAddOnAddErrorFailsPod(t *testing.T) {
	e := newEnv(t).start()
	e.hooks.addErr = errors.New("cannot open listeners in the pod netns")
	_, err := e.add(e.netconf(nil), cniArgs("ADD", "shop", "uid-1"))
	wantCNIError(t, err, ErrZtunnelRefused, "cannot open listeners in the pod netns")
}

func TestAddMissingUIDFails(t *testing.T) {
	e := newEnv(t).start()
	args := cniArgs("ADD", "shop", "uid-1")
	args.PluginArgsStr = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0"
	_, err := e.add(e.netconf(nil), args)
	wantCNIError(t, err, types.ErrInvalidEnvironmentVariables, "K8S_POD_UID is missing")
}

func TestCheck(t *testing.T) {
	e := newEnv(t).start()
	conf := e.netconf(nil)
	if _, err := e.add(conf, cniArgs("ADD", "shop", "uid-1")); err != nil {
		t.Fatal(err)
	}
	if err := e.run(conf, cniArgs("CHECK", "shop", "uid-1")); err != nil {
		t.Fatalf("CHECK of an enrolled pod: %v", err)
	}
	err := e.run(conf, cniArgs("CHECK", "shop", "uid-2"))
	wantCNIError(t, err, ErrZtunnelRefused, "is not known to ztunnel")

	changed := e.netconf(func(c map[string]any) {
		pr := prevResult(selfNetns)
		pr["ips"] = []any{map[string]any{"address": "10.250.1.9/24", "interface": 2}}
		c["prevResult"] = pr
	})
	err = e.run(changed, cniArgs("CHECK", "shop", "uid-1"))
	wantCNIError(t, err, ErrZtunnelRefused, "pod IPs")

	down := newEnv(t)
	err = down.run(down.netconf(nil), cniArgs("CHECK", "shop", "uid-1"))
	wantCNIError(t, err, types.ErrTryAgainLater, "unreachable")
	if err := down.run(down.netconf(func(c map[string]any) { c["failOpen"] = true }), cniArgs("CHECK", "shop", "uid-1")); err != nil {
		t.Fatalf("CHECK with failOpen and ztunnel down: %v", err)
	}
}

func TestMalformedConfig(t *testing.T) {
	e := newEnv(t).start()
	args := cniArgs("ADD", "shop", "uid-1")
	for _, tc := range []struct {
		name string
		conf []byte
		code uint
		msg  string
	}{
		{"not JSON", []byte(`{"cniVersion": "1.1.0", "name": `), types.ErrDecodingFailure, ""},
		{"bad timeout", e.netconf(func(c map[string]any) { c["timeout"] = "soon" }), types.ErrInvalidNetworkConfig, `timeout "soon"`},
		{"relative socket", e.netconf(func(c map[string]any) { c["socketPath"] = "ztunnel.sock" }), types.ErrInvalidNetworkConfig, "socketPath"},
		{"bad log level", e.netconf(func(c map[string]any) { c["logLevel"] = "loud" }), types.ErrInvalidNetworkConfig, "logLevel"},
		{"wrong field type", e.netconf(func(c map[string]any) { c["failOpen"] = "yes" }), types.ErrDecodingFailure, "failOpen"},
		{"no prevResult", e.netconf(func(c map[string]any) { delete(c, "prevResult") }), types.ErrInvalidNetworkConfig, "must be chained"},
		{"prevResult without pod IP", e.netconf(func(c map[string]any) {
			pr := prevResult(selfNetns)
			delete(pr, "ips")
			c["prevResult"] = pr
		}), types.ErrInvalidNetworkConfig, "no pod IP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.add(tc.conf, args)
			wantCNIError(t, err, tc.code, tc.msg)
		})
	}
	if len(e.srv.Pods()) != 0 {
		t.Fatal("a malformed config enrolled a pod")
	}
}

func TestVersionAndStatus(t *testing.T) {
	e := newEnv(t)
	info, err := invoke.GetVersionInfo(ctxT(t), plugin(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(info.SupportedVersions(), ","); !strings.Contains(got, "1.1.0") {
		t.Fatalf("supported versions %s lack 1.1.0", got)
	}
	// STATUS does not depend on ztunnel (see Plugin.Status).
	status := &invoke.Args{Command: "STATUS", Path: pluginDir}
	if err := e.run(e.netconf(nil), status); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
}

func TestGCRemovesStaleSandboxes(t *testing.T) {
	e := newEnv(t).start()
	for _, uid := range []string{"uid-1", "uid-2"} {
		if _, err := e.add(e.netconf(nil), cniArgs("ADD", "shop", uid)); err != nil {
			t.Fatal(err)
		}
	}
	conf := e.netconf(func(c map[string]any) {
		delete(c, "prevResult")
		c["cni.dev/valid-attachments"] = []any{map[string]any{"containerID": "sandbox-uid-2", "ifname": "eth0"}}
	})
	if err := e.run(conf, &invoke.Args{Command: "GC", Path: pluginDir}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	pods := e.srv.Pods()
	if len(pods) != 1 || pods[0].UID != "uid-2" {
		t.Fatalf("pods after GC = %+v, want only uid-2", pods)
	}
}
