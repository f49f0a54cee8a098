// Command controller is Ambit's control plane: Kubernetes watcher, translator,
// xDS server and mesh CA. Today it runs the mesh CA (package ca); main only
// parses flags and wires the pieces.
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

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/controller/ca"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/version"
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
		cfg         ca.Config
		kubeconfig  = fs.String("kubeconfig", "", "path to a kubeconfig; empty means in-cluster configuration (or $KUBECONFIG)")
		listen      = fs.String("ca-listen", ca.DefaultListenAddress, "address of the mesh CA's gRPC (TLS) listener")
		serverNames = fs.String("ca-server-names", "", "comma-separated extra DNS names (or IPs) of the CA's serving certificate")
		logLevel    = fs.String("log-level", "info", "log level: debug, info, warn or error")
		showVersion = fs.Bool("version", false, "print the version and exit")
	)
	fs.StringVar(&cfg.TrustDomain, "trust-domain", identity.DefaultTrustDomain, "trust domain of the mesh's SPIFFE identities")
	fs.DurationVar(&cfg.MaxCertLifetime, "cert-max-lifetime", ca.DefaultMaxCertLifetime, "longest validity of a workload certificate; longer requests are lowered to it")
	fs.DurationVar(&cfg.DefaultCertLifetime, "cert-default-lifetime", identity.DefaultCertLifetime, "validity of a workload certificate whose request names none")
	fs.StringVar(&cfg.ZtunnelServiceAccount, "ztunnel-service-account", ca.DefaultZtunnelServiceAccount, "namespace/name of ztunnel's service account, which may obtain identities of pods on its node")
	fs.StringVar(&cfg.SystemNamespace, "system-namespace", ca.DefaultSystemNamespace, "namespace of the CA Secret, the root ConfigMap and the controller Service")
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
	for _, n := range strings.Split(*serverNames, ",") {
		if n = strings.TrimSpace(n); n != "" {
			cfg.ExtraDNSNames = append(cfg.ExtraDNSNames, n)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	path := *kubeconfig
	if path == "" {
		path = os.Getenv("KUBECONFIG")
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return fmt.Errorf("kubernetes client configuration: %w", err)
	}
	restCfg.UserAgent = "ambit-controller/" + version.Version
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	log.InfoContext(ctx, "controller starting", "version", version.Version, "apiserver", restCfg.Host)

	server, err := ca.New(ctx, kube, cfg, log.With("component", "ca"))
	if err != nil {
		return fmt.Errorf("mesh CA: %w", err)
	}
	return server.ListenAndServe(ctx, *listen)
}
