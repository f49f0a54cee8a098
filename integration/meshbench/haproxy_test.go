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
	}{{"echo", haproxyEchoIn, haproxyEchoTLS, echoPort}, {"sink", haproxySinkIn, haproxySinkTLS, sinkPort}} {
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
	var procs []*process
	for _, side := range []struct {
		name, cfg string
		pod       *netlab.Pod
	}{{"haproxy-client", clientCfg, client}, {"haproxy-server", serverCfg, server}} {
		cfgPath := filepath.Join(dir, side.name+".cfg")
		if err := os.WriteFile(cfgPath, []byte(side.cfg), 0o600); err != nil {
			b.Fatal(err)
		}
		check := sp.start(b, side.pod.Start, side.name+"-check", dir, bin, "-c", "-f", cfgPath)
		<-check.done
		if check.err != nil {
			out, _ := os.ReadFile(check.logPath)
			b.Fatalf("haproxy -c %s: %v\n%s\n%s", side.name, check.err, out, side.cfg)
		}
		// -db: stay in the foreground (no daemon, no master process).
		procs = append(procs, sp.start(b, side.pod.Start, side.name, dir, bin, "-db", "-f", cfgPath))
	}
	return procs
}
