//go:build netns

package cniinstalltest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/controller/xdsserver"
	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/cniinstall"
	"github.com/ambit-mesh/ambit/ztunnel/daemon"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

const (
	trustDomain = "cluster.local"
	podNS       = "shop"
	echoPort    = 8080
	labConflist = `{"cniVersion":"1.0.0","name":"lab","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap","capabilities":{"portMappings":true}}]}`
)

func workload(name string, ip netip.Addr, enrolled bool) *configv1alpha1.Workload {
	return &configv1alpha1.Workload{
		Name: podNS + "/" + name, Uid: "uid-" + name, Namespace: podNS, ServiceAccount: name,
		Identity: identity.SPIFFEID{TrustDomain: trustDomain, Namespace: podNS, ServiceAccount: name}.String(),
		Node:     "node0", Addresses: []string{ip.String()},
		Enrolled: enrolled, Ready: true, MtlsMode: configv1alpha1.MTLSMode_MTLS_MODE_PERMISSIVE,
		CanonicalName: name, CanonicalRevision: "v1", WorkloadName: name, TrustDomain: trustDomain,
	}
}

// files are one node's ztunnel paths, kept across ztunnel restarts.
type files struct{ dir string }

func (f files) socket() string  { return filepath.Join(f.dir, "run", "ztunnel.sock") }
func (f files) pods() string    { return filepath.Join(f.dir, "run", "pods.json") }
func (f files) xds() string     { return filepath.Join(f.dir, "run", "xds-state.pb") }
func (f files) cniLog() string  { return filepath.Join(f.dir, "run", "cni.log") }
func (f files) binDir() string  { return filepath.Join(f.dir, "opt-cni-bin") }
func (f files) confDir() string { return filepath.Join(f.dir, "etc-cni-net.d") }
func (f files) conflist() string {
	return filepath.Join(f.confDir(), "10-lab.conflist")
}

// newFiles makes a node's folders, a plugin binary to install and the
// node's CNI configuration.
func newFiles(t *testing.T) files {
	t.Helper()
	f := files{dir: t.TempDir()}
	for _, d := range []string{f.binDir(), f.confDir(), filepath.Dir(f.socket()), filepath.Join(f.dir, "src")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(f.dir, "src", "ambit-cni"), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.conflist(), []byte(labConflist), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

type ztunnel struct {
	d      *daemon.Daemon
	cancel context.CancelFunc
	done   chan struct{}
}

// startZtunnel runs an in-process ztunnel configured as the DaemonSet runs
// it (CNI install on), whose stop is an uninstall when uninstall is true.
func startZtunnel(t *testing.T, xdsAddr string, f files, ca *identity.Authority, resyncWait time.Duration, uninstall bool, discoverDir string) *ztunnel {
	t.Helper()
	conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	plugin := filepath.Join(f.dir, "src", "ambit-cni")
	cni, err := cniinstall.New(cniinstall.Options{BinDir: f.binDir(), ConfDir: f.confDir(), PluginBinary: plugin,
		Plugin:       cniinstall.PluginConfig{SocketPath: f.socket(), LogFile: f.cniLog()},
		PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	d, err := daemon.New(daemon.Config{
		NodeName:      "node0",
		XDSConn:       conn,
		XDSStateFile:  f.xds(),
		XDSMinBackoff: 20 * time.Millisecond,
		XDSMaxBackoff: 200 * time.Millisecond,
		Fetcher:       identity.AuthorityFetcher{Authority: ca},
		Enroll:        enroll.Options{SocketPath: f.socket(), StateFile: f.pods()},
		ResyncWait:    resyncWait,
		MetricsAddr:   "127.0.0.1:0",
		DialTimeout:   3 * time.Second,
		CNI:           cni,

		DiscoverNetnsDir:          discoverDir,
		DiscoverExcludeNamespaces: []string{"kube-system"},
		Shutdown: daemon.ShutdownFunc(func(context.Context) (bool, string) {
			return uninstall, "decided by the test"
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	z := &ztunnel{d: d, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(z.done)
		if err := d.Run(ctx); err != nil {
			t.Errorf("ztunnel: %v", err)
		}
	}()
	t.Cleanup(z.stop)
	return z
}

func startXDS(t *testing.T) (*xdsserver.Server, string) {
	t.Helper()
	srv := xdsserver.New(nil)
	g := grpc.NewServer()
	srv.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return srv, ln.Addr().String()
}

func (z *ztunnel) stop() {
	z.cancel()
	<-z.done
}

func (z *ztunnel) captured(name string) bool {
	for _, p := range z.d.Dump(context.Background()).Pods {
		if p.Pod.Name == name {
			return p.Captured
		}
	}
	return false
}

func (z *ztunnel) connectionsOpened(t *testing.T) float64 {
	t.Helper()
	mfs, err := z.d.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == "istio_tcp_connections_opened_total" {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func enrol(t *testing.T, socket, name, netnsPath string, ip netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	c := enroll.NewClient(socket)
	var err error
	for ctx.Err() == nil {
		_, err = c.AddPod(ctx, enroll.AddPodRequest{UID: "uid-" + name, Namespace: podNS, Name: name,
			ContainerID: "sandbox-" + name, NetnsPath: netnsPath, PodIPs: []string{ip.String()}})
		if !errors.Is(err, enroll.ErrUnavailable) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("enrol %s: %v", name, err)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func rulesInstalled(t *testing.T, p *netlab.Pod) bool {
	t.Helper()
	ns, err := redirect.OpenNetns(p.NetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	rs, err := redirect.Rules(t.Context(), ns)
	if err != nil {
		t.Fatal(err)
	}
	return rs.Installed
}

// scratchNetns creates a network namespace bound to a file of the test's
// own, as a runtime does for a pod sandbox, and returns the file and a
// function that deletes it (unmount and remove), as a runtime does when the
// sandbox goes.
func scratchNetns(t *testing.T) (string, func()) {
	t.Helper()
	return scratchNetnsAt(t, filepath.Join(t.TempDir(), "netns-gone"), netip.Addr{})
}

// scratchNetnsAt is scratchNetns at path, with a dummy interface holding
// addr (when valid).
func scratchNetnsAt(t *testing.T, path string, addr netip.Addr) (string, func()) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		// The thread is locked and never unlocked: it ends with the
		// goroutine, taking its new namespace with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		if addr.IsValid() {
			if err := addDummy(addr); err != nil {
				errc <- err
				return
			}
		}
		errc <- unix.Mount(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), path, "", unix.MS_BIND, "")
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create a namespace: %v", err)
	}
	var once sync.Once
	remove := func() {
		once.Do(func() {
			_ = unix.Unmount(path, unix.MNT_DETACH)
			_ = os.Remove(path)
		})
	}
	t.Cleanup(remove)
	return path, remove
}

// addDummy adds an interface (eth0, one end of a veth pair) holding addr/24 in the calling thread's namespace.
func addDummy(addr netip.Addr) error {
	for _, name := range []string{"lo", "eth0"} {
		if name == "eth0" {
			// A veth pair (always available, unlike the dummy module).
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "peer0"}); err != nil {
				return err
			}
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		if name == "eth0" {
			a, _ := netlink.ParseAddr(netip.PrefixFrom(addr, 24).String())
			if err := netlink.AddrAdd(l, a); err != nil {
				return err
			}
		}
	}
	return nil
}

func listPods(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Pods []enroll.Pod `json:"pods"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range st.Pods {
		out = append(out, p.Name)
	}
	slices.Sort(out)
	return out
}

func pluginTypes(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var l struct {
		Plugins []struct{ Type string } `json:"plugins"`
	}
	if err := json.Unmarshal(b, &l); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var ts []string
	for _, p := range l.Plugins {
		ts = append(ts, p.Type)
	}
	return strings.Join(ts, ",")
}

// TestRestartKeepsUninstallReleases: a ztunnel stopped as a restart leaves
// the pods captured (rules in place, traffic fails closed), the state and
// the CNI chain; the next ztunnel, stopped as an uninstall before it even
// resynced, releases every pod so that they talk directly again, and
// removes the CNI chain, the plugin binary and the state files.
func TestRestartKeepsUninstallReleases(t *testing.T) {
	tier.RequireRoot(t)
	lab := netlab.New(t)
	n0, err := lab.AddNode("node0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := n0.AddPod("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := n0.AddPod("b")
	if err != nil {
		t.Fatal(err)
	}
	b.ServeEcho(t, echoPort)
	bAddr := netip.AddrPortFrom(b.IP, echoPort)
	if err := a.Echo(bAddr, a.Hello(100)); err != nil {
		t.Fatalf("before the mesh: %v", err)
	}

	f := newFiles(t)

	ca, err := identity.NewRootAuthority(trustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, xdsAddr := startXDS(t)
	goneIP := netip.MustParseAddr("10.250.99.9")
	publish := func(goneEnrolled bool) {
		srv.Publish(&translate.Output{
			Workloads: []*configv1alpha1.Workload{workload("a", a.IP, true), workload("b", b.IP, true), workload("gone", goneIP, goneEnrolled)},
			Services:  []*configv1alpha1.Service{},
			Authorizations: []*configv1alpha1.Authorization{{
				Name: "ambit-system/noop", Namespace: "ambit-system",
				Scope: configv1alpha1.Authorization_SCOPE_GLOBAL, Action: configv1alpha1.Authorization_ACTION_DENY,
			}},
		})
	}
	publish(false)

	// First ztunnel: chains the plugin, captures a and b.
	z1 := startZtunnel(t, xdsAddr, f, ca, 3*time.Second, false, "")
	enrol(t, f.socket(), "a", a.NetnsPath(), a.IP)
	enrol(t, f.socket(), "b", b.NetnsPath(), b.IP)
	eventually(t, "a and b captured", func() bool { return z1.captured("a") && z1.captured("b") })
	eventually(t, "ztunnel ready", func() bool { return z1.d.Ready() == nil })
	if got := pluginTypes(t, f.conflist()); got != "bridge,portmap,ambit-cni" {
		t.Fatalf("conflist plugins %s", got)
	}
	before := z1.connectionsOpened(t)
	if err := a.Echo(bAddr, a.Hello(100)); err != nil {
		t.Fatalf("through the mesh: %v", err)
	}
	if z1.connectionsOpened(t) <= before {
		t.Fatal("the connection did not go through ztunnel")
	}

	t.Run("pod whose netns is gone is dropped", func(t *testing.T) {
		path, remove := scratchNetns(t)
		enrol(t, f.socket(), "gone", path, goneIP)
		remove() // the sandbox goes, and no CNI DEL reaches ztunnel
		publish(true)
		eventually(t, "the pod dropped", func() bool {
			_, known := z1.d.Enroll().Get("uid-gone")
			return !known
		})
		if got := listPods(t, f.pods()); !slices.Equal(got, []string{"a", "b"}) {
			t.Fatalf("persisted pods %v", got)
		}
		// And a missing netns at ADD is a clear error.
		_, err := enroll.NewClient(f.socket()).AddPod(t.Context(), enroll.AddPodRequest{UID: "uid-gone", Namespace: podNS, Name: "gone",
			NetnsPath: path, PodIPs: []string{goneIP.String()}})
		if err == nil || !strings.Contains(err.Error(), "does not exist") {
			t.Fatalf("AddPod with a missing netns: %v", err)
		}
	})

	z1.stop()
	t.Run("restart keeps", func(t *testing.T) {
		if !rulesInstalled(t, a) || !rulesInstalled(t, b) {
			t.Fatal("capture rules removed on a restart")
		}
		if err := a.Echo(bAddr, a.Hello(100)); err == nil {
			t.Fatal("a reached b while ztunnel is away: the capture must fail closed")
		}
		if got := listPods(t, f.pods()); !slices.Equal(got, []string{"a", "b"}) {
			t.Fatalf("persisted pods %v", got)
		}
		if _, err := os.Stat(f.xds()); err != nil {
			t.Fatalf("xDS state: %v", err)
		}
		if got := pluginTypes(t, f.conflist()); got != "bridge,portmap,ambit-cni" {
			t.Fatalf("conflist plugins %s", got)
		}
		if _, err := os.Stat(filepath.Join(f.binDir(), "ambit-cni")); err != nil {
			t.Fatalf("plugin binary: %v", err)
		}
	})

	// Second ztunnel: no controller, and the xDS state kept out of its
	// sight while it starts, so it is still waiting to resync (the pods are
	// known only from pods.json) when it is stopped as an uninstall.
	aside := f.xds() + ".aside"
	if err := os.Rename(f.xds(), aside); err != nil {
		t.Fatal(err)
	}
	z2 := startZtunnel(t, "127.0.0.1:1", f, ca, time.Minute, true, "")
	eventually(t, "enrolment API up", func() bool {
		pods, err := enroll.NewClient(f.socket()).ListPods(t.Context())
		return err == nil && len(pods) == 2
	})
	if err := os.Rename(aside, f.xds()); err != nil {
		t.Fatal(err)
	}
	if z2.captured("a") || z2.captured("b") {
		t.Fatal("resynced without configuration")
	}
	z2.stop()
	t.Run("uninstall releases", func(t *testing.T) {
		if rulesInstalled(t, a) || rulesInstalled(t, b) {
			t.Fatal("capture rules left in a pod")
		}
		if err := a.Echo(bAddr, a.Hello(100)); err != nil {
			t.Fatalf("a cannot reach b directly after the uninstall: %v", err)
		}
		// Nothing listens on ztunnel's ports in the pod any more.
		for _, port := range []uint16{15001, 15006, 15008} {
			if err := a.Echo(netip.AddrPortFrom(b.IP, port), a.Hello(100)); err == nil || !strings.Contains(err.Error(), "refused") {
				t.Fatalf("port %d in b: %v", port, err)
			}
		}
		for _, p := range []string{f.pods(), f.xds(), f.cniLog(), filepath.Join(f.binDir(), "ambit-cni")} {
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s left behind: %v", p, err)
			}
		}
		b, err := os.ReadFile(f.conflist())
		if err != nil {
			t.Fatal(err)
		}
		var got, want any
		_ = json.Unmarshal(b, &got)
		_ = json.Unmarshal([]byte(labConflist), &want)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("conflist after uninstall:\n%s\nwant\n%s", b, labConflist)
		}
		ents, _ := os.ReadDir(f.confDir())
		if len(ents) != 1 {
			t.Fatalf("conf folder holds %d files", len(ents))
		}
	})
}

// TestDiscoversPodsStartedBefore: pods that ran before ztunnel started and
// were never reported are found in the netns folder by address and
// enrolled: captured when their Workload is enrolled, known (for a later
// label change) otherwise; namespaces holding no workload of the node, and
// workloads of excluded namespaces, are left alone.
func TestDiscoversPodsStartedBefore(t *testing.T) {
	tier.RequireRoot(t)
	// A folder of the test's own, not /var/run/netns: other tests' labs
	// there may use the same addresses.
	dir := t.TempDir()
	early := netip.MustParseAddr("10.250.201.5")
	idle := netip.MustParseAddr("10.250.201.6")
	system := netip.MustParseAddr("10.250.201.7")
	stranger := netip.MustParseAddr("10.250.201.8")
	earlyPath, _ := scratchNetnsAt(t, filepath.Join(dir, "cni-early"), early)
	idlePath, _ := scratchNetnsAt(t, filepath.Join(dir, "cni-idle"), idle)
	systemPath, _ := scratchNetnsAt(t, filepath.Join(dir, "cni-system"), system)
	strangerPath, _ := scratchNetnsAt(t, filepath.Join(dir, "cni-stranger"), stranger)
	if err := os.WriteFile(filepath.Join(dir, "not-a-netns"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}

	ca, err := identity.NewRootAuthority(trustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, xdsAddr := startXDS(t)
	sys := workload("coredns", system, true)
	sys.Namespace, sys.Name, sys.Uid = "kube-system", "kube-system/coredns", "uid-coredns"
	other := workload("elsewhere", stranger, true)
	other.Node = "node1" // the address is in our folder, but the pod is not ours
	publish := func(idleEnrolled bool) {
		srv.Publish(&translate.Output{
			Workloads: []*configv1alpha1.Workload{workload("early", early, true), workload("idle", idle, idleEnrolled), sys, other},
			Services:  []*configv1alpha1.Service{},
			Authorizations: []*configv1alpha1.Authorization{{
				Name: "ambit-system/noop", Namespace: "ambit-system",
				Scope: configv1alpha1.Authorization_SCOPE_GLOBAL, Action: configv1alpha1.Authorization_ACTION_DENY,
			}},
		})
	}
	publish(false)
	f := newFiles(t)
	z := startZtunnel(t, xdsAddr, f, ca, 3*time.Second, false, dir)
	eventually(t, "early discovered and captured", func() bool { return z.captured("early") })
	eventually(t, "idle discovered", func() bool { _, ok := z.d.Enroll().Get("uid-idle"); return ok })
	p, _ := z.d.Enroll().Get("uid-early")
	if p.NetnsPath != earlyPath || len(p.PodIPs) != 1 || p.PodIPs[0] != early || p.Namespace != podNS || p.Name != "early" {
		t.Fatalf("discovered pod %+v", p)
	}
	if p, _ := z.d.Enroll().Get("uid-idle"); p.NetnsPath != idlePath || z.captured("idle") {
		t.Fatalf("idle pod %+v (captured %v)", p, z.captured("idle"))
	}
	ns, err := redirect.OpenNetns(earlyPath)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := redirect.Rules(t.Context(), ns)
	ns.Close()
	if err != nil || !rs.Installed {
		t.Fatalf("rules in the discovered pod: %v %v", rs, err)
	}
	// Labelling later captures the discovered pod without a restart.
	publish(true)
	eventually(t, "idle captured after the label change", func() bool { return z.captured("idle") })
	// A CNI DEL for a discovered pod: the namespace file and the Workload
	// linger for a while, but the pod is not discovered again.
	if r, err := enroll.NewClient(f.socket()).RemovePod(t.Context(), "uid-idle", "sandbox-idle"); err != nil || !r.Removed {
		t.Fatalf("RemovePod: %+v %v", r, err)
	}
	// Give discovery a few more passes, then check what it left alone.
	time.Sleep(6 * time.Second)
	if p, ok := z.d.Enroll().Get("uid-idle"); ok {
		t.Errorf("a removed pod was discovered again: %+v", p)
	}
	for _, uid := range []string{"uid-coredns", "uid-elsewhere"} {
		if p, ok := z.d.Enroll().Get(uid); ok {
			t.Errorf("%s discovered: %+v", uid, p)
		}
	}
	for _, p := range z.d.Enroll().Pods() {
		if p.NetnsPath == systemPath || p.NetnsPath == strangerPath {
			t.Errorf("pod enrolled with %s", p.NetnsPath)
		}
	}
	if got := listPods(t, f.pods()); !slices.Equal(got, []string{"early"}) {
		t.Fatalf("persisted pods %v", got)
	}
}
