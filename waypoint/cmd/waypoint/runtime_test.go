package main

import (
	"io"
	"math"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/goruntime"
)

// TestRuntimeOptions checks the defaults (one processor, GOGC 100, no
// memory limit of the waypoint's own, the kernel's time slice), the
// environment and the flags.
func TestRuntimeOptions(t *testing.T) {
	for name, c := range map[string]struct {
		args []string
		env  map[string]string
		want goruntime.Settings
	}{
		"defaults":  {nil, nil, goruntime.Settings{MaxProcs: 1, GCPercent: 100, MemLimit: -1}},
		"env":       {nil, map[string]string{"GOMAXPROCS": "2", "GOGC": "off"}, goruntime.Settings{MaxProcs: 2, GCPercent: -1, MemLimit: -1}},
		"env gogc":  {nil, map[string]string{"GOGC": "50"}, goruntime.Settings{MaxProcs: 1, GCPercent: 50, MemLimit: -1}},
		"bad env":   {nil, map[string]string{"GOMAXPROCS": "many", "GOGC": "lots"}, goruntime.Settings{MaxProcs: 1, GCPercent: 100, MemLimit: -1}},
		"flags":     {[]string{"-gomaxprocs", "0", "-gc-percent", "200", "-memory-limit", "48MiB"}, map[string]string{"GOMAXPROCS": "2"}, goruntime.Settings{MaxProcs: 0, GCPercent: 200, MemLimit: 48 << 20}},
		"limit off": {[]string{"-memory-limit", "off"}, nil, goruntime.Settings{MaxProcs: 1, GCPercent: 100, MemLimit: math.MaxInt64}},
		"flag wins": {[]string{"-gomaxprocs", "3"}, map[string]string{"GOMAXPROCS": "2"}, goruntime.Settings{MaxProcs: 3, GCPercent: 100, MemLimit: -1}},
		"gc off":    {[]string{"-gc-percent", "-1"}, nil, goruntime.Settings{MaxProcs: 1, GCPercent: -1, MemLimit: -1}},
		"env one":   {nil, map[string]string{"GOMAXPROCS": "1"}, goruntime.Settings{MaxProcs: 1, GCPercent: 100, MemLimit: -1}},
		"slice":     {[]string{"-sched-slice", "1ms"}, nil, goruntime.Settings{MaxProcs: 1, GCPercent: 100, MemLimit: -1, SchedSlice: time.Millisecond}},
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
