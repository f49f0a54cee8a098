package goruntime

import (
	"errors"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// threadSlice reads the custom slice of thread tid (0: none).
func threadSlice(t *testing.T, tid int) time.Duration {
	t.Helper()
	var a schedAttr
	if _, _, errno := unix.Syscall6(unix.SYS_SCHED_GETATTR, uintptr(tid), uintptr(unsafe.Pointer(&a)), unsafe.Sizeof(a), 0, 0, 0); errno != 0 {
		t.Fatalf("sched_getattr %d: %v", tid, errno)
	}
	return time.Duration(a.runtime)
}

// allThreads returns the slice of every thread of the process.
func allThreads(t *testing.T) map[int]time.Duration {
	t.Helper()
	out := map[int]time.Duration{}
	tids, err := threadIDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, tid := range tids {
		out[tid] = threadSlice(t, tid)
	}
	return out
}

func TestSetSchedSlice(t *testing.T) {
	t.Cleanup(func() { _ = SetSchedSlice(0) })
	// Keep the nice value: the request must not reset it.
	nice0, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	var def time.Duration // the kernel's default slice, as it reports it
	for _, s := range allThreads(t) {
		def = s
	}
	const d = 300 * time.Microsecond
	if err := SetSchedSlice(d); err != nil {
		if errors.Is(err, ErrSliceUnsupported) {
			t.Skipf("kernel: %v", err)
		}
		t.Fatal(err)
	}
	for tid, got := range allThreads(t) {
		if got != d {
			t.Errorf("thread %d: slice %v, want %v", tid, got, d)
		}
	}
	if nice, _ := unix.Getpriority(unix.PRIO_PROCESS, 0); nice != nice0 {
		t.Errorf("getpriority %d after the slice, was %d", nice, nice0)
	}
	// A thread the runtime starts afterwards inherits it.
	got := make(chan time.Duration)
	release := make(chan struct{})
	defer close(release)
	for range 4 {
		go func() {
			runtime.LockOSThread() // this goroutine's thread ends with it
			got <- threadSlice(t, unix.Gettid())
			<-release // hold the thread so that the next goroutine gets another
		}()
		if s := <-got; s != d {
			t.Errorf("a later thread has slice %v, want %v", s, d)
		}
	}
	// 0 restores the kernel's default.
	if err := SetSchedSlice(0); err != nil {
		t.Fatal(err)
	}
	for tid, s := range allThreads(t) {
		if s != def {
			t.Errorf("thread %d: slice %v after reset, want the default %v", tid, s, def)
		}
	}
}
