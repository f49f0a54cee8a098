package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Registry is the controller's one registry (controller-runtime's).
var Registry = ctrlmetrics.Registry

// Label values.
const (
	ResultOK    = "ok"
	ResultPanic = "panic"
	// NodeKindInvalid labels streams whose node ID does not parse.
	NodeKindInvalid = "invalid"
)

// Translation (controller/pipeline).
var (
	Translations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ambit_controller_translations_total",
		Help: "Translations of the watched objects into data-plane configuration, by result (ok or panic).",
	}, []string{"result"})
	TranslateSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ambit_controller_translate_duration_seconds",
		Help:    "Duration of one translation (translate.Translate, including panicked ones).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
	})
)

// xDS server (controller/xdsserver).
var (
	XDSConnections = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ambit_controller_xds_connections",
		Help: "Open xDS (delta ADS) streams, by node kind (ztunnel, waypoint, invalid); a stream is counted once its first request names the node.",
	}, []string{"node_kind"})
	XDSRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ambit_controller_xds_refused_total",
		Help: "xDS calls and subscriptions refused, by gRPC code: Unauthenticated (no valid service-account token), PermissionDenied (the caller may not have that node's configuration), Unavailable (the token could not be checked).",
	}, []string{"code"})
	XDSPushes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ambit_controller_xds_pushes_total",
		Help: "xDS responses sent to clients, by resource type (Workload, Service, Authorization, WaypointConfig).",
	}, []string{"type"})
	XDSNacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ambit_controller_xds_nacks_total",
		Help: "xDS responses clients rejected (NACK), by resource type.",
	}, []string{"type"})
	XDSPublishSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ambit_controller_xds_publish_duration_seconds",
		Help:    "Time from a Publish call until every xDS cache holds the new configuration (diffing included).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
	})
	XDSPushAckSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ambit_controller_xds_push_ack_duration_seconds",
		Help:    "Time from the Publish call that changed a client's resources to that client's ACK of the resulting push (responses to new subscriptions are not counted).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
	})
)

// Mesh CA (controller/ca).
var (
	CARequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ambit_controller_ca_requests_total",
		Help: "CreateCertificate calls, by gRPC status code (OK, Unauthenticated, PermissionDenied, InvalidArgument, ...).",
	}, []string{"code"})
	CARequestSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ambit_controller_ca_request_duration_seconds",
		Help:    "Duration of a CreateCertificate call, authentication (TokenReview) and authorization included.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
	})
	CASignSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ambit_controller_ca_sign_duration_seconds",
		Help:    "Duration of signing one workload certificate.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
	})
)

func init() {
	Registry.MustRegister(Translations, TranslateSeconds,
		XDSConnections, XDSRefused, XDSPushes, XDSNacks, XDSPublishSeconds, XDSPushAckSeconds,
		CARequests, CARequestSeconds, CASignSeconds)
}
