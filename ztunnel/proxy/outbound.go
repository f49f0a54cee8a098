package proxy

import (
	"context"
	"errors"
	"net"

	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// serveOutbound forwards one connection the application made.
func (p *Pod) serveOutbound(c *net.TCPConn) {
	dst, err := redirect.OriginalDst(c)
	if err != nil {
		p.log.Warn("outbound connection without original destination", "err", err)
		p.env.Metrics.OutboundErrors.WithLabelValues("no_original_dst").Inc()
		reset(c)
		return
	}
	snap := p.env.Config()
	src := snap.Workload(p.cfg.Name)
	route := Decide(snap, dst, p.pick)
	srcIP := remoteIP(c)

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
	log := p.log.With("src", srcIP, "dst", dst, "route", route.Kind.String())

	ctx, cancel := context.WithTimeout(p.ctx, p.timeout)
	var upstream net.Conn
	switch route.Kind {
	case NoEndpoint:
		err = errors.New("service has no ready endpoint")
	case Passthrough, Plain:
		upstream, err = p.dialer.DialContext(ctx, "tcp", route.Address.String())
	case HBONE, Waypoint:
		if src == nil || !src.HasIdentity() {
			err = errors.New("source pod has no identity in the configuration")
			break
		}
		upstream, err = p.tunnel.Dial(ctx, hbone.Request{
			Source:      src.Identity,
			Destination: route.Identity,
			Address:     route.Address,
			Authority:   route.Authority,
			Header:      tunnelHeader(src, srcIP),
		})
	}
	cancel()
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
		p.env.Metrics.Failed(labels)
		p.env.Metrics.OutboundErrors.WithLabelValues(reason).Inc()
		log.Info("outbound connection failed", "upstream", route.Address, "err", err)
		reset(c)
		return
	}
	if !p.track(upstream) {
		_ = upstream.Close()
		reset(c)
		return
	}
	defer p.untrack(upstream)
	log.Debug("outbound connection", "upstream", route.Address)
	mc := p.env.Metrics.Open(labels)
	defer mc.Close()
	join(mc.Wrap(c, true), upstream)
}
