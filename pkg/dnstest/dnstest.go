// Package dnstest is a DNS server for tests: DNS over TCP (RFC 7766
// framing) on a listener the caller opens (Serve), or over UDP on a packet
// socket (ServePacket), answering from a fixed table, as net/http/httptest
// does for HTTP. It records the questions it is asked.
package dnstest

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"

	"golang.org/x/net/dns/dnsmessage"
)

// Server answers A and AAAA questions from its table: a name in the table
// gets its address when the address is of the question's family and no
// answer otherwise; a name not in the table gets NXDOMAIN.
type Server struct {
	// Addr is the listener's address.
	Addr netip.AddrPort

	ln    net.Listener
	pc    net.PacketConn
	table map[string]netip.Addr
	mu    sync.Mutex
	asked []string
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// Serve answers on ln until Close. Table keys are absolute names in lower
// case ("host.example.").
func Serve(ln net.Listener, table map[string]netip.Addr) *Server {
	s := &Server{ln: ln, table: table, conns: map[net.Conn]bool{}}
	if a, ok := ln.Addr().(*net.TCPAddr); ok {
		s.Addr = a.AddrPort()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = true
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(c)
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				_ = c.Close()
			}()
		}
	}()
	return s
}

// ServePacket answers the queries arriving on pc (UDP) until Close, as
// Serve does.
func ServePacket(pc net.PacketConn, table map[string]netip.Addr) *Server {
	s := &Server{pc: pc, table: table, conns: map[net.Conn]bool{}}
	if a, ok := pc.LocalAddr().(*net.UDPAddr); ok {
		s.Addr = a.AddrPort()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out, err := s.answer(buf[:n]); err == nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
	return s
}

// Asked returns the questions asked so far, in order, each as
// "<name> <type>" ("host.example. TypeA").
func (s *Server) Asked() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.asked...)
}

// Close stops the server and waits for its connections to end.
func (s *Server) Close() error {
	var err error
	if s.ln != nil {
		err = s.ln.Close()
	} else {
		err = s.pc.Close()
	}
	s.mu.Lock()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) serve(c net.Conn) {
	for {
		var n [2]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		msg := make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(c, msg); err != nil {
			return
		}
		out, err := s.answer(msg)
		if err != nil {
			return
		}
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(out))), out...)); err != nil {
			return
		}
	}
}

func (s *Server) answer(msg []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	name := strings.ToLower(q.Name.String())
	s.mu.Lock()
	s.asked = append(s.asked, name+" "+q.Type.String())
	s.mu.Unlock()
	a, known := s.table[name]
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	if !known {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	rr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 30}
	switch {
	case known && q.Type == dnsmessage.TypeA && a.Is4():
		err = b.AResource(rr, dnsmessage.AResource{A: a.As4()})
	case known && q.Type == dnsmessage.TypeAAAA && a.Is6() && !a.Is4In6():
		err = b.AAAAResource(rr, dnsmessage.AAAAResource{AAAA: a.As16()})
	}
	if err != nil {
		return nil, err
	}
	return b.Finish()
}
