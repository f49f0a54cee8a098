package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// Outbound forwards connections on behalf of one source workload: it routes
// each destination with Decide and opens the upstream, a tunnel or a TCP
// connection, through its dial function.
type Outbound struct {
	env     *Env
	source  string
	log     *slog.Logger
	timeout time.Duration
	dial    func(ctx context.Context, network, address string) (net.Conn, error)
	tunnel  *hbone.Dialer
	rr      atomic.Uint64
	// ensureCert, if set, is called before a tunnel is opened for src.
	ensureCert func(ctx context.Context, src identity.SPIFFEID) error
}

// NewOutbound returns an Outbound for the workload named source
// ("<namespace>/<pod>") that opens every upstream socket with dial (nil
// means a plain net.Dialer).
func NewOutbound(env *Env, source string, dial func(ctx context.Context, network, address string) (net.Conn, error)) *Outbound {
	log := env.Logger
	if log == nil {
		log = slog.Default()
	}
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	timeout := env.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	o := &Outbound{env: env, source: source, log: log, timeout: timeout, dial: dial}
	o.tunnel = &hbone.Dialer{
		TLSConfig: func(src, dst identity.SPIFFEID) (*tls.Config, error) {
			return identity.ClientConfig(env.Certs.Cert(src), env.Certs.Roots(), dst), nil
		},
		DialContext: dial,
		Logger:      log,
	}
	return o
}

// Close closes the pooled tunnel connections.
func (o *Outbound) Close() error { return o.tunnel.Close() }

// pick is the round-robin endpoint picker.
func (o *Outbound) pick(n int) int { return int(o.rr.Add(1) % uint64(n)) }

// Open routes dst and opens the upstream for a connection whose
// application source address is srcIP. With first (nil for none), a
// tunnel carries the client's first bytes before its answer (first.n says
// how many it took from the client). It returns the upstream and the
// metric labels of the connection; on failure it has counted the failure.
func (o *Outbound) Open(ctx context.Context, dst netip.AddrPort, srcIP netip.Addr, first *firstBytes) (net.Conn, metrics.Labels, error) {
	snap := o.env.Config()
	src := snap.Workload(o.source)
	route := Decide(snap, dst, o.pick)
	labels := metrics.Labels{
		Reporter:           metrics.ReporterSource,
		Source:             metrics.PeerOf(src),
		Destination:        metrics.PeerOf(route.Workload),
		DestinationService: metrics.Unknown,
		Security:           metrics.SecurityNone,
	}
	if route.Service != nil {
		labels.DestinationService = serviceHost(route.Service)
	}
	if route.Kind == HBONE || route.Kind == Waypoint {
		labels.Security = metrics.SecurityMutualTLS
		labels.Destination.Principal = route.Identity.String()
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	var upstream net.Conn
	var err error
	switch route.Kind {
	case NoEndpoint:
		err = errors.New("service has no ready endpoint")
	case Passthrough, Plain:
		upstream, err = o.dial(ctx, "tcp", route.Address.String())
	case HBONE, Waypoint:
		if src == nil || !src.HasIdentity() {
			err = errors.New("source workload has no identity in the configuration")
			break
		}
		if o.ensureCert != nil {
			if err = o.ensureCert(ctx, src.Identity); err != nil {
				break
			}
		}
		req := hbone.Request{
			Source:      src.Identity,
			Destination: route.Identity,
			Address:     route.Address,
			Authority:   route.Authority,
			Header:      tunnelHeader(src, srcIP, route.Service),
		}
		if first == nil {
			upstream, err = o.tunnel.Dial(ctx, req)
			break
		}
		upstream, err = first.tunnel(ctx, o.tunnel, req)
	}
	if err != nil {
		labels.ResponseFlags = metrics.FlagUpstreamFailure
		reason := "connect"
		var se *hbone.StatusError
		switch {
		case route.Kind == NoEndpoint:
			labels.ResponseFlags = metrics.FlagNoHealthyUpstream
			reason = "no_endpoint"
		case errors.As(err, &se) && (se.Code == 401 || se.Code == 403):
			labels.ResponseFlags = metrics.FlagDenied
			reason = "denied"
		}
		o.env.Metrics.Failed(labels)
		o.env.Metrics.OutboundErrors.WithLabelValues(reason).Inc()
		o.log.Info("outbound connection failed", "src", srcIP, "dst", dst, "route", route.Kind.String(), "upstream", route.Address, "err", err)
		return nil, labels, err
	}
	o.log.Debug("outbound connection", "src", srcIP, "dst", dst, "route", route.Kind.String(), "upstream", route.Address)
	return upstream, labels, nil
}

// Join copies between the client connection and the upstream Open
// returned until both directions end, counting the bytes (early of them
// already sent by Open), then closes both.
func (o *Outbound) Join(client, upstream net.Conn, labels metrics.Labels, early int) {
	mc := o.env.Metrics.Open(labels)
	defer mc.Close()
	mc.Received(early)
	o.env.join(client, upstream, mc)
}

// firstBytes takes a new client connection's first bytes for its tunnel's
// request: what the client has sent when ztunnel accepts it goes with the
// CONNECT (hbone.Request.EarlyData), and what it sends before the answer
// comes right after (hbone.Pending.Write), instead of one round trip
// between the two ztunnels later. A client that waits for the server to
// speak first (a database, SMTP) waits no longer than before.
type firstBytes struct {
	c   *net.TCPConn
	buf *[]byte
	// n is how many bytes were taken from c and sent in the tunnel.
	n int
}

// earlyBufs hold the first bytes of outbound connections.
var earlyBufs = sync.Pool{New: func() any { b := make([]byte, earlyDataSize); return &b }}

// earlyDataSize bounds the bytes read from a new outbound connection
// before its tunnel is answered (hbone.MaxEarlyData is the protocol's
// bound).
const earlyDataSize = 16 << 10

func newFirstBytes(c *net.TCPConn) *firstBytes {
	return &firstBytes{c: c, buf: earlyBufs.Get().(*[]byte)}
}

// release returns the buffer; call it once the tunnel is open or failed.
func (f *firstBytes) release() {
	if f.buf != nil {
		earlyBufs.Put(f.buf)
		f.buf = nil
	}
}

// aLongTimeAgo is a deadline in the past, to wake a blocked read.
var aLongTimeAgo = time.Unix(1, 0)

// tunnel opens the tunnel for req with the client's first bytes.
func (f *firstBytes) tunnel(ctx context.Context, d *hbone.Dialer, req hbone.Request) (*hbone.Conn, error) {
	rc, err := f.c.SyscallConn()
	if err != nil {
		return d.Dial(ctx, req)
	}
	buf := *f.buf
	// What is there already goes with the request.
	n := readRaw(rc, buf, false)
	if n > 0 {
		req.EarlyData = buf[:n]
	}
	p, err := d.Start(ctx, req)
	if err != nil {
		return nil, err
	}
	f.n = max(n, 0)
	if n <= 0 {
		// Nothing yet: the first bytes that come before the answer follow
		// the request at once. The answer (or ctx) ends the wait by a
		// deadline in the past, which takes nothing from the connection.
		stop, done := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			select {
			case <-p.Answered():
			case <-ctx.Done():
			case <-stop:
				return
			}
			_ = f.c.SetReadDeadline(aLongTimeAgo)
		}()
		m := readRaw(rc, buf, true)
		close(stop)
		<-done
		_ = f.c.SetReadDeadline(time.Time{})
		if m > 0 {
			f.n = m
			_ = p.Write(buf[:m]) // a failure is the tunnel's: Wait reports it
		}
	}
	return p.Wait(ctx)
}

// readRaw reads once from the socket into buf and returns the count (0 or
// less: nothing). With wait it waits on the poller while there is nothing
// to read (until a read deadline); without, it returns at once.
func readRaw(rc syscall.RawConn, buf []byte, wait bool) int {
	n := 0
	_ = rc.Read(func(fd uintptr) bool {
		var err error
		n, err = unix.Read(int(fd), buf)
		return !wait || err != unix.EAGAIN
	})
	return n
}

// serveOutbound forwards one connection the pod's application made.
func (p *Pod) serveOutbound(c *net.TCPConn) {
	dst, err := redirect.OriginalDst(c)
	if err != nil {
		p.log.Warn("outbound connection without original destination", "err", err)
		p.env.Metrics.OutboundErrors.WithLabelValues("no_original_dst").Inc()
		reset(c)
		return
	}
	first := newFirstBytes(c)
	up, labels, err := p.out.Open(p.ctx, dst, remoteIP(c), first)
	first.release()
	if err != nil {
		reset(c)
		return
	}
	p.out.Join(c, up, labels, first.n)
}
