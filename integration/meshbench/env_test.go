//go:build netns

package meshbench

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/controller/ca"
	"github.com/ambit-mesh/ambit/integration/internal/castub"
	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// tools are the external programs the benchmark runs.
type tools struct {
	fortio, haproxy               string
	controller, ztunnel, waypoint string
}

// findTools locates fortio (bin/tools/bench-<version>/fortio, or $FORTIO) and
// haproxy, and builds the controller, ztunnel and waypoint from the
// workspace the way `make build` and the images do (static, no cgo, no
// symbol tables), so that the memory measured is that of what ships: a
// cgo build links libc and its resolver, about 2.5 MiB more RSS. A missing
// program skips the benchmark, or fails it under CI=true.
func findTools(b *testing.B) tools {
	b.Helper()
	root, err := tier.RepoRoot()
	tier.Require(b, "the Ambit repository (go.work)", err)
	var t tools
	t.fortio = os.Getenv("FORTIO")
	if t.fortio == "" {
		// The pinned version's folder, as hack/tools.sh names it.
		out, err := exec.Command(filepath.Join(root, "hack", "tools.sh"), "dir", "bench").Output()
		if err != nil {
			b.Fatalf("hack/tools.sh dir bench: %v", err)
		}
		t.fortio = filepath.Join(strings.TrimSpace(string(out)), "fortio")
	}
	if _, err := os.Stat(t.fortio); err != nil {
		tier.Require(b, "fortio (make tools)", fmt.Errorf("%w: run make tools", err))
	}
	t.haproxy, err = exec.LookPath("haproxy")
	tier.Require(b, "haproxy (make deps: Debian package haproxy)", err)
	goTool, err := exec.LookPath("go")
	tier.Require(b, "the go command", err)

	dir := b.TempDir()
	cmd := exec.Command(goTool, "build", "-trimpath", "-ldflags", "-s -w", "-o", dir+string(filepath.Separator),
		"github.com/ambit-mesh/ambit/controller/cmd/controller",
		"github.com/ambit-mesh/ambit/ztunnel/cmd/ztunnel",
		"github.com/ambit-mesh/ambit/waypoint/cmd/waypoint")
	cmd.Dir = filepath.Join(root, "integration")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build controller, ztunnel and waypoint: %v\n%s", err, out)
	}
	t.controller, t.ztunnel, t.waypoint = filepath.Join(dir, "controller"), filepath.Join(dir, "ztunnel"), filepath.Join(dir, "waypoint")
	return t
}

// process is one running program; its output goes to a log file that is
// shown when the benchmark fails.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
}

// spawner starts processes from one OS thread that lives as long as the
// benchmark, so that Pdeathsig (sent when the parent thread ends) kills the
// children only if the benchmark process dies. start runs in the host
// network namespace; netnsStart lets a netlab Pod or Node start the command
// in its namespace on that same thread.
type spawner struct{ req chan func() }

func newSpawner(b *testing.B) *spawner {
	s := &spawner{req: make(chan func())}
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer close(done)
		for f := range s.req {
			f()
		}
	}()
	b.Cleanup(func() { close(s.req); <-done })
	return s
}

// starter starts a command somewhere: exec.Cmd.Start for the host
// namespace, netlab.Pod.Start for a pod.
type starter func(*exec.Cmd) error

// start runs bin in the namespace of where (nil: the host), stopping it
// (TERM, then KILL) when the benchmark ends at the latest. Its output goes
// to <logDir>/<name>.log, or into $AMBIT_BENCH_LOG_DIR when set (kept
// after the run).
func (s *spawner) start(b *testing.B, where starter, name, logDir, bin string, args ...string) *process {
	b.Helper()
	if d := os.Getenv("AMBIT_BENCH_LOG_DIR"); d != "" {
		logDir = d // kept after the run, for analysis
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if where == nil {
		where = (*exec.Cmd).Start
	}
	errc := make(chan error, 1)
	s.req <- func() { errc <- where(cmd) }
	if err := <-errc; err != nil {
		f.Close()
		b.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	b.Cleanup(func() {
		if err := p.stop(); err != nil && !b.Failed() {
			b.Logf("%s: %v", name, err)
		}
		if b.Failed() {
			out, _ := os.ReadFile(logPath)
			if len(out) > 16<<10 {
				out = out[len(out)-16<<10:]
			}
			b.Logf("---- %s log (%s) ----\n%s", name, logPath, out)
		}
	})
	return p
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to 10 s, then SIGKILL.
func (p *process) stop() error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within 10 s of SIGTERM; killed", p.name)
	}
}

// hostAddr returns a loopback address for a listener of the host network
// namespace: a fixed port on an address of 127.0.0.0/8 derived from the
// benchmark's PID and host (which Linux routes to lo without configuration).
// A port picked at random on 127.0.0.1 could be taken meanwhile as the
// ephemeral source port of some outgoing connection on this busy machine;
// nothing connects *from* these addresses.
func hostAddr(b *testing.B, host, port int) string {
	b.Helper()
	pid := os.Getpid()
	addr := fmt.Sprintf("127.%d.%d.%d:%d", 100+(pid/250)%150, 1+pid%250, host, port)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		b.Fatalf("loopback address for a listener: %v", err)
	}
	ln.Close()
	return addr
}

// The mesh CA. Local mode has no CA, so the benchmark serves the
// controller's CA code (controller/ca) on loopback, outside the data path;
// each ztunnel authenticates with a token bound to its node, and the CA's pod
// look-ups are answered from the benchmark's pod list.

type meshCA struct {
	addr, rootFile string
	tokens         map[string]string // node -> token file
	waypointToken  string            // the waypoint's token file
}

// benchAuth stands for TokenReview: the ztunnels' tokens (castub.TokenAuth,
// bound to a node) and the waypoint's, which authenticates as the
// waypoint's own service account (bench/waypoint), as its projected token
// does in a cluster.
type benchAuth struct {
	ztunnels      castub.TokenAuth
	waypointToken string
}

func (a benchAuth) Authenticate(ctx context.Context, token string) (ca.Caller, error) {
	if token == a.waypointToken {
		return ca.Caller{Username: "system:serviceaccount:" + benchNS + ":" + waypointName,
			Namespace: benchNS, ServiceAccount: waypointName, PodName: waypointName, PodUID: "uid-" + waypointName}, nil
	}
	return a.ztunnels.Authenticate(ctx, token)
}

func startCA(b *testing.B, dir string, pods []podSpec, nodes []string) *meshCA {
	b.Helper()
	authority, err := identity.NewRootAuthority(trustDomain, 24*time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	var list castub.Pods
	for _, p := range pods {
		list = append(list, corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: benchNS, UID: types.UID(p.uid())},
			Spec:       corev1.PodSpec{NodeName: p.node, ServiceAccountName: p.name},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning},
		})
	}
	m := &meshCA{rootFile: filepath.Join(dir, "root-cert.pem"), tokens: map[string]string{}}
	auth := benchAuth{ztunnels: castub.TokenAuth{}, waypointToken: "token-of-the-waypoint"}
	m.waypointToken = filepath.Join(dir, "token-waypoint")
	if err := os.WriteFile(m.waypointToken, []byte(auth.waypointToken), 0o600); err != nil {
		b.Fatal(err)
	}
	for _, n := range nodes {
		token := "token-of-ztunnel-on-" + n
		auth.ztunnels[token] = n
		m.tokens[n] = filepath.Join(dir, "token-"+n)
		if err := os.WriteFile(m.tokens[n], []byte(token), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.WriteFile(m.rootFile, identity.EncodeCertsPEM(authority.Cert), 0o644); err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	srv, err := ca.NewWithAuthority(authority, auth, list, ca.Config{TrustDomain: trustDomain}, log)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	m.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ctx, ln); err != nil {
			b.Errorf("CA: %v", err)
		}
	})
	b.Cleanup(func() { cancel(); wg.Wait() })
	return m
}
