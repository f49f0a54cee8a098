package cluster

import (
	"archive/tar"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/integration/images"
	"github.com/ambit-mesh/ambit/integration/internal/tier"
)

// Options configure a cluster. The zero value is the default cluster.
type Options struct {
	// StateDir holds everything the cluster keeps (default DefaultStateDir).
	StateDir string
	// RepoRoot is the Ambit checkout whose `make tools` built the binaries
	// (default: the folder holding go.work above the working directory).
	RepoRoot string
	// PauseImage is an OCI image archive whose image is the pod sandbox
	// (pause) image, e.g. bin/images/pause.tar. Empty: the cluster's own
	// tinyapp image (TestImage), which pauses when run without arguments.
	PauseImage string
	// Log receives one line per step; nil discards them.
	Log io.Writer
}

// Cluster is the one-machine Kubernetes of one state folder.
type Cluster struct {
	opts Options
	p    paths
	bins binaries
	logw io.Writer
	// started is set by an Up that started the cluster (rather than
	// finding it running).
	started bool
}

// binaries are the programs `make tools` built.
type binaries struct {
	etcd, apiserver, controllerManager, scheduler, kubelet, kubeProxy, kubectl string
	containerd, ctr, containerdDir, runc, cniDir, coredns                      string
}

// New returns the cluster of opts; it starts nothing.
func New(opts Options) (*Cluster, error) {
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir
	}
	if !filepath.IsAbs(opts.StateDir) || filepath.Clean(opts.StateDir) == "/" {
		return nil, fmt.Errorf("state folder %q: must be an absolute path other than /", opts.StateDir)
	}
	opts.StateDir = filepath.Clean(opts.StateDir)
	if opts.RepoRoot == "" {
		root, err := tier.RepoRoot()
		if err != nil {
			return nil, fmt.Errorf("finding the Ambit checkout (set RepoRoot): %w", err)
		}
		opts.RepoRoot = root
	}
	if opts.PauseImage != "" {
		abs, err := filepath.Abs(opts.PauseImage)
		if err != nil {
			return nil, err
		}
		opts.PauseImage = abs
	}
	c := &Cluster{opts: opts, p: newPaths(opts.StateDir), logw: opts.Log}
	if c.logw == nil {
		c.logw = io.Discard
	}
	return c, nil
}

// Up starts the cluster of opts (see Cluster.Up).
func Up(ctx context.Context, opts Options) (*Cluster, error) {
	c, err := New(opts)
	if err != nil {
		return nil, err
	}
	return c, c.Up(ctx)
}

// Started reports whether Up started the cluster, rather than finding it
// running: a test that did not start it should leave it up for its owner.
func (c *Cluster) Started() bool { return c.started }

// Kubeconfig is the path of the administrator's kubeconfig.
func (c *Cluster) Kubeconfig() string { return c.p.Kubeconfig }

// StateDir is the cluster's state folder.
func (c *Cluster) StateDir() string { return c.p.State }

// RESTConfig returns the administrator's client configuration.
func (c *Cluster) RESTConfig() (*rest.Config, error) {
	return clientcmd.BuildConfigFromFlags("", c.p.Kubeconfig)
}

// Kubectl returns the path of the kubectl binary `make tools` built.
func (c *Cluster) Kubectl() (string, error) {
	if err := c.findBinaries(); err != nil {
		return "", err
	}
	return c.bins.kubectl, nil
}

func (c *Cluster) logf(format string, args ...any) {
	fmt.Fprintf(c.logw, "cluster: "+format+"\n", args...)
}

func (c *Cluster) findBinaries() error {
	if c.bins.kubectl != "" {
		return nil
	}
	dirs := map[string]string{}
	for _, g := range []string{"kube", "etcd", "containerd", "runc", "cni", "coredns"} {
		out, err := exec.Command(filepath.Join(c.opts.RepoRoot, "hack", "tools.sh"), "dir", g).Output()
		if err != nil {
			return fmt.Errorf("hack/tools.sh dir %s: %w", g, err)
		}
		dirs[g] = strings.TrimSpace(string(out))
	}
	b := binaries{
		etcd:              filepath.Join(dirs["etcd"], "etcd"),
		apiserver:         filepath.Join(dirs["kube"], "kube-apiserver"),
		controllerManager: filepath.Join(dirs["kube"], "kube-controller-manager"),
		scheduler:         filepath.Join(dirs["kube"], "kube-scheduler"),
		kubelet:           filepath.Join(dirs["kube"], "kubelet"),
		kubeProxy:         filepath.Join(dirs["kube"], "kube-proxy"),
		kubectl:           filepath.Join(dirs["kube"], "kubectl"),
		containerdDir:     dirs["containerd"],
		containerd:        filepath.Join(dirs["containerd"], "containerd"),
		ctr:               filepath.Join(dirs["containerd"], "ctr"),
		runc:              filepath.Join(dirs["runc"], "runc"),
		cniDir:            dirs["cni"],
		coredns:           filepath.Join(dirs["coredns"], "coredns"),
	}
	need := []string{b.etcd, b.apiserver, b.controllerManager, b.scheduler, b.kubelet, b.kubeProxy,
		b.kubectl, b.containerd, b.ctr, filepath.Join(b.containerdDir, "containerd-shim-runc-v2"), b.runc, b.coredns}
	for _, p := range CNIPlugins {
		need = append(need, filepath.Join(b.cniDir, p))
	}
	var missing []string
	for _, p := range need {
		if !exists(p) {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("tools missing (run make tools): %s", shortList(missing))
	}
	c.bins = b
	return nil
}

// lock takes the state folder's lock: one Up, Down or Import at a time.
func (c *Cluster) lock() (func(), error) {
	if err := os.MkdirAll(c.p.State, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(c.p.Lock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		_ = f.Close()
		return nil, err
	}
	return func() { _ = f.Close() }, nil
}

func requireRoot() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the cluster needs root (running as uid %d)", os.Geteuid())
	}
	return nil
}

// component is one host process of the cluster.
type component struct {
	name   string
	bin    string
	args   []string
	health string // URL answering 200 when the component is up
}

// components returns the processes in start order.
func (c *Cluster) components() []component {
	p, b := c.p, c.bins
	pki := func(f string) string { return filepath.Join(p.PKI, f) }
	cfg := func(f string) string { return filepath.Join(p.Config, f) }
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", EtcdPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", EtcdPeerPort)
	return []component{
		{name: "etcd", bin: b.etcd, health: etcdURL + "/health", args: []string{
			"--name=ambit", "--data-dir=" + p.Etcd,
			"--listen-client-urls=" + etcdURL, "--advertise-client-urls=" + etcdURL,
			"--listen-peer-urls=" + peerURL, "--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=ambit=" + peerURL, "--unsafe-no-fsync", "--log-level=warn",
		}},
		{name: "kube-apiserver", bin: b.apiserver, health: fmt.Sprintf("https://%s:%d/readyz", NodeIP, APIServerPort), args: []string{
			"--etcd-servers=" + etcdURL,
			"--bind-address=" + NodeIP, fmt.Sprintf("--secure-port=%d", APIServerPort), "--advertise-address=" + NodeIP,
			"--service-cluster-ip-range=" + ServiceCIDR,
			"--client-ca-file=" + pki("ca.crt"),
			"--tls-cert-file=" + pki("apiserver.crt"), "--tls-private-key-file=" + pki("apiserver.key"),
			"--kubelet-client-certificate=" + pki("apiserver-kubelet-client.crt"),
			"--kubelet-client-key=" + pki("apiserver-kubelet-client.key"),
			"--kubelet-certificate-authority=" + pki("ca.crt"),
			"--kubelet-preferred-address-types=InternalIP",
			"--service-account-issuer=https://kubernetes.default.svc." + ClusterDomain,
			"--service-account-key-file=" + pki("sa.pub"),
			"--service-account-signing-key-file=" + pki("sa.key"),
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true", "--profiling=false",
		}},
		{name: "containerd", bin: b.containerd, args: []string{"--config=" + cfg("containerd.toml")}},
		{name: "kube-controller-manager", bin: b.controllerManager, health: "https://127.0.0.1:10257/healthz", args: []string{
			"--kubeconfig=" + cfg("controller-manager.kubeconfig"),
			"--authentication-kubeconfig=" + cfg("controller-manager.kubeconfig"),
			"--authorization-kubeconfig=" + cfg("controller-manager.kubeconfig"),
			"--bind-address=127.0.0.1", "--secure-port=10257", "--leader-elect=false",
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + pki("sa.key"),
			"--root-ca-file=" + pki("ca.crt"),
			"--cluster-signing-cert-file=" + pki("ca.crt"), "--cluster-signing-key-file=" + pki("ca.key"),
			"--service-cluster-ip-range=" + ServiceCIDR, "--cluster-name=ambit-cluster", "--profiling=false",
		}},
		{name: "kube-scheduler", bin: b.scheduler, health: "https://127.0.0.1:10259/healthz", args: []string{
			"--kubeconfig=" + cfg("scheduler.kubeconfig"),
			"--authentication-kubeconfig=" + cfg("scheduler.kubeconfig"),
			"--authorization-kubeconfig=" + cfg("scheduler.kubeconfig"),
			"--bind-address=127.0.0.1", "--secure-port=10259", "--leader-elect=false", "--profiling=false",
		}},
		{name: "kubelet", bin: b.kubelet, health: "http://127.0.0.1:10248/healthz", args: []string{
			"--config=" + cfg("kubelet.yaml"), "--kubeconfig=" + cfg("kubelet.kubeconfig"),
			"--root-dir=" + p.Kubelet, "--hostname-override=" + NodeName, "--node-ip=" + NodeIP,
		}},
		{name: "kube-proxy", bin: b.kubeProxy, health: "http://127.0.0.1:10256/livez", args: []string{
			"--config=" + cfg("kube-proxy.yaml"),
		}},
	}
}

// env is the environment of every component: containerd finds its shim on
// PATH, kube-proxy runs nft.
func (c *Cluster) env() []string {
	return []string{
		"PATH=" + c.bins.containerdDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + c.p.State,
		"TMPDIR=" + c.p.ContainerdTmp,
	}
}

func (c *Cluster) pidFile(name string) string { return filepath.Join(c.p.Pids, name+".pid") }
func (c *Cluster) logFile(name string) string { return filepath.Join(c.p.Logs, name+".log") }

// running reports whether every component's recorded process is alive.
func (c *Cluster) running() (all, any bool) {
	all = true
	for _, comp := range c.components() {
		id, err := readPidFile(c.pidFile(comp.name))
		if err == nil && id.alive() {
			any = true
		} else {
			all = false
		}
	}
	return all, any
}

// Up starts the cluster and waits until the node is Ready, CoreDNS answers
// and the default ServiceAccount exists. On a running, healthy cluster it
// only checks that; after a crash (some component gone) it sweeps what is
// left first and starts anew.
func (c *Cluster) Up(ctx context.Context) error {
	if err := requireRoot(); err != nil {
		return err
	}
	if err := c.findBinaries(); err != nil {
		return err
	}
	if c.opts.PauseImage != "" {
		if _, err := ArchiveImageName(c.opts.PauseImage); err != nil {
			return fmt.Errorf("pause image: %w", err)
		}
	}
	unlock, err := c.lock()
	if err != nil {
		return err
	}
	defer unlock()
	start := time.Now()
	if all, _ := c.running(); all && nodeAddrUsable() && c.checkHealth(ctx) == nil {
		// a running cluster gets a short grace to be ready (it may have
		// just started); past that it is swept and started anew.
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.waitReady(rctx)
		cancel()
		if err == nil {
			c.logf("already up (checked in %s); KUBECONFIG=%s", since(start), c.p.Kubeconfig)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.logf("running but not ready (%v): starting anew", err)
	}
	if _, any := c.running(); any || exists(c.p.Host) {
		c.logf("sweeping a previous run")
	}
	if err := c.down(ctx, true); err != nil {
		return fmt.Errorf("sweeping a previous run: %w (remove the cause, then run make cluster-down or up again)", err)
	}
	if err := c.start(ctx); err != nil {
		return fmt.Errorf("%w (component logs: %s)", err, c.p.Logs)
	}
	c.started = true
	c.logf("up in %s; KUBECONFIG=%s", since(start), c.p.Kubeconfig)
	return nil
}

func since(t time.Time) string { return time.Since(t).Round(100 * time.Millisecond).String() }

func (c *Cluster) start(ctx context.Context) error {
	p := c.p
	rec, err := recordHost()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(p.State, 0o755); err != nil {
		return err
	}
	if err := rec.save(p.Host); err != nil {
		return err
	}
	// logs of the previous run make way for this one's.
	if err := os.RemoveAll(p.Logs); err != nil {
		return err
	}
	for _, d := range []string{p.PKI, p.Config, p.Logs, p.Pids, p.Etcd, p.Kubelet, p.PodLogs, p.CNI,
		p.ContainerdRoot, p.ContainerdState, p.ContainerdTmp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(p.Etcd, 0o700); err != nil {
		return err
	}
	if err := writePKI(p.PKI, NodeName); err != nil {
		return err
	}
	for _, k := range []struct{ file, cert, user string }{
		{p.Kubeconfig, "admin", "admin"},
		{filepath.Join(p.Config, "controller-manager.kubeconfig"), "controller-manager", "system:kube-controller-manager"},
		{filepath.Join(p.Config, "scheduler.kubeconfig"), "scheduler", "system:kube-scheduler"},
		{filepath.Join(p.Config, "kubelet.kubeconfig"), "kubelet-client", "system:node:" + NodeName},
		{filepath.Join(p.Config, "kube-proxy.kubeconfig"), "kube-proxy", "system:kube-proxy"},
	} {
		b, err := kubeconfig(p.PKI, k.cert, k.user)
		if err != nil {
			return err
		}
		if err := writeFileIfChanged(k.file, b, 0o600); err != nil {
			return err
		}
	}

	// images the node needs before its first pod
	imgs, err := c.nodeImages()
	if err != nil {
		return err
	}
	pauseRef, err := ArchiveImageName(imgs[0])
	if err != nil {
		return fmt.Errorf("pause image: %w", err)
	}

	data := tmplData{P: p, Node: NodeName, NodeIP: NodeIP, PodCIDR: PodCIDR, ServiceCIDR: ServiceCIDR,
		DNSIP: DNSServiceIP, Domain: ClusterDomain, Runc: c.bins.runc, PauseImage: pauseRef,
		CNIConfDir: CNIConfDir, CNIBinDir: CNIBinDir, CoreDNSImg: CoreDNSImage}
	for _, f := range []struct{ name, tmpl string }{
		{"containerd.toml", containerdTOML}, {"kubelet.yaml", kubeletYAML},
		{"kube-proxy.yaml", kubeProxyYAML}, {"coredns.yaml", coreDNSManifest},
	} {
		b, err := render(f.name, f.tmpl, data)
		if err != nil {
			return err
		}
		if err := writeFileIfChanged(filepath.Join(p.Config, f.name), b, 0o644); err != nil {
			return err
		}
	}

	if err := setupNodeLink(); err != nil {
		return err
	}
	if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
		return err
	}
	if rec.BridgeNFCall == "" {
		return fmt.Errorf("%s is missing: load br_netfilter (modprobe br_netfilter); pods reaching a Service on the same bridge need it", bridgeNFCallPath)
	}
	if err := os.WriteFile(bridgeNFCallPath, []byte("1\n"), 0o644); err != nil {
		return err
	}
	if err := installCNI(rec, c.bins.cniDir, filepath.Join(p.CNI, "networks"), p.Host); err != nil {
		return err
	}
	if err := ensureSharedNetns(rec, p.Host); err != nil {
		return err
	}
	// all created host folders exist from here on, so a crash leaves a
	// record of them.
	for _, d := range hostDirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}

	comps := map[string]component{}
	for _, comp := range c.components() {
		comps[comp.name] = comp
	}
	t := time.Now()
	if err := c.startAndWait(ctx, comps["etcd"]); err != nil {
		return err
	}
	if _, err := c.startComponent(comps["kube-apiserver"]); err != nil {
		return err
	}
	if err := c.startAndWait(ctx, comps["containerd"]); err != nil {
		return err
	}
	if err := c.importLocked(ctx, imgs...); err != nil {
		return err
	}
	if err := c.waitHealth(ctx, comps["kube-apiserver"]); err != nil {
		return err
	}
	c.logf("etcd, kube-apiserver and containerd up in %s", since(t))
	t = time.Now()
	for _, name := range []string{"kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"} {
		if _, err := c.startComponent(comps[name]); err != nil {
			return err
		}
	}
	for _, name := range []string{"kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"} {
		if err := c.waitHealth(ctx, comps[name]); err != nil {
			return err
		}
	}
	c.logf("controller-manager, scheduler, kubelet and kube-proxy up in %s", since(t))
	t = time.Now()
	if err := c.applyCoreDNS(ctx); err != nil {
		return err
	}
	if err := c.waitReady(ctx); err != nil {
		return err
	}
	c.logf("node Ready, CoreDNS ready, default ServiceAccount present in %s", since(t))
	return nil
}

func (c *Cluster) startComponent(comp component) (procID, error) {
	return startProcess(comp.bin, comp.args, c.env(), c.logFile(comp.name), c.pidFile(comp.name))
}

func (c *Cluster) startAndWait(ctx context.Context, comp component) error {
	if _, err := c.startComponent(comp); err != nil {
		return err
	}
	return c.waitHealth(ctx, comp)
}

// waitHealth waits until comp answers its health URL (containerd: its
// socket answers) while its process lives.
func (c *Cluster) waitHealth(ctx context.Context, comp component) error {
	id, err := readPidFile(c.pidFile(comp.name))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last error
	for {
		if !id.alive() {
			return fmt.Errorf("%s exited; last lines of %s:\n%s", comp.name, c.logFile(comp.name), tail(c.logFile(comp.name), 15))
		}
		if last = c.probe(ctx, comp); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy: %v; last lines of %s:\n%s", comp.name, last, c.logFile(comp.name), tail(c.logFile(comp.name), 15))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) probe(ctx context.Context, comp component) error {
	if comp.name == "containerd" {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, c.bins.ctr, "--address", c.p.ContainerdSock, "version").CombinedOutput()
		if err != nil {
			return fmt.Errorf("ctr version: %v: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	hc, err := c.httpClient()
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, comp.health, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", comp.health, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// httpClient presents the admin certificate and trusts the cluster CA for
// the apiserver; the loopback health ports of controller-manager and
// scheduler serve self-signed certificates, which it accepts for 127.0.0.1.
func (c *Cluster) httpClient() (*http.Client, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(c.p.PKI, "admin.crt"), filepath.Join(c.p.PKI, "admin.key"))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(c.p.PKI, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}
	loopback := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // self-signed health ports on 127.0.0.1
	tr := &http.Transport{TLSClientConfig: cfg}
	trLoop := &http.Transport{TLSClientConfig: loopback}
	return &http.Client{Timeout: 5 * time.Second, Transport: roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Hostname() == "127.0.0.1" {
			return trLoop.RoundTrip(r)
		}
		return tr.RoundTrip(r)
	})}, nil
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// checkHealth probes every component once.
func (c *Cluster) checkHealth(ctx context.Context) error {
	for _, comp := range c.components() {
		if err := c.probe(ctx, comp); err != nil {
			return fmt.Errorf("%s: %w", comp.name, err)
		}
	}
	return nil
}

func (c *Cluster) kubectl(ctx context.Context, stdin io.Reader, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.bins.kubectl, append([]string{"--kubeconfig=" + c.p.Kubeconfig}, args...)...)
	cmd.Stdin = stdin
	cmd.Env = c.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

func (c *Cluster) applyCoreDNS(ctx context.Context) error {
	// RBAC bootstrapping may lag the apiserver's readiness by a moment.
	var err error
	for i := 0; i < 50; i++ {
		if _, err = c.kubectl(ctx, nil, "apply", "-f", filepath.Join(c.p.Config, "coredns.yaml")); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return err
}

// waitReady waits for the node to be Ready, CoreDNS to be available and
// the default ServiceAccount to exist.
func (c *Cluster) waitReady(ctx context.Context) error {
	cfg, err := c.RESTConfig()
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var last error
	for {
		err := readyOnce(ctx, cs)
		if err == nil {
			return nil
		}
		if ctx.Err() == nil || last == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not ready: %v", last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func readyOnce(ctx context.Context, cs kubernetes.Interface) error {
	node, err := cs.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("node %s: %w", NodeName, err)
	}
	ready := false
	for _, cond := range node.Status.Conditions {
		if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
			ready = true
		}
	}
	if !ready {
		return fmt.Errorf("node %s not Ready", NodeName)
	}
	if _, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return errors.New("ServiceAccount default/default not created yet")
		}
		return err
	}
	dep, err := cs.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("deployment kube-system/coredns: %w", err)
	}
	if dep.Status.AvailableReplicas < 1 {
		return fmt.Errorf("CoreDNS not available yet%s", lastWarning(ctx, cs, "kube-system"))
	}
	slices, err := cs.DiscoveryV1().EndpointSlices("kube-system").List(ctx,
		metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=kube-dns"})
	if err != nil {
		return fmt.Errorf("endpoints of kube-system/kube-dns: %w", err)
	}
	for _, sl := range slices.Items {
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
				return nil
			}
		}
	}
	return errors.New("service kube-system/kube-dns has no ready endpoint yet")
}

// lastWarning returns ": <message>" of the newest Warning event in ns, or "".
func lastWarning(ctx context.Context, cs kubernetes.Interface, ns string) string {
	evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "type=Warning"})
	if err != nil || len(evs.Items) == 0 {
		return ""
	}
	last := evs.Items[0]
	for _, e := range evs.Items[1:] {
		if e.LastTimestamp.After(last.LastTimestamp.Time) {
			last = e
		}
	}
	return fmt.Sprintf(" (last warning, %s %s: %s)", last.InvolvedObject.Kind, last.InvolvedObject.Name, oneLine(last.Message))
}

// nodeImages returns the archives the node imports at start: the pause
// image first, then CoreDNS (and the cluster's tinyapp image).
func (c *Cluster) nodeImages() ([]string, error) {
	dir := filepath.Join(c.opts.RepoRoot, "bin", "cluster-images")
	tiny, err := BuildTinyApp(c.opts.RepoRoot, dir)
	if err != nil {
		return nil, err
	}
	dns, err := buildImage(images.Spec{Name: "coredns", Binaries: []string{"coredns"}, User: images.UserRoot,
		Description: "CoreDNS for the one-machine cluster"}, filepath.Dir(c.bins.coredns),
		strings.TrimPrefix(CoreDNSImage, "docker.io/ambit/coredns:"), filepath.Join(dir, "coredns.tar"))
	if err != nil {
		return nil, err
	}
	if c.opts.PauseImage != "" {
		if !exists(c.opts.PauseImage) {
			return nil, fmt.Errorf("pause image archive %s does not exist", c.opts.PauseImage)
		}
		return []string{c.opts.PauseImage, dns, tiny}, nil
	}
	return []string{tiny, dns}, nil
}

// Import imports OCI (or docker-save) image archives into containerd's
// k8s.io namespace, where kubelet finds them.
func (c *Cluster) Import(ctx context.Context, files ...string) error {
	if err := requireRoot(); err != nil {
		return err
	}
	if err := c.findBinaries(); err != nil {
		return err
	}
	for _, f := range files {
		if !exists(f) {
			return fmt.Errorf("image archive %s does not exist", f)
		}
	}
	unlock, err := c.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if id, err := readPidFile(c.pidFile("containerd")); err != nil || !id.alive() {
		return errors.New("the cluster is not up (containerd is not running): run up first")
	}
	return c.importLocked(ctx, files...)
}

func (c *Cluster) importLocked(ctx context.Context, files ...string) error {
	for _, f := range files {
		t := time.Now()
		out, err := exec.CommandContext(ctx, c.bins.ctr, "--address", c.p.ContainerdSock, "--namespace", "k8s.io",
			"images", "import", "--snapshotter", "overlayfs", f).CombinedOutput()
		if err != nil {
			return fmt.Errorf("import %s: %v: %s", f, err, strings.TrimSpace(string(out)))
		}
		c.logf("imported %s in %s", f, since(t))
	}
	return nil
}

// indexAnnotations decodes an OCI archive's index.json and returns the
// annotations of each of its manifests, in order.
func indexAnnotations(r io.Reader) ([]map[string]string, error) {
	var idx struct {
		Manifests []struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	if err := json.NewDecoder(r).Decode(&idx); err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	out := make([]map[string]string, len(idx.Manifests))
	for i, m := range idx.Manifests {
		out[i] = m.Annotations
	}
	return out, nil
}

// ArchiveImageName returns the image name an OCI archive carries in its
// index (the io.containerd.image.name annotation, as `ctr images import`
// names it), or the first RepoTags entry of a docker-save archive.
func ArchiveImageName(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	tr := tar.NewReader(f)
	// What was seen, for the error: the entries (up to 20) and the
	// annotations of index.json's manifests.
	var seen []string
	entries := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", fmt.Errorf("%s: neither index.json nor manifest.json names an image (%d entries: %s)",
				path, entries, strings.Join(seen, ", "))
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		if entries++; entries <= 20 {
			seen = append(seen, fmt.Sprintf("%s (%d bytes)", h.Name, h.Size))
		}
		switch strings.TrimPrefix(h.Name, "./") {
		case "index.json":
			manifests, err := indexAnnotations(tr)
			if err != nil {
				return "", fmt.Errorf("%s: %w", path, err)
			}
			for _, a := range manifests {
				seen = append(seen, fmt.Sprintf("index.json manifest annotations %v", a))
			}
			for _, a := range manifests {
				if n := a[images.AnnotationContainerdName]; n != "" {
					return n, nil
				}
			}
		case "manifest.json":
			var ms []struct{ RepoTags []string }
			if err := json.NewDecoder(tr).Decode(&ms); err != nil {
				return "", fmt.Errorf("%s: manifest.json: %w", path, err)
			}
			for _, m := range ms {
				if len(m.RepoTags) > 0 {
					return normalizeRef(m.RepoTags[0]), nil
				}
			}
		}
	}
}

// normalizeRef spells a docker reference in full, as containerd names it.
func normalizeRef(r string) string {
	first, _, found := strings.Cut(r, "/")
	if !found {
		return "docker.io/library/" + r
	}
	if !strings.ContainsAny(first, ".:") && first != "localhost" {
		return "docker.io/" + r
	}
	return r
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
