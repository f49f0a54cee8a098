package goruntime

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrSliceUnsupported is returned by SetSchedSlice on a kernel that does
// not keep the slice it is asked for.
var ErrSliceUnsupported = errors.New("the kernel does not keep custom scheduler slices (they need Linux 6.12 or later)")

// schedAttr is the kernel's struct sched_attr, as far as SCHED_NORMAL uses
// it (SCHED_ATTR_SIZE_VER0).
type schedAttr struct {
	size     uint32
	policy   uint32
	flags    uint64
	nice     int32
	priority uint32
	runtime  uint64
	deadline uint64
	period   uint64
}

// SetSchedSlice asks the kernel's fair scheduler for slices of length d for
// every thread of the process (sched_setattr with sched_runtime, Linux
// 6.12 and later); threads created afterwards inherit it from the thread
// that creates them. 0 restores the kernel's default slice. Each thread
// keeps its nice value. It reads the slice back and fails on a kernel that
// ignores the request.
func SetSchedSlice(d time.Duration) error {
	tids, err := threadIDs()
	if err != nil {
		return err
	}
	var errs []error
	for _, tid := range tids {
		// getpriority(2) returns 20 - nice.
		prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
		if err != nil {
			continue // the thread ended
		}
		a := schedAttr{policy: unix.SCHED_NORMAL, nice: int32(20 - prio), runtime: uint64(d.Nanoseconds())}
		a.size = uint32(unsafe.Sizeof(a))
		if _, _, errno := unix.Syscall(unix.SYS_SCHED_SETATTR, uintptr(tid), uintptr(unsafe.Pointer(&a)), 0); errno != 0 {
			if errno != unix.ESRCH {
				errs = append(errs, fmt.Errorf("sched_setattr thread %d: %w", tid, errno))
			}
			continue
		}
		if d == 0 {
			continue
		}
		var got schedAttr
		if _, _, errno := unix.Syscall6(unix.SYS_SCHED_GETATTR, uintptr(tid), uintptr(unsafe.Pointer(&got)), unsafe.Sizeof(got), 0, 0, 0); errno == 0 &&
			got.runtime != uint64(d.Nanoseconds()) {
			return fmt.Errorf("%w: thread %d has %v, asked %v", ErrSliceUnsupported, tid, time.Duration(got.runtime), d)
		}
	}
	return errors.Join(errs...)
}

// threadIDs lists the process's threads.
func threadIDs() ([]int, error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, t := range tasks {
		if tid, err := strconv.Atoi(t.Name()); err == nil {
			out = append(out, tid)
		}
	}
	return out, nil
}
