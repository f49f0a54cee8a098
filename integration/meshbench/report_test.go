//go:build netns

package meshbench

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestPairedSummary(t *testing.T) {
	us := time.Microsecond
	rounds := func(ds ...time.Duration) []pairedRound {
		var ps []pairedRound
		for _, d := range ds {
			ps = append(ps, pairedRound{d: d})
		}
		return ps
	}
	for _, c := range []struct {
		ps   []pairedRound
		want string
	}{
		{nil, "p99: no rounds"},
		{rounds(-5*us, 12*us, -1*us), "added less p99 in 2 of 3 rounds (sign test p = 0.500; mesh minus pair: median -1 µs, range -5 to +12)"},
		// The tie is left out of the test: 1 win in 3.
		{rounds(4*us, -10*us, 0, 30*us), "added less p99 in 1 of 4 rounds (sign test p = 0.875; mesh minus pair: median +2 µs, range -10 to +30)"},
		{rounds(-1*us, -2*us, -3*us, -4*us, -5*us), "added less p99 in 5 of 5 rounds (sign test p = 0.031; mesh minus pair: median -3 µs, range -5 to -1)"},
	} {
		if got := pairedSummary("p99", c.ps); got != c.want {
			t.Errorf("pairedSummary(%v) = %q, want %q", c.ps, got, c.want)
		}
	}
	ps := []pairedRound{{-3 * us, false}, {90 * us, true}, {-1 * us, false}}
	if got, want := pairedSummary("p50", calm(ps)), "added less p50 in 2 of 2 rounds (sign test p = 0.250; mesh minus pair: median -2 µs, range -3 to -1)"; got != want {
		t.Errorf("without the round under steal: %q, want %q", got, want)
	}
	if len(ps) != 3 {
		t.Errorf("calm changed its argument")
	}
}

func TestSignTest(t *testing.T) {
	for _, c := range []struct {
		k, n int
		want float64
	}{
		{0, 0, 1}, {0, 5, 1}, {5, 5, 1.0 / 32}, {12, 15, 576.0 / 32768}, {10, 12, 79.0 / 4096}, {8, 15, 0.5},
	} {
		if got := signTest(c.k, c.n); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("signTest(%d, %d) = %v, want %v", c.k, c.n, got, c.want)
		}
	}
}

// TestSteady: a run that falls short is run again, up to three attempts; a
// baseline path still short is kept as behind the rate (an Ambit path would
// fail the benchmark unless the hypervisor took the CPUs meanwhile).
func TestSteady(t *testing.T) {
	for _, c := range []struct {
		name       string
		shorts     int // how many runs in a row fall short
		wantRuns   int
		wantBehind bool
	}{
		{"steady", 0, 1, false},
		{"one stall", 1, 2, false},
		{"two stalls", 2, 3, false},
		{"baseline behind", 3, 3, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			runs, befores := 0, 0
			l := steady(t, false, func() { befores++ }, func() latency {
				runs++
				l := latency{requests: int64(runs)}
				if runs <= c.shorts {
					l.short = "short"
				}
				return l
			})
			if runs != c.wantRuns || befores != runs || l.behind != c.wantBehind || l.requests != int64(runs) {
				t.Errorf("%d runs, %d befores, behind %v, kept run %d; want %d runs, behind %v, the last kept",
					runs, befores, l.behind, l.requests, c.wantRuns, c.wantBehind)
			}
		})
	}
}

func TestStealShare(t *testing.T) {
	if got := stealShare(10, 1000, 60, 2000); got != 0.05 {
		t.Errorf("stealShare = %v, want 0.05", got)
	}
	if got := stealShare(10, 1000, 10, 1000); got != 0 {
		t.Errorf("no time elapsed: %v, want 0", got)
	}
	steal, total := machineTicks()
	if total <= 0 || steal < 0 || steal > total {
		t.Errorf("machineTicks: steal %d of %d", steal, total)
	}
}

// TestPairedLead: the latency goal needs both a sign test below 0.05 and
// a median per-round difference below zero; ties are left out of the test.
func TestPairedLead(t *testing.T) {
	us := time.Microsecond
	rounds := func(ahead, behind, ties int, by time.Duration) []pairedRound {
		var ps []pairedRound
		for range ahead {
			ps = append(ps, pairedRound{d: -by})
		}
		for range behind {
			ps = append(ps, pairedRound{d: by})
		}
		for range ties {
			ps = append(ps, pairedRound{})
		}
		return ps
	}
	for _, c := range []struct {
		name string
		ps   []pairedRound
		ok   bool
		why  string
	}{
		{"none", nil, false, "no rounds"},
		{"12 of 15", rounds(12, 3, 0, 20*us), true, "ahead in 12 of 15 rounds, sign test p = 0.018 < 0.05, median per-round difference -20 µs"},
		{"11 of 15", rounds(11, 4, 0, 20*us), false, "ahead in 11 of 15 rounds, sign test p = 0.059 >= 0.05, median per-round difference -20 µs"},
		{"37 of 60", rounds(37, 23, 0, 5*us), true, "ahead in 37 of 60 rounds, sign test p = 0.046 < 0.05, median per-round difference -5 µs"},
		{"behind", rounds(3, 12, 0, 20*us), false, "ahead in 3 of 15 rounds, sign test p = 0.996 >= 0.05, median per-round difference +20 µs"},
		// 5 of 5 decided rounds ahead (p 0.031) but the ties make the median zero.
		{"ties", rounds(5, 0, 6, 20*us), false, "ahead in 5 of 11 rounds, sign test p = 0.031 < 0.05, median per-round difference +0 µs"},
	} {
		ok, why := pairedLead(c.ps)
		if ok != c.ok || why != c.why {
			t.Errorf("%s: pairedLead = %v, %q; want %v, %q", c.name, ok, why, c.ok, c.why)
		}
	}
}

func TestParsePaths(t *testing.T) {
	all, err := parsePaths("")
	if err != nil || len(all) != len(tcpPaths)+len(httpPaths)+len(connPaths)+len(grpcPaths) || !all["grpc-waypoint"] {
		t.Fatalf("parsePaths(\"\") = %v, %v; want every path", all, err)
	}
	tcp, err := parsePaths("direct, haproxy,mesh")
	if err != nil || len(tcp) != 3 || !tcp["direct"] || !tcp["haproxy"] || !tcp["mesh"] {
		t.Errorf("parsePaths(tcp) = %v, %v", tcp, err)
	}
	for v, want := range map[string]string{
		"direct,mesh,bogus": `unknown path "bogus"`,
		"haproxy,mesh":      "haproxy needs its baseline direct in the list",
		"direct,http-l4":    "http-l4 needs its baseline http-direct in the list",
		"conn-mesh":         "conn-mesh needs its baseline conn-direct in the list",
		"grpc-waypoint":     "grpc-waypoint needs its baseline grpc-direct in the list",
		"direct,,mesh":      `unknown path ""`,
	} {
		if _, err := parsePaths(v); err == nil || err.Error() != want {
			t.Errorf("parsePaths(%q) = %v, want %q", v, err, want)
		}
	}
}

// TestReportTCPOnly: a run of the TCP paths alone reports their table, the
// paired rounds and the goals they decide, and nothing of the paths that
// did not run.
func TestReportTCPOnly(t *testing.T) {
	us := time.Microsecond
	per := map[string][]result{}
	for i := range 15 {
		lat := func(p50 time.Duration) latency {
			return latency{p50: p50 * us, p90: 2 * p50 * us, p99: 3 * p50 * us, requests: 6000}
		}
		ahead := time.Duration(10)
		if i%5 == 0 {
			ahead = -10 // the pair ahead in 3 of 15 rounds
		}
		per["direct"] = append(per["direct"], result{name: "direct", lat: lat(100), bulk: 1e9})
		per["haproxy"] = append(per["haproxy"], result{name: "haproxy", proxies: 2, lat: lat(250), bulk: 4e8, cpu: time.Second, requests: 6000})
		per["mesh"] = append(per["mesh"], result{name: "mesh", proxies: 2, lat: lat(250 - ahead), bulk: 5e8, cpu: 800 * time.Millisecond, requests: 6000})
	}
	d := reportData{rounds: 15, perRound: per, results: map[string]result{}, ztHWM: 28 << 20, captures: 15, roundHWM: []int64{27 << 20}}
	for name, rs := range per {
		d.results[name] = median(rs)
	}
	rep := report(d)
	for _, want := range []string{
		"15 rounds of the paths direct, haproxy, mesh",
		"| mesh | 90000 | 240 | 480 | 720 | 140 | 420 | 500 | 50% | 0.133 (2 processes) |",
		"- met     mesh adds less p50 latency than the HAProxy pair: ahead in 12 of 15 rounds, sign test p = 0.018 < 0.05, median per-round difference -10 µs (medians of the rounds 140 vs 150 µs)",
		"- met     mesh adds less p99 latency than the HAProxy pair: ahead in 12 of 15 rounds, sign test p = 0.018 < 0.05, median per-round difference -30 µs",
		"- met     mesh uses fewer CPU seconds per 1000 requests than the HAProxy pair",
		"- met     ztunnel < 30 MiB RSS",
		"waypoint (idle: its path did not run)",
	} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
	for _, absent := range []string{"\nHTTP:\n", "http-l4", "conn-mesh", "gRPC", "grpc-", "the waypoint adds", "waypoint < 0.25"} {
		if strings.Contains(rep, absent) {
			t.Errorf("report has %q, whose path did not run:\n%s", absent, rep)
		}
	}
}
