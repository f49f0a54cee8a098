package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
)

// SOCKS5 reply codes (RFC 1928 section 6).
const (
	socksSucceeded          = 0x00
	socksNotAllowed         = 0x02
	socksHostUnreachable    = 0x04
	socksRefused            = 0x05
	socksCommandUnsupported = 0x07
	socksAddrUnsupported    = 0x08
)

// SOCKS5 address types.
const (
	socksIPv4   = 0x01
	socksDomain = 0x03
	socksIPv6   = 0x04
)

// socksHandshakeTimeout bounds the SOCKS5 negotiation.
const socksHandshakeTimeout = 10 * time.Second

// SOCKS5 serves ztunnel's explicit mode: an application connects to a
// SOCKS5 listener and asks for a destination; ztunnel routes it exactly as
// it routes a captured outbound connection, as the source workload the
// SOCKS5 server was made for. Only CONNECT with no authentication is
// supported. Destinations are IPv4 or IPv6 addresses, the hostname of a
// service of the mesh (see resolveName), or any other name, which the
// source pod's resolver settings resolve (see lookup).
type SOCKS5 struct {
	out   *Outbound
	log   *slog.Logger
	srcIP netip.Addr

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// conns maps each client connection being served to its upstream
	// (nil until opened): Close closes both.
	conns connSet
}

// NewSOCKS5 returns a node-level SOCKS5 server acting for the workload
// named source ("<namespace>/<pod>"), whose certificate it obtains from
// env.Certs on first use. Upstream sockets are opened with dial (nil: a
// plain net.Dialer, in ztunnel's own network namespace).
func NewSOCKS5(env *Env, source string, dial func(ctx context.Context, network, address string) (net.Conn, error)) *SOCKS5 {
	s := newSOCKS5(env, source, netip.Addr{}, dial)
	s.out.ensureCert = env.Certs.Add
	return s
}

// NewPodSOCKS5 returns the SOCKS5 server of one captured pod: source is the
// pod's Workload name, srcIP its address (what the destination is told the
// connection came from, as for captured traffic), and dial opens sockets in
// the pod's namespace. The caller keeps the pod's certificate in env.Certs
// while the server runs.
func NewPodSOCKS5(env *Env, source string, srcIP netip.Addr, dial func(ctx context.Context, network, address string) (net.Conn, error)) *SOCKS5 {
	return newSOCKS5(env, source, srcIP, dial)
}

func newSOCKS5(env *Env, source string, srcIP netip.Addr, dial func(ctx context.Context, network, address string) (net.Conn, error)) *SOCKS5 {
	o := NewOutbound(env, source, dial)
	s := &SOCKS5{out: o, log: o.log.With("listener", "socks5", "source", source), srcIP: srcIP, conns: newConnSet()}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// socksLookupTimeout bounds the resolution of one name outside the mesh,
// search list included.
const socksLookupTimeout = 5 * time.Second

// podNameserverPort is the port of a pod's own nameservers (dnsConfig
// names addresses only); tests change it.
var podNameserverPort uint16 = 53

// maxNameservers is how many nameservers a resolv.conf holds: the kubelet
// keeps the first three.
const maxNameservers = 3

// resolver is how the source workload resolves names, as its resolv.conf
// says: the nameservers to ask, the search list, and ndots.
type resolver struct {
	servers  []netip.AddrPort
	searches []string
	ndots    int
}

// resolverFor returns the source workload's resolver: the pod's DNS
// settings from the mesh configuration (Workload.dns) with nameservers
// (Env.Nameservers, the cluster's DNS) first unless its dnsPolicy is None.
// A workload the configuration does not know, or one without DNS settings
// (from a controller that predates them), gets nameservers and no search
// list.
func resolverFor(snap *config.Snapshot, source string, nameservers []netip.AddrPort) resolver {
	var d *configv1alpha1.DNSConfig
	var own []netip.Addr
	if w := snap.Workload(source); w != nil {
		d, own = w.Proto.GetDns(), w.DNSNameservers
	}
	r := resolver{ndots: 1}
	add := func(a netip.AddrPort) {
		if len(r.servers) < maxNameservers && !slices.Contains(r.servers, a) {
			r.servers = append(r.servers, a)
		}
	}
	if d.GetPolicy() != configv1alpha1.DNSConfig_POLICY_NONE {
		for _, a := range nameservers {
			add(a)
		}
	}
	for _, a := range own {
		add(netip.AddrPortFrom(a, podNameserverPort))
	}
	if d != nil {
		r.searches, r.ndots = d.GetSearches(), int(d.GetNdots())
	}
	return r
}

// names returns the absolute names to ask for name, in order, as glibc's
// and Go's resolvers do: a name with a final dot is only itself; a name
// with at least ndots dots is tried as it is first, then with each search
// domain; one with fewer dots with each search domain first, then as it
// is.
func (r resolver) names(name string) []string {
	if strings.HasSuffix(name, ".") {
		return []string{name}
	}
	var out []string
	asIs := strings.Count(name, ".") >= r.ndots
	if asIs {
		out = append(out, name+".")
	}
	for _, s := range r.searches {
		if s = strings.Trim(s, "."); s != "" {
			out = append(out, name+"."+s+".")
		}
	}
	if !asIs {
		out = append(out, name+".")
	}
	return out
}

// lookup resolves a name that is not a service of the mesh as the source
// pod would (see resolverFor; ztunnel cannot read the pod's resolv.conf,
// so the settings come from its spec): each candidate of the search list
// (see names) is asked as an absolute name, over TCP, through the SOCKS5
// server's dial (from inside the pod, for a pod's server). As with glibc,
// the nameservers are asked in order and the next one only when one fails
// (no answer, refused, server failure); "no such name" from one is the
// answer for that candidate, and the next candidate is tried. The result
// is the first IPv4 address, else the first address.
func (s *SOCKS5) lookup(name string) (netip.Addr, error) {
	if strings.Trim(name, ".") == "" {
		return netip.Addr{}, errors.New("empty name")
	}
	r := resolverFor(s.out.env.Config(), s.out.source, s.out.env.Nameservers)
	if len(r.servers) == 0 {
		return netip.Addr{}, errors.New("not a service of the mesh, and no nameserver is configured")
	}
	ctx, cancel := context.WithTimeout(s.ctx, socksLookupTimeout)
	defer cancel()
	names := r.names(name)
	for _, n := range names {
		as, err := s.ask(ctx, r.servers, n)
		if err != nil {
			return netip.Addr{}, err
		}
		for _, a := range as {
			if a.Unmap().Is4() {
				return a.Unmap(), nil
			}
		}
		if len(as) > 0 {
			return as[0], nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no such host: asked %s of %v", strings.Join(names, ", "), r.servers)
}

// socksServerTimeout bounds the questions to one nameserver, so that one
// that does not answer leaves time for the next.
const socksServerTimeout = 2 * time.Second

// ask resolves the absolute name n with the first of servers that answers:
// its addresses, none when the name does not exist, or an error when no
// server answered.
func (s *SOCKS5) ask(ctx context.Context, servers []netip.AddrPort, n string) ([]netip.Addr, error) {
	var errs []string
	for _, server := range servers {
		dns := &net.Resolver{PreferGo: true, StrictErrors: true,
			// A stream connection makes Go's resolver use DNS over TCP
			// framing; every query goes to server, whatever ztunnel's own
			// resolv.conf names.
			Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return s.out.dial(ctx, "tcp", server.String())
			}}
		qctx, cancel := context.WithTimeout(ctx, socksServerTimeout)
		as, err := dns.LookupNetIP(qctx, "ip", n)
		cancel()
		var de *net.DNSError
		switch {
		case err == nil:
			return as, nil
		case errors.As(err, &de) && de.IsNotFound:
			return nil, nil
		case de != nil:
			// Go's error names the server of ztunnel's own resolv.conf,
			// not the one asked.
			errs = append(errs, fmt.Sprintf("lookup %s with %v: %s", n, server, de.Err))
		default:
			errs = append(errs, fmt.Sprintf("lookup %s with %v: %v", n, server, err))
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.New(strings.Join(errs, "; "))
}

// Serve accepts SOCKS5 clients on ln until ctx ends or ln fails; it then
// closes ln and every connection being served (Close).
func (s *SOCKS5) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	err := s.Accept(ln)
	if ctx.Err() != nil {
		err = nil
	}
	_ = s.Close()
	return err
}

// Accept serves SOCKS5 clients on ln until ln is closed (it then returns
// nil) or fails. The connections being served go on: Drain or Close ends
// them.
func (s *SOCKS5) Accept(ln net.Listener) error {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.ctx.Err() != nil {
				return nil
			}
			if !isTemporary(err) {
				return err
			}
			// Temporary failure (e.g. EMFILE): back off and go on.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed", "err", err, "retry", delay)
			select {
			case <-time.After(delay):
				continue
			case <-s.ctx.Done():
				return nil
			}
		}
		delay = 0
		if !s.conns.track(c) {
			_ = c.Close()
			return nil
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.serve(c)
		}()
	}
}

// isTemporary reports the accept errors worth retrying.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Active counts the connections being served.
func (s *SOCKS5) Active() int { return s.conns.active() }

// Drain lets the connections being served finish for up to timeout, then
// closes whatever is left as Close does; the returned channel is closed
// when that is done. Close the listener first.
func (s *SOCKS5) Drain(timeout time.Duration) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(s.ctx, timeout)
		defer cancel()
		s.conns.waitIdle(ctx, s.log)
		_ = s.Close()
	}()
	return done
}

// Close aborts every connection being served, waits for their goroutines
// and closes the pooled tunnels. Accept returns nil afterwards.
func (s *SOCKS5) Close() error {
	conns, ok := s.conns.shut()
	if !ok {
		return nil
	}
	s.cancel()
	for c, up := range conns {
		_ = c.Close()
		if up != nil {
			_ = up.Close()
		}
	}
	s.wg.Wait()
	return s.out.Close()
}

// untrack forgets c and closes it.
func (s *SOCKS5) untrack(c net.Conn) {
	s.conns.untrack(c)
	_ = c.Close()
}

func (s *SOCKS5) serve(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(socksHandshakeTimeout))
	req, err := socksHandshake(c)
	if err != nil {
		s.log.Debug("socks5 handshake failed", "err", err)
		return
	}
	dst := req.addr
	if req.name != "" {
		a, ok := resolveName(s.out.env.Config(), s.out.source, req.name)
		if !ok {
			var err error
			if a, err = s.lookup(req.name); err != nil {
				s.log.Info("socks5 destination name not resolved", "name", req.name, "err", err)
				s.out.env.Metrics.OutboundErrors.WithLabelValues("socks5_unknown_name").Inc()
				_ = socksReply(c, socksHostUnreachable)
				return
			}
		}
		dst = netip.AddrPortFrom(a, req.addr.Port())
	}
	up, labels, err := s.out.Open(s.ctx, dst, s.srcIP, nil)
	if err != nil {
		code := byte(socksRefused)
		switch labels.ResponseFlags {
		case metrics.FlagDenied:
			code = socksNotAllowed
		case metrics.FlagNoHealthyUpstream:
			code = socksHostUnreachable
		}
		_ = socksReply(c, code)
		return
	}
	if !s.conns.setUpstream(c, up) {
		_ = up.Close()
		return
	}
	if err := socksReply(c, socksSucceeded); err != nil {
		_ = up.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	s.out.Join(c, up, labels, 0)
}

// resolveName maps a destination name to an address the way the mesh
// knows it: an IP literal is itself; a service hostname
// ("<name>.<namespace>.svc.cluster.local", as Service.hostname says, any
// case, with or without the final dot) and the short forms
// "<name>.<namespace>", "<name>.<namespace>.svc" and, in the source
// workload's namespace, "<name>" are the service's first VIP (IPv4
// preferred). Anything else is not resolved.
func resolveName(snap *config.Snapshot, source, name string) (netip.Addr, bool) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if a, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
		return a.Unmap(), true
	}
	if name == "" {
		return netip.Addr{}, false
	}
	srcNS, _, _ := strings.Cut(source, "/")
	var best *config.Service
	for _, svc := range snap.Services {
		if len(svc.VIPs) == 0 {
			continue
		}
		short, _ := strings.CutPrefix(svc.Name, svc.Namespace+"/")
		match := strings.EqualFold(svc.Proto.GetHostname(), name) ||
			name == short+"."+svc.Namespace ||
			name == short+"."+svc.Namespace+".svc" ||
			name == short && svc.Namespace == srcNS
		if match && (best == nil || svc.Name < best.Name) {
			best = svc
		}
	}
	if best == nil {
		return netip.Addr{}, false
	}
	for _, a := range best.VIPs {
		if a.Unmap().Is4() {
			return a.Unmap(), true
		}
	}
	return best.VIPs[0], true
}

// socksRequest is a CONNECT request: addr, or name with addr's port.
type socksRequest struct {
	addr netip.AddrPort
	name string
}

// socksHandshake negotiates "no authentication" and reads a CONNECT
// request, answering the errors it finds itself.
func socksHandshake(c net.Conn) (socksRequest, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return socksRequest{}, fmt.Errorf("method negotiation: %w", err)
	}
	if hdr[0] != 5 {
		return socksRequest{}, fmt.Errorf("SOCKS version %d", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, methods); err != nil {
		return socksRequest{}, fmt.Errorf("method negotiation: %w", err)
	}
	noAuth := false
	for _, m := range methods {
		noAuth = noAuth || m == 0
	}
	if !noAuth {
		_, _ = c.Write([]byte{5, 0xff})
		return socksRequest{}, errors.New("client offers no acceptable authentication method")
	}
	if _, err := c.Write([]byte{5, 0}); err != nil {
		return socksRequest{}, err
	}
	var req [4]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return socksRequest{}, fmt.Errorf("request: %w", err)
	}
	if req[0] != 5 {
		return socksRequest{}, fmt.Errorf("SOCKS version %d in request", req[0])
	}
	if req[1] != 1 {
		_ = socksReply(c, socksCommandUnsupported)
		return socksRequest{}, fmt.Errorf("SOCKS command %d not supported", req[1])
	}
	var r socksRequest
	var addr netip.Addr
	switch req[3] {
	case socksIPv4:
		var b [4]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return socksRequest{}, fmt.Errorf("request: %w", err)
		}
		addr = netip.AddrFrom4(b)
	case socksIPv6:
		var b [16]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return socksRequest{}, fmt.Errorf("request: %w", err)
		}
		addr = netip.AddrFrom16(b).Unmap()
	case socksDomain:
		var n [1]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return socksRequest{}, fmt.Errorf("request: %w", err)
		}
		b := make([]byte, n[0])
		if _, err := io.ReadFull(c, b); err != nil {
			return socksRequest{}, fmt.Errorf("request: %w", err)
		}
		if n[0] == 0 {
			_ = socksReply(c, socksHostUnreachable)
			return socksRequest{}, errors.New("empty SOCKS domain name")
		}
		r.name = string(b)
	default:
		_ = socksReply(c, socksAddrUnsupported)
		return socksRequest{}, fmt.Errorf("SOCKS address type %d not supported", req[3])
	}
	var port [2]byte
	if _, err := io.ReadFull(c, port[:]); err != nil {
		return socksRequest{}, fmt.Errorf("request: %w", err)
	}
	r.addr = netip.AddrPortFrom(addr, binary.BigEndian.Uint16(port[:]))
	if r.addr.Port() == 0 {
		_ = socksReply(c, socksHostUnreachable)
		return socksRequest{}, errors.New("SOCKS destination port 0")
	}
	return r, nil
}

// socksReply answers a request with code and an unspecified bound address.
func socksReply(c net.Conn, code byte) error {
	_, err := c.Write([]byte{5, code, 0, socksIPv4, 0, 0, 0, 0, 0, 0})
	return err
}
