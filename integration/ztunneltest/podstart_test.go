//go:build netns

package ztunneltest

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/daemon"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
)

// TestPodCapturedBeforeItStarts checks that a new pod of the mesh is
// captured by the time its enrolment (the CNI ADD, after which the kubelet
// starts its containers) returns, so that its first connection already
// goes through the mesh:
//
//   - the Workload of a scheduled pod arrives without addresses (the
//     controller sends it before the kubelet reports the pod's IP): the
//     pod is captured with the address from its enrolment;
//   - the Workload arrives while the enrolment waits: the enrolment
//     returns only then, with the pod captured;
//   - the Workload never arrives: the enrolment returns after
//     -pod-config-wait with the pod uncaptured and counted, and the pod is
//     captured once its Workload arrives.
//
// In each case the pod's first connection is checked to go through the
// tunnel (the server side counts it as mutual TLS from the pod's identity).
func TestPodCapturedBeforeItStarts(t *testing.T) {
	tier.RequireRoot(t)
	pods := twoNodeLab(t, []string{"early", "late", "never"}, []string{"b"})
	b := pods["b"]
	b.ServeEcho(t, echoPort)
	bAddr := netip.AddrPortFrom(b.IP, echoPort)

	ca, err := identity.NewRootAuthority(trustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	x := startXDS(t)
	// scheduled is a pod's Workload as the controller sends it before the
	// pod has an IP.
	scheduled := func(p *netlab.Pod) *configv1alpha1.Workload {
		w := workload(p, "node0", true)
		w.Addresses, w.Ready = nil, false
		return w
	}
	known := map[string]*configv1alpha1.Workload{"b": workload(b, "node1", true), "early": scheduled(pods["early"])}
	publish := func() {
		out := &translate.Output{Authorizations: noopAuthorization(), Services: []*configv1alpha1.Service{{Name: ns + "/echo", Namespace: ns, Hostname: "echo.shop.svc.cluster.local",
			Vips: []string{vip.String()}, Ports: []*configv1alpha1.ServicePort{{Name: "tcp", Port: 80, TargetPort: echoPort}}}}}
		for _, n := range []string{"b", "early", "late", "never"} {
			if w := known[n]; w != nil {
				out.Workloads = append(out.Workloads, proto.Clone(w).(*configv1alpha1.Workload))
			}
		}
		x.srv.Publish(out)
	}
	publish()

	const wait = 1500 * time.Millisecond
	z0 := startZtunnel(t, "node0", x.addr, ztunnelFiles{dir: t.TempDir()}, ca, func(c *daemon.Config) { c.PodConfigWait = wait })
	z1 := startZtunnel(t, "node1", x.addr, ztunnelFiles{dir: t.TempDir()}, ca)
	z1.enrol(t, b)
	eventually(t, "ztunnels ready with b captured", func() bool {
		return z0.d.Ready() == nil && z1.d.Ready() == nil && z1.captured("b")
	})

	// add enrols p as the CNI plugin does and returns how long it took.
	add := func(p *netlab.Pod) time.Duration {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
		defer cancel()
		start := time.Now()
		if _, err := z0.client.AddPod(ctx, enroll.AddPodRequest{UID: "uid-" + p.Name, Namespace: ns, Name: p.Name,
			NetnsPath: p.NetnsPath(), PodIPs: []string{p.IP.String()}}); err != nil {
			t.Fatalf("AddPod %s: %v", p.Name, err)
		}
		return time.Since(start)
	}
	// firstConnMeshed sends the pod's first connection and checks that
	// the server side saw it as a tunnel from the pod's identity.
	firstConnMeshed := func(p *netlab.Pod) {
		t.Helper()
		want := map[string]string{"reporter": "destination", "source_principal": spiffe(p.Name),
			"connection_security_policy": "mutual_tls"}
		before := metricValue(t, z1, "istio_tcp_connections_opened_total", want)
		if err := p.Echo(bAddr, p.Hello(100)); err != nil {
			t.Fatalf("%s -> b: %v", p.Name, err)
		}
		if got := metricValue(t, z1, "istio_tcp_connections_opened_total", want); got != before+1 {
			t.Errorf("%s's first connection: b's ztunnel counted %v tunnels from %s, want %v (the connection bypassed the mesh)",
				p.Name, got, spiffe(p.Name), before+1)
		}
	}
	unknownAtAdd := func() float64 { return metricValue(t, z0, "ztunnel_pods_unknown_at_add_total", nil) }

	t.Run("workload without addresses", func(t *testing.T) {
		if took := add(pods["early"]); took > wait/2 {
			t.Errorf("AddPod of a pod the configuration knows took %v", took)
		}
		if !z0.captured("early") {
			t.Fatal("not captured when AddPod returned")
		}
		firstConnMeshed(pods["early"])
	})

	t.Run("workload arrives during the enrolment", func(t *testing.T) {
		const delay = 400 * time.Millisecond
		published := make(chan struct{})
		go func() {
			defer close(published)
			time.Sleep(delay)
			known["late"] = scheduled(pods["late"])
			publish()
		}()
		took := add(pods["late"])
		<-published
		if took < delay || took >= wait {
			t.Errorf("AddPod took %v, want from %v (the Workload's arrival) to %v (-pod-config-wait)", took, delay, wait)
		}
		if !z0.captured("late") {
			t.Fatal("not captured when AddPod returned")
		}
		firstConnMeshed(pods["late"])
		if n := unknownAtAdd(); n != 0 {
			t.Errorf("ztunnel_pods_unknown_at_add_total = %v, want 0", n)
		}
	})

	t.Run("workload never arrives", func(t *testing.T) {
		if took := add(pods["never"]); took < wait {
			t.Errorf("AddPod returned after %v, before -pod-config-wait (%v)", took, wait)
		}
		if pd := podDump(z0, "never"); pd.Captured || pd.State != daemon.PodUnknown {
			t.Fatalf("without a Workload: captured %v, state %q, want %q", pd.Captured, pd.State, daemon.PodUnknown)
		}
		if n := unknownAtAdd(); n != 1 {
			t.Errorf("ztunnel_pods_unknown_at_add_total = %v, want 1", n)
		}
		known["never"] = scheduled(pods["never"])
		publish()
		eventually(t, "the pod captured once its Workload arrives", func() bool { return podDump(z0, "never").State == daemon.PodCaptured })
		firstConnMeshed(pods["never"])
	})
}
