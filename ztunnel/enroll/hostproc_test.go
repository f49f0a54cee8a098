package enroll

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestHostNetnsPath(t *testing.T) {
	for _, tc := range []struct{ path, hostProc, want string }{
		{"/proc/42/ns/net", "/host/proc", "/host/proc/42/ns/net"},
		{"/proc/42/ns/net", "", "/proc/42/ns/net"},
		{"/var/run/netns/cni-1", "/host/proc", "/var/run/netns/cni-1"},
		{"/proc/../etc/passwd", "/host/proc", "/proc/../etc/passwd"}, // not under /proc once cleaned
		{"/proc//42/./ns/net", "/host/proc", "/host/proc/42/ns/net"},
		{"/processes/42", "/host/proc", "/processes/42"},
	} {
		if got := HostNetnsPath(tc.path, tc.hostProc); got != tc.want {
			t.Errorf("HostNetnsPath(%q, %q) = %q, want %q", tc.path, tc.hostProc, got, tc.want)
		}
	}
}

// TestCheckNetnsThroughHostProc checks that a process's namespace path is
// looked at through the host's /proc: here a folder where PID 999999999
// (above any pid_max, so absent from this /proc) is this process.
func TestCheckNetnsThroughHostProc(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("network namespaces need Linux")
	}
	hostProc := t.TempDir()
	if err := os.Symlink("/proc/self", filepath.Join(hostProc, "999999999")); err != nil {
		t.Fatal(err)
	}
	const path = "/proc/999999999/ns/net"
	if err := checkNetns(path, hostProc); err != nil {
		t.Fatalf("checkNetns through the host's /proc: %v", err)
	}
	err := checkNetns(path, "")
	var ve *ValidationError
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("checkNetns without the host's /proc: %v, want a ValidationError saying it does not exist", err)
	}
	// The error names both paths.
	err = checkNetns("/proc/999999998/ns/net", hostProc)
	if err == nil || !strings.Contains(err.Error(), "/proc/999999998/ns/net") || !strings.Contains(err.Error(), hostProc) {
		t.Fatalf("missing process: %v, want both paths named", err)
	}
}
