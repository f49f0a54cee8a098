//go:build netns

package meshbench

import (
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/netlab"
)

// result is what one path measured in one round, or, aggregated over the
// rounds, the median of each figure.
type result struct {
	name     string
	lat      latency
	bulk     float64       // bytes per second (TCP paths)
	cpu      time.Duration // proxy processes' CPU time during the fortio run
	requests int64         // for cpu: requests during the fortio run(s)
	proxies  int
	// HTTP paths only.
	maxQPS   float64       // max-requests/s run (direct, l4, waypoint)
	wpCPU    time.Duration // the waypoint process's CPU time during the fortio run
	wall     time.Duration // duration of the fortio run(s)
	measured bool          // maxQPS was measured
}

func (r result) cpuPer1000() float64 {
	return r.cpu.Seconds() / (float64(r.requests) / 1000)
}

// Paths, in report order.
var (
	tcpPaths  = []string{"direct", "haproxy", "mesh"}
	httpPaths = []string{"http-direct", "http-haproxy-l7", "http-l4", "http-waypoint"}
	// HTTP with a new connection per request, between the same pods.
	connPaths = []string{"conn-direct", "conn-haproxy", "conn-mesh"}
	// gRPC (fortio's ping over h2c), between the same pods.
	grpcPaths = []string{"grpc-direct", "grpc-l4", "grpc-waypoint"}
	allPaths  = [][]string{tcpPaths, httpPaths, connPaths, grpcPaths}
)

// BenchmarkPaths measures the TCP paths (direct, HAProxy pair, mesh) and
// the HTTP paths (direct, L7 HAProxy, mesh L4, mesh through the waypoint)
// between the same two pods in one run (see the package documentation):
// five rounds of every path ($AMBIT_BENCH_ROUNDS sets another number), so
// that the paths interleave in time, and the median round of each figure
// is reported. Within a round each Ambit path runs next to its baseline,
// and every other round runs the paths in reverse order. It runs once
// whatever b.N is: the figures come from fortio and the bulk transfers,
// not from b.N iterations. The report is printed, and also written to the
// file named by $AMBIT_BENCH_REPORT when set.
func BenchmarkPaths(b *testing.B) {
	tier.RequireRoot(b)
	rounds := benchRounds(b)
	selected := benchPaths(b)
	begin := time.Now()
	load0 := loadAvg()
	tl := findTools(b)
	sp := newSpawner(b)
	logDir := b.TempDir()

	lab := netlab.New(b)
	var nodes []*netlab.Node
	for _, name := range []string{"node0", "node1", "node2"} {
		n, err := lab.AddNode(name)
		if err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	n0, n1, n2 := nodes[0], nodes[1], nodes[2]
	client, err := n0.AddPod("client")
	if err != nil {
		b.Fatal(err)
	}
	server, err := n1.AddPod("server")
	if err != nil {
		b.Fatal(err)
	}
	wpPod, err := n2.AddPod(waypointName)
	if err != nil {
		b.Fatal(err)
	}
	specs := []podSpec{
		{name: "client", node: n0.Name, ip: client.IP, netns: client.NetnsPath()},
		{name: "server", node: n1.Name, ip: server.IP, netns: server.NetnsPath()},
	}
	wpSpec := podSpec{name: waypointName, node: n2.Name, ip: wpPod.IP, netns: wpPod.NetnsPath()}

	// The applications in the server pod: fortio's TCP echo, its HTTP echo
	// and the sink.
	sp.start(b, server.Start, "fortio-tcp-echo", logDir, tl.fortio, "tcp-echo", "-tcp-port", fmt.Sprint(echoPort))
	sp.start(b, server.Start, "fortio-http-echo", logDir, tl.fortio, "server", "-http-port", fmt.Sprint(httpPort),
		"-grpc-port", fmt.Sprint(grpcPort), "-redirect-port", "disabled", "-tcp-port", "disabled", "-udp-port", "disabled")
	serveSink(b, server)

	// The mesh runs from the start, with the namespace not enrolled: its
	// idle cost is present in every path, and it captures the pods only for
	// the mesh paths of each round. The waypoint (a pod of node2, not
	// captured: the deployer labels it ambit.dev/dataplane-mode=none) runs
	// throughout as well.
	mca := startCA(b, b.TempDir(), append(slices.Clone(specs), wpSpec), []string{n0.Name, n1.Name})
	cfg := configDir(b.TempDir())
	cfg.write(b, "00-namespace.yaml", namespaceYAML(false))
	cfg.write(b, "10-pods.yaml", podsYAML(specs))
	cfg.write(b, "20-waypoint.yaml", waypointYAML(wpSpec, specs[1]))
	xdsAddr := hostAddr(b, 1, 15010)
	sp.start(b, nil, "controller", logDir, tl.controller, "--config-dir", string(cfg), "--xds-listen", xdsAddr)
	z0 := startZtunnel(b, sp, tl.ztunnel, n0.Name, 10, xdsAddr, mca)
	z1 := startZtunnel(b, sp, tl.ztunnel, n1.Name, 11, xdsAddr, mca)
	z0.report(b, specs[0])
	z1.report(b, specs[1])
	wp := startWaypoint(b, sp, tl.waypoint, wpPod, xdsAddr, mca)
	echoDst, sinkDst := addrPort(server.IP, echoPort), addrPort(server.IP, sinkPort)
	httpDirect := "http://" + addrPort(server.IP, httpPort) + httpPath
	httpWaypoint := "http://" + addrPort(httpVIP, httpServicePort) + httpPath
	grpcDirect, grpcWaypoint := addrPort(server.IP, grpcPort), addrPort(grpcVIP, grpcServicePort)
	capture := func(on bool) {
		cfg.write(b, "00-namespace.yaml", namespaceYAML(on))
		z0.waitCaptured(b, "client", on)
		z1.waitCaptured(b, "server", on)
		waitEcho(b, client, echoDst)
		waitHTTP(b, client, httpDirect)
		if on {
			waitHTTP(b, client, httpWaypoint)
			if selected["grpc-waypoint"] {
				waitGRPC(b, sp, tl.fortio, client, logDir, grpcWaypoint)
			}
		}
	}
	capture(false)
	wp.waitReady(b)

	// The HAProxy pair runs through every round (it is used only while
	// the pods are not captured), as does the L7 HAProxy in the waypoint's
	// pod.
	hp := startHAProxyPair(b, sp, tl.haproxy, client, server)
	hpEcho, hpSink := fmt.Sprintf("127.0.0.1:%d", haproxyEchoIn), fmt.Sprintf("127.0.0.1:%d", haproxySinkIn)
	waitEcho(b, client, hpEcho)
	httpPair := fmt.Sprintf("http://127.0.0.1:%d%s", haproxyHTTPIn, httpPath)
	waitHTTP(b, client, httpPair)
	hl7 := startHAProxyL7(b, sp, tl.haproxy, wpPod, server)
	httpHAProxy := "http://" + addrPort(wpPod.IP, haproxyL7Port) + httpPath
	waitHTTP(b, client, httpHAProxy)

	zt := []*process{z0.proc, z1.proc}
	// ztMemory is the larger VmRSS and VmHWM of the two ztunnels.
	ztMemory := func() (rss, hwm int64) {
		for _, p := range zt {
			r, h := memory(b, p.pid())
			rss, hwm = max(rss, r), max(hwm, h)
		}
		return rss, hwm
	}

	// ambit: the path runs through Ambit's processes (the ztunnels).
	ambit := func(procs []*process) bool { return slices.Contains(procs, z0.proc) }
	measure := func(round int, name, echo, sink string, procs []*process) result {
		r := result{name: name, proxies: len(procs)}
		var c0 time.Duration
		r.lat = steady(b, ambit(procs), func() { c0 = cpuTimes(b, procs) }, func() latency {
			return runFortio(b, sp, tl.fortio, client, logDir, fortioRun{name: fmt.Sprintf("%s-%d", name, round),
				target: "tcp://" + echo, qps: loadQPS, conns: loadConns, dur: loadDuration})
		})
		r.cpu = cpuTimes(b, procs) - c0
		r.requests = r.lat.requests
		r.bulk = bulk(b, client, sink)
		return r
	}
	// measureHTTP runs the fixed-rate HTTP load and, with maxRun, the
	// max-requests/s run after it (not part of the CPU figures; its
	// requests are added up in maxRequests).
	maxRequests := map[string]int64{}
	measureHTTP := func(round int, name, url string, procs []*process, maxRun bool) result {
		r := result{name: name, proxies: len(procs)}
		var c0, w0 time.Duration
		var t0 time.Time
		r.lat = steady(b, ambit(procs), func() { c0, w0, t0 = cpuTimes(b, procs), cpuTime(b, wp.proc.pid()), time.Now() }, func() latency {
			return runFortio(b, sp, tl.fortio, client, logDir, fortioRun{name: fmt.Sprintf("%s-%d", name, round),
				target: url, qps: loadQPS, conns: loadConns, dur: loadDuration})
		})
		r.wall = time.Since(t0)
		r.cpu = cpuTimes(b, procs) - c0
		r.wpCPU = cpuTime(b, wp.proc.pid()) - w0
		r.requests = r.lat.requests
		if maxRun {
			m := runFortio(b, sp, tl.fortio, client, logDir, fortioRun{name: fmt.Sprintf("%s-max-%d", name, round),
				target: url, conns: maxConns, dur: maxDuration})
			if m.short != "" {
				b.Fatal(m.short) // not one request
			}
			r.maxQPS, r.measured = m.qps, true
			maxRequests[name] += m.requests
		}
		return r
	}
	// measureConns runs the HTTP load with a new connection per request.
	measureConns := func(round int, name, url string, procs []*process) result {
		r := result{name: name, proxies: len(procs)}
		var c0 time.Duration
		r.lat = steady(b, ambit(procs), func() { c0 = cpuTimes(b, procs) }, func() latency {
			return runFortio(b, sp, tl.fortio, client, logDir, fortioRun{name: fmt.Sprintf("%s-%d", name, round),
				target: url, qps: connQPS, conns: loadConns, dur: loadDuration, newConns: true})
		})
		r.cpu = cpuTimes(b, procs) - c0
		r.requests = r.lat.requests
		return r
	}
	// measureGRPC runs the fixed-rate gRPC load.
	measureGRPC := func(round int, name, target string, procs []*process) result {
		r := result{name: name, proxies: len(procs)}
		var c0, w0 time.Duration
		var t0 time.Time
		r.lat = steady(b, ambit(procs), func() { c0, w0, t0 = cpuTimes(b, procs), cpuTime(b, wp.proc.pid()), time.Now() }, func() latency {
			return runFortio(b, sp, tl.fortio, client, logDir, fortioRun{name: fmt.Sprintf("%s-%d", name, round),
				target: target, qps: loadQPS, conns: loadConns, dur: loadDuration, grpc: true})
		})
		r.wall = time.Since(t0)
		r.cpu = cpuTimes(b, procs) - c0
		r.wpCPU = cpuTime(b, wp.proc.pid()) - w0
		r.requests = r.lat.requests
		return r
	}
	clientID := fmt.Sprintf(`source_principal="spiffe://%s/ns/%s/sa/client"`, trustDomain, benchNS)
	wpID := fmt.Sprintf(`source_principal="spiffe://%s/ns/%s/sa/%s"`, trustDomain, benchNS, waypointName)
	wpServed := func() float64 {
		return wp.requests(b, clientID, `destination_workload="server"`, `response_code="200"`)
	}

	// The paths of a round, in order; odd rounds run them in reverse, so
	// that each Ambit path and its baseline (the mesh and the HAProxy pair,
	// the waypoint and the L7 HAProxy) run next to each other and neither
	// always comes first. captured: the path needs the pods in the mesh;
	// the namespace is enrolled or released between paths as needed (three
	// times a round).
	type step struct {
		name     string
		captured bool
		run      func(round int) result
	}
	schedule := []step{
		{"direct", false, func(round int) result { return measure(round, "direct", echoDst, sinkDst, nil) }},
		{"haproxy", false, func(round int) result { return measure(round, "haproxy", hpEcho, hpSink, hp) }},
		{"mesh", true, func(round int) result {
			tunnels0 := z1.mtlsConnections(b)
			r := measure(round, "mesh", echoDst, sinkDst, zt)
			if got := z1.mtlsConnections(b) - tunnels0; got < loadConns+1 {
				b.Fatalf("round %d: the server's ztunnel accepted %v mutual-TLS tunnels during the mesh path, want at least %d: traffic bypassed the mesh", round, got, loadConns+1)
			}
			return r
		}},
		// http-l4: tunnels from the client's identity, none through the
		// waypoint.
		{"http-l4", true, func(round int) result {
			tunnels0, served0 := z1.mtlsConnections(b, clientID), wp.requests(b)
			r := measureHTTP(round, "http-l4", httpDirect, zt, true)
			if got := z1.mtlsConnections(b, clientID) - tunnels0; got < loadConns {
				b.Fatalf("round %d: the server's ztunnel accepted %v mutual-TLS tunnels from the client during http-l4, want at least %d: traffic bypassed the mesh", round, got, loadConns)
			}
			if got := wp.requests(b) - served0; got != 0 {
				b.Fatalf("round %d: the waypoint served %v requests during http-l4, want none", round, got)
			}
			return r
		}},
		// http-waypoint: every request counted by the waypoint as coming
		// from the client's identity and answered 200 by the server pod.
		{"http-waypoint", true, func(round int) result {
			served0, before := wpServed(), maxRequests["http-waypoint"]
			r := measureHTTP(round, "http-waypoint", httpWaypoint, []*process{z0.proc, z1.proc, wp.proc}, true)
			want := float64(r.lat.requests + maxRequests["http-waypoint"] - before)
			if got := wpServed() - served0; got < want {
				b.Fatalf("round %d: the waypoint counted %v requests from the client answered 200 by the server during http-waypoint, want at least %v (fortio's): traffic bypassed the waypoint", round, got, want)
			}
			if got := z1.mtlsConnections(b, wpID); got < 1 {
				b.Fatalf("round %d: the server's ztunnel never accepted a tunnel from the waypoint", round)
			}
			return r
		}},
		// grpc-l4: to the server pod's address, through both ztunnels only;
		// grpc-waypoint: to the Service, every call counted by the waypoint
		// as gRPC from the client.
		{"grpc-l4", true, func(round int) result {
			served0 := wp.requests(b)
			r := measureGRPC(round, "grpc-l4", grpcDirect, zt)
			if got := wp.requests(b) - served0; got != 0 {
				b.Fatalf("round %d: the waypoint served %v requests during grpc-l4, want none", round, got)
			}
			return r
		}},
		{"grpc-waypoint", true, func(round int) result {
			grpcServed := func() float64 {
				return wp.requests(b, clientID, `destination_service_name="grpc"`, `request_protocol="grpc"`)
			}
			served0 := grpcServed()
			r := measureGRPC(round, "grpc-waypoint", grpcWaypoint, []*process{z0.proc, z1.proc, wp.proc})
			if got := grpcServed() - served0; got < float64(r.lat.requests) {
				b.Fatalf("round %d: the waypoint counted %v gRPC calls from the client during grpc-waypoint, want at least %d (fortio's): traffic bypassed the waypoint", round, got, r.lat.requests)
			}
			return r
		}},
		{"http-direct", false, func(round int) result { return measureHTTP(round, "http-direct", httpDirect, nil, true) }},
		{"grpc-direct", false, func(round int) result { return measureGRPC(round, "grpc-direct", grpcDirect, nil) }},
		{"http-haproxy-l7", false, func(round int) result {
			return measureHTTP(round, "http-haproxy-l7", httpHAProxy, []*process{hl7}, false)
		}},
		{"conn-direct", false, func(round int) result { return measureConns(round, "conn-direct", httpDirect, nil) }},
		{"conn-haproxy", false, func(round int) result { return measureConns(round, "conn-haproxy", httpPair, hp) }},
		// conn-mesh: every connection a tunnel of its own (a stream of the
		// pooled HBONE connection).
		{"conn-mesh", true, func(round int) result {
			tunnels0 := z1.mtlsConnections(b, clientID)
			stopProfiles := profileZtunnels(b, round, "conn-mesh", z0, z1)
			r := measureConns(round, "conn-mesh", httpDirect, zt)
			stopProfiles()
			if got := z1.mtlsConnections(b, clientID) - tunnels0; got < float64(r.lat.requests) {
				b.Fatalf("round %d: the server's ztunnel accepted %v tunnels from the client during conn-mesh, want at least %d (one per request): traffic bypassed the mesh", round, got, r.lat.requests)
			}
			return r
		}},
	}

	schedule = slices.DeleteFunc(schedule, func(st step) bool { return !selected[st.name] })

	perRound := map[string][]result{}
	captured, captures := false, 0
	// Where the ztunnels' peak memory rises: after each round, and how
	// much during each path (or enrolment, or release).
	var roundHWM []int64
	hwmRise := map[string]int64{}
	_, hwm0 := ztMemory()
	rise := func(what string) {
		_, h := ztMemory()
		hwmRise[what] += h - hwm0
		hwm0 = h
	}
	for round := range rounds {
		order := slices.Clone(schedule)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, st := range order {
			if st.captured != captured {
				capture(st.captured)
				captured = st.captured
				if captured {
					captures++
					rise("enrolment")
				} else {
					rise("release")
				}
			}
			perRound[st.name] = append(perRound[st.name], st.run(round))
			rise(st.name)
		}
		roundHWM = append(roundHWM, hwm0)
	}
	rss, hwm := ztMemory()
	wpRSS, wpHWM := memory(b, wp.proc.pid())
	d := reportData{rounds: rounds, perRound: perRound, results: map[string]result{}, ztRSS: rss, ztHWM: hwm, captures: captures, roundHWM: roundHWM, hwmRise: hwmRise,
		wpRSS: wpRSS, wpHWM: wpHWM, load0: load0, load1: loadAvg(), took: time.Since(begin)}
	for name, rs := range perRound {
		d.results[name] = median(rs)
	}

	rep := report(d)
	fmt.Print(rep)
	if path := os.Getenv("AMBIT_BENCH_REPORT"); path != "" {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(rep), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(0, "ns/op")
	for _, group := range allPaths {
		base := d.results[group[0]]
		for _, name := range group[1:] {
			r, ok := d.results[name]
			if !ok {
				continue
			}
			b.ReportMetric(float64(r.lat.p50-base.lat.p50)/1e3, r.name+"-p50-added-µs")
			b.ReportMetric(float64(r.lat.p99-base.lat.p99)/1e3, r.name+"-p99-added-µs")
			if r.bulk > 0 {
				b.ReportMetric(r.bulk/base.bulk, r.name+"-bulk/direct")
			}
			b.ReportMetric(r.cpuPer1000(), r.name+"-cpu-s/1000req")
		}
		for _, name := range group {
			if r, ok := d.results[name]; ok && r.measured {
				b.ReportMetric(r.maxQPS, r.name+"-max-req/s")
			}
		}
	}
	b.ReportMetric(float64(rss)/(1<<20), "ztunnel-rss-MiB")
	b.ReportMetric(float64(hwm)/(1<<20), "ztunnel-hwm-MiB")
	b.ReportMetric(float64(roundHWM[0])/(1<<20), "ztunnel-hwm-first-round-MiB")
	if w, ok := d.results["http-waypoint"]; ok {
		b.ReportMetric(w.wpCPU.Seconds()/w.wall.Seconds(), "waypoint-vCPU")
		b.ReportMetric(w.wpCPU.Seconds()/(float64(w.requests)/1000), "waypoint-cpu-s/1000req")
		if l4, ok := d.results["http-l4"]; ok {
			b.ReportMetric(float64(w.lat.p50-l4.lat.p50)/1e3, "waypoint-p50-share-µs")
		}
	}
	b.ReportMetric(float64(wpHWM)/(1<<20), "waypoint-hwm-MiB")
}

// benchPaths is the set of paths named by $AMBIT_BENCH_PATHS (a
// comma-separated list), or every path. A path's baseline (the first path
// of its group: direct, http-direct, conn-direct) must be in the list.
func benchPaths(b *testing.B) map[string]bool {
	all := slices.Concat(allPaths...)
	v := os.Getenv("AMBIT_BENCH_PATHS")
	sel, err := parsePaths(v)
	if err != nil {
		b.Fatalf("AMBIT_BENCH_PATHS=%q: %v (the paths: %s)", v, err, strings.Join(all, ", "))
	}
	return sel
}

// parsePaths parses a comma-separated list of path names; empty is every
// path.
func parsePaths(v string) (map[string]bool, error) {
	sel := map[string]bool{}
	groups := allPaths
	if strings.TrimSpace(v) == "" {
		for _, g := range groups {
			for _, name := range g {
				sel[name] = true
			}
		}
		return sel, nil
	}
	for f := range strings.SplitSeq(v, ",") {
		name := strings.TrimSpace(f)
		if !slices.ContainsFunc(groups, func(g []string) bool { return slices.Contains(g, name) }) {
			return nil, fmt.Errorf("unknown path %q", name)
		}
		sel[name] = true
	}
	for _, g := range groups {
		for _, name := range g[1:] {
			if sel[name] && !sel[g[0]] {
				return nil, fmt.Errorf("%s needs its baseline %s in the list", name, g[0])
			}
		}
	}
	return sel, nil
}

// median aggregates rounds: each percentile, the throughput and the
// max-requests/s are the median over the rounds; CPU is the total over the
// total requests.
func median(rs []result) result {
	mid := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		return middle(v)
	}
	m := result{name: rs[0].name, proxies: rs[0].proxies, measured: rs[0].measured}
	m.lat.p50 = time.Duration(mid(func(r result) float64 { return float64(r.lat.p50) }))
	m.lat.p90 = time.Duration(mid(func(r result) float64 { return float64(r.lat.p90) }))
	m.lat.p99 = time.Duration(mid(func(r result) float64 { return float64(r.lat.p99) }))
	m.bulk = mid(func(r result) float64 { return r.bulk })
	m.maxQPS = mid(func(r result) float64 { return r.maxQPS })
	for _, r := range rs {
		m.lat.requests += r.lat.requests
		m.requests += r.requests
		m.cpu += r.cpu
		m.wpCPU += r.wpCPU
		m.wall += r.wall
	}
	return m
}

// Goals (docs/reference/benchmarks.md).
const (
	goalBulkShare   = 0.30     // mesh single-stream throughput vs direct
	goalRSS         = 30 << 20 // ztunnel VmHWM
	goalL7Factor    = 3        // the waypoint vs the L7 HAProxy: added p50, CPU per 1000 requests
	goalWaypointCPU = 0.25     // waypoint vCPU at loadQPS
	goalWaypointMem = 60e6     // waypoint VmHWM, bytes (60 MB)
)

// reportData is what the report shows.
type reportData struct {
	rounds       int
	results      map[string]result // median of the rounds
	perRound     map[string][]result
	ztRSS, ztHWM int64
	captures     int              // times the pods were enrolled
	roundHWM     []int64          // ztunnel VmHWM after each round (one at least)
	hwmRise      map[string]int64 // how much ztunnel's VmHWM rose during each path, enrolment or release
	wpRSS, wpHWM int64
	load0, load1 string
	took         time.Duration
}

// report renders the tables and the goals.
func report(d reportData) string {
	var s strings.Builder
	fmt.Fprintf(&s, "\nAmbit data-plane benchmark (integration/meshbench), %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&s, "load: fortio, %d B requests, %d qps, %d connections, -uniform -nocatchup -r 0.00001, %v per path and round; TCP: echo; HTTP: POST echoed by fortio's HTTP server; bulk: %d MiB single stream; max req/s: -qps 0 -c %d for %v\n",
		payloadSize, loadQPS, loadConns, loadDuration, bulkBytes>>20, maxConns, maxDuration)
	which := "every path"
	if len(d.perRound) < len(slices.Concat(allPaths...)) {
		which = "the paths " + strings.Join(d.ranOf(slices.Concat(allPaths...)), ", ")
	}
	fmt.Fprintf(&s, "%d rounds of %s (every other round in reverse order); each figure is the median round (CPU: total over all rounds)\n", d.rounds, which)
	fmt.Fprintf(&s, "machine: %d CPUs; load average before %s, after %s; took %v\n\n", runtime.NumCPU(), d.load0, d.load1, d.took.Round(time.Second))
	us := func(t time.Duration) string { return fmt.Sprintf("%.0f", float64(t)/1e3) }
	added := func(r, base result) (string, string) {
		if r.name == base.name {
			return "–", "–"
		}
		return us(r.lat.p50 - base.lat.p50), us(r.lat.p99 - base.lat.p99)
	}
	cpu := func(r result) string {
		if r.proxies == 0 {
			return "–"
		}
		unit := "processes"
		if r.proxies == 1 {
			unit = "process"
		}
		return fmt.Sprintf("%.3f (%d %s)", r.cpuPer1000(), r.proxies, unit)
	}
	// row is a table row's first columns: path, requests, percentiles and
	// what the path adds to base.
	row := func(r, base result) string {
		a50, a99 := added(r, base)
		return fmt.Sprintf("| %s | %d | %s | %s | %s | %s | %s |", r.name, r.lat.requests,
			us(r.lat.p50), us(r.lat.p90), us(r.lat.p99), a50, a99)
	}
	rs := d.results
	direct := rs["direct"]
	if d.ran("direct") {
		fmt.Fprintf(&s, "TCP:\n\n| path | requests | p50 µs | p90 µs | p99 µs | p50 added | p99 added | bulk MB/s | bulk vs direct | proxy CPU-s per 1000 req |\n")
		fmt.Fprintf(&s, "|---|---|---|---|---|---|---|---|---|---|\n")
		for _, name := range d.ranOf(tcpPaths) {
			r := rs[name]
			fmt.Fprintf(&s, "%s %.0f | %.0f%% | %s |\n", row(r, direct), r.bulk/1e6, 100*r.bulk/direct.bulk, cpu(r))
		}
		fmt.Fprintln(&s)
	}
	hd := rs["http-direct"]
	if d.ran("http-direct") {
		fmt.Fprintf(&s, "HTTP:\n\n| path | requests | p50 µs | p90 µs | p99 µs | p50 added | p99 added | proxy CPU-s per 1000 req | max req/s |\n")
		fmt.Fprintf(&s, "|---|---|---|---|---|---|---|---|---|\n")
		for _, name := range d.ranOf(httpPaths) {
			r := rs[name]
			maxQPS := "–"
			if r.measured {
				maxQPS = fmt.Sprintf("%.0f", r.maxQPS)
			}
			fmt.Fprintf(&s, "%s %s | %s |\n", row(r, hd), cpu(r), maxQPS)
		}
		fmt.Fprintln(&s)
	}
	cd := rs["conn-direct"]
	if d.ran("conn-direct") {
		fmt.Fprintf(&s, "HTTP, a new connection per request (%d connections/s, fortio -keepalive=false; the HAProxy pair with its default TLS settings: a TLS connection per connection, session reuse on; ztunnel: a stream on its pooled HBONE connection):\n\n", connQPS)
		fmt.Fprintf(&s, "| path | connections | p50 µs | p90 µs | p99 µs | p50 added | p99 added | proxy CPU-s per 1000 connections |\n")
		fmt.Fprintf(&s, "|---|---|---|---|---|---|---|---|\n")
		for _, name := range d.ranOf(connPaths) {
			fmt.Fprintf(&s, "%s %s |\n", row(rs[name], cd), cpu(rs[name]))
		}
		fmt.Fprintln(&s)
	}
	gd := rs["grpc-direct"]
	if d.ran("grpc-direct") {
		fmt.Fprintf(&s, "gRPC (fortio -grpc -ping: a unary call with a %d B payload, echoed; h2c, %d connections; the waypoint routes it as gRPC):\n\n", payloadSize, loadConns)
		fmt.Fprintf(&s, "| path | calls | p50 µs | p90 µs | p99 µs | p50 added | p99 added | proxy CPU-s per 1000 calls |\n")
		fmt.Fprintf(&s, "|---|---|---|---|---|---|---|---|\n")
		for _, name := range d.ranOf(grpcPaths) {
			fmt.Fprintf(&s, "%s %s |\n", row(rs[name], gd), cpu(rs[name]))
		}
		fmt.Fprintln(&s)
	}
	fmt.Fprintf(&s, "rounds (p50 / p99 µs, then bulk MB/s or max req/s):\n")
	var behindLines []string
	var steals []float64
	for _, name := range d.ranOf(slices.Concat(allPaths...)) {
		fmt.Fprintf(&s, "- %-15s", name)
		var behind []string
		for i, x := range d.perRound[name] {
			extra := ""
			switch {
			case x.bulk > 0:
				extra = fmt.Sprintf(", %.0f", x.bulk/1e6)
			case x.measured:
				extra = fmt.Sprintf(", %.0f", x.maxQPS)
			}
			if x.lat.behind {
				extra += fmt.Sprintf(" (behind the rate: %d requests)", x.lat.requests)
				behind = append(behind, strconv.Itoa(i+1))
			}
			if x.lat.steal >= highSteal {
				extra += fmt.Sprintf(" (steal %.0f %%)", 100*x.lat.steal)
			}
			steals = append(steals, 100*x.lat.steal)
			fmt.Fprintf(&s, " [%d] %s / %s%s;", i+1, us(x.lat.p50), us(x.lat.p99), extra)
		}
		fmt.Fprintln(&s)
		if len(behind) > 0 {
			behindLines = append(behindLines, fmt.Sprintf("%s fell behind the rate (under 90 %% of its requests on three attempts) in round %s: its figures there are those of the requests it made\n",
				name, strings.Join(behind, ", ")))
		}
	}
	for _, l := range behindLines {
		s.WriteString(l)
	}
	if len(steals) > 0 {
		fmt.Fprintf(&s, "steal (CPU time the hypervisor took from this machine) during the fixed-rate runs: median %.1f %%, max %.1f %%; rounds at %.0f %% or more are marked\n",
			middle(slices.Clone(steals)), slices.Max(steals), 100*highSteal)
	}
	fmt.Fprintf(&s, "\nztunnel memory (the larger of the two): VmRSS %.1f MiB, VmHWM %.1f MiB at the end (after %d enrolment%s of the pods); VmHWM %.1f MiB after the first round\n",
		float64(d.ztRSS)/(1<<20), float64(d.ztHWM)/(1<<20), d.captures, plural(d.captures), float64(d.roundHWM[0])/(1<<20))
	fmt.Fprintf(&s, "ztunnel VmHWM after each round (MiB):")
	for _, h := range d.roundHWM {
		fmt.Fprintf(&s, " %.1f", float64(h)/(1<<20))
	}
	var rises []string
	for _, what := range slices.Sorted(maps.Keys(d.hwmRise)) {
		if r := d.hwmRise[what]; r > 0 {
			rises = append(rises, fmt.Sprintf("%s %.1f", what, float64(r)/(1<<20)))
		}
	}
	if len(rises) == 0 {
		rises = []string{"none"}
	}
	fmt.Fprintf(&s, "; it rose during (MiB, from the start of the first round): %s\n", strings.Join(rises, ", "))
	w, l4, hl7 := rs["http-waypoint"], rs["http-l4"], rs["http-haproxy-l7"]
	wpVCPU := w.wpCPU.Seconds() / w.wall.Seconds()
	wpCPU := w.wpCPU.Seconds() / (float64(w.requests) / 1000)
	if d.ran("http-waypoint") {
		fmt.Fprintf(&s, "waypoint: VmRSS %.1f MiB, VmHWM %.1f MiB (%.1f MB) at the end; the waypoint process alone: %.3f CPU-s per 1000 req, %.3f vCPU at %d req/s\n",
			float64(d.wpRSS)/(1<<20), float64(d.wpHWM)/(1<<20), float64(d.wpHWM)/1e6, wpCPU, wpVCPU, loadQPS)
	} else {
		fmt.Fprintf(&s, "waypoint (idle: its path did not run): VmRSS %.1f MiB, VmHWM %.1f MiB at the end\n", float64(d.wpRSS)/(1<<20), float64(d.wpHWM)/(1<<20))
	}
	if d.ran("http-waypoint", "http-l4") {
		fmt.Fprintf(&s, "the waypoint's share (http-waypoint minus http-l4): p50 %s µs, p99 %s µs, %.3f CPU-s per 1000 req\n",
			us(w.lat.p50-l4.lat.p50), us(w.lat.p99-l4.lat.p99), w.cpuPer1000()-l4.cpuPer1000())
	}
	if gw, gl4 := rs["grpc-waypoint"], rs["grpc-l4"]; d.ran("grpc-waypoint", "grpc-l4") {
		fmt.Fprintf(&s, "the waypoint's share for gRPC (grpc-waypoint minus grpc-l4): p50 %s µs, p99 %s µs; the waypoint process alone: %.3f CPU-s per 1000 calls, %.3f vCPU at %d calls/s\n",
			us(gw.lat.p50-gl4.lat.p50), us(gw.lat.p99-gl4.lat.p99), gw.wpCPU.Seconds()/(float64(gw.requests)/1000), gw.wpCPU.Seconds()/gw.wall.Seconds(), loadQPS)
	}
	fmt.Fprintln(&s)
	goal := func(ok bool, text string, args ...any) {
		verdict := "NOT MET"
		if ok {
			verdict = "met"
		}
		fmt.Fprintf(&s, "- %-7s %s\n", verdict, fmt.Sprintf(text, args...))
	}
	h, m := rs["haproxy"], rs["mesh"]
	// Round by round (each round has its own direct baseline): how often
	// the mesh added less than the pair, and by how much (mesh added minus
	// pair added: negative is the mesh ahead), and whether the hypervisor
	// took the CPUs during either run.
	diffs := func(mesh, pair string, pct func(latency) time.Duration) []pairedRound {
		var ps []pairedRound
		for i := range d.perRound[mesh] {
			ml, pl := d.perRound[mesh][i].lat, d.perRound[pair][i].lat
			ps = append(ps, pairedRound{pct(ml) - pct(pl), max(ml.steal, pl.steal) >= highSteal})
		}
		return ps
	}
	p50 := func(l latency) time.Duration { return l.p50 }
	p99 := func(l latency) time.Duration { return l.p99 }
	var r50, r99 []pairedRound
	if d.ran("mesh", "haproxy") {
		r50, r99 = diffs("mesh", "haproxy", p50), diffs("mesh", "haproxy", p99)
		fmt.Fprintf(&s, "mesh vs the HAProxy pair, round by round: %s; %s\n", pairedSummary("p50", r50), pairedSummary("p99", r99))
		if c50 := calm(r50); len(c50) < len(r50) {
			fmt.Fprintf(&s, "  without the %d rounds where either ran under steal: %s; %s\n",
				len(r50)-len(c50), pairedSummary("p50", c50), pairedSummary("p99", calm(r99)))
		}
	}
	cm, ch := rs["conn-mesh"], rs["conn-haproxy"]
	if d.ran("conn-mesh", "conn-haproxy") {
		fmt.Fprintf(&s, "a new connection per request, mesh vs the HAProxy pair: p50 added %s vs %s µs, p99 added %s vs %s µs, CPU %.3f vs %.3f per 1000 connections; round by round: %s; %s\n",
			us(cm.lat.p50-cd.lat.p50), us(ch.lat.p50-cd.lat.p50), us(cm.lat.p99-cd.lat.p99), us(ch.lat.p99-cd.lat.p99),
			cm.cpuPer1000(), ch.cpuPer1000(),
			pairedSummary("p50", diffs("conn-mesh", "conn-haproxy", p50)), pairedSummary("p99", diffs("conn-mesh", "conn-haproxy", p99)))
	}
	wShare, hAdded := w.lat.p50-l4.lat.p50, hl7.lat.p50-hd.lat.p50
	if d.ran("http-waypoint", "http-haproxy-l7") {
		fmt.Fprintf(&s, "the whole waypoint path (both ztunnels and the waypoint) vs the L7 HAProxy: p50 added %s vs %s µs (%.1fx), CPU %.3f vs %.3f (%.1fx)\n",
			us(w.lat.p50-hd.lat.p50), us(hAdded), float64(w.lat.p50-hd.lat.p50)/float64(hAdded), w.cpuPer1000(), hl7.cpuPer1000(), w.cpuPer1000()/hl7.cpuPer1000())
	}
	fmt.Fprintf(&s, "\ngoals (the latency goals by the paired rounds: docs/reference/benchmarks.md, Goals):\n")
	if d.ran("mesh", "haproxy") {
		for _, g := range []struct {
			what string
			ps   []pairedRound
			m, h time.Duration
		}{{"p50", r50, m.lat.p50 - direct.lat.p50, h.lat.p50 - direct.lat.p50}, {"p99", r99, m.lat.p99 - direct.lat.p99, h.lat.p99 - direct.lat.p99}} {
			ok, why := pairedLead(g.ps)
			goal(ok, "mesh adds less %s latency than the HAProxy pair: %s (medians of the rounds %s vs %s µs)", g.what, why, us(g.m), us(g.h))
		}
		goal(m.cpuPer1000() < h.cpuPer1000(), "mesh uses fewer CPU seconds per 1000 requests than the HAProxy pair: %.3f vs %.3f",
			m.cpuPer1000(), h.cpuPer1000())
	}
	if d.ran("mesh") {
		goal(m.bulk >= goalBulkShare*direct.bulk, "mesh single-stream throughput >= %.0f%% of direct: %.0f%%", 100*goalBulkShare, 100*m.bulk/direct.bulk)
	}
	if d.captures > 0 {
		goal(d.ztHWM < goalRSS, "ztunnel < %d MiB RSS (peak, VmHWM): %.1f MiB", goalRSS>>20, float64(d.ztHWM)/(1<<20))
	}
	if d.ran("http-waypoint", "http-l4", "http-haproxy-l7") {
		goal(wShare <= goalL7Factor*hAdded, "the waypoint adds at most %dx the p50 latency the L7 HAProxy adds: %s µs (http-waypoint minus http-l4) vs %s µs (%.1fx)",
			goalL7Factor, us(wShare), us(hAdded), float64(wShare)/float64(hAdded))
	}
	if d.ran("http-waypoint", "http-haproxy-l7") {
		goal(wpCPU <= goalL7Factor*hl7.cpuPer1000(), "the waypoint uses at most %dx the CPU per 1000 requests of the L7 HAProxy: %.3f vs %.3f (%.1fx; the waypoint process alone)",
			goalL7Factor, wpCPU, hl7.cpuPer1000(), wpCPU/hl7.cpuPer1000())
	}
	if d.ran("http-waypoint") {
		goal(wpVCPU < goalWaypointCPU, "waypoint < %.2f vCPU at %d req/s: %.3f", goalWaypointCPU, loadQPS, wpVCPU)
		goal(float64(d.wpHWM) < goalWaypointMem, "waypoint < %.0f MB (peak, VmHWM): %.1f MB", goalWaypointMem/1e6, float64(d.wpHWM)/1e6)
	}
	return s.String()
}

// plural is "s" unless n is 1.
func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// ran reports whether every one of the paths ran.
func (d reportData) ran(names ...string) bool {
	for _, n := range names {
		if len(d.perRound[n]) == 0 {
			return false
		}
	}
	return true
}

// ranOf is the paths of names that ran, in order.
func (d reportData) ranOf(names []string) []string {
	return slices.DeleteFunc(slices.Clone(names), func(n string) bool { return !d.ran(n) })
}

// Issue 5's latency goal, judged on the paired rounds (decided before the
// runs it judges: docs/reference/benchmarks.md, Goals): the mesh is ahead
// when a one-sided sign test over the rounds is below leadSignificance and
// the median per-round difference is below zero.
const leadSignificance = 0.05

// pairedLead judges the latency goal on per-round differences and says why.
func pairedLead(ps []pairedRound) (bool, string) {
	if len(ps) == 0 {
		return false, "no rounds"
	}
	v, ahead, ties := tally(ps)
	p, med := signTest(ahead, len(ps)-ties), middle(v)
	cmp := "<"
	if p >= leadSignificance {
		cmp = ">="
	}
	why := fmt.Sprintf("ahead in %d of %d rounds, sign test p = %.3f %s %.2f, median per-round difference %+.0f µs", ahead, len(ps), p, cmp, leadSignificance, med)
	return p < leadSignificance && med < 0, why
}

// pairedRound is one round's difference of the mesh's added latency minus
// the pair's (each round's direct baseline cancels out; negative: the mesh
// ahead), and whether either run had a high steal share.
type pairedRound struct {
	d     time.Duration
	steal bool
}

// calm is ps without the rounds under steal.
func calm(ps []pairedRound) []pairedRound {
	return slices.DeleteFunc(slices.Clone(ps), func(p pairedRound) bool { return p.steal })
}

// pairedSummary describes per-round differences: in how many rounds the
// mesh was ahead, how unlikely that many is if neither path were faster
// (a one-sided sign test), the median difference and its range.
func pairedSummary(what string, ps []pairedRound) string {
	if len(ps) == 0 {
		return what + ": no rounds"
	}
	v, ahead, ties := tally(ps)
	return fmt.Sprintf("added less %s in %d of %d rounds (sign test p = %.3f; mesh minus pair: median %+.0f µs, range %+.0f to %+.0f)",
		what, ahead, len(ps), signTest(ahead, len(ps)-ties), middle(v), slices.Min(v), slices.Max(v))
}

// tally is the differences in µs, the rounds where the mesh was ahead and
// the ties.
func tally(ps []pairedRound) (v []float64, ahead, ties int) {
	v = make([]float64, len(ps))
	for i, p := range ps {
		v[i] = float64(p.d) / 1e3
		switch {
		case p.d < 0:
			ahead++
		case p.d == 0:
			ties++
		}
	}
	return v, ahead, ties
}

// signTest is the one-sided sign test's p-value: the chance of at least k
// wins in n rounds (ties left out) if each side were as likely to win.
func signTest(k, n int) float64 {
	p, c := 0.0, 1.0 // c: n choose i
	for i := range n + 1 {
		if i >= k {
			p += c
		}
		c = c * float64(n-i) / float64(i+1)
	}
	return p / math.Pow(2, float64(n))
}

// middle is the median of v (the mean of the two middle values when their
// number is even); it sorts v.
func middle(v []float64) float64 {
	slices.Sort(v)
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}

// benchRounds is $AMBIT_BENCH_ROUNDS, or defaultRounds.
func benchRounds(b *testing.B) int {
	v := os.Getenv("AMBIT_BENCH_ROUNDS")
	if v == "" {
		return defaultRounds
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("AMBIT_BENCH_ROUNDS=%q: want a whole number of rounds, 1 or more", v)
	}
	return n
}

func loadAvg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(raw))
	return strings.Join(f[:3], " ")
}
