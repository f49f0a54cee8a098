package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// OriginalDst returns the destination a redirected connection was addressed
// to before the REDIRECT rule rewrote it, read from conntrack with
// SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6) on the accepted
// socket. For a connection that was not redirected it reports the local
// address if conntrack tracks the connection, and an error otherwise.
// IPv4 connections accepted on a dual-stack listener report plain IPv4.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	if c == nil {
		return netip.AddrPort{}, errors.New("redirect: nil connection")
	}
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok || local == nil {
		return netip.AddrPort{}, errors.New("redirect: connection has no local TCP address")
	}
	v4 := local.AddrPort().Addr().Unmap().Is4()
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var dst netip.AddrPort
	var optErr error
	err = rc.Control(func(fd uintptr) {
		if v4 {
			dst, optErr = origDst4(int(fd))
		} else {
			dst, optErr = origDst6(int(fd))
		}
	})
	if err == nil {
		err = optErr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("redirect: original destination: %w", err)
	}
	return dst, nil
}

// origDst4 reads a struct sockaddr_in. The kernel copies 16 bytes; an
// IPv6Mreq (20 bytes) is the x/sys/unix getsockopt helper of suitable size.
func origDst4(fd int) (netip.AddrPort, error) {
	m, err := unix.GetsockoptIPv6Mreq(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", err)
	}
	return parseSockaddrIn(m.Multiaddr[:])
}

// parseSockaddrIn decodes family (host order), port and address (network
// order) of a struct sockaddr_in.
func parseSockaddrIn(b []byte) (netip.AddrPort, error) {
	if len(b) < 8 {
		return netip.AddrPort{}, errors.New("short sockaddr_in")
	}
	if fam := binary.NativeEndian.Uint16(b[0:2]); fam != unix.AF_INET {
		return netip.AddrPort{}, fmt.Errorf("sockaddr family %d, want AF_INET", fam)
	}
	port := binary.BigEndian.Uint16(b[2:4])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
}

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST of linux/netfilter_ipv6/ip6_tables.h
// (x/sys/unix does not define it).
const ip6tSoOriginalDst = 80

// origDst6 reads a struct sockaddr_in6 (28 bytes) into an IPv6MTUInfo, whose
// first field is one.
func origDst6(fd int) (netip.AddrPort, error) {
	info, err := unix.GetsockoptIPv6MTUInfo(fd, unix.SOL_IPV6, ip6tSoOriginalDst)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt IP6T_SO_ORIGINAL_DST: %w", err)
	}
	sa := info.Addr
	if sa.Family != unix.AF_INET6 {
		return netip.AddrPort{}, fmt.Errorf("sockaddr family %d, want AF_INET6", sa.Family)
	}
	// Port holds the two network-order bytes as they lie in memory.
	var p [2]byte
	binary.NativeEndian.PutUint16(p[:], sa.Port)
	port := binary.BigEndian.Uint16(p[:])
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port), nil
}
