//go:build linux

package goruntime

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// ApplySchedSlice asks the kernel's scheduler for s.SchedSlice as the time
// slice of every thread of the process (sched_setattr's sched_runtime for
// a normal-policy thread; threads created later inherit it). With the
// EEVDF scheduler (Linux 6.12 and later) a woken thread whose slice is
// shorter than the running thread's may preempt it at once, instead of
// waiting until the running thread has had its turn; the share of CPU time
// is unchanged (that is the nice value's, which is kept). Older kernels
// accept and ignore it. Threads under a real-time policy are left alone.
// 0 does nothing.
func (s Settings) ApplySchedSlice() error {
	if s.SchedSlice == 0 {
		return nil
	}
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("-sched-slice: list the threads: %w", err)
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if err := setSlice(tid, s.SchedSlice.Nanoseconds()); err != nil {
			return fmt.Errorf("-sched-slice %v: thread %d: %w", s.SchedSlice, tid, err)
		}
	}
	return nil
}

func setSlice(tid int, ns int64) error {
	attr, err := unix.SchedGetAttr(tid, 0)
	if err == unix.ESRCH {
		return nil // the thread ended meanwhile
	}
	if err != nil {
		return err
	}
	switch attr.Policy {
	case unix.SCHED_NORMAL, unix.SCHED_BATCH, unix.SCHED_IDLE:
	default:
		return nil
	}
	// The slice only: the policy and nice value stay as they are; no
	// flags (no utilization clamps, no reset on fork).
	attr.Runtime, attr.Deadline, attr.Period, attr.Flags = uint64(ns), 0, 0, 0
	if err := unix.SchedSetAttr(tid, attr, 0); err != nil && err != unix.ESRCH {
		return err
	}
	return nil
}
