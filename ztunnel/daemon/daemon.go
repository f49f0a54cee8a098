package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/xds"
	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
)

// Defaults of Config.
const (
	DefaultSystemNamespace = "ambit-system"
	DefaultResyncWait      = 10 * time.Second
	DefaultAdminAddr       = "127.0.0.1:15000"
	DefaultMetricsAddr     = ":15020"
	DefaultReadyAddr       = ":15021"
	DefaultSOCKS5Addr      = "127.0.0.1:15080"
	DefaultDrainTimeout    = 30 * time.Second
	// DefaultPodConfigWait bounds how long a pod's enrolment (the CNI
	// ADD) waits for the configuration to know the pod.
	DefaultPodConfigWait = 5 * time.Second
	// DefaultShutdownDrain bounds how long open connections may finish
	// after SIGTERM.
	DefaultShutdownDrain = 5 * time.Second
	// DefaultShutdownDecisionTimeout bounds the uninstall-or-restart
	// decision at shutdown.
	DefaultShutdownDecisionTimeout = 10 * time.Second
	// uninstallTimeout bounds the release of every pod at uninstall.
	uninstallTimeout = 60 * time.Second
	// retryInterval is how often pods whose capture failed are retried.
	retryInterval = 5 * time.Second
)

// Config configures a Daemon.
type Config struct {
	// NodeName is the Kubernetes node this ztunnel serves. Required.
	NodeName string
	// SystemNamespace holds mesh-wide policies; empty means DefaultSystemNamespace.
	SystemNamespace string
	// XDSConn reaches the controller's xDS server. Required.
	XDSConn grpc.ClientConnInterface
	// XDSStateFile persists the last good configuration; empty disables.
	XDSStateFile string
	// XDSMinBackoff and XDSMaxBackoff tune reconnection (zero: pkg/xds defaults).
	XDSMinBackoff, XDSMaxBackoff time.Duration
	// Fetcher obtains certificates: a caclient.Client in a cluster, an
	// identity.AuthorityFetcher locally and in tests. Required.
	Fetcher identity.Fetcher
	// Certificates tunes the certificate manager (Logger is set by the daemon).
	Certificates identity.ManagerOptions
	// Enroll configures the enrolment server; its Hooks and Logger are set
	// by the daemon.
	Enroll enroll.Options
	// ResyncWait bounds the wait for configuration before Resync; zero means
	// DefaultResyncWait.
	ResyncWait time.Duration
	// AdminAddr, MetricsAddr and ReadyAddr are the HTTP listeners (admin
	// config dump, Prometheus metrics, readiness); empty disables one.
	AdminAddr, MetricsAddr, ReadyAddr string
	// SOCKS5Addr is the node-level explicit-mode SOCKS5 listener (e.g.
	// "127.0.0.1:15080", in ztunnel's own network namespace); it serves only
	// when SOCKS5Workload is set too. It is meant for hosts without
	// Kubernetes: a pod uses its own listener (PodSOCKS5Addr).
	SOCKS5Addr string
	// SOCKS5Workload is the Workload ("<namespace>/<pod>") whose identity
	// the node-level listener's clients act as.
	SOCKS5Workload string
	// SOCKS5Nameservers (the cluster's DNS) resolve SOCKS5 destination
	// names that are not services of the mesh, with the source pod's search
	// list and before its own nameservers, unless its dnsPolicy is None
	// (DNS over TCP, from inside the pod for a pod's listener); empty: only
	// pods' own nameservers (dnsConfig) are asked.
	SOCKS5Nameservers []netip.AddrPort
	// DisablePodSOCKS5 turns off the SOCKS5 listener ztunnel otherwise opens
	// on PodSOCKS5Addr inside every captured pod.
	DisablePodSOCKS5 bool
	// DNSCapture redirects every captured pod's DNS queries over UDP to
	// ztunnel (PodDNSAddr in the pod), which answers the hostnames of the
	// mesh's services itself and forwards the rest to the pod's nameservers
	// (SOCKS5Nameservers, then the pod's own); see proxy.DNSServer.
	DNSCapture bool
	// NoOriginalSource makes ztunnel connect to a pod's application from the
	// pod's own address. By default it connects from the client's (the
	// tunnel's source, or the plaintext connection's), as the application
	// would see it without the mesh (redirect.Config.OriginalSource).
	NoOriginalSource bool
	// DrainTimeout bounds how long the connections ztunnel proxies for a
	// running pod it stops serving may finish: the pod left the mesh (new
	// connections bypass ztunnel at once) or its identity changed (new
	// connections use the new one). Zero means DefaultDrainTimeout,
	// negative closes them at once. A pod deleted or released by an
	// uninstall has its connections closed at once; at shutdown they have
	// ShutdownDrain.
	DrainTimeout time.Duration
	// PodConfigWait bounds how long the enrolment of a pod the
	// configuration does not know yet (the CNI ADD of a pod whose Workload
	// has not arrived from the controller) waits for it before it returns
	// with the pod left alone, to be captured once its Workload arrives.
	// The controller sends a pod's Workload once it is scheduled, so it is
	// usually there before the CNI ADD; the wait covers a controller that
	// lags, so that a pod of the mesh is captured before its containers
	// start instead of sending its first connections outside the mesh.
	// Zero means DefaultPodConfigWait, negative does not wait. Pods
	// replayed at start (Resync) never wait.
	PodConfigWait time.Duration
	// ShutdownDrain bounds how long the connections being proxied may
	// finish when ztunnel stops (SIGTERM) while its listeners are already
	// closed; zero means DefaultShutdownDrain, negative closes them at once.
	ShutdownDrain time.Duration
	// DialTimeout bounds upstream dials; zero means proxy.DefaultDialTimeout.
	DialTimeout time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// CNI, when set, chains the CNI plugin into the node's configuration
	// and keeps it chained while ztunnel runs (readiness waits for it); it
	// is unchained when ztunnel is uninstalled. A *cniinstall.Installer.
	CNI CNIInstaller
	// Shutdown decides, when Run's context ends, whether ztunnel is being
	// uninstalled; nil means never (local mode): the capture rules, the
	// state files and the CNI chain stay for the next ztunnel.
	Shutdown ShutdownDecider
	// ShutdownDecisionTimeout bounds Shutdown's decision; zero means
	// DefaultShutdownDecisionTimeout.
	ShutdownDecisionTimeout time.Duration
	// DiscoverNetnsDir, when set, is the folder of the node's named network
	// namespaces (the host's /var/run/netns): pods of this node that the
	// configuration lists but nobody reported (they started before ztunnel)
	// are looked for there by address and enrolled.
	DiscoverNetnsDir string
	// DiscoverExcludeNamespaces are never discovered (the CNI plugin's
	// excluded namespaces).
	DiscoverExcludeNamespaces []string
}

// CNIInstaller keeps the CNI plugin chained (see package cniinstall).
type CNIInstaller interface {
	// Run keeps the plugin installed and chained until ctx ends.
	Run(ctx context.Context) error
	// Ready returns nil while the plugin is chained, else the reason.
	Ready() error
	// Uninstall unchains the plugin and removes its binary.
	Uninstall() error
}

// Daemon is one ztunnel. Create it with New and run it with Run.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	store   *config.Store
	xds     *xds.Client
	certs   *identity.Manager
	metrics *metrics.Metrics
	enroll  *enroll.Server
	env     *proxy.Env

	resynced chan struct{}
	captured atomic.Pointer[[]capturedPod]

	mu       sync.Mutex // serialises enrolment decisions
	pods     map[string]*podState
	idRefs   map[identity.SPIFFEID]int
	draining map[io.Closer]struct{} // *proxy.Pod and *proxy.SOCKS5 draining
	drainWG  sync.WaitGroup
	runCtx   context.Context
	stopping bool

	httpMu    sync.Mutex
	httpAddrs map[string]net.Addr

	discoverMu sync.Mutex
	discovered map[string]netnsInfo // by netns path
	removed    map[string]time.Time // UIDs removed over the API, never discovered again
}

// capturedPod is what readiness needs to know of a captured pod.
type capturedPod struct{ key, id string }

// New validates cfg and builds a daemon; nothing runs until Run.
func New(cfg Config) (*Daemon, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("daemon: NodeName is required")
	}
	if cfg.Fetcher == nil {
		return nil, errors.New("daemon: Fetcher is required")
	}
	if cfg.SystemNamespace == "" {
		cfg.SystemNamespace = DefaultSystemNamespace
	}
	if cfg.ShutdownDrain == 0 {
		cfg.ShutdownDrain = DefaultShutdownDrain
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.PodConfigWait == 0 {
		cfg.PodConfigWait = DefaultPodConfigWait
	}
	if cfg.ResyncWait <= 0 {
		cfg.ResyncWait = DefaultResyncWait
	}
	if cfg.ShutdownDecisionTimeout <= 0 {
		cfg.ShutdownDecisionTimeout = DefaultShutdownDecisionTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	d := &Daemon{cfg: cfg, log: log, metrics: metrics.New(), resynced: make(chan struct{}),
		pods: map[string]*podState{}, idRefs: map[identity.SPIFFEID]int{}, draining: map[io.Closer]struct{}{}, httpAddrs: map[string]net.Addr{},
		discovered: map[string]netnsInfo{}, removed: map[string]time.Time{}}
	d.metrics.AccessLog = log.With("component", "access")
	d.store = config.NewStore(log.With("component", "config"))
	xc, err := xds.New(xds.Config{
		Conn:       cfg.XDSConn,
		Node:       &corev3.Node{Id: configv1alpha1.ZtunnelNodeID(cfg.NodeName)},
		Types:      d.store.Types(),
		StateFile:  cfg.XDSStateFile,
		MinBackoff: cfg.XDSMinBackoff,
		MaxBackoff: cfg.XDSMaxBackoff,
		Logger:     log.With("component", "xds"),
	})
	if err != nil {
		return nil, err
	}
	d.xds = xc
	mo := cfg.Certificates
	mo.Logger = log.With("component", "certs")
	d.certs, err = identity.NewManager(cfg.Fetcher, mo)
	if err != nil {
		return nil, err
	}
	eo := cfg.Enroll
	eo.Hooks = enroll.HookFuncs{Add: d.onAdd, Remove: d.onRemove}
	eo.Logger = log // the enrolment server adds its own component attribute
	d.enroll, err = enroll.NewServer(eo)
	if err != nil {
		return nil, err
	}
	d.env = &proxy.Env{Config: d.store.Snapshot, Certs: d.certs, Metrics: d.metrics,
		SystemNamespace: cfg.SystemNamespace, DialTimeout: cfg.DialTimeout, Logger: log.With("component", "proxy"),
		Nameservers: cfg.SOCKS5Nameservers}
	return d, nil
}

// Store is the configuration store.
func (d *Daemon) Store() *config.Store { return d.store }

// Metrics are the daemon's metrics.
func (d *Daemon) Metrics() *metrics.Metrics { return d.metrics }

// Certs is the certificate manager.
func (d *Daemon) Certs() *identity.Manager { return d.certs }

// Enroll is the enrolment server.
func (d *Daemon) Enroll() *enroll.Server { return d.enroll }

// XDS is the xDS client.
func (d *Daemon) XDS() *xds.Client { return d.xds }

// HTTPAddr returns the bound address of a listener ("admin", "metrics",
// "ready", "socks5") once Run has opened it.
func (d *Daemon) HTTPAddr(name string) net.Addr {
	d.httpMu.Lock()
	defer d.httpMu.Unlock()
	return d.httpAddrs[name]
}

// Run serves until ctx ends, then asks Config.Shutdown whether this is an
// uninstall. If it is not (or there is no Shutdown), it stops serving every
// pod, leaving their capture rules, the state files and the CNI chain in
// place for the next ztunnel; if it is, it unchains the CNI plugin, releases
// every pod (removing its rules) and removes the state files. It returns
// nil, or an error if a listener could not be opened.
func (d *Daemon) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.mu.Lock()
	d.runCtx = ctx
	d.mu.Unlock()

	var servers []*http.Server
	for _, s := range []struct{ name, addr string }{{"admin", d.cfg.AdminAddr}, {"metrics", d.cfg.MetricsAddr}, {"ready", d.cfg.ReadyAddr}} {
		if s.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			for _, srv := range servers {
				_ = srv.Close()
			}
			return fmt.Errorf("%s listener: %w", s.name, err)
		}
		d.httpMu.Lock()
		d.httpAddrs[s.name] = ln.Addr()
		d.httpMu.Unlock()
		srv := &http.Server{Handler: d.httpHandler(s.name), ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, srv)
		go func() { _ = srv.Serve(ln) }()
	}
	closeServers := func() {
		for _, srv := range servers {
			_ = srv.Close()
		}
	}
	var socksLn net.Listener
	if d.cfg.SOCKS5Addr != "" && d.cfg.SOCKS5Workload != "" {
		var err error
		if socksLn, err = net.Listen("tcp", d.cfg.SOCKS5Addr); err != nil {
			closeServers()
			return fmt.Errorf("socks5 listener: %w", err)
		}
		d.httpMu.Lock()
		d.httpAddrs["socks5"] = socksLn.Addr()
		d.httpMu.Unlock()
	}
	enrollLn, err := d.enroll.Listen()
	if err != nil {
		closeServers()
		if socksLn != nil {
			_ = socksLn.Close()
		}
		return fmt.Errorf("enrolment socket: %w", err)
	}

	var wg sync.WaitGroup
	run := func(f func()) {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	run(func() {
		if err := d.certs.Run(ctx); err != nil {
			d.log.Error("certificate manager stopped", "err", err)
		}
	})
	run(func() { _ = d.xds.Run(ctx) })
	run(func() {
		if err := d.enroll.Serve(ctx, enrollLn); err != nil && ctx.Err() == nil {
			d.log.Error("enrolment server stopped", "err", err)
		}
	})
	run(func() { d.loop(ctx) })
	// The CNI installer is waited for on its own at stop (see below).
	var cniWG sync.WaitGroup
	if d.cfg.CNI != nil {
		cniWG.Add(1)
		go func() {
			defer cniWG.Done()
			if err := d.cfg.CNI.Run(ctx); err != nil {
				d.log.Error("CNI plugin installer stopped", "err", err)
			}
		}()
	}
	if socksLn != nil {
		s := proxy.NewSOCKS5(d.env, d.cfg.SOCKS5Workload, nil)
		run(func() {
			if err := s.Serve(ctx, socksLn); err != nil {
				d.log.Error("socks5 listener failed", "err", err)
			}
		})
	}
	d.log.Info("ztunnel started", "node", d.cfg.NodeName)

	<-ctx.Done()
	closeServers()
	// At uninstall the CNI plugin leaves the node's chain first, before
	// anything that takes the daemon's lock or waits for connections: a
	// chained plugin without a ztunnel fails every new pod of the node, so
	// it must be gone even if the rest of the stop hangs and the kubelet
	// kills ztunnel at the end of its grace period.
	cniWG.Wait()
	uninstall := d.uninstalling()
	if uninstall {
		d.uninstallCNI()
	}
	wg.Wait()
	if uninstall {
		d.uninstall()
	} else {
		d.stopAll()
	}
	d.drainWG.Wait()
	d.log.Info("ztunnel stopped", "node", d.cfg.NodeName)
	return nil
}

// loop waits for the configuration, resyncs the enrolled pods, then
// re-evaluates them on every configuration change.
func (d *Daemon) loop(ctx context.Context) {
	select {
	case <-d.xds.Ready():
	case <-time.After(d.cfg.ResyncWait):
		d.log.Warn("no configuration yet; resyncing pods anyway", "waited", d.cfg.ResyncWait)
	case <-ctx.Done():
		return
	}
	if err := d.enroll.Resync(context.WithValue(ctx, resyncKey{}, true)); err != nil {
		d.log.Error("resync of enrolled pods failed", "err", err)
	}
	close(d.resynced)
	d.reconcileAll(ctx)
	d.discover(ctx)
	tick := time.NewTicker(retryInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.store.Changed():
			d.reconcileAll(ctx)
			d.discover(ctx)
		case <-tick.C:
			if d.hasFailures() {
				d.reconcileAll(ctx)
			}
			d.discover(ctx)
		}
	}
}

// Ready returns nil once the CNI plugin is chained (when Config.CNI is
// set), the configuration has been applied (from the controller or disk),
// the persisted pods were resynced, and every captured pod has a valid
// certificate; otherwise the reason.
func (d *Daemon) Ready() error {
	if d.cfg.CNI != nil {
		if err := d.cfg.CNI.Ready(); err != nil {
			return fmt.Errorf("CNI plugin not chained: %w", err)
		}
	}
	select {
	case <-d.xds.Ready():
	default:
		return errors.New("configuration not received yet")
	}
	select {
	case <-d.resynced:
	default:
		return errors.New("enrolled pods not resynced yet")
	}
	valid := map[string]bool{}
	for _, c := range d.certs.Snapshot().Identities {
		valid[c.ID] = c.Valid
	}
	if cp := d.captured.Load(); cp != nil {
		for _, p := range *cp {
			if !valid[p.id] {
				return fmt.Errorf("no valid certificate for %s (pod %s)", p.id, p.key)
			}
		}
	}
	return nil
}

func prefixes(as []netip.Addr) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(as))
	for _, a := range as {
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out
}
