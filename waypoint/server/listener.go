package server

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"

	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
)

// streamListener is a net.Listener whose connections are accepted HBONE
// streams, handed over by the hbone.Server's Handler.
type streamListener struct {
	ch        chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
	addr      net.Addr
}

func newStreamListener(addr net.Addr) *streamListener {
	if addr == nil {
		addr = &net.TCPAddr{IP: net.IPv4zero}
	}
	return &streamListener{ch: make(chan net.Conn), closed: make(chan struct{}), addr: addr}
}

// Accept returns the next stream, or net.ErrClosed once closed.
func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// push hands c to Accept; false if the listener is closed.
func (l *streamListener) push(c net.Conn) bool {
	select {
	case <-l.closed:
		return false
	default:
	}
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		return false
	}
}

// Close makes Accept and push fail; it may be called more than once.
func (l *streamListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *streamListener) Addr() net.Addr { return l.addr }

// streamConn is an accepted stream with the destination it was sent to.
// done is closed by Close, so the hbone Handler can wait for the HTTP
// server to finish with the stream. pre are bytes sniffing read, which the
// first Reads return.
type streamConn struct {
	*hbone.Stream
	dest     destination
	source   proxy.Source
	pre      []byte
	done     chan struct{}
	doneOnce sync.Once
}

func (c *streamConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Stream.Read(p)
}

func (c *streamConn) Close() error {
	err := c.Stream.Close()
	c.doneOnce.Do(func() { close(c.done) })
	return err
}

// forwardedFor returns the IP of the first for= element of a Forwarded
// header (RFC 7239), as the sending ztunnel writes it.
func forwardedFor(h http.Header) (netip.Addr, bool) {
	v := h.Get("Forwarded")
	if v == "" {
		return netip.Addr{}, false
	}
	first, _, _ := strings.Cut(v, ",")
	for pair := range strings.SplitSeq(first, ";") {
		k, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok || !strings.EqualFold(k, "for") {
			continue
		}
		val = strings.Trim(val, `"`)
		if ap, err := netip.ParseAddrPort(val); err == nil {
			return ap.Addr().Unmap(), true
		}
		val = strings.TrimSuffix(strings.TrimPrefix(val, "["), "]")
		if ip, err := netip.ParseAddr(val); err == nil {
			return ip.Unmap(), true
		}
		return netip.Addr{}, false
	}
	return netip.Addr{}, false
}
