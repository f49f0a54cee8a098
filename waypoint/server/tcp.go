package server

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/waypoint/authz"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
)

// tcpDialTimeout bounds opening the tunnel to an endpoint.
const tcpDialTimeout = 10 * time.Second

// serveTCP passes a tunnel through to one of the service's endpoints (or
// to the workload it was addressed to), over HBONE as the waypoint: L4
// authorization (principals, namespaces, ports), an endpoint in round
// robin, and the bytes copied both ways with half-close. Before the tunnel
// is accepted a refusal answers the CONNECT: 403 for policy, 503 when no
// endpoint can be reached. After sniffing (accepted set, pre the bytes
// read) the stream is accepted already: a refusal resets it, and pre is
// sent to the endpoint first.
func (s *Server) serveTCP(st *hbone.Stream, d destination, pre []byte, accepted bool) {
	svc, port := d.service, d.port
	res := &proxy.ConnResult{Service: svc, Port: port, Source: s.sourceOf(st), Start: time.Now()}
	defer func() {
		res.Duration = time.Since(res.Start)
		if s.cfg.OnConn != nil {
			s.cfg.OnConn(res, true)
		}
	}()
	refuse := func(code int, msg string) {
		if accepted {
			_ = st.Reset()
			return
		}
		_ = st.Reject(code, msg)
	}
	z := authz.Decision{Reason: "authorization policies not received yet"}
	if policies := s.cfg.Store.policiesFor(svc, port); policies != nil {
		z = policies.Evaluate(s.cfg.Gateway, authz.Request{
			Peer: res.Source.Identity, Addr: res.Source.Address, Service: svc, Port: port, L4: true,
		})
	}
	res.Authz = proxy.AuthzDecision{Evaluated: true, Allow: z.Allow, Policy: z.Policy}
	if !z.Allow {
		res.Flags = proxy.FlagDenied
		msg := "RBAC: access denied"
		if z.Policy != "" {
			msg += " by " + z.Policy
		}
		refuse(http.StatusForbidden, msg)
		return
	}
	var eps []proxy.Endpoint
	if d.workload != nil {
		eps = []proxy.Endpoint{*d.workload}
	} else {
		eps = s.cfg.Store.Endpoints(st.Context(), svc, port)
	}
	if len(eps) == 0 {
		res.Flags = proxy.FlagNoHealthyUpstream
		refuse(http.StatusServiceUnavailable, "no healthy endpoint for "+svc)
		return
	}
	ep := eps[int((s.tcpNext.Add(1)-1)%uint64(len(eps)))]
	res.Endpoint, res.Workload = ep.Address, ep.Workload
	ctx, cancel := context.WithTimeout(st.Context(), tcpDialTimeout)
	up, err := s.dialEndpoint(ctx, ep, res.Source.Address)
	cancel()
	if err != nil {
		s.log.Debug("tcp pass-through: endpoint unreachable", "service", svc, "endpoint", ep.Address, "err", err)
		res.Flags = proxy.FlagUpstreamConnectionFailure
		refuse(http.StatusServiceUnavailable, "endpoint unreachable")
		return
	}
	defer up.Close()
	if !accepted {
		if err := st.Accept(); err != nil {
			return
		}
	}
	res.Opened = true
	if s.cfg.OnConn != nil {
		s.cfg.OnConn(res, false)
	}
	client := &countingConn{Conn: &replayConn{Conn: st, pre: pre}}
	upstream := &countingConn{Conn: up}
	_, _ = hbone.Join(client, upstream)
	_ = st.Close()
	res.BytesReceived, res.BytesSent = client.read.Load(), upstream.read.Load()
}

// dialEndpoint opens an HBONE tunnel, as the waypoint, to an endpoint, for
// one client connection: its Forwarded for= names the client, so that the
// endpoint's ztunnel connects to the application from the client's address
// (it believes that only from a waypoint serving the pod).
func (s *Server) dialEndpoint(ctx context.Context, ep proxy.Endpoint, client netip.Addr) (net.Conn, error) {
	addr, err := netip.ParseAddrPort(ep.Address)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", ep.Address, err)
	}
	idStr, err := s.cfg.Store.workloadIdentity(ep.Workload)
	if err != nil {
		return nil, err
	}
	dst, err := identity.ParseSPIFFEID(idStr)
	if err != nil {
		return nil, fmt.Errorf("workload %s identity: %w", ep.Workload, err)
	}
	var h http.Header
	if client.IsValid() {
		h = http.Header{"Forwarded": {hbone.ForwardedFor(client)}}
	}
	return s.dialer.Dial(ctx, hbone.Request{
		Source:      s.cfg.Identity,
		Destination: dst,
		Address:     netip.AddrPortFrom(addr.Addr(), s.cfg.HBONEPort),
		Authority:   addr,
		Header:      h,
	})
}

// countingConn counts the bytes read from a connection; it keeps the
// connection's CloseWrite for half-close.
type countingConn struct {
	net.Conn
	read atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// CloseWrite half-closes the connection when it can, else closes it.
func (c *countingConn) CloseWrite() error {
	if hc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	return c.Conn.Close()
}
