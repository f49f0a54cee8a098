package main

import "testing"

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
