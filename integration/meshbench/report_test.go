//go:build netns

package meshbench

import (
	"math"
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
