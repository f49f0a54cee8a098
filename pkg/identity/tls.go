package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// ALPNHBONE is the ALPN protocol of HBONE connections: HTTP/2.
const ALPNHBONE = "h2"

// ErrPeerIdentity is wrapped when a verified peer is not the identity expected.
var ErrPeerIdentity = errors.New("unexpected peer identity")

// CertSource returns the certificate a side presents, at each handshake. A
// certificate manager's rotation is seen by the next handshake; connections
// already open keep the certificate they were made with.
type CertSource func() (*tls.Certificate, error)

// RootsSource returns the trust bundle, at each handshake.
type RootsSource func() *x509.CertPool

// StaticCert is a CertSource that always returns c.
func StaticCert(c *tls.Certificate) CertSource {
	return func() (*tls.Certificate, error) { return c, nil }
}

// StaticRoots is a RootsSource that always returns p.
func StaticRoots(p *x509.CertPool) RootsSource { return func() *x509.CertPool { return p } }

// VerifyPeerChain verifies a peer's certificate chain (leaf first, as TLS
// delivers it) against roots for the given key usage, and returns the leaf's
// SPIFFE ID.
func VerifyPeerChain(rawCerts [][]byte, roots *x509.CertPool, usage x509.ExtKeyUsage) (SPIFFEID, error) {
	if len(rawCerts) == 0 {
		return SPIFFEID{}, fmt.Errorf("%w: peer sent no certificate", ErrInvalidCertificate)
	}
	if roots == nil {
		return SPIFFEID{}, errors.New("no trust bundle to verify the peer against")
	}
	certs := make([]*x509.Certificate, len(rawCerts))
	for i, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return SPIFFEID{}, fmt.Errorf("%w: %v", ErrInvalidCertificate, err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage},
	}); err != nil {
		return SPIFFEID{}, fmt.Errorf("%w: %v", ErrInvalidCertificate, err)
	}
	return IDFromCert(certs[0])
}

// ClientConfig is the TLS 1.3 configuration of a side that dials a peer: it
// presents cert, verifies the peer's chain against roots, and accepts only the
// exact SPIFFE ID want.
func ClientConfig(cert CertSource, roots RootsSource, want SPIFFEID) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPNHBONE},
		// Hostname verification does not apply to SPIFFE identities: the chain
		// and the ID are verified below instead.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cert()
		},
		// VerifyConnection, unlike VerifyPeerCertificate, also runs when a
		// session is resumed, so a resumed session is held to the same checks.
		VerifyConnection: func(cs tls.ConnectionState) error {
			got, err := VerifyPeerChain(rawChain(cs), roots(), x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("%w: peer is %s, want %s", ErrPeerIdentity, got, want)
			}
			return nil
		},
	}
}

// ServerConfig is the TLS 1.3 configuration of a side that accepts peers: it
// presents cert, requires a client certificate that verifies against roots,
// and hands the peer's SPIFFE ID to authorize (nil accepts every verified
// peer); an error from authorize fails the handshake. The checks run on every
// handshake, resumed sessions included.
func ServerConfig(cert CertSource, roots RootsSource, authorize func(peer SPIFFEID) error) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPNHBONE},
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cert()
		},
		// VerifyConnection, unlike VerifyPeerCertificate, also runs when a
		// session is resumed: the peer's chain is checked against today's
		// roots and authorize (today's policy) is asked again.
		VerifyConnection: func(cs tls.ConnectionState) error {
			got, err := VerifyPeerChain(rawChain(cs), roots(), x509.ExtKeyUsageClientAuth)
			if err != nil {
				return err
			}
			if authorize != nil {
				return authorize(got)
			}
			return nil
		},
	}
}

// PeerID returns the SPIFFE ID of the peer of a completed handshake.
func PeerID(cs tls.ConnectionState) (SPIFFEID, error) {
	if len(cs.PeerCertificates) == 0 {
		return SPIFFEID{}, fmt.Errorf("%w: no peer certificate", ErrInvalidCertificate)
	}
	return IDFromCert(cs.PeerCertificates[0])
}

// rawChain returns the DER certificates the peer presented (or, on a resumed
// session, presented when the session was made), leaf first.
func rawChain(cs tls.ConnectionState) [][]byte {
	raw := make([][]byte, len(cs.PeerCertificates))
	for i, c := range cs.PeerCertificates {
		raw[i] = c.Raw
	}
	return raw
}
