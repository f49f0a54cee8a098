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
