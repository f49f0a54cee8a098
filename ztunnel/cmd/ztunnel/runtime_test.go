package main

import "testing"

func TestRunRejectsBadRuntimeFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-node-name", "n", "-gomaxprocs", "-2"},
		{"-node-name", "n", "-memory-limit", "12 apples"},
		{"-node-name", "n", "-sched-slice", "10us"},
	} {
		if err := run(args); err == nil {
			t.Errorf("run(%q) succeeded, want an error", args)
		}
	}
}
