//go:build e2e

package cluster

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/ambit-mesh/ambit/integration/images"
	"github.com/ambit-mesh/ambit/integration/internal/tier"
)

// TestTeardownAfterCrash crashes the cluster twice and checks both ways out
// of a crash:
//
//  1. every process of the cluster (components, containerd shims, pods) gets
//     SIGKILL at once, without any teardown; the host then holds the
//     cluster's links, mounts, pod network namespaces and cgroups (checked,
//     so that the check after Down is known to see leftovers); Down removes
//     all of it and Up brings a working cluster back (a pod answers through
//     its Service);
//  2. only the components get SIGKILL, the pods and shims of the old run
//     live on; Up, run directly (no Down), sweeps the old run (its
//     processes, namespaces, links and cgroups are gone afterwards) and
//     starts a working cluster.
//
// A cluster that was up before the test (make e2e's, with Ambit's images)
// is left up as it was: started with the same pause image and holding the
// same images (saved with ctr before the first crash and imported again);
// the Kubernetes objects it held are lost. A cluster the test started is
// taken down and checked clean at the end unless AMBIT_E2E_KEEP=1.
func TestTeardownAfterCrash(t *testing.T) {
	tier.RequireRoot(t)
	root, err := tier.RepoRoot()
	tier.Require(t, "the Ambit checkout", err)
	logs := &captureLog{t: t}
	c, err := New(Options{RepoRoot: root, Log: logs})
	if err != nil {
		t.Fatal(err)
	}
	tier.Require(t, "make tools (kube, etcd, containerd, runc, cni, coredns)", c.findBinaries())
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	begin := time.Now()
	step := func(format string, args ...any) {
		t.Logf("[%5.1fs] %s", time.Since(begin).Seconds(), fmt.Sprintf(format, args...))
	}

	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	wasUp := !c.Started()
	step("cluster up (was up before: %v)", wasUp)
	if wasUp {
		// the test replaces the cluster: not one somebody works with
		tier.Require(t, "a running cluster without workloads (the crash test replaces the cluster; "+
			"make cluster-down first, or run it on make e2e's fresh cluster)", workloads(ctx, c))
	}

	// What a new cluster would lack: the images and the pause image.
	saved := saveImages(ctx, t, c, t.TempDir())
	step("saved %d images (pause image %s)", len(saved.refs), saved.sandbox)
	c, err = New(Options{RepoRoot: root, Log: logs, PauseImage: saved.pauseArchive})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.findBinaries(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if wasUp || os.Getenv("AMBIT_E2E_KEEP") == "1" {
			restoreImages(ctx, t, c, saved)
			step("cluster up with its images restored")
			return
		}
		downAndCheckClean(t, c)
		step("cluster down and the host clean")
	}()

	// 1: a crash of everything, then Down.
	checkWorkload(ctx, t, c, "before-crash")
	step("a pod answers through its Service")
	before := traceRun(t, c)
	rec, err := readHostRecord(c.p.Host)
	if err != nil {
		t.Fatalf("host record of the running cluster: %v", err)
	}
	crash(t, c, true)
	step("crashed: SIGKILL to %d processes (components, shims, pods)", len(before.procs))
	left, err := hostLeftovers(c, rec)
	if err != nil {
		t.Fatal(err)
	}
	// the crash leaves the host as a crash does: no process, all the rest
	for _, want := range []string{"link " + BridgeName, "link " + NodeLink, "mount " + c.p.State + "/",
		"netns mount ", "netns file ", "cgroups ", "pid file ", "state "} {
		if !hasPrefix(left, want) {
			t.Errorf("after the crash, no leftover %q (the check after Down would not see one):\n%s", want, strings.Join(left, "\n"))
		}
	}
	if hasPrefix(left, "process") {
		t.Fatalf("processes of the cluster survived the crash:\n%s", strings.Join(left, "\n"))
	}
	if t.Failed() {
		t.FailNow()
	}
	start := time.Now()
	if err := c.Down(ctx); err != nil {
		t.Fatalf("down after a crash: %v", err)
	}
	step("down after the crash in %s", since(start))
	if left, err := hostLeftovers(c, rec); err != nil || len(left) > 0 {
		t.Fatalf("left behind after down (%v):\n%s", err, strings.Join(left, "\n"))
	}
	before.checkGone(t, "down")

	start = time.Now()
	if err := c.Up(ctx); err != nil {
		t.Fatalf("up after down: %v", err)
	}
	step("up after down in %s", since(start))
	checkWorkload(ctx, t, c, "after-down")
	step("a pod answers through its Service")

	// 2: a crash of the components only, then Up directly.
	before = traceRun(t, c)
	apiserver, err := readPidFile(c.pidFile("kube-apiserver"))
	if err != nil {
		t.Fatal(err)
	}
	crash(t, c, false)
	step("crashed: SIGKILL to the components; shims and pods live on")
	shims, pods := 0, 0
	for _, p := range before.shims {
		if p.alive() {
			shims++
		}
	}
	for _, p := range before.pods {
		if p.alive() {
			pods++
		}
	}
	if shims == 0 || pods == 0 {
		t.Fatalf("after the components' crash, %d of %d shims and %d of %d pod processes live, want some of each",
			shims, len(before.shims), pods, len(before.pods))
	}
	logs.reset()
	start = time.Now()
	if err := c.Up(ctx); err != nil {
		t.Fatalf("up directly after a crash: %v", err)
	}
	step("up directly after the crash in %s", since(start))
	if !strings.Contains(logs.String(), "sweeping a previous run") {
		t.Errorf("up after a crash did not say it swept the previous run; its log:\n%s", logs.String())
	}
	if now, err := readPidFile(c.pidFile("kube-apiserver")); err != nil || now == apiserver || !now.alive() {
		t.Errorf("up after a crash: kube-apiserver %+v, was %+v (%v)", now, apiserver, err)
	}
	before.checkGone(t, "up after the crash")
	checkWorkload(ctx, t, c, "after-crash-up")
	step("a pod answers through its Service")
}

// systemNamespaces are the namespaces of a new cluster.
var systemNamespaces = map[string]bool{"default": true, "kube-system": true, "kube-public": true, "kube-node-lease": true}

// workloads returns an error naming the namespaces of the running cluster
// that a new cluster does not have (but those being deleted and the test's
// own) and the pods in the other namespaces but kube-system.
func workloads(ctx context.Context, c *Cluster) error {
	cfg, err := c.RESTConfig()
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var used []string
	for _, n := range nss.Items {
		if !systemNamespaces[n.Name] && !strings.HasPrefix(n.Name, "crash-") && n.DeletionTimestamp == nil {
			used = append(used, "namespace "+n.Name)
		}
	}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, p := range pods.Items {
		if p.Namespace != "kube-system" && !strings.HasPrefix(p.Namespace, "crash-") && systemNamespaces[p.Namespace] {
			used = append(used, "pod "+p.Namespace+"/"+p.Name)
		}
	}
	if len(used) > 0 {
		return fmt.Errorf("the cluster holds %s", shortList(used))
	}
	return nil
}

// captureLog sends the cluster's lines to the test log and keeps them.
type captureLog struct {
	t  *testing.T
	mu sync.Mutex
	b  strings.Builder
}

func (l *captureLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *captureLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *captureLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reset()
}

func hasPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

// procIDs names the live processes among pids.
func procIDs(pids []int) []procID {
	var out []procID
	for _, pid := range pids {
		if _, start, err := procStat(pid); err == nil {
			out = append(out, procID{PID: pid, Start: start})
		}
	}
	return out
}

// clusterProcs finds the processes of the cluster as Down does: the
// components by PID file, the shims by their -address argument, the pods'
// processes by kubepods cgroup.
func clusterProcs(c *Cluster) (comps, shims, pods []procID) {
	for _, comp := range c.components() {
		if id, err := readPidFile(c.pidFile(comp.name)); err == nil && id.alive() {
			comps = append(comps, id)
		}
	}
	return comps, procIDs(shimsOf(c.p.ContainerdSock)), procIDs(cgroupPIDs(cgroupDirs(cgroupRoots())))
}

// crash sends SIGKILL to every component and, with all, to every shim and
// pod process, all at once, and waits until they are gone. Nothing else.
func crash(t *testing.T, c *Cluster, all bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		comps, shims, pods := clusterProcs(c)
		victims := comps
		if all {
			victims = append(append(victims, shims...), pods...)
		}
		if len(victims) == 0 {
			return
		}
		for _, p := range victims {
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
		}
		for {
			left := 0
			for _, p := range victims {
				if p.alive() {
					left++
				}
			}
			if left == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d processes of the cluster survive SIGKILL", left)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// runTrace is what one run of the cluster has on the host, by name.
type runTrace struct {
	procs       []procID // components, shims, pod processes
	shims, pods []procID
	netns       []string // pod network namespace files
	veths       []string // links enslaved to the bridge
	podCgroups  []string // pod cgroup folders
}

// traceRun records the running cluster's processes, pod namespaces, veths
// and pod cgroups, and checks it has at least one of each.
func traceRun(t *testing.T, c *Cluster) runTrace {
	t.Helper()
	var r runTrace
	var comps []procID
	comps, r.shims, r.pods = clusterProcs(c)
	r.procs = append(append(append(r.procs, comps...), r.shims...), r.pods...)
	ents, err := os.ReadDir(NetnsDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if p := filepath.Join(NetnsDir, e.Name()); isCNINetns(p) {
			r.netns = append(r.netns, p)
		}
	}
	br, err := netlink.LinkByName(BridgeName)
	if err != nil {
		t.Fatalf("bridge %s: %v", BridgeName, err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			r.veths = append(r.veths, l.Attrs().Name)
		}
	}
	for _, d := range cgroupDirs(cgroupRoots()) {
		if strings.HasPrefix(filepath.Base(d), "pod") {
			r.podCgroups = append(r.podCgroups, d)
		}
	}
	if len(comps) != len(c.components()) || len(r.shims) == 0 || len(r.pods) == 0 ||
		len(r.netns) == 0 || len(r.veths) == 0 || len(r.podCgroups) == 0 {
		t.Fatalf("the running cluster lacks something a crash should leave: %d of %d components, "+
			"%d shims, %d pod processes, %d pod netns, %d veths, %d pod cgroups", len(comps), len(c.components()),
			len(r.shims), len(r.pods), len(r.netns), len(r.veths), len(r.podCgroups))
	}
	return r
}

// checkGone checks that nothing of the traced run is left (a new run has
// its own namespaces, veths and cgroups, under other names).
func (r runTrace) checkGone(t *testing.T, after string) {
	t.Helper()
	var left []string
	for _, p := range r.procs {
		if p.alive() {
			left = append(left, fmt.Sprintf("process %d", p.PID))
		}
	}
	for _, p := range r.netns {
		if exists(p) {
			left = append(left, "netns "+p)
		}
	}
	for _, v := range r.veths {
		if _, err := netlink.LinkByName(v); err == nil {
			left = append(left, "link "+v)
		}
	}
	for _, d := range r.podCgroups {
		if exists(d) {
			left = append(left, "cgroup "+d)
		}
	}
	if len(left) > 0 {
		t.Fatalf("after %s, left of the crashed run:\n%s", after, strings.Join(left, "\n"))
	}
}

// checkWorkload runs a server pod behind a Service and a client pod, and
// checks that the client reaches the server by the Service's name. The pods
// stay (a crash follows); restoreImages deletes their namespace.
func checkWorkload(ctx context.Context, t *testing.T, c *Cluster, tag string) {
	t.Helper()
	cfg, err := c.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ns := fmt.Sprintf("crash-%s-%d", tag, time.Now().UnixNano()%1_000_000)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	zero := int64(0)
	labels := map[string]string{"app": "echo"}
	pods := []*corev1.Pod{{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: &zero, Containers: []corev1.Container{{
			Name: "echo", Image: TestImage, ImagePullPolicy: corev1.PullNever,
			Args:  []string{"serve", ":8080"},
			Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
			ReadinessProbe: &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{
				HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8080)}}},
		}}},
	}, {
		ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: ns},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: &zero, Containers: []corev1.Container{{
			Name: "client", Image: TestImage, ImagePullPolicy: corev1.PullNever,
		}}},
	}}
	for _, p := range pods {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{
			Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		waitPodReady(ctx, t, cs, ns, p.Name)
	}
	kubectl, err := c.Kubectl()
	if err != nil {
		t.Fatal(err)
	}
	url := "http://echo/" + tag
	want := "echo /" + tag
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", c.Kubeconfig(), "-n", ns,
			"exec", "client", "--", "/usr/local/bin/tinyapp", "get", url).CombinedOutput()
		if err == nil && strings.TrimSpace(string(out)) == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s from the client pod: %v: %q, want %q", url, err, out, want)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// savedImages are the images of a running cluster, to be restored on a new one.
type savedImages struct {
	refs map[string]string // image name -> manifest digest
	// sandbox is the pod sandbox image; pauseArchive holds it unless it is
	// the cluster's own TestImage (then "").
	sandbox, pauseArchive string
	// others is an archive of the images Up does not import ("" when none).
	others string
}

var sandboxLine = regexp.MustCompile(`(?m)^\s*sandbox\s*=\s*"([^"]+)"`)

// sandboxImage reads the pod sandbox image from the running cluster's
// containerd configuration.
func sandboxImage(t *testing.T, c *Cluster) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.p.Config, "containerd.toml"))
	if err != nil {
		t.Fatal(err)
	}
	m := sandboxLine.FindSubmatch(b)
	if m == nil {
		t.Fatalf("no sandbox image in %s", filepath.Join(c.p.Config, "containerd.toml"))
	}
	return string(m[1])
}

func (c *Cluster) ctr(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.bins.ctr, append([]string{"--address", c.p.ContainerdSock, "--namespace", "k8s.io"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// listImages returns the named images (not the sha256: aliases) of
// containerd's k8s.io namespace with their manifest digests.
func listImages(ctx context.Context, t *testing.T, c *Cluster) map[string]string {
	t.Helper()
	out, err := c.ctr(ctx, "images", "ls")
	if err != nil {
		t.Fatal(err)
	}
	refs := map[string]string{}
	for _, line := range strings.Split(string(out), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 3 && !strings.HasPrefix(f[0], "sha256:") {
			refs[f[0]] = f[2]
		}
	}
	return refs
}

// saveImages exports the pause image and every image Up does not import
// into archives in dir.
func saveImages(ctx context.Context, t *testing.T, c *Cluster, dir string) savedImages {
	t.Helper()
	s := savedImages{refs: listImages(ctx, t, c), sandbox: sandboxImage(t, c)}
	if _, ok := s.refs[s.sandbox]; !ok {
		t.Fatalf("the sandbox image %s is not in containerd", s.sandbox)
	}
	if s.sandbox != TestImage {
		s.pauseArchive = filepath.Join(dir, "pause.tar")
		exportImages(ctx, t, c, s.pauseArchive, s.sandbox)
	}
	var others []string
	for ref := range s.refs {
		if ref != s.sandbox && ref != TestImage && ref != CoreDNSImage {
			others = append(others, ref)
		}
	}
	sort.Strings(others)
	if len(others) > 0 {
		s.others = filepath.Join(dir, "images.tar")
		exportImages(ctx, t, c, s.others, others...)
	}
	return s
}

// exportImages exports refs into the archive at path and reads the archive
// back to the end. ctr exports with --local: through containerd's transfer
// API (ctr's default) the archive is streamed back from the daemon, and twice
// in CI (2026-11-27, 2026-11-29) an archive ctr had exported without an error
// was cut short: once inside an entry ("unexpected EOF"), once between two
// entries, leaving the blobs without index.json. The read-back checks that the
// archive is whole and that its index names every ref; a bad archive is logged
// and exported once more, and a second bad one fails here.
func exportImages(ctx context.Context, t *testing.T, c *Cluster, path string, refs ...string) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		if _, err := c.ctr(ctx, append([]string{"images", "export", "--local", path}, refs...)...); err != nil {
			t.Fatal(err)
		}
		err := readArchive(path, refs...)
		if err == nil {
			return
		}
		if attempt == 2 {
			t.Fatalf("ctr images export %s %v: the archive is not whole, twice: %v", path, refs, err)
		}
		t.Logf("ctr images export %s %v: the archive is not whole (%v): exporting again", path, refs, err)
	}
}

// readArchive reads an OCI image archive to its end (Next reads past each
// entry's data, so a truncated entry fails it) and checks that its
// index.json names every one of refs (the io.containerd.image.name
// annotation ctr writes), which an archive cut short between two entries
// lacks.
func readArchive(path string, refs ...string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	tr := tar.NewReader(f)
	entries := 0
	var named map[string]bool
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("entry %d: %w", entries+1, err)
		}
		entries++
		if strings.TrimPrefix(h.Name, "./") != "index.json" {
			continue
		}
		manifests, err := indexAnnotations(tr)
		if err != nil {
			return err
		}
		named = map[string]bool{}
		for _, a := range manifests {
			named[a[images.AnnotationContainerdName]] = true
		}
	}
	if entries == 0 {
		return fmt.Errorf("no entries")
	}
	if named == nil {
		return fmt.Errorf("no index.json in %d entries", entries)
	}
	for _, r := range refs {
		if !named[r] {
			return fmt.Errorf("index.json does not name %s", r)
		}
	}
	return nil
}

// restoreImages brings the cluster up (a no-op when it is) and imports the
// saved images; it checks the cluster then has exactly the saved images and
// sandbox image.
func restoreImages(ctx context.Context, t *testing.T, c *Cluster, s savedImages) {
	t.Helper()
	if err := c.Up(ctx); err != nil {
		t.Fatalf("bringing the cluster back: %v", err)
	}
	if s.others != "" {
		if err := c.Import(ctx, s.others); err != nil {
			t.Fatal(err)
		}
	}
	if got := sandboxImage(t, c); got != s.sandbox {
		t.Errorf("restored cluster's sandbox image %s, was %s", got, s.sandbox)
	}
	got := listImages(ctx, t, c)
	var diff []string
	for ref, d := range s.refs {
		if got[ref] != d {
			diff = append(diff, fmt.Sprintf("%s: %q, was %q", ref, got[ref], d))
		}
	}
	for ref := range got {
		if _, ok := s.refs[ref]; !ok {
			diff = append(diff, ref+": not there before")
		}
	}
	if len(diff) > 0 {
		sort.Strings(diff)
		t.Errorf("images of the restored cluster differ:\n%s", strings.Join(diff, "\n"))
	}
	// the namespace the test made goes (its pods end at once: no grace)
	cfg, err := c.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nss.Items {
		if strings.HasPrefix(n.Name, "crash-") {
			if err := cs.CoreV1().Namespaces().Delete(ctx, n.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Fatal(err)
			}
		}
	}
}

// TestReadArchive: readArchive accepts a whole archive whose index names
// the refs and refuses one truncated in an entry, one cut short between
// entries (blobs without index.json), one whose index lacks a ref, and an
// empty one.
func TestReadArchive(t *testing.T) {
	dir := t.TempDir()
	const ref = "docker.io/ambit/pause:test"
	blob := strings.Repeat("x", 3000)
	index := `{"schemaVersion":2,"manifests":[{"annotations":{"io.containerd.image.name":"` + ref + `"}}]}`
	archive := func(entries ...[2]string) string {
		var b strings.Builder
		tw := tar.NewWriter(&b)
		for _, e := range entries {
			if err := tw.WriteHeader(&tar.Header{Name: e[0], Mode: 0o644, Size: int64(len(e[1]))}); err != nil {
				t.Fatal(err)
			}
			if _, err := tw.Write([]byte(e[1])); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	whole := archive([2]string{"blobs/sha256/aa", blob}, [2]string{"index.json", index})
	blobsOnly := archive([2]string{"blobs/sha256/aa", blob})
	for name, c := range map[string]struct {
		data string
		refs []string
		ok   bool
	}{
		"whole":                     {whole, []string{ref}, true},
		"truncated in a header":     {whole[:3600], []string{ref}, false},
		"truncated in a body":       {whole[:2000], []string{ref}, false},
		"cut short between entries": {blobsOnly[:len(blobsOnly)-1024], nil, false},
		"index without the ref":     {whole, []string{ref, "docker.io/ambit/other:test"}, false},
		"empty":                     {"", nil, false},
	} {
		path := filepath.Join(dir, name+".tar")
		if err := os.WriteFile(path, []byte(c.data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := readArchive(path, c.refs...); (err == nil) != c.ok {
			t.Errorf("%s: readArchive = %v, want ok %v", name, err, c.ok)
		}
	}
}
