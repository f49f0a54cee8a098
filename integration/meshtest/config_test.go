//go:build netns

package meshtest

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

const (
	trustDomain = "cluster.local"
	meshNS      = "shop"   // labelled ambit.dev/dataplane-mode=ambient
	plainNS     = "legacy" // never labelled
	echoPort    = 8080
	whoamiPort  = 8090 // answers with the peer address the application saw
	svcPort     = 80
	// svcWhoamiPort is the echo Service's port for whoamiPort.
	svcWhoamiPort = 81
)

// vip and vip6 are the echo Service's cluster IPs (a dual-stack Service):
// inside the lab's ranges, answered by nobody (ztunnel captures connections
// to them inside the client pod).
var (
	vip  = netip.MustParseAddr("10.250.255.10")
	vip6 = netip.MustParseAddr("fdab:250:ff00:ffff::10")
)

// podSpec is one lab pod as Kubernetes sees it.
type podSpec struct {
	name, ns, sa, node string
	ip, ip6            netip.Addr
}

// ips are the pod's addresses as the kubelet reports them (podIPs).
func (p podSpec) ips() []string {
	ips := []string{p.ip.String()}
	if p.ip6.IsValid() {
		ips = append(ips, p.ip6.String())
	}
	return ips
}

func (p podSpec) uid() string { return "uid-" + p.name }

func (p podSpec) principal() string {
	return identity.SPIFFEID{TrustDomain: trustDomain, Namespace: p.ns, ServiceAccount: p.sa}.String()
}

// configDir is the controller's --config-dir. Each file is replaced
// atomically (a hidden temporary file renamed over it; hidden files are not
// read), so the controller never loads half a file.
type configDir struct {
	t   *testing.T
	dir string
}

func (c configDir) write(name, content string) {
	c.t.Helper()
	// Refuse YAML the controller would reject, so a typo fails here with a
	// clear message instead of as a timeout.
	if _, err := translate.LoadInput([]byte(content)); err != nil {
		c.t.Fatalf("config %s does not load: %v\n%s", name, err, content)
	}
	tmp := filepath.Join(c.dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(c.dir, name)); err != nil {
		c.t.Fatal(err)
	}
}

// File names in the config folder.
const (
	namespacesFile = "00-namespaces.yaml"
	podsFile       = "10-pods.yaml"
	serviceFile    = "20-service.yaml"
	policyFile     = "30-policy.yaml"
)

func namespacesYAML(meshLabelled bool) string {
	label := ""
	if meshLabelled {
		label = ", labels: {ambit.dev/dataplane-mode: ambient}"
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: %s%s}
---
apiVersion: v1
kind: Namespace
metadata: {name: %s}
`, meshNS, label, plainNS)
}

func podsYAML(pods []podSpec) string {
	var b strings.Builder
	for _, p := range pods {
		var podIPs []string
		for _, ip := range p.ips() {
			podIPs = append(podIPs, fmt.Sprintf("{ip: %q}", ip))
		}
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: %[2]s, uid: %[3]s, labels: {app: %[1]s}}
spec: {nodeName: %[4]s, serviceAccountName: %[5]s, containers: [{name: app, image: echo}]}
status: {phase: Running, podIP: %[6]s, podIPs: [%[7]s], conditions: [{type: Ready, status: "True"}]}
`, p.name, p.ns, p.uid(), p.node, p.sa, p.ip, strings.Join(podIPs, ", "))
	}
	return b.String()
}

// serviceYAML is the dual-stack Service "echo" (VIPs vip and vip6; port
// 80 -> 8080, the echo server, and 81 -> 8090, whoami) with one
// EndpointSlice per family holding the server pod.
func serviceYAML(server podSpec) string {
	slice := func(name, family string, addr netip.Addr) string {
		return fmt.Sprintf(`---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[1]s, namespace: %[2]s, labels: {kubernetes.io/service-name: echo}}
addressType: %[3]s
ports: [{name: tcp, port: %[4]d, protocol: TCP}, {name: whoami, port: %[5]d, protocol: TCP}]
endpoints:
- addresses: ["%[6]s"]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: %[7]s
  targetRef: {kind: Pod, name: %[8]s, namespace: %[2]s, uid: %[9]s}
`, name, meshNS, family, echoPort, whoamiPort, addr, server.node, server.name, server.uid())
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: echo, namespace: %[1]s}
spec:
  clusterIP: %[2]s
  clusterIPs: [%[2]s, "%[3]s"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  selector: {app: %[4]s}
  ports:
  - {name: tcp, port: %[5]d, targetPort: %[6]d, protocol: TCP}
  - {name: whoami, port: %[7]d, targetPort: %[8]d, protocol: TCP}
`, meshNS, vip, vip6, server.name, svcPort, echoPort, svcWhoamiPort, whoamiPort) +
		slice("echo-1", "IPv4", server.ip) + slice("echo-2", "IPv6", server.ip6)
}

// authzYAML is an AuthorizationPolicy selecting the server pod.
func authzYAML(name, action string, principals ...string) string {
	return fmt.Sprintf(`apiVersion: security.ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: %s, namespace: %s}
spec:
  selector: {matchLabels: {app: server}}
  action: %s
  rules: [{from: [{principals: ["%s"]}]}]
`, name, meshNS, action, strings.Join(principals, `", "`))
}

// peerAuthYAML is a PeerAuthentication selecting the server pod.
func peerAuthYAML(name, mode string) string {
	return fmt.Sprintf(`apiVersion: security.ambit.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: %s, namespace: %s}
spec: {selector: {matchLabels: {app: server}}, mtls: {mode: %s}}
`, name, meshNS, mode)
}

// noPolicy is an empty policy file.
const noPolicy = "# no policy\n"
