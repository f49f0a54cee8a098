package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/controller/ca"
	"github.com/ambit-mesh/ambit/controller/deploy"
	"github.com/ambit-mesh/ambit/controller/k8s"
	"github.com/ambit-mesh/ambit/controller/localmode"
	"github.com/ambit-mesh/ambit/controller/pipeline"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/controller/xdsserver"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/version"
)

// Default listen addresses.
const (
	defaultXDSListen      = ":15010"
	defaultLocalXDSListen = "127.0.0.1:15010"
	defaultMetricsListen  = ":15020"
	defaultHealthListen   = ":15021"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		slog.Error("controller failed", "error", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("controller", flag.ContinueOnError)
	var (
		cfg           ca.Config
		wp            deploy.Options
		kubeconfig    = fs.String("kubeconfig", "", "path to a kubeconfig; empty means in-cluster configuration (or $KUBECONFIG)")
		listen        = fs.String("ca-listen", ca.DefaultListenAddress, "address of the mesh CA's gRPC (TLS) listener")
		serverNames   = fs.String("ca-server-names", "", "comma-separated extra DNS names (or IPs) of the CA's serving certificate")
		xdsListen     = fs.String("xds-listen", "", "address of the xDS (delta ADS over gRPC) listener: TLS with a service-account token, like the CA, or plaintext in local mode; default "+defaultXDSListen+", or "+defaultLocalXDSListen+" in local mode")
		configDir     = fs.String("config-dir", "", "local mode: read Kubernetes objects from the *.yaml/*.yml files of this folder (watched) instead of a cluster; no CA, no status, no waypoint deployment")
		leaderElect   = fs.Bool("leader-elect", true, "elect one replica (Lease in the system namespace) to write status and waypoint resources; every replica serves xDS")
		metricsListen = fs.String("metrics-listen", defaultMetricsListen, "address of the Prometheus metrics listener (cluster mode); 0 disables")
		healthListen  = fs.String("health-listen", defaultHealthListen, "address of /healthz and /readyz (cluster mode); 0 disables")
		clusterDomain = fs.String("cluster-domain", "cluster.local", "DNS domain of the cluster's Service names")
		logLevel      = fs.String("log-level", "info", "log level: debug, info, warn or error")
		showVersion   = fs.Bool("version", false, "print the version and exit")
	)
	fs.StringVar(&cfg.TrustDomain, "trust-domain", identity.DefaultTrustDomain, "trust domain of the mesh's SPIFFE identities")
	fs.DurationVar(&cfg.MaxCertLifetime, "cert-max-lifetime", ca.DefaultMaxCertLifetime, "longest validity of a workload certificate; longer requests are lowered to it")
	fs.DurationVar(&cfg.DefaultCertLifetime, "cert-default-lifetime", identity.DefaultCertLifetime, "validity of a workload certificate whose request names none")
	fs.StringVar(&cfg.ZtunnelServiceAccount, "ztunnel-service-account", ca.DefaultZtunnelServiceAccount, "namespace/name of ztunnel's service account, which may obtain identities of pods on its node")
	fs.StringVar(&cfg.SystemNamespace, "system-namespace", ca.DefaultSystemNamespace, "namespace of the CA Secret, the root ConfigMap, the controller Service, the leader-election Lease and mesh-wide policies")
	fs.StringVar(&wp.Image, "waypoint-image", deploy.DefaultImage(), "container image of waypoint Deployments")
	fs.StringVar(&wp.XDSAddress, "waypoint-xds-address", deploy.DefaultXDSAddress, "host:port waypoints reach the controller's xDS server at")
	fs.StringVar(&wp.CAAddress, "waypoint-ca-address", deploy.DefaultCAAddress, "host:port waypoints reach the mesh CA at")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Println(version.String("controller"))
		return nil
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	k8s.SetGlobalLoggers(log)
	for _, n := range strings.Split(*serverNames, ",") {
		if n = strings.TrimSpace(n); n != "" {
			cfg.ExtraDNSNames = append(cfg.ExtraDNSNames, n)
		}
	}
	wp.TrustDomain = cfg.TrustDomain

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	xds := xdsserver.New(log.With("component", "xds"))
	pipe := pipeline.New(translate.Translate, translate.Options{
		TrustDomain: cfg.TrustDomain, ClusterDomain: *clusterDomain, SystemNamespace: cfg.SystemNamespace,
	}, xds, log.With("component", "translate"))
	g, ctx := errgroup.WithContext(ctx)

	if *configDir != "" {
		addr := *xdsListen
		if addr == "" {
			addr = defaultLocalXDSListen
		}
		log.InfoContext(ctx, "controller starting in local mode", "version", version.Version, "dir", *configDir, "xds", addr)
		// Local mode has no CA: xDS is plaintext, on loopback by default.
		g.Go(func() error { return xds.ListenAndServe(ctx, addr) })
		g.Go(func() error {
			return localmode.Run(ctx, localmode.Config{Dir: *configDir, Load: translate.LoadInput, Pipeline: pipe, Logger: log.With("component", "localmode")})
		})
		return g.Wait()
	}

	addr := *xdsListen
	if addr == "" {
		addr = defaultXDSListen
	}
	restCfg, err := restConfig(*kubeconfig)
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	log.InfoContext(ctx, "controller starting", "version", version.Version, "apiserver", restCfg.Host, "xds", addr)

	server, err := ca.New(ctx, kube, cfg, log.With("component", "ca"))
	if err != nil {
		return fmt.Errorf("mesh CA: %w", err)
	}
	// Waypoints trust the CA's roots: the deployer writes them to a ConfigMap
	// beside every waypoint.
	wp.RootCertsPEM = string(identity.EncodeCertsPEM(server.Roots()...))
	ctl, err := k8s.New(restCfg, k8s.Options{
		Pipeline: pipe, Waypoint: wp, SystemNamespace: cfg.SystemNamespace, LeaderElection: *leaderElect,
		MetricsAddress: *metricsListen, HealthAddress: *healthListen, Logger: log.With("component", "k8s"),
	})
	if err != nil {
		return err
	}
	g.Go(func() error { return server.ListenAndServe(ctx, *listen) })
	// xDS is secured like the CA: TLS with its serving certificate, a
	// service-account token on every stream, and each node's configuration
	// only to that node's service account.
	xds.SetAuthorizer(server.AuthorizeXDS)
	g.Go(func() error { return xds.ListenAndServe(ctx, addr, server.XDSServerOptions()...) })
	g.Go(func() error { return ctl.Start(ctx) })
	return g.Wait()
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		kubeconfig = os.Getenv("KUBECONFIG")
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	restCfg.UserAgent = "ambit-controller/" + version.Version
	return restCfg, nil
}
