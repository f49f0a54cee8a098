//go:build !linux

package goruntime

import (
	"errors"
	"time"
)

// ErrSliceUnsupported is returned by SetSchedSlice where custom scheduler
// slices are not supported.
var ErrSliceUnsupported = errors.New("custom scheduler slices are only supported on Linux 6.12 or later")

// SetSchedSlice is only supported on Linux.
func SetSchedSlice(d time.Duration) error {
	if d == 0 {
		return nil
	}
	return ErrSliceUnsupported
}
