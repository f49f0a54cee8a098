//go:build netns

package ztunneltest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/pkg/dnstest"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/daemon"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
)

// socksDial connects, from inside pod p, to the pod's own SOCKS5 listener
// and asks for dst: an "ip:port" or a "name:port". It returns the
// connection and the reply code (the connection is closed unless the code
// is 0).
func socksDial(p *netlab.Pod, dst string) (net.Conn, byte, error) {
	return socksDialVia(p, daemon.PodSOCKS5Addr, dst)
}

// socksDialVia is socksDial through the SOCKS5 listener at proxy.
func socksDialVia(p *netlab.Pod, proxy, dst string) (net.Conn, byte, error) {
	var c net.Conn
	if err := p.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", proxy, 3*time.Second)
		return err
	}); err != nil {
		return nil, 0, err
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	host, port, err := net.SplitHostPort(dst)
	if err != nil {
		c.Close()
		return nil, 0, err
	}
	var pn uint16
	if _, err := fmt.Sscan(port, &pn); err != nil {
		c.Close()
		return nil, 0, err
	}
	req := []byte{5, 1, 0, 5, 1, 0}
	if a, err := netip.ParseAddr(host); err == nil && a.Is4() {
		req = append(append(req, 1), a.AsSlice()...)
	} else if err == nil {
		req = append(append(req, 4), a.AsSlice()...)
	} else {
		req = append(append(req, 3, byte(len(host))), host...)
	}
	req = binary.BigEndian.AppendUint16(req, pn)
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, 0, err
	}
	var rep [12]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		c.Close()
		return nil, 0, fmt.Errorf("SOCKS5 reply: %w", err)
	}
	if rep[0] != 5 || rep[1] != 0 || rep[2] != 5 {
		c.Close()
		return nil, 0, fmt.Errorf("SOCKS5 reply %v", rep)
	}
	if rep[3] != 0 {
		c.Close()
		return nil, rep[3], nil
	}
	_ = c.SetDeadline(time.Time{})
	return c, 0, nil
}

// socksEcho sends a message through a SOCKS5 connection and expects it back.
func socksEcho(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := bytes.Repeat([]byte("through socks5 "), 2000)
	go func() {
		_, _ = c.Write(msg)
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("read: %w (after %d bytes)", err, len(got))
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo returned %d bytes, want %d", len(got), len(msg))
	}
	return nil
}

// serveDNSIn runs a DNS server on pod p's address and port until the test
// ends.
func serveDNSIn(t *testing.T, p *netlab.Pod, port uint16, table map[string]netip.Addr) *dnstest.Server {
	t.Helper()
	var ln net.Listener
	if err := p.Do(func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(p.IP, port).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s := dnstest.Serve(ln, table)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestPodSOCKS5 checks the SOCKS5 listener ztunnel opens on 127.0.0.1:15080
// inside every captured pod: a client in pod a reaches pod b's service
// (by VIP and by name) on another node through ztunnel, the server-side
// ztunnel sees a's identity, the connection to 127.0.0.1:15080 itself is
// not captured, and the listener goes away (with its connections) when the
// pod is released and comes back when it is captured again.
func TestPodSOCKS5(t *testing.T) {
	tier.RequireRoot(t)
	l := newEchoServiceLab(t)
	a, u, b := l.a, l.u, l.b
	b.ServeEcho(t, echoPort)
	ca, svcVIP, x, workloads, publish := l.ca, echoServiceVIP, l.x, l.workloads, l.publish
	// A nameserver in pod u for names outside the mesh: outside.example
	// is pod b's address.
	dns := serveDNSIn(t, u, 5353, map[string]netip.Addr{"outside.example.": b.IP})
	files0 := ztunnelFiles{dir: t.TempDir()}
	z0 := startZtunnel(t, "node0", x.addr, files0, ca, func(c *daemon.Config) {
		c.SOCKS5Nameservers = []netip.AddrPort{dns.Addr}
	})
	z1 := startZtunnel(t, "node1", x.addr, ztunnelFiles{dir: t.TempDir()}, ca)
	z0.enrol(t, a)
	z0.enrol(t, u)
	z1.enrol(t, b)
	eventually(t, "pods captured", func() bool { return z0.captured("a") && z1.captured("b") && !z0.captured("u") })
	eventually(t, "ztunnels ready", func() bool { return z0.d.Ready() == nil && z1.d.Ready() == nil })

	aID, bID := spiffe("a"), spiffe("b")
	connections := 0
	for _, dst := range []string{
		netip.AddrPortFrom(svcVIP, 80).String(),     // service VIP -> endpoint
		"echo.shop.svc.cluster.local:80",            // its hostname
		"echo:80",                                   // short name, a's namespace
		netip.AddrPortFrom(b.IP, echoPort).String(), // pod address -> HBONE
	} {
		c, code, err := socksDial(a, dst)
		if err != nil || code != 0 {
			t.Fatalf("SOCKS5 CONNECT %s from pod a: code %d, %v", dst, code, err)
		}
		err = socksEcho(c)
		c.Close()
		if err != nil {
			t.Fatalf("echo through SOCKS5 to %s: %v", dst, err)
		}
		connections++
	}
	// The destination ztunnel verified pod a's certificate on each tunnel.
	eventually(t, "destination ztunnel counts a's tunnels", func() bool {
		return metricValue(t, z1, "istio_tcp_connections_closed_total", map[string]string{
			"reporter": "destination", "source_principal": aID, "destination_principal": bID,
			"source_workload": "a-deploy", "connection_security_policy": "mutual_tls", "response_flags": "-",
		}) == float64(connections)
	})
	// The source ztunnel reports them as a's outbound connections, exactly
	// once each: the client's connection to 127.0.0.1:15080 was not
	// redirected to the outbound listener (that would count another,
	// plaintext connection of a).
	eventually(t, "source ztunnel counts a's connections", func() bool {
		return metricValue(t, z0, "istio_tcp_connections_closed_total", map[string]string{
			"reporter": "source", "source_workload": "a-deploy", "source_principal": aID,
		}) == float64(connections)
	})
	if v := metricValue(t, z0, "istio_tcp_connections_opened_total", map[string]string{
		"reporter": "source", "source_workload": "a-deploy", "source_principal": aID,
		"destination_principal": bID, "destination_workload": "b-deploy",
		"destination_service": "echo.shop.svc.cluster.local", "connection_security_policy": "mutual_tls",
	}); v != 3 {
		t.Errorf("source ztunnel counted %v connections to the echo service, want 3", v)
	}
	if v := metricValue(t, z0, "istio_tcp_connections_opened_total", map[string]string{"reporter": "source", "source_workload": "a-deploy"}); v != float64(connections) {
		t.Errorf("source ztunnel counted %v connections of a, want %d", v, connections)
	}

	t.Run("IPv6 loopback", func(t *testing.T) {
		c, code, err := socksDialVia(a, daemon.PodSOCKS5Addr6, "echo.shop.svc.cluster.local:80")
		if err != nil || code != 0 {
			t.Fatalf("SOCKS5 CONNECT through %s: code %d, %v", daemon.PodSOCKS5Addr6, code, err)
		}
		defer c.Close()
		if err := socksEcho(c); err != nil {
			t.Fatal(err)
		}
		connections++
	})

	t.Run("a name outside the mesh, resolved from inside the pod", func(t *testing.T) {
		c, code, err := socksDial(a, fmt.Sprintf("outside.example:%d", echoPort))
		if err != nil || code != 0 {
			t.Fatalf("SOCKS5 CONNECT outside.example: code %d, %v (the nameserver was asked %v)", code, err, dns.Asked())
		}
		defer c.Close()
		if err := socksEcho(c); err != nil {
			t.Fatal(err)
		}
		connections++
		if !slices.Contains(dns.Asked(), "outside.example. TypeA") {
			t.Errorf("the nameserver was asked %v", dns.Asked())
		}
	})

	t.Run("the pod's own DNS settings", func(t *testing.T) {
		// Pod a gets dnsPolicy None with a nameserver in pod u (port 53)
		// and a search list: "inside" is asked as inside.corp.example, of
		// that nameserver only, not of ztunnel's.
		podDNS := serveDNSIn(t, u, 53, map[string]netip.Addr{"inside.corp.example.": b.IP})
		own := workload(a, "node0", true)
		own.Dns = &configv1alpha1.DNSConfig{Policy: configv1alpha1.DNSConfig_POLICY_NONE,
			Nameservers: []string{u.IP.String()}, Searches: []string{"corp.example"}, Ndots: 1}
		workloads["a"] = own
		publish()
		defer func() {
			workloads["a"] = workload(a, "node0", true)
			publish()
			eventually(t, "ztunnel's nameserver asked again", func() bool {
				c, code, err := socksDial(a, fmt.Sprintf("outside.example:%d", echoPort))
				if err == nil && code == 0 {
					c.Close()
				}
				return err == nil && code == 0
			})
		}()
		dial := func() (net.Conn, bool) {
			c, code, err := socksDial(a, fmt.Sprintf("inside:%d", echoPort))
			return c, err == nil && code == 0
		}
		eventually(t, "inside resolved by the pod's nameserver", func() bool {
			c, ok := dial()
			if ok {
				c.Close()
			}
			return ok
		})
		asked := len(dns.Asked())
		c, ok := dial()
		if !ok {
			t.Fatalf("SOCKS5 CONNECT inside failed once resolved (the pod's nameserver was asked %v)", podDNS.Asked())
		}
		defer c.Close()
		if err := socksEcho(c); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(podDNS.Asked(), "inside.corp.example. TypeA") {
			t.Errorf("the pod's nameserver was asked %v", podDNS.Asked())
		}
		if got := dns.Asked()[asked:]; len(got) != 0 {
			t.Errorf("under dnsPolicy None ztunnel's nameserver was asked %v", got)
		}
		if _, code, err := socksDial(a, fmt.Sprintf("outside.example:%d", echoPort)); err != nil || code != 4 {
			t.Errorf("a name only ztunnel's nameserver knows, under dnsPolicy None: code %d, %v; want 4", code, err)
		}
	})

	t.Run("errors", func(t *testing.T) {
		if _, code, err := socksDial(a, "nowhere.shop.svc.cluster.local:80"); err != nil || code != 4 {
			t.Errorf("unknown name: code %d, %v; want 4", code, err)
		}
		if !slices.Contains(dns.Asked(), "nowhere.shop.svc.cluster.local. TypeA") {
			t.Errorf("a name the mesh does not know was not asked of the nameserver: %v", dns.Asked())
		}
		if _, code, err := socksDial(a, netip.AddrPortFrom(b.IP, 1).String()); err != nil || code != 5 {
			t.Errorf("closed port: code %d, %v; want 5", code, err)
		}
	})

	t.Run("denied by the destination's policy", func(t *testing.T) {
		l.authz = []*configv1alpha1.Authorization{{
			Name: ns + "/deny-a", Namespace: ns, Scope: configv1alpha1.Authorization_SCOPE_WORKLOAD_SELECTOR,
			Action: configv1alpha1.Authorization_ACTION_DENY,
			Rules:  []*configv1alpha1.AuthorizationRule{{From: []*configv1alpha1.AuthorizationRule_Source{{Principals: []string{aID}}}}},
		}}
		denied := workload(b, "node1", true)
		denied.AuthorizationPolicies = []string{ns + "/deny-a"}
		workloads["b"] = denied
		publish()
		var code byte
		eventually(t, "SOCKS5 refused with code 2", func() bool {
			c, got, err := socksDial(a, "echo.shop.svc.cluster.local:80")
			if err == nil && got == 0 {
				c.Close()
			}
			code = got
			return err == nil && got == 2
		})
		if v := metricValue(t, z0, "istio_tcp_connections_opened_total", map[string]string{
			"reporter": "source", "source_workload": "a-deploy", "response_flags": "DENY",
		}); v < 1 {
			t.Errorf("source ztunnel counted %v denied connections of a (last code %d)", v, code)
		}
		l.authz = nil
		workloads["b"] = workload(b, "node1", true)
		publish()
		eventually(t, "policy removed", func() bool {
			c, got, err := socksDial(a, "echo.shop.svc.cluster.local:80")
			if err == nil && got == 0 {
				c.Close()
			}
			return err == nil && got == 0
		})
	})

	t.Run("no listener in a pod that is not captured", func(t *testing.T) {
		if _, _, err := socksDial(u, "10.0.0.1:80"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("SOCKS5 in pod u: %v, want connection refused", err)
		}
	})

	t.Run("identity change", func(t *testing.T) {
		old, code, err := socksDial(a, netip.AddrPortFrom(svcVIP, 80).String())
		if err != nil || code != 0 {
			t.Fatalf("SOCKS5 CONNECT: code %d, %v", code, err)
		}
		defer old.Close()
		moved := workload(a, "node0", true)
		moved.ServiceAccount, moved.Identity = "a2", spiffe("a2")
		workloads["a"] = moved
		publish()
		eventually(t, "pod a captured with its new identity", func() bool { return podDump(z0, "a").Identity == spiffe("a2") })
		eventually(t, "ztunnel ready", func() bool { return z0.d.Ready() == nil })
		// The listener was reopened with the new identity...
		c, code, err := socksDial(a, netip.AddrPortFrom(svcVIP, 80).String())
		if err != nil || code != 0 {
			t.Fatalf("SOCKS5 CONNECT after the identity change: code %d, %v", code, err)
		}
		err = socksEcho(c)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "destination sees the new identity", func() bool {
			return metricValue(t, z1, "istio_tcp_connections_closed_total", map[string]string{
				"reporter": "destination", "source_principal": spiffe("a2"), "destination_principal": bID,
			}) == 1
		})
		// ...while the connection made with the old one goes on (drain).
		if err := socksEcho(old); err != nil {
			t.Fatalf("connection from before the identity change: %v", err)
		}
		workloads["a"] = workload(a, "node0", true)
		publish()
		eventually(t, "pod a back to its identity", func() bool { return podDump(z0, "a").Identity == aID })
		eventually(t, "ztunnel ready", func() bool { return z0.d.Ready() == nil })
	})

	t.Run("released with the pod", func(t *testing.T) {
		open, code, err := socksDial(a, netip.AddrPortFrom(svcVIP, 80).String())
		if err != nil || code != 0 {
			t.Fatalf("SOCKS5 CONNECT: code %d, %v", code, err)
		}
		defer open.Close()
		if dump := podDump(z0, "a"); !slices.Equal(dump.SOCKS5, []string{daemon.PodSOCKS5Addr, daemon.PodSOCKS5Addr6}) {
			t.Errorf("admin dump of a: socks5 %q", dump.SOCKS5)
		}
		workloads["a"] = workload(a, "node0", false)
		publish()
		eventually(t, "pod a released", func() bool { return !z0.captured("a") })
		for _, addr := range []string{daemon.PodSOCKS5Addr, daemon.PodSOCKS5Addr6} {
			if _, _, err := socksDialVia(a, addr, "10.0.0.1:80"); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("SOCKS5 on %s after release: %v, want connection refused", addr, err)
			}
		}
		// The connection being served drains: it goes on until it ends.
		if err := socksEcho(open); err != nil {
			t.Errorf("SOCKS5 connection open at the release, while draining: %v", err)
		}
		_ = open.Close()

		workloads["a"] = workload(a, "node0", true)
		publish()
		eventually(t, "pod a captured again", func() bool { return z0.captured("a") })
		eventually(t, "ztunnel ready again", func() bool { return z0.d.Ready() == nil })
		c, code, err := socksDial(a, netip.AddrPortFrom(svcVIP, 80).String())
		if err != nil || code != 0 {
			t.Fatalf("SOCKS5 CONNECT after capture again: code %d, %v", code, err)
		}
		defer c.Close()
		if err := socksEcho(c); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("after a ztunnel restart", func(t *testing.T) {
		z0.stop()
		if _, _, err := socksDial(a, "10.0.0.1:80"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("SOCKS5 while ztunnel is stopped: %v, want connection refused", err)
		}
		z0 = startZtunnel(t, "node0", x.addr, files0, ca)
		eventually(t, "pod a captured by the new ztunnel", func() bool { return z0.captured("a") })
		eventually(t, "ztunnel ready", func() bool { return z0.d.Ready() == nil })
		c, code, err := socksDial(a, "echo.shop.svc.cluster.local:80")
		if err != nil || code != 0 {
			t.Fatalf("SOCKS5 CONNECT after the restart: code %d, %v", code, err)
		}
		defer c.Close()
		if err := socksEcho(c); err != nil {
			t.Fatal(err)
		}
	})
}

func podDump(z *ztunnel, name string) daemon.PodDump {
	for _, p := range z.d.Dump(context.Background()).Pods {
		if p.Pod.Name == name {
			return p
		}
	}
	return daemon.PodDump{}
}

// TestPodSOCKS5Disabled checks that Config.DisablePodSOCKS5
// (-socks5-per-pod=false) captures pods without the SOCKS5 listener.
func TestPodSOCKS5Disabled(t *testing.T) {
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
	ca, err := identity.NewRootAuthority(trustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	x := startXDS(t)
	x.srv.Publish(&translate.Output{Workloads: []*configv1alpha1.Workload{workload(a, "node0", true)}})
	dir := t.TempDir()
	conn, err := grpc.NewClient(x.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d, err := daemon.New(daemon.Config{
		NodeName:         "node0",
		XDSConn:          conn,
		Fetcher:          identity.AuthorityFetcher{Authority: ca},
		Enroll:           enroll.Options{SocketPath: filepath.Join(dir, "ztunnel.sock"), StateFile: filepath.Join(dir, "pods.json")},
		ResyncWait:       3 * time.Second,
		DisablePodSOCKS5: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := d.Run(ctx); err != nil {
			t.Errorf("ztunnel: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	z := &ztunnel{d: d, client: enroll.NewClient(filepath.Join(dir, "ztunnel.sock"))}
	z.enrol(t, a)
	eventually(t, "pod captured", func() bool { return z.captured("a") })
	if _, _, err := socksDial(a, "10.0.0.1:80"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("SOCKS5 in a captured pod with the listener disabled: %v, want connection refused", err)
	}
	if s := podDump(z, "a").SOCKS5; len(s) != 0 {
		t.Errorf("admin dump: socks5 %q", s)
	}
	// The pod is captured all the same: its outbound listener is there.
	if err := a.Do(func() error {
		c, err := net.DialTimeout("tcp", "127.0.0.1:15001", 3*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Errorf("outbound listener of the captured pod: %v", err)
	}
}
