//go:build envtest

package catest

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/ca"
	"github.com/ambit-mesh/ambit/controller/metrics"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/controller/xdsserver"
	"github.com/ambit-mesh/ambit/pkg/caclient"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// xdsFixture is the controller's xDS server secured as the controller
// runs it in a cluster (TLS with the CA's serving certificate, TokenReview
// of every stream's token, AuthorizeXDS), beside the CA of the fixture,
// with a little configuration published.
type xdsFixture struct {
	*fixture
	addr      string
	rootsFile string
}

func setupXDS(t *testing.T) *xdsFixture {
	f := &xdsFixture{fixture: setup(t)}
	// The waypoint of Gateway <shop>/waypoint runs as service account
	// <shop>/waypoint.
	createSA(t, f.kube, f.shop, "waypoint")
	f.pods["waypoint-a"] = createPod(t, f.kube, f.shop, "waypoint-a", "waypoint", "node-a")

	xds := xdsserver.New(testLog(t).With("component", "xds"))
	xds.SetAuthorizer(f.ca.AuthorizeXDS)
	xds.Publish(&translate.Output{
		Workloads: []*configv1alpha1.Workload{{Name: f.shop + "/web-a", Namespace: f.shop, ServiceAccount: "web", Node: "node-a"}},
		Waypoints: []*configv1alpha1.WaypointConfig{
			{Name: f.shop + "/waypoint", Identity: f.id(f.shop, "waypoint")},
			{Name: "other/waypoint", Identity: f.id("other", "waypoint")},
		},
	})
	lis := must(net.Listen("tcp", "127.0.0.1:0"))(t)
	srvCtx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- xds.Serve(srvCtx, lis, f.ca.XDSServerOptions()...) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("xds serve: %v", err)
		}
	})
	f.addr = lis.Addr().String()

	// The data planes read the published root from a file.
	f.rootsFile = filepath.Join(t.TempDir(), "root-cert.pem")
	if err := os.WriteFile(f.rootsFile, identity.EncodeCertsPEM(f.root), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// tokenFile writes a token of ns/sa for the CA's audience, bound to pod.
func (f *xdsFixture) tokenFile(t *testing.T, ns, sa, audience, pod string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(token(t, f.kube, ns, sa, audience, f.pods[pod])), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// dial connects as the data planes do (caclient.DialXDS).
func (f *xdsFixture) dial(t *testing.T, cfg caclient.XDSConfig) *grpc.ClientConn {
	t.Helper()
	cfg.Address = f.addr
	if cfg.ServerName == "" {
		cfg.ServerName = serverName
	}
	if cfg.RootsFile == "" {
		cfg.RootsFile = f.rootsFile
	}
	conn := must(caclient.DialXDS(cfg))(t)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// adsStream is one delta ADS stream.
type adsStream struct {
	discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func openADS(t *testing.T, conn *grpc.ClientConn) adsStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	return adsStream{st}
}

// subscribe asks for typeURL as nodeID and returns the names of the first
// response's resources, or the stream's error.
func (s adsStream) subscribe(nodeID, typeURL string) ([]string, error) {
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: nodeID}, TypeUrl: typeURL}); err != nil {
		_, err = s.Recv() // the stream's status
		return nil, err
	}
	resp, err := s.Recv()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, r := range resp.GetResources() {
		names = append(names, r.GetName())
	}
	return names, nil
}

// connectionError subscribes as nodeID on a connection that is expected
// not to come up, and returns the error (the stream's, or its opening's).
func connectionError(t *testing.T, conn *grpc.ClientConn, nodeID string) error {
	t.Helper()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(t.Context())
	if err != nil {
		return err
	}
	_, err = adsStream{st}.subscribe(nodeID, configv1alpha1.TypeWorkload)
	return err
}

func wantNames(t *testing.T, got []string, err error, want ...string) {
	t.Helper()
	if err != nil {
		t.Fatalf("subscription refused: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("got resources %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got resources %q, want %q", got, want)
		}
	}
}

func TestXDS(t *testing.T) {
	f := setupXDS(t)
	ztunnelNode := configv1alpha1.ZtunnelNodeID("node-a")
	waypointNode := configv1alpha1.WaypointNodeID(f.shop, "waypoint")
	ztunnelToken := f.tokenFile(t, systemNS, "ztunnel", ca.Audience, "ztunnel-a")
	waypointToken := f.tokenFile(t, f.shop, "waypoint", ca.Audience, "waypoint-a")
	refused := func(code codes.Code) float64 {
		return testutil.ToFloat64(metrics.XDSRefused.WithLabelValues(code.String()))
	}

	t.Run("ZtunnelGetsItsConfiguration", func(t *testing.T) {
		st := openADS(t, f.dial(t, caclient.XDSConfig{TokenFile: ztunnelToken}))
		names, err := st.subscribe(ztunnelNode, configv1alpha1.TypeWorkload)
		wantNames(t, names, err, f.shop+"/web-a")
	})

	t.Run("WaypointGetsItsOwnConfiguration", func(t *testing.T) {
		st := openADS(t, f.dial(t, caclient.XDSConfig{TokenFile: waypointToken}))
		names, err := st.subscribe(waypointNode, configv1alpha1.TypeWaypointConfig)
		wantNames(t, names, err, f.shop+"/waypoint")
	})

	t.Run("WaypointMayNotSubscribeAsAnother", func(t *testing.T) {
		before := refused(codes.PermissionDenied)
		st := openADS(t, f.dial(t, caclient.XDSConfig{TokenFile: waypointToken}))
		_, err := st.subscribe(configv1alpha1.WaypointNodeID("other", "waypoint"), configv1alpha1.TypeWaypointConfig)
		wantCode(t, err, codes.PermissionDenied, "may not subscribe as waypoint~other/waypoint: that configuration is for service account other/waypoint")
		if got := refused(codes.PermissionDenied) - before; got != 1 {
			t.Errorf("ambit_controller_xds_refused_total{code=PermissionDenied} rose by %v, want 1", got)
		}
	})

	t.Run("WorkloadMayNotSubscribeAsZtunnel", func(t *testing.T) {
		st := openADS(t, f.dial(t, caclient.XDSConfig{TokenFile: f.tokenFile(t, f.shop, "web", ca.Audience, "web-a")}))
		_, err := st.subscribe(ztunnelNode, configv1alpha1.TypeWorkload)
		wantCode(t, err, codes.PermissionDenied, "that configuration is for service account "+systemNS+"/ztunnel")
	})

	t.Run("SwitchingNodeOnAStreamIsCheckedAgain", func(t *testing.T) {
		st := openADS(t, f.dial(t, caclient.XDSConfig{TokenFile: ztunnelToken}))
		names, err := st.subscribe(ztunnelNode, configv1alpha1.TypeWorkload)
		wantNames(t, names, err, f.shop+"/web-a")
		_, err = st.subscribe(waypointNode, configv1alpha1.TypeWaypointConfig)
		wantCode(t, err, codes.PermissionDenied, "may not subscribe as "+waypointNode)
	})

	t.Run("NoToken", func(t *testing.T) {
		before := refused(codes.Unauthenticated)
		roots := must(caclient.RootsFromFile(f.rootsFile))(t)
		conn := must(grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(
			&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: serverName}))))(t)
		defer conn.Close()
		_, err := openADS(t, conn).subscribe(ztunnelNode, configv1alpha1.TypeWorkload)
		wantCode(t, err, codes.Unauthenticated, "missing")
		if got := refused(codes.Unauthenticated) - before; got != 1 {
			t.Errorf("ambit_controller_xds_refused_total{code=Unauthenticated} rose by %v, want 1", got)
		}
	})

	t.Run("TokenForAnotherAudience", func(t *testing.T) {
		st := openADS(t, f.dial(t, caclient.XDSConfig{TokenFile: f.tokenFile(t, systemNS, "ztunnel", "some-other-service", "ztunnel-a")}))
		_, err := st.subscribe(ztunnelNode, configv1alpha1.TypeWorkload)
		wantCode(t, err, codes.Unauthenticated, "")
	})

	t.Run("PlaintextClient", func(t *testing.T) {
		err := connectionError(t, f.dial(t, caclient.XDSConfig{Insecure: true}), ztunnelNode)
		wantCode(t, err, codes.Unavailable, "")
	})

	t.Run("ServerNotSignedByTheTrustedRoot", func(t *testing.T) {
		other := must(identity.NewRootAuthority("cluster.local", time.Hour))(t)
		foreign := filepath.Join(t.TempDir(), "other-root.pem")
		if err := os.WriteFile(foreign, identity.EncodeCertsPEM(other.Cert), 0o644); err != nil {
			t.Fatal(err)
		}
		err := connectionError(t, f.dial(t, caclient.XDSConfig{RootsFile: foreign, TokenFile: ztunnelToken}), ztunnelNode)
		wantCode(t, err, codes.Unavailable, "x509")
	})

	t.Run("WrongServerName", func(t *testing.T) {
		err := connectionError(t, f.dial(t, caclient.XDSConfig{ServerName: "elsewhere.example", TokenFile: ztunnelToken}), ztunnelNode)
		wantCode(t, err, codes.Unavailable, "elsewhere.example")
	})
}
