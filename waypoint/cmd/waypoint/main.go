package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/caclient"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/version"
	"github.com/ambit-mesh/ambit/pkg/xds"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
	"github.com/ambit-mesh/ambit/waypoint/server"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "waypoint:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("waypoint", flag.ContinueOnError)
	gateway := fs.String("gateway", os.Getenv("GATEWAY"), "waypoint Gateway as <namespace>/<name> (default $GATEWAY)")
	id := fs.String("identity", os.Getenv("SPIFFE_ID"), "waypoint SPIFFE ID, spiffe://<trust domain>/ns/<ns>/sa/<sa> (default $SPIFFE_ID)")
	listen := fs.String("hbone-address", fmt.Sprintf(":%d", hbone.Port), "HBONE listener")
	hbonePort := fs.Uint("endpoint-hbone-port", hbone.Port, "HBONE port of endpoints")
	xdsAddr := fs.String("xds-address", "ambit-controller.ambit-system.svc:15010", "controller xDS server (insecure gRPC)")
	xdsState := fs.String("xds-state-file", "", "last good configuration, read at start; empty disables")
	caAddr := fs.String("ca-address", "ambit-controller.ambit-system.svc:15012", "mesh CA (gRPC over TLS)")
	caRoot := fs.String("ca-root-file", "/var/run/ambit/ca/root-cert.pem", "PEM bundle that verifies the CA's serving certificate")
	caToken := fs.String("ca-token-file", caclient.DefaultTokenFile, "service-account token presented to the CA")
	caName := fs.String("ca-server-name", caclient.DefaultServerName, "name the CA's serving certificate carries")
	localCA := fs.String("local-ca-trust-domain", "", "development only: sign certificates with an in-process CA of this trust domain instead of the mesh CA")
	validity := fs.Duration("cert-validity", identity.DefaultCertLifetime, "certificate lifetime asked of the CA")
	drain := fs.Duration("shutdown-drain", 5*time.Second, "after SIGTERM, how long open tunnels may finish")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	if *showVersion {
		fmt.Println(version.String("waypoint"))
		return nil
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	slog.SetDefault(log)
	ns, name, ok := strings.Cut(*gateway, "/")
	if !ok || ns == "" || name == "" {
		return errors.New("-gateway <namespace>/<name> (or $GATEWAY) is required")
	}
	wid, err := identity.ParseSPIFFEID(*id)
	if err != nil {
		return fmt.Errorf("-identity: %w", err)
	}
	if *hbonePort == 0 || *hbonePort > 65535 {
		return errors.New("-endpoint-hbone-port must be within 1-65535")
	}

	fetcher, closeFetcher, err := caclient.NewFetcher(caclient.FetcherConfig{
		LocalTrustDomain: *localCA,
		Address:          *caAddr, ServerName: *caName, RootsFile: *caRoot, TokenFile: *caToken,
	})
	if err != nil {
		return err
	}
	defer closeFetcher()
	certs, err := identity.NewManager(fetcher, identity.ManagerOptions{Validity: *validity, Logger: log.With("component", "certs")})
	if err != nil {
		return err
	}

	conn, err := grpc.NewClient(*xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("xds client: %w", err)
	}
	defer conn.Close()
	store := server.NewStore(log.With("component", "config"))
	xc, err := xds.New(xds.Config{
		Conn:      conn,
		Node:      &corev3.Node{Id: configv1alpha1.WaypointNodeID(ns, name)},
		Types:     store.Types(),
		StateFile: *xdsState,
		Logger:    log.With("component", "xds"),
	})
	if err != nil {
		return err
	}

	access := log.With("component", "access")
	srv, err := server.New(server.Config{
		Identity:  wid,
		Cert:      certs.Cert(wid),
		Roots:     certs.Roots(),
		Store:     store,
		HBONEPort: uint16(*hbonePort),
		OnResult: func(r *http.Request, res *proxy.Result) {
			access.Info("request", "method", r.Method, "path", r.URL.Path, "service", res.Service, "port", res.Port,
				"route", res.Route, "backend", res.Backend, "endpoint", res.Endpoint, "code", res.Code,
				"flags", res.FlagString(), "attempts", res.Attempts, "duration", res.Duration)
		},
		Logger: log,
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bg, cancelBG := context.WithCancel(context.Background())
	defer cancelBG()
	go func() { _ = certs.Run(bg) }()
	go func() { _ = xc.Run(bg) }()
	if err := certs.Add(ctx, wid); err != nil {
		log.Warn("first certificate fetch failed; retrying", "identity", wid.String(), "err", err)
		if err := certs.Wait(ctx, wid); err != nil {
			return err
		}
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	log.Info("waypoint serving", "gateway", *gateway, "identity", wid.String(), "hbone", l.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), max(*drain, 0))
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	_ = srv.Close()
	return nil
}
