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
// thread, a batch at a time: see Netns.socket); connecting and waiting happen
// on the Go network poller like any other dial, so a slow connect does not
// hold an OS thread.
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
	return d.dial(ctx, netip.AddrPort{}, dst)
}

// DialFrom connects to dst, an address of the pod, from src's address: the
// application sees the connection come from there (the client's address)
// rather than from the pod itself. The socket is transparent (IP_TRANSPARENT)
// and carries SourceMark instead of the Dialer's mark; the pod's capture must
// have been installed with Config.OriginalSource, or the application's
// replies leave the pod and the connection never opens. Its port is chosen by
// the kernel and is never src's port: a redirected connection from src:port
// to dst may still be in conntrack, and a connection with the same addresses
// and ports would be taken for it. A src of the other family than dst's is
// ignored (the connection comes from the pod's address).
func (d *Dialer) DialFrom(ctx context.Context, src, dst netip.AddrPort) (*net.TCPConn, error) {
	if a := src.Addr().Unmap(); !a.IsValid() || a.Is4() != dst.Addr().Unmap().Is4() {
		src = netip.AddrPort{}
	} else {
		src = netip.AddrPortFrom(a, src.Port())
	}
	return d.dial(ctx, src, dst)
}

// dial is DialTCP, and DialFrom when src is valid.
func (d *Dialer) dial(ctx context.Context, src, dst netip.AddrPort) (*net.TCPConn, error) {
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
	if src.IsValid() {
		mark = SourceMark
	}
	addr := dst.Addr().Unmap()
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(dst.Port()), Addr: addr.As16()}
	if addr.Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(dst.Port()), Addr: addr.As4()}
	}

	fd, err := d.Netns.socket(ctx, family)
	if err != nil {
		return nil, opErr(err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
		_ = unix.Close(fd)
		return nil, opErr(os.NewSyscallError("setsockopt SO_MARK", err))
	}
	if src.IsValid() {
		if err := bindTransparent(fd, src, func() (int, error) { return d.Netns.socket(ctx, family) }); err != nil {
			_ = unix.Close(fd)
			return nil, opErr(err)
		}
	}
	// The socket belongs to the pod namespace, whatever thread uses it: its
	// options, bind and connect apply there.
	inProgress := false
	switch err := unix.Connect(fd, sa); err {
	case nil:
	case unix.EINPROGRESS, unix.EINTR, unix.EALREADY:
		// Inside a pod, to its own application, the handshake has
		// usually completed by the time connect returns: then there is
		// nothing to wait for.
		done, cerr := connectDone(fd)
		if cerr != nil {
			_ = unix.Close(fd)
			return nil, opErr(cerr)
		}
		inProgress = !done
	default:
		_ = unix.Close(fd)
		return nil, opErr(os.NewSyscallError("connect", err))
	}
	// One net.Conn for the socket (FileConn sets TCP_NODELAY and
	// keep-alive as net.Dialer does); a connect in progress is awaited on
	// its poller.
	f := os.NewFile(uintptr(fd), "redirect-dial")
	c, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		return nil, opErr(err)
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		_ = c.Close()
		return nil, opErr(fmt.Errorf("redirect: unexpected connection type %T", c))
	}
	if inProgress {
		if err := waitConnected(ctx, tc); err != nil {
			_ = tc.Close()
			return nil, opErr(err)
		}
	}
	return tc, nil
}

// connectDone reports whether the non-blocking connect of socket fd has
// finished, or its error.
func connectDone(fd int) (bool, error) {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return false, os.NewSyscallError("getsockopt SO_ERROR", err)
	}
	switch e := syscall.Errno(v); e {
	case 0:
		if _, err := unix.Getpeername(fd); err == nil {
			return true, nil
		} else if err != unix.ENOTCONN {
			return false, os.NewSyscallError("getpeername", err)
		}
		return false, nil // still connecting
	case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
		return false, nil
	default:
		return false, os.NewSyscallError("connect", e)
	}
}

// bindTransparent makes socket s transparent and binds it to src's address
// with a port the kernel picks, other than src's port. newSocket returns
// another socket of s's namespace and family, for that port's case.
func bindTransparent(s int, src netip.AddrPort, newSocket func() (int, error)) error {
	var sa unix.Sockaddr
	if src.Addr().Is4() {
		if err := unix.SetsockoptInt(s, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
			return os.NewSyscallError("setsockopt IP_TRANSPARENT", err)
		}
		sa = &unix.SockaddrInet4{Addr: src.Addr().As4()}
	} else {
		if err := unix.SetsockoptInt(s, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); err != nil {
			return os.NewSyscallError("setsockopt IPV6_TRANSPARENT", err)
		}
		sa = &unix.SockaddrInet6{Addr: src.Addr().As16()}
	}
	if err := unix.Bind(s, sa); err != nil {
		return os.NewSyscallError("bind", err)
	}
	if src.Port() == 0 {
		return nil
	}
	// The port is bound until the socket closes: if it is src's, bind
	// another socket while this one holds it, and move that one into s.
	for range 4 {
		got, err := unix.Getsockname(s)
		if err != nil {
			return os.NewSyscallError("getsockname", err)
		}
		if sockPort(got) != int(src.Port()) {
			return nil
		}
		s2, err := newSocket() // of s's namespace
		if err != nil {
			return err
		}
		err = copyOpts(s2, s, src.Addr().Is4())
		if err == nil {
			err = unix.Bind(s2, sa)
		}
		if err == nil {
			err = unix.Dup3(s2, s, unix.O_CLOEXEC) // closes the socket holding src's port
		}
		_ = unix.Close(s2)
		if err != nil {
			return os.NewSyscallError("bind", err)
		}
	}
	return errors.New("redirect: the kernel keeps choosing the client's own port")
}

// copyOpts gives s2 the mark and transparency of s.
func copyOpts(s2, s int, v4 bool) error {
	mark, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_MARK)
	if err != nil {
		return err
	}
	if err := unix.SetsockoptInt(s2, unix.SOL_SOCKET, unix.SO_MARK, mark); err != nil {
		return err
	}
	if v4 {
		return unix.SetsockoptInt(s2, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
	}
	return unix.SetsockoptInt(s2, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
}

func sockPort(sa unix.Sockaddr) int {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return sa.Port
	case *unix.SockaddrInet6:
		return sa.Port
	}
	return -1
}

// aLongTimeAgo is a deadline in the past, to wake a blocked wait.
var aLongTimeAgo = time.Unix(1, 0)

// waitConnected waits on the Go poller until the non-blocking connect of
// tc's socket finishes, or ctx ends (an error, even if the connect
// finished). On success tc has no write deadline.
func waitConnected(ctx context.Context, tc *net.TCPConn) error {
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = tc.SetWriteDeadline(dl)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = tc.SetWriteDeadline(aLongTimeAgo)
		close(fired)
	})
	var connErr error
	werr := rc.Write(func(s uintptr) bool {
		done, err := connectDone(int(s))
		if err != nil {
			connErr = err
			return true
		}
		return done
	})
	if !stop() {
		<-fired
		return ctx.Err()
	}
	if werr != nil {
		return werr
	}
	if connErr != nil {
		return connErr
	}
	return tc.SetWriteDeadline(time.Time{})
}
