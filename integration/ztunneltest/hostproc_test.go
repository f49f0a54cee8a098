//go:build netns

package ztunneltest

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/daemon"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
)

// TestPodWithoutNetnsFile checks pods whose network namespace has no file,
// as with runtimes (cri-dockerd) that name a process's namespace,
// /proc/<pid>/ns/net, with the PID as the host sees it. ztunnel, in a PID
// namespace of its own, reaches it through the host's /proc mounted at
// Enroll.HostProc (-host-proc). The test stands for the host's /proc with
// a folder where PIDs that do not exist here (above any pid_max) are the
// pods' processes, so a path not taken through it fails:
//
//   - a pod reported with such a path is captured, and its connections
//     are tunnelled;
//   - a pod that started before ztunnel and that nobody reported is
//     discovered there, enrolled with its /proc path, and captured.
func TestPodWithoutNetnsFile(t *testing.T) {
	tier.RequireRoot(t)
	pods := twoNodeLab(t, []string{"reported", "found"}, []string{"b"})
	b := pods["b"]
	b.ServeEcho(t, echoPort)

	hostProc := t.TempDir()
	// procPath starts a process in p's namespace and returns the path a
	// runtime would name its namespace by, as a PID of the stand-in
	// host's /proc.
	procPath := func(p *netlab.Pod, hostPID int) string {
		t.Helper()
		cmd := exec.Command("sleep", "300")
		if err := p.Start(cmd); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		if err := os.Symlink("/proc/"+strconv.Itoa(cmd.Process.Pid), filepath.Join(hostProc, strconv.Itoa(hostPID))); err != nil {
			t.Fatal(err)
		}
		return "/proc/" + strconv.Itoa(hostPID) + "/ns/net"
	}
	reportedPath := procPath(pods["reported"], 999999990)
	foundPath := procPath(pods["found"], 999999991)
	if _, err := os.Stat(reportedPath); err == nil {
		t.Fatalf("%s exists on this machine: the test could not tell whether ztunnel used -host-proc", reportedPath)
	}

	ca, err := identity.NewRootAuthority(trustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	x := startXDS(t)
	x.srv.Publish(&translate.Output{
		Workloads:      []*configv1alpha1.Workload{workload(pods["reported"], "node0", true), workload(pods["found"], "node0", true), workload(b, "node1", true)},
		Services:       []*configv1alpha1.Service{},
		Authorizations: noopAuthorization(),
	})
	z1 := startZtunnel(t, "node1", x.addr, ztunnelFiles{dir: t.TempDir()}, ca)
	z1.enrol(t, b)
	z0 := startZtunnel(t, "node0", x.addr, ztunnelFiles{dir: t.TempDir()}, ca, func(c *daemon.Config) { c.Enroll.HostProc = hostProc })
	eventually(t, "ztunnels ready, b captured", func() bool { return z0.d.Ready() == nil && z1.d.Ready() == nil && z1.captured("b") })

	// meshed checks that p's connection to b goes through the tunnel.
	meshed := func(p *netlab.Pod) {
		t.Helper()
		want := map[string]string{"reporter": "destination", "source_principal": spiffe(p.Name), "connection_security_policy": "mutual_tls"}
		before := metricValue(t, z1, "istio_tcp_connections_opened_total", want)
		if err := p.Echo(netip.AddrPortFrom(b.IP, echoPort), p.Hello(100)); err != nil {
			t.Fatal(err)
		}
		if got := metricValue(t, z1, "istio_tcp_connections_opened_total", want); got != before+1 {
			t.Errorf("%s -> b: b's ztunnel counted %v tunnels from %s, want 1 (the connection bypassed the mesh)", p.Name, got-before, p.Name)
		}
	}

	t.Run("reported with a /proc path", func(t *testing.T) {
		p := pods["reported"]
		ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
		defer cancel()
		if _, err := z0.client.AddPod(ctx, enroll.AddPodRequest{UID: "uid-" + p.Name, Namespace: ns, Name: p.Name,
			NetnsPath: reportedPath, PodIPs: podIPs(p)}); err != nil {
			t.Fatalf("AddPod with %s: %v", reportedPath, err)
		}
		if !z0.captured(p.Name) {
			t.Fatal("not captured when AddPod returned")
		}
		meshed(p)
		if got := podDump(z0, p.Name).Pod.NetnsPath; got != reportedPath {
			t.Errorf("admin dump: netns %q, want the path as reported, %q", got, reportedPath)
		}
	})

	t.Run("started before ztunnel, discovered", func(t *testing.T) {
		p := pods["found"]
		eventually(t, "found discovered and captured", func() bool { return z0.captured(p.Name) })
		got, ok := z0.d.Enroll().Get("uid-" + p.Name)
		if !ok || got.NetnsPath != foundPath {
			t.Fatalf("discovered pod %+v, want netns %s", got, foundPath)
		}
		meshed(p)
	})
}
