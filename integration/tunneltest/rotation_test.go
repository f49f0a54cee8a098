package tunneltest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/integration/internal/echo"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// TestRotationUnderLiveStreams rotates both sides' certificates several times
// while long-lived tunnels carry data without pause. No stream may break or
// lose a byte, and each new handshake must present the newest certificate.
func TestRotationUnderLiveStreams(t *testing.T) {
	const (
		validity = 1500 * time.Millisecond // rotated at half-life: every ~750ms
		runFor   = 4 * time.Second         // so each side rotates about five times
		streams  = 8
	)
	ca, err := identity.NewRootAuthority("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client := identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "frontend"}
	server := identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "reviews"}
	mgr, err := identity.NewManager(identity.AuthorityFetcher{Authority: ca}, identity.ManagerOptions{
		Validity: validity, RetryMin: 100 * time.Millisecond, RetryMax: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- mgr.Run(ctx) }()
	for _, id := range []identity.SPIFFEID{client, server} {
		if err := mgr.Add(ctx, id); err != nil {
			t.Fatal(err)
		}
	}

	upstream := echo.Loopback(t)
	srv := &hbone.Server{TLSConfig: identity.ServerConfig(mgr.Cert(server), mgr.Roots(), nil)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	addr := ln.Addr().(*net.TCPAddr).AddrPort()

	// serials records the server certificate serial each client handshake saw.
	var mu sync.Mutex
	serials := map[string]bool{}
	newDialer := func() *hbone.Dialer {
		return &hbone.Dialer{TLSConfig: func(src, dst identity.SPIFFEID) (*tls.Config, error) {
			cfg := identity.ClientConfig(mgr.Cert(src), mgr.Roots(), dst)
			verify := cfg.VerifyConnection
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				if err := verify(cs); err != nil {
					return err
				}
				mu.Lock()
				serials[cs.PeerCertificates[0].SerialNumber.String()] = true
				mu.Unlock()
				return nil
			}
			return cfg, nil
		}}
	}
	req := hbone.Request{Source: client, Destination: server, Address: addr, Authority: upstream}

	// Long-lived streams, opened with the first certificates, echo chunks
	// without pause for the whole run.
	longDialer := newDialer()
	defer longDialer.Close()
	deadline := time.Now().Add(runFor)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	var moved [streams]int64
	for i := range streams {
		conn, err := longDialer.Dial(ctx, req)
		if err != nil {
			t.Fatalf("open stream %d: %v", i, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			chunk, back := make([]byte, 16<<10), make([]byte, 16<<10)
			for time.Now().Before(deadline) {
				for j := range chunk {
					chunk[j] = byte(rng.Uint32())
				}
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := conn.Write(chunk); err != nil {
					errs <- err
					return
				}
				if _, err := io.ReadFull(conn, back); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(chunk, back) {
					errs <- errors.New("echo differs")
					return
				}
				moved[i] += int64(len(chunk))
			}
			if err := conn.CloseWrite(); err != nil {
				errs <- err
				return
			}
			if rest, err := io.ReadAll(conn); err != nil || len(rest) != 0 {
				errs <- errors.New("unexpected data or error at the end of the stream")
			}
		}()
	}

	// Meanwhile new connections keep being made: each handshake must see the
	// current certificate.
	for time.Now().Before(deadline) {
		d := newDialer()
		conn, err := d.Dial(ctx, req)
		if err != nil {
			t.Errorf("new tunnel during rotation: %v", err)
		} else {
			conn.Close()
		}
		d.Close()
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a long-lived stream broke during rotation: %v", err)
	}
	for i, n := range moved {
		if n == 0 {
			t.Errorf("stream %d moved no data", i)
		}
	}
	mu.Lock()
	distinct := len(serials)
	mu.Unlock()
	// One serial per rotation of the server certificate was seen by new handshakes.
	if distinct < 4 {
		t.Errorf("new handshakes saw %d distinct server certificates in %v, want at least 4 (rotation every ~%v)", distinct, runFor, validity/2)
	}
	// The first certificates expired long ago, and the long-lived streams,
	// made with them, kept working: rotation never touched open connections.
	// The manager now serves fresh, valid certificates for both sides.
	for _, c := range mgr.Snapshot().Identities {
		if !c.Valid || time.Until(c.NotAfter) > validity || c.Failures != 0 {
			t.Errorf("certificate of %s after the run: %+v", c.ID, c)
		}
	}
	t.Logf("moved %v bytes per stream; %d server certificates seen", moved, distinct)
	cancel()
	if err := <-mgrDone; err != nil {
		t.Errorf("manager: %v", err)
	}
}
