package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// Client tuning.
const (
	// DefaultClientIdleTimeout closes a pooled connection without streams.
	DefaultClientIdleTimeout = 90 * time.Second
	// DefaultBulkStreamBytes is Dialer.BulkStreamBytes unless set: a
	// stream that has carried 4 MiB one way is a bulk transfer (at 1,000
	// requests of 1 KiB per second, a tunnel gets there after about an
	// hour, which costs one TLS handshake).
	DefaultBulkStreamBytes = 4 << 20
	// clientMaxFrameSize is the client's SETTINGS_MAX_FRAME_SIZE: the
	// largest DATA frame the server may send us (see serverMaxFrameSize).
	// The receive windows are in clientconn.go: 2 MiB per stream and 1 GiB
	// per connection.
	clientMaxFrameSize = 256 << 10
	// maxDialAttempts bounds retries of a CONNECT refused by a connection
	// that turned out unusable (GOAWAY, closed, REFUSED_STREAM).
	maxDialAttempts = 3
	// maxStatusBody is how much of a non-200 response body StatusError keeps.
	maxStatusBody = 512
)

// ErrDialerClosed is returned by Dial after Close.
var ErrDialerClosed = errors.New("hbone: dialer closed")

// StatusError is returned by Dial when the server answers the CONNECT with
// a status other than 200: 401/403 for policy, 503 for an unreachable
// destination, 400 for a request it found malformed.
type StatusError struct {
	Code int
	Body string // start of the response body, the server's reason
}

func (e *StatusError) Error() string {
	if e.Body != "" {
		return fmt.Sprintf("hbone: CONNECT answered %d %s: %s", e.Code, http.StatusText(e.Code), e.Body)
	}
	return fmt.Sprintf("hbone: CONNECT answered %d %s", e.Code, http.StatusText(e.Code))
}

// MaxEarlyData bounds Request.EarlyData: little enough that a server
// answering before it reads cannot fill the windows both ways while Dial
// sends what did not fit with the request.
const MaxEarlyData = 64 << 10

// Request describes one tunnel to open.
type Request struct {
	// Source is the identity the tunnel is opened for (the client
	// certificate is chosen by Dialer.TLSConfig from it).
	Source identity.SPIFFEID
	// Destination is the identity the HBONE server must prove.
	Destination identity.SPIFFEID
	// Address is the HBONE server, usually <pod or waypoint IP>:15008.
	Address netip.AddrPort
	// Authority is the tunnel's destination ip:port (the CONNECT
	// :authority).
	Authority netip.AddrPort
	// Header holds extra request headers: traceparent, baggage, forwarded.
	Header http.Header
	// EarlyData are the tunnel's first bytes, already read from the
	// client, at most MaxEarlyData. They go in DATA frames with the CONNECT
	// HEADERS, in the same write, without waiting for the answer (what flow
	// control does not allow at once is sent after the 200, before Dial
	// returns), which spares the client a round trip for protocols where it
	// speaks first. A server that refuses the tunnel discards them; a retry
	// on another connection sends them again. Dial does not keep or change
	// the slice.
	EarlyData []byte
}

// Dialer opens HBONE tunnels over pooled HTTP/2 connections: one pool per
// (Source, Destination, Address), each connection carrying as many streams
// as the server's SETTINGS_MAX_CONCURRENT_STREAMS allows; a new connection
// is dialled when every pooled one is saturated, and broken or closed ones
// are dropped. Set the fields before the first Dial.
type Dialer struct {
	// TLSConfig returns the client TLS configuration for a tunnel from src
	// to dst; use identity.ClientConfig, which checks that the server is
	// dst. It is called for each new connection. It must not be nil.
	TLSConfig func(src, dst identity.SPIFFEID) (*tls.Config, error)

	// DialContext opens the TCP connection to Request.Address (network
	// "tcp"), e.g. from inside a network namespace or with a socket mark.
	// Nil means a zero net.Dialer.
	DialContext func(ctx context.Context, network, address string) (net.Conn, error)

	// IdleTimeout closes a pooled connection that has had no stream for
	// this long. Zero means DefaultClientIdleTimeout; negative means never.
	IdleTimeout time.Duration

	// HealthCheckInterval, if positive, sends a PING on a connection that
	// has received nothing for this long and closes it if no answer comes
	// within 15s. Zero disables health checks.
	HealthCheckInterval time.Duration

	// BulkStreamBytes retires a connection once one of its streams has
	// carried this many bytes in one direction: new streams go to another
	// connection (dialled when none is pooled), and this one closes when
	// its last stream ends: new streams do not queue behind a running
	// transfer in the connection's TCP send buffer, nor inherit the large
	// buffers and congestion state the kernel grew for it. Zero means
	// DefaultBulkStreamBytes; negative means never.
	BulkStreamBytes int64

	// Logger receives connection-level debug events. Nil means slog.Default().
	Logger *slog.Logger

	initOnce sync.Once
	idle     time.Duration // 0: never
	bulk     int64         // 0: never

	mu     sync.Mutex
	pools  map[poolKey]*pool
	all    map[*clientConn]struct{} // every open connection, pooled or draining
	sweep  *time.Timer
	closed bool
}

func (d *Dialer) init() {
	d.initOnce.Do(func() {
		idle := d.IdleTimeout
		if idle == 0 {
			idle = DefaultClientIdleTimeout
		} else if idle < 0 {
			idle = 0
		}
		d.idle = idle
		d.bulk = d.BulkStreamBytes
		if d.bulk == 0 {
			d.bulk = DefaultBulkStreamBytes
		} else if d.bulk < 0 {
			d.bulk = 0
		}
		d.pools = make(map[poolKey]*pool)
		d.all = make(map[*clientConn]struct{})
	})
}

func (d *Dialer) logger() *slog.Logger {
	if d.Logger != nil {
		return d.Logger
	}
	return slog.Default()
}

// Dial opens a tunnel and returns it once the server has answered 200.
// Cancelling ctx aborts the TCP dial, the TLS handshake and the wait for the
// answer; it does not affect the returned Conn. A non-200 answer is a
// *StatusError.
func (d *Dialer) Dial(ctx context.Context, r Request) (*Conn, error) {
	p, err := d.Start(ctx, r)
	if err != nil {
		return nil, err
	}
	return p.Wait(ctx)
}

// Start sends a tunnel's CONNECT (with r.EarlyData) and returns without
// waiting for the answer: the caller may send more bytes before it comes
// (Pending.Write) and must then call Pending.Wait, which completes what
// Dial does.
func (d *Dialer) Start(ctx context.Context, r Request) (*Pending, error) {
	if d.TLSConfig == nil {
		return nil, errors.New("hbone: Dialer.TLSConfig is nil")
	}
	if err := validAuthority(r.Authority); err != nil {
		return nil, err
	}
	if !r.Address.IsValid() || r.Address.Port() == 0 {
		return nil, fmt.Errorf("hbone: invalid peer address %v", r.Address)
	}
	if err := checkHeader(r.Header); err != nil {
		return nil, err
	}
	if len(r.EarlyData) > MaxEarlyData {
		return nil, fmt.Errorf("hbone: %d bytes of early data, more than %d", len(r.EarlyData), MaxEarlyData)
	}
	d.init()
	p := &Pending{d: d, r: r, key: poolKey{src: r.Source, dst: r.Destination, addr: r.Address}, early: r.EarlyData}
	if err := p.send(ctx, nil); err != nil {
		return nil, err
	}
	return p, nil
}

// Pending is a tunnel whose CONNECT is sent and whose answer Wait awaits.
// Its methods are not safe for concurrent use.
type Pending struct {
	d        *Dialer
	r        Request
	key      poolKey
	early    []byte // the bytes before the answer: r.EarlyData, then Write's
	cc       *clientConn
	c        *Conn
	sent     int // how much of early went on the current stream
	attempts int
}

// send opens the stream on a pooled connection other than avoid, with the
// early bytes, trying another connection when one is unusable.
func (p *Pending) send(ctx context.Context, avoid *clientConn) error {
	var err error
	for p.attempts < maxDialAttempts {
		p.attempts++
		var cc *clientConn
		cc, err = p.d.getConn(ctx, p.key, avoid)
		if err != nil {
			return err
		}
		c := newConn(cc, p.r)
		var sent int
		sent, err = cc.openStream(c, p.r.Authority.String(), p.r.Header, p.early)
		if err == nil {
			p.cc, p.c, p.sent = cc, c, sent
			return nil
		}
		if _, closing := cc.state(); !closing || ctx.Err() != nil {
			break
		}
		avoid = cc
		p.d.logger().Debug("hbone: retrying CONNECT on another connection", "address", p.r.Address.String(), "error", err.Error())
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

// Answered is closed once the answer, or the stream's end, has arrived:
// Wait will not block for it.
func (p *Pending) Answered() <-chan struct{} { return p.c.answeredCh }

// Write sends b before the answer, as early data: at once as far as flow
// control allows, else after the answer. A retry on another connection
// sends it again, so everything written before the answer, with
// Request.EarlyData, is kept: at most MaxEarlyData. An error means the
// tunnel already failed; Wait reports why.
func (p *Pending) Write(b []byte) error {
	if len(p.early)+len(b) > MaxEarlyData {
		return fmt.Errorf("hbone: %d bytes of early data, more than %d", len(p.early)+len(b), MaxEarlyData)
	}
	all := p.sent == len(p.early)
	p.early = append(p.early[:len(p.early):len(p.early)], b...) // never into the caller's slice
	if !all {
		return nil // bytes before these still wait for the answer
	}
	n, err := p.c.writeNow(b)
	p.sent += n
	return err
}

// Wait waits for the answer and returns the tunnel once it is 200, after
// sending the early bytes flow control had held back. A stream refused
// before the server processed it is sent again, with the early bytes, on
// another connection. A non-200 answer is a *StatusError. Cancelling ctx
// aborts the wait.
func (p *Pending) Wait(ctx context.Context) (*Conn, error) {
	for {
		c, retry, err := p.finish(ctx)
		if err == nil {
			return c, nil
		}
		if !retry || ctx.Err() != nil || p.attempts >= maxDialAttempts {
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			return nil, err
		}
		p.d.logger().Debug("hbone: retrying CONNECT on another connection", "address", p.r.Address.String(), "error", err.Error())
		if err := p.send(ctx, p.cc); err != nil {
			return nil, err
		}
	}
}

// finish waits for the current stream's answer.
func (p *Pending) finish(ctx context.Context) (c *Conn, retry bool, err error) {
	c, cc := p.c, p.cc
	if err := c.waitResponse(ctx); err != nil {
		return nil, false, err
	}
	cc.mu.Lock()
	status, err, retry := c.status, c.err, c.retry
	cc.mu.Unlock()
	if status == 0 {
		// Reset before answering: refused, GOAWAY or a broken connection.
		_, closing := cc.state()
		return nil, retry || closing, err
	}
	if status != http.StatusOK {
		b := c.readStatusBody(ctx)
		c.abort(&StatusError{Code: status})
		return nil, false, &StatusError{Code: status, Body: trimBody(b)}
	}
	if p.sent < len(p.early) {
		if _, err := c.Write(p.early[p.sent:]); err != nil {
			c.abort(err)
			return nil, false, err
		}
	}
	return c, false, nil
}

func trimBody(b []byte) string {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return string(b)
}

// CloseIdleConnections closes pooled connections that carry no stream.
func (d *Dialer) CloseIdleConnections() {
	d.init()
	d.mu.Lock()
	var idle []*clientConn
	for cc := range d.all {
		if cc.isIdle() {
			idle = append(idle, cc)
		}
	}
	d.mu.Unlock()
	for _, cc := range idle {
		cc.close(errIdleTimeout)
	}
	d.pruneAll()
}

// Close closes every connection, aborting the tunnels on them, and makes
// later Dials fail with ErrDialerClosed.
func (d *Dialer) Close() error {
	d.init()
	d.mu.Lock()
	d.closed = true
	conns := make([]*clientConn, 0, len(d.all))
	for cc := range d.all {
		conns = append(conns, cc)
	}
	clear(d.all)
	clear(d.pools)
	if d.sweep != nil {
		d.sweep.Stop()
	}
	d.mu.Unlock()
	for _, cc := range conns {
		cc.close(ErrDialerClosed)
	}
	return nil
}
