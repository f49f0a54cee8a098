//go:build unix

package hbone

import (
	"net"
	"syscall"
)

// rawWriter writes to a socket without blocking: tryWrite writes what the
// socket takes now and returns how much. One goroutine at a time calls
// tryWrite (the server's read loop).
type rawWriter struct {
	rc    syscall.RawConn
	write func(fd uintptr) bool // w.writeFD, allocated once
	p     []byte                // being written
	n     int                   // bytes of p written
}

func (w *rawWriter) tryWrite(p []byte) int {
	w.p, w.n = p, 0
	_ = w.rc.Write(w.write)
	n := w.n
	w.p = nil
	return n
}

func (w *rawWriter) writeFD(fd uintptr) bool {
	for w.n < len(w.p) {
		k, err := syscall.Write(int(fd), w.p[w.n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil || k <= 0 {
			break
		}
		w.n += k
	}
	return true // never wait for the socket
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
	w := &rawWriter{rc: rc}
	w.write = w.writeFD
	return w
}
