package main

import (
	"math"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestParseByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"24MiB", 24 << 20},
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

func TestApplyRuntime(t *testing.T) {
	oldProcs := runtime.GOMAXPROCS(0)
	oldGC := debug.SetGCPercent(100)
	oldLimit := debug.SetMemoryLimit(-1)
	t.Cleanup(func() {
		runtime.GOMAXPROCS(oldProcs)
		debug.SetGCPercent(oldGC)
		debug.SetMemoryLimit(oldLimit)
	})
	t.Setenv("GOMEMLIMIT", "")
	if err := applyRuntime(1, "20MiB", 50); err != nil {
		t.Fatal(err)
	}
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS = %d, want 1", got)
	}
	if got := debug.SetGCPercent(50); got != 50 {
		t.Errorf("GC percent = %d, want 50", got)
	}
	if got := debug.SetMemoryLimit(-1); got != 20<<20 {
		t.Errorf("memory limit = %d, want %d", got, 20<<20)
	}
	// 0 keeps the current GOMAXPROCS; "off" removes the limit.
	if err := applyRuntime(0, "off", 100); err != nil {
		t.Fatal(err)
	}
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS after 0 = %d, want 1 (unchanged)", got)
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("memory limit after off = %d, want none", got)
	}
	if err := applyRuntime(-1, "", 100); err == nil || !strings.Contains(err.Error(), "-gomaxprocs") {
		t.Errorf("negative -gomaxprocs: got %v", err)
	}
	if err := applyRuntime(0, "lots", 100); err == nil || !strings.Contains(err.Error(), "-memory-limit") {
		t.Errorf("bad -memory-limit: got %v", err)
	}
}

func TestRunRejectsBadRuntimeFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-node-name", "n", "-gomaxprocs", "-2"},
		{"-node-name", "n", "-memory-limit", "12 apples"},
	} {
		if err := run(args); err == nil {
			t.Errorf("run(%q) succeeded, want an error", args)
		}
	}
}
