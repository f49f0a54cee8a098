//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/controller/ambitctl"
	"github.com/ambit-mesh/ambit/integration/internal/tier"
)

// env is one end-to-end run: a cluster, its kubectl and the image tag.
type env struct {
	t          *testing.T
	kubeconfig string
	kubectl    string
	version    string
	root       string
	overlay    string
	kube       kubernetes.Interface
	// diagnosed is set once a failed step saved the cluster's state.
	diagnosed bool
}

func newEnv(t *testing.T) *env {
	t.Helper()
	tier.RequireRoot(t)
	e := &env{t: t}
	for _, v := range []struct {
		name string
		dst  *string
	}{
		{"AMBIT_E2E_KUBECONFIG", &e.kubeconfig},
		{"AMBIT_E2E_KUBECTL", &e.kubectl},
		{"AMBIT_E2E_VERSION", &e.version},
	} {
		*v.dst = os.Getenv(v.name)
		var err error
		if *v.dst == "" {
			err = fmt.Errorf("$%s is not set: run the tests through hack/e2e.sh (make e2e)", v.name)
		}
		tier.Require(t, v.name, err)
	}
	root, err := tier.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	e.root = root
	cfg, err := clientcmd.BuildConfigFromFlags("", e.kubeconfig)
	if err != nil {
		t.Fatalf("kubeconfig %s: %v", e.kubeconfig, err)
	}
	e.kube, err = kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.overlay = e.writeOverlay()
	return e
}

// sub is e for the subtest t: helpers that fail fail the subtest, not its
// parent (FailNow must be called from the test's own goroutine).
func (e *env) sub(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

// writeOverlay writes the kustomization an installer uses: manifests/ as the
// base, with the images' tag set to the version under test.
func (e *env) writeOverlay() string {
	dir := e.t.TempDir()
	rel, err := filepath.Rel(dir, filepath.Join(e.root, "manifests"))
	if err != nil {
		e.t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- %s\nimages:\n", rel)
	for _, name := range []string{"controller", "ztunnel", "waypoint"} {
		fmt.Fprintf(&b, "- name: docker.io/ambit/%s\n  newTag: %q\n", name, e.version)
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(b.String()), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return dir
}

// k runs kubectl against the cluster and returns its stdout.
func (e *env) k(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.kubectl, append([]string{"--kubeconfig", e.kubeconfig}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// mustK is k that fails the test on error.
// mustAmbitctl runs ambitctl (in this process, with the cluster's
// kubeconfig) and returns its standard output; a non-zero exit fails the
// test.
func (e *env) mustAmbitctl(args ...string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.t.Context(), 3*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	code := ambitctl.Run(ctx, append(args, "-kubeconfig", e.kubeconfig), &out, &errOut)
	e.t.Logf("ambitctl %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
	if code != ambitctl.ExitOK {
		e.t.Fatalf("ambitctl %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
	}
	return out.String()
}

func (e *env) mustK(stdin string, args ...string) string {
	e.t.Helper()
	out, err := e.k(stdin, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// apply applies YAML with server-side apply.
func (e *env) apply(yaml string) {
	e.t.Helper()
	e.mustK(yaml, "apply", "--server-side", "--field-manager=ambit-e2e", "--force-conflicts", "-f", "-")
}

// eventually polls f until it returns nil or timeout passes.
func eventually(t *testing.T, what string, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(time.Second)
	}
}

// answer is what ambit-demo serve replies.
type answer struct {
	Service   string `json:"service"`
	Version   string `json:"version"`
	Pod       string `json:"pod"`
	Namespace string `json:"namespace"`
	// Remote is the client's address as the server saw it.
	Remote string `json:"remote"`
	// Headers are the request's headers as the server got them (names in
	// lower case).
	Headers map[string]string `json:"headers"`
}

// get runs `ambit-demo get` inside the client pod of ns: a new connection
// from inside the pod, as the application would open it. Any status but 200
// is an error.
func (e *env) get(ns, url string, headers ...string) (answer, error) {
	code, body, err := e.request(ns, "client", "GET", url, headers...)
	if err != nil {
		return answer{}, err
	}
	if code != http.StatusOK {
		return answer{}, fmt.Errorf("GET %s: status %d: %s", url, code, strings.TrimSpace(body))
	}
	var a answer
	if err := json.Unmarshal([]byte(body), &a); err != nil {
		return answer{}, fmt.Errorf("answer %q: %v", body, err)
	}
	return a, nil
}

// request sends one request from the first container of deployment deploy
// in ns with `ambit-demo get` and returns the status code and body. err is
// set only when no HTTP answer came (or kubectl failed).
func (e *env) request(ns, deploy, method, url string, headers ...string) (int, string, error) {
	flags := []string{"-X", method}
	for _, h := range headers {
		flags = append(flags, "-H", h)
	}
	return e.demoGet(ns, deploy, flags, url)
}

// demoGet runs ambit-demo get with flags in deploy's pod and returns the
// status code and body of the answer.
func (e *env) demoGet(ns, deploy string, flags []string, url string) (int, string, error) {
	args := []string{"--kubeconfig", e.kubeconfig, "-n", ns, "exec", "deploy/" + deploy, "--",
		"/usr/local/bin/ambit-demo", "get", "-timeout", "5s"}
	args = append(append(args, flags...), url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.kubectl, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	runErr := cmd.Run()
	// ambit-demo get prints "HTTP/1.1 200 OK" to stderr when an answer came.
	for _, line := range strings.Split(errb.String(), "\n") {
		var proto string
		var code int
		if n, _ := fmt.Sscanf(line, "%s %d", &proto, &code); n == 2 && strings.HasPrefix(proto, "HTTP/") {
			return code, out.String(), nil
		}
	}
	if runErr == nil {
		runErr = errors.New("no status line")
	}
	return 0, "", fmt.Errorf("ambit-demo get %s %s from %s/%s: %v: %s", strings.Join(flags, " "), url, ns, deploy, runErr, strings.TrimSpace(errb.String()))
}

// pods returns the pods of ns matching selector.
func (e *env) pods(ns, selector string) []corev1.Pod {
	e.t.Helper()
	l, err := e.kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		e.t.Fatal(err)
	}
	return l.Items
}

// scrape reads the Prometheus metrics of a pod (reached from the node, as
// Prometheus would) and returns the families by name.
func scrape(podIP string, port int) (map[string]*dto.MetricFamily, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://%s:%d/metrics", podIP, port))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("metrics of %s:%d: %s: %s", podIP, port, resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// sum adds the values of the samples of family name whose labels include
// every pair of match.
func sum(fams map[string]*dto.MetricFamily, name string, match map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	var total float64
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		ok := true
		for k, v := range match {
			if labels[k] != v {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			total += m.GetCounter().GetValue()
		case m.Gauge != nil:
			total += m.GetGauge().GetValue()
		case m.Histogram != nil:
			total += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return total
}

// scrapeAll sums a metric over every running pod of ns matching selector.
func (e *env) scrapeAll(ns, selector string, port int, name string, match map[string]string) (float64, error) {
	var total float64
	var errs []error
	n := 0
	for _, p := range e.pods(ns, selector) {
		if p.Status.PodIP == "" || p.Status.Phase != corev1.PodRunning {
			continue
		}
		fams, err := scrape(p.Status.PodIP, port)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		n++
		total += sum(fams, name, match)
	}
	if n == 0 {
		return 0, fmt.Errorf("no running pod of %s/%s answered: %v", ns, selector, errors.Join(errs...))
	}
	return total, errors.Join(errs...)
}

// step runs one step of the scenario as a subtest; the first step that fails
// saves the cluster's state for diagnosis (see diagnose).
func (e *env) step(t *testing.T, name string, f func(t *testing.T)) bool {
	ok := t.Run(name, f)
	if !ok && !e.diagnosed {
		e.diagnosed = true
		e.diagnose(name)
	}
	return ok
}

// diagnose saves what is needed to understand a failed step, before later
// steps change the cluster: every pod, workload and event, the full logs of
// Ambit's pods and the test application, ztunnel's enrolment state and CNI
// log, and the tails of the kubelet's and containerd's logs, into
// bin/test-logs/e2e-diag/<step>/. The test log gets a summary (pods, recent
// events, ztunnel's last lines), which is what CI keeps.
func (e *env) diagnose(stepName string) {
	dir := filepath.Join(e.root, "bin", "test-logs", "e2e-diag", stepName)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Logf("diagnostics: %v", err)
		return
	}
	save := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			e.t.Logf("diagnostics: %v", err)
		}
	}
	kout := func(args ...string) string {
		out, err := e.k("", args...)
		if err != nil {
			out += "\n" + err.Error()
		}
		return out
	}
	pods := kout("get", "pods,deployments,daemonsets,services,gateways", "-A", "-o", "wide")
	save("objects.txt", pods)
	events := kout("get", "events", "-A", "--sort-by=.lastTimestamp")
	save("events.txt", events)
	var ztunnelLog string
	for _, ns := range []string{systemNS, appNS} {
		l, err := e.kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			e.t.Logf("diagnostics: pods of %s: %v", ns, err)
			continue
		}
		for _, p := range l.Items {
			out := kout("-n", ns, "logs", p.Name, "--all-containers", "--prefix", "--tail=-1", "--timestamps")
			save("logs-"+ns+"-"+p.Name+".txt", out)
			if strings.HasPrefix(p.Name, "ztunnel-") {
				ztunnelLog += out
				// Its admin port (localhost in the pod): what it holds,
				// and where every goroutine is, should it be stuck.
				for name, path := range map[string]string{"config-dump.json": "/config_dump", "goroutines.txt": "/debug/pprof/goroutine?debug=2"} {
					body, err := e.adminGet(ns, p.Name, 15000, path)
					if err != nil {
						body = err.Error()
					}
					save(p.Name+"-"+name, body)
				}
			}
		}
	}
	// The node's side: ztunnel's state (host path /var/run/ambit) and the
	// cluster's component logs (next to the kubeconfig).
	for _, f := range []string{"/var/run/ambit/pods.json", "/var/run/ambit/cni.log"} {
		if b, err := os.ReadFile(f); err == nil {
			save("node-"+filepath.Base(f), string(b))
		}
	}
	clusterLogs := filepath.Join(filepath.Dir(e.kubeconfig), "logs")
	for _, f := range []string{"kubelet.log", "containerd.log"} {
		if b, err := os.ReadFile(filepath.Join(clusterLogs, f)); err == nil {
			save("node-"+f, tail(string(b), 3000))
		}
	}
	cniLog, _ := os.ReadFile("/var/run/ambit/cni.log")
	e.t.Logf("diagnostics of step %s saved in %s\n== objects\n%s\n== recent events\n%s\n== ztunnel (last lines)\n%s\n== CNI plugin log (last lines)\n%s",
		stepName, dir, pods, tail(events, 40), tail(ztunnelLog, 80), tail(string(cniLog), 20))
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// adminGet fetches path from a port of pod that listens on localhost only,
// through kubectl port-forward.
func (e *env) adminGet(ns, pod string, port int, path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.kubectl, "--kubeconfig", e.kubeconfig, "-n", ns, "port-forward", "--address", "127.0.0.1", "pod/"+pod, fmt.Sprintf(":%d", port))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return "", err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// "Forwarding from 127.0.0.1:NNNNN -> 15000"
	var local, first string
	if sc := bufio.NewScanner(out); sc.Scan() {
		first = sc.Text()
	}
	for _, f := range strings.Fields(first) {
		if strings.HasPrefix(f, "127.0.0.1:") {
			local = f
			break
		}
	}
	if local == "" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return "", fmt.Errorf("port-forward to %s/%s:%d: unexpected output %q %q", ns, pod, port, first, stderr.String())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+local+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
