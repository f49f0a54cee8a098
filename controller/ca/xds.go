package ca

import (
	"context"
	"crypto/tls"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/metrics"
)

// The controller's xDS server is secured like the CA: TLS with the CA's
// serving certificate, and a service-account token (audience ambit-ca)
// with every stream, checked with TokenReview. Which configuration a
// caller may subscribe to is then decided by AuthorizeXDS.

// ServingTLSConfig is the server side TLS configuration of the
// controller's gRPC listeners: TLS 1.3 with the serving certificate
// (renewed at half life), no client certificate.
func (s *Server) ServingTLSConfig() *tls.Config { return s.serving.tlsConfig() }

type callerKey struct{}

// CallerFromContext returns the caller that XDSServerOptions' interceptors
// authenticated.
func CallerFromContext(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// XDSServerOptions are the gRPC server options of the xDS listener: TLS
// (ServingTLSConfig) and interceptors that authenticate every call and
// stream by its bearer token and put the caller in its context. A call
// without a valid token ends with Unauthenticated before any handler runs.
func (s *Server) XDSServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(s.ServingTLSConfig())),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			ctx, err := s.authenticateXDS(ctx, info.FullMethod)
			if err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			ctx, err := s.authenticateXDS(ss.Context(), info.FullMethod)
			if err != nil {
				return err
			}
			return h(srv, callerStream{ServerStream: ss, ctx: ctx})
		}),
	}
}

type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c callerStream) Context() context.Context { return c.ctx }

func (s *Server) authenticateXDS(ctx context.Context, method string) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	token, err := BearerToken(md)
	if err == nil {
		var c Caller
		if c, err = s.authn.Authenticate(ctx, token); err == nil {
			return context.WithValue(ctx, callerKey{}, c), nil
		}
		err = asStatus(err, codes.Unauthenticated)
	}
	st := status.Convert(err)
	metrics.XDSRefused.WithLabelValues(st.Code().String()).Inc()
	level := slog.LevelInfo
	if st.Code() == codes.Unavailable || st.Code() == codes.Internal {
		level = slog.LevelError
	}
	s.log.Log(ctx, level, "xds call refused", "code", st.Code().String(), "reason", st.Message(), "method", method)
	return ctx, st.Err()
}

// AuthorizeXDS decides whether the caller in ctx (see XDSServerOptions)
// may subscribe as the data plane nodeID: a ztunnel's configuration only
// to ztunnel's service account, the configuration of the waypoint of
// Gateway ns/name only to the service account ns/name that the controller
// gives that waypoint's pods. It returns a PermissionDenied status that
// names both, or nil.
func (s *Server) AuthorizeXDS(ctx context.Context, nodeID string) error {
	c, ok := CallerFromContext(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "xds: the stream has no authenticated caller")
	}
	kind, name, err := configv1alpha1.ParseNodeID(nodeID)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	var want string
	switch kind {
	case configv1alpha1.NodeKindZtunnel:
		want = s.cfg.ZtunnelServiceAccount
	case configv1alpha1.NodeKindWaypoint:
		want = name // the waypoint's service account is named after its Gateway
	}
	if c.Namespace == "" || c.Namespace+"/"+c.ServiceAccount != want {
		err := status.Errorf(codes.PermissionDenied, "%s may not subscribe as %s: that configuration is for service account %s",
			c.describe(), nodeID, want)
		metrics.XDSRefused.WithLabelValues(codes.PermissionDenied.String()).Inc()
		s.log.InfoContext(ctx, "xds subscription refused", "caller", c.describe(), "node", nodeID, "want", want)
		return err
	}
	return nil
}
