package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procID names one process across PID reuse: its PID and its start time in
// clock ticks since boot (field 22 of /proc/PID/stat).
type procID struct {
	PID   int
	Start uint64
}

// procStat returns the state letter and start time of pid.
func procStat(pid int) (state byte, start uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	return parseStat(b)
}

// parseStat reads the state and start time from the contents of /proc/PID/stat.
// The command name (field 2) may hold spaces and parentheses, so fields are
// counted from the last ')'.
func parseStat(b []byte) (state byte, start uint64, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("malformed /proc stat: no ')'")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field 22 (starttime) is f[19].
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("malformed /proc stat: %d fields after the command", len(f))
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("malformed /proc stat start time %q: %w", f[19], err)
	}
	return f[0][0], start, nil
}

// alive reports whether the process still runs (a zombie counts as stopped).
func (p procID) alive() bool {
	if p.PID <= 0 {
		return false
	}
	state, start, err := procStat(p.PID)
	return err == nil && start == p.Start && state != 'Z' && state != 'X'
}

// closeInheritedFDs marks every descriptor above stderr close-on-exec: the
// ones this process inherited (a caller's lock file, a CI step's pipe) must
// not stay open in the cluster's long-lived components after the caller is
// gone (a leaked pipe keeps a CI step waiting, a leaked lock blocks the next
// user of the lock). Descriptors Go opens are close-on-exec already.
func closeInheritedFDs() {
	_ = unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
}

// startProcess starts bin detached from the caller (its own session, output
// to logFile, appended) and records it in pidFile. The process outlives the
// caller; when the caller is its parent, a goroutine reaps it.
func startProcess(bin string, args, env []string, logFile, pidFile string) (procID, error) {
	closeInheritedFDs()
	if err := os.MkdirAll(filepath.Dir(logFile), 0o755); err != nil {
		return procID{}, err
	}
	lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return procID{}, err
	}
	defer func() { _ = lf.Close() }()
	fmt.Fprintf(lf, "---- %s: %s %s\n", time.Now().UTC().Format(time.RFC3339), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return procID{}, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() { _ = cmd.Wait() }()
	_, start, err := procStat(cmd.Process.Pid)
	if err != nil {
		return procID{}, fmt.Errorf("%s exited at once (see %s): %w", filepath.Base(bin), logFile, err)
	}
	id := procID{PID: cmd.Process.Pid, Start: start}
	if err := writeFileAtomic(pidFile, fmt.Appendf(nil, "%d %d\n", id.PID, id.Start), 0o644); err != nil {
		_ = cmd.Process.Kill()
		return procID{}, err
	}
	return id, nil
}

// readPidFile reads a PID file written by startProcess.
func readPidFile(path string) (procID, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return procID{}, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return procID{}, fmt.Errorf("%s: want \"PID STARTTIME\", got %q", path, strings.TrimSpace(string(b)))
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 0 {
		return procID{}, fmt.Errorf("%s: bad PID %q", path, f[0])
	}
	start, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return procID{}, fmt.Errorf("%s: bad start time %q", path, f[1])
	}
	return procID{PID: pid, Start: start}, nil
}

// stopProcs sends SIGTERM to every live process of ids, waits up to grace
// for them to end, then sends SIGKILL to the rest and waits again.
func stopProcs(ids []procID, grace time.Duration) error {
	signalAll := func(sig syscall.Signal) {
		for _, p := range ids {
			if p.alive() {
				_ = syscall.Kill(p.PID, sig)
			}
		}
	}
	waitAll := func(d time.Duration) bool {
		deadline := time.Now().Add(d)
		for {
			left := false
			for _, p := range ids {
				if p.alive() {
					left = true
				}
			}
			if !left {
				return true
			}
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	signalAll(syscall.SIGTERM)
	if waitAll(grace) {
		return nil
	}
	signalAll(syscall.SIGKILL)
	if waitAll(10 * time.Second) {
		return nil
	}
	var left []string
	for _, p := range ids {
		if p.alive() {
			left = append(left, strconv.Itoa(p.PID))
		}
	}
	return fmt.Errorf("processes %s survived SIGKILL", strings.Join(left, ", "))
}

// killPIDs sends SIGKILL to the given PIDs (as read just before) and waits
// until they are gone.
func killPIDs(pids []int) error {
	var ids []procID
	for _, pid := range pids {
		if _, start, err := procStat(pid); err == nil {
			ids = append(ids, procID{PID: pid, Start: start})
		}
	}
	if len(ids) == 0 {
		return nil
	}
	for _, p := range ids {
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
	}
	return stopProcs(ids, 0)
}

// shimsOf returns the PIDs of containerd shims started for the containerd
// listening on sock: processes whose command line holds "-address SOCK" and
// whose program is a containerd-shim.
func shimsOf(sock string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if isShimOf(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), sock) {
			out = append(out, pid)
		}
	}
	sort.Ints(out)
	return out
}

func isShimOf(argv []string, sock string) bool {
	if len(argv) == 0 || !strings.HasPrefix(filepath.Base(argv[0]), "containerd-shim") {
		return false
	}
	for i := 1; i+1 < len(argv); i++ {
		if argv[i] == "-address" && argv[i+1] == sock {
			return true
		}
	}
	return false
}

// rssKiB returns the resident set size of pid in KiB.
func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				return strconv.ParseInt(f[1], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("pid %d: no VmRSS", pid)
}

// componentsByArgs returns the PIDs of processes running one of the named
// programs with an argument inside the state folder state (every component
// is started with one: its config, data or kubeconfig path). Down uses it
// for components whose PID files are gone.
func componentsByArgs(state string, names []string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if isComponentOf(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), state, names) {
			out = append(out, pid)
		}
	}
	sort.Ints(out)
	return out
}

func isComponentOf(argv []string, state string, names []string) bool {
	if len(argv) == 0 {
		return false
	}
	base := filepath.Base(argv[0])
	known := false
	for _, n := range names {
		known = known || base == n
	}
	if !known {
		return false
	}
	prefix := strings.TrimSuffix(state, "/") + "/"
	for _, a := range argv[1:] {
		if _, v, ok := strings.Cut(a, "="); ok {
			a = v
		}
		if strings.HasPrefix(a, prefix) {
			return true
		}
	}
	return false
}
