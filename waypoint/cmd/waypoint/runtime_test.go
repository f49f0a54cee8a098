package main

import (
	"io"
	"math"
	"runtime"
	"runtime/debug"
	"testing"
)

func TestParseByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"48MiB", 48 << 20},
		{"1GiB", 1 << 30},
		{"512KiB", 512 << 10},
		{"1000", 1000},
		{"1000B", 1000},
		{"2TiB", 2 << 40},
		{"0", math.MaxInt64},
		{"off", math.MaxInt64},
	} {
		got, err := parseByteSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "-1MiB", "24MB", "24 MiB x", "abc", "9999999999TiB"} {
		if got, err := parseByteSize(in); err == nil {
			t.Errorf("parseByteSize(%q) = %d, want an error", in, got)
		}
	}
}

// TestRuntimeOptions checks the defaults (one processor, GOGC 100, no
// memory limit of the waypoint's own), the environment and the flags.
func TestRuntimeOptions(t *testing.T) {
	for name, c := range map[string]struct {
		args []string
		env  map[string]string
		want runtimeOptions
	}{
		"defaults":  {nil, nil, runtimeOptions{maxProcs: 1, gcPercent: 100, memLimit: -1}},
		"env":       {nil, map[string]string{"GOMAXPROCS": "2", "GOGC": "off"}, runtimeOptions{maxProcs: 2, gcPercent: -1, memLimit: -1}},
		"env gogc":  {nil, map[string]string{"GOGC": "50"}, runtimeOptions{maxProcs: 1, gcPercent: 50, memLimit: -1}},
		"bad env":   {nil, map[string]string{"GOMAXPROCS": "many", "GOGC": "lots"}, runtimeOptions{maxProcs: 1, gcPercent: 100, memLimit: -1}},
		"flags":     {[]string{"-gomaxprocs", "0", "-gc-percent", "200", "-memory-limit", "48MiB"}, map[string]string{"GOMAXPROCS": "2"}, runtimeOptions{maxProcs: 0, gcPercent: 200, memLimit: 48 << 20}},
		"limit off": {[]string{"-memory-limit", "off"}, nil, runtimeOptions{maxProcs: 1, gcPercent: 100, memLimit: math.MaxInt64}},
		"flag wins": {[]string{"-gomaxprocs", "3"}, map[string]string{"GOMAXPROCS": "2"}, runtimeOptions{maxProcs: 3, gcPercent: 100, memLimit: -1}},
		"gc off":    {[]string{"-gc-percent", "-1"}, nil, runtimeOptions{maxProcs: 1, gcPercent: -1, memLimit: -1}},
		"env one":   {nil, map[string]string{"GOMAXPROCS": "1"}, runtimeOptions{maxProcs: 1, gcPercent: 100, memLimit: -1}},
	} {
		e := podEnv()
		for k, v := range c.env {
			e[k] = v
		}
		o, err := parseOptions(c.args, env(e), io.Discard)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if o.runtime != c.want {
			t.Errorf("%s: runtime %+v, want %+v", name, o.runtime, c.want)
		}
	}
}

func TestRuntimeApply(t *testing.T) {
	oldProcs := runtime.GOMAXPROCS(0)
	oldGC := debug.SetGCPercent(100)
	oldLimit := debug.SetMemoryLimit(-1)
	t.Cleanup(func() {
		runtime.GOMAXPROCS(oldProcs)
		debug.SetGCPercent(oldGC)
		debug.SetMemoryLimit(oldLimit)
	})
	runtimeOptions{maxProcs: 1, gcPercent: 50, memLimit: 20 << 20}.apply()
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS = %d, want 1", got)
	}
	if got := debug.SetGCPercent(50); got != 50 {
		t.Errorf("GC percent = %d, want 50", got)
	}
	if got := debug.SetMemoryLimit(-1); got != 20<<20 {
		t.Errorf("memory limit = %d, want %d", got, 20<<20)
	}
	// 0 keeps the current GOMAXPROCS; -1 keeps the limit.
	runtimeOptions{maxProcs: 0, gcPercent: 100, memLimit: -1}.apply()
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS after 0 = %d, want 1 (unchanged)", got)
	}
	if got := debug.SetMemoryLimit(-1); got != 20<<20 {
		t.Errorf("memory limit after -1 = %d, want %d (unchanged)", got, 20<<20)
	}
	runtimeOptions{maxProcs: 2, gcPercent: 100, memLimit: math.MaxInt64}.apply()
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Errorf("GOMAXPROCS = %d, want 2", got)
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("memory limit after off = %d, want none", got)
	}
}
