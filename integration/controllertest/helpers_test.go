//go:build envtest

package controllertest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"k8s.io/client-go/rest"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/deploy"
	"github.com/ambit-mesh/ambit/controller/k8s"
	"github.com/ambit-mesh/ambit/controller/pipeline"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/controller/xdsserver"
	"github.com/ambit-mesh/ambit/integration/kubetest"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/xds"
)

// testRootPEM is the mesh root the waypoints are given.
var testRootPEM = func() string {
	a, err := identity.NewRootAuthority("cluster.local", time.Hour)
	if err != nil {
		panic(err)
	}
	return string(identity.EncodeCertsPEM(a.Cert))
}()

const (
	systemNS      = "ambit-system"
	waypointImage = "example.invalid/ambit/waypoint:test"
	timeout       = 20 * time.Second
)

// instance is one controller replica: manager, pipeline and xDS server on a
// loopback port.
type instance struct {
	name    string
	ctl     *k8s.Controller
	pipe    *pipeline.Pipeline
	xdsAddr string
	// writes counts this replica's mutating API requests other than Lease
	// and Event writes.
	writes atomic.Int64
	stop   func()
}

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// countingTransport counts mutating requests that are not leader election
// or events.
type countingTransport struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodGet && !strings.Contains(r.URL.Path, "/leases") && !strings.Contains(r.URL.Path, "/events") {
		c.n.Add(1)
	}
	return c.next.RoundTrip(r)
}

var globalLoggers sync.Once

// startController runs a replica until stop or the end of the test.
func startController(t *testing.T, env *kubetest.Env, name string) *instance {
	t.Helper()
	globalLoggers.Do(func() {
		k8s.SetGlobalLoggers(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	})
	log := testLog(t).With("replica", name)
	in := &instance{name: name}
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: controllerUser}
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return countingTransport{rt, &in.writes} }

	xs := xdsserver.New(log.With("component", "xds"))
	in.pipe = pipeline.New(translate.Translate, translate.Options{}, xs, log)
	ctl, err := k8s.New(cfg, k8s.Options{
		Pipeline:        in.pipe,
		Waypoint:        deploy.Options{Image: waypointImage, RootCertsPEM: testRootPEM},
		SystemNamespace: systemNS,
		LeaderElection:  true,
		LeaseDuration:   3 * time.Second,
		RenewDeadline:   2 * time.Second,
		RetryPeriod:     200 * time.Millisecond,
		Logger:          log,
	})
	if err != nil {
		t.Fatal(err)
	}
	in.ctl = ctl

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	in.xdsAddr = lis.Addr().String()
	g := grpc.NewServer()
	xs.Register(g)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = g.Serve(lis) }()
	go func() {
		defer wg.Done()
		if err := ctl.Start(ctx); err != nil {
			t.Errorf("controller %s: %v", name, err)
		}
	}()
	var once sync.Once
	in.stop = func() {
		once.Do(func() {
			cancel()
			g.Stop()
			wg.Wait()
		})
	}
	t.Cleanup(in.stop)
	return in
}

func (in *instance) leader() bool {
	select {
	case <-in.ctl.Elected():
		return true
	default:
		return false
	}
}

// eventually retries f until it returns nil or timeout passes.
func eventually(t testing.TB, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// xdsClient is a data plane's view of one replica's xDS server.
type xdsClient struct {
	mu    sync.Mutex
	state map[string]map[string]*anypb.Any // type URL -> name -> resource
}

func newXDSClient(t *testing.T, addr, nodeID string) *xdsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	xc := &xdsClient{state: map[string]map[string]*anypb.Any{}}
	handle := func(url string) xds.Type {
		return xds.Type{URL: url, Handle: func(rs map[string]*anypb.Any) error {
			xc.mu.Lock()
			defer xc.mu.Unlock()
			cp := make(map[string]*anypb.Any, len(rs))
			for k, v := range rs {
				cp[k] = v
			}
			xc.state[url] = cp
			return nil
		}}
	}
	c, err := xds.New(xds.Config{
		Conn: conn, Node: &corev3.Node{Id: nodeID},
		Types:  []xds.Type{handle(configv1alpha1.TypeWorkload), handle(configv1alpha1.TypeService)},
		Logger: testLog(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return xc
}

// workload returns the pushed Workload of pod namespace/name, if any.
func (x *xdsClient) workload(namespace, name string) (*configv1alpha1.Workload, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, a := range x.state[configv1alpha1.TypeWorkload] {
		w := &configv1alpha1.Workload{}
		if err := a.UnmarshalTo(w); err != nil {
			return nil, err
		}
		if w.GetName() == namespace+"/"+name {
			return w, nil
		}
	}
	return nil, fmt.Errorf("no workload %s/%s among %d", namespace, name, len(x.state[configv1alpha1.TypeWorkload]))
}

// service returns the pushed Service namespace/name, if any.
func (x *xdsClient) service(namespace, name string) (*configv1alpha1.Service, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, a := range x.state[configv1alpha1.TypeService] {
		s := &configv1alpha1.Service{}
		if err := a.UnmarshalTo(s); err != nil {
			return nil, err
		}
		if s.GetName() == namespace+"/"+name {
			return proto.Clone(s).(*configv1alpha1.Service), nil
		}
	}
	return nil, fmt.Errorf("no service %s/%s", namespace, name)
}
