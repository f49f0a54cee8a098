package daemon

import (
	"context"
	"errors"
	"net"
	"syscall"

	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// PodDNSAddr is where a captured pod's DNS queries over UDP are redirected
// with Config.DNSCapture, inside its own network namespace (and
// PodDNSAddr6 where the pod has IPv6 loopback).
const (
	PodDNSAddr  = "127.0.0.1:15053"
	PodDNSAddr6 = "[::1]:15053"
)

// openPodDNS opens PodDNSAddr (and PodDNSAddr6 when the pod has IPv6
// loopback) in the pod's namespace. If PodDNSAddr cannot be opened (an
// application of the pod uses the port), that is logged and none is
// returned: the pod's DNS is then not captured. Called with d.mu held.
func (d *Daemon) openPodDNS(ctx context.Context, ns *redirect.Netns, w *config.Workload) []net.PacketConn {
	pc, err := ns.ListenPacket(ctx, "udp4", PodDNSAddr)
	if err != nil {
		d.log.Warn("pod DNS server not opened; the pod's DNS is not captured", "pod", w.Name, "address", PodDNSAddr, "err", err)
		return nil
	}
	out := []net.PacketConn{pc}
	if pc6, err := ns.ListenPacket(ctx, "udp6", PodDNSAddr6); err == nil {
		out = append(out, pc6)
	} else if !errors.Is(err, syscall.EADDRNOTAVAIL) && !errors.Is(err, syscall.EAFNOSUPPORT) {
		d.log.Warn("pod DNS server on IPv6 loopback not opened", "pod", w.Name, "address", PodDNSAddr6, "err", err)
	}
	return out
}
