//go:build netns

package ztunneltest

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"

	"github.com/ambit-mesh/ambit/integration/netlab"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// fakeWaypoint is a minimal L4 waypoint in a lab pod: it accepts HBONE on
// 15008 with its own identity and forwards each tunnel over HBONE, as
// itself, to the destination pod's ztunnel. Authorities that are a
// service VIP are mapped with the resolve function.
type fakeWaypoint struct {
	mu      sync.Mutex
	seen    []string // "<authority> <peer>"
	headers []http.Header
}

// lastHeader returns the request headers of the last tunnel.
func (fw *fakeWaypoint) lastHeader() http.Header {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if len(fw.headers) == 0 {
		return nil
	}
	return fw.headers[len(fw.headers)-1]
}

func startFakeWaypoint(t *testing.T, p *netlab.Pod, ca *identity.Authority, self identity.SPIFFEID,
	resolve func(netip.AddrPort) (netip.AddrPort, identity.SPIFFEID)) *fakeWaypoint {
	t.Helper()
	mgr, err := identity.NewManager(identity.AuthorityFetcher{Authority: ca}, identity.ManagerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Add(t.Context(), self); err != nil {
		t.Fatal(err)
	}
	ns, err := redirect.OpenNetns(p.NetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	ln, err := ns.Listen(t.Context(), hbone.Port)
	if err != nil {
		t.Fatal(err)
	}
	dialer := &hbone.Dialer{
		TLSConfig: func(src, dst identity.SPIFFEID) (*tls.Config, error) {
			return identity.ClientConfig(mgr.Cert(src), mgr.Roots(), dst), nil
		},
		DialContext: ns.Dialer().DialContext,
	}
	fw := &fakeWaypoint{}
	srv := &hbone.Server{TLSConfig: identity.ServerConfig(mgr.Cert(self), mgr.Roots(), nil), Handler: func(st *hbone.Stream) {
		fw.mu.Lock()
		fw.seen = append(fw.seen, st.Authority().String()+" "+st.Peer().String())
		fw.headers = append(fw.headers, st.Header().Clone())
		fw.mu.Unlock()
		target, id := resolve(st.Authority())
		up, err := dialer.Dial(st.Context(), hbone.Request{Source: self, Destination: id,
			Address: netip.AddrPortFrom(target.Addr(), hbone.Port), Authority: target, Header: st.Header().Clone()})
		if err != nil {
			_ = st.Reject(503, err.Error())
			return
		}
		if err := st.Accept(); err != nil {
			up.Close()
			return
		}
		_, _ = hbone.Join(st, up)
		up.Close()
	}}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); dialer.Close() })
	return fw
}

func (fw *fakeWaypoint) saw(entry string) bool {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for _, s := range fw.seen {
		if s == entry {
			return true
		}
	}
	return false
}

// count returns how many tunnels the waypoint has accepted.
func (fw *fakeWaypoint) count() int {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return len(fw.seen)
}

// dialHBONEFrom opens a tunnel from inside a lab pod with a certificate for
// src to the HBONE server at server:15008, returning the Dial error.
func dialHBONEFrom(t *testing.T, p *netlab.Pod, ca *identity.Authority, src, dst identity.SPIFFEID, server netip.Addr, authority netip.AddrPort) error {
	t.Helper()
	c, err := tunnelFrom(t, p, ca, src, dst, server, authority)
	if err == nil {
		c.Close()
	}
	return err
}

// tunnelFrom opens an HBONE tunnel from inside pod p as src to server's
// ztunnel (expecting dst) with the given authority; the caller closes it.
func tunnelFrom(t *testing.T, p *netlab.Pod, ca *identity.Authority, src, dst identity.SPIFFEID, server netip.Addr, authority netip.AddrPort) (net.Conn, error) {
	t.Helper()
	mgr, err := identity.NewManager(identity.AuthorityFetcher{Authority: ca}, identity.ManagerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Add(t.Context(), src); err != nil {
		t.Fatal(err)
	}
	d := &hbone.Dialer{
		TLSConfig: func(s, d identity.SPIFFEID) (*tls.Config, error) {
			return identity.ClientConfig(mgr.Cert(s), mgr.Roots(), d), nil
		},
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = p.Do(func() error { c, err = (&net.Dialer{}).DialContext(ctx, network, addr); return err })
			return c, err
		},
	}
	t.Cleanup(func() { d.Close() })
	return d.Dial(t.Context(), hbone.Request{Source: src, Destination: dst,
		Address: netip.AddrPortFrom(server, hbone.Port), Authority: authority})
}
