package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/ambit-mesh/ambit/ztunnel/config"
)

// DNS capture (ztunnel -dns-capture): the capture rules of a pod send its
// DNS queries over UDP to DNSServer, on the pod's loopback addresses. A
// question for the A or AAAA records of a service of the mesh (its
// hostname, "<name>.<namespace>.svc.<cluster domain>", the name the pod's
// resolver asks once it has applied its search list) is answered from the
// configuration: the service's VIPs of that family, TTL dnsTTL, no record
// when it has none of that family. Everything else (other names, other
// types, several questions) is forwarded as it is to the pod's nameservers
// (resolverFor: the cluster's DNS first unless its dnsPolicy is None, then
// its own dnsConfig nameservers) from inside the pod, and their answer is
// sent back as it is; when none answers, the pod gets SERVFAIL.
const (
	// dnsTTL is the TTL of the answers from the configuration, as
	// Istio's DNS proxy gives.
	dnsTTL = 30
	// dnsForwardTimeout bounds the wait for one nameserver.
	dnsForwardTimeout = 2 * time.Second
	// dnsMaxInFlight bounds the queries of one pod being answered at once;
	// more are dropped (the pod's resolver retries).
	dnsMaxInFlight = 256
	// dnsMaxMessage is the largest DNS message over UDP.
	dnsMaxMessage = 65535
)

// DNSServer answers the DNS queries of one captured pod.
type DNSServer struct {
	env    *Env
	log    *slog.Logger
	source string
	dial   func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)

	ctx      context.Context
	cancel   context.CancelFunc
	inFlight chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	pcs      []net.PacketConn
}

// NewPodDNS returns the DNS server of workload source ("<ns>/<pod>"); dial
// opens a UDP socket to a nameserver from inside the pod, one that the
// capture rules do not redirect.
func NewPodDNS(env *Env, source string, dial func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)) *DNSServer {
	ctx, cancel := context.WithCancel(context.Background())
	log := env.Logger
	if log == nil {
		log = slog.Default()
	}
	return &DNSServer{env: env, log: log, source: source, dial: dial, ctx: ctx, cancel: cancel,
		inFlight: make(chan struct{}, dnsMaxInFlight)}
}

// Serve answers the queries that arrive on pc until Close.
func (s *DNSServer) Serve(pc net.PacketConn) {
	s.mu.Lock()
	s.pcs = append(s.pcs, pc)
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, dnsMaxMessage)
		for {
			n, from, err := pc.ReadFrom(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				// Not the end of the pod's DNS: log and go on reading.
				s.log.Warn("dns: read failed", "pod", s.source, "err", err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			select {
			case s.inFlight <- struct{}{}:
			default:
				s.count("dropped")
				continue
			}
			msg := append([]byte(nil), buf[:n]...)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() { <-s.inFlight }()
				if out := s.handle(msg); out != nil {
					_, _ = pc.WriteTo(out, from)
				}
			}()
		}
	}()
}

// Close closes the sockets and waits for the queries being answered.
func (s *DNSServer) Close() error {
	s.cancel()
	s.mu.Lock()
	for _, pc := range s.pcs {
		_ = pc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *DNSServer) count(result string) {
	if s.env.Metrics != nil {
		s.env.Metrics.DNSRequests.WithLabelValues(result).Inc()
	}
}

// handle returns the answer to one query, or nil to send none.
func (s *DNSServer) handle(msg []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || h.Response {
		s.count("malformed")
		return nil
	}
	q, qerr := p.Question()
	if qerr == nil {
		if _, err := p.Question(); errors.Is(err, dnsmessage.ErrSectionDone) {
			if out, ok := answerFromConfig(s.env.Config(), h, q); ok {
				s.count("local")
				return out
			}
		}
	}
	if out := s.forward(msg, h.ID); out != nil {
		s.count("forwarded")
		return out
	}
	s.count("failed")
	var qs []dnsmessage.Question
	if qerr == nil {
		qs = []dnsmessage.Question{q}
	}
	out, err := buildDNS(dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode,
		RecursionDesired: h.RecursionDesired, RCode: dnsmessage.RCodeServerFailure}, qs, nil)
	if err != nil {
		return nil
	}
	return out
}

// answerFromConfig answers an A or AAAA question for the hostname of a
// service of the mesh that has VIPs; ok is false for anything else.
func answerFromConfig(snap *config.Snapshot, h dnsmessage.Header, q dnsmessage.Question) ([]byte, bool) {
	if h.OpCode != 0 || q.Class != dnsmessage.ClassINET || (q.Type != dnsmessage.TypeA && q.Type != dnsmessage.TypeAAAA) {
		return nil, false
	}
	svc := serviceByHostname(snap, q.Name.String())
	if svc == nil {
		return nil, false
	}
	var rrs []dnsmessage.Resource
	for _, a := range svc.VIPs {
		a = a.Unmap()
		rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: dnsTTL}
		switch {
		case q.Type == dnsmessage.TypeA && a.Is4():
			rh.Type = dnsmessage.TypeA
			rrs = append(rrs, dnsmessage.Resource{Header: rh, Body: &dnsmessage.AResource{A: a.As4()}})
		case q.Type == dnsmessage.TypeAAAA && a.Is6():
			rh.Type = dnsmessage.TypeAAAA
			rrs = append(rrs, dnsmessage.Resource{Header: rh, Body: &dnsmessage.AAAAResource{AAAA: a.As16()}})
		}
	}
	out, err := buildDNS(dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true,
		RecursionDesired: h.RecursionDesired, RecursionAvailable: true}, []dnsmessage.Question{q}, rrs)
	if err != nil {
		return nil, false
	}
	return out, true
}

// serviceByHostname returns the service of the mesh whose hostname is name
// (any case, with or without the final dot) and that has VIPs (a headless
// service's names are the cluster DNS's to answer), or nil.
func serviceByHostname(snap *config.Snapshot, name string) *config.Service {
	name = strings.TrimSuffix(name, ".")
	if name == "" {
		return nil
	}
	var best *config.Service
	for _, svc := range snap.Services {
		if len(svc.VIPs) > 0 && strings.EqualFold(svc.Proto.GetHostname(), name) && (best == nil || svc.Name < best.Name) {
			best = svc
		}
	}
	return best
}

func buildDNS(h dnsmessage.Header, qs []dnsmessage.Question, answers []dnsmessage.Resource) ([]byte, error) {
	m := dnsmessage.Message{Header: h, Questions: qs, Answers: answers}
	return m.Pack()
}

// forward asks the pod's nameservers in order, each for up to
// dnsForwardTimeout, and returns the first answer whose ID is id (nil when
// none answers).
func (s *DNSServer) forward(msg []byte, id uint16) []byte {
	r := resolverFor(s.env.Config(), s.source, s.env.Nameservers)
	buf := make([]byte, dnsMaxMessage)
	for _, ns := range r.servers {
		if out := s.ask(ns, msg, id, buf); out != nil {
			return out
		}
	}
	return nil
}

func (s *DNSServer) ask(ns netip.AddrPort, msg []byte, id uint16, buf []byte) []byte {
	ctx, cancel := context.WithTimeout(s.ctx, dnsForwardTimeout)
	defer cancel()
	c, err := s.dial(ctx, ns)
	if err != nil {
		s.log.Debug("dns: nameserver unreachable", "pod", s.source, "nameserver", ns.String(), "err", err)
		return nil
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	if _, err := c.Write(msg); err != nil {
		return nil
	}
	for {
		n, err := c.Read(buf)
		if err != nil {
			s.log.Debug("dns: no answer from nameserver", "pod", s.source, "nameserver", ns.String(), "err", err)
			return nil
		}
		// A reply to another query (a late one to an earlier socket
		// cannot reach this one, but a spoofed one can): keep waiting.
		if n >= 12 && binary.BigEndian.Uint16(buf) == id && buf[2]&0x80 != 0 {
			return append([]byte(nil), buf[:n]...)
		}
	}
}
