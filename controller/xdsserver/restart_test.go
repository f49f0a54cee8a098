package xdsserver

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/xds"
)

// serveOn serves s on addr (a fixed address, so a restart reuses it) and
// returns a function that stops the gRPC server.
func serveOn(t *testing.T, s *Server, addr string) func() {
	t.Helper()
	var ln net.Listener
	var err error
	// The previous listener's port may take a moment to be free again.
	for deadline := time.Now().Add(5 * time.Second); ; {
		if ln, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return g.Stop
}

// stateClient runs a pkg/xds client with a StateFile against addr until the
// returned stop is called (or the test ends).
func stateClient(t *testing.T, addr, stateFile string) (*view, *xds.Client, func()) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	v := &view{names: map[string][]string{}, calls: map[string]int{}}
	var types []xds.Type
	for _, u := range allTypes {
		types = append(types, xds.Type{URL: u, Handle: v.handler(u)})
	}
	c, err := xds.New(xds.Config{Conn: conn, Node: &corev3.Node{Id: configv1alpha1.ZtunnelNodeID("node-a")}, Types: types,
		StateFile: stateFile, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
			conn.Close()
		}
	}
	t.Cleanup(stop)
	return v, c, stop
}

func waitReady(t *testing.T, c *xds.Client) {
	t.Helper()
	select {
	case <-c.Ready():
	case <-time.After(10 * time.Second):
		t.Fatalf("client never ready: %+v", c.Status())
	}
}

// TestControllerRestartFromDisk: the controller goes away and the client
// keeps serving its last state; a fresh client (a restarted data plane)
// starts from the on-disk copy with no controller; the controller comes
// back on the same address with one change and the client resyncs.
func TestControllerRestartFromDisk(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	stateFile := filepath.Join(t.TempDir(), "xds", "state.pb")

	// 1. Sync.
	s1 := New(nil)
	s1.Publish(output())
	stop1 := serveOn(t, s1, addr)
	v1, c1, stopC1 := stateClient(t, addr, stateFile)
	waitReady(t, c1)
	eventually(t, "first sync", func() bool {
		st := c1.Status()
		return st.Connected && st.Resources[configv1alpha1.TypeWorkload] == 2 && st.Resources[configv1alpha1.TypeAuthorization] == 3
	})
	if c1.Status().FromDisk {
		t.Error("first client claims to run from disk")
	}

	// 2. The controller stops: the client keeps its state.
	stop1()
	eventually(t, "disconnect", func() bool { return !c1.Status().Connected })
	time.Sleep(100 * time.Millisecond) // a few reconnect attempts
	st := c1.Status()
	if st.Resources[configv1alpha1.TypeWorkload] != 2 || st.Resources[configv1alpha1.TypeService] != 2 || st.Resources[configv1alpha1.TypeAuthorization] != 3 {
		t.Errorf("state lost while the controller is away: %v", st.Resources)
	}
	if got := v1.get(configv1alpha1.TypeWorkload); !equal(got, "shop/reviews-1", "shop/web-1") {
		t.Errorf("handler state after the controller stopped: %v", got)
	}
	stopC1()

	// 3. A fresh data plane starts from disk with no controller.
	v2, c2, stopC2 := stateClient(t, addr, stateFile)
	waitReady(t, c2)
	st = c2.Status()
	if !st.FromDisk || st.Connected {
		t.Errorf("fresh client: FromDisk %v Connected %v, want true false", st.FromDisk, st.Connected)
	}
	if got := v2.get(configv1alpha1.TypeWorkload); !equal(got, "shop/reviews-1", "shop/web-1") {
		t.Errorf("workloads from disk: %v", got)
	}
	if got := v2.get(configv1alpha1.TypeAuthorization); !equal(got, "ambit-system/mesh", "shop/l4", "shop/ns") {
		t.Errorf("authorizations from disk: %v", got)
	}

	// 4. The controller restarts (a new process: a new Server) on the same
	// address with one change; the client resyncs.
	s2 := New(nil)
	next := output()
	next.Workloads = append(next.Workloads, &configv1alpha1.Workload{Name: "shop/web-2", Node: "node-a"})
	s2.Publish(next)
	serveOn(t, s2, addr)
	eventually(t, "resync", func() bool {
		return equal(v2.get(configv1alpha1.TypeWorkload), "shop/reviews-1", "shop/web-1", "shop/web-2")
	})
	eventually(t, "connected", func() bool { st := c2.Status(); return st.Connected && !st.FromDisk })
	if got := v2.get(configv1alpha1.TypeService); !equal(got, "shop/reviews", "shop/web") {
		t.Errorf("services after resync: %v", got)
	}

	// The resynced state was persisted: the next start from disk has it.
	stopC2()
	v3, c3, _ := stateClient(t, "127.0.0.1:1", stateFile)
	waitReady(t, c3)
	if got := v3.get(configv1alpha1.TypeWorkload); !c3.Status().FromDisk || !equal(got, "shop/reviews-1", "shop/web-1", "shop/web-2") {
		t.Errorf("state file after resync: FromDisk %v, workloads %v", c3.Status().FromDisk, got)
	}
}
