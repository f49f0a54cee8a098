package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/integration/internal/tier"
)

func buildPause(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ambit-pause")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func waitExit(t *testing.T, cmd *exec.Cmd) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("ambit-pause did not exit within 10s")
		return nil
	}
}

func TestExitsZeroOnSignal(t *testing.T) {
	bin := buildPause(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd := exec.Command(bin)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// It must keep running until signalled: SIGCHLD and time alone do not end it.
		time.Sleep(300 * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGCHLD)
		time.Sleep(100 * time.Millisecond)
		if cmd.ProcessState != nil {
			t.Fatalf("exited before %s", sig)
		}
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		if err := waitExit(t, cmd); err != nil {
			t.Errorf("after %s: %v, want exit 0", sig, err)
		}
	}
}

func TestArgs(t *testing.T) {
	bin := buildPause(t)
	out, err := exec.Command(bin, "-version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "ambit-pause ") {
		t.Errorf("-version: %v %q", err, out)
	}
	out, err = exec.Command(bin, "sleep", "1").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "usage: ambit-pause") {
		t.Errorf("unexpected arguments: %v %q, want exit 2 and usage", err, out)
	}
}

// TestReapsOrphans runs ambit-pause as PID 1 of a new PID namespace, as in a
// pod that shares its process namespace, orphans processes there and checks
// that none stays a zombie.
func TestReapsOrphans(t *testing.T) {
	tier.RequireRoot(t)
	nsenter, err := exec.LookPath("nsenter")
	tier.Require(t, "nsenter (util-linux)", err)
	bin := buildPause(t)
	cmd := exec.Command(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_, _ = cmd.Process.Wait()
		}
	}()
	pause := cmd.Process.Pid
	// Each shell starts background children and exits at once: they are
	// re-parented to the namespace's init, ambit-pause, and exit shortly after.
	for i := 0; i < 3; i++ {
		out, err := exec.Command(nsenter, "-t", strconv.Itoa(pause), "-p", "--", "/bin/sh", "-c",
			"for i in 1 2 3 4 5; do sleep 0.5 >/dev/null 2>&1 & done; exit 0").CombinedOutput()
		if err != nil {
			t.Fatalf("nsenter: %v\n%s", err, out)
		}
	}
	// The orphans become children of ambit-pause...
	deadline := time.Now().Add(5 * time.Second)
	adopted := false
	for time.Now().Before(deadline) && !adopted {
		adopted = len(children(t, pause)) > 0
		time.Sleep(20 * time.Millisecond)
	}
	if !adopted {
		t.Fatal("no orphan was re-parented to ambit-pause; the test did not set up what it meant to")
	}
	// ...and once they exit none of them stays a zombie.
	var left []string
	for time.Now().Before(deadline.Add(5 * time.Second)) {
		left = children(t, pause)
		if len(left) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(left) != 0 {
		t.Fatalf("children of ambit-pause left: %v", left)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := waitExit(t, cmd); err != nil {
		t.Errorf("after SIGTERM: %v, want exit 0", err)
	}
}

// children lists "pid:state" of the processes whose parent is ppid.
func children(t *testing.T, ppid int) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces, so split after ')'.
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if p, _ := strconv.Atoi(f[1]); p == ppid {
			out = append(out, fmt.Sprintf("%s:%s", e.Name(), f[0]))
		}
	}
	return out
}
