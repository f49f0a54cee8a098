//go:build netns

package meshbench

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/netlab"
)

// result is what one path measured.
type result struct {
	name    string
	lat     latency
	bulk    float64       // bytes per second, median of bulkRuns
	cpu     time.Duration // proxy processes' CPU time during the fortio run
	proxies int
}

func (r result) cpuPer1000() float64 {
	return r.cpu.Seconds() / (float64(r.lat.requests) / 1000)
}

// BenchmarkPaths measures the direct, HAProxy and mesh paths between the
// same two pods in one run (see the package documentation). It runs once
// whatever b.N is: the figures come from fortio and the bulk transfers, not
// from b.N iterations. The report is printed, and also written to the file
// named by $AMBIT_BENCH_REPORT when set.
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
	// idle cost is present in every path, and it captures nothing until
	// the mesh path.
	mca := startCA(b, b.TempDir(), specs, []string{n0.Name, n1.Name})
	cfg := configDir(b.TempDir())
	cfg.write(b, "00-namespace.yaml", namespaceYAML(false))
	cfg.write(b, "10-pods.yaml", podsYAML(specs))
	xdsAddr := freePort(b)
	sp.start(b, nil, "controller", logDir, tl.controller, "--config-dir", string(cfg), "--xds-listen", xdsAddr)
	z0 := startZtunnel(b, sp, tl.ztunnel, n0.Name, xdsAddr, mca)
	z1 := startZtunnel(b, sp, tl.ztunnel, n1.Name, xdsAddr, mca)
	z0.report(b, specs[0])
	z1.report(b, specs[1])
	z0.waitCaptured(b, "client", false)
	z1.waitCaptured(b, "server", false)

	echoDst, sinkDst := addrPort(server.IP, echoPort), addrPort(server.IP, sinkPort)
	var results []result

	// 1. direct
	waitEcho(b, client, echoDst)
	direct := result{name: "direct"}
	direct.lat = runFortio(b, sp, tl.fortio, client, echoDst, logDir, "direct")
	direct.bulk = bulk(b, client, sinkDst)
	results = append(results, direct)

	// 2. the HAProxy pair
	hp := startHAProxyPair(b, sp, tl.haproxy, client, server)
	hpEcho, hpSink := fmt.Sprintf("127.0.0.1:%d", haproxyEchoIn), fmt.Sprintf("127.0.0.1:%d", haproxySinkIn)
	waitEcho(b, client, hpEcho)
	h := result{name: "haproxy", proxies: len(hp)}
	c0 := cpuTimes(b, hp)
	h.lat = runFortio(b, sp, tl.fortio, client, hpEcho, logDir, "haproxy")
	h.cpu = cpuTimes(b, hp) - c0
	h.bulk = bulk(b, client, hpSink)
	results = append(results, h)
	for _, p := range hp {
		if err := p.stop(); err != nil {
			b.Fatal(err)
		}
	}

	// 3. the mesh: enrol the namespace; both ztunnels capture their pod.
	cfg.write(b, "00-namespace.yaml", namespaceYAML(true))
	z0.waitCaptured(b, "client", true)
	z1.waitCaptured(b, "server", true)
	waitEcho(b, client, echoDst)
	zt := []*process{z0.proc, z1.proc}
	tunnels0 := z1.mtlsConnections(b)
	m := result{name: "mesh", proxies: len(zt)}
	c0 = cpuTimes(b, zt)
	m.lat = runFortio(b, sp, tl.fortio, client, echoDst, logDir, "mesh")
	m.cpu = cpuTimes(b, zt) - c0
	m.bulk = bulk(b, client, sinkDst)
	results = append(results, m)
	if got := z1.mtlsConnections(b) - tunnels0; got < loadConns+bulkRuns {
		b.Fatalf("the server's ztunnel accepted %v mutual-TLS tunnels during the mesh path, want at least %d: traffic bypassed the mesh", got, loadConns+bulkRuns)
	}
	var rss, hwm int64
	for _, p := range zt {
		r, h := memory(b, p.pid())
		rss, hwm = max(rss, r), max(hwm, h)
	}

	rep := report(results, rss, hwm, load0, loadAvg(), time.Since(begin))
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
}

// Goals the mesh path is measured against (docs/reference/benchmarks.md).
const (
	goalBulkShare = 0.30
	goalRSS       = 30 << 20
)

// report renders the table and the goals.
func report(rs []result, rss, hwm int64, load0, load1 string, took time.Duration) string {
	direct, h, m := rs[0], rs[1], rs[2]
	var s strings.Builder
	fmt.Fprintf(&s, "\nAmbit data-plane benchmark (integration/meshbench), %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&s, "load: fortio TCP, %d B echo, %d qps, %d connections, %v per path, -uniform -nocatchup -r 0.00001; bulk: %d MiB single stream, median of %d\n",
		payloadSize, loadQPS, loadConns, loadDuration, bulkBytes>>20, bulkRuns)
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
	fmt.Fprintf(&s, "\nztunnel memory (the larger of the two): VmRSS %.1f MiB, VmHWM %.1f MiB\n\n", float64(rss)/(1<<20), float64(hwm)/(1<<20))
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
