package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"
)

// ErrInvalidCSR is wrapped by every error about a certificate signing request
// that is malformed, badly signed, or asks for more than one SPIFFE ID.
var ErrInvalidCSR = errors.New("invalid certificate signing request")

// ErrInvalidCertificate is wrapped by errors about a peer or workload
// certificate that does not carry exactly one valid SPIFFE ID.
var ErrInvalidCertificate = errors.New("invalid workload certificate")

// DefaultCertLifetime is the lifetime of a workload certificate unless configured.
const DefaultCertLifetime = 24 * time.Hour

// clockSkew backdates NotBefore so that peers with slightly slow clocks accept
// a certificate at once.
const clockSkew = time.Minute

// GenerateKey returns a new ECDSA P-256 private key, the key type of every
// Ambit workload certificate.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// CreateCSR returns a DER certificate signing request for id, signed by key,
// whose only subject alternative name is the SPIFFE ID.
func CreateCSR(key crypto.Signer, id SPIFFEID) ([]byte, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
}

// ParseCSR parses a DER (or PEM "CERTIFICATE REQUEST") CSR, checks its
// signature, and returns it with the one SPIFFE ID it asks for. DNS, IP and
// e-mail SANs, or more than one URI SAN, are refused.
func ParseCSR(data []byte) (*x509.CertificateRequest, SPIFFEID, error) {
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "CERTIFICATE REQUEST" {
			return nil, SPIFFEID{}, fmt.Errorf("%w: PEM block %q, want CERTIFICATE REQUEST", ErrInvalidCSR, block.Type)
		}
		data = block.Bytes
	}
	csr, err := x509.ParseCertificateRequest(data)
	if err != nil {
		return nil, SPIFFEID{}, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, SPIFFEID{}, fmt.Errorf("%w: signature: %v", ErrInvalidCSR, err)
	}
	if n := len(csr.DNSNames) + len(csr.IPAddresses) + len(csr.EmailAddresses); n > 0 {
		return nil, SPIFFEID{}, fmt.Errorf("%w: %d DNS, IP or e-mail SANs; only one SPIFFE URI SAN is allowed", ErrInvalidCSR, n)
	}
	if len(csr.URIs) != 1 {
		return nil, SPIFFEID{}, fmt.Errorf("%w: %d URI SANs, want exactly one SPIFFE ID", ErrInvalidCSR, len(csr.URIs))
	}
	id, err := ParseSPIFFEID(csr.URIs[0].String())
	if err != nil {
		return nil, SPIFFEID{}, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	return csr, id, nil
}

// IDFromCert returns the SPIFFE ID of a workload certificate, which must have
// exactly one URI SAN.
func IDFromCert(c *x509.Certificate) (SPIFFEID, error) {
	if len(c.URIs) != 1 {
		return SPIFFEID{}, fmt.Errorf("%w: %d URI SANs, want one SPIFFE ID", ErrInvalidCertificate, len(c.URIs))
	}
	id, err := ParseSPIFFEID(c.URIs[0].String())
	if err != nil {
		return SPIFFEID{}, fmt.Errorf("%w: %v", ErrInvalidCertificate, err)
	}
	return id, nil
}

// Authority signs workload certificates with a CA key. The mesh CA in the
// controller uses it with the root from Secret ambit-system/ambit-ca; tests use
// it with a root made by NewRootAuthority.
type Authority struct {
	// Cert is the CA certificate; it is the last element of every chain.
	Cert *x509.Certificate
	// Key signs certificates; its public key is Cert's.
	Key crypto.Signer
	// TrustDomain is the only trust domain Sign issues identities in.
	TrustDomain string
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// NewRootAuthority makes a self-signed ECDSA P-256 root CA for trustDomain.
func NewRootAuthority(trustDomain string, lifetime time.Duration) (*Authority, error) {
	if err := validTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	key, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{Organization: []string{"Ambit"}, CommonName: "Ambit mesh CA " + trustDomain},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(lifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Authority{Cert: cert, Key: key, TrustDomain: trustDomain}, nil
}

func (a *Authority) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// Sign issues a certificate for the SPIFFE ID that csr asks for (parse it with
// ParseCSR first), valid for validity or until the CA expires, whichever is
// sooner. It returns the chain, leaf first and CA certificate last.
func (a *Authority) Sign(csr *x509.CertificateRequest, id SPIFFEID, validity time.Duration) ([]*x509.Certificate, error) {
	if id.TrustDomain != a.TrustDomain {
		return nil, fmt.Errorf("%w: trust domain %q, this CA issues only %q", ErrInvalidCSR, id.TrustDomain, a.TrustDomain)
	}
	if validity <= 0 {
		return nil, fmt.Errorf("validity %v must be positive", validity)
	}
	now := a.now()
	if !now.Before(a.Cert.NotAfter) {
		return nil, fmt.Errorf("sign certificate for %s: CA certificate expired at %v", id, a.Cert.NotAfter)
	}
	notAfter := now.Add(validity)
	if notAfter.After(a.Cert.NotAfter) {
		notAfter = a.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, csr.PublicKey, a.Key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf, a.Cert}, nil
}

// Issue is a convenience for tests and local mode: it makes a key and a
// certificate for id, returned as a tls.Certificate with the chain.
func (a *Authority) Issue(id SPIFFEID, validity time.Duration) (*tls.Certificate, error) {
	key, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	der, err := CreateCSR(key, id)
	if err != nil {
		return nil, err
	}
	csr, id2, err := ParseCSR(der)
	if err != nil {
		return nil, err
	}
	chain, err := a.Sign(csr, id2, validity)
	if err != nil {
		return nil, err
	}
	return NewTLSCertificate(chain, key), nil
}

// Pool returns a pool holding the CA certificate: the trust bundle.
func (a *Authority) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(a.Cert)
	return p
}

// NewTLSCertificate bundles a chain (leaf first) and its key.
func NewTLSCertificate(chain []*x509.Certificate, key crypto.Signer) *tls.Certificate {
	c := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

func randomSerial() *big.Int {
	// 128 random bits; rand.Int fails only if the system's entropy source does.
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return n
}

// EncodeCertsPEM encodes certificates as concatenated PEM blocks.
func EncodeCertsPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// ParseCertsPEM parses concatenated PEM CERTIFICATE blocks; it fails on any
// other content, and on none at all.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		// pem.Decode skips any text before a block; only white space may
		// precede or separate the blocks here.
		data = bytes.TrimLeft(data, " \t\r\n")
		if !bytes.HasPrefix(data, []byte("-----BEGIN ")) {
			break
		}
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("malformed PEM block")
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q, want CERTIFICATE", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(data)) != 0 {
		return nil, errors.New("trailing data after PEM certificates")
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

// EncodeKeyPEM encodes an ECDSA key as a PEM "EC PRIVATE KEY" block.
func EncodeKeyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// ParseKeyPEM parses a PEM "EC PRIVATE KEY" or PKCS#8 "PRIVATE KEY" block.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM key found")
	}
	switch block.Type {
	case "EC PRIVATE KEY":
		return x509.ParseECPrivateKey(block.Bytes)
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, err
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("key of type %T cannot sign", k)
		}
		return s, nil
	default:
		return nil, fmt.Errorf("PEM block %q, want EC PRIVATE KEY or PRIVATE KEY", block.Type)
	}
}
