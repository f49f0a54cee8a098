package main

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
)

// Runtime defaults of the waypoint. See docs/reference/waypoint.md,
// "Performance", for the measurements behind them.
const (
	// defaultGOMAXPROCS is the number of threads running Go code at once
	// unless -gomaxprocs or $GOMAXPROCS says otherwise; 0 leaves Go's
	// default.
	defaultGOMAXPROCS = 1
	// defaultGOGC is the GC target percentage unless -gc-percent or $GOGC
	// says otherwise.
	defaultGOGC = 100
)

// runtimeOptions are the Go runtime settings of the process.
type runtimeOptions struct {
	maxProcs  int   // 0: leave Go's default
	gcPercent int   // negative: collector off except for the memory limit
	memLimit  int64 // -1: leave as the runtime has it ($GOMEMLIMIT or none)
}

func defaultMaxProcs(getenv func(string) string) int {
	if v, err := strconv.Atoi(getenv("GOMAXPROCS")); err == nil && v > 0 {
		return v
	}
	return defaultGOMAXPROCS
}

func defaultGCPercent(getenv func(string) string) int {
	switch v := getenv("GOGC"); {
	case v == "off":
		return -1
	case v != "":
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return defaultGOGC
}

// parseRuntime checks the runtime flags' values. An empty memLimit leaves
// the limit as the runtime has it ($GOMEMLIMIT, which it applied at start,
// or none).
func parseRuntime(maxProcs int, memLimit string, gcPercent int) (runtimeOptions, error) {
	ro := runtimeOptions{maxProcs: maxProcs, gcPercent: gcPercent, memLimit: -1}
	if maxProcs < 0 {
		return ro, fmt.Errorf("-gomaxprocs %d: must be 0 (Go's default) or positive", maxProcs)
	}
	if memLimit != "" {
		l, err := parseByteSize(memLimit)
		if err != nil {
			return ro, fmt.Errorf("-memory-limit: %w", err)
		}
		ro.memLimit = l
	}
	return ro, nil
}

// apply sets GOMAXPROCS, the GC percentage and the memory limit.
func (ro runtimeOptions) apply() {
	if ro.maxProcs > 0 {
		runtime.GOMAXPROCS(ro.maxProcs)
	}
	debug.SetGCPercent(ro.gcPercent)
	if ro.memLimit >= 0 {
		debug.SetMemoryLimit(ro.memLimit)
	}
}

// parseByteSize parses a GOMEMLIMIT-style size: a non-negative integer with
// an optional unit B, KiB, MiB, GiB or TiB; "0" and "off" mean no limit.
func parseByteSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "off" || s == "0" {
		return math.MaxInt64, nil
	}
	units := []struct {
		suffix string
		shift  uint
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"B", 0}}
	shift := uint(0)
	num := s
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			num, shift = strings.TrimSuffix(s, u.suffix), u.shift
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size such as 48MiB, 0 or off", s)
	}
	if n > math.MaxInt64>>shift {
		return 0, errors.New("size " + s + " overflows")
	}
	if n == 0 {
		return math.MaxInt64, nil
	}
	return n << shift, nil
}
