package caclient

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	cav1alpha1 "github.com/ambit-mesh/ambit/apis/ca/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// DefaultServerName is the name the CA's serving certificate carries: the
// controller Service in the system namespace.
const DefaultServerName = "ambit-controller.ambit-system.svc"

// DefaultTokenFile is where a projected service-account token with audience
// "ambit-ca" is conventionally mounted.
const DefaultTokenFile = "/var/run/secrets/tokens/ambit-ca-token"

// Config configures a Client.
type Config struct {
	// Address is the CA's host:port, e.g. ambit-controller.ambit-system.svc:15012.
	Address string
	// ServerName is checked against the CA's serving certificate; empty
	// means DefaultServerName.
	ServerName string
	// Roots verify the CA's serving certificate. Use RootsFromPEM or
	// RootsFromFile to make them.
	Roots *x509.CertPool
	// TokenFile is read at every call for the bearer token. Token, when not
	// nil, is used instead.
	TokenFile string
	// Token returns the bearer token at every call.
	Token func(ctx context.Context) (string, error)
	// DialOptions are added to the client's gRPC options.
	DialOptions []grpc.DialOption
}

// RootsFromPEM returns a pool of the PEM certificates in data; it fails when
// data holds anything else, or no certificate.
func RootsFromPEM(data []byte) (*x509.CertPool, error) {
	certs, err := identity.ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("CA roots: %w", err)
	}
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p, nil
}

// RootsFromFile is RootsFromPEM on a file's content.
func RootsFromFile(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA roots: %w", err)
	}
	return RootsFromPEM(data)
}

// Client calls the mesh CA. It is safe for concurrent use.
type Client struct {
	conn *grpc.ClientConn
	ca   cav1alpha1.CertificateServiceClient
}

var _ identity.Fetcher = (*Client)(nil)

// New returns a client of the CA at cfg.Address. It connects lazily, at the
// first call.
func New(cfg Config) (*Client, error) {
	if cfg.Address == "" {
		return nil, errors.New("caclient: no CA address")
	}
	opts, err := DialOptions(cfg)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(cfg.Address, opts...)
	if err != nil {
		return nil, fmt.Errorf("caclient: %w", err)
	}
	return &Client{conn: conn, ca: cav1alpha1.NewCertificateServiceClient(conn)}, nil
}

// DialOptions are the gRPC options for a call to the controller (its CA,
// or its xDS server): TLS 1.3 verified against cfg.Roots for
// cfg.ServerName, the bearer token with every call, then cfg.DialOptions.
// cfg.Address is not used.
func DialOptions(cfg Config) ([]grpc.DialOption, error) {
	if cfg.Roots == nil {
		return nil, errors.New("caclient: no roots to verify the controller with")
	}
	tok := cfg.Token
	if tok == nil {
		if cfg.TokenFile == "" {
			return nil, errors.New("caclient: neither a token file nor a token function")
		}
		path := cfg.TokenFile
		tok = func(context.Context) (string, error) { return readToken(path) }
	}
	name := cfg.ServerName
	if name == "" {
		name = DefaultServerName
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: cfg.Roots, ServerName: name}
	return append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithPerRPCCredentials(tokenCreds(tok)),
	}, cfg.DialOptions...), nil
}

// XDSConfig chooses how a data plane reaches the controller's xDS server.
type XDSConfig struct {
	// Address is the xDS server's host:port.
	Address string
	// Insecure uses plaintext gRPC without a token, for a controller in
	// local mode (which has no CA and serves xDS in plaintext). Otherwise
	// the connection is TLS verified against the roots in RootsFile for
	// ServerName, and carries the token in TokenFile, as the CA's does.
	Insecure                         bool
	ServerName, RootsFile, TokenFile string
}

// DialXDS returns a (lazily connecting) client connection to the
// controller's xDS server.
func DialXDS(cfg XDSConfig) (*grpc.ClientConn, error) {
	if cfg.Address == "" {
		return nil, errors.New("no xDS address")
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if !cfg.Insecure {
		roots, err := RootsFromFile(cfg.RootsFile)
		if err != nil {
			return nil, fmt.Errorf("xDS: %w (the roots that verify the controller; plaintext xDS to a controller in local mode needs -xds-insecure)", err)
		}
		if opts, err = DialOptions(Config{ServerName: cfg.ServerName, Roots: roots, TokenFile: cfg.TokenFile}); err != nil {
			return nil, fmt.Errorf("xDS: %w", err)
		}
	}
	conn, err := grpc.NewClient(cfg.Address, opts...)
	if err != nil {
		return nil, fmt.Errorf("xds client: %w", err)
	}
	return conn, nil
}

// Close closes the connection to the CA.
func (c *Client) Close() error { return c.conn.Close() }

// Fetch implements identity.Fetcher: it sends csrDER (as PEM) asking for
// validity, and returns the chain (leaf first) and the trust bundle. It
// checks that the leaf is for id and carries the CSR's public key. A CA
// error keeps its gRPC status.
func (c *Client) Fetch(ctx context.Context, id identity.SPIFFEID, csrDER []byte, validity time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
	if block, _ := pem.Decode(csrDER); block != nil {
		csrDER = block.Bytes // accept PEM too
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", identity.ErrInvalidCSR, err)
	}
	req := &cav1alpha1.CreateCertificateRequest{
		Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
	}
	if validity != 0 {
		req.Validity = durationpb.New(validity)
	}
	resp, err := c.ca.CreateCertificate(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	chain, err := parsePEMList(resp.GetCertChain())
	if err != nil {
		return nil, nil, status.Errorf(codes.Internal, "CA response: cert_chain: %v", err)
	}
	roots, err := parsePEMList(resp.GetTrustBundle())
	if err != nil {
		return nil, nil, status.Errorf(codes.Internal, "CA response: trust_bundle: %v", err)
	}
	got, err := identity.IDFromCert(chain[0])
	if err != nil {
		return nil, nil, status.Errorf(codes.Internal, "CA response: leaf: %v", err)
	}
	if got != id {
		return nil, nil, status.Errorf(codes.Internal, "CA response: leaf is for %s, asked for %s", got, id)
	}
	if pub, ok := chain[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(csr.PublicKey) {
		return nil, nil, status.Error(codes.Internal, "CA response: leaf does not carry the CSR's public key")
	}
	return chain, roots, nil
}

func parsePEMList(list []string) ([]*x509.Certificate, error) {
	if len(list) == 0 {
		return nil, errors.New("empty")
	}
	var out []*x509.Certificate
	for i, p := range list {
		certs, err := identity.ParseCertsPEM([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("element %d: %w", i, err)
		}
		out = append(out, certs...)
	}
	return out, nil
}

func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("service-account token: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("service-account token file %s is empty", path)
	}
	return t, nil
}

// tokenCreds sends "authorization: Bearer <token>" with every call, only
// over TLS.
type tokenCreds func(ctx context.Context) (string, error)

func (f tokenCreds) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	t, err := f(ctx)
	if err != nil {
		// A status keeps grpc from turning this into Unavailable.
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	return map[string]string{"authorization": "Bearer " + t}, nil
}

func (tokenCreds) RequireTransportSecurity() bool { return true }

// FetcherConfig chooses where a data plane's certificates come from.
type FetcherConfig struct {
	// LocalTrustDomain, when set, signs certificates with an in-process CA
	// of that trust domain (development only: peers of another process do not
	// trust it). The fields below are then ignored.
	LocalTrustDomain string
	// Address, ServerName, RootsFile and TokenFile reach the mesh CA (see Config).
	Address, ServerName, RootsFile, TokenFile string
}

// NewFetcher returns the identity.Fetcher cfg describes and a function that
// releases it.
func NewFetcher(cfg FetcherConfig) (identity.Fetcher, func() error, error) {
	if cfg.LocalTrustDomain != "" {
		ca, err := identity.NewRootAuthority(cfg.LocalTrustDomain, 365*24*time.Hour)
		if err != nil {
			return nil, nil, err
		}
		return identity.AuthorityFetcher{Authority: ca}, func() error { return nil }, nil
	}
	roots, err := RootsFromFile(cfg.RootsFile) // its errors say "CA roots"
	if err != nil {
		return nil, nil, err
	}
	c, err := New(Config{Address: cfg.Address, ServerName: cfg.ServerName, Roots: roots, TokenFile: cfg.TokenFile})
	if err != nil {
		return nil, nil, err
	}
	return c, c.Close, nil
}
