//go:build !linux

package goruntime

import "errors"

// ApplySchedSlice needs Linux's sched_setattr; 0 does nothing.
func (s Settings) ApplySchedSlice() error {
	if s.SchedSlice == 0 {
		return nil
	}
	return errors.New("-sched-slice needs Linux")
}
