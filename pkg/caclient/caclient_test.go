package caclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cav1alpha1 "github.com/ambit-mesh/ambit/apis/ca/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// stubCA signs every CSR whose caller sent "Bearer good" and records the
// requested validity. The real CA is tested in integration/catest.
type stubCA struct {
	cav1alpha1.UnimplementedCertificateServiceServer
	a        *identity.Authority
	validity time.Duration
}

func (s *stubCA) CreateCertificate(ctx context.Context, req *cav1alpha1.CreateCertificateRequest) (*cav1alpha1.CreateCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) != 1 || v[0] != "Bearer good" {
		return nil, status.Errorf(codes.Unauthenticated, "bad token %v", v)
	}
	csr, id, err := identity.ParseCSR([]byte(req.GetCsr()))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	s.validity = req.GetValidity().AsDuration()
	chain, err := s.a.Sign(csr, id, time.Hour)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &cav1alpha1.CreateCertificateResponse{
		CertChain:   []string{string(identity.EncodeCertsPEM(chain[0])), string(identity.EncodeCertsPEM(chain[1]))},
		TrustBundle: []string{string(identity.EncodeCertsPEM(s.a.Cert))},
	}, nil
}

func TestFetch(t *testing.T) {
	a, err := identity.NewRootAuthority("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := a.Issue(identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "ambit-system", ServiceAccount: "ambit-controller"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// The stub's serving certificate has only a URI SAN, so the client
	// checks it by a name the test trusts: verify through a custom pool is
	// enough here, the DNS name check is exercised in integration/catest.
	stub := &stubCA{a: a}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*srvCert}})))
	cav1alpha1.RegisterCertificateServiceServer(gs, stub)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)

	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte("good\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rootsPEM := identity.EncodeCertsPEM(a.Cert)
	rootFile := filepath.Join(t.TempDir(), "root-cert.pem")
	if err := os.WriteFile(rootFile, rootsPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	roots, err := RootsFromFile(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{
		Address: lis.Addr().String(), Roots: roots, TokenFile: tokFile,
		// The stub's certificate names no DNS host: accept it by chain only.
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: roots, InsecureSkipVerify: true, //nolint:gosec // verified below
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				_, err := identity.VerifyPeerChain(raw, roots, x509.ExtKeyUsageServerAuth)
				return err
			},
		}))},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	id := identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	key, _ := identity.GenerateKey()
	der, err := identity.CreateCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	chain, gotRoots, err := c.Fetch(t.Context(), id, der, 90*time.Minute)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if len(chain) != 2 || len(gotRoots) != 1 || !gotRoots[0].Equal(a.Cert) || stub.validity != 90*time.Minute {
		t.Errorf("chain %d, roots %d, validity sent %v", len(chain), len(gotRoots), stub.validity)
	}
	// The leaf must be for the identity asked for.
	other := identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "db"}
	if _, _, err := c.Fetch(t.Context(), other, der, time.Hour); status.Code(err) != codes.Internal {
		t.Errorf("leaf for another identity: %v, want Internal", err)
	}

	// The token file is read at every call, and the CA's status is kept.
	if err := os.WriteFile(tokFile, []byte("rotated"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Fetch(t.Context(), id, der, time.Hour); status.Code(err) != codes.Unauthenticated {
		t.Errorf("rotated token: %v, want Unauthenticated", err)
	}
	if err := os.Remove(tokFile); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Fetch(t.Context(), id, der, time.Hour); status.Code(err) != codes.Unauthenticated {
		t.Errorf("missing token file: %v, want Unauthenticated", err)
	}
	if _, _, err := c.Fetch(t.Context(), id, []byte("junk"), time.Hour); err == nil {
		t.Error("junk CSR accepted")
	}
}

func TestConfigErrors(t *testing.T) {
	roots, err := RootsFromPEM(identity.EncodeCertsPEM(mustRoot(t).Cert))
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]Config{
		"no address": {Roots: roots, TokenFile: "x"},
		"no roots":   {Address: "a:1", TokenFile: "x"},
		"no token":   {Address: "a:1", Roots: roots},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for _, bad := range []string{"", "junk", "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"} {
		if _, err := RootsFromPEM([]byte(bad)); err == nil {
			t.Errorf("RootsFromPEM(%q) accepted", bad)
		}
	}
	if _, err := RootsFromFile(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("missing roots file accepted")
	}
}

func mustRoot(t *testing.T) *identity.Authority {
	a, err := identity.NewRootAuthority("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
