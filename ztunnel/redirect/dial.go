package redirect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Dialer opens TCP connections from inside a pod's network namespace: the
// source address is the pod's, and every socket carries ztunnel's socket mark
// so that the capture rules do not redirect it back to ztunnel.
//
// Only the socket is created inside the namespace (on a briefly locked
// thread); connecting and waiting happen on the Go network poller like any
// other dial, so a slow connect does not hold an OS thread.
type Dialer struct {
	// Netns is where the sockets are created.
	Netns *Netns
	// Mark is the SO_MARK of every socket; zero means the package's Mark.
	Mark uint32
	// Timeout bounds a dial when positive; the context bounds it too.
	Timeout time.Duration
}

// Dialer returns a Dialer creating marked sockets in the namespace.
func (n *Netns) Dialer() *Dialer { return &Dialer{Netns: n, Mark: Mark} }

// DialContext connects to address, an IP literal and port ("10.0.0.1:80",
// "[fd00::1]:80"); network is "tcp", "tcp4" or "tcp6". Names are not
// resolved: ztunnel dials addresses. The connection is a *net.TCPConn.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	dst, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: fmt.Errorf("redirect: address must be ip:port: %w", err)}
	}
	a := dst.Addr().Unmap()
	switch {
	case network == "tcp":
	case network == "tcp4" && a.Is4(), network == "tcp6" && a.Is6():
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network + " for " + address)}
	}
	c, err := d.DialTCP(ctx, dst)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// DialTCP connects to dst from inside the namespace with a marked socket.
func (d *Dialer) DialTCP(ctx context.Context, dst netip.AddrPort) (*net.TCPConn, error) {
	raddr := net.TCPAddrFromAddrPort(dst)
	opErr := func(err error) error { return &net.OpError{Op: "dial", Net: "tcp", Addr: raddr, Err: err} }
	if d == nil || d.Netns == nil {
		return nil, opErr(errors.New("redirect: dialer has no network namespace"))
	}
	if !dst.IsValid() || dst.Port() == 0 {
		return nil, opErr(fmt.Errorf("redirect: invalid destination %v", dst))
	}
	if dst.Addr().Zone() != "" {
		return nil, opErr(errors.New("redirect: zoned addresses are not supported"))
	}
	if d.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.Timeout)
		defer cancel()
	}
	mark := d.Mark
	if mark == 0 {
		mark = Mark
	}
	addr := dst.Addr().Unmap()
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(dst.Port()), Addr: addr.As16()}
	if addr.Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(dst.Port()), Addr: addr.As4()}
	}

	fd := -1
	err := d.Netns.Do(ctx, func() error {
		s, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			return os.NewSyscallError("socket", err)
		}
		if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
			_ = unix.Close(s)
			return os.NewSyscallError("setsockopt SO_MARK", err)
		}
		fd = s
		return nil
	})
	if err != nil {
		return nil, opErr(err)
	}
	// The socket belongs to the pod namespace from now on, whatever thread
	// uses it; connect and the rest run here.
	inProgress := false
	switch err := unix.Connect(fd, sa); err {
	case nil:
	case unix.EINPROGRESS, unix.EINTR, unix.EALREADY:
		inProgress = true
	default:
		_ = unix.Close(fd)
		return nil, opErr(os.NewSyscallError("connect", err))
	}
	f := os.NewFile(uintptr(fd), "redirect-dial")
	defer f.Close()
	if inProgress {
		if err := waitConnected(ctx, f); err != nil {
			return nil, opErr(err)
		}
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, opErr(err)
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		_ = c.Close()
		return nil, opErr(fmt.Errorf("redirect: unexpected connection type %T", c))
	}
	_ = tc.SetNoDelay(true) // as net.Dialer does
	return tc, nil
}

// aLongTimeAgo is a deadline in the past, to wake a blocked wait.
var aLongTimeAgo = time.Unix(1, 0)

// waitConnected waits on the Go poller until the non-blocking connect of f's
// socket finishes, or ctx ends.
func waitConnected(ctx context.Context, f *os.File) error {
	// A temporary net.Conn on a duplicate of the socket gives access to the
	// poller (RawConn.Write waits for writability) and to deadlines.
	c, err := net.FileConn(f)
	if err != nil {
		return err
	}
	defer c.Close()
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return fmt.Errorf("redirect: unexpected connection type %T", c)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = tc.SetWriteDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = tc.SetWriteDeadline(aLongTimeAgo) })
	defer stop()

	var connErr error
	werr := rc.Write(func(s uintptr) bool {
		v, err := unix.GetsockoptInt(int(s), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			connErr = os.NewSyscallError("getsockopt SO_ERROR", err)
			return true
		}
		switch e := syscall.Errno(v); e {
		case 0:
			if _, err := unix.Getpeername(int(s)); err == nil {
				return true
			} else if err != unix.ENOTCONN {
				connErr = os.NewSyscallError("getpeername", err)
				return true
			}
			return false // still connecting
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			return false
		default:
			connErr = os.NewSyscallError("connect", e)
			return true
		}
	})
	if werr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return werr
	}
	return connErr
}
