//go:build unix

package hbone

import (
	"net"
	"syscall"
)

// rawWriter writes to a socket without blocking: tryWrite writes what the
// socket takes now and returns how much.
type rawWriter struct{ rc syscall.RawConn }

func (w *rawWriter) tryWrite(p []byte) int {
	n := 0
	_ = w.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			k, err := syscall.Write(int(fd), p[n:])
			if err == syscall.EINTR {
				continue
			}
			if err != nil || k <= 0 {
				break
			}
			n += k
		}
		return true // never wait for the socket
	})
	return n
}

// sinkFor returns a rawWriter for a TCP connection, or nil.
func sinkFor(c net.Conn) *rawWriter {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return &rawWriter{rc: rc}
}
