//go:build netns

package meshbench

import (
	"crypto/ecdsa"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// The HAProxy pair: one haproxy in the client pod accepts plaintext on
// loopback and connects with TLS and a client certificate to the other, in
// the server pod, which requires and verifies that certificate and forwards
// to the application on loopback. The placement mirrors ztunnel, whose
// sockets also live in the pods' namespaces.
const (
	haproxyEchoIn  = 15101 // client pod, 127.0.0.1: plaintext to the echo server
	haproxySinkIn  = 15102 // client pod, 127.0.0.1: plaintext to the bulk sink
	haproxyEchoTLS = 15443 // server pod: mTLS in, to 127.0.0.1:echoPort
	haproxySinkTLS = 15444 // server pod: mTLS in, to 127.0.0.1:sinkPort
	haproxyHTTPIn  = 15103 // client pod, 127.0.0.1: plaintext to the HTTP echo server
	haproxyHTTPTLS = 15445 // server pod: mTLS in, to 127.0.0.1:httpPort
)

// writeHAProxyCerts issues a client and a server certificate from a fresh
// root (pkg/identity: ECDSA P-256, SPIFFE URI SANs) and writes them as the
// PEM files haproxy reads: <name>.pem (chain and key) and ca.pem.
func writeHAProxyCerts(b *testing.B, dir string) {
	b.Helper()
	root, err := identity.NewRootAuthority("haproxy.bench", 24*time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), identity.EncodeCertsPEM(root.Cert), 0o600); err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"client", "server"} {
		c, err := root.Issue(identity.SPIFFEID{TrustDomain: "haproxy.bench", Namespace: benchNS, ServiceAccount: name}, 24*time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		var out []byte
		for _, der := range c.Certificate {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		}
		key, err := identity.EncodeKeyPEM(c.PrivateKey.(*ecdsa.PrivateKey))
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".pem"), append(out, key...), 0o600); err != nil {
			b.Fatal(err)
		}
	}
}

const haproxyGlobal = `global
  maxconn 4096
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  mode tcp
  timeout connect 5s
  timeout client 2m
  timeout server 2m
`

// startHAProxyPair writes the certificates and configurations and starts
// both haproxys; it returns them (client side first).
func startHAProxyPair(b *testing.B, sp *spawner, bin string, client, server *netlab.Pod) []*process {
	b.Helper()
	dir := b.TempDir()
	writeHAProxyCerts(b, dir)
	pem := func(name string) string { return filepath.Join(dir, name+".pem") }
	serverCfg := haproxyGlobal
	clientCfg := haproxyGlobal
	for _, p := range []struct {
		name        string
		in, tls, to int
	}{{"echo", haproxyEchoIn, haproxyEchoTLS, echoPort}, {"sink", haproxySinkIn, haproxySinkTLS, sinkPort},
		{"http", haproxyHTTPIn, haproxyHTTPTLS, httpPort}} {
		serverCfg += fmt.Sprintf(`frontend %[1]s_mtls
  bind %[2]s:%[3]d ssl crt %[4]s ca-file %[5]s verify required
  default_backend %[1]s_app
backend %[1]s_app
  server app 127.0.0.1:%[6]d
`, p.name, server.IP, p.tls, pem("server"), pem("ca"), p.to)
		clientCfg += fmt.Sprintf(`frontend %[1]s_plain
  bind 127.0.0.1:%[2]d
  default_backend %[1]s_mtls
backend %[1]s_mtls
  server peer %[3]s ssl crt %[4]s ca-file %[5]s verify required
`, p.name, p.in, addrPort(server.IP, p.tls), pem("client"), pem("ca"))
	}
	return []*process{
		startHAProxy(b, sp, bin, client, "haproxy-client", clientCfg, dir),
		startHAProxy(b, sp, bin, server, "haproxy-server", serverCfg, dir),
	}
}

// startHAProxy checks a configuration with `haproxy -c` and runs haproxy
// with it in pod, in the foreground (-db: no daemon, no master process).
func startHAProxy(b *testing.B, sp *spawner, bin string, pod *netlab.Pod, name, cfg, dir string) *process {
	b.Helper()
	cfgPath := filepath.Join(dir, name+".cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	check := sp.start(b, pod.Start, name+"-check", dir, bin, "-c", "-f", cfgPath)
	<-check.done
	if check.err != nil {
		out, _ := os.ReadFile(check.logPath)
		b.Fatalf("haproxy -c %s: %v\n%s\n%s", name, check.err, out, cfg)
	}
	return sp.start(b, pod.Start, name, dir, bin, "-db", "-f", cfgPath)
}

// The L7 HAProxy: one plain HAProxy in `mode http` in the waypoint's pod,
// between the client and the server pod's HTTP echo, with keep-alive on both
// sides and a path rule, the outside baseline of the waypoint path.
const haproxyL7Port = 18080 // waypoint pod: HTTP in, to the server pod's httpPort

// startHAProxyL7 runs the L7 HAProxy in pod, forwarding requests under
// httpPrefix (with a request header set, as the benchmark's HTTPRoute does)
// to server:httpPort; anything else is answered 503.
func startHAProxyL7(b *testing.B, sp *spawner, bin string, pod, server *netlab.Pod) *process {
	b.Helper()
	cfg := fmt.Sprintf(`global
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 2m
  timeout server 2m
  timeout http-keep-alive 2m
frontend l7
  bind %[1]s
  acl bench path_beg %[2]s
  http-request set-header %[3]s %[4]s if bench
  use_backend app if bench
backend app
  server app %[5]s
`, addrPort(pod.IP, haproxyL7Port), httpPrefix, routeHeader, routeHeaderValue, addrPort(server.IP, httpPort))
	return startHAProxy(b, sp, bin, pod, "haproxy-l7", cfg, b.TempDir())
}
