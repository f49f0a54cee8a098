//go:build netns

package images

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/integration/internal/tier"
)

// This file is in the root tier (build tag netns, run by `make test-netns`):
// it imports the archives into a private containerd built by `make tools`
// (`ctr -n k8s.io images import`, as the one-machine cluster does) and runs
// every image with runc to check the name kubelet will look up, the user,
// /etc/passwd and /tmp. The containerd has its own root, state and socket in
// a temporary folder, no CRI and no NRI plugin, so it cannot disturb another
// containerd on the machine; its containers get a new network namespace
// with only a loopback interface.

const checkerSrc = `package main

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
)

func main() {
	name := "-"
	if u, err := user.LookupId(strconv.Itoa(os.Getuid())); err == nil {
		name = u.Username
	}
	tmp := "ok"
	if st, err := os.Stat("/tmp"); err != nil || st.Mode().Perm() != 0o777 || st.Mode()&os.ModeSticky == 0 {
		tmp = fmt.Sprintf("bad(%v,%v)", st, err)
	} else if f, err := os.CreateTemp("/tmp", "w"); err != nil {
		tmp = "unwritable:" + err.Error()
	} else {
		f.Close()
	}
	fmt.Printf("exe=%s uid=%d gid=%d user=%s tmp=%s\n", os.Args[0], os.Getuid(), os.Getgid(), name, tmp)
}
`

func buildChecker(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(checkerSrc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module checker\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", "checker", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(dir, "checker"))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

const ctrdPrefix = "ambit-ctrd-"

// sweepContainerd removes what a crashed run of this test left: its
// containerd and shims (found by the folder in their command line), mounts
// and the folder itself.
func sweepContainerd(t *testing.T) {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), ctrdPrefix+"*"))
	for _, dir := range dirs {
		rest := strings.TrimPrefix(filepath.Base(dir), ctrdPrefix)
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || syscall.Kill(pid, 0) == nil {
			continue // not ours, or its test is still running
		}
		t.Logf("sweeping %s (test process %d is gone)", dir, pid)
		stopContainerd(dir)
	}
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/ambit-imgtest-*")
	for _, cg := range cgroups {
		pid, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(filepath.Base(cg), "ambit-imgtest-"), "-", 2)[0])
		if err == nil && syscall.Kill(pid, 0) != nil {
			_ = syscall.Rmdir(cg)
		}
	}
}

// stopContainerd kills every process whose command line names dir (the
// containerd started with a config there, its shims), unmounts what is
// mounted below dir and removes it.
func stopContainerd(dir string) {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), dir) {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGTERM)
		for i := 0; i < 50 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if f, err := os.Open("/proc/self/mountinfo"); err == nil {
		var mounts []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
				mounts = append(mounts, fields[4])
			}
		}
		f.Close()
		for i := len(mounts) - 1; i >= 0; i-- {
			_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
		}
	}
	_ = os.RemoveAll(dir)
}

func TestContainerdImportsAndRuns(t *testing.T) {
	tier.RequireRoot(t)
	root, err := tier.RepoRoot()
	tier.Require(t, "the Ambit repository (go.work)", err)
	toolDir := func(group string) string {
		out, err := exec.Command(filepath.Join(root, "hack", "tools.sh"), "dir", group).Output()
		tier.Require(t, "hack/tools.sh dir "+group, err)
		return strings.TrimSpace(string(out))
	}
	ctrdBin, runcBin := toolDir("containerd"), toolDir("runc")
	for _, p := range []string{filepath.Join(ctrdBin, "containerd"), filepath.Join(ctrdBin, "ctr"),
		filepath.Join(ctrdBin, "containerd-shim-runc-v2"), filepath.Join(runcBin, "runc")} {
		_, err := os.Stat(p)
		tier.Require(t, "containerd, ctr, the runc shim and runc from `make tools`", err)
	}
	sweepContainerd(t)

	// Images of the checker program under every binary name.
	checker := buildChecker(t)
	bins := t.TempDir()
	for _, s := range Specs() {
		for _, b := range s.Binaries {
			if err := os.WriteFile(filepath.Join(bins, b), checker, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	built, err := BuildAll(nil, Options{BinDir: bins, Version: "v0.0.0-test"})
	if err != nil {
		t.Fatal(err)
	}

	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", ctrdPrefix, os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopContainerd(dir) })
	sock := filepath.Join(dir, "c.sock")
	config := fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/%s"
    snapshotter = "native"
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc", filepath.Join(dir, "opt"), built[0].Platform.Architecture)
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	path := ctrdBin + ":" + runcBin + ":" + os.Getenv("PATH")
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	daemon := exec.Command(filepath.Join(ctrdBin, "containerd"), "--config", filepath.Join(dir, "config.toml"))
	daemon.Env = append(os.Environ(), "PATH="+path)
	daemon.Stdout, daemon.Stderr = logf, logf
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- daemon.Wait() }()
	t.Cleanup(func() {
		_ = daemon.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = daemon.Process.Kill()
			<-exited
		}
	})
	ctr := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(ctrdBin, "ctr"), append([]string{"-a", sock, "-n", "k8s.io"}, args...)...)
		cmd.Env = append(os.Environ(), "PATH="+path)
		out, err := cmd.Output()
		if ee, ok := err.(*exec.ExitError); ok {
			err = fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, ee.Stderr)
		}
		return string(out), err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := ctr("version"); err == nil {
			break
		} else if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			t.Fatalf("containerd did not answer: %v\n%s", err, log)
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			t.Fatalf("containerd exited: %v\n%s", err, log)
		case <-time.After(200 * time.Millisecond):
		}
	}

	archives := t.TempDir()
	for _, b := range built {
		archive := filepath.Join(archives, b.Spec.Name+".tar")
		if _, err := WriteArchive(archive, b); err != nil {
			t.Fatal(err)
		}
		if out, err := ctr("images", "import", archive); err != nil {
			t.Fatalf("%s: %v\n%s", b.Spec.Name, err, out)
		}
	}
	list, err := ctr("images", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range built {
		found := false
		for _, line := range strings.Split(list, "\n") {
			f := strings.Fields(line)
			if len(f) >= 3 && f[0] == b.Ref {
				found = true
				if f[2] != b.Digest.String() {
					t.Errorf("%s imported with digest %s, built %s", b.Ref, f[2], b.Digest)
				}
			}
		}
		if !found {
			t.Errorf("%s is not in the image list after import:\n%s", b.Ref, list)
		}
	}

	want := map[string]string{
		"controller": "uid=1337 gid=1337 user=ambit", "waypoint": "uid=1337 gid=1337 user=ambit",
		"demo": "uid=1337 gid=1337 user=ambit", "ztunnel": "uid=0 gid=0 user=root",
		"pause": "uid=65535 gid=65535 user=-",
	}
	for _, b := range built {
		id := fmt.Sprintf("ambit-imgtest-%d-%s", os.Getpid(), b.Spec.Name)
		// A cgroup of its own at the top of each hierarchy, which runc
		// removes with the container (ctr's default, /k8s.io/<id>, would
		// leave /k8s.io behind).
		out, err := ctr("run", "--rm", "--snapshotter", "native", "--cgroup", "/"+id, b.Ref, id)
		if err != nil {
			t.Errorf("%s: %v", b.Spec.Name, err)
			continue
		}
		wantLine := fmt.Sprintf("exe=%s %s tmp=ok", b.Spec.Entrypoint(), want[b.Spec.Name])
		if strings.TrimSpace(out) != wantLine {
			t.Errorf("%s printed %q, want %q", b.Spec.Name, strings.TrimSpace(out), wantLine)
		}
	}
}
