package daemon

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// PodSOCKS5Addr is where every captured pod finds its SOCKS5 listener,
// inside its own network namespace (unless Config.DisablePodSOCKS5); it is
// also on PodSOCKS5Addr6 where the pod has IPv6 loopback.
const (
	PodSOCKS5Addr  = "127.0.0.1:15080"
	PodSOCKS5Addr6 = "[::1]:15080"
)

// podSOCKS is the SOCKS5 listener of one captured pod.
type podSOCKS struct {
	lns      []net.Listener // PodSOCKS5Addr, then PodSOCKS5Addr6 if open
	server   *proxy.SOCKS5
	accepted sync.WaitGroup // the accept loops
}

// addrs lists the listeners' addresses.
func (ps *podSOCKS) addrs() []string {
	out := make([]string, len(ps.lns))
	for i, ln := range ps.lns {
		out[i] = ln.Addr().String()
	}
	return out
}

// startPodSOCKS opens PodSOCKS5Addr (and PodSOCKS5Addr6 when the pod has
// IPv6 loopback) in the pod's namespace and serves them as the workload w,
// with sockets opened in the namespace like the pod's captured traffic. If
// PodSOCKS5Addr cannot be opened (an application of the pod uses the port),
// that is logged and the pod is captured without SOCKS5. Called with d.mu
// held.
func (d *Daemon) startPodSOCKS(ctx context.Context, ns *redirect.Netns, w *config.Workload, ips []netip.Addr) *podSOCKS {
	var lns []net.Listener
	var err6 error
	err := ns.Do(ctx, func() error {
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp4", PodSOCKS5Addr)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		if ln, err6 = lc.Listen(ctx, "tcp6", PodSOCKS5Addr6); err6 == nil {
			lns = append(lns, ln)
		}
		return nil
	})
	if err != nil {
		d.log.Warn("pod SOCKS5 listener not opened; the pod is captured without it", "pod", w.Name, "address", PodSOCKS5Addr, "err", err)
		return nil
	}
	if err6 != nil && !errors.Is(err6, syscall.EADDRNOTAVAIL) && !errors.Is(err6, syscall.EAFNOSUPPORT) {
		d.log.Warn("pod SOCKS5 listener on IPv6 loopback not opened", "pod", w.Name, "address", PodSOCKS5Addr6, "err", err6)
	}
	var src netip.Addr
	for _, a := range ips {
		if !src.IsValid() || a.Unmap().Is4() && !src.Is4() {
			src = a.Unmap()
		}
	}
	env := *d.env
	env.Logger = d.env.Logger.With("pod", w.Name)
	timeout := d.cfg.DialTimeout
	if timeout <= 0 {
		timeout = proxy.DefaultDialTimeout
	}
	dialer := &redirect.Dialer{Netns: ns, Timeout: timeout}
	ps := &podSOCKS{lns: lns, server: proxy.NewPodSOCKS5(&env, w.Name, src, dialer.DialContext)}
	for _, ln := range lns {
		ps.accepted.Add(1)
		go func() {
			defer ps.accepted.Done()
			if err := ps.server.Accept(ln); err != nil {
				d.log.Error("pod SOCKS5 listener failed", "pod", w.Name, "address", ln.Addr().String(), "err", err)
			}
		}()
	}
	return ps
}

// stopAccepting closes the listeners (the port is free once it returns).
func (ps *podSOCKS) stopAccepting() {
	for _, ln := range ps.lns {
		_ = ln.Close()
	}
	ps.accepted.Wait()
}

// close closes the listener and every connection at once.
func (ps *podSOCKS) close() {
	ps.stopAccepting()
	_ = ps.server.Close()
}

// drain closes the listener at once and lets the connections finish for
// up to timeout (see proxy.SOCKS5.Drain).
func (ps *podSOCKS) drain(timeout time.Duration) <-chan struct{} {
	ps.stopAccepting()
	return ps.server.Drain(timeout)
}
