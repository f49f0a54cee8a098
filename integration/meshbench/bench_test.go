//go:build netns

package meshbench

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
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
	bulk     float64       // bytes per second
	cpu      time.Duration // proxy processes' CPU time during the fortio run
	requests int64         // for cpu: requests during the fortio run(s)
	proxies  int
}

func (r result) cpuPer1000() float64 {
	return r.cpu.Seconds() / (float64(r.requests) / 1000)
}

// BenchmarkPaths measures the direct, HAProxy and mesh paths between the
// same two pods in one run (see the package documentation): `rounds` rounds
// of direct, haproxy, mesh, so that the paths interleave in time, and the
// median round of each figure is reported. It runs once whatever b.N is:
// the figures come from fortio and the bulk transfers, not from b.N
// iterations. The report is printed, and also written to the file named by
// $AMBIT_BENCH_REPORT when set.
func BenchmarkPaths(b *testing.B) {
	tier.RequireRoot(b)
	begin := time.Now()
	load0 := loadAvg()
	tl := findTools(b)
	sp := newSpawner(b)
	logDir := b.TempDir()

	lab := netlab.New(b)
	n0, err := lab.AddNode("node0")
	if err != nil {
		b.Fatal(err)
	}
	n1, err := lab.AddNode("node1")
	if err != nil {
		b.Fatal(err)
	}
	client, err := n0.AddPod("client")
	if err != nil {
		b.Fatal(err)
	}
	server, err := n1.AddPod("server")
	if err != nil {
		b.Fatal(err)
	}
	specs := []podSpec{
		{name: "client", node: n0.Name, ip: client.IP, netns: client.NetnsPath()},
		{name: "server", node: n1.Name, ip: server.IP, netns: server.NetnsPath()},
	}

	// The applications in the server pod: fortio's TCP echo and the sink.
	sp.start(b, server.Start, "fortio-tcp-echo", logDir, tl.fortio, "tcp-echo", "-tcp-port", fmt.Sprint(echoPort))
	serveSink(b, server)

	// The mesh runs from the start, with the namespace not enrolled: its
	// idle cost is present in every path, and it captures the pods only for
	// the mesh path of each round.
	mca := startCA(b, b.TempDir(), specs, []string{n0.Name, n1.Name})
	cfg := configDir(b.TempDir())
	cfg.write(b, "00-namespace.yaml", namespaceYAML(false))
	cfg.write(b, "10-pods.yaml", podsYAML(specs))
	xdsAddr := hostAddr(b, 1, 15010)
	sp.start(b, nil, "controller", logDir, tl.controller, "--config-dir", string(cfg), "--xds-listen", xdsAddr)
	z0 := startZtunnel(b, sp, tl.ztunnel, n0.Name, 10, xdsAddr, mca)
	z1 := startZtunnel(b, sp, tl.ztunnel, n1.Name, 11, xdsAddr, mca)
	z0.report(b, specs[0])
	z1.report(b, specs[1])
	echoDst, sinkDst := addrPort(server.IP, echoPort), addrPort(server.IP, sinkPort)
	capture := func(on bool) {
		cfg.write(b, "00-namespace.yaml", namespaceYAML(on))
		z0.waitCaptured(b, "client", on)
		z1.waitCaptured(b, "server", on)
		waitEcho(b, client, echoDst)
	}
	capture(false)

	// The HAProxy pair runs through every round (it is used only while
	// the pods are not captured).
	hp := startHAProxyPair(b, sp, tl.haproxy, client, server)
	hpEcho, hpSink := fmt.Sprintf("127.0.0.1:%d", haproxyEchoIn), fmt.Sprintf("127.0.0.1:%d", haproxySinkIn)
	waitEcho(b, client, hpEcho)
	zt := []*process{z0.proc, z1.proc}
	// ztMemory is the larger VmRSS and VmHWM of the two ztunnels.
	ztMemory := func() (rss, hwm int64) {
		for _, p := range zt {
			r, h := memory(b, p.pid())
			rss, hwm = max(rss, r), max(hwm, h)
		}
		return rss, hwm
	}
	var firstHWM int64 // after the first mesh path: one capture of each pod

	measure := func(round int, name, echo, sink string, procs []*process) result {
		r := result{name: name, proxies: len(procs)}
		c0 := cpuTimes(b, procs)
		r.lat = runFortio(b, sp, tl.fortio, client, echo, logDir, fmt.Sprintf("%s-%d", name, round))
		r.cpu = cpuTimes(b, procs) - c0
		r.requests = r.lat.requests
		r.bulk = bulk(b, client, sink)
		return r
	}
	perRound := map[string][]result{}
	for round := range rounds {
		if round > 0 {
			capture(false)
		}
		perRound["direct"] = append(perRound["direct"], measure(round, "direct", echoDst, sinkDst, nil))
		perRound["haproxy"] = append(perRound["haproxy"], measure(round, "haproxy", hpEcho, hpSink, hp))
		capture(true)
		tunnels0 := z1.mtlsConnections(b)
		perRound["mesh"] = append(perRound["mesh"], measure(round, "mesh", echoDst, sinkDst, zt))
		if got := z1.mtlsConnections(b) - tunnels0; got < loadConns+1 {
			b.Fatalf("round %d: the server's ztunnel accepted %v mutual-TLS tunnels during the mesh path, want at least %d: traffic bypassed the mesh", round, got, loadConns+1)
		}
		if round == 0 {
			_, firstHWM = ztMemory()
		}
	}
	rss, hwm := ztMemory()
	var results []result
	for _, name := range []string{"direct", "haproxy", "mesh"} {
		results = append(results, median(perRound[name]))
	}
	direct := results[0]

	rep := report(results, perRound, rss, hwm, firstHWM, load0, loadAvg(), time.Since(begin))
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
	for _, r := range results[1:] {
		b.ReportMetric(float64(r.lat.p50-direct.lat.p50)/1e3, r.name+"-p50-added-µs")
		b.ReportMetric(float64(r.lat.p99-direct.lat.p99)/1e3, r.name+"-p99-added-µs")
		b.ReportMetric(r.bulk/direct.bulk, r.name+"-bulk/direct")
		b.ReportMetric(r.cpuPer1000(), r.name+"-cpu-s/1000req")
	}
	b.ReportMetric(float64(rss)/(1<<20), "ztunnel-rss-MiB")
	b.ReportMetric(float64(hwm)/(1<<20), "ztunnel-hwm-MiB")
	b.ReportMetric(float64(firstHWM)/(1<<20), "ztunnel-hwm-first-round-MiB")
}

// median aggregates rounds: each percentile and the throughput are the
// median over the rounds; CPU is the total over the total requests.
func median(rs []result) result {
	mid := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v)%2 == 0 {
			return (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		return v[len(v)/2]
	}
	m := result{name: rs[0].name, proxies: rs[0].proxies}
	m.lat.p50 = time.Duration(mid(func(r result) float64 { return float64(r.lat.p50) }))
	m.lat.p90 = time.Duration(mid(func(r result) float64 { return float64(r.lat.p90) }))
	m.lat.p99 = time.Duration(mid(func(r result) float64 { return float64(r.lat.p99) }))
	m.bulk = mid(func(r result) float64 { return r.bulk })
	for _, r := range rs {
		m.lat.requests += r.lat.requests
		m.requests += r.requests
		m.cpu += r.cpu
	}
	return m
}

// Goals the mesh path is measured against (docs/reference/benchmarks.md).
const (
	goalBulkShare = 0.30
	goalRSS       = 30 << 20
)

// report renders the table and the goals.
func report(rs []result, perRound map[string][]result, rss, hwm, firstHWM int64, load0, load1 string, took time.Duration) string {
	direct, h, m := rs[0], rs[1], rs[2]
	var s strings.Builder
	fmt.Fprintf(&s, "\nAmbit data-plane benchmark (integration/meshbench), %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&s, "load: fortio TCP, %d B echo, %d qps, %d connections, -uniform -nocatchup -r 0.00001, %v per path and round; bulk: %d MiB single stream\n",
		payloadSize, loadQPS, loadConns, loadDuration, bulkBytes>>20)
	fmt.Fprintf(&s, "%d rounds of direct, haproxy, mesh; each figure is the median round (CPU: total over all rounds)\n", rounds)
	fmt.Fprintf(&s, "machine: %d CPUs; load average before %s, after %s; took %v\n\n", runtime.NumCPU(), load0, load1, took.Round(time.Second))
	us := func(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/1e3) }
	fmt.Fprintf(&s, "| path | requests | p50 µs | p90 µs | p99 µs | p50 added | p99 added | bulk MB/s | bulk vs direct | proxy CPU-s per 1000 req |\n")
	fmt.Fprintf(&s, "|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		added50, added99, cpu := "–", "–", "–"
		if r.name != "direct" {
			added50, added99 = us(r.lat.p50-direct.lat.p50), us(r.lat.p99-direct.lat.p99)
			cpu = fmt.Sprintf("%.3f (%d processes)", r.cpuPer1000(), r.proxies)
		}
		fmt.Fprintf(&s, "| %s | %d | %s | %s | %s | %s | %s | %.0f | %.0f%% | %s |\n", r.name, r.lat.requests,
			us(r.lat.p50), us(r.lat.p90), us(r.lat.p99), added50, added99, r.bulk/1e6, 100*r.bulk/direct.bulk, cpu)
	}
	fmt.Fprintf(&s, "\nrounds (p50 / p99 µs, bulk MB/s):\n")
	for _, r := range rs {
		fmt.Fprintf(&s, "- %-8s", r.name)
		for i, x := range perRound[r.name] {
			fmt.Fprintf(&s, " [%d] %s / %s, %.0f;", i+1, us(x.lat.p50), us(x.lat.p99), x.bulk/1e6)
		}
		fmt.Fprintln(&s)
	}
	fmt.Fprintf(&s, "\nztunnel memory (the larger of the two): VmRSS %.1f MiB, VmHWM %.1f MiB at the end (%d capture and release cycles); VmHWM %.1f MiB after the first mesh path\n\n",
		float64(rss)/(1<<20), float64(hwm)/(1<<20), rounds, float64(firstHWM)/(1<<20))
	goal := func(ok bool, text string, args ...any) {
		verdict := "NOT MET"
		if ok {
			verdict = "met"
		}
		fmt.Fprintf(&s, "- %-7s %s\n", verdict, fmt.Sprintf(text, args...))
	}
	fmt.Fprintf(&s, "goals:\n")
	goal(m.lat.p50-direct.lat.p50 < h.lat.p50-direct.lat.p50, "mesh adds less p50 latency than the HAProxy pair: %s µs vs %s µs",
		us(m.lat.p50-direct.lat.p50), us(h.lat.p50-direct.lat.p50))
	goal(m.lat.p99-direct.lat.p99 < h.lat.p99-direct.lat.p99, "mesh adds less p99 latency than the HAProxy pair: %s µs vs %s µs",
		us(m.lat.p99-direct.lat.p99), us(h.lat.p99-direct.lat.p99))
	goal(m.cpuPer1000() < h.cpuPer1000(), "mesh uses fewer CPU seconds per 1000 requests than the HAProxy pair: %.3f vs %.3f",
		m.cpuPer1000(), h.cpuPer1000())
	goal(m.bulk >= goalBulkShare*direct.bulk, "mesh single-stream throughput >= %.0f%% of direct: %.0f%%", 100*goalBulkShare, 100*m.bulk/direct.bulk)
	goal(hwm < goalRSS, "ztunnel < %d MiB RSS (peak, VmHWM): %.1f MiB", goalRSS>>20, float64(hwm)/(1<<20))
	return s.String()
}

func loadAvg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(raw))
	return strings.Join(f[:3], " ")
}
