package goruntime

import (
	"flag"
	"io"
	"math"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"
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
		got, err := ParseByteSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "-1MiB", "24MB", "24 MiB x", "abc", "9999999999TiB"} {
		if got, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) = %d, want an error", in, got)
		}
	}
}

// TestSettings checks the binary's defaults, the environment and the flags,
// in that order of precedence from lowest.
func TestSettings(t *testing.T) {
	def := Defaults{MaxProcs: 1, GCPercent: 50}
	for name, c := range map[string]struct {
		args []string
		env  map[string]string
		want Settings
	}{
		"defaults":  {nil, nil, Settings{MaxProcs: 1, GCPercent: 50, MemLimit: -1}},
		"env":       {nil, map[string]string{"GOMAXPROCS": "2", "GOGC": "off"}, Settings{MaxProcs: 2, GCPercent: -1, MemLimit: -1}},
		"env gogc":  {nil, map[string]string{"GOGC": "80"}, Settings{MaxProcs: 1, GCPercent: 80, MemLimit: -1}},
		"bad env":   {nil, map[string]string{"GOMAXPROCS": "many", "GOGC": "lots"}, Settings{MaxProcs: 1, GCPercent: 50, MemLimit: -1}},
		"flags":     {[]string{"-gomaxprocs", "0", "-gc-percent", "200", "-memory-limit", "48MiB"}, map[string]string{"GOMAXPROCS": "2"}, Settings{MaxProcs: 0, GCPercent: 200, MemLimit: 48 << 20}},
		"limit off": {[]string{"-memory-limit", "off"}, nil, Settings{MaxProcs: 1, GCPercent: 50, MemLimit: math.MaxInt64}},
		"flag wins": {[]string{"-gomaxprocs", "3"}, map[string]string{"GOMAXPROCS": "2"}, Settings{MaxProcs: 3, GCPercent: 50, MemLimit: -1}},
		"gc off":    {[]string{"-gc-percent", "-1"}, nil, Settings{MaxProcs: 1, GCPercent: -1, MemLimit: -1}},
		"slice":     {[]string{"-sched-slice", "250us"}, nil, Settings{MaxProcs: 1, GCPercent: 50, MemLimit: -1, SchedSlice: 250 * time.Microsecond}},
		"slice off": {[]string{"-sched-slice", "0"}, nil, Settings{MaxProcs: 1, GCPercent: 50, MemLimit: -1}},
	} {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f := Register(fs, def, func(k string) string { return c.env[k] })
		if err := fs.Parse(c.args); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		got, err := f.Settings()
		if err != nil || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v", name, got, err, c.want)
		}
	}
	for name, c := range map[string]struct {
		args []string
		want string
	}{
		"negative gomaxprocs": {[]string{"-gomaxprocs", "-2"}, "-gomaxprocs"},
		"bad memory limit":    {[]string{"-memory-limit", "12 apples"}, "-memory-limit"},
		"slice too short":     {[]string{"-sched-slice", "50us"}, "-sched-slice"},
		"slice too long":      {[]string{"-sched-slice", "1s"}, "-sched-slice"},
		"negative slice":      {[]string{"-sched-slice", "-1ms"}, "-sched-slice"},
	} {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		f := Register(fs, def, func(string) string { return "" })
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Settings(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %s", name, err, c.want)
		}
	}
}

func TestApply(t *testing.T) {
	oldProcs := runtime.GOMAXPROCS(0)
	oldGC := debug.SetGCPercent(100)
	oldLimit := debug.SetMemoryLimit(-1)
	t.Cleanup(func() {
		runtime.GOMAXPROCS(oldProcs)
		debug.SetGCPercent(oldGC)
		debug.SetMemoryLimit(oldLimit)
	})
	Settings{MaxProcs: 1, GCPercent: 50, MemLimit: 20 << 20}.Apply()
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
	Settings{MaxProcs: 0, GCPercent: 100, MemLimit: -1}.Apply()
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS after 0 = %d, want 1 (unchanged)", got)
	}
	if got := debug.SetMemoryLimit(-1); got != 20<<20 {
		t.Errorf("memory limit after -1 = %d, want %d (unchanged)", got, 20<<20)
	}
	Settings{MaxProcs: 2, GCPercent: 100, MemLimit: math.MaxInt64}.Apply()
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Errorf("GOMAXPROCS = %d, want 2", got)
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("memory limit after off = %d, want none", got)
	}
}
