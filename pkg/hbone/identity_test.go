package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

func TestIdentity(t *testing.T) {
	checkGoroutines(t)
	p := testPKI(t)
	handled := make(chan struct{}, 10)
	ts := startServer(t, &Server{Handler: func(s *Stream) { handled <- struct{}{}; s.Accept() }})
	auth := netip.MustParseAddrPort("10.0.0.1:80")

	t.Run("wrong server ID", func(t *testing.T) {
		d := newDialer(t, nil)
		r := request(ts, auth)
		r.Destination = identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "other"}
		if _, err := d.Dial(context.Background(), r); !errors.Is(err, identity.ErrPeerIdentity) {
			t.Errorf("Dial = %v, want ErrPeerIdentity", err)
		}
	})
	t.Run("foreign CA client cert", func(t *testing.T) {
		foreign, err := identity.NewRootAuthority("cluster.local", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := foreign.Issue(clientID, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		d := newDialer(t, nil)
		d.TLSConfig = func(_, dst identity.SPIFFEID) (*tls.Config, error) {
			return identity.ClientConfig(identity.StaticCert(cert), identity.StaticRoots(p.ca.Pool()), dst), nil
		}
		if _, err := d.Dial(context.Background(), request(ts, auth)); err == nil {
			t.Error("Dial with a foreign client certificate succeeded")
		}
	})
	t.Run("expired client cert", func(t *testing.T) {
		old := *p.ca
		old.Now = func() time.Time { return time.Now().Add(-3 * time.Hour) }
		cert, err := old.Issue(clientID, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		d := newDialer(t, nil)
		d.TLSConfig = func(_, dst identity.SPIFFEID) (*tls.Config, error) {
			return identity.ClientConfig(identity.StaticCert(cert), identity.StaticRoots(p.ca.Pool()), dst), nil
		}
		if _, err := d.Dial(context.Background(), request(ts, auth)); err == nil {
			t.Error("Dial with an expired client certificate succeeded")
		}
	})
	t.Run("expired server cert", func(t *testing.T) {
		old := *p.ca
		old.Now = func() time.Time { return time.Now().Add(-3 * time.Hour) }
		cert, err := old.Issue(serverID, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		ts2 := startServer(t, &Server{
			TLSConfig: identity.ServerConfig(identity.StaticCert(cert), identity.StaticRoots(p.ca.Pool()), nil),
			Handler:   func(s *Stream) { handled <- struct{}{}; s.Accept() },
		})
		d := newDialer(t, nil)
		if _, err := d.Dial(context.Background(), request(ts2, auth)); err == nil {
			t.Error("Dial to a server with an expired certificate succeeded")
		}
	})
	if len(handled) != 0 {
		t.Errorf("handler ran %d times for refused peers", len(handled))
	}
}

func TestDialCancellation(t *testing.T) {
	checkGoroutines(t)
	t.Run("during TLS handshake", func(t *testing.T) {
		// A listener that accepts TCP and never speaks TLS.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		held := make(chan net.Conn, 10)
		defer func() {
			l.Close()
			for c := range held {
				c.Close()
			}
		}()
		go func() {
			defer close(held)
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				held <- c
			}
		}()
		d := newDialer(t, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err = d.Dial(ctx, Request{Source: clientID, Destination: serverID,
			Address: l.Addr().(*net.TCPAddr).AddrPort(), Authority: netip.MustParseAddrPort("10.0.0.1:80")})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Dial = %v, want DeadlineExceeded", err)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("Dial returned after %v", el)
		}
	})
	t.Run("during CONNECT", func(t *testing.T) {
		cancelled := make(chan struct{})
		ts := startServer(t, &Server{Handler: func(s *Stream) {
			<-s.Context().Done() // never answers; the client resets
			close(cancelled)
		}})
		d := newDialer(t, nil)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		start := time.Now()
		_, err := d.Dial(ctx, request(ts, netip.MustParseAddrPort("10.0.0.1:80")))
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Dial = %v, want Canceled", err)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("Dial returned after %v", el)
		}
		select {
		case <-cancelled:
		case <-time.After(5 * time.Second):
			t.Error("handler's context was not cancelled by the client's reset")
		}
	})
}
