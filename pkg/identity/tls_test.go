package identity

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// handshakeResult is what each side of a test connection saw.
type handshakeResult struct {
	client, server           error // handshake or first-exchange error
	clientState, serverState tls.ConnectionState
}

// dial runs a TLS handshake over loopback TCP and then has the server send
// one message the client reads, so that a server-side rejection of the
// client's certificate (which TLS 1.3 reports after the client's handshake
// returned) surfaces on the client too.
func dial(t *testing.T, client, server *tls.Config) handshakeResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var res handshakeResult
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			res.server = err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		s := tls.Server(c, server)
		if res.server = s.Handshake(); res.server != nil {
			return
		}
		res.serverState = s.ConnectionState()
		if _, res.server = s.Write([]byte("ping")); res.server != nil {
			return
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "pong" {
			res.server = errors.Join(errors.New("no pong"), err)
		}
	})
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	c := tls.Client(conn, client)
	res.client = c.Handshake()
	if res.client == nil {
		res.clientState = c.ConnectionState()
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			res.client = err
		} else if string(buf) != "ping" {
			res.client = errors.New("no ping")
		} else {
			_, res.client = c.Write([]byte("pong"))
		}
	}
	if res.client != nil {
		conn.Close() // unblock a server still waiting
	}
	wg.Wait()
	return res
}

type tlsFixture struct {
	ca              *Authority
	clientCert      *tls.Certificate // testID
	serverCert      *tls.Certificate // testOther
	clientID, srvID SPIFFEID
}

func newTLSFixture(t *testing.T) *tlsFixture {
	t.Helper()
	ca := newTestAuthority(t)
	cc, err := ca.Issue(testID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ca.Issue(testOther, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &tlsFixture{ca: ca, clientCert: cc, serverCert: sc, clientID: testID, srvID: testOther}
}

func TestTLSHandshake(t *testing.T) {
	fx := newTLSFixture(t)
	var gotPeer SPIFFEID
	res := dial(t,
		ClientConfig(StaticCert(fx.clientCert), StaticRoots(fx.ca.Pool()), fx.srvID),
		ServerConfig(StaticCert(fx.serverCert), StaticRoots(fx.ca.Pool()), func(p SPIFFEID) error {
			gotPeer = p
			return nil
		}))
	if res.client != nil || res.server != nil {
		t.Fatalf("client %v, server %v", res.client, res.server)
	}
	if gotPeer != fx.clientID {
		t.Errorf("authorize saw %v, want %v", gotPeer, fx.clientID)
	}
	for side, cs := range map[string]tls.ConnectionState{"client": res.clientState, "server": res.serverState} {
		if cs.Version != tls.VersionTLS13 {
			t.Errorf("%s: TLS version %x, want 1.3", side, cs.Version)
		}
		if cs.NegotiatedProtocol != ALPNHBONE {
			t.Errorf("%s: ALPN %q, want %q", side, cs.NegotiatedProtocol, ALPNHBONE)
		}
	}
	if id, err := PeerID(res.clientState); err != nil || id != fx.srvID {
		t.Errorf("client's PeerID = %v, %v", id, err)
	}
	if id, err := PeerID(res.serverState); err != nil || id != fx.clientID {
		t.Errorf("server's PeerID = %v, %v", id, err)
	}
	if _, err := PeerID(tls.ConnectionState{}); !errors.Is(err, ErrInvalidCertificate) {
		t.Errorf("PeerID without certificates: %v", err)
	}
}

func TestTLSClientRejectsOtherIdentity(t *testing.T) {
	fx := newTLSFixture(t)
	someoneElse := SPIFFEID{TrustDomain: "cluster.local", Namespace: "prod", ServiceAccount: "db"}
	res := dial(t,
		ClientConfig(StaticCert(fx.clientCert), StaticRoots(fx.ca.Pool()), someoneElse),
		ServerConfig(StaticCert(fx.serverCert), StaticRoots(fx.ca.Pool()), nil))
	if !errors.Is(res.client, ErrPeerIdentity) {
		t.Errorf("client: %v, want ErrPeerIdentity", res.client)
	}
	if res.server == nil {
		t.Error("server handshake succeeded")
	}
}

func TestTLSForeignCA(t *testing.T) {
	fx := newTLSFixture(t)
	foreign, err := NewRootAuthority("cluster.local", time.Hour) // same trust domain, other key
	if err != nil {
		t.Fatal(err)
	}
	fc, err := foreign.Issue(testID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := foreign.Issue(testOther, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("server cert", func(t *testing.T) {
		res := dial(t,
			ClientConfig(StaticCert(fx.clientCert), StaticRoots(fx.ca.Pool()), fx.srvID),
			ServerConfig(StaticCert(fs), StaticRoots(fx.ca.Pool()), nil))
		if !errors.Is(res.client, ErrInvalidCertificate) {
			t.Errorf("client: %v, want ErrInvalidCertificate", res.client)
		}
	})
	t.Run("client cert", func(t *testing.T) {
		res := dial(t,
			ClientConfig(StaticCert(fc), StaticRoots(fx.ca.Pool()), fx.srvID),
			ServerConfig(StaticCert(fx.serverCert), StaticRoots(fx.ca.Pool()), nil))
		if !errors.Is(res.server, ErrInvalidCertificate) {
			t.Errorf("server: %v, want ErrInvalidCertificate", res.server)
		}
		if res.client == nil {
			t.Error("client exchanged data with a server that refused it")
		}
	})
	t.Run("no roots", func(t *testing.T) {
		res := dial(t,
			ClientConfig(StaticCert(fx.clientCert), StaticRoots(nil), fx.srvID),
			ServerConfig(StaticCert(fx.serverCert), StaticRoots(fx.ca.Pool()), nil))
		if res.client == nil {
			t.Error("client with no trust bundle accepted the server")
		}
	})
}

func TestTLSExpiredCert(t *testing.T) {
	fx := newTLSFixture(t)
	old := *fx.ca
	old.Now = func() time.Time { return time.Now().Add(-30 * time.Minute) }
	expiredClient, err := old.Issue(testID, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	expiredServer, err := old.Issue(testOther, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("server cert", func(t *testing.T) {
		res := dial(t,
			ClientConfig(StaticCert(fx.clientCert), StaticRoots(fx.ca.Pool()), fx.srvID),
			ServerConfig(StaticCert(expiredServer), StaticRoots(fx.ca.Pool()), nil))
		if !errors.Is(res.client, ErrInvalidCertificate) {
			t.Errorf("client: %v, want ErrInvalidCertificate", res.client)
		}
	})
	t.Run("client cert", func(t *testing.T) {
		res := dial(t,
			ClientConfig(StaticCert(expiredClient), StaticRoots(fx.ca.Pool()), fx.srvID),
			ServerConfig(StaticCert(fx.serverCert), StaticRoots(fx.ca.Pool()), nil))
		if !errors.Is(res.server, ErrInvalidCertificate) {
			t.Errorf("server: %v, want ErrInvalidCertificate", res.server)
		}
		if res.client == nil {
			t.Error("client exchanged data with a server that refused it")
		}
	})
}

func TestTLSAuthorizeRejects(t *testing.T) {
	fx := newTLSFixture(t)
	errDenied := errors.New("denied by policy")
	var got SPIFFEID
	res := dial(t,
		ClientConfig(StaticCert(fx.clientCert), StaticRoots(fx.ca.Pool()), fx.srvID),
		ServerConfig(StaticCert(fx.serverCert), StaticRoots(fx.ca.Pool()), func(p SPIFFEID) error {
			got = p
			return errDenied
		}))
	if got != fx.clientID {
		t.Errorf("authorize saw %v, want %v", got, fx.clientID)
	}
	if !errors.Is(res.server, errDenied) {
		t.Errorf("server: %v, want the authorize error", res.server)
	}
	if res.client == nil {
		t.Error("client exchanged data with a server that refused it")
	}
}

func TestTLSCertSourceError(t *testing.T) {
	fx := newTLSFixture(t)
	errNoCert := errors.New("no certificate yet")
	failing := func() (*tls.Certificate, error) { return nil, errNoCert }
	t.Run("server", func(t *testing.T) {
		res := dial(t,
			ClientConfig(StaticCert(fx.clientCert), StaticRoots(fx.ca.Pool()), fx.srvID),
			ServerConfig(failing, StaticRoots(fx.ca.Pool()), nil))
		if !errors.Is(res.server, errNoCert) || res.client == nil {
			t.Errorf("client %v, server %v", res.client, res.server)
		}
	})
	t.Run("client", func(t *testing.T) {
		res := dial(t,
			ClientConfig(failing, StaticRoots(fx.ca.Pool()), fx.srvID),
			ServerConfig(StaticCert(fx.serverCert), StaticRoots(fx.ca.Pool()), nil))
		if !errors.Is(res.client, errNoCert) || res.server == nil {
			t.Errorf("client %v, server %v", res.client, res.server)
		}
	})
}

// TestTLSResumptionIsVerified checks that a resumed TLS 1.3 session is held
// to the same checks as a full handshake: the server's authorize callback
// runs again (policy may have changed), and so does the client's identity check.
func TestTLSResumptionIsVerified(t *testing.T) {
	fx := newTLSFixture(t)
	var deny atomic.Bool
	var calls atomic.Int32
	errDenied := errors.New("denied by policy")
	server := ServerConfig(StaticCert(fx.serverCert), StaticRoots(fx.ca.Pool()), func(SPIFFEID) error {
		calls.Add(1)
		if deny.Load() {
			return errDenied
		}
		return nil
	})
	client := ClientConfig(StaticCert(fx.clientCert), StaticRoots(fx.ca.Pool()), fx.srvID)
	cache := tls.NewLRUClientSessionCache(4)
	client.ClientSessionCache = cache
	client.ServerName = "mesh" // the session cache key; each test listener has a new port

	res := dial(t, client, server)
	if res.client != nil || res.server != nil {
		t.Fatalf("first connection: client %v, server %v", res.client, res.server)
	}
	res = dial(t, client, server)
	if res.client != nil || res.server != nil {
		t.Fatalf("second connection: client %v, server %v", res.client, res.server)
	}
	if !res.serverState.DidResume || !res.clientState.DidResume {
		t.Fatal("second connection did not resume; resumption checks are not exercised")
	}
	if calls.Load() != 2 {
		t.Errorf("authorize called %d times for 2 connections", calls.Load())
	}

	deny.Store(true)
	res = dial(t, client, server)
	if !errors.Is(res.server, errDenied) {
		t.Errorf("resumed connection after policy change: server %v (resumed %v), want the authorize error", res.server, res.serverState.DidResume)
	}

	// A client expecting another identity refuses a session resumed from a
	// connection to testOther.
	deny.Store(false)
	other := ClientConfig(StaticCert(fx.clientCert), StaticRoots(fx.ca.Pool()), fx.clientID)
	other.ClientSessionCache = cache
	other.ServerName = "mesh"
	res = dial(t, other, server)
	if !errors.Is(res.client, ErrPeerIdentity) {
		t.Errorf("client expecting %v: %v (resumed %v), want ErrPeerIdentity", fx.clientID, res.client, res.clientState.DidResume)
	}
}
