//go:build netns

package meshbench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/enroll"
)

const (
	trustDomain = "cluster.local"
	benchNS     = "bench"
	settle      = 20 * time.Second // bound on a configuration change reaching the data plane
)

// podSpec is one lab pod as Kubernetes sees it.
type podSpec struct {
	name, node string
	ip         netip.Addr
	netns      string
}

func (p podSpec) uid() string { return "uid-" + p.name }

// configDir is the controller's --config-dir; files are replaced atomically
// (hidden temporary file, then rename; hidden files are not read).
type configDir string

func (c configDir) write(b *testing.B, name, content string) {
	b.Helper()
	tmp := filepath.Join(string(c), "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(string(c), name)); err != nil {
		b.Fatal(err)
	}
}

// namespaceYAML is the benchmark namespace, enrolled in the mesh or not.
func namespaceYAML(ambient bool) string {
	label := ""
	if ambient {
		label = ", labels: {ambit.dev/dataplane-mode: ambient}"
	}
	return fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata: {name: %s%s}\n", benchNS, label)
}

func podsYAML(pods []podSpec) string {
	var b strings.Builder
	for _, p := range pods {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: %[2]s, uid: %[3]s, labels: {app: %[1]s}}
spec: {nodeName: %[4]s, serviceAccountName: %[1]s, containers: [{name: app, image: bench}]}
status: {phase: Running, podIP: %[5]s, podIPs: [{ip: %[5]s}], conditions: [{type: Ready, status: "True"}]}
`, p.name, benchNS, p.uid(), p.node, p.ip)
	}
	return b.String()
}

// ztunnel is one node's ztunnel process and its loopback ports.
type ztunnel struct {
	node                  string
	dir                   string
	admin, metrics, ready string
	proc                  *process
	client                *enroll.Client
}

// startZtunnel runs the ztunnel of a node; host numbers its loopback
// address (see hostAddr).
func startZtunnel(b *testing.B, sp *spawner, bin, node string, host int, xdsAddr string, mca *meshCA) *ztunnel {
	b.Helper()
	z := &ztunnel{node: node, dir: b.TempDir(),
		admin: hostAddr(b, host, 15000), metrics: hostAddr(b, host, 15020), ready: hostAddr(b, host, 15021)}
	sock := filepath.Join(z.dir, "ztunnel.sock")
	args := []string{"-node-name", node,
		"-xds-address", xdsAddr,
		"-xds-insecure", // the controller runs in local mode
		"-xds-state-file", filepath.Join(z.dir, "xds-state.pb"),
		"-ca-address", mca.addr,
		"-ca-root-file", mca.rootFile,
		"-ca-token-file", mca.tokens[node],
		"-enroll-socket", sock,
		"-enroll-state-file", filepath.Join(z.dir, "pods.json"),
		"-admin-address", z.admin,
		"-metrics-address", z.metrics,
		"-ready-address", z.ready,
		"-log-level", "info",
	}
	// AMBIT_BENCH_ZTUNNEL_ARGS: extra ztunnel flags, space-separated, for experiments (e.g. "-gomaxprocs 2").
	args = append(args, strings.Fields(os.Getenv("AMBIT_BENCH_ZTUNNEL_ARGS"))...)
	z.proc = sp.start(b, nil, "ztunnel-"+node, z.dir, bin, args...)
	z.client = enroll.NewClient(sock)
	return z
}

// report tells ztunnel about a pod, as the CNI plugin's ADD does.
func (z *ztunnel) report(b *testing.B, p podSpec) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), settle)
	defer cancel()
	var err error
	for ctx.Err() == nil {
		_, err = z.client.AddPod(ctx, enroll.AddPodRequest{UID: p.uid(), Namespace: benchNS, Name: p.name,
			ContainerID: "sandbox-" + p.name, NetnsPath: p.netns, PodIPs: []string{p.ip.String()}})
		if !errors.Is(err, enroll.ErrUnavailable) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		b.Fatalf("report pod %s to ztunnel-%s: %v", p.name, z.node, err)
	}
}

// waitCaptured waits until ztunnel is ready and shows the pod captured (or
// reported and not captured).
func (z *ztunnel) waitCaptured(b *testing.B, pod string, want bool) {
	b.Helper()
	var last string
	deadline := time.Now().Add(settle)
	for {
		if z.proc.exited() {
			b.Fatalf("ztunnel-%s exited: %v", z.node, z.proc.err)
		}
		code, body, err := httpGet("http://" + z.ready + "/healthz/ready")
		ready := err == nil && code == http.StatusOK
		last = fmt.Sprintf("ready: %d %q %v", code, body, err)
		if ready {
			var d struct {
				Pods []struct {
					Pod struct {
						Name string `json:"name"`
					} `json:"pod"`
					Captured bool   `json:"captured"`
					Error    string `json:"error"`
				} `json:"pods"`
			}
			code, body, err = httpGet("http://" + z.admin + "/config_dump")
			if err == nil && code == http.StatusOK && json.Unmarshal([]byte(body), &d) == nil {
				last = "pod not reported"
				for _, p := range d.Pods {
					if p.Pod.Name == pod {
						if p.Captured == want {
							return
						}
						last = fmt.Sprintf("captured=%v error=%q", p.Captured, p.Error)
					}
				}
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("ztunnel-%s: pod %s captured=%v not reached within %v: %s", z.node, pod, want, settle, last)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// mtlsConnections sums istio_tcp_connections_opened_total samples this
// ztunnel reported as destination over mutual TLS, of those whose labels
// also include every one of want (name="value").
func (z *ztunnel) mtlsConnections(b *testing.B, want ...string) float64 {
	b.Helper()
	code, body, err := httpGet("http://" + z.metrics + "/metrics")
	if err != nil || code != http.StatusOK {
		b.Fatalf("ztunnel-%s metrics: %d %v", z.node, code, err)
	}
	return sumSamples(body, "istio_tcp_connections_opened_total",
		append([]string{`reporter="destination"`, `connection_security_policy="mutual_tls"`}, want...)...)
}

var httpClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func httpGet(url string) (int, string, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// profileZtunnels, with $AMBIT_BENCH_PROFILE_DIR set, records a CPU profile
// of each ztunnel (its admin port's /debug/pprof/profile) for the first
// round of path, into <dir>/<path>-<node>.pprof; the returned function waits
// for them. Without it, it does nothing.
func profileZtunnels(b *testing.B, round int, path string, zs ...*ztunnel) (wait func()) {
	dir := os.Getenv("AMBIT_BENCH_PROFILE_DIR")
	if dir == "" || round != 0 {
		return func() {}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, z := range zs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			secs := int(loadDuration.Seconds()) - 1
			resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", z.admin, secs))
			if err != nil {
				b.Errorf("profile of ztunnel-%s: %v", z.node, err)
				return
			}
			defer resp.Body.Close()
			raw, err := io.ReadAll(resp.Body)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("%s: %s", resp.Status, raw)
			}
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, path+"-"+z.node+".pprof"), raw, 0o644)
			}
			if err != nil {
				b.Errorf("profile of ztunnel-%s: %v", z.node, err)
			}
		}()
	}
	return wg.Wait
}
