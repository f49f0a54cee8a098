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
// application source address is srcIP. early are bytes already read from
// the client (at most hbone.MaxEarlyData): a tunnel sends them with its
// CONNECT, a plain connection writes them first. It returns the upstream
// and the metric labels of the connection; on failure it has counted the
// failure.
func (o *Outbound) Open(ctx context.Context, dst netip.AddrPort, srcIP netip.Addr, early []byte) (net.Conn, metrics.Labels, error) {
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
		labels.DestinationService = route.Service.Proto.GetHostname()
		if labels.DestinationService == "" {
			labels.DestinationService = route.Service.Name
		}
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
		if err == nil && len(early) > 0 {
			if _, err = upstream.Write(early); err != nil {
				_ = upstream.Close()
				upstream = nil
			}
		}
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
		upstream, err = o.tunnel.Dial(ctx, hbone.Request{
			Source:      src.Identity,
			Destination: route.Identity,
			Address:     route.Address,
			Authority:   route.Authority,
			Header:      tunnelHeader(src, srcIP),
			EarlyData:   early,
		})
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
	join(client, upstream, mc)
}

// earlyBufs hold the first bytes of outbound connections.
var earlyBufs = sync.Pool{New: func() any { b := make([]byte, earlyDataSize); return &b }}

// earlyDataSize bounds the bytes read from a new outbound connection
// before its tunnel is opened.
const earlyDataSize = 16 << 10

// readEarly returns what the client has already sent on c, without
// waiting: nothing when it has not spoken yet (or has closed, or failed,
// which the copy will see again).
func readEarly(c *net.TCPConn, buf []byte) []byte {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	n := 0
	_ = rc.Read(func(fd uintptr) bool {
		n, _ = unix.Read(int(fd), buf)
		return true // never wait
	})
	if n <= 0 {
		return nil
	}
	return buf[:n]
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
	// What the application has sent already goes with the tunnel's
	// request instead of one round trip later.
	bp := earlyBufs.Get().(*[]byte)
	early := readEarly(c, *bp)
	up, labels, err := p.out.Open(p.ctx, dst, remoteIP(c), early)
	n := len(early)
	earlyBufs.Put(bp)
	if err != nil {
		reset(c)
		return
	}
	p.out.Join(c, up, labels, n)
}
