package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/pkg/caclient"
	"github.com/ambit-mesh/ambit/pkg/goruntime"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/waypoint/server"
)

// Environment variables of the waypoint pod contract (the controller's
// deployer sets them; flags override).
const (
	envGatewayNamespace = "AMBIT_GATEWAY_NAMESPACE"
	envGatewayName      = "AMBIT_GATEWAY_NAME"
	envXDSAddress       = "AMBIT_XDS_ADDRESS"
	envCAAddress        = "AMBIT_CA_ADDRESS"
	envTrustDomain      = "AMBIT_TRUST_DOMAIN"
	envTokenFile        = "AMBIT_TOKEN_FILE"
	envStateDir         = "AMBIT_STATE_DIR"
	envCARootFile       = "AMBIT_CA_ROOT_FILE"
	envPodNamespace     = "POD_NAMESPACE"
	envServiceAccount   = "SERVICE_ACCOUNT"
	envOTLPEndpoint     = "OTEL_EXPORTER_OTLP_ENDPOINT"
)

// Defaults that no environment variable sets.
const (
	defaultXDSAddress  = "ambit-controller.ambit-system.svc:15010"
	defaultCAAddress   = "ambit-controller.ambit-system.svc:15012"
	defaultCARootFile  = "/etc/ambit/ca/root-cert.pem"
	defaultTrustDomain = "cluster.local"
	stateFileName      = "xds-state.pb"
)

// options is the waypoint's resolved configuration.
type options struct {
	gatewayNamespace, gatewayName string
	identity                      identity.SPIFFEID

	hboneAddress, metricsAddress, readyAddress, adminAddress string
	endpointHBONEPort                                        uint16

	xdsAddress, xdsStateFile string
	xdsInsecure              bool

	caAddress, caRootFile, caTokenFile, caServerName, localCATrustDomain string
	certValidity                                                         time.Duration

	otlpEndpoint  string
	shutdownDrain time.Duration
	shutdownDelay time.Duration
	sniffTimeout  time.Duration
	drainRemoved  time.Duration
	logLevel      slog.Level
	runtime       goruntime.Settings
	showVersion   bool
}

// gateway is "<namespace>/<name>".
func (o *options) gateway() string { return o.gatewayNamespace + "/" + o.gatewayName }

// parseOptions resolves the flags in args over the environment (getenv).
// Missing required settings are reported together, each with the flag and
// the variables that can set it.
func parseOptions(args []string, getenv func(string) string, out io.Writer) (*options, error) {
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	fs.SetOutput(out)
	defGateway := getenv("GATEWAY")
	if ns, name := getenv(envGatewayNamespace), getenv(envGatewayName); ns != "" || name != "" {
		defGateway = ns + "/" + name
	}
	defState := ""
	if dir := getenv(envStateDir); dir != "" {
		defState = filepath.Join(dir, stateFileName)
	}
	gateway := fs.String("gateway", defGateway, "waypoint Gateway as <namespace>/<name> (default $"+envGatewayNamespace+"/$"+envGatewayName+", else $GATEWAY)")
	id := fs.String("identity", getenv("SPIFFE_ID"), "waypoint SPIFFE ID (default $SPIFFE_ID, else spiffe://<-trust-domain>/ns/$"+envPodNamespace+"/sa/$"+envServiceAccount+")")
	td := fs.String("trust-domain", or(getenv(envTrustDomain), defaultTrustDomain), "trust domain of the identity built from the pod's namespace and service account ($"+envTrustDomain+")")
	podNS := fs.String("pod-namespace", getenv(envPodNamespace), "namespace of the waypoint pod ($"+envPodNamespace+")")
	sa := fs.String("service-account", getenv(envServiceAccount), "service account of the waypoint pod ($"+envServiceAccount+")")
	listen := fs.String("hbone-address", fmt.Sprintf(":%d", hbone.Port), "HBONE listener")
	metrics := fs.String("metrics-address", ":15020", "Prometheus /metrics listener; empty disables")
	ready := fs.String("ready-address", ":15021", "/healthz/ready and /healthz/live listener; empty disables")
	adminAddr := fs.String("admin-address", "localhost:15000", "/config_dump listener (keep it on localhost); empty disables")
	hbonePort := fs.Uint("endpoint-hbone-port", hbone.Port, "HBONE port of endpoints")
	xdsAddr := fs.String("xds-address", or(getenv(envXDSAddress), defaultXDSAddress), "controller xDS server: TLS verified with -ca-root-file for -ca-server-name, authenticated with -ca-token-file, as the CA ($"+envXDSAddress+")")
	xdsInsecure := fs.Bool("xds-insecure", false, "plaintext xDS without a token, for a controller in local mode (which serves it so, on loopback by default)")
	xdsState := fs.String("xds-state-file", defState, "last good configuration, read at start; empty disables (default $"+envStateDir+"/"+stateFileName+")")
	caAddr := fs.String("ca-address", or(getenv(envCAAddress), defaultCAAddress), "mesh CA, gRPC over TLS ($"+envCAAddress+")")
	caRoot := fs.String("ca-root-file", or(getenv(envCARootFile), defaultCARootFile), "PEM bundle that verifies the CA's serving certificate ($"+envCARootFile+")")
	caToken := fs.String("ca-token-file", or(getenv(envTokenFile), caclient.DefaultTokenFile), "service-account token presented to the CA ($"+envTokenFile+")")
	caName := fs.String("ca-server-name", caclient.DefaultServerName, "name the CA's serving certificate carries")
	localCA := fs.String("local-ca-trust-domain", "", "development only: sign certificates with an in-process CA of this trust domain instead of the mesh CA")
	validity := fs.Duration("cert-validity", identity.DefaultCertLifetime, "certificate lifetime asked of the CA")
	otlp := fs.String("otlp-endpoint", getenv(envOTLPEndpoint), "OTLP/gRPC collector for spans, host:port or http(s)://host:port; empty exports none ($"+envOTLPEndpoint+")")
	delay := fs.Duration("shutdown-delay", time.Second, "after SIGTERM, how long readiness fails while new tunnels are still accepted (the time to withdraw the pod from its Service)")
	drain := fs.Duration("shutdown-drain", 5*time.Second, "after -shutdown-delay, how long open requests and tunnels may finish")
	sniff := fs.Duration("sniff-timeout", server.DefaultSniffTimeout, "how long to wait for a tunnel's first bytes on a port whose protocol nothing declares before passing it through as TCP")
	drainRemoved := fs.Duration("drain-removed", server.DefaultDrainRemoved, "how long a service (or workload) that leaves the waypoint's configuration is still served, its answers telling clients to reconnect (HTTP/1.1 Connection: close, HTTP/2 GOAWAY); 0 stops serving it at once")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	// One processor, GOGC 100: see docs/reference/waypoint.md, "Performance".
	rt := goruntime.Register(fs, goruntime.Defaults{MaxProcs: 1, GCPercent: 100, LimitExample: "48MiB"}, getenv)
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	o := &options{
		hboneAddress: *listen, metricsAddress: *metrics, readyAddress: *ready, adminAddress: *adminAddr,
		xdsAddress: *xdsAddr, xdsStateFile: *xdsState, xdsInsecure: *xdsInsecure,
		caAddress: *caAddr, caRootFile: *caRoot, caTokenFile: *caToken, caServerName: *caName,
		localCATrustDomain: *localCA, certValidity: *validity,
		otlpEndpoint: *otlp, shutdownDrain: *drain, shutdownDelay: *delay, sniffTimeout: *sniff, drainRemoved: *drainRemoved, showVersion: *showVersion,
	}
	if o.showVersion {
		return o, nil
	}
	var problems []string
	if err := o.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		problems = append(problems, fmt.Sprintf("-log-level: %v", err))
	}
	if rts, err := rt.Settings(); err != nil {
		problems = append(problems, err.Error())
	} else {
		o.runtime = rts
	}
	if *hbonePort == 0 || *hbonePort > 65535 {
		problems = append(problems, "-endpoint-hbone-port must be within 1-65535")
	}
	o.endpointHBONEPort = uint16(*hbonePort)
	if *drain < 0 {
		problems = append(problems, "-shutdown-drain must not be negative")
	}
	if *sniff <= 0 {
		problems = append(problems, "-sniff-timeout must be positive")
	}
	if *delay < 0 {
		problems = append(problems, "-shutdown-delay must not be negative")
	}
	if *drainRemoved < 0 {
		problems = append(problems, "-drain-removed must not be negative")
	}

	ns, name, ok := strings.Cut(*gateway, "/")
	switch {
	case *gateway == "":
		problems = append(problems, "gateway: set -gateway <namespace>/<name>, or $"+envGatewayNamespace+" and $"+envGatewayName)
	case !ok || ns == "" || name == "" || strings.Contains(name, "/"):
		problems = append(problems, fmt.Sprintf("gateway %q: want <namespace>/<name> (-gateway, or $%s and $%s)", *gateway, envGatewayNamespace, envGatewayName))
	default:
		o.gatewayNamespace, o.gatewayName = ns, name
	}

	if *id != "" {
		wid, err := identity.ParseSPIFFEID(*id)
		if err != nil {
			problems = append(problems, fmt.Sprintf("-identity: %v", err))
		}
		o.identity = wid
	} else {
		var missing []string
		if *podNS == "" {
			missing = append(missing, "$"+envPodNamespace+" (-pod-namespace)")
		}
		if *sa == "" {
			missing = append(missing, "$"+envServiceAccount+" (-service-account)")
		}
		if len(missing) > 0 {
			problems = append(problems, "identity: set -identity (or $SPIFFE_ID), or "+strings.Join(missing, " and "))
		} else {
			wid := identity.SPIFFEID{TrustDomain: *td, Namespace: *podNS, ServiceAccount: *sa}
			if err := wid.Validate(); err != nil {
				problems = append(problems, fmt.Sprintf("identity from trust domain %q, namespace %q, service account %q: %v", *td, *podNS, *sa, err))
			}
			o.identity = wid
		}
	}
	if o.localCATrustDomain != "" && !o.xdsInsecure {
		problems = append(problems, "-local-ca-trust-domain has no mesh root to verify the controller's xDS server with: add -xds-insecure (a controller in local mode serves plaintext xDS)")
	}
	if o.localCATrustDomain == "" {
		if o.caAddress == "" {
			problems = append(problems, "-ca-address (or $"+envCAAddress+") is empty")
		}
		if o.caRootFile == "" {
			problems = append(problems, "-ca-root-file (or $"+envCARootFile+") is empty")
		}
	}
	if o.xdsAddress == "" {
		problems = append(problems, "-xds-address (or $"+envXDSAddress+") is empty")
	}
	if len(problems) > 0 {
		return nil, errors.New("invalid configuration:\n  " + strings.Join(problems, "\n  "))
	}
	return o, nil
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
