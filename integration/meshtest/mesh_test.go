//go:build netns

package meshtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

const (
	bigTransfer = 64 << 20
	settle      = 15 * time.Second // bound on a configuration change reaching the data plane
)

// TestMesh runs the controller (local mode) and two ztunnels as real
// processes over a two-node lab and checks the L4 mesh end to end.
func TestMesh(t *testing.T) {
	tier.RequireRoot(t)
	top := t // processes started in subtests live until the test ends
	begin := time.Now()
	bins := buildBinaries(t)
	sp := newSpawner(t)
	lab := netlab.New(t, netlab.DualStack())
	n0, err := lab.AddNode("node0")
	if err != nil {
		t.Fatal(err)
	}
	n1, err := lab.AddNode("node1")
	if err != nil {
		t.Fatal(err)
	}
	// A packet capture inside the lab is a prerequisite of this tier.
	probe, err := startCapture(n0, "eth0")
	tier.Require(t, "AF_PACKET capture inside a lab namespace", err)
	if _, err := probe.Close(); err != nil {
		t.Fatalf("capture probe: %v", err)
	}

	// Pods: client and other (mesh, node0), server (mesh, node1), outsider
	// (plain namespace, node1).
	lp := map[string]*netlab.Pod{}
	var specs []podSpec
	for _, s := range []struct {
		name, ns string
		node     *netlab.Node
	}{{"client", meshNS, n0}, {"other", meshNS, n0}, {"server", meshNS, n1}, {"outsider", plainNS, n1}} {
		p, err := s.node.AddPod(s.name)
		if err != nil {
			t.Fatal(err)
		}
		lp[s.name] = p
		specs = append(specs, podSpec{name: s.name, ns: s.ns, sa: s.name, node: s.node.Name, ip: p.IP, ip6: p.IP6})
	}
	spec := func(name string) podSpec {
		i := slices.IndexFunc(specs, func(s podSpec) bool { return s.name == name })
		return specs[i]
	}
	client, other, server, outsider := lp["client"], lp["other"], lp["server"], lp["outsider"]
	server.ServeEcho(t, echoPort)
	client.ServeEcho(t, echoPort)
	server.ServeWhoami(t, whoamiPort)
	serverAddr := netip.AddrPortFrom(server.IP, echoPort)
	clientAddr := netip.AddrPortFrom(client.IP, echoPort)
	vipAddr := netip.AddrPortFrom(vip, svcPort)

	ca := startCA(t, t.TempDir(), specs, []string{n0.Name, n1.Name})

	cfg := configDir{t: t, dir: t.TempDir()}
	cfg.write(namespacesFile, namespacesYAML(true))
	cfg.write(podsFile, podsYAML(specs))
	cfg.write(serviceFile, serviceYAML(spec("server")))
	cfg.write(policyFile, noPolicy)

	ctrlDir := t.TempDir()
	var (
		xdsAddr  string
		ctrlArgs []string
		ctrl     *process
	)
	for attempt := 1; ; attempt++ {
		xdsAddr = freePort(t)
		ctrlArgs = []string{"--config-dir", cfg.dir, "--xds-listen", xdsAddr, "--log-level", "debug"}
		ctrl = startProcess(t, sp, "controller", filepath.Join(ctrlDir, fmt.Sprintf("controller.%d.log", attempt)), bins.controller, ctrlArgs...)
		err := ctrl.waitListening(`"msg":"xds serving"`, 20*time.Second)
		if err == nil {
			break
		}
		if !errors.Is(err, errAddrInUse) || attempt == 3 {
			t.Fatalf("start controller: %v", err)
		}
		t.Logf("the xDS port was taken by another process; starting the controller on a new one")
	}

	zt := map[string]*ztunnel{}
	for _, n := range []*netlab.Node{n0, n1} {
		zt[n.Name] = &ztunnel{
			t: t, sp: sp, bin: bins.ztunnel, node: n.Name, dir: t.TempDir(),
			admin: freePort(t), metrics: freePort(t), ready: freePort(t),
			xdsAddr: xdsAddr, caAddr: ca.addr, caRoot: ca.rootFile, caToken: ca.tokens[n.Name],
		}
		zt[n.Name].start()
	}
	z0, z1 := zt[n0.Name], zt[n1.Name]
	// Every pod is reported to its node's ztunnel, as the CNI plugin does;
	// ztunnel decides from the configuration which ones it captures.
	for _, s := range specs {
		zt[s.node].report(t, s, lp[s.name].NetnsPath())
	}
	z0.waitReady(t, settle)
	z1.waitReady(t, settle)
	waitCaptured(t, map[*ztunnel]map[string]bool{
		z0: {"client": true, "other": true}, z1: {"server": true, "outsider": false},
	})
	t.Logf("mesh up in %v", time.Since(begin).Round(time.Millisecond))

	// hboneFrom counts the tunnels the server's ztunnel accepted from a pod.
	hboneFrom := func(t *testing.T, from podSpec) float64 {
		return z1.metric(t, "istio_tcp_connections_opened_total", map[string]string{
			"reporter": "destination", "source_principal": from.principal(),
			"destination_principal": spec("server").principal(), "connection_security_policy": "mutual_tls",
		})
	}

	t.Run("traffic across nodes", func(t *testing.T) {
		before := hboneFrom(t, spec("client"))
		for _, c := range []struct {
			from *netlab.Pod
			to   netip.AddrPort
		}{{client, serverAddr}, {client, vipAddr}, {server, clientAddr}} {
			if err := c.from.Echo(c.to, hello(c.from)); err != nil {
				t.Fatal(err)
			}
		}
		// The helper that later proves connections blocked must see this
		// open path as open.
		if err := blocked(client, serverAddr); err == nil {
			t.Fatal("blocked() found nothing wrong with an open path; the policy checks below would be vacuous")
		}
		if got := hboneFrom(t, spec("client")); got < before+2 {
			t.Errorf("server's ztunnel counted %v mutual-TLS tunnels from client, want at least %v", got, before+2)
		}
		for i, c := range []struct {
			from *netlab.Pod
			to   netip.AddrPort
		}{{client, serverAddr}, {client, vipAddr}, {server, clientAddr}} {
			start := time.Now()
			if err := transfer(c.from, c.to, bigTransfer, uint64(i+1)); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s -> %s: %d MiB each way, SHA-256 equal, in %v", c.from.Name, c.to, bigTransfer>>20, time.Since(start).Round(time.Millisecond))
		}
	})

	t.Run("the application sees the client's address", func(t *testing.T) {
		whoami := netip.AddrPortFrom(server.IP, whoamiPort)
		for _, p := range z1.dump(t).Pods {
			if p.Pod.Name == "server" && !p.OriginalSource {
				t.Errorf("admin dump: server pod without originalSource: %+v", p)
			}
		}
		before := hboneFrom(t, spec("client"))
		seen, _, err := client.Whoami(whoami)
		if err != nil {
			t.Fatal(err)
		}
		if seen.Addr() != client.IP {
			t.Errorf("through the tunnel the server application saw %v, want the client pod's %v", seen, client.IP)
		}
		if got := hboneFrom(t, spec("client")); got < before+1 {
			t.Errorf("server's ztunnel counted %v tunnels from client, want at least %v: the connection did not go through the mesh", got, before+1)
		}
		seen, local, err := outsider.Whoami(whoami)
		if err != nil {
			t.Fatal(err)
		}
		if seen.Addr() != outsider.IP || seen.Port() == local.Port() {
			t.Errorf("plaintext from outside the mesh: the server application saw %v, want %v with a port other than the client's own %d",
				seen, outsider.IP, local.Port())
		}
	})

	t.Run("capture between nodes shows only TLS", func(t *testing.T) {
		marker := newMarker(t)
		frames := captureWhile(t, n0, func() {
			for _, dst := range []netip.AddrPort{serverAddr, vipAddr} {
				if err := client.Echo(dst, bytes.Repeat(marker, 64)); err != nil {
					t.Fatal(err)
				}
			}
			// other has not talked to server yet: its first tunnel
			// starts with a TLS handshake on the wire.
			if err := other.Echo(serverAddr, bytes.Repeat(marker, 64)); err != nil {
				t.Fatal(err)
			}
		})
		segs := tcpSegments(frames)
		var toHBONE, fromHBONE, tlsTo, tlsFrom, plain int
		hboneAddr := netip.AddrPortFrom(server.IP, 15008)
		for _, s := range segs {
			switch {
			case s.src.Addr() == client.IP && s.dst == hboneAddr:
				toHBONE++
				if tlsAppData(s.payload) {
					tlsTo++
				}
			case s.dst.Addr() == client.IP && s.src == hboneAddr:
				fromHBONE++
				if tlsAppData(s.payload) {
					tlsFrom++
				}
			case s.dst.Port() == echoPort || s.src.Port() == echoPort:
				plain++
			}
		}
		t.Logf("captured %d frames on node0 eth0: %d TCP segments client->server:15008 (%d starting a TLS application-data record), %d back (%d)",
			len(frames), toHBONE, tlsTo, fromHBONE, tlsFrom)
		if toHBONE == 0 || fromHBONE == 0 {
			t.Errorf("no HBONE (TCP port 15008) between client and server on the wire")
		}
		if tlsTo == 0 || tlsFrom == 0 {
			t.Errorf("want TLS records (type 0x17, version 0x0303) both ways on port 15008; saw %d to and %d from the server", tlsTo, tlsFrom)
		}
		if plain != 0 {
			t.Errorf("%d segments to or from the application port %d crossed the wire", plain, echoPort)
		}
		if n := framesContaining(frames, marker); n != 0 {
			t.Errorf("the plaintext marker appears in %d captured frames", n)
		}
		clientHellos := 0
		for _, s := range segs {
			if s.src.Addr() == other.IP && s.dst == hboneAddr && tlsClientHello(s.payload) {
				clientHellos++
				if !bytes.Contains(s.payload, []byte("\x02h2")) {
					t.Errorf("other's ClientHello to server:15008 does not offer ALPN h2")
				}
			}
		}
		if clientHellos == 0 {
			t.Errorf("no TLS ClientHello from other to server:15008 on the wire")
		}
	})

	t.Run("IPv6", func(t *testing.T) {
		// The lab, the pods and the echo Service are dual-stack: the same
		// mesh over IPv6, and each VIP to the endpoints of its family.
		server6 := netip.AddrPortFrom(server.IP6, echoPort)
		before := hboneFrom(t, spec("client"))
		if err := transfer(client, server6, bigTransfer, 7); err != nil {
			t.Fatal(err)
		}
		if got := hboneFrom(t, spec("client")); got < before+1 {
			t.Errorf("server's ztunnel counted %v tunnels from client, want at least %v", got, before+1)
		}
		for _, c := range []struct{ vip, want netip.Addr }{{vip6, client.IP6}, {vip, client.IP}} {
			for range 3 {
				seen, _, err := client.Whoami(netip.AddrPortFrom(c.vip, svcWhoamiPort))
				if err != nil {
					t.Fatal(err)
				}
				if seen.Addr().Unmap() != c.want {
					t.Errorf("client -> %v: the application saw %v, want the client's %v (an endpoint of the VIP's family)", c.vip, seen, c.want)
				}
			}
		}
		seen, _, err := outsider.Whoami(netip.AddrPortFrom(server.IP6, whoamiPort))
		if err != nil {
			t.Fatal(err)
		}
		if seen.Addr().Unmap() != outsider.IP6 {
			t.Errorf("plaintext over IPv6 from outside the mesh: the application saw %v, want %v", seen, outsider.IP6)
		}

		marker := newMarker(t)
		frames := captureWhile(t, n0, func() {
			for _, dst := range []netip.AddrPort{server6, netip.AddrPortFrom(vip6, svcPort)} {
				if err := client.Echo(dst, bytes.Repeat(marker, 64)); err != nil {
					t.Fatal(err)
				}
			}
		})
		plain, hbone := countFlows(tcpSegments(frames), client.IP6, server.IP6)
		t.Logf("captured %d frames on node0 eth0: %d HBONE segments with payload between the pods' IPv6 addresses, %d to or from the application port", len(frames), hbone, plain)
		if hbone == 0 {
			t.Errorf("no HBONE (TCP port 15008) over IPv6 between client and server on the wire")
		}
		if plain != 0 {
			t.Errorf("%d segments to or from the application port %d crossed the wire", plain, echoPort)
		}
		if n := framesContaining(frames, marker); n != 0 {
			t.Errorf("the plaintext marker appears in %d captured frames", n)
		}
	})

	t.Run("L4 authorization", func(t *testing.T) {
		t.Cleanup(func() { clearPolicy(t, cfg, z1) })
		denied := func() float64 {
			return z1.metric(t, "ztunnel_connections_denied_total", map[string]string{"reason": "policy"})
		}
		d0 := denied()
		cfg.write(policyFile, authzYAML("deny-client", "DENY", spec("client").principal()))
		waitServerPolicies(t, z1, "deny-client")
		for _, dst := range []netip.AddrPort{serverAddr, vipAddr} {
			if err := blocked(client, dst); err != nil {
				t.Errorf("DENY client: %v", err)
			}
		}
		if err := other.Echo(serverAddr, hello(other)); err != nil {
			t.Errorf("DENY client must not block other: %v", err)
		}
		if d := denied() - d0; d < 2 {
			t.Errorf("server's ztunnel counted %v policy denials, want at least 2", d)
		}

		cfg.write(policyFile, authzYAML("allow-other", "ALLOW", spec("other").principal()))
		waitServerPolicies(t, z1, "allow-other")
		if err := other.Echo(serverAddr, hello(other)); err != nil {
			t.Errorf("ALLOW other: %v", err)
		}
		if err := other.Echo(vipAddr, hello(other)); err != nil {
			t.Errorf("ALLOW other, through the service: %v", err)
		}
		if err := blocked(client, serverAddr); err != nil {
			t.Errorf("ALLOW only other: %v", err)
		}

		clearPolicy(t, cfg, z1)
		if err := client.Echo(serverAddr, hello(client)); err != nil {
			t.Errorf("no policy again: %v", err)
		}
	})

	t.Run("PERMISSIVE then STRICT", func(t *testing.T) {
		t.Cleanup(func() { clearPolicy(t, cfg, z1) })
		plainIn := func() float64 {
			return z1.metric(t, "istio_tcp_connections_opened_total", map[string]string{
				"reporter": "destination", "connection_security_policy": "none",
				"destination_principal": spec("server").principal(),
			})
		}
		p0 := plainIn()
		if err := outsider.Echo(serverAddr, hello(outsider)); err != nil {
			t.Fatalf("PERMISSIVE (default) must admit plaintext from outside the mesh: %v", err)
		}
		if got := plainIn(); got < p0+1 {
			t.Errorf("server's ztunnel counted %v plaintext connections, want at least %v", got, p0+1)
		}
		strict0 := z1.metric(t, "ztunnel_connections_denied_total", map[string]string{"reason": "strict"})
		cfg.write(policyFile, peerAuthYAML("server-strict", "STRICT"))
		waitServerMode(t, z1, "MTLS_MODE_STRICT")
		if err := blocked(outsider, serverAddr); err != nil {
			t.Errorf("STRICT: %v", err)
		}
		if got := z1.metric(t, "ztunnel_connections_denied_total", map[string]string{"reason": "strict"}); got < strict0+1 {
			t.Errorf("server's ztunnel counted %v STRICT refusals, want at least %v", got, strict0+1)
		}
		if err := client.Echo(serverAddr, hello(client)); err != nil {
			t.Errorf("STRICT must admit the mesh client: %v", err)
		}
		clearPolicy(t, cfg, z1)
		if err := outsider.Echo(serverAddr, hello(outsider)); err != nil {
			t.Errorf("PERMISSIVE again: %v", err)
		}
	})

	t.Run("namespace label releases and recaptures running pods", func(t *testing.T) {
		pids := []int{z0.proc.cmd.Process.Pid, z1.proc.cmd.Process.Pid}
		t.Cleanup(func() {
			cfg.write(namespacesFile, namespacesYAML(true))
			waitCaptured(t, map[*ztunnel]map[string]bool{z0: {"client": true, "other": true}, z1: {"server": true}})
		})
		enrolled := func(z *ztunnel) float64 { return z.metric(t, "ztunnel_enrolled_pods", nil) }

		cfg.write(namespacesFile, namespacesYAML(false))
		waitCaptured(t, map[*ztunnel]map[string]bool{z0: {"client": false, "other": false}, z1: {"server": false}})
		if e0, e1 := enrolled(z0), enrolled(z1); e0 != 0 || e1 != 0 {
			t.Errorf("ztunnel_enrolled_pods = %v, %v after unlabelling, want 0", e0, e1)
		}
		hb := hboneFrom(t, spec("client"))
		marker := newMarker(t)
		frames := captureWhile(t, n0, func() {
			if err := client.Echo(serverAddr, bytes.Repeat(marker, 64)); err != nil {
				t.Fatalf("unlabelled: plain TCP must work: %v", err)
			}
		})
		plain, hbone := countFlows(tcpSegments(frames), client.IP, server.IP)
		t.Logf("unlabelled: %d segments client<->server:%d, %d HBONE segments with payload", plain, echoPort, hbone)
		if plain == 0 || hbone != 0 {
			t.Errorf("unlabelled: want plain TCP to :%d and no HBONE; saw %d plain and %d HBONE segments", echoPort, plain, hbone)
		}
		if framesContaining(frames, marker) == 0 {
			t.Errorf("unlabelled: the marker sent in plaintext is not in the capture (the capture sees nothing?)")
		}
		if got := hboneFrom(t, spec("client")); got != hb {
			t.Errorf("unlabelled: server's ztunnel accepted %v new tunnels", got-hb)
		}

		cfg.write(namespacesFile, namespacesYAML(true))
		waitCaptured(t, map[*ztunnel]map[string]bool{z0: {"client": true, "other": true}, z1: {"server": true}})
		z0.waitReady(t, settle)
		z1.waitReady(t, settle)
		if e0, e1 := enrolled(z0), enrolled(z1); e0 != 2 || e1 != 1 {
			t.Errorf("ztunnel_enrolled_pods = %v, %v after relabelling, want 2, 1", e0, e1)
		}
		frames = captureWhile(t, n0, func() {
			if err := client.Echo(serverAddr, bytes.Repeat(marker, 64)); err != nil {
				t.Fatalf("relabelled: %v", err)
			}
		})
		plain, hbone = countFlows(tcpSegments(frames), client.IP, server.IP)
		if plain != 0 || hbone == 0 {
			t.Errorf("relabelled: want HBONE only; saw %d plain and %d HBONE segments", plain, hbone)
		}
		if n := framesContaining(frames, marker); n != 0 {
			t.Errorf("relabelled: the marker appears in %d captured frames", n)
		}
		if got := hboneFrom(t, spec("client")); got < hb+1 {
			t.Errorf("relabelled: server's ztunnel counted no new tunnel from client")
		}
		// Neither the ztunnels nor the pods were restarted, and no pod was
		// reported again: the configuration alone moved them.
		if now := []int{z0.proc.cmd.Process.Pid, z1.proc.cmd.Process.Pid}; !slices.Equal(now, pids) || z0.proc.exited() || z1.proc.exited() {
			t.Errorf("a ztunnel was restarted: pids %v -> %v", pids, now)
		}
	})

	t.Run("capture and release cycles leak nothing", func(t *testing.T) {
		captured := map[*ztunnel]map[string]bool{z0: {"client": true, "other": true}, z1: {"server": true}}
		released := map[*ztunnel]map[string]bool{z0: {"client": false, "other": false}, z1: {"server": false}}
		t.Cleanup(func() {
			cfg.write(namespacesFile, namespacesYAML(true))
			waitCaptured(t, captured)
		})
		// cycle captures the pods, sends traffic through both ztunnels
		// (pod, VIP, both directions), opens a tunnel it keeps open, and
		// releases the pods: the open connection drains (it goes on through
		// both ztunnels while new connections bypass them), and once it
		// ends, the pods' capture tables go.
		opened := func() float64 {
			return z0.metric(t, "istio_tcp_connections_opened_total", map[string]string{"reporter": "source"})
		}
		cycle := func(i int) {
			t.Helper()
			cfg.write(namespacesFile, namespacesYAML(true))
			waitCaptured(t, captured)
			for _, c := range []struct {
				from *netlab.Pod
				to   netip.AddrPort
			}{{client, serverAddr}, {client, vipAddr}, {server, clientAddr}} {
				if err := c.from.Echo(c.to, hello(c.from)); err != nil {
					t.Fatalf("cycle %d: %v", i, err)
				}
			}
			held, err := client.DialTCP(serverAddr)
			if err != nil {
				t.Fatalf("cycle %d: %v", i, err)
			}
			defer held.Close()
			if err := roundTrip(held, []byte("held across the release")); err != nil {
				t.Fatalf("cycle %d: held connection: %v", i, err)
			}
			cfg.write(namespacesFile, namespacesYAML(false))
			waitCaptured(t, released)
			before := opened()
			if err := client.Echo(serverAddr, hello(client)); err != nil {
				t.Fatalf("cycle %d: new connection after the release: %v", i, err)
			}
			if got := opened(); got != before {
				t.Errorf("cycle %d: a connection opened after the release went through ztunnel (%v -> %v outbound connections)", i, before, got)
			}
			if err := roundTrip(held, []byte("drained after the release")); err != nil {
				t.Errorf("cycle %d: the connection open at the release did not go on while draining: %v", i, err)
			}
			for _, p := range []*netlab.Pod{client, server} {
				if !captureTable(t, p) {
					t.Errorf("cycle %d: pod %s: capture table gone while a connection drains (its translation goes with it)", i, p.Name)
				}
			}
			for _, z := range []*ztunnel{z0, z1} {
				if v := z.metric(t, "ztunnel_draining_pods", nil); v < 1 {
					t.Errorf("cycle %d: %s: ztunnel_draining_pods = %v while a connection drains", i, z, v)
				}
			}
			_ = held.Close()
			for _, p := range []*netlab.Pod{client, server} {
				eventually(t, settle, fmt.Sprintf("cycle %d: pod %s's capture table removed once drained", i, p.Name),
					func() bool { return !captureTable(t, p) })
			}
			for _, z := range []*ztunnel{z0, z1} {
				eventually(t, settle, fmt.Sprintf("cycle %d: %s's ztunnel_draining_pods back to 0", i, z),
					func() bool { return z.metric(t, "ztunnel_draining_pods", nil) == 0 })
			}
		}
		// settled is what a ztunnel holds once nothing changes any more:
		// its goroutines and open files, read until three readings 100 ms
		// apart agree.
		type holding struct{ goroutines, fds float64 }
		settled := func(z *ztunnel) holding {
			var last holding
			same := 0
			eventually(t, 10*time.Second, z.String()+" goroutines and open files to settle", func() bool {
				h := holding{z.metric(t, "go_goroutines", nil), z.metric(t, "process_open_fds", nil)}
				if h == last {
					same++
				} else {
					last, same = h, 0
				}
				time.Sleep(75 * time.Millisecond)
				return same >= 2
			}, func() string { return fmt.Sprintf("last %+v", last) })
			return last
		}
		// liveHeap is the heap a ztunnel holds right after two collections
		// (the admin port's heap profile with gc=1 runs one; the second
		// frees what sync.Pools kept through the first, such as the
		// metrics handler's gzip writers, about 0.5-1 MiB, which a scrape
		// of the metrics in between would bring back), read from the
		// profile's own memory statistics.
		liveHeap := func(z *ztunnel) float64 {
			var body string
			for _, q := range []string{"gc=1", "gc=1&debug=1"} {
				code, b, err := httpGet("http://" + z.admin + "/debug/pprof/heap?" + q)
				if err != nil || code != http.StatusOK {
					t.Fatalf("%s heap profile: %d %v", z, code, err)
				}
				body = b
			}
			_, after, ok := strings.Cut(body, "\n# HeapAlloc = ")
			v, err := strconv.ParseFloat(strings.Fields(after + " ")[0], 64)
			if !ok || err != nil {
				t.Fatalf("%s heap profile: no HeapAlloc (%v)", z, err)
			}
			return v
		}
		// The first cycle fills what is kept on purpose (connection pools,
		// certificates, buffers); five more must not add to it.
		cycle(0)
		base := map[*ztunnel]holding{z0: settled(z0), z1: settled(z1)}
		baseHeap := map[*ztunnel]float64{z0: liveHeap(z0), z1: liveHeap(z1)}
		const cycles = 5
		for i := 1; i <= cycles; i++ {
			cycle(i)
		}
		for _, z := range []*ztunnel{z0, z1} {
			h := settled(z)
			heap := liveHeap(z)
			t.Logf("%s after the first release: %v goroutines, %v open files, %.0f KiB live heap; after %d more cycles: %v, %v, %.0f KiB",
				z, base[z].goroutines, base[z].fds, baseHeap[z]/1024, cycles, h.goroutines, h.fds, heap/1024)
			// A little slack for what comes and goes on its own (an xDS
			// or metrics connection); a leak per cycle or per connection
			// adds at least 5.
			if h.goroutines > base[z].goroutines+2 || h.fds > base[z].fds+2 {
				t.Errorf("%s holds %v goroutines and %v open files after %d capture and release cycles, %v and %v after the first: something is left behind per cycle",
					z, h.goroutines, h.fds, cycles, base[z].goroutines, base[z].fds)
			}
			// Measured: 1.4 MiB, and 2-6 KiB more after five cycles (10-15
			// KiB after 25 or 40; a heap profile of every allocation puts
			// that in HTTP/2's header table and the profile's own writing).
			// 256 KiB more after five cycles is something kept per cycle.
			if heap > baseHeap[z]+256<<10 {
				t.Errorf("%s live heap grew from %.0f to %.0f KiB over %d capture and release cycles", z, baseHeap[z]/1024, heap/1024, cycles)
			}
		}
	})

	t.Run("capture again while draining keeps the new capture", func(t *testing.T) {
		captured := map[*ztunnel]map[string]bool{z0: {"client": true, "other": true}, z1: {"server": true}}
		t.Cleanup(func() {
			cfg.write(namespacesFile, namespacesYAML(true))
			waitCaptured(t, captured)
		})
		cfg.write(namespacesFile, namespacesYAML(true))
		waitCaptured(t, captured)
		held, err := client.DialTCP(serverAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		if err := roundTrip(held, []byte("before the release")); err != nil {
			t.Fatal(err)
		}
		cfg.write(namespacesFile, namespacesYAML(false))
		waitCaptured(t, map[*ztunnel]map[string]bool{z0: {"client": false, "other": false}, z1: {"server": false}})
		cfg.write(namespacesFile, namespacesYAML(true))
		waitCaptured(t, captured)
		if err := roundTrip(held, []byte("still draining after the new capture")); err != nil {
			t.Errorf("the connection open at the release: %v", err)
		}
		// The drain ends with the held connection; it must not take the
		// new capture's table with it.
		_ = held.Close()
		time.Sleep(time.Second)
		opened := func() float64 {
			return z0.metric(t, "istio_tcp_connections_opened_total", map[string]string{"reporter": "source"})
		}
		before := opened()
		if err := client.Echo(serverAddr, hello(client)); err != nil {
			t.Fatal(err)
		}
		if got := opened(); got != before+1 {
			t.Errorf("a new connection after the drain ended was not proxied by ztunnel (%v -> %v outbound connections): the drain removed the new capture's table", before, got)
		}
		for _, p := range []*netlab.Pod{client, server} {
			if !captureTable(t, p) {
				t.Errorf("pod %s: capture table gone after the old capture's drain ended", p.Name)
			}
		}
	})

	t.Run("controller stopped", func(t *testing.T) {
		conn, err := client.DialTCP(serverAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := roundTrip(conn, []byte("before the controller stops\n")); err != nil {
			t.Fatal(err)
		}
		if err := ctrl.stop(); err != nil {
			t.Errorf("controller exit after SIGTERM: %v", err)
		}
		for _, z := range []*ztunnel{z0, z1} {
			eventually(t, settle, z.String()+" to see the controller gone", func() bool { return !z.dump(t).XDS.Connected })
			if v := z.metric(t, "ztunnel_xds_connected", nil); v != 0 {
				t.Errorf("%s: ztunnel_xds_connected = %v", z, v)
			}
		}
		if err := roundTrip(conn, []byte("after the controller stopped\n")); err != nil {
			t.Errorf("established connection: %v", err)
		}
		for _, c := range []struct {
			from *netlab.Pod
			to   netip.AddrPort
		}{{client, serverAddr}, {client, vipAddr}, {other, serverAddr}, {server, clientAddr}} {
			if err := c.from.Echo(c.to, hello(c.from)); err != nil {
				t.Errorf("new connection without controller: %v", err)
			}
		}
	})

	t.Run("ztunnel restart with the controller still stopped", func(t *testing.T) {
		if !ctrl.exited() {
			t.Fatal("the controller is still running; the previous subtest did not stop it")
		}
		for _, c := range []struct {
			z    *ztunnel
			pods map[string]bool
		}{
			{z1, map[string]bool{"server": true, "outsider": false}},
			{z0, map[string]bool{"client": true, "other": true}},
		} {
			z := c.z
			if err := z.proc.stop(); err != nil {
				t.Errorf("%s exit after SIGTERM: %v", z, err)
			}
			if _, err := os.Lstat(z.socket()); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s left its enrolment socket behind: %v", z, err)
			}
			// While ztunnel is away its pods' rules stay: their traffic
			// fails instead of leaving the mesh.
			for name := range c.pods {
				if c.pods[name] {
					checkRulesInstalled(t, lp[name])
				}
			}
			if err := blocked(client, serverAddr); err != nil {
				t.Errorf("%s stopped: %v", z, err)
			}

			z.start()
			z.waitReady(t, settle)
			waitCaptured(t, map[*ztunnel]map[string]bool{z: c.pods})
			// Nobody reported the pods again: they came from the
			// persisted enrolment state.
			listed, err := z.client.ListPods(t.Context())
			if err != nil {
				t.Fatalf("%s: list pods: %v", z, err)
			}
			var names []string
			for _, p := range listed {
				names = append(names, p.Name)
			}
			for name := range c.pods {
				if !slices.Contains(names, name) {
					t.Errorf("%s after restart lists pods %v, missing %s", z, names, name)
				}
			}
			d := z.dump(t)
			if d.XDS.Connected || !d.XDS.FromDisk {
				t.Errorf("%s after restart: xds connected=%v fromDisk=%v, want the persisted state without a controller", z, d.XDS.Connected, d.XDS.FromDisk)
			}
			if v := z.metric(t, "ztunnel_xds_config_from_disk", nil); v != 1 {
				t.Errorf("%s: ztunnel_xds_config_from_disk = %v", z, v)
			}
			for _, c := range []struct {
				from *netlab.Pod
				to   netip.AddrPort
			}{{client, serverAddr}, {client, vipAddr}, {other, serverAddr}, {server, clientAddr}} {
				if err := c.from.Echo(c.to, hello(c.from)); err != nil {
					t.Errorf("after restarting %s: %v", z, err)
				}
			}
			if err := transfer(client, serverAddr, 8<<20, 42); err != nil {
				t.Errorf("after restarting %s: %v", z, err)
			}
		}
	})

	t.Run("controller back", func(t *testing.T) {
		if !ctrl.exited() {
			t.Fatal("the controller is still running")
		}
		ctrl = startProcess(top, sp, "controller (restarted)", filepath.Join(ctrlDir, "controller.restarted.log"), bins.controller, ctrlArgs...)
		if err := ctrl.waitListening(`"msg":"xds serving"`, 20*time.Second); err != nil {
			t.Fatalf("restart the controller on %s: %v", xdsAddr, err)
		}
		// The ztunnels retry with a backoff capped at 30 s.
		for _, z := range []*ztunnel{z0, z1} {
			eventually(t, 35*time.Second, z.String()+" to reconnect to the controller", func() bool { return z.dump(t).XDS.Connected })
		}
		t.Cleanup(func() { clearPolicy(t, cfg, z1) })
		cfg.write(policyFile, authzYAML("deny-client", "DENY", spec("client").principal()))
		waitServerPolicies(t, z1, "deny-client")
		if err := blocked(client, serverAddr); err != nil {
			t.Errorf("a policy written after the controller came back: %v", err)
		}
		clearPolicy(t, cfg, z1)
		if err := client.Echo(serverAddr, hello(client)); err != nil {
			t.Error(err)
		}
	})

	// A ztunnel restarted while the CA is unreachable (in a cluster the CA
	// is the controller) cannot re-capture its pods at first; it keeps them
	// with their error and captures them once the CA is back.
	t.Run("ztunnel restart while the CA is unreachable", func(t *testing.T) {
		ca.stop()
		t.Cleanup(func() {
			if !refused(ca.addr) {
				return
			}
			ca.start()
		})
		if err := z1.proc.stop(); err != nil {
			t.Errorf("%s exit after SIGTERM: %v", z1, err)
		}
		z1.start()
		time.Sleep(2 * time.Second) // the certificate fetch fails meanwhile
		ca.start()
		waitCaptured(t, map[*ztunnel]map[string]bool{z1: {"server": true}})
		z1.waitReady(t, settle)
		if err := client.Echo(serverAddr, hello(client)); err != nil {
			t.Errorf("after the CA came back: %v", err)
		}
	})

	t.Run("cleanup", func(t *testing.T) {
		procs := []*process{ctrl, z0.proc, z1.proc}
		for _, p := range procs {
			if err := p.stop(); err != nil {
				t.Errorf("%s: %v", p.name, err)
			}
			if err := syscall.Kill(p.cmd.Process.Pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("%s (pid %d) still exists: %v", p.name, p.cmd.Process.Pid, err)
			}
		}
		for _, z := range []*ztunnel{z0, z1} {
			if socks := socketsIn(t, z.dir); len(socks) != 0 {
				t.Errorf("%s left unix sockets: %v", z, socks)
			}
			for _, a := range z.addrs() {
				if !refused(a) {
					t.Errorf("%s: something still listens on %s", z, a)
				}
			}
		}
		if !refused(xdsAddr) {
			t.Errorf("something still listens on the controller's xDS address %s", xdsAddr)
		}
		if err := lab.Close(); err != nil {
			t.Errorf("remove lab: %v", err)
		}
		left, err := filepath.Glob(fmt.Sprintf("/run/netns/%s%d-*", netlab.Prefix, os.Getpid()))
		if err != nil || len(left) != 0 {
			t.Errorf("namespaces left after the lab closed: %v %v", left, err)
		}
	})
	t.Logf("TestMesh took %v", time.Since(begin).Round(time.Millisecond))
}

// waitCaptured waits until each ztunnel's dump shows the pods captured (true)
// or known but not captured (false).
func waitCaptured(t *testing.T, want map[*ztunnel]map[string]bool) {
	t.Helper()
	for z, pods := range want {
		var last string
		eventually(t, settle, z.String()+" capture state", func() bool {
			d := z.dump(t)
			var bad []string
			for name, w := range pods {
				got, reported, lastErr := d.captured(name)
				if !reported || got != w {
					bad = append(bad, fmt.Sprintf("%s captured=%v reported=%v err=%q (want captured=%v)", name, got, reported, lastErr, w))
				}
			}
			last = strings.Join(bad, "; ")
			return len(bad) == 0
		}, func() string { return last })
	}
}

// waitServerPolicies waits until the server's ztunnel lists exactly the
// named policy (in the mesh namespace) for the server workload.
func waitServerPolicies(t *testing.T, z *ztunnel, names ...string) {
	t.Helper()
	var want []string
	for _, n := range names {
		want = append(want, meshNS+"/"+n)
	}
	var last []string
	eventually(t, settle, fmt.Sprintf("server's policies %v", want), func() bool {
		d := z.dump(t)
		last = d.Workloads[meshNS+"/server"].AuthorizationPolicies
		for _, w := range want {
			if _, ok := d.Authorizations[w]; !ok {
				return false
			}
		}
		return slices.Equal(last, want)
	}, func() string { return fmt.Sprintf("server lists %v", last) })
}

func waitServerMode(t *testing.T, z *ztunnel, mode string) {
	t.Helper()
	var last string
	eventually(t, settle, "server's mTLS mode "+mode, func() bool {
		last = z.dump(t).Workloads[meshNS+"/server"].MtlsMode
		return last == mode
	}, func() string { return "mode " + last })
}

// clearPolicy empties the policy file and waits until the server's ztunnel
// has no policy and the default mode for it.
func clearPolicy(t *testing.T, cfg configDir, z *ztunnel) {
	t.Helper()
	cfg.write(policyFile, noPolicy)
	waitServerPolicies(t, z)
	waitServerMode(t, z, "MTLS_MODE_PERMISSIVE")
}

func newMarker(t *testing.T) []byte {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return []byte("AMBIT-PLAINTEXT-MARKER-" + hex.EncodeToString(b) + ";")
}

// captureWhile captures node eth0 (the link to the other node) while fn runs.
func captureWhile(t *testing.T, n *netlab.Node, fn func()) [][]byte {
	t.Helper()
	c, err := startCapture(n, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fn()
	time.Sleep(200 * time.Millisecond) // let the last ACKs and FINs arrive
	frames, err := c.Close()
	if err != nil {
		t.Fatalf("capture: %v", err)
	}
	return frames
}

func framesContaining(frames [][]byte, marker []byte) int {
	n := 0
	for _, f := range frames {
		if bytes.Contains(f, marker) {
			n++
		}
	}
	return n
}

// countFlows counts segments between two pods to/from the application port
// (plain) and HBONE segments carrying payload.
func countFlows(segs []segment, a, b netip.Addr) (plain, hbone int) {
	for _, s := range segs {
		between := (s.src.Addr() == a && s.dst.Addr() == b) || (s.src.Addr() == b && s.dst.Addr() == a)
		if !between {
			continue
		}
		switch {
		case s.src.Port() == echoPort || s.dst.Port() == echoPort:
			plain++
		case (s.src.Port() == 15008 || s.dst.Port() == 15008) && len(s.payload) > 0:
			hbone++
		}
	}
	return plain, hbone
}

// podRules reads ztunnel's nftables rules in the pod.
func podRules(t *testing.T, p *netlab.Pod) (*redirect.Ruleset, error) {
	t.Helper()
	ns, err := redirect.OpenNetns(p.NetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	return redirect.Rules(ctx, ns)
}

// captureTable says whether ztunnel's nftables table is in the pod.
func captureTable(t *testing.T, p *netlab.Pod) bool {
	t.Helper()
	rs, err := podRules(t, p)
	if err != nil {
		t.Fatalf("pod %s: %v", p.Name, err)
	}
	return rs.Installed
}

// checkRulesInstalled checks that ztunnel's nftables table is in the pod.
func checkRulesInstalled(t *testing.T, p *netlab.Pod) {
	t.Helper()
	rs, err := podRules(t, p)
	if err != nil || rs == nil || !rs.Installed || len(rs.Chains) == 0 {
		t.Errorf("pod %s: capture rules gone while its ztunnel is stopped: %+v %v", p.Name, rs, err)
	}
}

// socketsIn lists the unix sockets under dir.
func socketsIn(t *testing.T, dir string) []string {
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSocket != 0 {
			out = append(out, path)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	return out
}
