package daemon

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// PodSOCKS5Addr is where every captured pod finds its SOCKS5 listener,
// inside its own network namespace (unless Config.DisablePodSOCKS5).
const PodSOCKS5Addr = "127.0.0.1:15080"

// podSOCKS is the SOCKS5 listener of one captured pod.
type podSOCKS struct {
	ln       net.Listener
	server   *proxy.SOCKS5
	accepted chan struct{} // closed when the accept loop has returned
}

// startPodSOCKS opens PodSOCKS5Addr in the pod's namespace and serves it as
// the workload w, with sockets opened in the namespace like the pod's
// captured traffic. A listener that cannot be opened (an application of the
// pod uses the port) is logged and skipped: the pod is captured without it.
// Called with d.mu held.
func (d *Daemon) startPodSOCKS(ctx context.Context, ns *redirect.Netns, w *config.Workload, ips []netip.Addr) *podSOCKS {
	var ln net.Listener
	err := ns.Do(ctx, func() error {
		var lc net.ListenConfig
		var err error
		ln, err = lc.Listen(ctx, "tcp4", PodSOCKS5Addr)
		return err
	})
	if err != nil {
		d.log.Warn("pod SOCKS5 listener not opened; the pod is captured without it", "pod", w.Name, "address", PodSOCKS5Addr, "err", err)
		return nil
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
	ps := &podSOCKS{ln: ln, server: proxy.NewPodSOCKS5(&env, w.Name, src, dialer.DialContext), accepted: make(chan struct{})}
	go func() {
		defer close(ps.accepted)
		if err := ps.server.Accept(ln); err != nil {
			d.log.Error("pod SOCKS5 listener failed", "pod", w.Name, "err", err)
		}
	}()
	return ps
}

// stopAccepting closes the listener (the port is free once it returns).
func (ps *podSOCKS) stopAccepting() {
	_ = ps.ln.Close()
	<-ps.accepted
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
