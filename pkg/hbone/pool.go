package hbone

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// poolKey identifies the connections a tunnel may share.
type poolKey struct {
	src, dst identity.SPIFFEID
	addr     netip.AddrPort
}

// pool is the connections of one key. Guarded by Dialer.mu.
type pool struct {
	conns   []*clientConn
	dialing *dialCall // the connection being dialled, if any
}

// dialCall lets concurrent Dials wait for one connection instead of each
// opening their own.
type dialCall struct {
	done chan struct{}
	err  error
}

// getConn returns a connection other than avoid with a stream slot reserved
// for the caller, dialling a new one when every pooled connection is
// saturated. (A server may refuse a stream on a connection the client
// thinks has room: it counts a stream until its handler returns.)
func (d *Dialer) getConn(ctx context.Context, key poolKey, avoid *clientConn) (*clientConn, error) {
	for {
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return nil, ErrDialerClosed
		}
		p := d.pools[key]
		if p == nil {
			p = &pool{}
			d.pools[key] = p
		}
		p.prune(d)
		for _, cc := range p.conns {
			if cc != avoid && cc.reserve() {
				d.mu.Unlock()
				return cc, nil
			}
		}
		if call := p.dialing; call != nil {
			d.mu.Unlock()
			select {
			case <-call.done:
				if call.err != nil && !isContextErr(call.err) {
					return nil, call.err
				}
				continue // try the new connection, or dial ourselves
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		}
		call := &dialCall{done: make(chan struct{})}
		p.dialing = call
		d.mu.Unlock()

		cc, err := d.dialConn(ctx, key)

		d.mu.Lock()
		call.err = err
		p.dialing = nil
		close(call.done)
		if err != nil {
			d.mu.Unlock()
			return nil, err
		}
		if d.closed {
			d.mu.Unlock()
			cc.close(ErrDialerClosed)
			return nil, ErrDialerClosed
		}
		p.conns = append(p.conns, cc)
		d.all[cc] = struct{}{}
		d.armSweepLocked()
		reserved := cc.reserve()
		d.mu.Unlock()
		if reserved {
			return cc, nil
		}
	}
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// prune drops connections that can take no new stream. Draining ones stay in
// Dialer.all until closed: they close when their last stream ends.
func (p *pool) prune(d *Dialer) {
	p.conns = slices.DeleteFunc(p.conns, func(cc *clientConn) bool {
		closed, closing := cc.state()
		if closed {
			delete(d.all, cc)
		}
		return closing
	})
}

// dialConn opens TCP, completes mutual TLS (verifying the server is
// key.dst), and starts HTTP/2.
func (d *Dialer) dialConn(ctx context.Context, key poolKey) (*clientConn, error) {
	cfg, err := d.TLSConfig(key.src, key.dst)
	if err != nil {
		return nil, fmt.Errorf("hbone: TLS config for %s -> %s: %w", key.src, key.dst, err)
	}
	if !slices.Contains(cfg.NextProtos, identity.ALPNHBONE) {
		cfg = cfg.Clone()
		cfg.NextProtos = append(cfg.NextProtos, identity.ALPNHBONE)
	}
	dial := d.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	raw, err := dial(ctx, "tcp", key.addr.String())
	if err != nil {
		return nil, fmt.Errorf("hbone: dial %s: %w", key.addr, err)
	}
	tc := tlsClient(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, fmt.Errorf("hbone: TLS handshake with %s (%s): %w", key.addr, key.dst, err)
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != identity.ALPNHBONE {
		tc.Close()
		return nil, fmt.Errorf("hbone: %s negotiated ALPN %q, want %q", key.addr, cs.NegotiatedProtocol, identity.ALPNHBONE)
	}
	peer, err := identity.PeerID(cs)
	if err != nil {
		tc.Close()
		return nil, err
	}
	if peer != key.dst {
		// The TLS config should have refused the handshake already.
		tc.Close()
		return nil, fmt.Errorf("%w: %s is %s, want %s", identity.ErrPeerIdentity, key.addr, peer, key.dst)
	}
	cc, err := newClientConn(tc, raw.LocalAddr(), peer, d.idle, d.HealthCheckInterval, d.bulk, d.logger())
	if err != nil {
		return nil, fmt.Errorf("hbone: HTTP/2 with %s: %w", key.addr, err)
	}
	return cc, nil
}

// armSweepLocked schedules a sweep that forgets closed connections (they
// close themselves after IdleTimeout).
func (d *Dialer) armSweepLocked() {
	if d.sweep != nil || d.closed {
		return
	}
	every := d.IdleTimeout
	if every <= 0 {
		every = DefaultClientIdleTimeout
	}
	d.sweep = time.AfterFunc(every, func() {
		d.pruneAll()
		d.mu.Lock()
		defer d.mu.Unlock()
		if len(d.all) > 0 && !d.closed {
			d.sweep.Reset(every)
		} else {
			d.sweep = nil
		}
	})
}

func (d *Dialer) pruneAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for key, p := range d.pools {
		p.prune(d)
		if len(p.conns) == 0 && p.dialing == nil {
			delete(d.pools, key)
		}
	}
	for cc := range d.all {
		if closed, _ := cc.state(); closed {
			delete(d.all, cc)
		}
	}
}
