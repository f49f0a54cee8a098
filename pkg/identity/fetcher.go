package identity

import (
	"context"
	"crypto/x509"
	"time"
)

// Fetcher obtains signed certificates from a CA. The controller's CA client
// (over gRPC, authenticated with a service-account token) implements it; tests
// may use an Authority directly through AuthorityFetcher.
type Fetcher interface {
	// Fetch sends a DER CSR for id and asks for the given validity. It returns
	// the signed chain, leaf first, and the CA's trust bundle (roots).
	Fetch(ctx context.Context, id SPIFFEID, csrDER []byte, validity time.Duration) (chain, roots []*x509.Certificate, err error)
}

// AuthorityFetcher is a Fetcher that signs in-process with an Authority.
type AuthorityFetcher struct{ Authority *Authority }

// Fetch implements Fetcher.
func (f AuthorityFetcher) Fetch(_ context.Context, id SPIFFEID, csrDER []byte, validity time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
	csr, got, err := ParseCSR(csrDER)
	if err != nil {
		return nil, nil, err
	}
	if got != id {
		return nil, nil, ErrInvalidCSR
	}
	chain, err := f.Authority.Sign(csr, got, validity)
	if err != nil {
		return nil, nil, err
	}
	return chain, []*x509.Certificate{f.Authority.Cert}, nil
}
