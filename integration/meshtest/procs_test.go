//go:build netns

package meshtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/integration/internal/tier"
)

// The binaries under test, built from the workspace.
const (
	controllerPkg = "github.com/ambit-mesh/ambit/controller/cmd/controller"
	ztunnelPkg    = "github.com/ambit-mesh/ambit/ztunnel/cmd/ztunnel"
)

type binaries struct{ controller, ztunnel string }

// buildBinaries builds the controller and ztunnel into a temporary folder.
// A missing Go toolchain or repository is a missing prerequisite; a build
// that fails is a test failure.
func buildBinaries(t *testing.T) binaries {
	t.Helper()
	root, err := tier.RepoRoot()
	tier.Require(t, "the Ambit repository (go.work)", err)
	goTool, err := exec.LookPath("go")
	tier.Require(t, "the go command", err)
	dir := t.TempDir()
	start := time.Now()
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command(goTool, append(args, controllerPkg, ztunnelPkg)...)
	cmd.Dir = filepath.Join(root, "integration")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s %s: %v\n%s", controllerPkg, ztunnelPkg, err, out)
	}
	b := binaries{controller: filepath.Join(dir, "controller"), ztunnel: filepath.Join(dir, "ztunnel")}
	for _, p := range []string{b.controller, b.ztunnel} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("binary missing after go build: %v", err)
		}
	}
	t.Logf("built controller and ztunnel (race detector: %v) in %v", raceEnabled, time.Since(start).Round(time.Millisecond))
	return b
}

// spawner starts processes from one goroutine locked to its OS thread for
// the whole test, so that Pdeathsig (sent when the parent *thread* exits)
// kills the children only when the test process dies, never because the Go
// runtime retired a thread.
type spawner struct{ req chan func() }

func newSpawner(t *testing.T) *spawner {
	s := &spawner{req: make(chan func())}
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer close(done)
		for f := range s.req {
			f()
		}
	}()
	t.Cleanup(func() { close(s.req); <-done })
	return s
}

func (s *spawner) start(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	s.req <- func() { errc <- cmd.Start() }
	return <-errc
}

// process is one running binary; its stdout and stderr go to a log file that
// is copied into the test log when the test fails.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // cmd.Wait's result, once done is closed
}

// startProcess runs bin with args in the host network namespace. It is
// stopped (TERM, then KILL) when the test ends at the latest.
func startProcess(t *testing.T, sp *spawner, name, logPath, bin string, args ...string) *process {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sp.start(cmd); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Logf("started %s (pid %d): %s %s", name, cmd.Process.Pid, filepath.Base(bin), strings.Join(args, " "))
	t.Cleanup(func() {
		p.stop()
		if b, err := os.ReadFile(logPath); err == nil && bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			t.Errorf("%s reported a data race (see %s)", name, logPath)
		}
		if t.Failed() {
			t.Logf("---- %s log (%s), last lines ----\n%s", name, logPath, tail(logPath, 150, 48<<10))
		}
	})
	return p
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to 10 s, then SIGKILL. It returns the exit
// error (nil for a clean exit with status 0).
func (p *process) stop() error {
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
			return fmt.Errorf("%s did not exit within 10 s of SIGTERM; killed", p.name)
		}
	}
	return p.err
}

// tail returns at most the last n lines and max bytes of a file.
func tail(path string, n, max int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > max {
		b = b[len(b)-max:]
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// freePort returns a loopback address whose TCP port was free a moment ago
// and that no other call handed out. Another process may still take it
// before ours binds it: startUntilListening retries then.
func freePort(t *testing.T) string {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if _, dup := handedOut.LoadOrStore(addr, true); !dup {
			return addr
		}
	}
}

var handedOut sync.Map

// errAddrInUse is returned by waitListening when the process could not bind.
var errAddrInUse = errors.New("address already in use")

// waitListening waits until the process's log has the line that it logs
// once its listeners are open (needle), or it exits.
func (p *process) waitListening(needle string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(p.logPath)
		if bytes.Contains(b, []byte(needle)) {
			return nil
		}
		if p.exited() {
			b, _ = os.ReadFile(p.logPath)
			if bytes.Contains(b, []byte("address already in use")) {
				return errAddrInUse
			}
			return fmt.Errorf("%s exited before listening (%v):\n%s", p.name, p.err, tail(p.logPath, 30, 8<<10))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not log %q within %v:\n%s", p.name, needle, timeout, tail(p.logPath, 30, 8<<10))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// refused reports whether nothing listens on a loopback TCP address.
func refused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}
