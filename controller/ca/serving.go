package ca

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// servingCert is the CA's own TLS certificate, signed by the root, with the
// controller Service's DNS names. It is issued on first use and re-issued at
// the first handshake past half its lifetime, so it never expires while the
// CA runs; connections already open keep theirs.
type servingCert struct {
	authority *identity.Authority
	names     []string
	lifetime  time.Duration
	now       func() time.Time

	mu      sync.Mutex
	cur     *tls.Certificate
	renewAt time.Time
}

// get returns the current certificate, issuing a new one when due.
func (s *servingCert) get() (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.cur != nil && now.Before(s.renewAt) {
		return s.cur, nil
	}
	c, err := s.issue(now)
	if err != nil {
		if s.cur != nil && now.Before(s.cur.Leaf.NotAfter) {
			return s.cur, nil // keep serving the still-valid one
		}
		return nil, err
	}
	s.cur = c
	s.renewAt = c.Leaf.NotBefore.Add(c.Leaf.NotAfter.Sub(c.Leaf.NotBefore) / 2)
	return c, nil
}

func (s *servingCert) issue(now time.Time) (*tls.Certificate, error) {
	key, err := identity.GenerateKey()
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(s.lifetime)
	if notAfter.After(s.authority.Cert.NotAfter) {
		notAfter = s.authority.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Ambit"}, CommonName: s.names[0]},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, n := range s.names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.authority.Cert, key.Public(), s.authority.Key)
	if err != nil {
		return nil, fmt.Errorf("issue serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return identity.NewTLSCertificate([]*x509.Certificate{leaf, s.authority.Cert}, key), nil
}

// tlsConfig is the server side TLS configuration: TLS 1.3, no client
// certificate (callers authenticate with a token).
func (s *servingCert) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.get()
		},
	}
}
