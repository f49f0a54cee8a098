//go:build netns

package meshtest

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/controller/ca"
	"github.com/ambit-mesh/ambit/integration/internal/castub"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// meshCA is the controller's CA code (controller/ca) serving TLS gRPC on
// loopback. Local mode has no CA, so the test runs it: ztunnels reach it
// with their ordinary -ca-* flags, a root file and a token file each.
type meshCA struct {
	t        *testing.T
	srv      *ca.Server
	addr     string
	rootFile string
	tokens   map[string]string // node -> token file
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func startCA(t *testing.T, dir string, pods []podSpec, nodes []string) *meshCA {
	t.Helper()
	authority, err := identity.NewRootAuthority(trustDomain, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var list castub.Pods
	for _, p := range pods {
		list = append(list, corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: p.ns, UID: types.UID(p.uid())},
			Spec:       corev1.PodSpec{NodeName: p.node, ServiceAccountName: p.sa},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning},
		})
	}
	m := &meshCA{t: t, rootFile: filepath.Join(dir, "root-cert.pem"), tokens: map[string]string{}}
	auth := castub.TokenAuth{}
	for _, n := range nodes {
		token := "token-of-ztunnel-on-" + n
		auth[token] = n
		m.tokens[n] = filepath.Join(dir, "token-"+n)
		if err := os.WriteFile(m.tokens[n], []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(m.rootFile, identity.EncodeCertsPEM(authority.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if m.srv, err = ca.NewWithAuthority(authority, auth, list, ca.Config{TrustDomain: trustDomain}, log); err != nil {
		t.Fatal(err)
	}
	m.addr = "127.0.0.1:0"
	m.start()
	t.Cleanup(m.stop)
	return m
}

// start serves the CA (again, on the same address after the first time).
func (m *meshCA) start() {
	m.t.Helper()
	ln, err := net.Listen("tcp", m.addr)
	if err != nil {
		m.t.Fatalf("CA listener: %v", err)
	}
	m.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.wg.Go(func() {
		if err := m.srv.Serve(ctx, ln); err != nil {
			m.t.Errorf("CA: %v", err)
		}
	})
}

// stop stops serving; idempotent.
func (m *meshCA) stop() {
	m.cancel()
	m.wg.Wait()
}

// testWriter sends log lines to the test log (while the test runs).
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
