package redirect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// What Config.OriginalSource installs in the namespace:
//   - per address family, the rule `fwmark SourceMark/MarkMask lookup
//     SourceRouteTable` (priority SourceRulePriority) and that table's one
//     route, `local default dev lo`: a packet carrying SourceMark is
//     delivered locally;
//   - net.ipv4.tcp_fwmark_accept = 1 (it covers IPv6 too): a socket the
//     application accepts inherits the mark of the SYN it came from, so the
//     application's socket on ztunnel's connection from the client's
//     address carries SourceMark, its route is the local one, and its
//     replies, addressed to the client, reach ztunnel's socket instead of
//     the network. Only sockets created in the pod carry marks (a mark does
//     not cross network namespaces), and only ztunnel's are marked there
//     (SO_MARK needs CAP_NET_ADMIN).
//
// No conntrack is involved: these connections stay untracked, like
// ztunnel's other connections to the application (the bypass's loopback
// rules take them).

// fwmarkAccept is the sysctl, read inside the namespace.
const fwmarkAccept = "/proc/sys/net/ipv4/tcp_fwmark_accept"

// setFwmarkAccept writes the sysctl in the namespace.
func setFwmarkAccept(ns *Netns, on bool) error {
	v := []byte("0")
	if on {
		v = []byte("1")
	}
	return ns.Do(context.Background(), func() error {
		if err := os.WriteFile(fwmarkAccept, v, 0); err != nil {
			return fmt.Errorf("redirect: %s in %s: %w", fwmarkAccept, ns, err)
		}
		return nil
	})
}

// sourceFamilies are the families routed; IPv6 is skipped where the
// namespace has none.
var sourceFamilies = []int{netlink.FAMILY_V4, netlink.FAMILY_V6}

func sourceRule(family int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family
	r.Priority = SourceRulePriority
	r.Table = SourceRouteTable
	r.Mark = SourceMark
	mask := MarkMask
	r.Mask = &mask
	return r
}

func sourceRoute(family int, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if family == netlink.FAMILY_V6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{Family: family, Dst: dst, LinkIndex: lo, Table: SourceRouteTable,
		Type: unix.RTN_LOCAL, Scope: unix.RT_SCOPE_HOST}
}

// noFamily reports an error from a family the namespace does not have.
func noFamily(err error) bool {
	return errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EPROTONOSUPPORT)
}

// installSourceRouting adds the rule and route of each family (again, when
// present: adding is idempotent).
func installSourceRouting(ns *Netns) error {
	h, err := ns.netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("redirect: loopback of %s: %w", ns, err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("redirect: loopback of %s is down", ns)
	}
	for _, fam := range sourceFamilies {
		if err := h.RouteReplace(sourceRoute(fam, lo.Attrs().Index)); err != nil {
			if fam == netlink.FAMILY_V6 && noFamily(err) {
				continue
			}
			return fmt.Errorf("redirect: route table %d in %s: %w", SourceRouteTable, ns, err)
		}
		if err := h.RuleAdd(sourceRule(fam)); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("redirect: routing rule for mark %#x in %s: %w", SourceMark, ns, err)
		}
	}
	return setFwmarkAccept(ns, true)
}

// removeSourceRouting deletes the rules and routes; absent ones are fine.
func removeSourceRouting(ns *Netns) error {
	h, err := ns.netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	gone := func(err error) bool {
		return err == nil || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || noFamily(err)
	}
	var errs []error
	for _, fam := range sourceFamilies {
		// RuleDel deletes one matching rule per call: delete until none is
		// left (Install adds one, but someone may have added another).
		for range 8 {
			err := h.RuleDel(sourceRule(fam))
			if err != nil {
				if !gone(err) {
					errs = append(errs, fmt.Errorf("redirect: delete routing rule in %s: %w", ns, err))
				}
				break
			}
		}
		routes, err := h.RouteListFiltered(fam, &netlink.Route{Table: SourceRouteTable}, netlink.RT_FILTER_TABLE)
		if err != nil {
			if !gone(err) {
				errs = append(errs, fmt.Errorf("redirect: list route table %d in %s: %w", SourceRouteTable, ns, err))
			}
			continue
		}
		for i := range routes {
			if err := h.RouteDel(&routes[i]); !gone(err) {
				errs = append(errs, fmt.Errorf("redirect: delete route in table %d in %s: %w", SourceRouteTable, ns, err))
			}
		}
	}
	if err := setFwmarkAccept(ns, false); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
