package redirect

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Gateways returns the default gateways of the namespace's main routing
// table, IPv4 first. In a pod these are the node's addresses on the pod
// network, where traffic from the node itself (kubelet's probes) comes from.
func (n *Netns) Gateways(ctx context.Context) ([]netip.Addr, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h, err := n.netlink()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var gws []netip.Addr
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := h.RouteList(nil, fam)
		if err != nil {
			return nil, fmt.Errorf("redirect: routes in %s: %w", n, err)
		}
		for _, r := range routes {
			if !isDefault(r) {
				continue
			}
			if a, ok := netip.AddrFromSlice(r.Gw); ok {
				gws = append(gws, a.Unmap())
			}
			for _, nh := range r.MultiPath {
				if a, ok := netip.AddrFromSlice(nh.Gw); ok {
					gws = append(gws, a.Unmap())
				}
			}
		}
	}
	return gws, nil
}

// netlink opens a netlink handle in the namespace; close it.
func (n *Netns) netlink() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		return nil, fmt.Errorf("redirect: netlink in %s: %w", n, err)
	}
	return h, nil
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// DefaultConfig is the Config used when enrolment passes no probe sources:
// the pod's default gateways (single addresses) are the probe sources.
// Zoned (IPv6 link-local) gateways are kept without their zone.
func DefaultConfig(ctx context.Context, ns *Netns) (Config, error) {
	gws, err := ns.Gateways(ctx)
	if err != nil {
		return Config{}, err
	}
	var cfg Config
	for _, g := range gws {
		g = g.WithZone("")
		cfg.ProbeSources = append(cfg.ProbeSources, netip.PrefixFrom(g, g.BitLen()))
	}
	return cfg, nil
}
