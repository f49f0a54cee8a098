package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"

	cav1alpha1 "github.com/ambit-mesh/ambit/apis/ca/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// TestCreateCertificateStatusCodes runs the service handler with an
// in-memory authenticator and pod store, one case per gRPC status.
func TestCreateCertificateStatusCodes(t *testing.T) {
	root, err := identity.NewRootAuthority("cluster.local", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	callers := map[string]Caller{
		"web": {Username: "system:serviceaccount:shop:web", Namespace: "shop", ServiceAccount: "web"},
	}
	authn := authnFunc(func(_ context.Context, token string) (Caller, error) {
		switch token {
		case "down":
			return Caller{}, status.Error(codes.Unavailable, "apiserver down")
		case "plain":
			return Caller{}, errors.New("plain error")
		}
		if c, ok := callers[token]; ok {
			return c, nil
		}
		return Caller{}, status.Error(codes.Unauthenticated, "token not authenticated")
	})
	pods := &podStore{pods: []corev1.Pod{pod("shop", "web-1", "web", "node-a", corev1.PodRunning)}}
	s, err := NewWithAuthority(root, authn, pods, Config{MaxCertLifetime: 2 * time.Hour}, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	const web = "spiffe://cluster.local/ns/shop/sa/web"
	call := func(token string, req *cav1alpha1.CreateCertificateRequest) (*cav1alpha1.CreateCertificateResponse, error) {
		ctx := t.Context()
		if token != "" {
			ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+token))
		}
		return s.CreateCertificate(ctx, req)
	}
	key := p256(t)
	good := &cav1alpha1.CreateCertificateRequest{Csr: csrPEM(t, key, []string{web}, nil), Validity: durationpb.New(10 * time.Hour)}

	resp, err := call("web", good)
	if err != nil {
		t.Fatalf("good request: %v", err)
	}
	if len(resp.CertChain) != 2 || len(resp.TrustBundle) != 1 {
		t.Fatalf("response has %d chain and %d bundle elements", len(resp.CertChain), len(resp.TrustBundle))
	}
	leaf, err := identity.ParseCertsPEM([]byte(resp.CertChain[0]))
	if err != nil {
		t.Fatal(err)
	}
	if got := leaf[0].NotAfter.Sub(leaf[0].NotBefore); got < 2*time.Hour || got > 2*time.Hour+2*time.Minute {
		t.Errorf("leaf lifetime %v, want the 2h maximum (+1m backdating)", got)
	}
	if _, err := leaf[0].Verify(x509.VerifyOptions{Roots: root.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not verify: %v", err)
	}

	cases := []struct {
		name, token string
		req         *cav1alpha1.CreateCertificateRequest
		code        codes.Code
		msg         string
	}{
		{"no token", "", good, codes.Unauthenticated, "authorization"},
		{"bad token", "garbage", good, codes.Unauthenticated, "not authenticated"},
		{"apiserver down", "down", good, codes.Unavailable, "down"},
		{"plain authn error", "plain", good, codes.Unauthenticated, "plain"},
		{"other identity", "web", &cav1alpha1.CreateCertificateRequest{Csr: csrPEM(t, key, []string{"spiffe://cluster.local/ns/shop/sa/db"}, nil)}, codes.PermissionDenied, "spiffe://cluster.local/ns/shop/sa/db"},
		{"bad signature", "web", &cav1alpha1.CreateCertificateRequest{Csr: badSignatureCSR(t, web)}, codes.InvalidArgument, "signature"},
		{"extra SAN", "web", &cav1alpha1.CreateCertificateRequest{Csr: csrPEM(t, key, []string{web}, []string{"x.example"})}, codes.InvalidArgument, "DNS"},
		{"foreign trust domain", "web", &cav1alpha1.CreateCertificateRequest{Csr: csrPEM(t, key, []string{"spiffe://other.td/ns/shop/sa/web"}, nil)}, codes.InvalidArgument, "trust domain"},
		{"nil request", "web", nil, codes.InvalidArgument, "empty"},
	}
	for _, tc := range cases {
		_, err := call(tc.token, tc.req)
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want %v mentioning %q", tc.name, err, tc.code, tc.msg)
		}
	}

	if _, err := NewWithAuthority(root, authn, pods, Config{TrustDomain: "other.td"}, discardLog()); err == nil {
		t.Error("authority of another trust domain accepted")
	}
}

func TestServingCertRotation(t *testing.T) {
	root, err := identity.NewRootAuthority("cluster.local", 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cfg := Config{ExtraDNSNames: []string{"ca.example.org", "127.0.0.1"}, ServingCertLifetime: 2 * time.Hour}.Defaulted()
	s := &servingCert{authority: root, names: cfg.ServingDNSNames(), lifetime: cfg.ServingCertLifetime, now: func() time.Time { return now }}
	c1, err := s.get()
	if err != nil {
		t.Fatal(err)
	}
	leaf := c1.Leaf
	if strings.Join(leaf.DNSNames, ",") != "ambit-controller.ambit-system.svc,ambit-controller.ambit-system.svc.cluster.local,ca.example.org" ||
		len(leaf.IPAddresses) != 1 || len(leaf.URIs) != 0 {
		t.Errorf("SANs: DNS %v IP %v URI %v", leaf.DNSNames, leaf.IPAddresses, leaf.URIs)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: root.Pool(), DNSName: "ambit-controller.ambit-system.svc"}); err != nil {
		t.Errorf("serving cert does not verify: %v", err)
	}
	now = now.Add(30 * time.Minute)
	if c2, _ := s.get(); c2 != c1 {
		t.Error("re-issued before half life")
	}
	now = now.Add(31 * time.Minute) // past half of 2h (+1m backdating)
	c3, err := s.get()
	if err != nil || c3 == c1 || !c3.Leaf.NotAfter.After(leaf.NotAfter) {
		t.Errorf("not re-issued past half life: %v", err)
	}
}
