package tier

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// CI reports whether the tests run under CI (CI=true).
func CI() bool { return os.Getenv("CI") == "true" }

// Require fails the test under CI and skips it elsewhere when err is not nil.
func Require(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if CI() {
		t.Fatalf("prerequisite %s missing (CI=true, so this fails instead of skipping): %v", what, err)
	}
	t.Skipf("prerequisite %s missing: %v", what, err)
}

// RequireRoot requires an effective user ID of 0.
func RequireRoot(t testing.TB) {
	t.Helper()
	var err error
	if os.Geteuid() != 0 {
		err = fmt.Errorf("running as uid %d, the network-namespace tier needs root", os.Geteuid())
	}
	Require(t, "root", err)
}

// RepoRoot returns the repository root: the nearest parent folder holding go.work.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.work above the working directory")
		}
		dir = parent
	}
}
