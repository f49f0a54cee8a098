//go:build linux

package hbone

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// Socket I/O on the data path uses raw system calls on the non-blocking
// socket, through syscall.RawConn (which still parks the goroutine in the
// network poller when the socket is not ready). A plain conn's Read and
// Write tell the Go scheduler that they enter a system call, and the first
// such call after the process was idle wakes the runtime's monitor thread
// (sysmon), which sleeps whenever every P is idle: at a few thousand small
// messages per second, with ztunnel's single P, that was a futex wake-up and
// several context switches of the monitor per message, about a third of the
// proxy's CPU. A non-blocking read or write returns at once, so nothing is
// lost by not announcing it.

// rawReader reads a TCP socket. One goroutine at a time calls Read.
type rawReader struct {
	c    *net.TCPConn
	rc   syscall.RawConn
	read func(fd uintptr) bool // r.readFD, allocated once
	p    []byte
	n    int
	errn syscall.Errno
}

func newRawReader(c net.Conn) *rawReader {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawReader{c: tc, rc: rc}
	r.read = r.readFD
	return r
}

func (r *rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p, r.n, r.errn = p, 0, 0
	err := r.rc.Read(r.read)
	n, errn := r.n, r.errn
	r.p = nil
	switch {
	case err != nil:
		return 0, err
	case errn != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: r.c.LocalAddr(), Addr: r.c.RemoteAddr(), Err: os.NewSyscallError("read", errn)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (r *rawReader) readFD(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&r.p[0])), uintptr(len(r.p)))
		switch e {
		case 0:
			r.n = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait in the poller until readable
		}
		r.errn = e
		return true
	}
}

// rawWriter writes to a TCP socket: Write like a conn's Write, tryWrite
// without waiting (it writes what the socket takes now and returns how
// much). One goroutine at a time calls Write or tryWrite (tryWrite: the
// read loop of the tunnel's connection, while the stream's reader waits).
type rawWriter struct {
	c     *net.TCPConn
	count func(int) // Join's byte count of the direction (tryWrite), or nil
	rc    syscall.RawConn
	write func(fd uintptr) bool // w.writeFD, allocated once
	p     []byte                // being written
	n     int                   // bytes of p written
	wait  bool                  // wait for the socket to take all of p
	errn  syscall.Errno
}

func (w *rawWriter) tryWrite(p []byte) int {
	w.p, w.n, w.wait, w.errn = p, 0, false, 0
	_ = w.rc.Write(w.write)
	n := w.n
	w.p = nil
	if n > 0 && w.count != nil {
		w.count(n)
	}
	return n
}

// Write writes all of p, waiting for the socket as needed.
func (w *rawWriter) Write(p []byte) (int, error) {
	w.p, w.n, w.wait, w.errn = p, 0, true, 0
	err := w.rc.Write(w.write)
	n, errn := w.n, w.errn
	w.p = nil
	switch {
	case err != nil:
		return n, err
	case errn != 0:
		return n, &net.OpError{Op: "write", Net: "tcp", Source: w.c.LocalAddr(), Addr: w.c.RemoteAddr(), Err: os.NewSyscallError("write", errn)}
	}
	return n, nil
}

func (w *rawWriter) writeFD(fd uintptr) bool {
	for w.n < len(w.p) {
		rest := w.p[w.n:]
		k, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
		switch e {
		case 0:
			if k == 0 {
				w.errn = syscall.EIO // not done by a socket with room
				return true
			}
			w.n += int(k)
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return !w.wait
		}
		w.errn = e
		return true
	}
	return true
}

// newRawWriter returns a rawWriter for a TCP connection, or nil.
func newRawWriter(c net.Conn) *rawWriter {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	w := &rawWriter{c: tc, rc: rc}
	w.write = w.writeFD
	return w
}

// sinkFor returns a rawWriter for a TCP connection, or nil; count, if not
// nil, is called with the bytes each tryWrite wrote.
func sinkFor(c net.Conn, count func(int)) *rawWriter {
	w := newRawWriter(c)
	if w != nil {
		w.count = count
	}
	return w
}
