package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	cav1alpha1 "github.com/ambit-mesh/ambit/apis/ca/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// maxCSRBytes bounds the PEM CSR a caller may send; a P-256 CSR is ~500 bytes.
const maxCSRBytes = 16 << 10

// ParseRequest checks a CreateCertificateRequest against cfg (defaulted): the
// CSR must be one PEM CERTIFICATE REQUEST, correctly self-signed, with an
// ECDSA P-256 key and exactly one URI SAN, a SPIFFE ID in cfg's trust domain;
// the validity must be unset, or between MinCertLifetime and any value (it is
// lowered to cfg.MaxCertLifetime). Every failure is an InvalidArgument status.
func ParseRequest(req *cav1alpha1.CreateCertificateRequest, cfg Config) (*x509.CertificateRequest, identity.SPIFFEID, time.Duration, error) {
	fail := func(format string, args ...any) (*x509.CertificateRequest, identity.SPIFFEID, time.Duration, error) {
		return nil, identity.SPIFFEID{}, 0, status.Errorf(codes.InvalidArgument, format, args...)
	}
	validity, err := Validity(req.GetValidity(), cfg)
	if err != nil {
		return nil, identity.SPIFFEID{}, 0, err
	}
	data := []byte(req.GetCsr())
	if len(strings.TrimSpace(req.GetCsr())) == 0 {
		return fail("csr is empty")
	}
	if len(data) > maxCSRBytes {
		return fail("csr is %d bytes, more than %d", len(data), maxCSRBytes)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return fail("csr is not PEM encoded")
	}
	csr, id, err := identity.ParseCSR(data)
	if err != nil {
		return fail("csr: %v", err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return fail("csr key is %s, want ECDSA P-256", keyDescription(csr))
	}
	if id.TrustDomain != cfg.TrustDomain {
		return fail("csr asks for %s in trust domain %q; this CA issues only in %q", id, id.TrustDomain, cfg.TrustDomain)
	}
	return csr, id, validity, nil
}

// Validity turns a requested validity into the one to issue: nil or zero is
// cfg.DefaultCertLifetime, a value above cfg.MaxCertLifetime is lowered to
// it, a malformed or negative value, or one below MinCertLifetime, is an
// InvalidArgument status.
func Validity(d *durationpb.Duration, cfg Config) (time.Duration, error) {
	if d == nil {
		return min(cfg.DefaultCertLifetime, cfg.MaxCertLifetime), nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, status.Errorf(codes.InvalidArgument, "validity: %v", err)
	}
	v := d.AsDuration()
	switch {
	case v == 0:
		return min(cfg.DefaultCertLifetime, cfg.MaxCertLifetime), nil
	case v < 0:
		return 0, status.Errorf(codes.InvalidArgument, "validity %v is negative", v)
	case v < MinCertLifetime:
		return 0, status.Errorf(codes.InvalidArgument, "validity %v is below the minimum %v", v, MinCertLifetime)
	case v > cfg.MaxCertLifetime:
		return cfg.MaxCertLifetime, nil
	}
	return v, nil
}

func keyDescription(csr *x509.CertificateRequest) string {
	if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); ok {
		return "ECDSA " + pub.Curve.Params().Name
	}
	return csr.PublicKeyAlgorithm.String()
}
