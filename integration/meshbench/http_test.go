//go:build netns

package meshbench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/integration/netlab"
)

// The HTTP paths: fortio's HTTP echo server in the server pod, the waypoint
// (and the L7 HAProxy) in a pod of a third node.
const (
	httpPort         = 8080 // fortio server (HTTP echo) in the server pod
	httpServicePort  = 80   // Service "http": VIP:80 -> server pod:8080
	grpcPort         = 8077 // fortio server (gRPC ping) in the server pod
	grpcServicePort  = 7070 // Service "grpc" (appProtocol grpc): VIP:7070 -> server pod:8077
	httpPrefix       = "/bench"
	httpPath         = httpPrefix + "/echo"
	waypointName     = "waypoint" // Gateway, its Service, pod and service account
	routeHeader      = "x-ambit-route"
	routeHeaderValue = "bench"

	maxConns    = 16              // fortio -c of the max-requests/s runs
	maxDuration = 3 * time.Second // per max-requests/s run
)

// The Service VIPs: inside the lab's range, answered only by ztunnel (the
// lab has no kube-proxy; without capture a packet to them goes nowhere).
var (
	httpVIP     = netip.MustParseAddr("10.250.255.10") // Service http, use-waypoint=waypoint
	grpcVIP     = netip.MustParseAddr("10.250.255.11") // Service grpc, use-waypoint=waypoint
	waypointVIP = netip.MustParseAddr("10.250.255.20") // the waypoint's Service
)

// waypointYAML is the waypoint as the controller's deployer leaves it (its
// pod, with the deployer's labels, and its Service and EndpointSlice, named
// after the Gateway), the Gateway, the Service "http" that uses the
// waypoint, its EndpointSlice (the server pod), and an HTTPRoute on that
// Service: POSTs under httpPrefix go to the Service with a request header
// set; anything else has no route (404 from the waypoint), so a request
// that did not go through the route fails the run. The Service "grpc"
// (appProtocol grpc, the same pod) uses the waypoint too, with its default
// route.
func waypointYAML(wp, server podSpec) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %[2]s
  namespace: %[1]s
  uid: %[3]s
  labels: {gateway.networking.k8s.io/gateway-name: %[2]s, ambit.dev/dataplane-mode: none}
spec: {nodeName: %[4]s, serviceAccountName: %[2]s, containers: [{name: waypoint, image: bench}]}
status: {phase: Running, podIP: %[5]s, podIPs: [{ip: %[5]s}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  gatewayClassName: ambit-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: %[2]s, namespace: %[1]s, labels: {gateway.networking.k8s.io/gateway-name: %[2]s}}
spec:
  clusterIP: %[6]s
  clusterIPs: [%[6]s]
  selector: {gateway.networking.k8s.io/gateway-name: %[2]s}
  ports: [{name: mesh, port: 15008, targetPort: 15008, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[2]s-1, namespace: %[1]s, labels: {kubernetes.io/service-name: %[2]s}}
addressType: IPv4
ports: [{name: mesh, port: 15008, protocol: TCP}]
endpoints:
- addresses: [%[5]s]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: %[4]s
  targetRef: {kind: Pod, name: %[2]s, namespace: %[1]s, uid: %[3]s}
%[11]s%[12]s---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: http, namespace: %[1]s}
spec:
  parentRefs: [{group: "", kind: Service, name: http, port: %[7]d}]
  rules:
  - matches: [{path: {type: PathPrefix, value: %[8]s}, method: POST}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: %[9]s, value: %[10]s}]}
    backendRefs: [{name: http, port: %[7]d}]
`, benchNS, wp.name, wp.uid(), wp.node, wp.ip, waypointVIP, httpServicePort,
		httpPrefix, routeHeader, routeHeaderValue,
		wpServiceYAML("http", "http", httpVIP, httpServicePort, httpPort, wp.name, server),
		wpServiceYAML("grpc", "grpc", grpcVIP, grpcServicePort, grpcPort, wp.name, server))
}

// wpServiceYAML is a Service of the server pod that uses the waypoint
// (VIP:port -> the pod's targetPort, with appProtocol) and its
// EndpointSlice.
func wpServiceYAML(name, appProtocol string, vip netip.Addr, port, targetPort int, waypoint string, server podSpec) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata: {name: %[2]s, namespace: %[1]s, labels: {ambit.dev/use-waypoint: %[7]s}}
spec:
  clusterIP: %[4]s
  clusterIPs: [%[4]s]
  selector: {app: %[8]s}
  ports: [{name: %[2]s, port: %[5]d, targetPort: %[6]d, protocol: TCP, appProtocol: %[3]s}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[2]s-1, namespace: %[1]s, labels: {kubernetes.io/service-name: %[2]s}}
addressType: IPv4
ports: [{name: %[2]s, port: %[6]d, protocol: TCP}]
endpoints:
- addresses: [%[9]s]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: %[10]s
  targetRef: {kind: Pod, name: %[8]s, namespace: %[1]s, uid: %[11]s}
`, benchNS, name, appProtocol, vip, port, targetPort, waypoint, server.name, server.ip, server.node, server.uid())
}

// waypoint is the waypoint process in its pod and what the benchmark reads
// from it.
type waypoint struct {
	pod  *netlab.Pod
	proc *process
}

// Inside the waypoint's pod: the relays to the controller's xDS and to the
// CA (see relay), and the waypoint's metrics and readiness listeners.
const (
	wpXDSRelay = "127.0.0.1:15010"
	wpCARelay  = "127.0.0.1:15012"
	wpMetrics  = "127.0.0.1:15020"
	wpReady    = "127.0.0.1:15021"
)

// startWaypoint runs the waypoint binary in pod, configured as the
// controller's deployer configures it (gateway, namespace, service account;
// -log-level info, so one access-log line per request as in production).
// The controller and the CA listen on the host's loopback, which the pod
// cannot reach: the benchmark relays both into the pod's loopback; these
// relays carry only xDS and certificate requests, not the data path.
func startWaypoint(b *testing.B, sp *spawner, bin string, pod *netlab.Pod, xdsAddr string, mca *meshCA) *waypoint {
	b.Helper()
	relay(b, pod, wpXDSRelay, xdsAddr)
	relay(b, pod, wpCARelay, mca.addr)
	dir := b.TempDir()
	p := sp.start(b, pod.Start, "waypoint", dir, bin,
		"-gateway", benchNS+"/"+waypointName,
		"-pod-namespace", benchNS,
		"-service-account", waypointName,
		"-trust-domain", trustDomain,
		"-xds-address", wpXDSRelay,
		"-xds-insecure", // the controller runs in local mode
		"-xds-state-file", filepath.Join(dir, "xds-state.pb"),
		"-ca-address", wpCARelay,
		"-ca-root-file", mca.rootFile,
		"-ca-token-file", mca.waypointToken,
		"-hbone-address", ":15008",
		"-metrics-address", wpMetrics,
		"-ready-address", wpReady,
		"-log-level", "info",
	)
	return &waypoint{pod: pod, proc: p}
}

// waitReady waits until the waypoint answers 200 on /healthz/ready (it has
// its certificate and a first configuration).
func (w *waypoint) waitReady(b *testing.B) {
	b.Helper()
	deadline := time.Now().Add(settle)
	for {
		if w.proc.exited() {
			b.Fatalf("waypoint exited: %v", w.proc.err)
		}
		code, body, err := podGet(w.pod, "http://"+wpReady+"/healthz/ready")
		if err == nil && code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("waypoint not ready within %v: %d %q %v", settle, code, body, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// requests sums the waypoint's istio_requests_total samples whose labels
// include every one of want (name="value").
func (w *waypoint) requests(b *testing.B, want ...string) float64 {
	b.Helper()
	code, body, err := podGet(w.pod, "http://"+wpMetrics+"/metrics")
	if err != nil || code != http.StatusOK {
		b.Fatalf("waypoint metrics: %d %v", code, err)
	}
	return sumSamples(body, "istio_requests_total", want...)
}

// sumSamples adds the values of the samples of a Prometheus text-format
// metric whose label set contains every one of want (name="value").
func sumSamples(body, metric string, want ...string) float64 {
	sum := 0.0
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, metric+"{") {
			continue
		}
		matched := true
		for _, w := range want {
			if !strings.Contains(line, w) {
				matched = false
				break
			}
		}
		if !matched {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// podClient is an HTTP client whose connections are made inside pod (no
// keep-alive: each request is one connection).
func podClient(pod *netlab.Pod, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = pod.Do(func() error {
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
}

// podGet is an HTTP GET from inside pod (its loopback is the pod's own).
func podGet(pod *netlab.Pod, url string) (int, string, error) {
	c := podClient(pod, 5*time.Second)
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// relay listens on listen inside pod and copies each connection to and from
// a new connection to to in the host namespace, until the benchmark ends.
func relay(b *testing.B, pod *netlab.Pod, listen, to string) {
	b.Helper()
	var ln net.Listener
	if err := pod.Do(func() (err error) { ln, err = net.Listen("tcp", listen); return err }); err != nil {
		b.Fatalf("relay in pod %s: %v", pod.Name, err)
	}
	var (
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
		wg    sync.WaitGroup
	)
	track := func(c net.Conn, on bool) {
		mu.Lock()
		defer mu.Unlock()
		if on {
			conns[c] = true
		} else {
			delete(conns, c)
		}
	}
	b.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer in.Close()
				out, err := net.DialTimeout("tcp", to, 5*time.Second)
				if err != nil {
					return
				}
				defer out.Close()
				track(in, true)
				track(out, true)
				defer track(in, false)
				defer track(out, false)
				done := make(chan struct{})
				go func() {
					_, _ = io.Copy(out, in)
					if tc, ok := out.(*net.TCPConn); ok {
						_ = tc.CloseWrite()
					}
					close(done)
				}()
				_, _ = io.Copy(in, out)
				_ = in.Close()
				<-done
			})
		}
	})
}

// waitHTTP retries one POST of a 1 KiB body from the client pod to url
// until it is answered 200 with the body echoed.
func waitHTTP(b *testing.B, client *netlab.Pod, url string) {
	b.Helper()
	deadline := time.Now().Add(settle)
	for {
		err := postOnce(client, url)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("no HTTP echo through %s within %v: %v", url, settle, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func postOnce(client *netlab.Pod, url string) error {
	c := podClient(client, 2*time.Second)
	msg := strings.Repeat("ambit-bench-", payloadSize/12+1)[:payloadSize]
	resp, err := c.Post(url, "application/octet-stream", strings.NewReader(msg))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || string(got) != msg {
		return fmt.Errorf("%s: status %d, %d bytes back (want the %d sent)", url, resp.StatusCode, len(got), len(msg))
	}
	return nil
}

// waitGRPC waits until a gRPC ping through target answers (`fortio
// grpcping -n 1`, run in the client pod), for up to settle.
func waitGRPC(b *testing.B, sp *spawner, fortio string, client *netlab.Pod, logDir, target string) {
	b.Helper()
	deadline := time.Now().Add(settle)
	for i := 0; ; i++ {
		p := sp.start(b, client.Start, fmt.Sprintf("fortio-grpcping-%s-%d", strings.ReplaceAll(target, ":", "_"), i), logDir, fortio,
			"grpcping", "-n", "1", "-payload-size", strconv.Itoa(payloadSize), target)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			b.Fatalf("fortio grpcping %s did not finish", target)
		}
		if p.err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("no gRPC ping through %s within %v: %v (log %s)", target, settle, p.err, p.logPath)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
