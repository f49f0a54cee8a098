//go:build netns

package ztunneltest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/controller/xdsserver"
	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/daemon"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
)

const (
	trustDomain = "cluster.local"
	ns          = "shop"
	echoPort    = 8080
)

func spiffe(sa string) string {
	return identity.SPIFFEID{TrustDomain: trustDomain, Namespace: ns, ServiceAccount: sa}.String()
}

// twoNodeLab makes a lab with nodes node0 and node1 and a pod for each
// name of onNode0 and onNode1 on that node.
func twoNodeLab(t *testing.T, onNode0, onNode1 []string, opts ...netlab.Option) map[string]*netlab.Pod {
	t.Helper()
	lab := netlab.New(t, opts...)
	pods := map[string]*netlab.Pod{}
	for i, names := range [][]string{onNode0, onNode1} {
		n, err := lab.AddNode(fmt.Sprintf("node%d", i))
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			if pods[name], err = n.AddPod(name); err != nil {
				t.Fatal(err)
			}
		}
	}
	return pods
}

// xdsControl is an in-process controller xDS server.
type xdsControl struct {
	srv  *xdsserver.Server
	g    *grpc.Server
	addr string
}

func startXDS(t *testing.T) *xdsControl {
	t.Helper()
	s := xdsserver.New(nil)
	g := grpc.NewServer()
	s.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return &xdsControl{srv: s, g: g, addr: ln.Addr().String()}
}

// ztunnel is one in-process ztunnel daemon.
type ztunnel struct {
	d      *daemon.Daemon
	client *enroll.Client
	cancel context.CancelFunc
	done   chan struct{}
}

// ztunnelFiles are the on-disk state of one node's ztunnel, kept across restarts.
type ztunnelFiles struct {
	dir string
}

func (f ztunnelFiles) socket() string { return filepath.Join(f.dir, "ztunnel.sock") }

// startZtunnel runs a node's ztunnel; opts adjust its configuration.
func startZtunnel(t *testing.T, node string, xdsAddr string, files ztunnelFiles, ca *identity.Authority, opts ...func(*daemon.Config)) *ztunnel {
	t.Helper()
	conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cfg := daemon.Config{
		NodeName:      node,
		XDSConn:       conn,
		XDSStateFile:  filepath.Join(files.dir, "xds.pb"),
		XDSMinBackoff: 20 * time.Millisecond,
		XDSMaxBackoff: 200 * time.Millisecond,
		Fetcher:       identity.AuthorityFetcher{Authority: ca},
		Enroll:        enroll.Options{SocketPath: files.socket(), StateFile: filepath.Join(files.dir, "pods.json")},
		ResyncWait:    3 * time.Second,
		MetricsAddr:   "127.0.0.1:0",
		AdminAddr:     "127.0.0.1:0",
		ReadyAddr:     "127.0.0.1:0",
		DialTimeout:   3 * time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	d, err := daemon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	z := &ztunnel{d: d, client: enroll.NewClient(files.socket()), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(z.done)
		if err := d.Run(ctx); err != nil {
			t.Errorf("ztunnel %s: %v", node, err)
		}
	}()
	t.Cleanup(z.stop)
	return z
}

func (z *ztunnel) stop() {
	z.cancel()
	<-z.done
}

// enrol reports a lab pod to its ztunnel.
func (z *ztunnel) enrol(t *testing.T, p *netlab.Pod) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	var err error
	for ctx.Err() == nil {
		_, err = z.client.AddPod(ctx, enroll.AddPodRequest{UID: "uid-" + p.Name, Namespace: ns, Name: p.Name,
			NetnsPath: p.NetnsPath(), PodIPs: podIPs(p)})
		if !errors.Is(err, enroll.ErrUnavailable) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("enrol %s: %v", p.Name, err)
	}
}

// captured reports whether the ztunnel serves the pod's listeners.
func (z *ztunnel) captured(name string) bool {
	for _, p := range z.d.Dump(context.Background()).Pods {
		if p.Pod.Name == name {
			return p.Captured
		}
	}
	return false
}

// hasWaypoint reports whether the ztunnel's configuration still sends the
// workload or the service to a waypoint. Traffic alone cannot tell: while a
// waypoint process still runs, a ztunnel with the old configuration reaches
// the destination through it.
func (z *ztunnel) hasWaypoint(workload, service string) bool {
	snap := z.d.Store().Snapshot()
	if w := snap.Workload(workload); w != nil && w.Waypoint != nil {
		return true
	}
	s := snap.Services[service]
	return s != nil && s.Waypoint != nil
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// workload builds a Workload resource for a lab pod.
func workload(p *netlab.Pod, node string, enrolled bool) *configv1alpha1.Workload {
	return &configv1alpha1.Workload{
		Name: ns + "/" + p.Name, Uid: "uid-" + p.Name, Namespace: ns, ServiceAccount: p.Name,
		Identity: spiffe(p.Name), Node: node, Addresses: podIPs(p),
		Enrolled: enrolled, Ready: true, MtlsMode: configv1alpha1.MTLSMode_MTLS_MODE_PERMISSIVE,
		CanonicalName: p.Name, CanonicalRevision: "v1", WorkloadName: p.Name + "-deploy", TrustDomain: trustDomain,
	}
}

// noopAuthorization is a global policy that matches nothing: it keeps the
// Authorization type non-empty, so that the ztunnels see it as configured.
func noopAuthorization() []*configv1alpha1.Authorization {
	return []*configv1alpha1.Authorization{{
		Name: "ambit-system/noop", Namespace: "ambit-system",
		Scope: configv1alpha1.Authorization_SCOPE_GLOBAL, Action: configv1alpha1.Authorization_ACTION_DENY,
	}}
}

// podIPs are the pod's addresses as the kubelet reports them: IPv4, and
// IPv6 in a dual-stack lab.
func podIPs(p *netlab.Pod) []string {
	ips := []string{p.IP.String()}
	if p.IP6.IsValid() {
		ips = append(ips, p.IP6.String())
	}
	return ips
}

// metricValue sums a metric's samples whose labels include every pair in want.
func metricValue(t *testing.T, z *ztunnel, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := z.d.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	sample:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue sample
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// echoServiceVIP is the VIP of the Service shop/echo of echoServiceLab.
var echoServiceVIP = netip.MustParseAddr("10.250.255.20")

// echoServiceLab is two nodes: pods a (in the mesh) and u (not) on node0,
// b (in the mesh) on node1, and the Service shop/echo
// (echo.shop.svc.cluster.local, echoServiceVIP:80) sending to b's
// echoPort, published on an xDS server with the authorizations in authz.
// Tests change workloads or authz and publish again.
type echoServiceLab struct {
	a, u, b   *netlab.Pod
	ca        *identity.Authority
	x         *xdsControl
	workloads map[string]*configv1alpha1.Workload
	authz     []*configv1alpha1.Authorization
}

func newEchoServiceLab(t *testing.T) *echoServiceLab {
	t.Helper()
	pods := twoNodeLab(t, []string{"a", "u"}, []string{"b"})
	ca, err := identity.NewRootAuthority(trustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	l := &echoServiceLab{a: pods["a"], u: pods["u"], b: pods["b"], ca: ca, x: startXDS(t)}
	l.workloads = map[string]*configv1alpha1.Workload{
		"a": workload(l.a, "node0", true),
		"u": workload(l.u, "node0", false),
		"b": workload(l.b, "node1", true),
	}
	l.publish()
	return l
}

func (l *echoServiceLab) publish() {
	out := &translate.Output{Services: []*configv1alpha1.Service{{
		Name: ns + "/echo", Namespace: ns, Hostname: "echo.shop.svc.cluster.local", Vips: []string{echoServiceVIP.String()},
		Ports:     []*configv1alpha1.ServicePort{{Name: "tcp", Port: 80, TargetPort: echoPort}},
		Endpoints: []*configv1alpha1.Endpoint{{Workload: ns + "/b", Address: l.b.IP.String(), TargetPorts: map[uint32]uint32{80: echoPort}, Ready: true}},
	}}}
	for _, n := range []string{"a", "u", "b"} {
		out.Workloads = append(out.Workloads, l.workloads[n])
	}
	out.Authorizations = append(noopAuthorization(), l.authz...)
	l.x.srv.Publish(out)
}
