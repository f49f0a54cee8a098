package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// DefaultDialTimeout bounds an upstream dial (TCP, or TCP+TLS+CONNECT for a
// tunnel) unless Env.DialTimeout says otherwise.
const DefaultDialTimeout = 10 * time.Second

// Env is what every pod's proxy shares.
type Env struct {
	// Config returns the current configuration snapshot. Required.
	Config func() *config.Snapshot
	// Certs holds the pods' certificates and the trust bundle. Required.
	Certs *identity.Manager
	// Metrics receives connection metrics. Required.
	Metrics *metrics.Metrics
	// SystemNamespace holds GLOBAL policies ("ambit-system" when empty).
	SystemNamespace string
	// DialTimeout bounds upstream dials; zero means DefaultDialTimeout.
	DialTimeout time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// BulkThreadBytes: once a connection that carried this many bytes one
	// way has closed, the OS thread running its copies is ended (see
	// endThread). Zero means DefaultBulkThreadBytes; negative, never.
	BulkThreadBytes int64
	// Nameservers (the cluster's DNS) resolve the SOCKS5 destination
	// names that are not services of the mesh, before the source pod's own
	// nameservers, unless its dnsPolicy is None (DNS over TCP, through the
	// SOCKS5 server's dial: from inside the pod, as the pod); a captured
	// pod's DNS queries (DNSServer) are forwarded to them in the same order.
	// Empty: only pods' own nameservers are asked.
	Nameservers []netip.AddrPort
}

// PodConfig says which pod a Pod serves.
type PodConfig struct {
	// Name is the pod's Workload name, "<namespace>/<pod>".
	Name string
	// IPs are the pod's addresses (the only valid HBONE authorities).
	IPs []netip.Addr
	// Identity is the pod's SPIFFE ID: its certificate for inbound HBONE
	// and the source of its outbound tunnels.
	Identity identity.SPIFFEID
	// Netns is the pod's namespace, where upstream sockets are created.
	Netns *redirect.Netns
	// Listeners are the capture listeners opened in Netns; Pod serves them
	// and closes them on Close.
	Listeners *redirect.Listeners
	// OriginalSource: connect to the application from the client's address
	// (redirect.Dialer.DialFrom), so that it sees who connected: the
	// tunnel's source for HBONE, the connection's for plaintext. Only when
	// the pod's capture was installed with redirect.Config.OriginalSource.
	OriginalSource bool
}

// Pod serves one enrolled pod's listeners. Create it with StartPod.
type Pod struct {
	env    *Env
	cfg    PodConfig
	log    *slog.Logger
	dialer *redirect.Dialer
	out    *Outbound
	server *hbone.Server
	// timeout bounds upstream dials.
	timeout time.Duration

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	conns connSet
}

// StartPod starts serving cfg.Listeners.
func StartPod(env *Env, cfg PodConfig) *Pod {
	log := env.Logger
	if log == nil {
		log = slog.Default()
	}
	timeout := env.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	log = log.With("pod", cfg.Name)
	p := &Pod{env: env, cfg: cfg, log: log, conns: newConnSet()}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.dialer = &redirect.Dialer{Netns: cfg.Netns, Timeout: timeout}
	p.timeout = timeout
	penv := *env
	penv.Logger = log
	p.out = NewOutbound(&penv, cfg.Name, p.dialer.DialContext)
	p.server = &hbone.Server{
		TLSConfig: identity.ServerConfig(env.Certs.Cert(cfg.Identity), env.Certs.Roots(), nil),
		Handler:   p.serveHBONE,
		Logger:    log,
	}
	p.wg.Add(3)
	go func() {
		defer p.wg.Done()
		err := p.server.Serve(cfg.Listeners.HBONE)
		if err != nil && !errors.Is(err, hbone.ErrServerClosed) && !errors.Is(err, net.ErrClosed) && p.ctx.Err() == nil {
			log.Error("hbone listener failed", "err", err)
		}
	}()
	go func() { defer p.wg.Done(); p.acceptLoop(cfg.Listeners.Outbound, "outbound", p.serveOutbound) }()
	go func() { defer p.wg.Done(); p.acceptLoop(cfg.Listeners.Inbound, "inbound", p.servePlaintext) }()
	return p
}

// dialApp connects to the application at dst, from src's address when the
// pod has OriginalSource and src is not the pod itself (whose own address
// it comes from anyway).
func (p *Pod) dialApp(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	var c *net.TCPConn
	var err error
	if !p.cfg.OriginalSource || !src.Addr().IsValid() || p.hasIP(src.Addr()) || src.Addr().Unmap().IsLoopback() {
		c, err = p.dialer.DialTCP(ctx, dst)
	} else {
		c, err = p.dialer.DialFrom(ctx, src, dst)
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// OriginalSource reports whether the application sees its clients'
// addresses (PodConfig.OriginalSource).
func (p *Pod) OriginalSource() bool { return p.cfg.OriginalSource }

// Name is the pod's Workload name.
func (p *Pod) Name() string { return p.cfg.Name }

// Identity is the pod's SPIFFE ID.
func (p *Pod) Identity() identity.SPIFFEID { return p.cfg.Identity }

// Close stops serving: it closes the listeners, aborts the connections being
// proxied, and waits for the accept loops.
func (p *Pod) Close() error {
	conns, ok := p.conns.shut()
	if !ok {
		return nil
	}
	p.cancel()
	err := p.cfg.Listeners.Close()
	_ = p.server.Close()
	_ = p.out.Close()
	for c := range conns {
		_ = c.Close()
	}
	p.wg.Wait()
	return err
}

// Drain stops accepting at once (listeners closed, so the ports are free
// for a new Pod) and returns; in the background it sends GOAWAY on HBONE
// connections, lets the connections being proxied finish for up to timeout,
// then closes whatever is left, as Close does. The returned channel is
// closed when that is done.
func (p *Pod) Drain(timeout time.Duration) <-chan struct{} {
	done := make(chan struct{})
	if p.conns.isShut() {
		close(done)
		return done
	}
	_ = p.cfg.Listeners.Close()
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(p.ctx, timeout)
		defer cancel()
		_ = p.server.Shutdown(ctx)
		p.conns.waitIdle(ctx, p.log)
		_ = p.Close()
	}()
	return done
}

func (p *Pod) acceptLoop(ln net.Listener, what string, serve func(*net.TCPConn)) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Temporary failure (e.g. EMFILE): back off and go on.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			p.log.Warn("accept failed", "listener", what, "err", err, "retry", delay)
			select {
			case <-time.After(delay):
				continue
			case <-p.ctx.Done():
				return
			}
		}
		delay = 0
		tc, ok := c.(*net.TCPConn)
		if !ok {
			_ = c.Close()
			continue
		}
		if !p.conns.track(tc) {
			_ = tc.Close()
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.conns.untrack(tc)
			serve(tc)
		}()
	}
}

func (p *Pod) systemNamespace() string {
	if p.env.SystemNamespace != "" {
		return p.env.SystemNamespace
	}
	return "ambit-system"
}

// hasIP reports whether a is one of the pod's addresses.
func (p *Pod) hasIP(a netip.Addr) bool {
	a = a.Unmap()
	for _, x := range p.cfg.IPs {
		if x.Unmap() == a {
			return true
		}
	}
	return false
}

// reset closes c with an RST, so the application sees a refused
// connection rather than an orderly end.
func reset(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

func remoteIP(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// join copies both ways, counting the bytes from the client connection as
// received and those to it as sent, then closes both connections. It counts
// in hbone.JoinCounting rather than through a wrapper (mc.Wrap) around the
// client connection: with both ends unwrapped, a tunnel's read loop writes
// small payloads straight to the TCP socket, sparing a goroutine hand-off
// per message, and the copies use the sockets' raw reads and writes.
// After a bulk transfer (BulkThreadBytes one way) it ends the thread that
// ran the copies, as endThread says why.
func (e *Env) join(client, upstream net.Conn, mc *metrics.Conn) {
	_, _ = hbone.JoinCounting(client, upstream, mc.Received, mc.Sent)
	_ = client.Close()
	_ = upstream.Close()
	limit := e.BulkThreadBytes
	if limit == 0 {
		limit = DefaultBulkThreadBytes
	}
	if sent, received := mc.Bytes(); limit > 0 && max(sent, received) >= limit {
		endThread()
	}
}
