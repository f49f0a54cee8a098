package cluster

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/integration/images"
)

func TestParseStat(t *testing.T) {
	// a command name with spaces and parentheses, as /proc shows it
	line := "1234 (we(ird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10 18446744073709551615\n"
	state, start, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if state != 'S' || start != 98765 {
		t.Fatalf("got state %c start %d, want S 98765", state, start)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 notanumber 1"} {
		if _, _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) gave no error", bad)
		}
	}
}

// A descriptor the caller inherited without close-on-exec (a lock file, a
// pipe) is not passed on to the cluster's components.
func TestInheritedDescriptorsNotPassedOn(t *testing.T) {
	dir := t.TempDir()
	lockPath := filepath.Join(dir, "caller.lock")
	fd, err := syscall.Open(lockPath, syscall.O_CREAT|syscall.O_RDWR, 0o600) // no O_CLOEXEC
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	id, err := startProcess("/bin/sleep", []string{"60"}, nil, filepath.Join(dir, "sleep.log"), filepath.Join(dir, "sleep.pid"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stopProcs([]procID{id}, 2*time.Second) }()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", id.PID))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fds {
		if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", id.PID, f.Name())); target == lockPath {
			t.Fatalf("the started process holds the caller's descriptor %s (fd %s)", lockPath, f.Name())
		}
	}
}

func TestProcessLifecycle(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "sleep.pid")
	id, err := startProcess("/bin/sleep", []string{"60"}, nil, filepath.Join(dir, "sleep.log"), pidFile)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readPidFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	if got != id || !got.alive() {
		t.Fatalf("pid file %+v, started %+v, alive %v", got, id, got.alive())
	}
	// a recorded PID with another start time is another process
	if (procID{PID: id.PID, Start: id.Start + 1}).alive() {
		t.Fatal("a PID with a different start time counts as alive")
	}
	start := time.Now()
	if err := stopProcs([]procID{id}, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if id.alive() {
		t.Fatal("still alive after stopProcs")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("SIGTERM should stop sleep at once, took %s", d)
	}
	log, err := os.ReadFile(filepath.Join(dir, "sleep.log"))
	if err != nil || !strings.Contains(string(log), "/bin/sleep 60") {
		t.Fatalf("log %q (%v) lacks the command line", log, err)
	}
}

func TestProcessIgnoringTERMIsKilled(t *testing.T) {
	dir := t.TempDir()
	id, err := startProcess("/bin/sh", []string{"-c", "trap '' TERM; sleep 60 & wait"}, nil,
		filepath.Join(dir, "sh.log"), filepath.Join(dir, "sh.pid"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let the shell install its trap
	if err := stopProcs([]procID{id}, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if id.alive() {
		t.Fatal("a process ignoring SIGTERM survived")
	}
}

func TestReadPidFileRejectsGarbage(t *testing.T) {
	dir := t.TempDir()
	for i, content := range []string{"", "12", "x 1", "-5 1", "12 y", "1 2 3"} {
		p := filepath.Join(dir, "p"+string(rune('a'+i)))
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := readPidFile(p); err == nil {
			t.Errorf("readPidFile(%q) gave no error", content)
		}
	}
}

func TestIsShimOf(t *testing.T) {
	sock := "/var/lib/ambit-cluster/containerd/containerd.sock"
	cases := []struct {
		argv []string
		want bool
	}{
		{[]string{"/x/containerd-shim-runc-v2", "-namespace", "k8s.io", "-id", "abc", "-address", sock}, true},
		{[]string{"/x/containerd-shim-runc-v2", "-namespace", "k8s.io", "-address", "/run/containerd/containerd.sock"}, false},
		{[]string{"/usr/bin/sleep", "-address", sock}, false},
		{[]string{"/x/containerd-shim-runc-v2", "-address"}, false},
		{nil, false},
	}
	for _, c := range cases {
		if got := isShimOf(c.argv, sock); got != c.want {
			t.Errorf("isShimOf(%q) = %v, want %v", c.argv, got, c.want)
		}
	}
}

func TestMountPoints(t *testing.T) {
	info := `27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
100 27 0:50 / /var/lib/ambit-cluster/containerd/state/x/rootfs rw - overlay overlay rw
101 27 0:51 / /var/lib/ambit-cluster/kubelet/pods/p/volumes/a\040b rw - tmpfs tmpfs rw
102 27 0:52 / /var/lib/ambit-cluster/kubelet rw - tmpfs tmpfs rw
103 27 0:4 net:[4026532] /run/netns/cni-1234 rw - nsfs nsfs rw
104 27 0:4 net:[4026533] /run/netns/ambitlab-1-node rw - nsfs nsfs rw
105 27 0:53 / /var/lib/ambit-clusterfoo rw - tmpfs tmpfs rw
`
	roots := []string{"/var/lib/ambit-cluster"}
	got, err := mountPoints(strings.NewReader(info), func(p string) bool { return underAny(p, roots) || isCNINetns(p) })
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"/var/lib/ambit-cluster/kubelet/pods/p/volumes/a b",
		"/var/lib/ambit-cluster/containerd/state/x/rootfs",
		"/var/lib/ambit-cluster/kubelet",
		"/run/netns/cni-1234",
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("mount points\n got %q\nwant %q", got, want)
	}
}

func TestTopMissing(t *testing.T) {
	dir := t.TempDir()
	if got := topMissing(dir); got != "" {
		t.Fatalf("topMissing of an existing folder = %q", got)
	}
	if got, want := topMissing(filepath.Join(dir, "a", "b", "c")), filepath.Join(dir, "a"); got != want {
		t.Fatalf("topMissing = %q, want %q", got, want)
	}
}

func TestCNIConflistHasNoDefaultRoute(t *testing.T) {
	b, err := cniConflist("/state/cni/networks")
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Name    string `json:"name"`
		Plugins []struct {
			Type string `json:"type"`
			IPAM struct {
				Type    string              `json:"type"`
				DataDir string              `json:"dataDir"`
				Routes  []map[string]string `json:"routes"`
				Ranges  [][]map[string]string
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatal(err)
	}
	if conf.Name != CNINetwork || len(conf.Plugins) != 2 || conf.Plugins[0].Type != "bridge" || conf.Plugins[1].Type != "portmap" {
		t.Fatalf("unexpected conflist: %s", b)
	}
	ipam := conf.Plugins[0].IPAM
	if ipam.Type != "host-local" || ipam.DataDir != "/state/cni/networks" || ipam.Ranges[0][0]["subnet"] != PodCIDR {
		t.Fatalf("unexpected ipam: %+v", ipam)
	}
	var dsts []string
	for _, r := range ipam.Routes {
		dsts = append(dsts, r["dst"])
		if r["dst"] == "0.0.0.0/0" || r["dst"] == "::/0" {
			t.Fatalf("default route in the pod network: %s", b)
		}
	}
	if strings.Join(dsts, ",") != NodeRange+","+ServiceCIDR {
		t.Fatalf("routes %q, want the node and service ranges", dsts)
	}
}

func TestTemplatesRender(t *testing.T) {
	p := newPaths("/st")
	data := tmplData{P: p, Node: NodeName, NodeIP: NodeIP, PodCIDR: PodCIDR, ServiceCIDR: ServiceCIDR,
		DNSIP: DNSServiceIP, Domain: ClusterDomain, Runc: "/tools/runc", PauseImage: "docker.io/x/pause:1",
		CNIConfDir: CNIConfDir, CNIBinDir: CNIBinDir, CoreDNSImg: CoreDNSImage}
	checks := map[string][]string{
		containerdTOML:  {`root = "/st/containerd/root"`, `sandbox = "docker.io/x/pause:1"`, `BinaryName = "/tools/runc"`, `restrict_oom_score_adj = true`, `conf_dir = "/etc/cni/net.d"`},
		kubeletYAML:     {"failCgroupV1: false", "clusterDNS: [10.254.0.10]", "unix:///st/containerd/containerd.sock", "resolvConf: \"\""},
		kubeProxyYAML:   {"mode: nftables", "clusterCIDR: 10.253.0.0/24", `nodePortAddresses: ["10.252.0.1/32"]`, "oomScoreAdj: 0"},
		coreDNSManifest: {"clusterIP: 10.254.0.10", "kubernetes cluster.local in-addr.arpa ip6.arpa", "image: " + CoreDNSImage},
	}
	for tmpl, wants := range checks {
		b, err := render("t", tmpl, data)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range wants {
			if !strings.Contains(string(b), w) {
				t.Errorf("rendered config lacks %q:\n%s", w, b)
			}
		}
		if strings.Contains(string(b), "forward") {
			t.Errorf("a config forwards somewhere:\n%s", b)
		}
	}
	if _, err := render("bad", "{{.Nope}}", data); err == nil {
		t.Fatal("a template naming a missing field rendered")
	}
}

func TestPKI(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir, NodeName); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	load := func(name string) *x509.Certificate {
		b, err := os.ReadFile(filepath.Join(dir, name+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	api := load("apiserver")
	if _, err := api.Verify(x509.VerifyOptions{Roots: pool, DNSName: "kubernetes.default.svc"}); err != nil {
		t.Fatalf("apiserver certificate: %v", err)
	}
	if err := api.VerifyHostname(NodeIP); err != nil {
		t.Fatalf("apiserver certificate lacks the node address: %v", err)
	}
	if err := api.VerifyHostname(APIServiceIP); err != nil {
		t.Fatalf("apiserver certificate lacks the kubernetes Service address: %v", err)
	}
	node := load("kubelet-client")
	if node.Subject.CommonName != "system:node:"+NodeName || len(node.Subject.Organization) != 1 || node.Subject.Organization[0] != "system:nodes" {
		t.Fatalf("kubelet client subject %v", node.Subject)
	}
	if _, err := node.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	// a second call keeps what exists
	before, _ := os.ReadFile(filepath.Join(dir, "admin.crt"))
	if err := writePKI(dir, NodeName); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "admin.crt"))
	if string(before) != string(after) {
		t.Fatal("writePKI replaced an existing certificate")
	}
	if st, _ := os.Stat(filepath.Join(dir, "ca.key")); st.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key mode %v", st.Mode().Perm())
	}
}

func TestKubeconfigEmbedsCredentials(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir, NodeName); err != nil {
		t.Fatal(err)
	}
	b, err := kubeconfig(dir, "admin", "admin")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"server: https://10.252.0.1:6443", "certificate-authority-data: ", "client-key-data: ", "current-context: ambit-cluster"} {
		if !strings.Contains(string(b), w) {
			t.Errorf("kubeconfig lacks %q", w)
		}
	}
	if _, err := kubeconfig(dir, "nope", "x"); err == nil {
		t.Fatal("a kubeconfig for a missing certificate was written")
	}
}

func TestNormalizeRef(t *testing.T) {
	for in, want := range map[string]string{
		"pause:1":                 "docker.io/library/pause:1",
		"ambit/pause:1":           "docker.io/ambit/pause:1",
		"docker.io/ambit/pause:1": "docker.io/ambit/pause:1",
		"localhost:5000/x:1":      "localhost:5000/x:1",
		"registry.example/a/b:c":  "registry.example/a/b:c",
		"localhost/a:1":           "localhost/a:1",
	} {
		if got := normalizeRef(in); got != want {
			t.Errorf("normalizeRef(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTinyAppImage(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go toolchain")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	archive, err := BuildTinyApp(root, dir)
	if err != nil {
		t.Fatal(err)
	}
	name, err := ArchiveImageName(archive)
	if err != nil {
		t.Fatal(err)
	}
	if name != TestImage {
		t.Fatalf("archive names %q, want %q", name, TestImage)
	}
	st1, _ := os.Stat(archive)
	// unchanged binary: the archive is kept
	if _, err := BuildTinyApp(root, dir); err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(archive)
	if !st1.ModTime().Equal(st2.ModTime()) {
		t.Fatal("the archive was rewritten although the binary did not change")
	}
	ex := t.TempDir()
	if err := images.ExtractArchive(archive, ex); err != nil {
		t.Fatal(err)
	}
	imgs, err := images.ReadLayout(ex)
	if err != nil || len(imgs) != 1 {
		t.Fatalf("layout: %v, %d images", err, len(imgs))
	}
	cfg, err := imgs[0].Image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != "/usr/local/bin/tinyapp" {
		t.Fatalf("entrypoint %q", cfg.Config.Entrypoint)
	}
}

func TestArchiveImageNameRejectsNonArchives(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.tar")
	if err := os.WriteFile(p, []byte("not a tar"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ArchiveImageName(p); err == nil {
		t.Fatal("a file that is not a tar archive named an image")
	}
	if _, err := ArchiveImageName(p + ".missing"); err == nil {
		t.Fatal("a missing file named an image")
	}
}

func TestNewRejectsBadStateDir(t *testing.T) {
	for _, d := range []string{"relative/dir", "/"} {
		if _, err := New(Options{StateDir: d, RepoRoot: "/x"}); err == nil {
			t.Errorf("New accepted state folder %q", d)
		}
	}
}

func TestParseMounts(t *testing.T) {
	info := `27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 27 0:25 /run/netns /run/netns rw shared:5 - ext4 /dev/vda rw
31 27 0:26 / /run/x\040y rw master:3 - tmpfs tmpfs rw
`
	got := parseMounts(info)
	if len(got) != 3 || got[0].shared || !got[1].shared || got[1].point != "/run/netns" || got[2].shared || got[2].point != "/run/x y" {
		t.Fatalf("parseMounts = %+v", got)
	}
}

func TestIsComponentOf(t *testing.T) {
	state := "/var/lib/ambit-cluster"
	names := []string{"etcd", "kubelet"}
	cases := []struct {
		argv []string
		want bool
	}{
		{[]string{"/t/etcd", "--name=ambit", "--data-dir=/var/lib/ambit-cluster/etcd"}, true},
		{[]string{"/t/kubelet", "--config", "/var/lib/ambit-cluster/config/kubelet.yaml"}, true},
		{[]string{"/t/etcd", "--data-dir=/var/lib/ambit-clusterX/etcd"}, false},
		{[]string{"/t/etcd", "--data-dir=/tmp/envtest/etcd"}, false},
		{[]string{"/t/ambit-cluster", "-state-dir", "/var/lib/ambit-cluster/x"}, false},
		{nil, false},
	}
	for _, c := range cases {
		if got := isComponentOf(c.argv, state, names); got != c.want {
			t.Errorf("isComponentOf(%q) = %v, want %v", c.argv, got, c.want)
		}
	}
}
