//go:build netns

package meshtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/integration/netlab"
)

// capture records every frame of one interface inside a lab node's network
// namespace with an AF_PACKET socket (what tcpdump uses), so the capture
// sees exactly what crosses the wire between the nodes.
type capture struct {
	fd     int
	stop   atomic.Bool
	done   chan struct{}
	mu     sync.Mutex
	frames [][]byte
	bytes  int
	err    error
}

const (
	ethPAll       = 0x0003
	maxCaptureLen = 256 << 20
)

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// startCapture opens the socket inside the node's namespace, bound to ifname.
func startCapture(n *netlab.Node, ifname string) (*capture, error) {
	c := &capture{fd: -1, done: make(chan struct{})}
	err := n.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, int(htons(ethPAll)))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		c.fd = fd
		if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: htons(ethPAll), Ifindex: ifi.Index}); err != nil {
			return fmt.Errorf("bind AF_PACKET socket to %s: %w", ifname, err)
		}
		tv := syscall.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
		if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<20)
	})
	if err != nil {
		if c.fd >= 0 {
			syscall.Close(c.fd)
		}
		return nil, err
	}
	go c.loop()
	return c, nil
}

func (c *capture) loop() {
	defer close(c.done)
	buf := make([]byte, 1<<17) // GSO frames can exceed the MTU
	for !c.stop.Load() {
		n, _, err := syscall.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
				continue
			}
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		if c.bytes+n <= maxCaptureLen {
			c.frames = append(c.frames, append([]byte(nil), buf[:n]...))
			c.bytes += n
		}
		c.mu.Unlock()
	}
}

// Close stops the capture and returns the frames seen.
func (c *capture) Close() ([][]byte, error) {
	if c.stop.CompareAndSwap(false, true) {
		<-c.done
		syscall.Close(c.fd)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames, c.err
}

// segment is a decoded TCP segment (IPv4 or IPv6).
type segment struct {
	src, dst netip.AddrPort
	payload  []byte
}

// tcpSegments decodes Ethernet/IPv4/TCP and Ethernet/IPv6/TCP frames (no
// IPv6 extension headers: the lab sends none) and skips everything else.
func tcpSegments(frames [][]byte) []segment {
	var out []segment
	for _, f := range frames {
		if len(f) < 14 {
			continue
		}
		var src, dst netip.Addr
		var tcp []byte
		switch binary.BigEndian.Uint16(f[12:14]) {
		case 0x0800:
			ip := f[14:]
			if len(ip) < 20 || ip[0]>>4 != 4 || ip[9] != syscall.IPPROTO_TCP {
				continue
			}
			ihl := int(ip[0]&0x0f) * 4
			total := int(binary.BigEndian.Uint16(ip[2:4]))
			if total == 0 || total > len(ip) { // 0: a GSO frame whose length the stack leaves unset
				total = len(ip)
			}
			if ihl < 20 || total < ihl+20 {
				continue
			}
			src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
			tcp = ip[ihl:total]
		case 0x86dd:
			ip := f[14:]
			if len(ip) < 60 || ip[0]>>4 != 6 || ip[6] != syscall.IPPROTO_TCP {
				continue
			}
			end := 40 + int(binary.BigEndian.Uint16(ip[4:6]))
			if end == 40 || end > len(ip) { // 0: a GSO frame, as for IPv4
				end = len(ip)
			}
			src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
			tcp = ip[40:end]
		default:
			continue
		}
		if len(tcp) < 20 {
			continue
		}
		off := int(tcp[12]>>4) * 4
		if off < 20 || off > len(tcp) {
			continue
		}
		out = append(out, segment{
			src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:2])),
			dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:4])),
			payload: tcp[off:],
		})
	}
	return out
}

// tlsAppData reports whether a payload starts with a TLS 1.2/1.3 record
// header of type application_data (0x17, legacy version 0x0303).
func tlsAppData(p []byte) bool {
	return len(p) >= 5 && p[0] == 0x17 && p[1] == 0x03 && p[2] == 0x03
}

// tlsClientHello reports whether a payload starts with a TLS handshake record
// (0x16, legacy version 0x0301 or 0x0303) holding a ClientHello (type 1).
func tlsClientHello(p []byte) bool {
	return len(p) >= 6 && p[0] == 0x16 && p[1] == 0x03 && (p[2] == 0x01 || p[2] == 0x03) && p[5] == 0x01
}
