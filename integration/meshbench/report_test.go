//go:build netns

package meshbench

import (
	"testing"
	"time"
)

func TestPairedSummary(t *testing.T) {
	us := time.Microsecond
	for _, c := range []struct {
		ds   []time.Duration
		want string
	}{
		{nil, "p99: no rounds"},
		{[]time.Duration{-5 * us, 12 * us, -1 * us}, "added less p99 in 2 of 3 rounds (mesh minus pair: median -1 µs, range -5 to +12)"},
		{[]time.Duration{4 * us, -10 * us, 0, 30 * us}, "added less p99 in 1 of 4 rounds (mesh minus pair: median +2 µs, range -10 to +30)"},
	} {
		if got := pairedSummary("p99", c.ds); got != c.want {
			t.Errorf("pairedSummary(%v) = %q, want %q", c.ds, got, c.want)
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
