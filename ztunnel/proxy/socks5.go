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
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/metrics"
)

// SOCKS5 reply codes (RFC 1928 section 6).
const (
	socksSucceeded          = 0x00
	socksNotAllowed         = 0x02
	socksRefused            = 0x05
	socksCommandUnsupported = 0x07
	socksAddrUnsupported    = 0x08
)

// socksHandshakeTimeout bounds the SOCKS5 negotiation.
const socksHandshakeTimeout = 10 * time.Second

// SOCKS5 serves ztunnel's explicit mode: an application that is not
// captured (or a tool on the node) connects to a SOCKS5 listener and asks
// for a destination; ztunnel routes it exactly as it routes a captured
// outbound connection, as the source workload the SOCKS5 server was made
// for. Only CONNECT with no authentication and IP address types is
// supported: domain names are refused (ztunnel resolves no names).
type SOCKS5 struct {
	out *Outbound
	log *slog.Logger

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// NewSOCKS5 returns a SOCKS5 server acting for the workload named source
// ("<namespace>/<pod>"), whose certificate it obtains from env.Certs on
// first use. Upstream sockets are opened with dial (nil: a plain
// net.Dialer, in ztunnel's own network namespace).
func NewSOCKS5(env *Env, source string, dial func(ctx context.Context, network, address string) (net.Conn, error)) *SOCKS5 {
	o := NewOutbound(env, source, dial)
	o.ensureCert = env.Certs.Add
	return &SOCKS5{out: o, log: o.log.With("listener", "socks5", "source", source), conns: map[net.Conn]struct{}{}}
}

// Serve accepts SOCKS5 clients on ln until ctx ends or ln fails; it then
// closes ln and every connection being served.
func (s *SOCKS5) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer func() {
		s.mu.Lock()
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		wg.Wait()
		_ = s.out.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				_ = c.Close()
			}()
			s.serve(ctx, c)
		}()
	}
}

func (s *SOCKS5) serve(ctx context.Context, c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(socksHandshakeTimeout))
	dst, err := socksHandshake(c)
	if err != nil {
		s.log.Debug("socks5 handshake failed", "err", err)
		return
	}
	up, labels, err := s.out.Open(ctx, dst, netip.Addr{})
	if err != nil {
		code := byte(socksRefused)
		if labels.ResponseFlags == metrics.FlagDenied {
			code = socksNotAllowed
		}
		_ = socksReply(c, code)
		return
	}
	if err := socksReply(c, socksSucceeded); err != nil {
		_ = up.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	s.out.Join(c, up, labels)
}

// socksHandshake negotiates "no authentication" and reads a CONNECT
// request, answering the errors it finds itself.
func socksHandshake(c net.Conn) (netip.AddrPort, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return netip.AddrPort{}, err
	}
	if hdr[0] != 5 {
		return netip.AddrPort{}, fmt.Errorf("SOCKS version %d", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, methods); err != nil {
		return netip.AddrPort{}, err
	}
	noAuth := false
	for _, m := range methods {
		noAuth = noAuth || m == 0
	}
	if !noAuth {
		_, _ = c.Write([]byte{5, 0xff})
		return netip.AddrPort{}, errors.New("client offers no acceptable authentication method")
	}
	if _, err := c.Write([]byte{5, 0}); err != nil {
		return netip.AddrPort{}, err
	}
	var req [4]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return netip.AddrPort{}, err
	}
	if req[0] != 5 {
		return netip.AddrPort{}, fmt.Errorf("SOCKS version %d in request", req[0])
	}
	if req[1] != 1 {
		_ = socksReply(c, socksCommandUnsupported)
		return netip.AddrPort{}, fmt.Errorf("SOCKS command %d not supported", req[1])
	}
	var addr netip.Addr
	switch req[3] {
	case 1:
		var b [4]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return netip.AddrPort{}, err
		}
		addr = netip.AddrFrom4(b)
	case 4:
		var b [16]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return netip.AddrPort{}, err
		}
		addr = netip.AddrFrom16(b).Unmap()
	default:
		_ = socksReply(c, socksAddrUnsupported)
		return netip.AddrPort{}, fmt.Errorf("SOCKS address type %d not supported", req[3])
	}
	var port [2]byte
	if _, err := io.ReadFull(c, port[:]); err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(addr, binary.BigEndian.Uint16(port[:])), nil
}

// socksReply answers a request with code and an unspecified bound address.
func socksReply(c net.Conn, code byte) error {
	_, err := c.Write([]byte{5, code, 0, 1, 0, 0, 0, 0, 0, 0})
	return err
}
