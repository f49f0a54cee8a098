package server

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/xds"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// controlPlane is a go-control-plane delta ADS server on loopback serving
// the four types the waypoint subscribes to.
type controlPlane struct {
	caches map[string]*cachev3.LinearCache
	addr   string
	client *xds.Client

	mu    sync.Mutex
	nacks []string
}

func startControlPlane(t testing.TB) *controlPlane {
	t.Helper()
	cp := &controlPlane{caches: map[string]*cachev3.LinearCache{}}
	mux := &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cachev3.Cache{},
	}
	for _, url := range []string{configv1alpha1.TypeWaypointConfig, configv1alpha1.TypeService, configv1alpha1.TypeWorkload, configv1alpha1.TypeAuthorization} {
		c := cachev3.NewLinearCache(url)
		cp.caches[url] = c
		mux.Caches[url] = c
	}
	cb := serverv3.CallbackFuncs{
		StreamDeltaRequestFunc: func(_ int64, req *discoveryv3.DeltaDiscoveryRequest) error {
			if req.GetErrorDetail() != nil {
				cp.mu.Lock()
				cp.nacks = append(cp.nacks, req.GetErrorDetail().GetMessage())
				cp.mu.Unlock()
			}
			return nil
		},
	}
	srv := serverv3.NewServer(t.Context(), mux, cb)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp.addr = ln.Addr().String()
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return cp
}

func (cp *controlPlane) nackCount() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return len(cp.nacks)
}

// run subscribes store to the control plane and waits until it is ready.
func (cp *controlPlane) run(t testing.TB, store *Store) {
	t.Helper()
	conn, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	cp.client, err = xds.New(xds.Config{
		Conn:       conn,
		Node:       &corev3.Node{Id: configv1alpha1.WaypointNodeID("default", "waypoint")},
		Types:      store.Types(),
		MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = cp.client.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-cp.client.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("xDS client never became ready")
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConfigOverXDS(t *testing.T) {
	cp := startControlPlane(t)
	e := setupWith(t, cp)
	c := e.httpClient("10.96.0.10:80", false)
	defer c.CloseIdleConnections()

	counts := map[string]int{}
	for range 100 {
		resp := get(t, c, nil)
		counts[resp.Header.Get("X-Backend")]++
		if p := resp.Header.Get("X-Peer"); p != sa("waypoint").String() {
			t.Fatalf("backend saw peer %q", p)
		}
	}
	if counts["v1"] < 55 || counts["v1"] > 95 {
		t.Fatalf("split %v, want about 75/25", counts)
	}
	if resp := get(t, c, map[string]string{"X-Canary": "yes"}); resp.Header.Get("X-Backend") != "v2" {
		t.Fatalf("header match went to %q", resp.Header.Get("X-Backend"))
	}

	// An invalid WaypointConfig is NACKed and the last good table serves.
	bad := waypointConfig()
	bad.Services[0].Rules[1].Match = &configv1alpha1.RouteMatch{Path: &configv1alpha1.StringMatch{Type: configv1alpha1.StringMatch_TYPE_REGEX, Value: "("}}
	if err := cp.caches[configv1alpha1.TypeWaypointConfig].UpdateResource("default/waypoint", bad); err != nil {
		t.Fatal(err)
	}
	eventually(t, "NACK", func() bool { return cp.nackCount() > 0 && cp.client.Status().Nacks > 0 })
	for range 20 {
		get(t, c, nil)
	}

	// A valid update applies: everything goes to v2.
	all := waypointConfig()
	all.Services[0].Rules[1].Backends[0].Weight = 0
	if err := cp.caches[configv1alpha1.TypeWaypointConfig].UpdateResource("default/waypoint", all); err != nil {
		t.Fatal(err)
	}
	eventually(t, "all traffic to v2", func() bool {
		for range 10 {
			if get(t, c, nil).Header.Get("X-Backend") != "v2" {
				return false
			}
		}
		return true
	})
}
