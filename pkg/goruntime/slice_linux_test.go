//go:build linux

package goruntime

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// kernelAtLeast reports whether the running kernel is release maj.min or
// later.
func kernelAtLeast(t *testing.T, maj, min int) bool {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	parts := strings.SplitN(unix.ByteSliceToString(u.Release[:]), ".", 3)
	if len(parts) < 2 {
		t.Fatalf("kernel release %q", u.Release)
	}
	a, _ := strconv.Atoi(parts[0])
	b, _ := strconv.Atoi(strings.TrimLeftFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return a > maj || a == maj && b >= min
}

func TestApplySchedSlice(t *testing.T) {
	if !kernelAtLeast(t, 6, 12) {
		t.Skip("custom slices need Linux 6.12 or later; older kernels ignore sched_runtime")
	}
	t.Cleanup(func() {
		ents, _ := os.ReadDir("/proc/self/task")
		for _, e := range ents {
			tid, _ := strconv.Atoi(e.Name())
			if attr, err := unix.SchedGetAttr(tid, 0); err == nil {
				attr.Runtime, attr.Flags = 0, 0
				_ = unix.SchedSetAttr(tid, attr, 0)
			}
		}
	})
	const slice = 2 * time.Millisecond
	if err := (Settings{SchedSlice: slice}).ApplySchedSlice(); err != nil {
		t.Fatal(err)
	}
	// Every thread there was has the slice...
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		attr, err := unix.SchedGetAttr(tid, 0)
		if err == unix.ESRCH {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if attr.Runtime != uint64(slice.Nanoseconds()) {
			t.Errorf("thread %d: slice %d ns, want %d", tid, attr.Runtime, slice.Nanoseconds())
		}
	}
	// ...and so has a thread created afterwards: one locked goroutine per
	// thread there is, plus one, needs a new thread.
	n := len(ents) + 1
	got := make(chan uint64, n)
	release := make(chan struct{})
	for range n {
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			attr, err := unix.SchedGetAttr(0, 0)
			if err != nil {
				got <- 0
			} else {
				got <- attr.Runtime
			}
			<-release
		}()
	}
	for range n {
		if r := <-got; r != uint64(slice.Nanoseconds()) {
			t.Errorf("a thread has slice %d ns, want %d", r, slice.Nanoseconds())
		}
	}
	close(release)
	// 0 leaves everything as it is.
	if err := (Settings{}).ApplySchedSlice(); err != nil {
		t.Fatal(err)
	}
	if attr, err := unix.SchedGetAttr(0, 0); err != nil || attr.Runtime != uint64(slice.Nanoseconds()) {
		t.Errorf("after a zero slice: %+v, %v; want the slice kept", attr, err)
	}
}
