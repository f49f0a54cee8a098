//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	appNS       = "e2e"
	systemNS    = "ambit-system"
	trustDomain = "cluster.local"
	echoURL     = "http://echo." + appNS + ".svc.cluster.local:8080/"
	loadPort    = 9090
)

// app is the test application: echo in two versions behind Services echo,
// echo-v1 and echo-v2, and a client whose loadgen sends a steady 50 requests
// per second to echo (and whose container is used for one-off requests).
func app(version string) string {
	image := "docker.io/ambit/demo:" + version
	deploy := func(name, sa, version string, labels, args string) string {
		return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s, namespace: %[6]s}
spec:
  replicas: 1
  selector: {matchLabels: {%[4]s}}
  template:
    metadata: {labels: {%[4]s}}
    spec:
      serviceAccountName: %[2]s
      terminationGracePeriodSeconds: 5
      containers:
      - name: %[7]s
        image: %[8]s
        imagePullPolicy: IfNotPresent
        args: [%[5]s]
        env:
        - {name: SERVICE_VERSION, value: %[3]q}
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {memory: 64Mi}}
`, name, sa, version, labels, args, appNS, containerName(name), image)
	}
	svc := func(name, selector string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %s, namespace: %s}
spec:
  selector: {%s}
  ports: [{name: http, port: 8080, targetPort: 8080, appProtocol: http}]
`, name, appNS, selector)
	}
	docs := []string{
		fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n", appNS),
		fmt.Sprintf("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: client, namespace: %s}\n", appNS),
		fmt.Sprintf("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: echo, namespace: %s}\n", appNS),
		fmt.Sprintf("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: flaky, namespace: %s}\n", appNS),
		fmt.Sprintf("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: other, namespace: %s}\n", appNS),
		deploy("echo-v1", "echo", "v1", "app: echo, version: v1", `serve, -listen, ":8080", -service, echo`),
		deploy("echo-v2", "echo", "v2", "app: echo, version: v2", `serve, -listen, ":8080", -service, echo`),
		deploy("client", "client", "v1", "app: client", fmt.Sprintf(`load, -qps, "50", -concurrency, "16", -report, 30s, -metrics-listen, ":%d", %q`, loadPort, echoURL)),
		// flaky answers a quarter of its requests with 503; other is a
		// second identity to send requests from.
		deploy("flaky", "flaky", "v1", "app: flaky", `serve, -listen, ":8080", -service, flaky, -fail-rate, "0.25"`),
		deploy("other", "other", "v1", "app: other", `serve, -listen, ":8080", -service, other`),
		svc("flaky", "app: flaky"),
		svc("echo", "app: echo"),
		svc("echo-v1", "app: echo, version: v1"),
		svc("echo-v2", "app: echo, version: v2"),
	}
	return strings.Join(docs, "---\n")
}

func containerName(deployment string) string {
	switch deployment {
	case "client", "flaky", "other":
		return deployment
	}
	return "echo"
}

func TestE2E(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()

	// Leftovers of an interrupted run go first, so the steps start clean.
	_, _ = e.k("", "delete", "namespace", appNS, "--ignore-not-found", "--wait=true", "--timeout=120s")

	e.step(t, "Install", func(t *testing.T) {
		e := e.sub(t)
		// The CRDs and the GatewayClass are in one apply: a GatewayClass
		// whose CRD is not established yet is retried, as an installer would.
		eventually(t, "kubectl apply -k manifests/ (overlay)", 2*time.Minute, func() error {
			_, err := e.k("", "apply", "--server-side", "--force-conflicts", "-k", e.overlay)
			return err
		})
		e.mustK("", "-n", systemNS, "rollout", "status", "deployment/ambit-controller", "--timeout=180s")
		e.mustK("", "-n", systemNS, "rollout", "status", "daemonset/ztunnel", "--timeout=180s")
		// ztunnel chained its CNI plugin into the node's configuration.
		if _, err := os.Stat("/opt/cni/bin/ambit-cni"); err != nil {
			t.Errorf("ambit-cni not installed: %v", err)
		}
		if !chained() {
			t.Error("no CNI config in /etc/cni/net.d chains ambit-cni")
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	e.step(t, "AppWithoutMesh", func(t *testing.T) {
		e := e.sub(t)
		e.apply(app(e.version))
		for _, d := range []string{"echo-v1", "echo-v2", "client", "flaky", "other"} {
			e.mustK("", "-n", appNS, "rollout", "status", "deployment/"+d, "--timeout=180s")
		}
		eventually(t, "client reaches echo in plaintext", time.Minute, func() error {
			_, err := e.get(appNS, echoURL)
			return err
		})
		if err := e.seesClient(t); err != nil {
			t.Error(err)
		}
		n, err := e.scrapeAll(systemNS, "app.kubernetes.io/name=ztunnel", 15020, "istio_tcp_connections_opened_total",
			map[string]string{"destination_workload_namespace": appNS})
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("ztunnel counted %v connections to namespace %s before it was enrolled", n, appNS)
		}
	})

	// The pods keep their UIDs and restart counts through enrolment: capture
	// happens in their running network namespaces.
	before := e.podIdentity(appNS)

	// meshConns counts mutual-TLS connections client -> echo in ztunnel's
	// metrics; a failed scrape is an error, never a zero.
	meshConns := func() (float64, error) {
		return e.scrapeAll(systemNS, "app.kubernetes.io/name=ztunnel", 15020, "istio_tcp_connections_opened_total",
			map[string]string{
				"destination_workload_namespace": appNS,
				"source_principal":               fmt.Sprintf("spiffe://%s/ns/%s/sa/client", trustDomain, appNS),
				"destination_principal":          fmt.Sprintf("spiffe://%s/ns/%s/sa/echo", trustDomain, appNS),
				"connection_security_policy":     "mutual_tls",
			})
	}
	// newConnCounted opens one connection client -> echo and reports
	// whether ztunnel counted a new mutual-TLS connection.
	newConnCounted := func() (bool, error) {
		start, err := meshConns()
		if err != nil {
			return false, err
		}
		if _, err := e.get(appNS, echoURL); err != nil {
			return false, err
		}
		got, err := meshConns()
		if err != nil {
			return false, err
		}
		return got > start, nil
	}

	e.step(t, "EnrolRunningPods", func(t *testing.T) {
		e := e.sub(t)
		e.mustK("", "label", "namespace", appNS, "ambit.dev/dataplane-mode=ambient", "--overwrite")
		eventually(t, "a new connection from client to echo goes through ztunnel with mTLS", 90*time.Second, func() error {
			counted, err := newConnCounted()
			if err == nil && !counted {
				err = errors.New("no new mutual_tls connection client->echo counted")
			}
			return err
		})
		logs := e.mustK("", "-n", systemNS, "logs", "-l", "app.kubernetes.io/name=ztunnel", "--tail=-1", "--all-containers")
		for _, want := range []string{
			fmt.Sprintf("spiffe://%s/ns/%s/sa/client", trustDomain, appNS),
			fmt.Sprintf("spiffe://%s/ns/%s/sa/echo", trustDomain, appNS),
		} {
			if !strings.Contains(logs, want) {
				t.Errorf("ztunnel logs name no connection of %s", want)
			}
		}
		if after := e.podIdentity(appNS); !sameMap(before, after) {
			t.Fatalf("pods changed during enrolment (want no restart):\nbefore %v\nafter  %v", before, after)
		}
		// Through the mesh echo still sees the client pod's address.
		if err := e.seesClient(t); err != nil {
			t.Error(err)
		}
	})

	e.step(t, "SOCKS5", func(t *testing.T) {
		e := e.sub(t)
		// A headless Service has no VIP, so the mesh configuration does
		// not resolve its name: ztunnel asks the cluster DNS (the
		// nameserver of its own resolv.conf) from inside the client pod,
		// with the client pod's search list (dnsPolicy ClusterFirst), so
		// its short name works too.
		e.apply(fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: echo-pods, namespace: %s}
spec:
  clusterIP: None
  selector: {app: echo}
  ports: [{name: http, port: 8080, targetPort: 8080}]
`, appNS))
		for _, url := range []string{
			"http://echo." + appNS + ".svc.cluster.local:8080/socks5-mesh-name",
			"http://echo-pods." + appNS + ".svc.cluster.local:8080/socks5-dns-name",
			"http://echo-pods:8080/socks5-search-list",
		} {
			eventually(t, "GET "+url+" through the client pod's SOCKS5 listener, over mTLS", time.Minute, func() error {
				start, err := meshConns()
				if err != nil {
					return err
				}
				code, body, err := e.demoGet(appNS, "client", []string{"-socks5", "127.0.0.1:15080"}, url)
				if err != nil {
					return err
				}
				if code != http.StatusOK || !strings.Contains(body, "echo") {
					return fmt.Errorf("status %d: %.200s", code, body)
				}
				if got, err := meshConns(); err != nil || got <= start {
					return fmt.Errorf("no new mutual_tls connection client->echo counted (%v -> %v, %v)", start, got, err)
				}
				return nil
			})
		}
	})

	e.step(t, "UnenrolReleasesPods", func(t *testing.T) {
		e := e.sub(t)
		e.mustK("", "label", "namespace", appNS, "ambit.dev/dataplane-mode-")
		// Three requests in a row that ztunnel does not count: released.
		eventually(t, "connections bypass ztunnel after the label is removed", 90*time.Second, func() error {
			for i := 0; i < 3; i++ {
				counted, err := newConnCounted()
				if err != nil {
					return err
				}
				if counted {
					return errors.New("ztunnel still counts new connections client->echo")
				}
			}
			return nil
		})
		e.mustK("", "label", "namespace", appNS, "ambit.dev/dataplane-mode=ambient", "--overwrite")
		eventually(t, "re-enrolled", 90*time.Second, func() error {
			counted, err := newConnCounted()
			if err == nil && !counted {
				err = errors.New("not captured again")
			}
			return err
		})
		if after := e.podIdentity(appNS); !sameMap(before, after) {
			t.Fatalf("pods changed (want no restart):\nbefore %v\nafter  %v", before, after)
		}
	})

	waypointRequests := func(match map[string]string) (float64, error) {
		return e.scrapeAll(appNS, "gateway.networking.k8s.io/gateway-name=waypoint", 15020, "istio_requests_total", match)
	}

	e.step(t, "Waypoint", func(t *testing.T) {
		e := e.sub(t)
		// As a user would: ambitctl creates the Gateway and waits for the
		// controller to program it.
		if out := e.mustAmbitctl("waypoint", "apply", "-n", appNS, "-wait", "-timeout", "120s"); !strings.Contains(out, "waypoint "+appNS+"/waypoint programmed") {
			t.Fatalf("ambitctl waypoint apply: %q", out)
		}
		e.mustK("", "-n", appNS, "rollout", "status", "deployment/waypoint", "--timeout=180s")
		if _, err := e.kube.CoreV1().Services(appNS).Get(ctx, "waypoint", metav1.GetOptions{}); err != nil {
			t.Fatalf("waypoint Service: %v", err)
		}
		// Its pods ready, the namespace's traffic goes through it.
		if out := e.mustAmbitctl("waypoint", "apply", "-n", appNS, "-enroll-namespace"); !strings.Contains(out, "unchanged") ||
			!strings.Contains(out, "namespace "+appNS+" labelled ambit.dev/use-waypoint=waypoint") {
			t.Fatalf("ambitctl waypoint apply -enroll-namespace: %q", out)
		}
		match := map[string]string{
			"reporter":                 "waypoint",
			"destination_service_name": "echo",
			"source_principal":         fmt.Sprintf("spiffe://%s/ns/%s/sa/client", trustDomain, appNS),
			"response_code":            "200",
		}
		eventually(t, "requests to echo pass the waypoint, seen in its metrics with Istio's labels", 90*time.Second, func() error {
			start, err := waypointRequests(match)
			if err != nil {
				return err
			}
			if _, err := e.get(appNS, echoURL); err != nil {
				return err
			}
			got, err := waypointRequests(match)
			if err != nil {
				return err
			}
			if got <= start {
				return fmt.Errorf("waypoint istio_requests_total%v %v -> %v", match, start, got)
			}
			return nil
		})
	})

	e.step(t, "WaypointForwardsClient", func(t *testing.T) {
		e := e.sub(t)
		// Through the waypoint echo's connection comes from the waypoint;
		// X-Forwarded-For names the client pod.
		ip := e.clientIP(t)
		a, err := e.get(appNS, echoURL)
		if err != nil {
			t.Fatal(err)
		}
		if got := a.Headers["x-forwarded-for"]; got != ip || a.Headers["x-forwarded-proto"] != "http" {
			t.Errorf("echo saw X-Forwarded-For %q, X-Forwarded-Proto %q; want the client pod's %s and http", got, a.Headers["x-forwarded-proto"], ip)
		}
		if host, _, _ := net.SplitHostPort(a.Remote); host == ip {
			t.Errorf("echo's connection came from the client pod %s: not through the waypoint", a.Remote)
		}
		// The identities the waypoint verified, not what the client sends.
		a, err = e.get(appNS, echoURL, "X-Forwarded-Client-Cert: URI=spiffe://"+trustDomain+"/ns/kube-system/sa/admin")
		if err != nil {
			t.Fatal(err)
		}
		want := regexp.MustCompile(fmt.Sprintf(`^By=spiffe://%s/ns/%s/sa/waypoint;Hash=[0-9a-f]{64};Subject="";URI=spiffe://%s/ns/%s/sa/client$`,
			regexp.QuoteMeta(trustDomain), appNS, regexp.QuoteMeta(trustDomain), appNS))
		if got := a.Headers["x-forwarded-client-cert"]; !want.MatchString(got) {
			t.Errorf("echo saw X-Forwarded-Client-Cert %q, want %s", got, want)
		}
	})

	e.step(t, "Ambitctl", func(t *testing.T) {
		e := e.sub(t)
		// check: the installation, the waypoint and the enrolled namespace.
		out := e.mustAmbitctl("check")
		for _, want := range []string{
			"[ok]   controller Deployment ambit-system/ambit-controller: ",
			"[ok]   mesh CA root published in ConfigMap ambit-system/ambit-ca-root",
			"[ok]   ztunnel DaemonSet ambit-system/ztunnel: ready on 1 of 1 nodes",
			"[ok]   GatewayClass ambit-waypoint accepted",
			"[ok]   1 of 1 waypoints programmed",
			"ambit.dev/dataplane-mode=ambient): " + appNS,
			"Ambit is installed and healthy",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("ambitctl check lacks %q", want)
			}
		}
		// version: the images running, by their pods.
		out = e.mustAmbitctl("version")
		for _, re := range []string{`controller: (\S+/)?ambit/controller:\S+ \(2 pods\)`, `ztunnel:   (\S+/)?ambit/ztunnel:\S+ \(1 pod\)`, `waypoints: (\S+/)?ambit/waypoint:\S+ \(1 pod\)`} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("ambitctl version lacks %s", re)
			}
		}
		// check -pods: every running pod of the namespace captured, by
		// the node's ztunnel's own account (the waypoint's pod is not in
		// the mesh, and not counted).
		out = e.mustAmbitctl("check", "-pods")
		if m := regexp.MustCompile(`\[ok\]\s+(\d+) of (\d+) running pods of enrolled namespaces captured by their node's ztunnel \(1 nodes\)`).FindStringSubmatch(out); m == nil || m[1] != m[2] || len(m[1]) == 1 && m[1] < "5" {
			t.Errorf("ambitctl check -pods: %q", out)
		}
		if out := e.mustAmbitctl("waypoint", "list", "-n", appNS); !regexp.MustCompile(appNS + `\s+waypoint\s+service\s+True\s+\S+\s+namespace ` + appNS).MatchString(out) {
			t.Errorf("ambitctl waypoint list: %q", out)
		}
		// ztunnel-config through a port-forward to the node's ztunnel.
		clientID := fmt.Sprintf("spiffe://%s/ns/%s/sa/client", trustDomain, appNS)
		out = e.mustAmbitctl("ztunnel-config", "pods")
		if !strings.Contains(out, "ready: ready; controller: connected") ||
			!regexp.MustCompile(appNS+`\s+client-\S+\s+\S+\s+captured\s+`+regexp.QuoteMeta(clientID)).MatchString(out) {
			t.Errorf("ambitctl ztunnel-config pods: %q", out)
		}
		if out := e.mustAmbitctl("ztunnel-config", "services", "-n", appNS); !regexp.MustCompile(appNS + `\s+echo\s+\S+\s+8080->8080\s+\d+/\d+\s+` + appNS + `/waypoint`).MatchString(out) {
			t.Errorf("ambitctl ztunnel-config services: %q", out)
		}
		// waypoint-config: the waypoint's routes and identity.
		out = e.mustAmbitctl("waypoint-config", "-n", appNS)
		for _, want := range []string{
			"waypoint " + appNS + "/waypoint (waypoint ",
			fmt.Sprintf("identity spiffe://%s/ns/%s/sa/waypoint", trustDomain, appNS),
			"ready: ready; controller: connected",
			appNS + "/echo:8080",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("ambitctl waypoint-config lacks %q", want)
			}
		}
		if out := e.mustAmbitctl("ztunnel-config", "certificates", "-o", "json"); !strings.Contains(out, `"id": "`+clientID+`"`) || strings.Contains(out, "PRIVATE KEY") {
			t.Errorf("ambitctl ztunnel-config certificates -o json: %q", out)
		}
	})

	e.step(t, "WebSocket", func(t *testing.T) {
		e := e.sub(t)
		// The waypoint routes the handshake, answers the 101 and then
		// carries the session's frames both ways.
		match := map[string]string{
			"reporter":                 "waypoint",
			"destination_service_name": "echo",
			"source_principal":         fmt.Sprintf("spiffe://%s/ns/%s/sa/client", trustDomain, appNS),
			"response_code":            "101",
		}
		url := "http://echo." + appNS + ".svc.cluster.local:8080/ws"
		eventually(t, "a WebSocket from client to echo through the waypoint", 90*time.Second, func() error {
			start, err := waypointRequests(match)
			if err != nil {
				return err
			}
			code, body, err := e.demoGet(appNS, "client", []string{"-websocket", "hello-ambit"}, url)
			if err != nil {
				return err
			}
			if code != http.StatusSwitchingProtocols || !strings.HasPrefix(body, "echo ") || !strings.Contains(body, ": hello-ambit") {
				return fmt.Errorf("status %d, answer %q; want 101 and echo's answer to the message", code, body)
			}
			// The waypoint counts the session once it has ended.
			deadline := time.Now().Add(10 * time.Second)
			for {
				got, err := waypointRequests(match)
				if err == nil && got > start {
					return nil
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("waypoint istio_requests_total%v %v -> %v (%v)", match, start, got, err)
				}
				time.Sleep(500 * time.Millisecond)
			}
		})
	})

	e.step(t, "WeightedSplit", func(t *testing.T) {
		e := e.sub(t)
		e.apply(fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: %s}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8080}]
  rules:
  - backendRefs:
    - {name: echo-v1, port: 8080, weight: 90}
    - {name: echo-v2, port: 8080, weight: 10}
`, appNS))
		e.mustK("", "-n", appNS, "wait", "httproute/echo", "--for=jsonpath={.status.parents[0].conditions[?(@.type==\"Accepted\")].status}=True", "--timeout=60s")
		// The loadgen's pooled connections were opened before the waypoint
		// label: a new pod opens new ones, through the waypoint.
		// The new pod must be captured before its containers start (its
		// Workload is in ztunnel's configuration at the CNI ADD), or its
		// first connections bypass the mesh and, pooled, the waypoint.
		unknownBefore, err := e.scrapeAll(systemNS, "app.kubernetes.io/name=ztunnel", 15020, "ztunnel_pods_unknown_at_add_total", nil)
		if err != nil {
			t.Fatal(err)
		}
		// Counted by source: with the route, the destination service is
		// the backend (echo-v1 or echo-v2).
		fromClient := map[string]string{"reporter": "waypoint",
			"source_principal": fmt.Sprintf("spiffe://%s/ns/%s/sa/client", trustDomain, appNS)}
		viaWaypoint, err := waypointRequests(fromClient)
		if err != nil {
			t.Fatal(err)
		}
		e.mustK("", "-n", appNS, "rollout", "restart", "deployment/client")
		e.mustK("", "-n", appNS, "rollout", "status", "deployment/client", "--timeout=120s")
		before = e.podIdentity(appNS)
		if n, err := e.scrapeAll(systemNS, "app.kubernetes.io/name=ztunnel", 15020, "ztunnel_pods_unknown_at_add_total", nil); err != nil || n != unknownBefore {
			t.Errorf("ztunnel_pods_unknown_at_add_total %v -> %v (%v): the restarted client started before ztunnel knew it", unknownBefore, n, err)
		}
		eventually(t, "the restarted client's requests pass the waypoint", time.Minute, func() error {
			n, err := waypointRequests(fromClient)
			if err == nil && n < viaWaypoint+50 {
				err = fmt.Errorf("waypoint istio_requests_total%v %v -> %v", fromClient, viaWaypoint, n)
			}
			return err
		})
		v1, v2 := e.versionsSeen(t)
		var d1, d2 float64
		eventually(t, "2,000 answers counted", 3*time.Minute, func() error {
			n1, n2 := e.versionsSeen(t)
			d1, d2 = n1-v1, n2-v2
			if d1+d2 < 2000 {
				return fmt.Errorf("%v answers so far", d1+d2)
			}
			return nil
		})
		share := d2 / (d1 + d2)
		t.Logf("90/10 split over %v answers: v1 %v, v2 %v (v2 share %.3f)", d1+d2, d1, d2, share)
		// Binomial standard deviation at n=2000, p=0.1 is 0.0067: 0.07-0.13
		// is a 4.5 sigma band.
		if math.Abs(share-0.10) > 0.03 {
			t.Fatalf("v2 share %.3f, want 0.10 +- 0.03", share)
		}
	})

	e.step(t, "RetriesOn503", func(t *testing.T) {
		e := e.sub(t)
		flakyURL := "http://flaky." + appNS + ".svc.cluster.local:8080/"
		failures := func(n int) int {
			failed := 0
			for i := 0; i < n; i++ {
				code, _, err := e.request(appNS, "client", "GET", flakyURL)
				if err != nil {
					t.Fatal(err)
				}
				if code != http.StatusOK {
					failed++
				}
			}
			return failed
		}
		// Without a route there are no retries (Ambit's default): about a
		// quarter of the answers are 503 (at least 2 of 40 fail with
		// probability 1 - 1e-4).
		if f := failures(40); f < 2 {
			t.Fatalf("without retries %d of 40 requests failed, want at least 2 (is flaky failing?)", f)
		}
		e.apply(fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: flaky, namespace: %s}
spec:
  parentRefs: [{group: "", kind: Service, name: flaky, port: 8080}]
  rules:
  - backendRefs: [{name: flaky, port: 8080}]
    retry: {codes: [503], attempts: 4, backoff: 10ms}
`, appNS))
		e.mustK("", "-n", appNS, "wait", "httproute/flaky", "--for=jsonpath={.status.parents[0].conditions[?(@.type==\"Accepted\")].status}=True", "--timeout=60s")
		// With 4 retries a request fails with probability 0.25^5 = 0.001:
		// at most 1 of 40 (2 or more: probability 7e-4).
		eventually(t, "retries hide the 503s", time.Minute, func() error {
			if f := failures(40); f > 1 {
				return fmt.Errorf("%d of 40 requests failed with retries", f)
			}
			return nil
		})
	})

	// The traffic CRDs end to end: a FaultInjection referenced by an
	// HTTPRoute rule (ExtensionRef) is accepted by the controller and
	// applied by the waypoint to that rule only.
	e.step(t, "FaultInjection", func(t *testing.T) {
		e := e.sub(t)
		flakyURL := "http://flaky." + appNS + ".svc.cluster.local:8080/"
		e.apply(fmt.Sprintf(`apiVersion: traffic.ambit.dev/v1alpha1
kind: FaultInjection
metadata: {name: teapot, namespace: %[1]s}
spec:
  delay: {fixedDelay: 1s, percent: 100}
  abort: {httpStatus: 418, percent: 100}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: flaky, namespace: %[1]s}
spec:
  parentRefs: [{group: "", kind: Service, name: flaky, port: 8080}]
  rules:
  - backendRefs: [{name: flaky, port: 8080}]
    retry: {codes: [503], attempts: 4, backoff: 10ms}
  - matches: [{path: {type: PathPrefix, value: /fault}}]
    filters:
    - type: ExtensionRef
      extensionRef: {group: traffic.ambit.dev, kind: FaultInjection, name: teapot}
    backendRefs: [{name: flaky, port: 8080}]
`, appNS))
		e.mustK("", "-n", appNS, "wait", "faultinjection/teapot", "--for=condition=Accepted", "--timeout=60s")
		// A BackendPolicy on the same Service is accepted too (its outlier
		// detection and limits are exercised by the waypoint's tests).
		e.apply(fmt.Sprintf(`apiVersion: traffic.ambit.dev/v1alpha1
kind: BackendPolicy
metadata: {name: flaky, namespace: %s}
spec:
  targetRefs: [{kind: Service, name: flaky}]
  limits: {maxRequests: 100}
`, appNS))
		e.mustK("", "-n", appNS, "wait", "backendpolicy/flaky", "--for=condition=Accepted", "--timeout=60s")
		e.mustK("", "-n", appNS, "wait", "httproute/flaky", "--for=jsonpath={.status.parents[0].conditions[?(@.type==\"ResolvedRefs\")].status}=True", "--timeout=60s")
		eventually(t, "the fault rule answers 418 after 1 s", time.Minute, func() error {
			start := time.Now()
			code, _, err := e.request(appNS, "client", "GET", flakyURL+"fault")
			if err != nil {
				return err
			}
			if took := time.Since(start); code != http.StatusTeapot || took < time.Second {
				return fmt.Errorf("answered %d after %v, want 418 after at least 1s", code, took)
			}
			return nil
		})
		// The other rule is untouched: with its retries, 200 (a request
		// fails with probability 0.001; three tries).
		var codes []int
		for len(codes) < 3 && !slices.Contains(codes, http.StatusOK) {
			code, _, err := e.request(appNS, "client", "GET", flakyURL)
			if err != nil {
				t.Fatal(err)
			}
			codes = append(codes, code)
		}
		if !slices.Contains(codes, http.StatusOK) {
			t.Fatalf("the rule without the filter answered %v", codes)
		}
	})

	e.step(t, "Authorization", func(t *testing.T) {
		e := e.sub(t)
		// "client may only GET /metrics on echo": principals, methods and
		// paths at the waypoint.
		e.apply(fmt.Sprintf(`apiVersion: security.ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: echo-metrics-get-only, namespace: %[1]s}
spec:
  targetRefs: [{group: "", kind: Service, name: echo}]
  action: ALLOW
  rules:
  - from: [{principals: ["spiffe://%[2]s/ns/%[1]s/sa/client"]}]
    to: [{methods: [GET], paths: [/metrics]}]
`, appNS, trustDomain))
		e.mustK("", "-n", appNS, "wait", "authorizationpolicy/echo-metrics-get-only", "--for=condition=Accepted", "--timeout=60s")
		metricsURL := echoURL + "metrics"
		eventually(t, "policy enforced", time.Minute, func() error {
			for _, c := range []struct {
				from, method string
				want         int
			}{
				{"client", "GET", 200},
				{"client", "POST", 403},
				{"other", "GET", 403},
			} {
				code, body, err := e.request(appNS, c.from, c.method, metricsURL)
				if err != nil {
					return err
				}
				if code != c.want {
					return fmt.Errorf("%s %s from %s: %d %q, want %d", c.method, metricsURL, c.from, code, body, c.want)
				}
				if code == 403 && !strings.Contains(body, "echo-metrics-get-only") {
					return fmt.Errorf("403 body %q does not name the policy", body)
				}
			}
			return nil
		})
		denied, err := waypointRequests(map[string]string{"destination_service_name": "echo", "response_code": "403"})
		if err != nil {
			t.Fatal(err)
		}
		if denied == 0 {
			t.Fatal("the waypoint's istio_requests_total shows no 403 for echo")
		}
		e.mustK("", "-n", appNS, "delete", "authorizationpolicy", "echo-metrics-get-only")
		eventually(t, "policy removed", time.Minute, func() error {
			_, err := e.get(appNS, echoURL)
			return err
		})
	})

	e.step(t, "ControllerLoss", func(t *testing.T) {
		e := e.sub(t)
		okBefore := e.loadCount(t, "200")
		errBefore := e.loadErrors(t)
		e.mustK("", "-n", systemNS, "delete", "pod", "-l", "app.kubernetes.io/name=ambit-controller", "--wait=false")
		// While no controller runs, traffic keeps flowing: established
		// connections (the loadgen's) and new ones (get).
		for i := 0; i < 5; i++ {
			if a, err := e.get(appNS, echoURL); err != nil {
				t.Fatalf("request %d while the controller is down: %v", i, err)
			} else if a.Service != "echo" {
				t.Fatalf("answer from %q", a.Service)
			}
			time.Sleep(time.Second)
		}
		e.mustK("", "-n", systemNS, "rollout", "status", "deployment/ambit-controller", "--timeout=180s")
		if got := e.loadCount(t, "200"); got <= okBefore {
			t.Fatalf("loadgen successes did not grow while the controller restarted (%v -> %v)", okBefore, got)
		}
		if got := e.loadErrors(t); got != errBefore {
			t.Errorf("loadgen saw %v failed requests while the controller restarted", got-errBefore)
		}
		// The new controller reconciles: a route change takes effect.
		e.apply(fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: %s}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8080}]
  rules:
  - matches: [{headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - backendRefs: [{name: echo-v1, port: 8080}]
`, appNS))
		eventually(t, "header route applied by the restarted controller", 90*time.Second, func() error {
			a, err := e.get(appNS, echoURL, "x-version: v2")
			if err != nil {
				return err
			}
			if a.Version != "v2" {
				return fmt.Errorf("x-version: v2 answered by %s", a.Version)
			}
			for i := 0; i < 5; i++ {
				a, err := e.get(appNS, echoURL)
				if err != nil {
					return err
				}
				if a.Version != "v1" {
					return fmt.Errorf("request without header answered by %s", a.Version)
				}
			}
			return nil
		})
	})

	e.step(t, "WaypointOptOut", func(t *testing.T) {
		e := e.sub(t)
		// Removing ambit.dev/use-waypoint returns the namespace to direct L4:
		// new connections go straight to echo, none fails, and the waypoint
		// sees no more requests from them.
		fromOther := map[string]string{
			"destination_service_name": "echo",
			"source_principal":         fmt.Sprintf("spiffe://%s/ns/%s/sa/other", trustDomain, appNS),
		}
		// other's requests passed the waypoint so far (the Authorization
		// step), so the counter below is a real one.
		if n, err := waypointRequests(fromOther); err != nil || n == 0 {
			t.Fatalf("waypoint requests from other before opting out: %v (%v), want > 0", n, err)
		}
		errBefore := e.loadErrors(t)
		e.mustK("", "label", "namespace", appNS, "ambit.dev/use-waypoint-")
		eventually(t, "requests from other bypass the waypoint", 90*time.Second, func() error {
			for i := 0; i < 3; i++ {
				start, err := waypointRequests(fromOther)
				if err != nil {
					return err
				}
				code, body, err := e.request(appNS, "other", "GET", echoURL)
				if err != nil {
					return err
				}
				if code != http.StatusOK {
					return fmt.Errorf("GET from other: %d %q", code, body)
				}
				got, err := waypointRequests(fromOther)
				if err != nil {
					return err
				}
				if got != start {
					return fmt.Errorf("the waypoint still counts requests from other (%v -> %v)", start, got)
				}
			}
			return nil
		})
		if got := e.loadErrors(t); got != errBefore {
			t.Errorf("loadgen saw %v failed requests while the namespace left the waypoint", got-errBefore)
		}
	})

	e.step(t, "Uninstall", func(t *testing.T) {
		e := e.sub(t)
		e.mustK("", "delete", "-k", e.overlay, "--ignore-not-found", "--wait=true", "--timeout=180s")
		eventually(t, "namespace ambit-system gone", 2*time.Minute, func() error {
			_, err := e.kube.CoreV1().Namespaces().Get(ctx, systemNS, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("still there (%v)", err)
		})
		// The application keeps working without the mesh: new connections
		// go directly, and the loadgen's traffic recovers.
		eventually(t, "client reaches echo without the mesh", time.Minute, func() error {
			for i := 0; i < 5; i++ {
				if _, err := e.get(appNS, echoURL); err != nil {
					return err
				}
			}
			return nil
		})
		ok := e.loadCount(t, "200")
		eventually(t, "loadgen traffic flows without the mesh", time.Minute, func() error {
			if got := e.loadCount(t, "200"); got < ok+100 {
				return fmt.Errorf("successes %v -> %v", ok, got)
			}
			return nil
		})
		if after := e.podIdentity(appNS); !sameMap(before, after) {
			t.Fatalf("application pods changed during uninstall:\nbefore %v\nafter  %v", before, after)
		}
		// ztunnel removed its CNI plugin from the node on the way out.
		if _, err := os.Stat("/opt/cni/bin/ambit-cni"); !os.IsNotExist(err) {
			t.Errorf("/opt/cni/bin/ambit-cni still present after uninstall (%v)", err)
		}
		if chained() {
			t.Error("a CNI config in /etc/cni/net.d still chains ambit-cni after uninstall")
		}
	})

	if !t.Failed() {
		_, _ = e.k("", "delete", "namespace", appNS, "--wait=false")
	}
}

// chained reports whether a CNI config of the node names ambit-cni.
func chained() bool {
	confs, _ := filepath.Glob("/etc/cni/net.d/*")
	for _, f := range confs {
		if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), `"ambit-cni"`) {
			return true
		}
	}
	return false
}

// podIdentity maps each pod of ns to its UID and restart count.
func (e *env) podIdentity(ns string) map[string]string {
	out := map[string]string{}
	for _, p := range e.pods(ns, "app in (echo, client)") {
		if p.DeletionTimestamp != nil {
			continue
		}
		restarts := int32(0)
		for _, s := range p.Status.ContainerStatuses {
			restarts += s.RestartCount
		}
		out[p.Name] = fmt.Sprintf("%s/%d", p.UID, restarts)
	}
	return out
}

func sameMap(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// seesClient checks that echo saw a request from the client pod come from
// that pod's address.
func (e *env) seesClient(t *testing.T) error {
	t.Helper()
	a, err := e.get(appNS, echoURL)
	if err != nil {
		return err
	}
	ip := e.clientIP(t)
	if host, _, err := net.SplitHostPort(a.Remote); err != nil || host != ip {
		return fmt.Errorf("echo saw the client's request come from %q, want the client pod's address %s", a.Remote, ip)
	}
	return nil
}

// clientIP is the loadgen pod's address.
func (e *env) clientIP(t *testing.T) string {
	t.Helper()
	for _, p := range e.pods(appNS, "app=client") {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
			return p.Status.PodIP
		}
	}
	t.Fatal("no running client pod")
	return ""
}

// versionsSeen returns how many answers from echo v1 and v2 the loadgen saw.
func (e *env) versionsSeen(t *testing.T) (v1, v2 float64) {
	t.Helper()
	fams, err := scrape(e.clientIP(t), loadPort)
	if err != nil {
		t.Fatal(err)
	}
	return sum(fams, "ambit_demo_load_responses_total", map[string]string{"service": "echo", "version": "v1"}),
		sum(fams, "ambit_demo_load_responses_total", map[string]string{"service": "echo", "version": "v2"})
}

// loadCount is the loadgen's count of requests answered with code.
func (e *env) loadCount(t *testing.T, code string) float64 {
	t.Helper()
	fams, err := scrape(e.clientIP(t), loadPort)
	if err != nil {
		t.Fatal(err)
	}
	return sum(fams, "ambit_demo_load_requests_total", map[string]string{"code": code})
}

// loadErrors is the loadgen's count of requests that failed or got a non-2xx.
func (e *env) loadErrors(t *testing.T) float64 {
	t.Helper()
	fams, err := scrape(e.clientIP(t), loadPort)
	if err != nil {
		t.Fatal(err)
	}
	return sum(fams, "ambit_demo_load_requests_total", nil) - sum(fams, "ambit_demo_load_requests_total", map[string]string{"code": "200"})
}
