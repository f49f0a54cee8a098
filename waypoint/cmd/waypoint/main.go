package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/caclient"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/version"
	"github.com/ambit-mesh/ambit/pkg/xds"
	"github.com/ambit-mesh/ambit/waypoint/admin"
	"github.com/ambit-mesh/ambit/waypoint/server"
	"github.com/ambit-mesh/ambit/waypoint/telemetry"
	"github.com/ambit-mesh/ambit/waypoint/tracing"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "waypoint:", err)
		os.Exit(1)
	}
}

func run() error {
	o, err := parseOptions(os.Args[1:], os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	if o.showVersion {
		fmt.Println(version.String("waypoint"))
		return nil
	}
	o.runtime.Apply()
	// Buffered: at 1,000 requests/s the access log was a write(2) per
	// request. Warnings and errors flush at once, the rest within 100 ms.
	lw := newLogWriter(os.Stderr, 100*time.Millisecond)
	defer func() { _ = lw.Flush() }()
	log := slog.New(&flushingHandler{Handler: slog.NewJSONHandler(lw, &slog.HandlerOptions{Level: o.logLevel}), w: lw, flushLevel: slog.LevelWarn})
	slog.SetDefault(log)
	if err := o.runtime.ApplySchedSlice(); err != nil {
		log.Warn("the scheduler's time slice is the kernel's default", "err", err.Error())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, o, log, lw, nil)
}

// listeners are the addresses the waypoint listens on.
type listeners struct {
	hbone, metrics, ready, admin net.Addr
}

// serve runs the waypoint until ctx ends (SIGTERM), then drains: readiness
// fails at once, the HBONE listener keeps accepting for -shutdown-delay,
// then open requests and tunnels get -shutdown-drain to finish. accessOut,
// if not nil, is where log writes its JSON lines: the access log's lines
// go there directly, in the same format. started, if not nil, is called
// once every listener is open.
func serve(ctx context.Context, o *options, log *slog.Logger, accessOut io.Writer, started func(listeners)) error {
	wid := o.identity

	fetcher, closeFetcher, err := caclient.NewFetcher(caclient.FetcherConfig{
		LocalTrustDomain: o.localCATrustDomain,
		Address:          o.caAddress, ServerName: o.caServerName, RootsFile: o.caRootFile, TokenFile: o.caTokenFile,
	})
	if err != nil {
		return err
	}
	defer closeFetcher()
	certs, err := identity.NewManager(fetcher, identity.ManagerOptions{Validity: o.certValidity, Logger: log.With("component", "certs")})
	if err != nil {
		return err
	}

	conn, err := caclient.DialXDS(caclient.XDSConfig{Address: o.xdsAddress, Insecure: o.xdsInsecure,
		ServerName: o.caServerName, RootsFile: o.caRootFile, TokenFile: o.caTokenFile})
	if err != nil {
		return err
	}
	defer conn.Close()
	store := server.NewStore(log.With("component", "config"))
	store.SetDrainPeriod(o.drainRemoved)
	xc, err := xds.New(xds.Config{
		Conn:      conn,
		Node:      &corev3.Node{Id: configv1alpha1.WaypointNodeID(o.gatewayNamespace, o.gatewayName)},
		Types:     store.Types(),
		StateFile: o.xdsStateFile,
		Logger:    log.With("component", "xds"),
	})
	if err != nil {
		return err
	}

	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing", "component", "otlp", "err", err)
	}))
	tracer, err := tracing.New(context.Background(), tracing.Config{
		Endpoint:    o.otlpEndpoint,
		ServiceName: o.gatewayName + ".waypoint",
		Attributes: []attribute.KeyValue{
			attribute.String("k8s.namespace.name", o.gatewayNamespace),
			attribute.String("ambit.gateway", o.gateway()),
		},
	})
	if err != nil {
		return err
	}
	tel := telemetry.New(store, log.With("component", "access"))
	if accessOut != nil && o.logLevel <= slog.LevelInfo {
		// The access log's lines, as the logger would write them, without
		// its per-attribute work.
		tel.SetAccessWriter(accessOut, "component", "access")
	}
	srv, err := server.New(server.Config{
		Identity:     wid,
		Cert:         certs.Cert(wid),
		Roots:        certs.Roots(),
		Store:        store,
		Gateway:      o.gateway(),
		HBONEPort:    o.endpointHBONEPort,
		SniffTimeout: o.sniffTimeout,
		Tracer:       tracer,
		OnResult:     tel.Observe,
		OnConn:       tel.ObserveConn,
		Logger:       log,
	})
	if err != nil {
		return err
	}

	health := admin.NewHealth(
		admin.Check{Name: "certificate", Err: func() error { return certReady(certs, wid) }},
		admin.Check{Name: "config", Err: func() error {
			select {
			case <-xc.Ready():
				return nil
			default:
				from := "the controller"
				if o.xdsStateFile != "" {
					from += " or " + o.xdsStateFile
				}
				if st := xc.Status(); st.LastError != "" {
					return fmt.Errorf("no configuration yet from %s: %s", from, st.LastError)
				}
				return fmt.Errorf("no configuration yet from %s", from)
			}
		}},
	)
	registerHealthMetrics(tel.Registry, xc, store, health, func() bool { return certReady(certs, wid) == nil })
	var side []*http.Server
	var addrs listeners
	for _, l := range []struct {
		addr string
		h    http.Handler
		to   *net.Addr
	}{
		{o.metricsAddress, admin.MetricsHandler(tel.Registry), &addrs.metrics},
		{o.readyAddress, admin.ReadyHandler(health), &addrs.ready},
		{o.adminAddress, admin.AdminHandler(health, func() any { return dump(o, xc, certs, store, health) }), &addrs.admin},
	} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return err
		}
		*l.to = ln.Addr()
		hs := &http.Server{Handler: l.h, ReadHeaderTimeout: 10 * time.Second}
		side = append(side, hs)
		go func() { _ = hs.Serve(ln) }()
	}
	defer func() {
		for _, hs := range side {
			_ = hs.Close()
		}
	}()

	bg, cancelBG := context.WithCancel(context.Background())
	defer cancelBG()
	go func() { _ = certs.Run(bg) }()
	go func() { _ = xc.Run(bg) }()
	if err := certs.Add(ctx, wid); err != nil {
		log.Warn("first certificate fetch failed; retrying", "identity", wid.String(), "err", err)
		if err := certs.Wait(ctx, wid); err != nil {
			if ctx.Err() != nil {
				return nil // signalled before the first certificate
			}
			return err
		}
	}
	l, err := net.Listen("tcp", o.hboneAddress)
	if err != nil {
		return err
	}
	addrs.hbone = l.Addr()
	log.Info("waypoint serving", "gateway", o.gateway(), "identity", wid.String(), "hbone", l.Addr().String(),
		"metrics", o.metricsAddress, "ready", o.readyAddress, "otlp", o.otlpEndpoint, "version", version.String("waypoint"))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	if started != nil {
		started(addrs)
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Readiness fails first; the listener keeps accepting while the
	// waypoint's endpoints are withdrawn, then it stops and open requests
	// and tunnels get the drain period to finish.
	health.Drain()
	log.Info("draining", "delay", o.shutdownDelay, "timeout", o.shutdownDrain)
	select {
	case err := <-errc:
		return err
	case <-time.After(o.shutdownDelay):
	}
	start := time.Now()
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownDrain)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Warn("shutdown", "err", err)
	}
	_ = srv.Close()
	log.Debug("listeners and tunnels closed", "took", time.Since(start))
	fctx, fcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer fcancel()
	if err := tracer.Shutdown(fctx); err != nil {
		log.Warn("flushing spans", "err", err)
	}
	log.Info("stopped", "drain", time.Since(start))
	return nil
}

// certReady is the certificate readiness check: the waypoint's own
// certificate is issued and not expired.
func certReady(m *identity.Manager, id identity.SPIFFEID) error {
	for _, c := range m.Snapshot().Identities {
		if c.ID != id.String() {
			continue
		}
		if c.Valid {
			return nil
		}
		if c.LastError != "" {
			return fmt.Errorf("no valid certificate for %s: %s", id, c.LastError)
		}
		break
	}
	return fmt.Errorf("no certificate for %s yet", id)
}

// registerHealthMetrics adds the waypoint's own gauges, read at scrape
// time: xDS connection and source, certificate, readiness, drain and the
// number of authorization policies in force.
func registerHealthMetrics(reg *prometheus.Registry, xc *xds.Client, store *server.Store, h *admin.Health, certOK func() bool) {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	reg.MustRegister(
		gauge("waypoint_xds_connected", "1 while the xDS stream to the controller is connected.", func() float64 { return b2f(xc.Status().Connected) }),
		gauge("waypoint_xds_config_from_disk", "1 while the configuration in use was loaded from the state file.", func() float64 { return b2f(xc.Status().FromDisk) }),
		gauge("waypoint_certificate_valid", "1 while the waypoint's certificate is issued and not expired.", func() float64 { return b2f(certOK()) }),
		gauge("waypoint_ready", "1 while /healthz/ready answers 200.", func() float64 { return b2f(h.Ready() == nil) }),
		gauge("waypoint_draining", "1 once SIGTERM started the drain.", func() float64 { return b2f(h.Draining()) }),
		gauge("waypoint_authorization_policies", "Authorization policies in force at this waypoint.", func() float64 { return float64(store.Authorizations().Len()) }),
		gauge("waypoint_draining_services", "Services that left the waypoint's configuration and are still served until -drain-removed passes.", func() float64 { s, _ := store.Draining(); return float64(s) }),
		gauge("waypoint_draining_workloads", "Workloads that stopped using this waypoint and are still served until -drain-removed passes.", func() float64 { _, w := store.Draining(); return float64(w) }),
	)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// configDump is the admin /config_dump document (no private keys).
type configDump struct {
	Gateway      string                   `json:"gateway"`
	Identity     string                   `json:"identity"`
	Ready        string                   `json:"ready"`
	XDS          xds.Status               `json:"xds"`
	Config       server.StoreDump         `json:"config"`
	Certificates identity.ManagerSnapshot `json:"certificates"`
	Version      string                   `json:"version"`
}

func dump(o *options, xc *xds.Client, certs *identity.Manager, store *server.Store, h *admin.Health) configDump {
	d := configDump{Gateway: o.gateway(), Identity: o.identity.String(), Ready: "ready", XDS: xc.Status(),
		Config: store.Dump(), Certificates: certs.Snapshot(), Version: version.String("waypoint")}
	if err := h.Ready(); err != nil {
		d.Ready = err.Error()
	}
	return d
}
