//lint:file-ignore SA1019 x/net's http2.Transport is deprecated in favour of net/http.Transport.NewClientConn (Go 1.26), which dials by itself; x/net's lets us pool our own TLS conns per identity. Revisit when x/net becomes a wrapper (Go 1.27).

package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// Client tuning.
const (
	// DefaultClientIdleTimeout closes a pooled connection without streams.
	DefaultClientIdleTimeout = 90 * time.Second
	// clientMaxFrameSize is the Transport's SETTINGS_MAX_FRAME_SIZE: the
	// largest DATA frame the server may send us (see serverMaxFrameSize).
	// The Transport's receive windows are its defaults: 4 MiB per stream
	// and 1 GiB per connection.
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
	// within 15s (x/net's ReadIdleTimeout). Zero disables health checks.
	HealthCheckInterval time.Duration

	// Logger receives connection-level debug events. Nil means slog.Default().
	Logger *slog.Logger

	initOnce sync.Once
	t        *http2.Transport

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
		d.t = &http2.Transport{
			MaxReadFrameSize:   clientMaxFrameSize,
			MaxHeaderListSize:  maxHeaderListSize,
			DisableCompression: true, // never ask for gzip on a tunnel
			IdleConnTimeout:    idle,
			ReadIdleTimeout:    max(d.HealthCheckInterval, 0),
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
	if d.TLSConfig == nil {
		return nil, errors.New("hbone: Dialer.TLSConfig is nil")
	}
	if err := validAuthority(r.Authority); err != nil {
		return nil, err
	}
	if !r.Address.IsValid() || r.Address.Port() == 0 {
		return nil, fmt.Errorf("hbone: invalid peer address %v", r.Address)
	}
	d.init()
	key := poolKey{src: r.Source, dst: r.Destination, addr: r.Address}
	var err error
	for range maxDialAttempts {
		var cc *clientConn
		cc, err = d.getConn(ctx, key)
		if err != nil {
			return nil, err
		}
		var c *Conn
		var retry bool
		c, retry, err = d.roundTrip(ctx, cc, r)
		if err == nil {
			return c, nil
		}
		if !retry || ctx.Err() != nil {
			break
		}
		d.logger().Debug("hbone: retrying CONNECT on another connection", "address", r.Address.String(), "error", err.Error())
	}
	if ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	return nil, err
}

// roundTrip sends the CONNECT on cc, whose stream slot is reserved.
func (d *Dialer) roundTrip(ctx context.Context, cc *clientConn, r Request) (c *Conn, retry bool, err error) {
	authority := r.Authority.String()
	header := make(http.Header, len(r.Header)+1)
	for k, v := range r.Header {
		header[k] = v
	}
	header["User-Agent"] = nil // no default user-agent on the wire
	pr, pw := io.Pipe()
	body := &requestBody{pr: pr, done: make(chan struct{})}
	streamCtx, cancel := context.WithCancel(context.Background())
	req := (&http.Request{
		Method:        http.MethodConnect,
		URL:           &url.URL{Host: authority},
		Host:          authority,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        header,
		Body:          body,
		ContentLength: -1,
	}).WithContext(streamCtx)
	stop := context.AfterFunc(ctx, cancel)
	resp, err := cc.cc.RoundTrip(req)
	if !stop() {
		// ctx ended during the round trip: the stream is being cancelled.
		if err == nil {
			resp.Body.Close()
		}
		pw.CloseWithError(net.ErrClosed)
		cancel()
		return nil, false, context.Cause(ctx)
	}
	if err != nil {
		pw.CloseWithError(err)
		cancel()
		return nil, retryable(err, cc), err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxStatusBody))
		resp.Body.Close()
		pw.CloseWithError(net.ErrClosed)
		cancel()
		return nil, false, &StatusError{Code: resp.StatusCode, Body: trimBody(b)}
	}
	return newConn(cc, r, resp, pw, body, cancel), false, nil
}

func trimBody(b []byte) string {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return string(b)
}

// retryable reports whether a failed CONNECT never reached a handler and
// may be sent again on another connection.
func retryable(err error, cc *clientConn) bool {
	var se http2.StreamError
	if errors.As(err, &se) && se.Code == http2.ErrCodeRefusedStream {
		return true
	}
	var ge http2.GoAwayError
	if errors.As(err, &ge) {
		return true
	}
	st := cc.cc.State()
	return st.Closed || st.Closing
}

// requestBody is the upstream direction: the Transport reads what Conn.Write
// puts in the pipe and calls Close once it has sent END_STREAM or given up.
type requestBody struct {
	pr   *io.PipeReader
	once sync.Once
	done chan struct{}
}

func (b *requestBody) Read(p []byte) (int, error) { return b.pr.Read(p) }

func (b *requestBody) Close() error {
	b.once.Do(func() { close(b.done) })
	return b.pr.Close()
}

// CloseIdleConnections closes pooled connections that carry no stream.
func (d *Dialer) CloseIdleConnections() {
	d.init()
	d.mu.Lock()
	var idle []*clientConn
	for cc := range d.all {
		if st := cc.cc.State(); st.StreamsActive == 0 && st.StreamsReserved == 0 && st.StreamsPending == 0 {
			idle = append(idle, cc)
		}
	}
	d.mu.Unlock()
	for _, cc := range idle {
		cc.cc.Close()
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
		cc.cc.Close()
	}
	return nil
}
