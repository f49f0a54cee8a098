package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net/url"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func mustID(t testing.TB, s string) identity.SPIFFEID {
	t.Helper()
	id, err := identity.ParseSPIFFEID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// csrPEM makes a PEM CSR with the given key and SANs.
func csrPEM(t testing.TB, key crypto.Signer, uris []string, dns []string) string {
	t.Helper()
	tmpl := &x509.CertificateRequest{DNSNames: dns}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func p256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// badSignatureCSR returns a PEM CSR whose signature does not verify.
func badSignatureCSR(t testing.TB, uri string) string {
	t.Helper()
	block, _ := pem.Decode([]byte(csrPEM(t, p256(t), []string{uri}, nil)))
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	// Flip a bit in the signature, which is the tail of the DER.
	der := append([]byte(nil), block.Bytes...)
	der[len(der)-len(csr.Signature)/2] ^= 0x01
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// podStore is an in-memory Pods for the pure authorization tests.
type podStore struct {
	pods []corev1.Pod
	err  error
}

func (s *podStore) Get(_ context.Context, ns, name string) (*corev1.Pod, error) {
	if s.err != nil {
		return nil, s.err
	}
	for i := range s.pods {
		if s.pods[i].Namespace == ns && s.pods[i].Name == name {
			return &s.pods[i], nil
		}
	}
	return nil, apierrors.NewNotFound(corev1.Resource("pods"), name)
}

func (s *podStore) OnNode(_ context.Context, ns, node string) ([]corev1.Pod, error) {
	if s.err != nil {
		return nil, s.err
	}
	var out []corev1.Pod
	for _, p := range s.pods {
		if p.Namespace == ns && p.Spec.NodeName == node {
			out = append(out, p)
		}
	}
	return out, nil
}

func pod(ns, name, sa, node string, phase corev1.PodPhase) corev1.Pod {
	p := corev1.Pod{}
	p.Namespace, p.Name, p.UID = ns, name, types.UID("uid-"+name)
	p.Spec.ServiceAccountName, p.Spec.NodeName = sa, node
	p.Status.Phase = phase
	return p
}

// authnFunc is an Authenticator from a function.
type authnFunc func(ctx context.Context, token string) (Caller, error)

func (f authnFunc) Authenticate(ctx context.Context, token string) (Caller, error) {
	return f(ctx, token)
}
