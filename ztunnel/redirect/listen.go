package redirect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// The ports ztunnel opens inside every enrolled pod. An application of an
// enrolled pod cannot listen on them.
const (
	// OutboundPort receives the pod's outbound TCP, redirected by the rules.
	OutboundPort uint16 = 15001
	// InboundPort receives plaintext TCP sent to the pod, redirected by the
	// rules.
	InboundPort uint16 = 15006
	// HBONEPort receives HBONE tunnels from other meshed workloads; it is not
	// redirected.
	HBONEPort uint16 = 15008
	// DNSPort receives the pod's DNS queries over UDP (port 53, any
	// address) when the rules capture DNS (Config.DNSCapture), on the
	// loopback addresses, where REDIRECT sends locally generated packets.
	DNSPort uint16 = 15053
)

// ListenPacket opens a UDP socket inside the namespace on address (an IP
// literal and port, "127.0.0.1:15053"; network "udp4" or "udp6"). It
// carries no mark: the replies it sends to redirected queries must stay
// tracked so that the pod sees them come from the address it asked.
func (n *Netns) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.Do(ctx, func() error {
		var lc net.ListenConfig
		var err error
		pc, err = lc.ListenPacket(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redirect: listen on %s/%s in %s: %w", network, address, n, err)
	}
	return pc, nil
}

// DialUDP opens a UDP socket inside the namespace with ztunnel's mark
// (never redirected) and connects it to dst.
func (n *Netns) DialUDP(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := n.Do(ctx, func() error {
		d := net.Dialer{Control: markControl(Mark)}
		var err error
		c, err = d.DialContext(ctx, "udp", dst.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redirect: dial udp %s in %s: %w", dst, n, err)
	}
	return c, nil
}

// Listen opens a TCP listener on port inside the namespace, bound to the
// wildcard address: dual-stack [::] where the namespace has IPv6, else
// 0.0.0.0. No special socket option is needed: REDIRECT rewrites the
// destination to an address of the pod (loopback for outbound traffic, the
// receiving interface's primary address for inbound), which the wildcard
// covers. The listener may be used from any goroutine.
func (n *Netns) Listen(ctx context.Context, port uint16) (net.Listener, error) {
	return n.listen(ctx, port, 0)
}

// listen is Listen with a socket mark (0: none) on the listener, which the
// connections it accepts inherit.
func (n *Netns) listen(ctx context.Context, port uint16, mark uint32) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(ctx, func() error {
		var lc net.ListenConfig
		if mark != 0 {
			lc.Control = markControl(mark)
		}
		var err error
		ln, err = lc.Listen(ctx, "tcp", net.JoinHostPort("", strconv.Itoa(int(port))))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redirect: listen on %d in %s: %w", port, n, err)
	}
	return ln, nil
}

// Listeners are the three capture listeners of one pod.
type Listeners struct {
	Outbound net.Listener // OutboundPort
	Inbound  net.Listener // InboundPort
	HBONE    net.Listener // HBONEPort
}

// ListenAll opens the outbound, inbound and HBONE listeners inside the
// namespace. On error none is left open. The HBONE listener carries Mark, so
// the tunnels it accepts are ztunnel's own sockets for the capture rules
// (the other two must not: their connections are redirected, and their
// replies need conntrack to be translated back).
func (n *Netns) ListenAll(ctx context.Context) (*Listeners, error) {
	ls := &Listeners{}
	var err error
	if ls.Outbound, err = n.Listen(ctx, OutboundPort); err != nil {
		return nil, err
	}
	if ls.Inbound, err = n.Listen(ctx, InboundPort); err != nil {
		_ = ls.Close()
		return nil, err
	}
	if ls.HBONE, err = n.listen(ctx, HBONEPort, Mark); err != nil {
		_ = ls.Close()
		return nil, err
	}
	return ls, nil
}

// Close closes every listener that is open.
func (l *Listeners) Close() error {
	var errs []error
	for _, ln := range []net.Listener{l.Outbound, l.Inbound, l.HBONE} {
		if ln != nil {
			errs = append(errs, ln.Close())
		}
	}
	return errors.Join(errs...)
}

// markControl sets SO_MARK on a socket before it is bound.
func markControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return err
		}
		if serr != nil {
			return os.NewSyscallError("setsockopt SO_MARK", serr)
		}
		return nil
	}
}
