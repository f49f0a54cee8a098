package hbone

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrInvalidAuthority is wrapped by every error ParseAuthority returns.
var ErrInvalidAuthority = errors.New("invalid HBONE authority")

// ParseAuthority parses the :authority of an HBONE CONNECT request: an IP
// address and a port, "192.0.2.1:8080" or "[2001:db8::1]:8080". It refuses
// host names, missing or zero ports, IPv6 zones, IPv4-mapped IPv6 addresses
// (an IPv4 destination is always written as IPv4) and the unspecified
// addresses 0.0.0.0 and ::.
func ParseAuthority(s string) (netip.AddrPort, error) {
	if len(s) > len("[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535") {
		return netip.AddrPort{}, fmt.Errorf("%w: %d bytes is too long", ErrInvalidAuthority, len(s))
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %q is not ip:port", ErrInvalidAuthority, s)
	}
	a := ap.Addr()
	switch {
	case ap.Port() == 0:
		return netip.AddrPort{}, fmt.Errorf("%w: %q has port 0", ErrInvalidAuthority, s)
	case a.Zone() != "":
		return netip.AddrPort{}, fmt.Errorf("%w: %q has an IPv6 zone", ErrInvalidAuthority, s)
	case a.Is4In6():
		return netip.AddrPort{}, fmt.Errorf("%w: %q is an IPv4-mapped IPv6 address", ErrInvalidAuthority, s)
	case a.IsUnspecified():
		return netip.AddrPort{}, fmt.Errorf("%w: %q is the unspecified address", ErrInvalidAuthority, s)
	}
	return ap, nil
}

// validAuthority reports whether ap may be sent as an HBONE authority: the
// same rules as ParseAuthority.
func validAuthority(ap netip.AddrPort) error {
	if !ap.IsValid() {
		return fmt.Errorf("%w: no address", ErrInvalidAuthority)
	}
	_, err := ParseAuthority(ap.String())
	return err
}
