package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/kubernetes"

	cav1alpha1 "github.com/ambit-mesh/ambit/apis/ca/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/metrics"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// Server is the mesh CA: it implements cav1alpha1.CertificateServiceServer.
type Server struct {
	cav1alpha1.UnimplementedCertificateServiceServer

	cfg       Config
	log       *slog.Logger
	authority *identity.Authority
	roots     []*x509.Certificate
	authn     Authenticator
	authz     *Authorizer
	serving   *servingCert
}

// New loads (or generates) the root from the CA Secret, publishes it to the
// root ConfigMap, and returns a Server that authenticates callers with
// TokenReview and reads pods from the apiserver.
func New(ctx context.Context, kube kubernetes.Interface, cfg Config, log *slog.Logger) (*Server, error) {
	cfg = cfg.Defaulted()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a, err := LoadOrCreateRoot(ctx, kube, cfg, log)
	if err != nil {
		return nil, err
	}
	if err := PublishRoot(ctx, kube, cfg, []*x509.Certificate{a.Cert}, log); err != nil {
		return nil, fmt.Errorf("publish root to configmap %s/%s: %w", cfg.SystemNamespace, cfg.ConfigMapName, err)
	}
	return NewWithAuthority(a, TokenReviewer{Kube: kube}, KubePods{Kube: kube}, cfg, log)
}

// NewWithAuthority returns a Server that signs with a, authenticates with
// authn and reads pods through pods; New is the usual way in.
func NewWithAuthority(a *identity.Authority, authn Authenticator, pods Pods, cfg Config, log *slog.Logger) (*Server, error) {
	cfg = cfg.Defaulted()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if a.TrustDomain != cfg.TrustDomain {
		return nil, fmt.Errorf("authority issues in trust domain %q, configured %q", a.TrustDomain, cfg.TrustDomain)
	}
	zns, zname, _ := cfg.ztunnel()
	return &Server{
		cfg:       cfg,
		log:       log,
		authority: a,
		roots:     []*x509.Certificate{a.Cert},
		authn:     authn,
		authz:     &Authorizer{ZtunnelNamespace: zns, ZtunnelName: zname, Pods: pods},
		serving: &servingCert{
			authority: a, names: cfg.ServingDNSNames(), lifetime: cfg.ServingCertLifetime, now: cfg.Now,
		},
	}, nil
}

// Roots returns the trust bundle: the root certificates.
func (s *Server) Roots() []*x509.Certificate { return s.roots }

// Authority returns the signing authority.
func (s *Server) Authority() *identity.Authority { return s.authority }

// GRPCServer returns a gRPC server with TLS (the serving certificate), a
// panic guard, and the CertificateService registered.
func (s *Server) GRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	opts = append([]grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(s.serving.tlsConfig())),
		grpc.MaxRecvMsgSize(64 << 10),
		grpc.ChainUnaryInterceptor(s.recoverUnary),
	}, opts...)
	gs := grpc.NewServer(opts...)
	cav1alpha1.RegisterCertificateServiceServer(gs, s)
	return gs
}

// Serve serves the CA on lis until ctx ends, then stops gracefully (for at
// most 5 seconds). It returns nil after ctx ends.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	// Issue the serving certificate now, so that a broken root fails here.
	if _, err := s.serving.get(); err != nil {
		return err
	}
	gs := s.GRPCServer()
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			gs.Stop()
		}
	}()
	s.log.InfoContext(ctx, "CA serving", "address", lis.Addr().String(),
		"trustDomain", s.cfg.TrustDomain, "serverNames", s.cfg.ServingDNSNames())
	err := gs.Serve(lis)
	if ctx.Err() != nil {
		<-done
		return nil
	}
	gs.Stop()
	return err
}

// ListenAndServe listens on addr and serves until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("CA listen: %w", err)
	}
	return s.Serve(ctx, lis)
}

// CreateCertificate implements cav1alpha1.CertificateServiceServer: it
// authenticates the caller, checks the request, authorizes the identity and
// signs.
func (s *Server) CreateCertificate(ctx context.Context, req *cav1alpha1.CreateCertificateRequest) (*cav1alpha1.CreateCertificateResponse, error) {
	start := time.Now()
	resp, caller, id, err := s.createCertificate(ctx, req)
	metrics.CARequestSeconds.Observe(time.Since(start).Seconds())
	metrics.CARequests.WithLabelValues(status.Code(err).String()).Inc()
	if err != nil {
		st := status.Convert(err)
		level := slog.LevelInfo
		if st.Code() == codes.Internal || st.Code() == codes.Unavailable {
			level = slog.LevelError
		}
		s.log.Log(ctx, level, "certificate refused", "code", st.Code().String(), "reason", st.Message(),
			"caller", caller.describe(), "identity", idString(id))
		return nil, st.Err()
	}
	return resp, nil
}

func (s *Server) createCertificate(ctx context.Context, req *cav1alpha1.CreateCertificateRequest) (*cav1alpha1.CreateCertificateResponse, Caller, identity.SPIFFEID, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	token, err := BearerToken(md)
	if err != nil {
		return nil, Caller{}, identity.SPIFFEID{}, err
	}
	caller, err := s.authn.Authenticate(ctx, token)
	if err != nil {
		return nil, Caller{}, identity.SPIFFEID{}, asStatus(err, codes.Unauthenticated)
	}
	csr, id, validity, err := ParseRequest(req, s.cfg)
	if err != nil {
		return nil, caller, id, err
	}
	if err := s.authz.Authorize(ctx, caller, id); err != nil {
		return nil, caller, id, asStatus(err, codes.PermissionDenied)
	}
	signStart := time.Now()
	chain, err := s.authority.Sign(csr, id, validity)
	metrics.CASignSeconds.Observe(time.Since(signStart).Seconds())
	if err != nil {
		if errors.Is(err, identity.ErrInvalidCSR) {
			return nil, caller, id, status.Error(codes.InvalidArgument, err.Error())
		}
		return nil, caller, id, status.Errorf(codes.Internal, "sign: %v", err)
	}
	resp := &cav1alpha1.CreateCertificateResponse{}
	for _, c := range chain {
		resp.CertChain = append(resp.CertChain, string(identity.EncodeCertsPEM(c)))
	}
	for _, c := range s.roots {
		resp.TrustBundle = append(resp.TrustBundle, string(identity.EncodeCertsPEM(c)))
	}
	s.log.InfoContext(ctx, "certificate issued", "identity", id.String(), "caller", caller.describe(),
		"serial", chain[0].SerialNumber.Text(16), "notAfter", chain[0].NotAfter.UTC())
	return resp, caller, id, nil
}

// asStatus keeps err's gRPC status, or wraps a plain error in code.
func asStatus(err error, code codes.Code) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(code, err.Error())
}

func idString(id identity.SPIFFEID) string {
	if id == (identity.SPIFFEID{}) {
		return ""
	}
	return id.String()
}

// recoverUnary turns a panic in a handler into an Internal status, so that
// no input can take the CA down.
func (s *Server) recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.ErrorContext(ctx, "CA handler panic", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "internal error")
		}
	}()
	return handler(ctx, req)
}
