package proxy

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"

	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
	"github.com/ambit-mesh/ambit/ztunnel/policy"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// Inbound denial reasons (the reason label of ztunnel_connections_denied_total).
const (
	DenyAuthority = "authority"
	DenyWaypoint  = "waypoint"
	DenyPolicy    = "policy"
	DenyStrict    = "strict"
)

// InboundCheck is the authorization of an inbound connection to workload
// dst (nil when the configuration does not know it) from peer (zero for
// plaintext), whose address as the application sees it is src, on port: it
// returns the HTTP status to answer (0 to allow), the reason label, and a
// short text. Plaintext to an unknown workload is refused (its mTLS mode is
// unknown); a tunnel to one is allowed.
func InboundCheck(snap *config.Snapshot, dst *config.Workload, peer identity.SPIFFEID, src netip.Addr, port uint16, systemNamespace string) (code int, reason, text string) {
	plaintext := peer == identity.SPIFFEID{}
	if dst == nil {
		// The configuration no longer knows the pod (it is going away):
		// fail closed for plaintext, whose mTLS mode cannot be known.
		if plaintext {
			return 403, DenyStrict, "plaintext refused: workload unknown to the configuration"
		}
		return 0, "", "unknown workload: no policy"
	}
	if plaintext && dst.StrictOn(port) {
		if _, own := dst.Proto.GetPortMtlsModes()[uint32(port)]; own {
			return 403, DenyStrict, fmt.Sprintf("plaintext refused: mTLS mode of port %d is STRICT", port)
		}
		return 403, DenyStrict, "plaintext refused: mTLS mode is STRICT"
	}
	if dst.Waypoint != nil && peer != dst.Waypoint.Identity {
		return 403, DenyWaypoint, fmt.Sprintf("only the waypoint %s (%s) may reach this workload", dst.Waypoint.Gateway, dst.Waypoint.Identity)
	}
	d := policy.Evaluate(policy.Applicable(snap, dst, systemNamespace), policy.Conn{Peer: peer, DstPort: port, Src: src})
	if !d.Allow {
		return 403, DenyPolicy, d.Reason
	}
	return 0, "", d.Reason
}

// serveHBONE serves one tunnel to this pod.
func (p *Pod) serveHBONE(st *hbone.Stream) {
	auth := st.Authority()
	peer := st.Peer()
	snap := p.env.Config()
	dst := snap.Workload(p.cfg.Name)
	var remote netip.Addr
	if ta, ok := st.RemoteAddr().(*net.TCPAddr); ok {
		remote = ta.AddrPort().Addr()
	}
	src := sourceOf(snap, st.Header(), remote, peer)
	labels := metrics.Labels{
		Reporter:           metrics.ReporterDestination,
		Source:             src,
		Destination:        metrics.PeerOf(dst),
		DestinationService: inboundService(snap, auth, ForwardedHost(st.Header())),
		Security:           metrics.SecurityMutualTLS,
	}
	// The logger with the tunnel's attributes is made only for a line to
	// write: With formats them at once, and most tunnels log nothing here.
	log := func() *slog.Logger { return p.log.With("peer", peer.String(), "authority", auth) }
	if !p.hasIP(auth.Addr()) {
		p.deny(labels, DenyAuthority)
		log().Info("hbone tunnel refused", "reason", DenyAuthority)
		_ = st.Reject(400, "authority is not an address of this pod")
		return
	}
	// The application sees the tunnel's source (the client's pod), or the
	// client a waypoint serving this pod names, with a port of its own;
	// ipBlocks match that address.
	client := appSource(snap, dst, peer, auth, st.Header(), remote)
	if code, reason, text := InboundCheck(snap, dst, peer, client, auth.Port(), p.systemNamespace()); code != 0 {
		p.deny(labels, reason)
		log().Info("hbone tunnel refused", "reason", reason, "detail", text)
		_ = st.Reject(code, text)
		return
	}
	from := netip.AddrPortFrom(client, 0)
	app, err := p.dialApp(st.Context(), from, auth)
	if err != nil {
		labels.ResponseFlags = metrics.FlagUpstreamFailure
		p.env.Metrics.Failed(labels)
		log().Info("hbone tunnel: application unreachable", "err", err)
		_ = st.Reject(503, "destination unreachable")
		return
	}
	if err := st.Accept(); err != nil {
		_ = app.Close()
		return
	}
	if p.log.Enabled(st.Context(), slog.LevelDebug) {
		log().Debug("hbone tunnel accepted")
	}
	mc := p.env.Metrics.Open(labels)
	defer mc.Close()
	p.env.join(st, app, mc)
}

// servePlaintext serves one plaintext connection sent to this pod.
func (p *Pod) servePlaintext(c *net.TCPConn) {
	dst, err := redirect.OriginalDst(c)
	if err != nil {
		p.log.Warn("inbound connection without original destination", "err", err)
		reset(c)
		return
	}
	snap := p.env.Config()
	w := snap.Workload(p.cfg.Name)
	srcIP := remoteIP(c)
	labels := metrics.Labels{
		Reporter:           metrics.ReporterDestination,
		Source:             metrics.PeerOf(snap.WorkloadByIP(srcIP)),
		Destination:        metrics.PeerOf(w),
		DestinationService: inboundService(snap, dst, ""),
		Security:           metrics.SecurityNone,
	}
	// A plaintext source has no verified identity, whatever its address says.
	labels.Source.Principal = metrics.Unknown
	if code, reason, text := InboundCheck(snap, w, identity.SPIFFEID{}, srcIP, dst.Port(), p.systemNamespace()); code != 0 {
		p.deny(labels, reason)
		p.log.Info("plaintext connection refused", "src", srcIP, "dst", dst, "reason", reason, "detail", text)
		reset(c)
		return
	}
	var src netip.AddrPort
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		src = ta.AddrPort()
	}
	app, err := p.dialApp(p.ctx, src, dst)
	if err != nil {
		labels.ResponseFlags = metrics.FlagUpstreamFailure
		p.env.Metrics.Failed(labels)
		reset(c)
		return
	}
	if !p.conns.track(app) {
		_ = app.Close()
		reset(c)
		return
	}
	defer p.conns.untrack(app)
	mc := p.env.Metrics.Open(labels)
	defer mc.Close()
	p.env.join(c, app, mc)
}

func (p *Pod) deny(labels metrics.Labels, reason string) {
	labels.ResponseFlags = metrics.FlagDenied
	p.env.Metrics.Failed(labels)
	p.env.Metrics.PolicyDenials.WithLabelValues("inbound", reason).Inc()
}

// sourceOf describes a tunnel's source for metrics: the workload at the
// forwarded address if its identity is the peer's (a client pod's
// ztunnel), else the workload the tunnel comes from if its identity is the
// peer's (a waypoint, whose tunnels name its clients or nobody), else what
// the baggage says, with the verified peer identity as principal.
func sourceOf(snap *config.Snapshot, h http.Header, remote netip.Addr, peer identity.SPIFFEID) metrics.Peer {
	if ip, ok := ForwardedFor(h); ok {
		if w := snap.WorkloadByIP(ip); w != nil && w.Identity == peer {
			return metrics.PeerOf(w)
		}
	}
	if remote.IsValid() {
		if w := snap.WorkloadByIP(remote); w != nil && w.Identity == peer {
			return metrics.PeerOf(w)
		}
	}
	src := metrics.PeerOf(nil)
	b := BaggageValues(h)
	if v := b[BaggageWorkload]; v != "" {
		src.Workload = v
	} else if v := b[BaggagePod]; v != "" {
		src.Workload = v
	}
	if v := b[BaggageService]; v != "" {
		src.CanonicalService = v
	}
	if v := b[BaggageServiceRevision]; v != "" {
		src.CanonicalRevision = v
	}
	src.Namespace = peer.Namespace
	src.Principal = peer.String()
	return src
}

// appSource is the address ztunnel connects to the application from for a
// tunnel to auth: the tunnel's source address (remote: the client's pod,
// whose ztunnel opened the tunnel inside it), except when the peer is a
// waypoint that serves this pod (the pod's own, or that of a Service that
// sends to this pod port) and names the client in the tunnel's Forwarded
// for= element: the waypoint opens one tunnel per client connection it
// passes through (TCP), and that client is who the application would see
// without the mesh. Another peer's for= is not believed: any workload
// could claim any address.
func appSource(snap *config.Snapshot, dst *config.Workload, peer identity.SPIFFEID, auth netip.AddrPort, h http.Header, remote netip.Addr) netip.Addr {
	if !servesAsWaypoint(snap, dst, peer, auth) {
		return remote
	}
	if ip, ok := ForwardedFor(h); ok {
		return ip
	}
	return remote
}

// servesAsWaypoint reports whether peer is the waypoint of workload dst or
// of a Service that sends to its address auth.
func servesAsWaypoint(snap *config.Snapshot, dst *config.Workload, peer identity.SPIFFEID, auth netip.AddrPort) bool {
	if peer == (identity.SPIFFEID{}) {
		return false
	}
	if dst != nil && dst.Waypoint != nil && dst.Waypoint.Identity == peer {
		return true
	}
	for _, s := range snap.ServicesAt(auth) {
		if s.Waypoint != nil && s.Waypoint.Identity == peer {
			return true
		}
	}
	return false
}
