package xdsserver

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/pkg/xds"
)

// fanoutOutput is a mesh of 1,000 Workloads and 100 Services; the Workload
// "bench/changing" carries gen in its node name, so two generations differ
// by that one Workload.
func fanoutOutput(gen int) *translate.Output {
	out := &translate.Output{}
	for i := range 1000 {
		out.Workloads = append(out.Workloads, &configv1alpha1.Workload{
			Name: fmt.Sprintf("bench/pod-%d", i), Namespace: "bench", Node: fmt.Sprintf("node-%d", i%100),
			Addresses: []string{fmt.Sprintf("10.1.%d.%d", i/256, i%256)}, Identity: "spiffe://cluster.local/ns/bench/sa/app",
			ServiceAccount: "app", Enrolled: true, Ready: true, MtlsMode: configv1alpha1.MTLSMode_MTLS_MODE_STRICT,
		})
	}
	for i := range 100 {
		out.Services = append(out.Services, &configv1alpha1.Service{Name: fmt.Sprintf("bench/svc-%d", i), Namespace: "bench",
			Hostname: fmt.Sprintf("svc-%d.bench.svc.cluster.local", i), Vips: []string{fmt.Sprintf("10.96.0.%d", i+1)},
			Ports: []*configv1alpha1.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}})
	}
	out.Workloads = append(out.Workloads, &configv1alpha1.Workload{Name: "bench/changing", Namespace: "bench",
		Node: "gen-" + strconv.Itoa(gen), Addresses: []string{"10.2.0.1"}, Identity: "spiffe://cluster.local/ns/bench/sa/app",
		MtlsMode: configv1alpha1.MTLSMode_MTLS_MODE_STRICT})
	return out
}

// fanout counts the clients that have seen the current generation.
type fanout struct {
	want    atomic.Int64 // the generation being waited for
	seen    atomic.Int64 // clients that applied it
	clients int64
	done    chan struct{}
}

// handler is a Workload handler that reports when a client applies the
// generation being waited for.
func (f *fanout) handler() xds.Handler {
	var last int64 = -1
	return func(rs map[string]*anypb.Any) error {
		a := rs["bench/changing"]
		if a == nil {
			return nil
		}
		var w configv1alpha1.Workload
		if err := proto.Unmarshal(a.GetValue(), &w); err != nil {
			return err
		}
		gen, err := strconv.ParseInt(w.GetNode()[len("gen-"):], 10, 64)
		if err != nil {
			return err
		}
		if gen != last && gen == f.want.Load() {
			last = gen
			if f.seen.Add(1) == f.clients {
				f.done <- struct{}{}
			}
		}
		return nil
	}
}

// BenchmarkPodChangeFanout: 100 pkg/xds clients (ztunnels on 100 nodes)
// hold 1,000 Workloads from an xdsserver over loopback gRPC, one connection
// each; one iteration publishes an Output that differs by one Workload and
// waits until all 100 handlers have applied it. ms-to-all-p50 and
// ms-to-all-max are over the iterations.
func BenchmarkPodChangeFanout(b *testing.B) {
	const clients = 100
	s := New(slog.New(slog.DiscardHandler))
	s.Publish(fanoutOutput(0))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	go func() { _ = g.Serve(ln) }()
	defer g.Stop()

	f := &fanout{clients: clients, done: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	var all []*xds.Client
	for i := range clients {
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		nop := func(map[string]*anypb.Any) error { return nil }
		c, err := xds.New(xds.Config{Conn: conn, Node: &corev3.Node{Id: configv1alpha1.ZtunnelNodeID(fmt.Sprintf("node-%d", i))},
			Types: []xds.Type{{URL: configv1alpha1.TypeWorkload, Handle: f.handler()}, {URL: configv1alpha1.TypeService, Handle: nop},
				{URL: configv1alpha1.TypeAuthorization, Handle: nop}},
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		all = append(all, c)
		wg.Go(func() { _ = c.Run(ctx) })
	}
	for _, c := range all {
		select {
		case <-c.Ready():
		case <-time.After(60 * time.Second):
			b.Fatalf("a client never synced: %+v", c.Status())
		}
	}

	var lat []time.Duration
	gen := 0
	for b.Loop() {
		gen++
		f.seen.Store(0)
		f.want.Store(int64(gen))
		out := fanoutOutput(gen)
		start := time.Now()
		s.Publish(out)
		select {
		case <-f.done:
		case <-time.After(30 * time.Second):
			b.Fatalf("generation %d reached %d of %d clients", gen, f.seen.Load(), clients)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(lat[len(lat)/2]), "ms-to-all-p50")
	b.ReportMetric(ms(lat[len(lat)-1]), "ms-to-all-max")
}
