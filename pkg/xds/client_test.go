package xds

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const (
	stringType = "type.googleapis.com/google.protobuf.StringValue"
	intType    = "type.googleapis.com/google.protobuf.Int64Value"
)

// controlPlane is a real go-control-plane delta ADS server on loopback.
type controlPlane struct {
	strings, ints *cachev3.LinearCache
	addr          string
	grpc          *grpc.Server

	mu    sync.Mutex
	nacks []string // error details of NACKs received
}

func startControlPlane(t *testing.T, addr string, strs *cachev3.LinearCache, ints *cachev3.LinearCache) *controlPlane {
	t.Helper()
	cp := &controlPlane{strings: strs, ints: ints}
	mux := &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cachev3.Cache{stringType: strs, intType: ints},
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
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cp.addr = ln.Addr().String()
	cp.grpc = grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(cp.grpc, srv)
	go func() { _ = cp.grpc.Serve(ln) }()
	t.Cleanup(cp.grpc.Stop)
	return cp
}

func (cp *controlPlane) nackCount() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return len(cp.nacks)
}

// recorder is a Handler that records the last set it accepted.
type recorder struct {
	mu     sync.Mutex
	last   map[string]string
	calls  int
	reject func(map[string]string) error
}

func (r *recorder) handle(rs map[string]*anypb.Any) error {
	vals := map[string]string{}
	for n, a := range rs {
		m, err := a.UnmarshalNew()
		if err != nil {
			return err
		}
		switch v := m.(type) {
		case *wrapperspb.StringValue:
			vals[n] = v.GetValue()
		case *wrapperspb.Int64Value:
			vals[n] = fmt.Sprint(v.GetValue())
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.reject != nil {
		if err := r.reject(vals); err != nil {
			return err
		}
	}
	r.last = vals
	return nil
}

func (r *recorder) snapshot() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
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

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

func newClient(t *testing.T, addr, stateFile string, strs, ints *recorder) (*Client, context.CancelFunc) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c, err := New(Config{
		Conn:       conn,
		Node:       &corev3.Node{Id: "ztunnel~node0"},
		Types:      []Type{{URL: stringType, Handle: strs.handle}, {URL: intType, Handle: ints.handle}},
		StateFile:  stateFile,
		MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return c, stop
}

func TestSubscribeUpdateRemove(t *testing.T) {
	strs := cachev3.NewLinearCache(stringType, cachev3.WithInitialResources(map[string]types.Resource{
		"a": wrapperspb.String("alpha"), "b": wrapperspb.String("beta"),
	}))
	ints := cachev3.NewLinearCache(intType, cachev3.WithInitialResources(map[string]types.Resource{"n": wrapperspb.Int64(1)}))
	cp := startControlPlane(t, "127.0.0.1:0", strs, ints)
	var rs, ri recorder
	c, _ := newClient(t, cp.addr, "", &rs, &ri)

	select {
	case <-c.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("client never became ready")
	}
	eventually(t, "initial strings", func() bool { return equalMaps(rs.snapshot(), map[string]string{"a": "alpha", "b": "beta"}) })
	eventually(t, "initial ints", func() bool { return equalMaps(ri.snapshot(), map[string]string{"n": "1"}) })

	if err := strs.UpdateResource("a", wrapperspb.String("ALPHA")); err != nil {
		t.Fatal(err)
	}
	if err := strs.DeleteResource("b"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "update and removal", func() bool { return equalMaps(rs.snapshot(), map[string]string{"a": "ALPHA"}) })
	// Other types are untouched by a change to one.
	if !equalMaps(ri.snapshot(), map[string]string{"n": "1"}) {
		t.Errorf("ints changed to %v", ri.snapshot())
	}
	st := c.Status()
	if !st.Connected || st.Nacks != 0 || st.Resources[stringType] != 1 {
		t.Errorf("status = %+v", st)
	}
}

func TestNackKeepsLastGoodState(t *testing.T) {
	strs := cachev3.NewLinearCache(stringType, cachev3.WithInitialResources(map[string]types.Resource{"a": wrapperspb.String("ok")}))
	ints := cachev3.NewLinearCache(intType)
	cp := startControlPlane(t, "127.0.0.1:0", strs, ints)
	rs := recorder{reject: func(v map[string]string) error {
		for n, s := range v {
			if s == "bad" {
				return fmt.Errorf("resource %s is bad", n)
			}
		}
		return nil
	}}
	var ri recorder
	c, _ := newClient(t, cp.addr, "", &rs, &ri)
	eventually(t, "initial", func() bool { return equalMaps(rs.snapshot(), map[string]string{"a": "ok"}) })

	if err := strs.UpdateResource("b", wrapperspb.String("bad")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "NACK at the server", func() bool { return cp.nackCount() == 1 })
	if got := rs.snapshot(); !equalMaps(got, map[string]string{"a": "ok"}) {
		t.Errorf("after NACK the handler state is %v, want the last good set", got)
	}
	if got := c.Resources(stringType); len(got) != 1 {
		t.Errorf("client kept %d resources after NACK, want 1", len(got))
	}
	// The controller fixes it: accepted.
	if err := strs.UpdateResource("b", wrapperspb.String("good")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "fixed update", func() bool { return equalMaps(rs.snapshot(), map[string]string{"a": "ok", "b": "good"}) })
	if st := c.Status(); st.Nacks != 1 || !strings.Contains(st.LastError, "resource b is bad") {
		t.Errorf("status = %+v, want 1 NACK and the handler's error", st)
	}
}

func TestPersistedStateServesWithoutController(t *testing.T) {
	state := filepath.Join(t.TempDir(), "xds", "state.pb")
	strs := cachev3.NewLinearCache(stringType, cachev3.WithInitialResources(map[string]types.Resource{"a": wrapperspb.String("alpha")}))
	ints := cachev3.NewLinearCache(intType, cachev3.WithInitialResources(map[string]types.Resource{"n": wrapperspb.Int64(7)}))
	cp := startControlPlane(t, "127.0.0.1:0", strs, ints)
	var rs, ri recorder
	_, stop := newClient(t, cp.addr, state, &rs, &ri)
	eventually(t, "sync", func() bool { return len(rs.snapshot()) == 1 && len(ri.snapshot()) == 1 })
	stop()
	cp.grpc.Stop() // the controller is gone

	// A restarted data plane pointed at the dead controller starts from disk.
	var rs2, ri2 recorder
	c2, _ := newClient(t, cp.addr, state, &rs2, &ri2)
	select {
	case <-c2.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("client with a persisted state never became ready")
	}
	if !equalMaps(rs2.snapshot(), map[string]string{"a": "alpha"}) || !equalMaps(ri2.snapshot(), map[string]string{"n": "7"}) {
		t.Errorf("state from disk: %v %v", rs2.snapshot(), ri2.snapshot())
	}
	if st := c2.Status(); !st.FromDisk || st.Connected {
		t.Errorf("status = %+v, want FromDisk and not Connected", st)
	}
}

func TestReconnectResyncs(t *testing.T) {
	strs := cachev3.NewLinearCache(stringType, cachev3.WithInitialResources(map[string]types.Resource{
		"keep": wrapperspb.String("1"), "drop": wrapperspb.String("2"),
	}))
	ints := cachev3.NewLinearCache(intType)
	cp := startControlPlane(t, "127.0.0.1:0", strs, ints)
	var rs, ri recorder
	c, _ := newClient(t, cp.addr, "", &rs, &ri)
	eventually(t, "sync", func() bool { return len(rs.snapshot()) == 2 })

	// The controller restarts on the same address, and things changed meanwhile.
	cp.grpc.Stop()
	eventually(t, "disconnect noticed", func() bool { return !c.Status().Connected })
	if err := strs.UpdateResources(map[string]types.Resource{"new": wrapperspb.String("3")}, []string{"drop"}); err != nil {
		t.Fatal(err)
	}
	startControlPlane(t, cp.addr, strs, ints)
	eventually(t, "resync after reconnect", func() bool {
		return equalMaps(rs.snapshot(), map[string]string{"keep": "1", "new": "3"})
	})
}

func TestCorruptStateFileIsIgnored(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state.pb")
	if err := os.WriteFile(state, []byte("\xff\xff\xff\xff garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	strs := cachev3.NewLinearCache(stringType, cachev3.WithInitialResources(map[string]types.Resource{"a": wrapperspb.String("x")}))
	cp := startControlPlane(t, "127.0.0.1:0", strs, cachev3.NewLinearCache(intType))
	var rs, ri recorder
	newClient(t, cp.addr, state, &rs, &ri)
	eventually(t, "sync from the controller", func() bool { return equalMaps(rs.snapshot(), map[string]string{"a": "x"}) })
	// The good state replaces the corrupt file (written after the handler
	// ran, so wait for it).
	eventually(t, "state file rewritten", func() bool {
		msgs, err := readState(state)
		return err == nil && len(msgs) == 2
	})
}

func TestBackoffBounds(t *testing.T) {
	c, err := New(Config{
		Conn: &grpc.ClientConn{}, Node: &corev3.Node{Id: "x"},
		Types:      []Type{{URL: stringType, Handle: func(map[string]*anypb.Any) error { return nil }}},
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	for attempt, ceil := range map[int]time.Duration{0: 100 * time.Millisecond, 1: 200 * time.Millisecond, 3: 800 * time.Millisecond, 10: time.Second, 60: time.Second} {
		var maxSeen time.Duration
		for range 2000 {
			d := c.backoff(attempt)
			if d < 0 || d > ceil {
				t.Fatalf("backoff(%d) = %v, outside [0, %v]", attempt, d, ceil)
			}
			maxSeen = max(maxSeen, d)
		}
		// Full jitter spreads over the whole range.
		if maxSeen < ceil/2 {
			t.Errorf("backoff(%d) never exceeded %v (max %v): not jittered over the range", attempt, ceil/2, maxSeen)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	h := func(map[string]*anypb.Any) error { return nil }
	node := &corev3.Node{Id: "x"}
	for name, cfg := range map[string]Config{
		"no conn":   {Node: node, Types: []Type{{URL: stringType, Handle: h}}},
		"no node":   {Conn: &grpc.ClientConn{}, Types: []Type{{URL: stringType, Handle: h}}},
		"no types":  {Conn: &grpc.ClientConn{}, Node: node},
		"duplicate": {Conn: &grpc.ClientConn{}, Node: node, Types: []Type{{URL: stringType, Handle: h}, {URL: stringType, Handle: h}}},
		"no handle": {Conn: &grpc.ClientConn{}, Node: node, Types: []Type{{URL: stringType}}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted an invalid config", name)
		}
	}
}
