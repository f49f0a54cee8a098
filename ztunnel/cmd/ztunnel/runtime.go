package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
)

// Runtime defaults for a node proxy. See docs/reference/ztunnel.md,
// "Performance", for the measurements behind them.
const (
	// defaultGOMAXPROCS is the number of threads running Go code at once
	// unless -gomaxprocs or $GOMAXPROCS says otherwise; 0 leaves Go's
	// default.
	defaultGOMAXPROCS = 1
	// defaultGOGC is the GC target percentage unless -gc-percent or $GOGC
	// says otherwise.
	defaultGOGC = 50
)

func defaultMaxProcs() int {
	if v, err := strconv.Atoi(os.Getenv("GOMAXPROCS")); err == nil && v > 0 {
		return v
	}
	return defaultGOMAXPROCS
}

func defaultGCPercent() int {
	switch v := os.Getenv("GOGC"); {
	case v == "off":
		return -1
	case v != "":
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return defaultGOGC
}

// applyRuntime sets GOMAXPROCS, the GC percentage and the memory limit.
func applyRuntime(maxProcs int, memLimit string, gcPercent int) error {
	if maxProcs < 0 {
		return fmt.Errorf("-gomaxprocs %d: must be 0 (Go's default) or positive", maxProcs)
	}
	limit := int64(math.MaxInt64)
	if memLimit != "" {
		l, err := parseByteSize(memLimit)
		if err != nil {
			return fmt.Errorf("-memory-limit: %w", err)
		}
		limit = l
	} else if env := os.Getenv("GOMEMLIMIT"); env != "" {
		// The runtime has already applied (and validated) it.
		limit = -1
	}
	if maxProcs > 0 {
		runtime.GOMAXPROCS(maxProcs)
	}
	debug.SetGCPercent(gcPercent)
	if limit >= 0 {
		debug.SetMemoryLimit(limit)
	}
	return nil
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
		return 0, fmt.Errorf("%q is not a size such as 24MiB, 0 or off", s)
	}
	if n > math.MaxInt64>>shift {
		return 0, errors.New("size " + s + " overflows")
	}
	if n == 0 {
		return math.MaxInt64, nil
	}
	return n << shift, nil
}
