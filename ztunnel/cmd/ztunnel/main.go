package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/pkg/caclient"
	"github.com/ambit-mesh/ambit/pkg/goruntime"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/version"
	cnipkg "github.com/ambit-mesh/ambit/ztunnel/cni"
	"github.com/ambit-mesh/ambit/ztunnel/cniinstall"
	"github.com/ambit-mesh/ambit/ztunnel/daemon"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ztunnel:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("ztunnel", flag.ContinueOnError)
	node := fs.String("node-name", os.Getenv("NODE_NAME"), "Kubernetes node this ztunnel serves (default $NODE_NAME)")
	xdsAddr := fs.String("xds-address", "ambit-controller.ambit-system.svc:15010", "controller xDS server: TLS verified with -ca-root-file for -ca-server-name, authenticated with -ca-token-file, as the CA")
	xdsInsecure := fs.Bool("xds-insecure", false, "plaintext xDS without a token, for a controller in local mode (which serves it so, on loopback by default)")
	xdsState := fs.String("xds-state-file", "/var/run/ambit/xds-state.pb", "last good configuration, read at start")
	caAddr := fs.String("ca-address", "ambit-controller.ambit-system.svc:15012", "mesh CA (gRPC over TLS)")
	caRoot := fs.String("ca-root-file", "/var/run/ambit/ca/root-cert.pem", "PEM bundle that verifies the CA's serving certificate")
	caToken := fs.String("ca-token-file", caclient.DefaultTokenFile, "service-account token presented to the CA")
	caName := fs.String("ca-server-name", caclient.DefaultServerName, "name the CA's serving certificate carries")
	localCA := fs.String("local-ca-trust-domain", "", "development only: sign certificates with an in-process CA of this trust domain instead of the mesh CA")
	socket := fs.String("enroll-socket", enroll.DefaultSocketPath, "enrolment API unix socket")
	podState := fs.String("enroll-state-file", enroll.DefaultStateFile, "persisted set of reported pods")
	sysNS := fs.String("system-namespace", daemon.DefaultSystemNamespace, "namespace of mesh-wide policies")
	admin := fs.String("admin-address", daemon.DefaultAdminAddr, "admin listener (config dump); empty disables")
	metricsAddr := fs.String("metrics-address", daemon.DefaultMetricsAddr, "Prometheus listener; empty disables")
	ready := fs.String("ready-address", daemon.DefaultReadyAddr, "readiness listener; empty disables")
	socksAddr := fs.String("socks5-address", daemon.DefaultSOCKS5Addr, "explicit-mode SOCKS5 listener, used with -socks5-workload")
	socksWorkload := fs.String("socks5-workload", "", "workload (<namespace>/<pod>) whose identity SOCKS5 clients use; empty disables SOCKS5")
	socksNS := fs.String("socks5-nameservers", "auto", "the cluster's DNS servers (comma-separated IP or IP:port; DNS over TCP) that resolve SOCKS5 destination names which are not services of the mesh, asked from inside the pod with the pod's search list, before the pod's own dnsConfig nameservers, unless its dnsPolicy is None; auto: the nameservers of "+daemon.DefaultResolvConf+" (in the DaemonSet the cluster DNS); none: only pods' own nameservers are asked")
	socksPerPod := fs.Bool("socks5-per-pod", true, "open a SOCKS5 listener on "+daemon.PodSOCKS5Addr+" (and "+daemon.PodSOCKS5Addr6+") inside every captured pod")
	dnsCapture := fs.Bool("dns-capture", false, "capture every captured pod's DNS queries over UDP into ztunnel ("+daemon.PodDNSAddr+" in the pod), which answers the hostnames of the mesh's services from its configuration and forwards other queries to the pod's nameservers (-socks5-nameservers, then the pod's dnsConfig ones)")
	validity := fs.Duration("cert-validity", identity.DefaultCertLifetime, "workload certificate lifetime asked of the CA")
	originalSource := fs.Bool("original-source", true, "connect to a pod's application from the client's address (the tunnel's source, or the plaintext connection's), as it would see it without the mesh; false: from the pod's own address")
	podDrain := fs.Duration("pod-drain", daemon.DefaultDrainTimeout, "how long the connections ztunnel proxies for a running pod may finish once the pod leaves the mesh (new connections bypass ztunnel at once) or changes identity; negative closes them at once")
	podConfigWait := fs.Duration("pod-config-wait", daemon.DefaultPodConfigWait, "how long a new pod's enrolment (the CNI ADD) waits for the controller's configuration to know the pod, so that a pod of the mesh is captured before its containers start; after it the pod starts uncaptured and is captured once its Workload arrives; negative: no wait")
	shutdownDrain := fs.Duration("shutdown-drain", daemon.DefaultShutdownDrain, "after SIGTERM, how long open connections may finish (listeners close at once); negative closes them at once")
	cniBin := fs.String("cni-bin-dir", "", "CNI bin folder to install ambit-cni into (the host's /opt/cni/bin as mounted); empty, with -cni-conf-dir, installs nothing")
	cniConf := fs.String("cni-conf-dir", "", "CNI conf folder whose first config gets ambit-cni chained (the host's /etc/cni/net.d as mounted)")
	cniPlugin := fs.String("cni-plugin", "", "ambit-cni executable to install (default: ambit-cni next to this executable)")
	cniSocket := fs.String("cni-socket-path", enroll.DefaultSocketPath, "enrolment socket the plugin entry names (as the host sees it)")
	cniLog := fs.String("cni-log-file", cniinstall.DefaultLogFile, "log file the plugin entry names; empty: the plugin does not log")
	cniLogLevel := fs.String("cni-log-level", "", "plugin log level (debug, info, warn, error); empty: the plugin's default (info)")
	cniFailOpen := fs.Bool("cni-fail-open", false, "let pods start outside the mesh when ztunnel is unreachable (default: their network setup fails)")
	cniExclude := fs.String("cni-exclude-namespaces", "", "comma-separated namespaces the plugin passes through; empty: the plugin's default (kube-system, ambit-system)")
	cniTimeout := fs.String("cni-timeout", "", "bound on one plugin call to ztunnel (Go duration); empty: the plugin's default (10s)")
	daemonSet := fs.String("daemonset", "", "<namespace>/<name> of ztunnel's DaemonSet: on SIGTERM, uninstall (release every pod, unchain the CNI plugin, remove the state) unless it still exists; empty: never uninstall (local mode)")
	discoverDir := fs.String("discover-netns-dir", "auto", "folder of the node's named network namespaces where pods that started before ztunnel are looked for; auto: /var/run/netns with -daemonset, none otherwise; empty: none")
	hostProc := fs.String("host-proc", "", "where the host's /proc is mounted when ztunnel has a PID namespace of its own: netns paths under /proc/ (runtimes without namespace files, such as cri-dockerd) are opened there, and pods that started before ztunnel are also looked for there; empty: /proc paths are opened as they are")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	// Runtime defaults for a node proxy (see docs/reference/ztunnel.md,
	// "Performance", for the measurements behind them): one processor,
	// GOGC 50, the kernel's shortest time slice.
	rt := goruntime.Register(fs, goruntime.Defaults{MaxProcs: 1, GCPercent: 50, LimitExample: "24MiB", SchedSlice: goruntime.MinSchedSlice}, os.Getenv)
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Println(version.String("ztunnel"))
		return nil
	}
	rts, err := rt.Settings()
	if err != nil {
		return err
	}
	rts.Apply()
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	slog.SetDefault(log)
	if err := rts.ApplySchedSlice(); err != nil {
		log.Warn("the scheduler's time slice is the kernel's default", "err", err.Error())
	}
	if *node == "" {
		return errors.New("-node-name (or $NODE_NAME) is required")
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *localCA != "" && !*xdsInsecure {
		return errors.New("-local-ca-trust-domain has no mesh root to verify the controller's xDS server with: add -xds-insecure (a controller in local mode serves plaintext xDS)")
	}
	var cni daemon.CNIInstaller
	exclude := cnipkg.DefaultExcludeNamespaces
	if *cniBin != "" || *cniConf != "" {
		if *cniBin == "" || *cniConf == "" {
			return errors.New("-cni-bin-dir and -cni-conf-dir go together: set both to install the CNI plugin, or neither")
		}
		plugin := *cniPlugin
		if plugin == "" {
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("-cni-plugin not set and the own executable's path is unknown: %w", err)
			}
			plugin = filepath.Join(filepath.Dir(exe), cniinstall.PluginType)
		}
		pc := cniinstall.PluginConfig{SocketPath: *cniSocket, LogFile: *cniLog, LogLevel: *cniLogLevel,
			FailOpen: *cniFailOpen, Timeout: *cniTimeout}
		if *cniExclude != "" {
			pc.ExcludeNamespaces = []string{}
			for _, n := range strings.Split(*cniExclude, ",") {
				if n = strings.TrimSpace(n); n != "" {
					pc.ExcludeNamespaces = append(pc.ExcludeNamespaces, n)
				}
			}
			exclude = pc.ExcludeNamespaces
		}
		inst, err := cniinstall.New(cniinstall.Options{BinDir: *cniBin, ConfDir: *cniConf, PluginBinary: plugin, Plugin: pc, Logger: log})
		if err != nil {
			if *cniPlugin == "" {
				return fmt.Errorf("%w (the default -cni-plugin is ambit-cni next to ztunnel's executable)", err)
			}
			return err
		}
		cni = inst
	} else if *cniPlugin != "" {
		return errors.New("-cni-plugin needs -cni-bin-dir and -cni-conf-dir")
	}
	nameservers, err := daemon.NameserversFromSpec(*socksNS, daemon.DefaultResolvConf)
	if err != nil {
		return fmt.Errorf("-socks5-nameservers: %w", err)
	}
	var shutdown daemon.ShutdownDecider
	if *daemonSet != "" {
		check, err := daemon.InClusterDaemonSetCheck(*daemonSet)
		if err != nil {
			return fmt.Errorf("-daemonset: %w", err)
		}
		shutdown = check
	}
	if *discoverDir == "auto" {
		*discoverDir = ""
		if *daemonSet != "" {
			*discoverDir = "/var/run/netns"
		}
	}
	if *discoverDir != "" && !filepath.IsAbs(*discoverDir) {
		return fmt.Errorf("-discover-netns-dir %q must be an absolute path", *discoverDir)
	}
	if *hostProc != "" {
		if !filepath.IsAbs(*hostProc) {
			return fmt.Errorf("-host-proc %q must be an absolute path", *hostProc)
		}
		var st unix.Statfs_t
		if err := unix.Statfs(*hostProc, &st); err != nil {
			return fmt.Errorf("-host-proc: %w", err)
		}
		if st.Type != unix.PROC_SUPER_MAGIC {
			return fmt.Errorf("-host-proc %q is not a proc filesystem (type %#x): mount the host's /proc there", *hostProc, st.Type)
		}
	}

	fetcher, closeFetcher, err := caclient.NewFetcher(caclient.FetcherConfig{
		LocalTrustDomain: *localCA,
		Address:          *caAddr, ServerName: *caName, RootsFile: *caRoot, TokenFile: *caToken,
	})
	if err != nil {
		return err
	}
	defer closeFetcher()
	conn, err := caclient.DialXDS(caclient.XDSConfig{Address: *xdsAddr, Insecure: *xdsInsecure,
		ServerName: *caName, RootsFile: *caRoot, TokenFile: *caToken})
	if err != nil {
		return err
	}
	defer conn.Close()

	d, err := daemon.New(daemon.Config{
		NodeName:        *node,
		SystemNamespace: *sysNS,
		XDSConn:         conn,
		XDSStateFile:    *xdsState,
		Fetcher:         fetcher,
		Certificates:    identity.ManagerOptions{Validity: *validity},
		Enroll:          enroll.Options{SocketPath: *socket, StateFile: *podState, HostProc: *hostProc},
		AdminAddr:       *admin,
		MetricsAddr:     *metricsAddr,
		ReadyAddr:       *ready,
		SOCKS5Addr:      *socksAddr,
		SOCKS5Workload:  *socksWorkload,
		ShutdownDrain:   *shutdownDrain,
		DrainTimeout:    *podDrain,
		PodConfigWait:   *podConfigWait,
		Logger:          log,
		CNI:             cni,
		Shutdown:        shutdown,

		DisablePodSOCKS5:  !*socksPerPod,
		DNSCapture:        *dnsCapture,
		SOCKS5Nameservers: nameservers,
		NoOriginalSource:  !*originalSource,

		DiscoverNetnsDir:          *discoverDir,
		DiscoverExcludeNamespaces: exclude,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return d.Run(ctx)
}
