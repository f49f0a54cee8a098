//go:build e2e

package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/ambit-mesh/ambit/integration/internal/tier"
)

// testLog sends the cluster's progress lines to the test log.
type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestSmoke brings the cluster up (or reuses a running one), runs a server
// pod and a client pod from the locally imported tinyapp image, and checks
// that the client reaches the server through its Service's ClusterIP and
// its DNS names, and that pods have no default route. Without
// AMBIT_E2E_KEEP=1 it then takes the cluster down and checks that nothing
// is left on the host.
func TestSmoke(t *testing.T) {
	tier.RequireRoot(t)
	root, err := tier.RepoRoot()
	tier.Require(t, "the Ambit checkout", err)
	c, err := New(Options{RepoRoot: root, Log: testLog{t}})
	if err != nil {
		t.Fatal(err)
	}
	tier.Require(t, "make tools (kube, etcd, containerd, runc, cni, coredns)", c.findBinaries())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("up in %s", time.Since(start).Round(100*time.Millisecond))
	// A cluster this test did not start belongs to someone else (another
	// test package, a developer's make run): leave it up.
	switch {
	case os.Getenv("AMBIT_E2E_KEEP") == "1":
		t.Logf("AMBIT_E2E_KEEP=1: leaving the cluster up; KUBECONFIG=%s", c.Kubeconfig())
	case !c.Started():
		t.Logf("the cluster was up before this test: leaving it up")
	default:
		defer downAndCheckClean(t, c)
	}

	// Import works on a running cluster (the image is also imported by Up).
	tiny, err := BuildTinyApp(root, filepath.Join(root, "bin", "cluster-images"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Import(ctx, tiny); err != nil {
		t.Fatal(err)
	}
	if err := c.Import(ctx, filepath.Join(t.TempDir(), "missing.tar")); err == nil {
		t.Fatal("importing a missing archive succeeded")
	}

	cfg, err := c.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ns := fmt.Sprintf("smoke-%d", time.Now().UnixNano()%1_000_000)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	}()

	kubectl, err := c.Kubectl()
	if err != nil {
		t.Fatal(err)
	}
	execIn := func(pod string, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, kubectl, append([]string{"--kubeconfig", c.Kubeconfig(), "-n", ns,
			"exec", pod, "--", "/usr/local/bin/tinyapp"}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	// A privileged pod mounting /var/run/netns with HostToContainer
	// propagation, as Ambit's ztunnel DaemonSet does, starts and sees the
	// pod network namespaces created after it.
	hostToContainer := corev1.MountPropagationHostToContainer
	privileged := true
	watch := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "netns-watch", Namespace: ns},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "watch", Image: TestImage, ImagePullPolicy: corev1.PullNever,
				SecurityContext: &corev1.SecurityContext{Privileged: &privileged},
				VolumeMounts: []corev1.VolumeMount{{Name: "netns", MountPath: "/var/run/netns",
					MountPropagation: &hostToContainer}},
			}},
			Volumes: []corev1.Volume{{Name: "netns", VolumeSource: corev1.VolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: "/var/run/netns"}}}},
		},
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, watch, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodReady(ctx, t, cs, ns, "netns-watch")
	countNetns := func() int {
		out, err := execIn("netns-watch", "cat", "/proc/self/mountinfo")
		if err != nil {
			t.Fatalf("reading mounts in netns-watch: %v: %s", err, out)
		}
		return strings.Count(out, " /var/run/netns/cni-")
	}
	netnsBefore := countNetns()

	labels := map[string]string{"app": "echo"}
	server := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "echo", Image: TestImage, ImagePullPolicy: corev1.PullNever,
			Args:  []string{"serve", ":8080"},
			Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
			ReadinessProbe: &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{
				HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8080)}}},
		}}},
	}
	client := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "client", Image: TestImage, ImagePullPolicy: corev1.PullNever,
		}}},
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{
			Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	for _, p := range []*corev1.Pod{server, client} {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	svc, err = cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"echo", "client"} {
		waitPodReady(ctx, t, cs, ns, name)
	}
	srv, err := cs.CoreV1().Pods(ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(srv.Status.PodIP, "10.253.0.") {
		t.Fatalf("pod IP %q is outside the pod range %s", srv.Status.PodIP, PodCIDR)
	}

	if n := countNetns(); n < netnsBefore+2 {
		t.Fatalf("netns-watch sees %d pod network namespaces, %d before two more pods started: "+
			"HostToContainer propagation of /var/run/netns does not work", n, netnsBefore)
	}
	inClient := func(args ...string) (string, error) { return execIn("client", args...) }
	urls := []string{
		"http://" + svc.Spec.ClusterIP + "/via-ip",
		"http://echo." + ns + ".svc.cluster.local/via-fqdn",
		"http://echo/via-short-name",
	}
	for _, u := range urls {
		want := "echo " + u[strings.LastIndex(u, "/"):]
		var out string
		// kube-proxy and CoreDNS pick up the new Service within moments
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, err = inClient("get", u)
			if err == nil && strings.TrimSpace(out) == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET %s from the client pod: %v: %q, want %q", u, err, out, want)
			}
			time.Sleep(500 * time.Millisecond)
		}
		t.Logf("GET %s -> %s", u, strings.TrimSpace(out))
	}
	// a name outside the cluster does not resolve: CoreDNS forwards nowhere
	if out, err := inClient("get", "http://example.com/"); err == nil {
		t.Fatalf("a name outside the cluster resolved and answered: %q", out)
	}
	routes, err := inClient("cat", "/proc/net/route")
	if err != nil {
		t.Fatalf("reading the client's routes: %v: %s", err, routes)
	}
	for _, line := range strings.Split(routes, "\n")[1:] {
		if f := strings.Fields(line); len(f) > 7 && f[1] == "00000000" && f[7] == "00000000" {
			t.Fatalf("the pod has a default route:\n%s", routes)
		}
	}

	// Up on a running cluster returns quickly and changes nothing.
	before, err := readPidFile(c.pidFile("kube-apiserver"))
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("a second Up took %s", d)
	}
	after, err := readPidFile(c.pidFile("kube-apiserver"))
	if err != nil || after != before {
		t.Fatalf("a second Up restarted kube-apiserver: %+v -> %+v (%v)", before, after, err)
	}
}

func waitPodReady(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			for _, cond := range p.Status.Conditions {
				if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s/%s not ready: %v %+v%s", ns, name, err, p.Status, lastWarning(ctx, cs, ns))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// downAndCheckClean takes the cluster down and checks the host.
func downAndCheckClean(t *testing.T, c *Cluster) {
	t.Helper()
	rec, err := readHostRecord(c.p.Host)
	if err != nil {
		t.Errorf("host record: %v", err)
	}
	start := time.Now()
	if err := c.Down(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("down in %s", time.Since(start).Round(100*time.Millisecond))
	left, err := hostLeftovers(c, rec)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Fatalf("left behind after Down:\n%s", strings.Join(left, "\n"))
	}
}

// hostLeftovers lists what of the cluster is on the host: processes (by
// PID file, by program and state-folder argument, in the kubepods cgroups,
// containerd shims), links, mounts under the state folder, pod network
// namespaces (mounts and files), cgroups, nftables tables, CNI files,
// created folders, host settings that differ from rec (the host record of
// the run, nil when unknown) and state files but the logs and the lock.
// Each entry starts with its kind ("pid file", "process", "link", "mount",
// "netns", "cgroups", ...).
func hostLeftovers(c *Cluster, rec *hostRecord) ([]string, error) {
	var left []string
	names := []string{}
	for _, comp := range c.components() {
		names = append(names, filepath.Base(comp.bin))
		if exists(c.pidFile(comp.name)) {
			left = append(left, "pid file "+comp.name)
		}
	}
	if pids := componentsByArgs(c.p.State, names); len(pids) > 0 {
		left = append(left, fmt.Sprintf("process of a component %v", pids))
	}
	if pids := cgroupPIDs(cgroupDirs(cgroupRoots())); len(pids) > 0 {
		left = append(left, fmt.Sprintf("process in kubepods %v", pids))
	}
	if pids := shimsOf(c.p.ContainerdSock); len(pids) > 0 {
		left = append(left, fmt.Sprintf("process: shims %v", pids))
	}
	for _, l := range []string{BridgeName, NodeLink} {
		if _, err := exec.Command("ip", "link", "show", l).CombinedOutput(); err == nil {
			left = append(left, "link "+l)
		}
	}
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(info), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			switch mp := unescapeMount(f[4]); {
			case underAny(mp, []string{c.p.State}):
				left = append(left, "mount "+mp)
			case isCNINetns(mp):
				left = append(left, "netns mount "+mp)
			}
		}
	}
	if ents, err := os.ReadDir(NetnsDir); err == nil {
		for _, e := range ents {
			if p := filepath.Join(NetnsDir, e.Name()); isCNINetns(p) {
				left = append(left, "netns file "+p)
			}
		}
	}
	if roots := cgroupRoots(); len(roots) > 0 {
		left = append(left, "cgroups "+strings.Join(roots, " "))
	}
	if out, err := exec.Command("nft", "list", "tables").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			for _, tb := range nftTables {
				if strings.Join(strings.Fields(line), " ") == "table "+tb[0]+" "+tb[1] {
					left = append(left, "nftables table "+tb[0]+" "+tb[1])
				}
			}
		}
	}
	if exists(filepath.Join(CNIConfDir, CNIConfFile)) {
		left = append(left, "CNI config")
	}
	if rec != nil && rec.NetnsMounted {
		nested := false
		for _, m := range parseMounts(string(info)) {
			nested = nested || strings.HasPrefix(m.point, NetnsDir+"/")
		}
		for _, m := range parseMounts(string(info)) {
			if m.point == NetnsDir && !nested {
				left = append(left, "the shared bind mount of "+NetnsDir)
			}
		}
	}
	if rec != nil {
		for _, p := range append(rec.Created, rec.Files...) {
			if exists(p) {
				left = append(left, "host path "+p)
			}
		}
		if fwd, err := os.ReadFile(ipForwardPath); err != nil || strings.TrimSpace(string(fwd)) != rec.IPForward {
			left = append(left, fmt.Sprintf("sysctl ip_forward %q, was %q", fwd, rec.IPForward))
		}
		if nf, err := os.ReadFile(bridgeNFCallPath); err != nil || strings.TrimSpace(string(nf)) != rec.BridgeNFCall {
			left = append(left, fmt.Sprintf("sysctl bridge-nf-call-iptables %q, was %q", nf, rec.BridgeNFCall))
		}
	}
	ents, err := os.ReadDir(c.p.State)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, e := range ents {
		if n := e.Name(); n != "logs" && n != ".lock" {
			left = append(left, "state "+n)
		}
	}
	return left, nil
}
