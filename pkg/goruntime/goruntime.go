// Package goruntime holds the runtime settings of Ambit's proxies
// (ztunnel, waypoint): the flags -gomaxprocs, -gc-percent and
// -memory-limit of the Go runtime, -sched-slice of the kernel's scheduler,
// their defaults ($GOMAXPROCS and $GOGC when set, else the binary's own),
// their validation and their application. Each binary's reference page
// says which defaults it uses and why.
package goruntime

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// Defaults are a binary's own runtime defaults, used when neither a flag
// nor the environment says otherwise.
type Defaults struct {
	// MaxProcs is the number of threads running Go code at once; 0 leaves
	// Go's default (the CPU count or the container's CPU limit).
	MaxProcs int
	// GCPercent is the garbage collection target percentage.
	GCPercent int
	// LimitExample is a memory limit shown in -memory-limit's help.
	LimitExample string
	// SchedSlice is the time slice asked of the kernel's scheduler for the
	// process's threads (see Settings.ApplySchedSlice); 0 leaves the
	// kernel's default.
	SchedSlice time.Duration
}

// The kernel accepts a custom slice from 100 µs to 100 ms.
const (
	MinSchedSlice = 100 * time.Microsecond
	MaxSchedSlice = 100 * time.Millisecond
)

// Settings are the runtime settings of the process.
type Settings struct {
	MaxProcs  int   // 0: leave Go's default
	GCPercent int   // negative: collector off except for the memory limit
	MemLimit  int64 // -1: leave as the runtime has it ($GOMEMLIMIT or none)
	// SchedSlice: 0 leaves the kernel's default.
	SchedSlice time.Duration
}

// Flags are the registered runtime flags.
type Flags struct {
	maxProcs  *int
	memLimit  *string
	gcPercent *int
	slice     *time.Duration
}

// Register adds -gomaxprocs, -memory-limit, -gc-percent and -sched-slice
// to fs. Their defaults come from getenv ($GOMAXPROCS, $GOGC) when set and
// valid, else from d.
func Register(fs *flag.FlagSet, d Defaults, getenv func(string) string) *Flags {
	example := d.LimitExample
	if example == "" {
		example = "64MiB"
	}
	return &Flags{
		maxProcs: fs.Int("gomaxprocs", defaultMaxProcs(getenv, d.MaxProcs),
			"Go scheduler threads running Go code at once (GOMAXPROCS); 0: Go's default (the CPU count or the container's CPU limit); default $GOMAXPROCS if set, else "+strconv.Itoa(d.MaxProcs)),
		memLimit: fs.String("memory-limit", "",
			"soft limit of the Go runtime's memory (GOMEMLIMIT syntax, e.g. "+example+"); empty: $GOMEMLIMIT if set, else none; 0 or off: none"),
		gcPercent: fs.Int("gc-percent", defaultGCPercent(getenv, d.GCPercent),
			"garbage collection target percentage (GOGC); negative disables the collector except for -memory-limit; default $GOGC if set, else "+strconv.Itoa(d.GCPercent)),
		slice: fs.Duration("sched-slice", d.SchedSlice,
			"time slice asked of the kernel's scheduler for the process's threads (Linux 6.12 or later; older kernels ignore it): a woken thread with a shorter slice than the running one may preempt it; 100us to 100ms, or 0 for the kernel's default"),
	}
}

func defaultMaxProcs(getenv func(string) string, def int) int {
	if v, err := strconv.Atoi(getenv("GOMAXPROCS")); err == nil && v > 0 {
		return v
	}
	return def
}

func defaultGCPercent(getenv func(string) string, def int) int {
	switch v := getenv("GOGC"); {
	case v == "off":
		return -1
	case v != "":
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return def
}

// Settings checks the flags' values (call it after parsing). An empty
// -memory-limit leaves the limit as the runtime has it ($GOMEMLIMIT, which
// it applied at start, or none).
func (f *Flags) Settings() (Settings, error) {
	s := Settings{MaxProcs: *f.maxProcs, GCPercent: *f.gcPercent, MemLimit: -1, SchedSlice: *f.slice}
	if s.MaxProcs < 0 {
		return s, fmt.Errorf("-gomaxprocs %d: must be 0 (Go's default) or positive", s.MaxProcs)
	}
	if s.SchedSlice != 0 && (s.SchedSlice < MinSchedSlice || s.SchedSlice > MaxSchedSlice) {
		return s, fmt.Errorf("-sched-slice %v: must be 0 (the kernel's default) or from %v to %v", s.SchedSlice, MinSchedSlice, MaxSchedSlice)
	}
	if *f.memLimit != "" {
		l, err := ParseByteSize(*f.memLimit)
		if err != nil {
			return s, fmt.Errorf("-memory-limit: %w", err)
		}
		s.MemLimit = l
	}
	return s, nil
}

// Apply sets GOMAXPROCS (unless 0), the GC percentage and the memory limit
// (unless -1).
func (s Settings) Apply() {
	if s.MaxProcs > 0 {
		runtime.GOMAXPROCS(s.MaxProcs)
	}
	debug.SetGCPercent(s.GCPercent)
	if s.MemLimit >= 0 {
		debug.SetMemoryLimit(s.MemLimit)
	}
}

// ParseByteSize parses a GOMEMLIMIT-style size: a non-negative integer with
// an optional unit B, KiB, MiB, GiB or TiB; "0" and "off" mean no limit
// (math.MaxInt64).
func ParseByteSize(s string) (int64, error) {
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
