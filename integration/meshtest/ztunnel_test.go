//go:build netns

package meshtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/enroll"
)

// ztunnel is one node's ztunnel binary and its files, kept across restarts.
type ztunnel struct {
	t                       *testing.T
	sp                      *spawner
	bin                     string
	node                    string
	dir                     string // socket, pod state, xDS state, logs
	admin, metrics, ready   string // loopback host:port
	xdsAddr, caAddr, caRoot string
	caToken                 string
	proc                    *process
	starts                  int
	client                  *enroll.Client
}

func (z *ztunnel) socket() string   { return filepath.Join(z.dir, "ztunnel.sock") }
func (z *ztunnel) podState() string { return filepath.Join(z.dir, "pods.json") }
func (z *ztunnel) xdsState() string { return filepath.Join(z.dir, "xds-state.pb") }
func (z *ztunnel) addrs() []string  { return []string{z.admin, z.metrics, z.ready} }
func (z *ztunnel) String() string   { return "ztunnel-" + z.node }

// start runs the binary (again) with the same files and ports, and waits
// until its listeners are open. If another process took one of its ports
// meanwhile, it starts again on new ones (ports are not state).
func (z *ztunnel) start() {
	z.t.Helper()
	for attempt := 1; ; attempt++ {
		z.starts++
		z.proc = startProcess(z.t, z.sp, fmt.Sprintf("%s#%d", z, z.starts),
			filepath.Join(z.dir, fmt.Sprintf("ztunnel.%d.log", z.starts)), z.bin,
			"-node-name", z.node,
			"-xds-address", z.xdsAddr,
			"-xds-insecure", // the controller runs in local mode
			"-xds-state-file", z.xdsState(),
			"-ca-address", z.caAddr,
			"-ca-root-file", z.caRoot,
			"-ca-token-file", z.caToken,
			"-enroll-socket", z.socket(),
			"-enroll-state-file", z.podState(),
			"-admin-address", z.admin,
			"-metrics-address", z.metrics,
			"-ready-address", z.ready,
			"-log-level", "debug",
		)
		z.client = enroll.NewClient(z.socket())
		err := z.proc.waitListening(`"msg":"ztunnel started"`, 20*time.Second)
		if err == nil {
			return
		}
		if !errors.Is(err, errAddrInUse) || attempt == 3 {
			z.t.Fatalf("start %s: %v", z, err)
		}
		z.t.Logf("%s: a port was taken by another process; starting on new ports", z)
		z.admin, z.metrics, z.ready = freePort(z.t), freePort(z.t), freePort(z.t)
	}
}

// waitReady polls /healthz/ready until 200.
func (z *ztunnel) waitReady(t *testing.T, timeout time.Duration) {
	t.Helper()
	var last string
	eventually(t, timeout, z.String()+" ready", func() bool {
		if z.proc.exited() {
			t.Fatalf("%s exited: %v", z, z.proc.err)
		}
		code, body, err := httpGet("http://" + z.ready + "/healthz/ready")
		if err != nil {
			last = err.Error()
			return false
		}
		last = fmt.Sprintf("%d %s", code, body)
		return code == http.StatusOK
	}, func() string { return last })
}

// report tells the ztunnel about a pod, as the CNI plugin's ADD does.
func (z *ztunnel) report(t *testing.T, p podSpec, netnsPath string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var err error
	for ctx.Err() == nil {
		_, err = z.client.AddPod(ctx, enroll.AddPodRequest{UID: p.uid(), Namespace: p.ns, Name: p.name,
			ContainerID: "sandbox-" + p.name, NetnsPath: netnsPath, PodIPs: p.ips()})
		if !errors.Is(err, enroll.ErrUnavailable) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("report pod %s to %s: %v", p.name, z, err)
	}
}

// dump is the part of the admin /config_dump the test reads.
type dump struct {
	Node  string `json:"node"`
	Ready string `json:"ready"`
	XDS   struct {
		Connected bool   `json:"connected"`
		FromDisk  bool   `json:"fromDisk"`
		LastError string `json:"lastError"`
	} `json:"xds"`
	Workloads      map[string]workloadDump    `json:"workloads"`
	Authorizations map[string]json.RawMessage `json:"authorizations"`
	Pods           []struct {
		Pod struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"pod"`
		Captured       bool   `json:"captured"`
		Identity       string `json:"identity"`
		OriginalSource bool   `json:"originalSource"`
		Error          string `json:"error"`
	} `json:"pods"`
}

type workloadDump struct {
	Enrolled              bool     `json:"enrolled"`
	MtlsMode              string   `json:"mtlsMode"`
	AuthorizationPolicies []string `json:"authorizationPolicies"`
}

func (z *ztunnel) dump(t *testing.T) dump {
	t.Helper()
	code, body, err := httpGet("http://" + z.admin + "/config_dump")
	if err != nil || code != http.StatusOK {
		t.Fatalf("%s config_dump: %d %v", z, code, err)
	}
	var d dump
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatalf("%s config_dump: %v", z, err)
	}
	return d
}

// captured reports whether the dump shows the pod captured (and its error).
func (d dump) captured(name string) (captured, reported bool, lastErr string) {
	for _, p := range d.Pods {
		if p.Pod.Name == name {
			return p.Captured, true, p.Error
		}
	}
	return false, false, ""
}

// metric sums the samples of a metric whose labels include every pair of
// want, from the Prometheus text on the metrics port.
func (z *ztunnel) metric(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	code, body, err := httpGet("http://" + z.metrics + "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("%s metrics: %d %v", z, code, err)
	}
	sum := 0.0
	for _, s := range parseMetrics(body) {
		if s.name != name {
			continue
		}
		ok := true
		for k, v := range want {
			if s.labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			sum += s.value
		}
	}
	return sum
}

type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// parseMetrics reads the Prometheus text exposition format (samples only).
func parseMetrics(text string) []sample {
	var out []sample
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		s := sample{labels: map[string]string{}}
		rest := line
		if i := strings.IndexAny(line, "{ "); i >= 0 && line[i] == '{' {
			s.name = line[:i]
			rest = line[i+1:]
			for len(rest) > 0 && rest[0] != '}' {
				eq := strings.IndexByte(rest, '=')
				if eq < 0 || eq+1 >= len(rest) || rest[eq+1] != '"' {
					rest = ""
					break
				}
				key := rest[:eq]
				rest = rest[eq+2:]
				var val strings.Builder
				for len(rest) > 0 && rest[0] != '"' {
					if rest[0] == '\\' && len(rest) > 1 {
						switch rest[1] {
						case 'n':
							val.WriteByte('\n')
						default:
							val.WriteByte(rest[1])
						}
						rest = rest[2:]
						continue
					}
					val.WriteByte(rest[0])
					rest = rest[1:]
				}
				if len(rest) > 0 {
					rest = rest[1:] // closing quote
				}
				s.labels[key] = val.String()
				rest = strings.TrimPrefix(rest, ",")
			}
			rest = strings.TrimPrefix(rest, "}")
		} else if i >= 0 {
			s.name, rest = line[:i], line[i:]
		} else {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		s.value = v
		out = append(out, s)
	}
	return out
}

var httpClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func httpGet(url string) (int, string, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// eventually polls cond every 25 ms until it holds or timeout passes;
// detail (optional) describes the last state in the failure message.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool, detail ...func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("timed out after %v waiting for %s", timeout, what)
			for _, d := range detail {
				msg += ": " + d()
			}
			t.Fatal(msg)
		}
		time.Sleep(25 * time.Millisecond)
	}
}
