package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/dnstest"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
)

// TestGetThroughSOCKS5 sends get -socks5 through ztunnel's SOCKS5 server:
// the URL's host name reaches the proxy unresolved, and the proxy's
// nameserver resolves it.
func TestGetThroughSOCKS5(t *testing.T) {
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.Host)
	}))
	defer web.Close()
	webAddr := netip.MustParseAddrPort(web.Listener.Addr().String())

	dnsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dns := dnstest.Serve(dnsLn, map[string]netip.Addr{"web.example.": webAddr.Addr()})
	defer dns.Close()

	ca, err := identity.NewRootAuthority("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := identity.NewManager(identity.AuthorityFetcher{Authority: ca}, identity.ManagerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env := &proxy.Env{Config: config.Empty, Certs: certs, Metrics: metrics.New(), Nameservers: []netip.AddrPort{dns.Addr}}
	socks := proxy.NewSOCKS5(env, "shop/client", nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = socks.Serve(t.Context(), ln) }()
	defer socks.Close()

	url := fmt.Sprintf("http://web.example:%d/", webAddr.Port())
	var stdout, stderr bytes.Buffer
	if code := getCommand(t.Context(), []string{"-socks5", ln.Addr().String(), url}, &stdout, &stderr); code != 0 {
		t.Fatalf("get -socks5 %s: exit %d: %s", url, code, stderr.String())
	}
	if got, want := stdout.String(), fmt.Sprintf("hello web.example:%d", webAddr.Port()); got != want {
		t.Errorf("body %q, want %q", got, want)
	}
	if !slices.Contains(dns.Asked(), "web.example. TypeA") {
		t.Errorf("the proxy's nameserver was asked %v", dns.Asked())
	}
	if code := getCommand(t.Context(), []string{"-socks5", ln.Addr().String(), "http://nosuch.example/"}, io.Discard, &stderr); code != 1 {
		t.Errorf("a name the proxy cannot resolve: exit %d, want 1", code)
	}
}

// TestGetWebSocket runs get -websocket against serve: the handshake, one
// message and its answer, naming the service and version.
func TestGetWebSocket(t *testing.T) {
	r := startServe(t, "-service", "echo", "-version", "v2")
	var stdout, stderr bytes.Buffer
	if code := getCommand(t.Context(), []string{"-websocket", "hello over ws", r.url + "/ws"}, &stdout, &stderr); code != 0 {
		t.Fatalf("get -websocket: exit %d: %s", code, stderr.String())
	}
	if got, want := stdout.String(), "echo v2: hello over ws\n"; got != want {
		t.Errorf("answer %q, want %q", got, want)
	}
	if !bytes.Contains(stderr.Bytes(), []byte("HTTP/1.1 101 Switching Protocols")) {
		t.Errorf("stderr %q, want the handshake's status line", stderr.String())
	}
	// No WebSocket server there: exit 1.
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "no") }))
	defer plain.Close()
	if code := getCommand(t.Context(), []string{"-websocket", "x", plain.URL}, io.Discard, io.Discard); code != 1 {
		t.Errorf("get -websocket to a plain HTTP server: exit %d, want 1", code)
	}
}
