//go:build netns

package netlab

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func TestTCPEchoAcrossNodes(t *testing.T) {
	client, server := twoNodes(t)
	if client.IP6.IsValid() || server.IP6.IsValid() {
		t.Fatalf("an IPv4 lab gave IPv6 addresses: client %s, server %s", client.IP6, server.IP6)
	}
	echoAcross(t, client, server, server.IP, client.IP)
}

// TestDualStackEchoAcrossNodes checks a dual-stack lab: both families
// routed between the nodes, each pod seen with its own address.
func TestDualStackEchoAcrossNodes(t *testing.T) {
	client, server := twoNodes(t, DualStack())
	for _, p := range []*Pod{client, server} {
		if !Range6.Contains(p.IP6) || !p.Node.PodCIDR6.Contains(p.IP6) {
			t.Fatalf("pod %s: IPv6 address %s, want one in %s and %s", p.Name, p.IP6, Range6, p.Node.PodCIDR6)
		}
	}
	echoAcross(t, client, server, server.IP, client.IP)
	echoAcross(t, client, server, server.IP6, client.IP6)
}

// twoNodes builds a lab of two nodes with a pod each.
func twoNodes(t *testing.T, opts ...Option) (client, server *Pod) {
	t.Helper()
	lab := New(t, opts...)
	node0, err := lab.AddNode("node0")
	if err != nil {
		t.Fatal(err)
	}
	node1, err := lab.AddNode("node1")
	if err != nil {
		t.Fatal(err)
	}
	client, err = node0.AddPod("client")
	if err != nil {
		t.Fatal(err)
	}
	server, err = node1.AddPod("server")
	if err != nil {
		t.Fatal(err)
	}
	if !Range.Contains(client.IP) || !Range.Contains(server.IP) || client.Node == server.Node {
		t.Fatalf("unexpected addresses: client %s on %s, server %s on %s", client.IP, client.Node.Name, server.IP, server.Node.Name)
	}
	return client, server
}

// echoAcross sends 1 MiB from client to an echo server of server's at
// addr and checks that it comes back whole and that the server saw the
// client at from.
func echoAcross(t *testing.T, client, server *Pod, addr, from netip.Addr) {
	t.Helper()
	var ln net.Listener
	if err := server.Do(func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 7000).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peers := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			peers <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String()
		_, _ = io.Copy(c, c) // echo until the client half-closes
		_ = c.(*net.TCPConn).CloseWrite()
	}()

	var conn net.Conn
	if err := client.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(addr, 7000).String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s from %s: %v", addr, client.Name, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))

	payload := make([]byte, 1<<20)
	_, _ = rand.Read(payload)
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(payload)
		if err == nil {
			err = conn.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo returned %d bytes, differing from the %d sent", len(got), len(payload))
	}
	// Routed, not NATed: the server saw the client pod's own address.
	if peer := <-peers; peer != from.String() {
		t.Errorf("server saw peer %s, want %s", peer, from)
	}
}

func TestProcessRunsInPod(t *testing.T) {
	lab := New(t)
	node, err := lab.AddNode("node0")
	if err != nil {
		t.Fatal(err)
	}
	pod, err := node.AddPod("app")
	if err != nil {
		t.Fatal(err)
	}
	// /proc/net is the reading process's own namespace: inside the pod it lists
	// the pod's address, which the host's namespace does not have.
	cmd := exec.Command("cat", "/proc/net/fib_trie")
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := pod.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), pod.IP.String()) {
		t.Errorf("process in pod does not see %s in its routes:\n%s", pod.IP, out.String())
	}
	hostView, err := os.ReadFile("/proc/net/fib_trie")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(hostView), pod.IP.String()) {
		t.Errorf("the host namespace has the pod address %s", pod.IP)
	}
}

// TestNoRouteOffMachine checks the isolation promise without sending a packet
// anywhere: no namespace of the lab has a default route except pods, whose
// default route ends at their node, which has none.
func TestNoRouteOffMachine(t *testing.T) {
	lab := New(t, DualStack())
	a, err := lab.AddNode("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := lab.AddNode("b")
	if err != nil {
		t.Fatal(err)
	}
	pod, err := a.AddPod("p")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Node{a, b} {
		routes := routesIn(t, n.ns, netlink.FAMILY_V4)
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				t.Errorf("node %s has a default route: %+v", n.Name, r)
				continue
			}
			dst, _ := netip.AddrFromSlice(r.Dst.IP.To4())
			if !Range.Contains(dst) {
				t.Errorf("node %s routes %s, outside %s", n.Name, r.Dst, Range)
			}
		}
	}
	for _, r := range routesIn(t, pod.ns, netlink.FAMILY_V4) {
		if r.Gw != nil {
			gw, _ := netip.AddrFromSlice(r.Gw.To4())
			if gw != a.PodCIDR.Addr().Next() {
				t.Errorf("pod routes through %s, want its node %s", gw, a.PodCIDR.Addr().Next())
			}
		}
	}
	// IPv6 the same: the nodes route only Range6 (and their links'
	// link-local and multicast ranges), the pod's gateway is its node.
	for _, n := range []*Node{a, b} {
		for _, r := range routesIn(t, n.ns, netlink.FAMILY_V6) {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				t.Errorf("node %s has an IPv6 default route: %+v", n.Name, r)
				continue
			}
			dst, _ := netip.AddrFromSlice(r.Dst.IP)
			if !Range6.Contains(dst) && !dst.IsLinkLocalUnicast() && !dst.IsMulticast() {
				t.Errorf("node %s routes %s, outside %s", n.Name, r.Dst, Range6)
			}
		}
	}
	gw6 := 0
	for _, r := range routesIn(t, pod.ns, netlink.FAMILY_V6) {
		if r.Gw != nil {
			gw6++
			if gw, _ := netip.AddrFromSlice(r.Gw); gw != a.PodCIDR6.Addr().Next() {
				t.Errorf("pod routes IPv6 through %s, want its node %s", gw, a.PodCIDR6.Addr().Next())
			}
		}
	}
	if gw6 != 1 {
		t.Errorf("pod has %d IPv6 routes through a gateway, want 1 (its default route)", gw6)
	}
}

func routesIn(t *testing.T, ns *namespace, family int) []netlink.Route {
	t.Helper()
	var routes []netlink.Route
	err := withHandle(ns, func(h *netlink.Handle) (err error) {
		routes, err = h.RouteList(nil, family)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return routes
}

func TestCloseRemovesNamespaces(t *testing.T) {
	lab := New(t)
	n, err := lab.AddNode("n")
	if err != nil {
		t.Fatal(err)
	}
	p, err := n.AddPod("p")
	if err != nil {
		t.Fatal(err)
	}
	paths := []string{n.NetnsPath(), p.NetnsPath(), filepath.Join(netnsDir, lab.prefix+"fabric")}
	for _, path := range paths {
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("namespace not mounted: %v", err)
		}
	}
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	for _, path := range paths {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after Close (err %v)", path, err)
		}
	}
}

func TestSweepRemovesLeftoversOfDeadProcesses(t *testing.T) {
	New(t) // root check and a first sweep
	// A process that has exited stands for a crashed test run.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	deadPID := cmd.Process.Pid
	dead := fmt.Sprintf("%s%d-leftover", Prefix, deadPID)
	live := fmt.Sprintf("%s%d-alive", Prefix, os.Getpid())
	for _, name := range []string{dead, live} {
		if err := onLockedThread(func() error {
			orig, err := netns.Get()
			if err != nil {
				return err
			}
			defer orig.Close()
			h, err := netns.NewNamed(name)
			if err != nil {
				return err
			}
			h.Close()
			return netns.Set(orig)
		}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = netns.DeleteNamed(live); _ = netns.DeleteNamed(dead) })
	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, dead)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sweep left %s of dead PID %d (err %v)", dead, deadPID, err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, live)); err != nil {
		t.Errorf("sweep removed %s of a live process: %v", live, err)
	}
}
