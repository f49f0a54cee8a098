package metrics

import (
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ambit-mesh/ambit/ztunnel/config"
)

// Reporter values.
const (
	ReporterSource      = "source"
	ReporterDestination = "destination"
)

// connection_security_policy values.
const (
	SecurityMutualTLS = "mutual_tls"
	SecurityNone      = "none"
)

// Response flags (Envoy's short names, as Istio reports them).
const (
	FlagNone              = "-"
	FlagUpstreamFailure   = "UF"   // could not connect upstream
	FlagNoHealthyUpstream = "UH"   // service without a ready endpoint
	FlagDenied            = "DENY" // refused by policy or mTLS mode
)

// Unknown is the value of a label ztunnel cannot know.
const Unknown = "unknown"

var tcpLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal",
	"source_canonical_service", "source_canonical_revision",
	"destination_workload", "destination_workload_namespace", "destination_principal",
	"destination_canonical_service", "destination_canonical_revision",
	"destination_service", "request_protocol", "response_flags", "connection_security_policy",
}

// Peer is one end of a connection as the labels describe it.
type Peer struct {
	Workload, Namespace, Principal, CanonicalService, CanonicalRevision string
}

// PeerOf describes a workload; nil gives all-unknown labels.
func PeerOf(w *config.Workload) Peer {
	if w == nil {
		return Peer{Workload: Unknown, Namespace: Unknown, Principal: Unknown, CanonicalService: Unknown, CanonicalRevision: Unknown}
	}
	p := Peer{
		Workload:          or(w.Proto.GetWorkloadName(), w.PodName),
		Namespace:         w.Namespace,
		Principal:         Unknown,
		CanonicalService:  or(w.Proto.GetCanonicalName(), or(w.Proto.GetWorkloadName(), w.PodName)),
		CanonicalRevision: or(w.Proto.GetCanonicalRevision(), "latest"),
	}
	if w.HasIdentity() {
		p.Principal = w.Identity.String()
	}
	return p
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Labels are the labels of one connection.
type Labels struct {
	Reporter    string
	Source      Peer
	Destination Peer
	// DestinationService is the service hostname, or Unknown.
	DestinationService string
	// ResponseFlags is FlagNone or a failure flag.
	ResponseFlags string
	// Security is SecurityMutualTLS or SecurityNone.
	Security string
}

func (l Labels) values() []string {
	v := func(s string) string {
		if s == "" {
			return Unknown
		}
		return s
	}
	flags := l.ResponseFlags
	if flags == "" {
		flags = FlagNone
	}
	return []string{
		v(l.Reporter),
		v(l.Source.Workload), v(l.Source.Namespace), v(l.Source.Principal),
		v(l.Source.CanonicalService), v(l.Source.CanonicalRevision),
		v(l.Destination.Workload), v(l.Destination.Namespace), v(l.Destination.Principal),
		v(l.Destination.CanonicalService), v(l.Destination.CanonicalRevision),
		v(l.DestinationService), "tcp", flags, v(l.Security),
	}
}

// Metrics is ztunnel's set of metrics. Create it with New.
type Metrics struct {
	// Registry holds every metric below, plus Go and process collectors.
	Registry *prometheus.Registry

	// AccessLog receives one line per connection when it closes (or is
	// refused): peers, identities, bytes, duration and the policy decision.
	// Nil means no access log. Set it before the first Open.
	AccessLog *slog.Logger

	opened, closed, sent, received *prometheus.CounterVec

	// XDSConnected is 1 while the xDS stream to the controller is up.
	XDSConnected prometheus.Gauge
	// ConfigFromDisk is 1 while the configuration in use came from the state file.
	ConfigFromDisk prometheus.Gauge
	// EnrolledPods counts the pods whose traffic is captured.
	EnrolledPods prometheus.Gauge
	// ReportedPods counts the pods reported over the enrolment API.
	ReportedPods prometheus.Gauge
	// DrainingPods counts the pods with connections of an earlier
	// capture still draining.
	DrainingPods prometheus.Gauge
	// Certificates counts tracked identities by state ("valid", "invalid").
	Certificates *prometheus.GaugeVec
	// PolicyDenials counts connections refused, by direction ("inbound"),
	// and reason ("policy", "waypoint", "strict", "authority").
	PolicyDenials *prometheus.CounterVec
	// OutboundErrors counts outbound connections that could not be
	// forwarded, by reason.
	OutboundErrors *prometheus.CounterVec
	// PodsUnknownAtAdd counts pods whose enrolment (CNI ADD) ended before
	// the configuration knew them: they started without capture.
	PodsUnknownAtAdd prometheus.Counter
	// DNSRequests counts the DNS queries of captured pods (-dns-capture),
	// by how they were answered: "local" (a service of the mesh, from the
	// configuration), "forwarded" (the pod's nameservers answered),
	// "failed" (none did: SERVFAIL), "malformed" (no answer), "dropped"
	// (too many of one pod at once).
	DNSRequests *prometheus.CounterVec
}

// New creates the metrics in a new registry.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_opened_total",
			Help: "TCP connections opened."}, tcpLabels),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_closed_total",
			Help: "TCP connections closed."}, tcpLabels),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_sent_bytes_total",
			Help: "Bytes sent from the server to the client (response direction)."}, tcpLabels),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_received_bytes_total",
			Help: "Bytes received from the client by the server (request direction)."}, tcpLabels),
		XDSConnected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ztunnel_xds_connected",
			Help: "1 while the xDS stream to the controller is connected."}),
		ConfigFromDisk: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ztunnel_xds_config_from_disk",
			Help: "1 while the configuration in use was loaded from the state file."}),
		EnrolledPods: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ztunnel_enrolled_pods",
			Help: "Pods whose traffic this ztunnel captures."}),
		ReportedPods: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ztunnel_reported_pods",
			Help: "Pods reported over the enrolment API (captured or not)."}),
		DrainingPods: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ztunnel_draining_pods",
			Help: "Pods with connections of an earlier capture still draining (the pod left the mesh, or was captured again with a new identity), until they end or -pod-drain passes."}),
		Certificates: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ztunnel_certificates",
			Help: "Workload identities tracked, by state."}, []string{"state"}),
		PolicyDenials: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ztunnel_connections_denied_total",
			Help: "Inbound connections refused, by reason."}, []string{"direction", "reason"}),
		OutboundErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ztunnel_outbound_errors_total",
			Help: "Outbound connections that could not be forwarded, by reason."}, []string{"reason"}),
		PodsUnknownAtAdd: prometheus.NewCounter(prometheus.CounterOpts{Name: "ztunnel_pods_unknown_at_add_total",
			Help: "Pods whose enrolment (CNI ADD) ended, after -pod-config-wait, before the configuration knew them: they started without capture, until their Workload arrived."}),
		DNSRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ztunnel_dns_requests_total",
			Help: "DNS queries of captured pods (-dns-capture), by how they were answered: local, forwarded, failed or malformed."}, []string{"result"}),
	}
	m.Registry.MustRegister(m.opened, m.closed, m.sent, m.received,
		m.XDSConnected, m.ConfigFromDisk, m.EnrolledPods, m.ReportedPods, m.DrainingPods, m.Certificates,
		m.PolicyDenials, m.OutboundErrors, m.PodsUnknownAtAdd, m.DNSRequests,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Conn tracks one connection's metrics and access-log line.
type Conn struct {
	closed, sent, received prometheus.Counter
	log                    *slog.Logger
	labels                 Labels
	start                  time.Time
	nSent, nReceived       atomic.Int64
	done                   atomic.Bool
}

// Open counts a connection opened with labels l and returns its tracker.
func (m *Metrics) Open(l Labels) *Conn {
	vs := l.values()
	m.opened.WithLabelValues(vs...).Inc()
	return &Conn{closed: m.closed.WithLabelValues(vs...), sent: m.sent.WithLabelValues(vs...),
		received: m.received.WithLabelValues(vs...), log: m.AccessLog, labels: l, start: time.Now()}
}

// Failed counts a connection that was opened and closed at once (refused or
// failed), with l.ResponseFlags saying why, and logs it.
func (m *Metrics) Failed(l Labels) {
	vs := l.values()
	m.opened.WithLabelValues(vs...).Inc()
	m.closed.WithLabelValues(vs...).Inc()
	if m.AccessLog != nil {
		m.AccessLog.Info("connection refused", accessAttrs(l, 0, 0, 0)...)
	}
}

// Close counts the connection closed and writes its access-log line. Only
// the first call counts.
func (c *Conn) Close() {
	if c.done.Swap(true) {
		return
	}
	c.closed.Inc()
	if c.log != nil {
		c.log.Info("connection closed", accessAttrs(c.labels, c.nSent.Load(), c.nReceived.Load(), time.Since(c.start))...)
	}
}

// Received counts n bytes from the client to the server.
func (c *Conn) Received(n int) {
	c.received.Add(float64(n))
	c.nReceived.Add(int64(n))
}

// Sent counts n bytes from the server to the client.
func (c *Conn) Sent(n int) {
	c.sent.Add(float64(n))
	c.nSent.Add(int64(n))
}

// Bytes returns the bytes counted so far: sent (server to client) and
// received (client to server).
func (c *Conn) Bytes() (sent, received int64) { return c.nSent.Load(), c.nReceived.Load() }

// accessAttrs are the key/values of an access-log line.
func accessAttrs(l Labels, sent, received int64, d time.Duration) []any {
	decision := "allow"
	if l.ResponseFlags == FlagDenied {
		decision = "deny"
	}
	flags := l.ResponseFlags
	if flags == "" {
		flags = FlagNone
	}
	return []any{
		"reporter", l.Reporter,
		"src_workload", l.Source.Namespace + "/" + l.Source.Workload, "src_principal", l.Source.Principal,
		"dst_workload", l.Destination.Namespace + "/" + l.Destination.Workload, "dst_principal", l.Destination.Principal,
		"dst_service", l.DestinationService, "security", l.Security, "policy", decision, "flags", flags,
		"sent_bytes", sent, "received_bytes", received, "duration", d,
	}
}

// Wrap returns c wrapped so that bytes read from it count as Received and
// bytes written to it as Sent when clientSide is true (c faces the client),
// and the other way round when false (c faces the server). The wrapper keeps
// CloseWrite.
func (c *Conn) Wrap(nc net.Conn, clientSide bool) net.Conn {
	if clientSide {
		return &countingConn{Conn: nc, onRead: c.Received, onWrite: c.Sent}
	}
	return &countingConn{Conn: nc, onRead: c.Sent, onWrite: c.Received}
}

type countingConn struct {
	net.Conn
	onRead, onWrite func(int)
}

// Read reads and counts.
func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.onRead(n)
	}
	return n, err
}

// Write writes and counts.
func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.onWrite(n)
	}
	return n, err
}

// CloseWrite half-closes the wrapped connection (Close if it cannot).
func (c *countingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
