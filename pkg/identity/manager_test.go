package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fetcherFunc adapts a function to Fetcher.
type fetcherFunc func(ctx context.Context, id SPIFFEID, csr []byte, validity time.Duration) ([]*x509.Certificate, []*x509.Certificate, error)

func (f fetcherFunc) Fetch(ctx context.Context, id SPIFFEID, csr []byte, validity time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
	return f(ctx, id, csr, validity)
}

// testFetcher signs with a switchable Authority, counts calls, and fails on demand.
type testFetcher struct {
	mu    sync.Mutex
	ca    *Authority
	fail  error
	calls []time.Time
}

func (f *testFetcher) Fetch(ctx context.Context, id SPIFFEID, csr []byte, validity time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
	f.mu.Lock()
	f.calls = append(f.calls, time.Now())
	ca, fail := f.ca, f.fail
	f.mu.Unlock()
	if fail != nil {
		return nil, nil, fail
	}
	return AuthorityFetcher{Authority: ca}.Fetch(ctx, id, csr, validity)
}

func (f *testFetcher) set(ca *Authority, fail error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ca != nil {
		f.ca = ca
	}
	f.fail = fail
}

func (f *testFetcher) callTimes() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.calls...)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newTestManager(t *testing.T, f Fetcher, opts ManagerOptions) *Manager {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	m, err := NewManager(f, opts)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// startRun runs m.Run in the background; the returned function cancels it and
// waits for it to return.
func startRun(t *testing.T, m *Manager) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func mustCert(t *testing.T, src CertSource) *tls.Certificate {
	t.Helper()
	c, err := src()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func serial(c *tls.Certificate) *big.Int { return c.Leaf.SerialNumber }

// meshConn is a TLS connection between two identities of a Manager over
// net.Pipe, with an echo server on the far end.
type meshConn struct {
	client                   *tls.Conn
	clientState, serverState tls.ConnectionState
	done                     chan struct{}
}

// connect handshakes from client (expecting server) to server, both served
// by src. Session tickets are off: they are written after the handshake and,
// over a synchronous pipe, would block an echo exchange.
func connect(t *testing.T, src *Manager, client, server SPIFFEID) (*meshConn, error) {
	t.Helper()
	cc, sc := net.Pipe()
	scfg := ServerConfig(src.Cert(server), src.Roots(), func(p SPIFFEID) error {
		if p != client {
			return errors.New("unexpected client")
		}
		return nil
	})
	scfg.SessionTicketsDisabled = true
	mc := &meshConn{done: make(chan struct{})}
	srv := tls.Server(sc, scfg)
	srvErr := make(chan error, 1)
	go func() {
		defer close(mc.done)
		defer sc.Close()
		if err := srv.Handshake(); err != nil {
			srvErr <- err
			return
		}
		mc.serverState = srv.ConnectionState()
		srvErr <- nil
		_, _ = io.Copy(srv, srv) // echo until the client closes
	}()
	mc.client = tls.Client(cc, ClientConfig(src.Cert(client), src.Roots(), server))
	err := mc.client.Handshake()
	if err != nil {
		cc.Close()
		<-mc.done
		return nil, err
	}
	if err := <-srvErr; err != nil {
		cc.Close()
		<-mc.done
		return nil, err
	}
	mc.clientState = mc.client.ConnectionState()
	t.Cleanup(mc.close)
	return mc, nil
}

func (mc *meshConn) close() {
	mc.client.Close()
	<-mc.done
}

// echo sends msg and checks that it comes back.
func (mc *meshConn) echo(t *testing.T, msg string) {
	t.Helper()
	if _, err := mc.client.Write([]byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(mc.client, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo of %q: %q, %v", msg, buf, err)
	}
}

// TestManagerRotation runs in a synctest bubble: time is fake (and starts in
// 2000), so hour-long certificates rotate in an instant and at exact times.
func TestManagerRotation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca, err := NewRootAuthority("cluster.local", 30*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f := &testFetcher{ca: ca}
		m := newTestManager(t, f, ManagerOptions{Validity: time.Hour})
		ctx := t.Context()
		t0 := time.Now()
		for _, id := range []SPIFFEID{testID, testOther} {
			if err := m.Add(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		stop := startRun(t, m)

		first := mustCert(t, m.Cert(testOther))
		if want := t0.Add(time.Hour); !first.Leaf.NotAfter.Equal(want) {
			t.Errorf("NotAfter %v, want %v", first.Leaf.NotAfter, want)
		}
		snap := m.Snapshot()
		if len(snap.Identities) != 2 || len(snap.Roots) != 1 {
			t.Fatalf("snapshot: %+v", snap)
		}
		for _, st := range snap.Identities {
			if want := t0.Add(30 * time.Minute); !st.NextRefresh.Equal(want) {
				t.Errorf("%s: next refresh %v, want half life %v", st.ID, st.NextRefresh, want)
			}
			if !st.Valid || st.Serial == "" || st.Failures != 0 {
				t.Errorf("%s: %+v", st.ID, st)
			}
		}

		old, err := connect(t, m, testID, testOther)
		if err != nil {
			t.Fatal(err)
		}
		old.echo(t, "before rotation")
		if got := old.clientState.PeerCertificates[0].SerialNumber; got.Cmp(serial(first)) != 0 {
			t.Fatalf("client saw serial %x, want %x", got, serial(first))
		}

		// Just before half life nothing changed; just after, both rotated.
		time.Sleep(30*time.Minute - time.Second)
		synctest.Wait()
		if n := len(f.callTimes()); n != 2 {
			t.Fatalf("%d fetches before half life, want 2", n)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := len(f.callTimes()); n != 4 {
			t.Fatalf("%d fetches after half life, want 4", n)
		}
		second := mustCert(t, m.Cert(testOther))
		if serial(second).Cmp(serial(first)) == 0 {
			t.Fatal("serial unchanged after rotation")
		}
		if second.PrivateKey.(*ecdsa.PrivateKey).Equal(first.PrivateKey) {
			t.Fatal("rotation kept the old key")
		}

		// The connection made before rotation still works and keeps its certificates.
		old.echo(t, "after rotation")

		// A new handshake presents the new certificates, both ways.
		fresh, err := connect(t, m, testID, testOther)
		if err != nil {
			t.Fatal(err)
		}
		fresh.echo(t, "new connection")
		if got := fresh.clientState.PeerCertificates[0].SerialNumber; got.Cmp(serial(second)) != 0 {
			t.Errorf("client saw serial %x, want the new %x", got, serial(second))
		}
		clientNow := mustCert(t, m.Cert(testID))
		if got := fresh.serverState.PeerCertificates[0].SerialNumber; got.Cmp(serial(clientNow)) != 0 {
			t.Errorf("server saw client serial %x, want %x", got, serial(clientNow))
		}
		if got := old.serverState.PeerCertificates[0].SerialNumber; got.Cmp(serial(clientNow)) == 0 {
			t.Error("old connection's state changed")
		}

		// Rotation continues: every half life of each new certificate.
		time.Sleep(30 * time.Minute)
		synctest.Wait()
		if n := len(f.callTimes()); n != 6 {
			t.Errorf("%d fetches after two half lives, want 6", n)
		}
		if third := mustCert(t, m.Cert(testOther)); serial(third).Cmp(serial(second)) == 0 {
			t.Error("second rotation did not happen")
		}
		old.echo(t, "after two rotations")

		old.close()
		fresh.close()
		stop()
		// synctest.Test fails if any goroutine of the bubble is left blocked.
	})
}

func TestManagerFetchFailureKeepsValidCert(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca, err := NewRootAuthority("cluster.local", 30*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f := &testFetcher{ca: ca}
		m := newTestManager(t, f, ManagerOptions{Validity: time.Hour, RetryMin: time.Second, RetryMax: time.Minute})
		m.randN = func(d time.Duration) time.Duration { return d - 1 } // the longest delay: (0, d] becomes d
		if err := m.Add(t.Context(), testID); err != nil {
			t.Fatal(err)
		}
		orig := mustCert(t, m.Cert(testID))
		startRun(t, m)

		errCA := errors.New("CA unavailable")
		f.set(nil, errCA)
		t0 := time.Now()
		time.Sleep(30 * time.Minute) // the rotation attempt at half life fails
		synctest.Wait()
		if c := mustCert(t, m.Cert(testID)); serial(c).Cmp(serial(orig)) != 0 {
			t.Fatal("certificate changed although fetches fail")
		}
		// Retries back off exponentially: 1s, 2s, 4s, ... capped at 1m.
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		calls := f.callTimes()[1:] // after the initial fetch
		if len(calls) < 5 {
			t.Fatalf("%d fetch attempts", len(calls))
		}
		if !calls[0].Equal(t0.Add(30 * time.Minute)) {
			t.Errorf("first rotation attempt at %v, want half life", calls[0].Sub(t0))
		}
		want := time.Second
		for i := 1; i < len(calls); i++ {
			if gap := calls[i].Sub(calls[i-1]); gap != want {
				t.Errorf("retry %d after %v, want %v", i, gap, want)
			}
			want = min(2*want, time.Minute)
		}
		st := m.Snapshot().Identities[0]
		if st.Failures != len(calls) || st.LastError == "" || !st.Valid {
			t.Errorf("snapshot during failures: %+v", st)
		}
		// Still served while valid...
		if c := mustCert(t, m.Cert(testID)); serial(c).Cmp(serial(orig)) != 0 {
			t.Fatal("certificate changed although fetches fail")
		}
		// ...but never once expired.
		time.Sleep(time.Until(orig.Leaf.NotAfter))
		synctest.Wait()
		if _, err := m.Cert(testID)(); !errors.Is(err, ErrNoCertificate) {
			t.Fatalf("expired certificate: %v, want ErrNoCertificate", err)
		}
		if st := m.Snapshot().Identities[0]; st.Valid {
			t.Errorf("snapshot shows an expired certificate as valid: %+v", st)
		}
		// The CA comes back; the next retry (at most RetryMax) succeeds.
		f.set(nil, nil)
		time.Sleep(time.Minute)
		synctest.Wait()
		c, err := m.Cert(testID)()
		if err != nil {
			t.Fatalf("after the CA came back: %v", err)
		}
		if serial(c).Cmp(serial(orig)) == 0 {
			t.Fatal("serial unchanged after recovery")
		}
		if st := m.Snapshot().Identities[0]; st.Failures != 0 || st.LastError != "" {
			t.Errorf("snapshot after recovery: %+v", st)
		}
	})
}

func TestManagerBackoffJitter(t *testing.T) {
	m := newTestManager(t, &testFetcher{}, ManagerOptions{RetryMin: time.Second, RetryMax: 8 * time.Second})
	for failures, ceiling := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 50: 8 * time.Second} {
		var lo, hi time.Duration = ceiling, 0
		for range 200 {
			d := m.backoff(failures)
			if d <= 0 || d > ceiling {
				t.Fatalf("backoff(%d) = %v, want in (0, %v]", failures, d, ceiling)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		if hi-lo < ceiling/4 {
			t.Errorf("backoff(%d) in [%v, %v]: not jittered", failures, lo, hi)
		}
	}
}

func TestManagerAddFailsThenWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca, err := NewRootAuthority("cluster.local", 30*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		errCA := errors.New("CA unavailable")
		f := &testFetcher{ca: ca, fail: errCA}
		m := newTestManager(t, f, ManagerOptions{})
		if err := m.Add(t.Context(), testID); !errors.Is(err, errCA) {
			t.Fatalf("Add: %v, want the fetch error", err)
		}
		_, err = m.Cert(testID)()
		if !errors.Is(err, ErrNoCertificate) || !errors.Is(err, errCA) {
			t.Fatalf("Cert before any success: %v", err)
		}
		if m.Roots()() != nil {
			t.Error("roots before any fetch")
		}
		startRun(t, m)
		waited := make(chan error, 1)
		go func() { waited <- m.Wait(t.Context(), testID) }()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		select {
		case err := <-waited:
			t.Fatalf("Wait returned %v while the CA fails", err)
		default:
		}
		f.set(nil, nil)
		if err := <-waited; err != nil {
			t.Fatalf("Wait: %v", err)
		}
		mustCert(t, m.Cert(testID))
		if m.Roots()() == nil {
			t.Error("no roots after a fetch")
		}
	})
}

func TestManagerRemove(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca, err := NewRootAuthority("cluster.local", 30*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f := &testFetcher{ca: ca}
		m := newTestManager(t, f, ManagerOptions{Validity: time.Hour})
		src := m.Cert(testID) // made before Add
		if _, err := src(); !errors.Is(err, ErrUnknownIdentity) {
			t.Fatalf("before Add: %v", err)
		}
		if err := m.Wait(t.Context(), testID); !errors.Is(err, ErrUnknownIdentity) {
			t.Fatalf("Wait before Add: %v", err)
		}
		if err := m.Add(t.Context(), testID); err != nil {
			t.Fatal(err)
		}
		if err := m.Add(t.Context(), testOther); err != nil {
			t.Fatal(err)
		}
		mustCert(t, src)
		startRun(t, m)

		m.Remove(testID)
		m.Remove(testID) // idempotent
		if _, err := src(); !errors.Is(err, ErrUnknownIdentity) {
			t.Fatalf("after Remove: %v", err)
		}
		time.Sleep(3 * time.Hour)
		synctest.Wait()
		// testOther rotated at 30m, 60m, ... ; testID never again.
		if n := len(f.callTimes()); n != 2+6 {
			t.Errorf("%d fetches in 3h, want 8 (2 initial + 6 rotations of the remaining identity)", n)
		}
		snap := m.Snapshot()
		if len(snap.Identities) != 1 || snap.Identities[0].ID != testOther.String() {
			t.Errorf("snapshot after Remove: %+v", snap.Identities)
		}
		// A later Add starts afresh, and the old source follows it.
		if err := m.Add(t.Context(), testID); err != nil {
			t.Fatal(err)
		}
		mustCert(t, src)
	})
}

func TestManagerRemoveDuringFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca, err := NewRootAuthority("cluster.local", 30*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		f := fetcherFunc(func(ctx context.Context, id SPIFFEID, csr []byte, v time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
			<-release
			return AuthorityFetcher{Authority: ca}.Fetch(ctx, id, csr, v)
		})
		m := newTestManager(t, f, ManagerOptions{})
		added := make(chan error, 1)
		go func() { added <- m.Add(t.Context(), testID) }()
		waited := make(chan error, 1)
		synctest.Wait() // Add is blocked in Fetch
		go func() { waited <- m.Wait(t.Context(), testID) }()
		synctest.Wait()
		m.Remove(testID)
		if err := <-waited; !errors.Is(err, ErrUnknownIdentity) {
			t.Errorf("Wait across Remove: %v", err)
		}
		close(release)
		if err := <-added; !errors.Is(err, ErrUnknownIdentity) {
			t.Errorf("Add across Remove: %v", err)
		}
		if _, err := m.Cert(testID)(); !errors.Is(err, ErrUnknownIdentity) {
			t.Errorf("Cert after Remove: %v", err)
		}
	})
}

// TestManagerAddJoinsCancelledFetch: an Add that waits on another caller's
// fetch, which is then cancelled, reports no certificate rather than success.
func TestManagerAddJoinsCancelledFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := fetcherFunc(func(ctx context.Context, _ SPIFFEID, _ []byte, _ time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
			<-ctx.Done()
			return nil, nil, ctx.Err()
		})
		m := newTestManager(t, f, ManagerOptions{})
		ctx1, cancel1 := context.WithCancel(t.Context())
		first := make(chan error, 1)
		go func() { first <- m.Add(ctx1, testID) }()
		synctest.Wait() // the first Add is fetching
		second := make(chan error, 1)
		go func() { second <- m.Add(t.Context(), testID) }()
		synctest.Wait() // the second Add waits for it
		cancel1()
		if err := <-first; !errors.Is(err, context.Canceled) {
			t.Errorf("first Add: %v", err)
		}
		if err := <-second; !errors.Is(err, ErrNoCertificate) {
			t.Errorf("second Add: %v, want ErrNoCertificate", err)
		}
		if st := m.Snapshot().Identities[0]; st.Failures != 0 {
			t.Errorf("a cancelled fetch counted as a failure: %+v", st)
		}
	})
}

func TestManagerConcurrentAdd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca, err := NewRootAuthority("cluster.local", 30*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f := &testFetcher{ca: ca}
		m := newTestManager(t, f, ManagerOptions{})
		var wg sync.WaitGroup
		for range 20 {
			wg.Go(func() {
				if err := m.Add(t.Context(), testID); err != nil {
					t.Error(err)
				}
				if _, err := m.Cert(testID)(); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if n := len(f.callTimes()); n != 1 {
			t.Errorf("%d fetches for 20 concurrent Adds of one identity, want 1", n)
		}
	})
}

// TestManagerRootRotation switches the CA to a new root: the bundle keeps
// the old root, so a peer still holding an old-root certificate verifies.
func TestManagerRootRotation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca1, err := NewRootAuthority("cluster.local", 30*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		ca2, err := NewRootAuthority("cluster.local", 60*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f := &testFetcher{ca: ca1}
		m := newTestManager(t, f, ManagerOptions{Validity: time.Hour})
		if err := m.Add(t.Context(), testOther); err != nil {
			t.Fatal(err)
		}
		startRun(t, m)
		oldPeer, err := ca1.Issue(testID, 2*time.Hour) // a peer not yet rotated
		if err != nil {
			t.Fatal(err)
		}
		f.set(ca2, nil)
		time.Sleep(31 * time.Minute)
		synctest.Wait()
		c := mustCert(t, m.Cert(testOther))
		if !bytes.Equal(c.Leaf.RawIssuer, ca2.Cert.RawSubject) {
			t.Fatal("rotated certificate not from the new root")
		}
		if n := len(m.Snapshot().Roots); n != 2 {
			t.Fatalf("%d roots, want both", n)
		}
		// A peer with an old-root certificate dials the rotated server.
		both := x509.NewCertPool()
		both.AddCert(ca1.Cert)
		both.AddCert(ca2.Cert)
		cc, sc := net.Pipe()
		scfg := ServerConfig(m.Cert(testOther), m.Roots(), nil)
		scfg.SessionTicketsDisabled = true
		srv := tls.Server(sc, scfg)
		errs := make(chan error, 1)
		go func() { errs <- srv.Handshake(); sc.Close() }()
		cli := tls.Client(cc, ClientConfig(StaticCert(oldPeer), StaticRoots(both), testOther))
		if err := cli.Handshake(); err != nil {
			t.Fatalf("old-root client: %v", err)
		}
		if err := <-errs; err != nil {
			t.Fatalf("new-root server rejected an old-root client: %v", err)
		}
		cc.Close()
	})
}

func TestManagerRejectsBadIssuance(t *testing.T) {
	ca := newTestAuthority(t)
	foreign, err := NewRootAuthority("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.Issue(testOther, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sameIDOtherKey, err := ca.Issue(testID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]fetcherFunc{
		"empty chain": func(context.Context, SPIFFEID, []byte, time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
			return nil, []*x509.Certificate{ca.Cert}, nil
		},
		"other identity": func(context.Context, SPIFFEID, []byte, time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
			return []*x509.Certificate{other.Leaf, ca.Cert}, []*x509.Certificate{ca.Cert}, nil
		},
		"other key": func(context.Context, SPIFFEID, []byte, time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
			return []*x509.Certificate{sameIDOtherKey.Leaf, ca.Cert}, []*x509.Certificate{ca.Cert}, nil
		},
		"untrusted root": func(ctx context.Context, id SPIFFEID, csr []byte, v time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
			chain, _, err := AuthorityFetcher{Authority: ca}.Fetch(ctx, id, csr, v)
			return chain, []*x509.Certificate{foreign.Cert}, err
		},
		"no roots": func(ctx context.Context, id SPIFFEID, csr []byte, v time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
			chain, _, err := AuthorityFetcher{Authority: ca}.Fetch(ctx, id, csr, v)
			return chain, nil, err
		},
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			m := newTestManager(t, f, ManagerOptions{})
			if err := m.Add(t.Context(), testID); !errors.Is(err, ErrInvalidCertificate) {
				t.Fatalf("Add: %v, want ErrInvalidCertificate", err)
			}
			if _, err := m.Cert(testID)(); !errors.Is(err, ErrNoCertificate) {
				t.Errorf("Cert: %v, want ErrNoCertificate", err)
			}
			if m.Roots()() != nil {
				t.Error("roots from a rejected issuance were kept")
			}
		})
	}
}

func TestManagerOptions(t *testing.T) {
	f := &testFetcher{}
	if _, err := NewManager(nil, ManagerOptions{}); err == nil {
		t.Error("nil Fetcher accepted")
	}
	for _, o := range []ManagerOptions{
		{Validity: -1}, {RotateFraction: 1}, {RotateFraction: -0.5}, {RotateFraction: 1.5},
		{RetryMin: -1}, {RetryMin: time.Minute, RetryMax: time.Second}, {FetchTimeout: -1},
	} {
		if _, err := NewManager(f, o); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
	m, err := NewManager(f, ManagerOptions{RetryMin: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	o := m.opts
	if o.Validity != DefaultCertLifetime || o.RotateFraction != 0.5 || o.RetryMax != 2*time.Minute || o.FetchTimeout != DefaultFetchTimeout || o.Clock == nil {
		t.Errorf("defaults: %+v", o)
	}
	if err := m.Add(t.Context(), SPIFFEID{TrustDomain: "cluster.local", Namespace: "Bad"}); !errors.Is(err, ErrInvalidSPIFFEID) {
		t.Errorf("Add(invalid): %v", err)
	}
	if len(m.Snapshot().Identities) != 0 {
		t.Error("invalid identity tracked")
	}
}

func TestManagerRunTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newTestManager(t, &testFetcher{}, ManagerOptions{})
		startRun(t, m)
		synctest.Wait()
		if err := m.Run(t.Context()); err == nil {
			t.Error("second Run did not fail")
		}
	})
}

func TestManagerFetchTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := fetcherFunc(func(ctx context.Context, _ SPIFFEID, _ []byte, _ time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
			<-ctx.Done()
			return nil, nil, ctx.Err()
		})
		m := newTestManager(t, f, ManagerOptions{FetchTimeout: 5 * time.Second})
		start := time.Now()
		if err := m.Add(t.Context(), testID); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Add: %v", err)
		}
		if d := time.Since(start); d != 5*time.Second {
			t.Errorf("fetch gave up after %v", d)
		}
		if st := m.Snapshot().Identities[0]; st.Failures != 1 {
			t.Errorf("a timeout is a failure: %+v", st)
		}
	})
}

// fakeClock is a Clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}
func (c *fakeClock) After(time.Duration) <-chan time.Time { return nil } // Run is not used here
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestManagerClockHook drives expiry with ManagerOptions.Clock: the CA and
// the Manager share a fake clock, and an expired certificate is not served.
func TestManagerClockHook(t *testing.T) {
	clk := &fakeClock{now: time.Now().Truncate(time.Second)}
	ca := newTestAuthority(t)
	ca.Now = clk.Now
	m := newTestManager(t, AuthorityFetcher{Authority: ca}, ManagerOptions{Validity: 10 * time.Minute, Clock: clk})
	start := clk.Now()
	if err := m.Add(t.Context(), testID); err != nil {
		t.Fatal(err)
	}
	if st := m.Snapshot().Identities[0]; !st.NextRefresh.Equal(start.Add(5 * time.Minute)) {
		t.Errorf("next refresh %v, want %v", st.NextRefresh, start.Add(5*time.Minute))
	}
	clk.Advance(10*time.Minute - time.Second)
	mustCert(t, m.Cert(testID))
	clk.Advance(time.Second)
	if _, err := m.Cert(testID)(); !errors.Is(err, ErrNoCertificate) {
		t.Fatalf("at NotAfter: %v, want ErrNoCertificate", err)
	}
	// Add renews an identity whose certificate expired.
	if err := m.Add(t.Context(), testID); err != nil {
		t.Fatal(err)
	}
	mustCert(t, m.Cert(testID))
}

func TestManagerSnapshotJSON(t *testing.T) {
	m := newTestManager(t, AuthorityFetcher{Authority: newTestAuthority(t)}, ManagerOptions{})
	if err := m.Add(t.Context(), testID); err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(m.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"id":"spiffe://cluster.local/ns/default/sa/web"`, `"serial":`, `"nextRefresh":`, `"roots":[{`} {
		if !bytes.Contains(out, []byte(s)) {
			t.Errorf("snapshot JSON lacks %s: %s", s, out)
		}
	}
	if bytes.Contains(out, []byte("PRIVATE")) || bytes.Contains(out, []byte(`"D"`)) {
		t.Errorf("snapshot JSON has key material: %s", out)
	}
}

// TestManagerRealTime uses the system clock, loopback TCP and a 2s
// certificate: it rotates at about half life, an open connection survives,
// and Run leaves no goroutine behind.
func TestManagerRealTime(t *testing.T) {
	baseline := runtime.NumGoroutine()
	ca := newTestAuthority(t)
	f := &testFetcher{ca: ca}
	m := newTestManager(t, f, ManagerOptions{Validity: 2 * time.Second, RetryMin: 100 * time.Millisecond})
	if err := m.Add(t.Context(), testID); err != nil {
		t.Fatal(err)
	}
	if err := m.Add(t.Context(), testOther); err != nil {
		t.Fatal(err)
	}
	issued := time.Now()
	first := mustCert(t, m.Cert(testOther))
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- m.Run(ctx) }()

	// An echo server over TLS on loopback.
	srvCfg := ServerConfig(m.Cert(testOther), m.Roots(), nil)
	var srvWG sync.WaitGroup
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srvWG.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			srvWG.Go(func() {
				s := tls.Server(c, srvCfg)
				defer s.Close()
				_, _ = io.Copy(s, s)
			})
		}
	})
	echo := func(c *tls.Conn, msg string) {
		t.Helper()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %q: %q %v", msg, buf, err)
		}
	}
	old, err := tls.Dial("tcp", ln.Addr().String(), ClientConfig(m.Cert(testID), m.Roots(), testOther))
	if err != nil {
		t.Fatal(err)
	}
	echo(old, "before")

	// Poll for the rotation.
	var rotatedAt time.Time
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c := mustCert(t, m.Cert(testOther)); serial(c).Cmp(serial(first)) != 0 {
			rotatedAt = time.Now()
			break
		}
	}
	if rotatedAt.IsZero() {
		t.Fatal("no rotation within 3s of a 2s certificate")
	}
	// NotAfter has whole seconds, so the lifetime is 1-2s and half of it 0.5-1s.
	if d := rotatedAt.Sub(issued); d < 400*time.Millisecond || d > 1500*time.Millisecond {
		t.Errorf("rotated %v after issue, want about half of the lifetime %v", d, first.Leaf.NotAfter.Sub(issued))
	}
	echo(old, "after")
	fresh, err := tls.Dial("tcp", ln.Addr().String(), ClientConfig(m.Cert(testID), m.Roots(), testOther))
	if err != nil {
		t.Fatal(err)
	}
	echo(fresh, "fresh")
	if got := fresh.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(serial(first)) == 0 {
		t.Error("a new handshake after rotation presented the old certificate")
	}
	if got := old.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(serial(first)) != 0 {
		t.Error("the old connection's peer certificate changed")
	}

	old.Close()
	fresh.Close()
	ln.Close()
	srvWG.Wait()
	cancel()
	if err := <-runDone; err != nil {
		t.Fatalf("Run: %v", err)
	}
	var n int
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if n = runtime.NumGoroutine(); n <= baseline {
			return
		}
	}
	buf := make([]byte, 1<<16)
	t.Errorf("%d goroutines after Run returned, baseline %d:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
}
