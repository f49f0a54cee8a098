package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"
)

// DefaultResolvConf is where NameserversFromSpec reads "auto" from.
const DefaultResolvConf = "/etc/resolv.conf"

// NameserversFromSpec parses the -socks5-nameservers flag: "auto" means
// the nameservers of resolvConf (in the DaemonSet, ztunnel's own
// resolv.conf, whose nameserver is the cluster's DNS Service); "none" or ""
// means none; anything else is a comma-separated list of addresses, each
// an IP (port 53) or IP:port ("[v6]:port").
func NameserversFromSpec(spec, resolvConf string) ([]netip.AddrPort, error) {
	switch spec = strings.TrimSpace(spec); spec {
	case "", "none":
		return nil, nil
	case "auto":
		b, err := os.ReadFile(resolvConf)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		return resolvConfNameservers(b), nil
	}
	var out []netip.AddrPort
	for _, f := range strings.Split(spec, ",") {
		a, err := parseNameserver(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func parseNameserver(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Port() != 0 {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("nameserver %q is neither an IP nor IP:port (port not 0)", s)
	}
	return netip.AddrPortFrom(a.Unmap(), 53), nil
}

// resolvConfNameservers returns the "nameserver" lines of a resolv.conf
// that hold an IP address without a zone, at port 53.
func resolvConfNameservers(b []byte) []netip.AddrPort {
	var out []netip.AddrPort
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(f[1]); err == nil && a.Zone() == "" {
			out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
		}
	}
	return out
}
