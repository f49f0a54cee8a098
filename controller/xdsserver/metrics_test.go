package xdsserver

import (
	"context"
	"errors"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/metrics"
	"github.com/ambit-mesh/ambit/pkg/xds"
)

func histogramCount(t *testing.T, name string) uint64 {
	t.Helper()
	mfs, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatalf("%s not registered", name)
	return 0
}

// runClient runs a client whose Workload handler is reject (nil accepts)
// until the returned stop is called.
func runClient(t *testing.T, addr, nodeID string, reject func(map[string]*anypb.Any) error) (*xds.Client, func()) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	var types []xds.Type
	for _, u := range allTypes {
		h := func(map[string]*anypb.Any) error { return nil }
		if u == configv1alpha1.TypeWorkload && reject != nil {
			h = reject
		}
		types = append(types, xds.Type{URL: u, Handle: h})
	}
	c, err := xds.New(xds.Config{Conn: conn, Node: &corev3.Node{Id: nodeID}, Types: types, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
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
	return c, stop
}

// TestMetrics scrapes the registry around connections, a publish, its ACKs
// and a NACK. Metrics are process-wide, so it compares deltas.
func TestMetrics(t *testing.T) {
	s, addr := startServer(t)
	s.Publish(output())
	gauge := func(kind string) float64 { return testutil.ToFloat64(metrics.XDSConnections.WithLabelValues(kind)) }
	pushes := func() float64 { return testutil.ToFloat64(metrics.XDSPushes.WithLabelValues("Workload")) }
	zt0, wp0, pushes0 := gauge("ztunnel"), gauge("waypoint"), pushes()
	nacks0 := testutil.ToFloat64(metrics.XDSNacks.WithLabelValues("Workload"))
	publish0 := histogramCount(t, "ambit_controller_xds_publish_duration_seconds")
	ack0 := histogramCount(t, "ambit_controller_xds_push_ack_duration_seconds")

	zt, stopZt := runClient(t, addr, configv1alpha1.ZtunnelNodeID("node-a"), nil)
	wp, _ := runClient(t, addr, configv1alpha1.WaypointNodeID("shop", "waypoint"), nil)
	<-zt.Ready()
	<-wp.Ready()
	eventually(t, "connections gauge", func() bool { return gauge("ztunnel")-zt0 == 1 && gauge("waypoint")-wp0 == 1 })
	if d := pushes() - pushes0; d != 2 {
		t.Errorf("Workload pushes +%v after two subscriptions, want +2", d)
	}

	// One change: one push per client, each ACKed and timed from Publish.
	next := output()
	next.Workloads = append(next.Workloads, &configv1alpha1.Workload{Name: "shop/web-2"})
	s.Publish(next)
	if d := histogramCount(t, "ambit_controller_xds_publish_duration_seconds") - publish0; d != 1 {
		t.Errorf("publish durations +%d, want +1", d)
	}
	eventually(t, "ACKs timed", func() bool {
		return histogramCount(t, "ambit_controller_xds_push_ack_duration_seconds")-ack0 == 2
	})
	if d := pushes() - pushes0; d != 4 {
		t.Errorf("Workload pushes +%v, want +4", d)
	}

	// A client that rejects Workloads NACKs them.
	bad, stopBad := runClient(t, addr, configv1alpha1.ZtunnelNodeID("node-b"), func(map[string]*anypb.Any) error {
		return errors.New("no thanks")
	})
	eventually(t, "NACK counted", func() bool {
		return testutil.ToFloat64(metrics.XDSNacks.WithLabelValues("Workload"))-nacks0 >= 1
	})
	if bad.Status().Nacks == 0 {
		t.Error("the client reports no NACK")
	}

	// Closed streams leave the gauge.
	stopZt()
	stopBad()
	eventually(t, "gauge after disconnect", func() bool { return gauge("ztunnel")-zt0 == 0 && gauge("waypoint")-wp0 == 1 })
}
