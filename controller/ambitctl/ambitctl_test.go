package ambitctl

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Run(t.Context(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestUsage(t *testing.T) {
	code, out, _ := run(t)
	if code != ExitUsage || !strings.Contains(out, "waypoint apply") || !strings.Contains(out, "ztunnel-config") {
		t.Errorf("no arguments: exit %d, output %q; want the usage and %d", code, out, ExitUsage)
	}
	if code, out, _ := run(t, "help"); code != ExitOK || !strings.Contains(out, "check") {
		t.Errorf("help: exit %d, output %q", code, out)
	}
	code, _, errOut := run(t, "frobnicate")
	if code != ExitUsage || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = run(t, "waypoint", "explode")
	if code != ExitUsage || !strings.Contains(errOut, `unknown command "waypoint explode"`) {
		t.Errorf("unknown subcommand: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = run(t, "check", "-h")
	if code != ExitOK || !strings.Contains(errOut, "-kubeconfig") || !strings.Contains(errOut, "usage: ambitctl check") {
		t.Errorf("check -h: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = run(t, "waypoint", "list", "-bogus")
	if code != ExitUsage || !strings.Contains(errOut, "flag provided but not defined: -bogus") {
		t.Errorf("unknown flag: exit %d, stderr %q", code, errOut)
	}
}

func TestVersion(t *testing.T) {
	// No cluster: ambitctl's own version, and why the cluster's are missing.
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "none"))
	for _, args := range [][]string{{"version"}, {"version", "-short"}, {"-version"}, {"--version"}} {
		code, out, errOut := run(t, args...)
		if code != ExitOK || !strings.HasPrefix(out, "ambitctl ") || strings.Count(out, "\n") != 1 {
			t.Errorf("%q: exit %d, output %q", args, code, out)
		}
		if short := len(args) > 1 || strings.HasPrefix(args[0], "-"); short == strings.Contains(errOut, "the cluster's versions are unknown") {
			t.Errorf("%q: stderr %q", args, errOut)
		}
	}
	if code, _, _ := run(t, "version", "extra"); code != ExitUsage {
		t.Errorf("version extra: exit %d, want %d", code, ExitUsage)
	}
}

// TestKubeconfigErrors: a command that needs the cluster fails clearly
// when the kubeconfig is missing or broken, before doing anything.
func TestKubeconfigErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	code, _, errOut := run(t, "check", "-kubeconfig", missing)
	if code != ExitFailed || !strings.Contains(errOut, "kubeconfig") || !strings.Contains(errOut, "nope") {
		t.Errorf("missing kubeconfig: exit %d, stderr %q", code, errOut)
	}
	broken := filepath.Join(t.TempDir(), "broken")
	if err := os.WriteFile(broken, []byte("apiVersion: v1\nkind: Config\nclusters: [}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = run(t, "waypoint", "list", "-kubeconfig", broken)
	if code != ExitFailed || !strings.Contains(errOut, "kubeconfig") {
		t.Errorf("broken kubeconfig: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = run(t, "check", "-kubeconfig", writeKubeconfig(t, "https://127.0.0.1:1"), "-context", "elsewhere")
	if code != ExitFailed || !strings.Contains(errOut, `context "elsewhere"`) {
		t.Errorf("unknown context: exit %d, stderr %q", code, errOut)
	}
}

// TestCheckUnreachable: check reports an API server it cannot reach as a
// failed check, with the address.
func TestCheckUnreachable(t *testing.T) {
	code, out, errOut := run(t, "check", "-kubeconfig", writeKubeconfig(t, "https://127.0.0.1:1"), "-request-timeout", "2s")
	if code != ExitFailed || !strings.Contains(out, "[FAIL] Kubernetes API at https://127.0.0.1:1") || !strings.Contains(errOut, "1 of 1 checks failed") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func writeKubeconfig(t *testing.T, server string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	doc := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "` + server + `", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: here, context: {cluster: c, user: u, namespace: demo}}]
current-context: here
`
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestUsageErrorsBeforeTheCluster: bad arguments are refused as usage
// errors (exit 2), after the kubeconfig is read but before any request.
func TestUsageErrorsBeforeTheCluster(t *testing.T) {
	kc := writeKubeconfig(t, "https://127.0.0.1:1")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"waypoint", "apply", "-name", "Not_A_Name"}, `-name "Not_A_Name"`},
		{[]string{"waypoint", "apply", "-for", "everything"}, `-for "everything": want service, workload, all or none`},
		{[]string{"waypoint", "apply", "extra"}, "takes no arguments"},
		{[]string{"waypoint", "list", "extra"}, "takes no arguments"},
		{[]string{"check", "extra"}, "takes no arguments"},
		{[]string{"ztunnel-config", "sockets"}, `section "sockets": want one of pods, workloads, services, policies, certificates, all`},
		{[]string{"ztunnel-config", "pods", "workloads"}, "one section at most"},
		{[]string{"ztunnel-config", "-o", "yaml"}, `-o "yaml": want table or json`},
		{[]string{"waypoint-config", "a", "b"}, "one waypoint at most"},
		{[]string{"waypoint-config", "-o", "yaml"}, `-o "yaml": want table or json`},
	} {
		code, _, errOut := run(t, append(tc.args, "-kubeconfig", kc)...)
		if code != ExitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", tc.args, code, errOut, ExitUsage, tc.want)
		}
	}
}

func TestParseInterspersed(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	n := fs.String("n", "", "")
	all := fs.Bool("A", false, "")
	got, err := parseInterspersed(fs, []string{"a", "-n", "ns", "b", "-A", "--", "-c"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "b", "-c"}; !slices.Equal(got, want) || *n != "ns" || !*all {
		t.Errorf("positional %q (want %q), -n %q, -A %v", got, want, *n, *all)
	}
}

func TestFindCommand(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		name     string
		rest     []string
		notFound bool
	}{
		{args: []string{"waypoint", "delete", "a", "b"}, name: "waypoint delete", rest: []string{"a", "b"}},
		{args: []string{"check", "-n", "x"}, name: "check", rest: []string{"-n", "x"}},
		{args: []string{"waypoint"}, notFound: true},
		{args: []string{"ztunnel-config"}, name: "ztunnel-config", rest: []string{}},
	} {
		cmd, rest, ok := findCommand(tc.args)
		if ok == tc.notFound || (ok && (cmd.name != tc.name || !slices.Equal(rest, tc.rest))) {
			t.Errorf("%q: %q %q %v", tc.args, cmd.name, rest, ok)
		}
	}
}

func TestMinorOf(t *testing.T) {
	for in, want := range map[string]string{"v1.6.3": "v1.6", "v1.6.0": "v1.6", "v1.7": "v1.7", "dev": "dev"} {
		if got := minorOf(in); got != want {
			t.Errorf("minorOf(%q) = %q, want %q", in, got, want)
		}
	}
}

// A config dump as ztunnel writes it (ztunnel/daemon ConfigDump; the
// integration module's TestZtunnelDumpDecodes checks the two agree).
const sampleDump = `{
  "node": "node-a",
  "ready": "ready",
  "xds": {"connected": false, "fromDisk": true, "lastError": "connection refused", "resources": {}, "acks": 3, "nacks": 2},
  "workloads": {
    "demo/client-1": {"name": "demo/client-1", "namespace": "demo", "node": "node-a", "addresses": ["10.0.0.5"], "enrolled": true, "ready": true, "identity": "spiffe://cluster.local/ns/demo/sa/client"},
    "demo/echo-1": {"name": "demo/echo-1", "namespace": "demo", "node": "node-b", "addresses": ["10.0.1.7", "fd00::7"], "enrolled": true, "waypoint": {"gateway": "demo/waypoint"}, "futureField": 1}
  },
  "services": {
    "demo/echo": {"name": "demo/echo", "namespace": "demo", "vips": ["10.96.0.10"], "ports": [{"port": 8080, "targetPort": 8080}], "endpoints": [{"workload": "demo/echo-1", "address": "10.0.1.7", "ready": true}, {"workload": "demo/echo-2"}]}
  },
  "authorizations": {
    "demo/deny-all": {"name": "demo/deny-all", "namespace": "demo", "scope": "SCOPE_NAMESPACE", "action": "ACTION_DENY", "rules": [{}]}
  },
  "pods": [
    {"pod": {"uid": "u1", "namespace": "demo", "name": "client-1", "netnsPath": "/var/run/netns/x", "podIPs": ["10.0.0.5"]}, "captured": true, "state": "captured", "identity": "spiffe://cluster.local/ns/demo/sa/client"},
    {"pod": {"uid": "u2", "namespace": "demo", "name": "broken", "netnsPath": "/nope", "podIPs": null}, "captured": false, "state": "failed", "error": "open /nope: no such file"}
  ],
  "certificates": {"identities": [{"id": "spiffe://cluster.local/ns/demo/sa/client", "serial": "1f", "notAfter": "2026-11-29T10:00:00Z", "valid": true, "nextRefresh": "2026-11-28T22:00:00Z"}], "roots": [{"subject": "O=ambit", "serial": "01", "notAfter": "2036-01-01T00:00:00Z"}]},
  "configGeneration": 7
}`

func TestZtunnelTables(t *testing.T) {
	var d ZtunnelDump
	if err := jsonUnmarshal(sampleDump, &d); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := writeSectionTable(&buf, &d, "all", ""); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"ztunnel on node node-a: ready: ready; controller: not connected, running on the configuration saved on disk (last error: connection refused); rejected 2 configuration updates",
		"demo       echo-1    10.0.1.7,fd00::7",
		"demo       echo  10.96.0.10",
		"demo       deny-all  NAMESPACE  DENY",
		"demo       client-1  10.0.0.5",
		"captured",
		"failed: open /nope: no such file",
		"10.0.1.7,fd00::7",
		"demo/waypoint",
		"10.96.0.10",
		"8080->8080",
		"1/2",
		"deny-all",
		"2026-11-29T10:00:00Z",
		"root O=ambit",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("tables lack %q:\n%s", want, out)
		}
	}
	buf.Reset()
	if err := writeSectionTable(&buf, &d, "all", "other"); err != nil {
		t.Fatal(err)
	}
	if out := buf.String(); strings.Contains(out, "client-1") || strings.Contains(out, "echo") || strings.Contains(out, "deny-all") ||
		strings.Contains(out, "sa/client") || !strings.Contains(out, "root O=ambit") {
		t.Errorf("tables of namespace other show another namespace's rows, or no roots:\n%s", out)
	}
	buf.Reset()
	if err := writeSectionJSON(&buf, []byte(sampleDump), "policies"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), `"action": "ACTION_DENY"`) || strings.Contains(buf.String(), "client-1") {
		t.Errorf("policies JSON:\n%s", buf.String())
	}
	d.Workloads["demo/bad"] = []byte(`{"name": 5}`)
	if err := writeSectionTable(&buf, &d, "workloads", ""); err == nil || !strings.Contains(err.Error(), "demo/bad") {
		t.Errorf("a workload that does not decode: %v, want an error naming it", err)
	}
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// A waypoint's config dump as it writes it (waypoint/cmd/waypoint
// configDump; the e2e step Ambitctl reads a real one).
const sampleWaypointDump = `{
  "gateway": "demo/waypoint",
  "identity": "spiffe://cluster.local/ns/demo/sa/waypoint",
  "ready": "ready",
  "xds": {"connected": true, "fromDisk": false, "lastError": "an old one", "resources": {"a": 1}, "acks": 4, "nacks": 0},
  "config": {"routes": [{"service": "demo/echo:8080", "protocol": "HTTP", "rules": 2}, {"service": "demo/db:5432", "protocol": "TCP", "rules": 0}, {"service": "demo/misc:9090", "protocol": "UNSPECIFIED", "rules": 0}],
    "services": 3, "workloads": 5, "authorizations": ["demo/get-only"], "generation": 9, "draining": ["demo/old:80"]},
  "certificates": {"identities": [{"id": "spiffe://cluster.local/ns/demo/sa/waypoint", "serial": "2a", "valid": true}], "roots": []},
  "version": "waypoint dev (go1.26.0, linux/amd64)"
}`

func TestWaypointConfigTables(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteWaypointConfig(&buf, []byte(sampleWaypointDump), "table"); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"waypoint demo/waypoint (waypoint dev (go1.26.0, linux/amd64)), identity spiffe://cluster.local/ns/demo/sa/waypoint",
		"ready: ready; controller: connected\n",
		"configuration: 3 services, 5 workloads; policies in force: demo/get-only",
		"draining (left the configuration, still served): demo/old:80",
		"demo/echo:8080  HTTP      2",
		"demo/db:5432    TCP       0",
		"demo/misc:9090  sniffed   0",
		"spiffe://cluster.local/ns/demo/sa/waypoint  2a",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("waypoint-config lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "an old one") {
		t.Errorf("a connected waypoint's old error shown:\n%s", out)
	}
	buf.Reset()
	if err := WriteWaypointConfig(&buf, []byte(sampleWaypointDump), "json"); err != nil || !strings.Contains(buf.String(), `"acks": 4`) {
		t.Errorf("json: %v\n%s", err, buf.String())
	}
	if err := WriteWaypointConfig(&buf, []byte("<html>"), "table"); err == nil || !strings.Contains(err.Error(), "not a waypoint config dump") {
		t.Errorf("not JSON: %v", err)
	}
}

// TestCaptureResults: check -pods compares the pods that should be in the
// mesh with a node's ztunnel dump, by UID.
func TestCaptureResults(t *testing.T) {
	var d ZtunnelDump
	if err := jsonUnmarshal(sampleDump, &d); err != nil {
		t.Fatal(err)
	}
	d.Pods = append(d.Pods, ZtunnelPod{State: "unknown"})
	d.Pods[2].Pod.UID = "u3"
	pod := func(name, uid string) corev1.Pod {
		return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, UID: types.UID(uid)}}
	}
	zt := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ambit-system", Name: "ztunnel-x"}}
	n, rs := captureResults("node-a", zt, []corev1.Pod{pod("client-1", "u1"), pod("broken", "u2"), pod("late", "u3"), pod("never", "u4")}, &d)
	if n != 1 || len(rs) != 3 {
		t.Fatalf("%d captured, results %+v; want 1 and 3", n, rs)
	}
	for i, want := range []struct{ status, what, hint string }{
		{checkFail, "pod demo/broken (node node-a): capture failed: open /nope: no such file", "kubectl -n ambit-system logs ztunnel-x"},
		{checkWarn, "pod demo/late (node node-a): unknown in ztunnel's configuration, not captured", "controller"},
		{checkWarn, "pod demo/never (node node-a): never reported to ztunnel, not captured", "restart it"},
	} {
		if rs[i].status != want.status || rs[i].what != want.what || !strings.Contains(rs[i].hint, want.hint) {
			t.Errorf("result %d: %+v, want %+v", i, rs[i], want)
		}
	}
}

func TestExpectCaptured(t *testing.T) {
	enrolled := map[string]bool{"demo": true}
	base := func() *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "p"},
			Spec: corev1.PodSpec{NodeName: "n"}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	}
	if !expectCaptured(base(), enrolled) {
		t.Error("a running pod of an enrolled namespace: not expected")
	}
	for what, change := range map[string]func(*corev1.Pod){
		"another namespace": func(p *corev1.Pod) { p.Namespace = "other" },
		"opted out":         func(p *corev1.Pod) { p.Labels = map[string]string{"ambit.dev/dataplane-mode": "none"} },
		"host network":      func(p *corev1.Pod) { p.Spec.HostNetwork = true },
		"pending":           func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending },
		"unscheduled":       func(p *corev1.Pod) { p.Spec.NodeName = "" },
	} {
		p := base()
		change(p)
		if expectCaptured(p, enrolled) {
			t.Errorf("%s: expected captured", what)
		}
	}
}

func TestZtunnelStateResults(t *testing.T) {
	var d ZtunnelDump
	if err := jsonUnmarshal(sampleDump, &d); err != nil {
		t.Fatal(err)
	}
	zt := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ambit-system", Name: "ztunnel-x"}}
	rs := ztunnelStateResults("node-a", zt, &d)
	if len(rs) != 2 || rs[0].what != "node node-a: ztunnel not connected to the controller, running on its last configuration: connection refused" ||
		rs[1].what != "node node-a: ztunnel rejected 2 configuration updates" || !strings.Contains(rs[0].hint, "kubectl -n ambit-system logs ztunnel-x") {
		t.Errorf("disconnected ztunnel: %+v", rs)
	}
	d.Ready, d.XDS.Connected, d.XDS.Nacks = "certificate for spiffe://x not valid yet", true, 0
	if rs := ztunnelStateResults("node-a", zt, &d); len(rs) != 1 || rs[0].status != checkWarn || rs[0].what != "node node-a: ztunnel not ready: certificate for spiffe://x not valid yet" {
		t.Errorf("unready ztunnel: %+v", rs)
	}
	d.Ready = "ready"
	if rs := ztunnelStateResults("node-a", zt, &d); len(rs) != 0 {
		t.Errorf("a healthy ztunnel: %+v", rs)
	}
}
