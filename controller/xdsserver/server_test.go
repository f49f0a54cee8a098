package xdsserver

import (
	"context"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/pkg/xds"
)

func startServer(t *testing.T) (*Server, string) {
	t.Helper()
	s := New(nil)
	g := grpc.NewServer()
	s.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return s, ln.Addr().String()
}

// view records what a client holds, by type URL, as sorted names.
type view struct {
	mu    sync.Mutex
	names map[string][]string
	calls map[string]int
}

func (v *view) handler(typeURL string) xds.Handler {
	return func(rs map[string]*anypb.Any) error {
		names := make([]string, 0, len(rs))
		for n := range rs {
			names = append(names, n)
		}
		sort.Strings(names)
		v.mu.Lock()
		defer v.mu.Unlock()
		v.names[typeURL] = names
		v.calls[typeURL]++
		return nil
	}
}

func (v *view) get(typeURL string) []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.names[typeURL]
}

func (v *view) callCount(typeURL string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.calls[typeURL]
}

var allTypes = []string{configv1alpha1.TypeWorkload, configv1alpha1.TypeService, configv1alpha1.TypeAuthorization, configv1alpha1.TypeWaypointConfig}

func connect(t *testing.T, addr, nodeID string) (*view, *xds.Client) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	v := &view{names: map[string][]string{}, calls: map[string]int{}}
	var types []xds.Type
	for _, u := range allTypes {
		types = append(types, xds.Type{URL: u, Handle: v.handler(u)})
	}
	c, err := xds.New(xds.Config{Conn: conn, Node: &corev3.Node{Id: nodeID}, Types: types, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return v, c
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

func equal(a []string, b ...string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func output() *translate.Output {
	return &translate.Output{
		Workloads: []*configv1alpha1.Workload{{Name: "shop/web-1", Node: "node-a"}, {Name: "shop/reviews-1", Node: "node-b"}},
		Services: []*configv1alpha1.Service{
			{Name: "shop/reviews", Waypoint: &configv1alpha1.WaypointRef{Gateway: "shop/waypoint"}},
			{Name: "shop/web"},
		},
		Authorizations: []*configv1alpha1.Authorization{
			{Name: "shop/l4", Scope: configv1alpha1.Authorization_SCOPE_WORKLOAD_SELECTOR},
			{Name: "shop/ns", Scope: configv1alpha1.Authorization_SCOPE_NAMESPACE},
			{Name: "ambit-system/mesh", Scope: configv1alpha1.Authorization_SCOPE_GLOBAL},
			{Name: "shop/at-waypoint", Scope: configv1alpha1.Authorization_SCOPE_WAYPOINT, Targets: []string{"shop/waypoint"}},
			{Name: "shop/for-reviews", Scope: configv1alpha1.Authorization_SCOPE_SERVICE, Targets: []string{"shop/reviews"}},
			{Name: "shop/for-web", Scope: configv1alpha1.Authorization_SCOPE_SERVICE, Targets: []string{"shop/web"}},
			{Name: "other/elsewhere", Scope: configv1alpha1.Authorization_SCOPE_WAYPOINT, Targets: []string{"other/waypoint"}},
		},
		Waypoints: []*configv1alpha1.WaypointConfig{{Name: "shop/waypoint"}, {Name: "other/waypoint"}},
	}
}

func TestSubsetsByNode(t *testing.T) {
	s, addr := startServer(t)
	s.Publish(output())

	zt, ztc := connect(t, addr, configv1alpha1.ZtunnelNodeID("node-a"))
	wp, wpc := connect(t, addr, configv1alpha1.WaypointNodeID("shop", "waypoint"))
	for _, c := range []*xds.Client{ztc, wpc} {
		select {
		case <-c.Ready():
		case <-time.After(10 * time.Second):
			t.Fatalf("client never ready: %+v", c.Status())
		}
	}
	checks := []struct {
		v       *view
		typeURL string
		want    []string
	}{
		{zt, configv1alpha1.TypeWorkload, []string{"shop/reviews-1", "shop/web-1"}},
		{zt, configv1alpha1.TypeService, []string{"shop/reviews", "shop/web"}},
		{zt, configv1alpha1.TypeAuthorization, []string{"ambit-system/mesh", "shop/l4", "shop/ns"}},
		{zt, configv1alpha1.TypeWaypointConfig, nil},
		{wp, configv1alpha1.TypeWorkload, []string{"shop/reviews-1", "shop/web-1"}},
		{wp, configv1alpha1.TypeAuthorization, []string{"shop/at-waypoint", "shop/for-reviews"}},
		{wp, configv1alpha1.TypeWaypointConfig, []string{"shop/waypoint"}},
	}
	for _, c := range checks {
		if got := c.v.get(c.typeURL); !equal(got, c.want...) {
			t.Errorf("%s: got %v, want %v", c.typeURL, got, c.want)
		}
	}
}

func TestOnlyChangesAreSent(t *testing.T) {
	s, addr := startServer(t)
	s.Publish(output())
	zt, c := connect(t, addr, configv1alpha1.ZtunnelNodeID("node-a"))
	<-c.Ready()
	eventually(t, "workloads", func() bool { return len(zt.get(configv1alpha1.TypeWorkload)) == 2 })
	before := zt.callCount(configv1alpha1.TypeService)

	// Same content again, in new objects: nothing is pushed.
	s.Publish(output())
	next := output()
	next.Workloads = append(next.Workloads, &configv1alpha1.Workload{Name: "shop/web-2"})
	s.Publish(next)
	eventually(t, "new workload", func() bool { return len(zt.get(configv1alpha1.TypeWorkload)) == 3 })
	time.Sleep(100 * time.Millisecond)
	if after := zt.callCount(configv1alpha1.TypeService); after != before {
		t.Errorf("services were pushed %d more times although unchanged", after-before)
	}

	// Removal reaches the client.
	next2 := output()
	next2.Workloads = next2.Workloads[:1]
	s.Publish(next2)
	eventually(t, "removal", func() bool { return equal(zt.get(configv1alpha1.TypeWorkload), "shop/web-1") })
}

func TestBadNodeIDIsRefused(t *testing.T) {
	s, addr := startServer(t)
	s.Publish(output())
	_, c := connect(t, addr, "sidecar~x")
	time.Sleep(300 * time.Millisecond)
	st := c.Status()
	if st.Connected || st.Acks != 0 {
		t.Errorf("client with a bad node ID got configuration: %+v", st)
	}
	if st.LastError == "" {
		t.Error("no error reported for a bad node ID")
	}
}

func TestReconnectingClientResyncs(t *testing.T) {
	s := New(nil)
	s.Publish(output())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	g := grpc.NewServer()
	s.Register(g)
	go func() { _ = g.Serve(ln) }()
	zt, c := connect(t, addr, configv1alpha1.ZtunnelNodeID("node-a"))
	<-c.Ready()
	eventually(t, "sync", func() bool { return len(zt.get(configv1alpha1.TypeWorkload)) == 2 })

	g.Stop() // the replica goes away; the client keeps its state
	eventually(t, "disconnect", func() bool { return !c.Status().Connected })
	next := output()
	next.Workloads = next.Workloads[1:]
	s.Publish(next)

	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	g2 := grpc.NewServer()
	s.Register(g2)
	go func() { _ = g2.Serve(ln2) }()
	t.Cleanup(g2.Stop)
	eventually(t, "resync", func() bool { return equal(zt.get(configv1alpha1.TypeWorkload), "shop/reviews-1") })
}
