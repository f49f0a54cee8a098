package config

import (
	"net/netip"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

func anys(t *testing.T, ms ...proto.Message) map[string]*anypb.Any {
	t.Helper()
	out := map[string]*anypb.Any{}
	for _, m := range ms {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		name := m.(interface{ GetName() string }).GetName()
		out[name] = a
	}
	return out
}

func goodWorkload(name, ip string) *configv1alpha1.Workload {
	ns, _, _ := strings.Cut(name, "/")
	return &configv1alpha1.Workload{Name: name, Namespace: ns, Addresses: []string{ip},
		Identity: "spiffe://cluster.local/ns/" + ns + "/sa/default", Enrolled: true}
}

func TestIndexes(t *testing.T) {
	s := NewStore(nil)
	if err := s.HandleWorkloads(anys(t, goodWorkload("shop/web-1", "10.0.0.1"), goodWorkload("shop/db-1", "fd00::1"))); err != nil {
		t.Fatal(err)
	}
	svc := &configv1alpha1.Service{Name: "shop/web", Vips: []string{"10.96.0.1", "fd00:96::1"},
		Ports:     []*configv1alpha1.ServicePort{{Port: 80, TargetPort: 8080}, {Port: 443}},
		Endpoints: []*configv1alpha1.Endpoint{{Workload: "shop/web-1", Address: "10.0.0.1", Ready: true, TargetPorts: map[uint32]uint32{443: 8443}}}}
	if err := s.HandleServices(anys(t, svc)); err != nil {
		t.Fatal(err)
	}
	snap := s.Snapshot()
	if w := snap.WorkloadByIP(netip.MustParseAddr("10.0.0.1")); w == nil || w.Name != "shop/web-1" {
		t.Errorf("WorkloadByIP(10.0.0.1) = %v", w)
	}
	if w := snap.WorkloadByIP(netip.MustParseAddr("::ffff:10.0.0.1")); w == nil {
		t.Error("an IPv4-mapped address is not found")
	}
	if w := snap.WorkloadByIP(netip.MustParseAddr("fd00::1")); w == nil || w.Name != "shop/db-1" {
		t.Errorf("WorkloadByIP(fd00::1) = %v", w)
	}
	if w := snap.WorkloadByIP(netip.MustParseAddr("10.0.0.2")); w != nil {
		t.Errorf("unknown IP found %v", w)
	}
	got, port, ok := snap.ServiceByVIP(netip.MustParseAddrPort("[fd00:96::1]:443"))
	if !ok || got.Name != "shop/web" || port.Port != 443 {
		t.Fatalf("ServiceByVIP = %v %v %v", got, port, ok)
	}
	if tp := got.Endpoints[0].TargetPort(port); tp != 8443 {
		t.Errorf("endpoint target port for 443 = %d", tp)
	}
	_, p80, _ := snap.ServiceByVIP(netip.MustParseAddrPort("10.96.0.1:80"))
	if tp := got.Endpoints[0].TargetPort(p80); tp != 8080 {
		t.Errorf("target port for 80 = %d", tp)
	}
	if _, _, ok := snap.ServiceByVIP(netip.MustParseAddrPort("10.96.0.1:81")); ok {
		t.Error("a VIP on an unlisted port matched")
	}
	if snap.Generation != 2 {
		t.Errorf("generation %d", snap.Generation)
	}
	select {
	case <-s.Changed():
	default:
		t.Error("no change notification")
	}
}

func TestMalformedIsRejected(t *testing.T) {
	wp := &configv1alpha1.WaypointRef{Gateway: "shop/wp", Address: "10.96.0.9", Identity: "spiffe://cluster.local/ns/shop/sa/wp"}
	badWP := proto.Clone(wp).(*configv1alpha1.WaypointRef)
	badWP.Address = ""
	tests := []struct {
		name    string
		typ     string
		m       proto.Message
		wantErr string
	}{
		{"workload bad address", configv1alpha1.TypeWorkload, &configv1alpha1.Workload{Name: "shop/a", Addresses: []string{"nope"}}, "not an IP"},
		{"workload bad name", configv1alpha1.TypeWorkload, &configv1alpha1.Workload{Name: "a"}, "<namespace>/<pod>"},
		{"workload bad identity", configv1alpha1.TypeWorkload, &configv1alpha1.Workload{Name: "shop/a", Identity: "spiffe://x/y"}, "identity"},
		{"enrolled without identity", configv1alpha1.TypeWorkload, &configv1alpha1.Workload{Name: "shop/a", Enrolled: true}, "without an identity"},
		{"dns nameserver not an IP", configv1alpha1.TypeWorkload, &configv1alpha1.Workload{Name: "shop/a",
			Dns: &configv1alpha1.DNSConfig{Policy: configv1alpha1.DNSConfig_POLICY_NONE, Nameservers: []string{"dns.example"}}}, "dns: nameserver"},
		{"dns unknown policy", configv1alpha1.TypeWorkload, &configv1alpha1.Workload{Name: "shop/a",
			Dns: &configv1alpha1.DNSConfig{Policy: 9}}, "unknown policy"},
		{"dns ndots", configv1alpha1.TypeWorkload, &configv1alpha1.Workload{Name: "shop/a",
			Dns: &configv1alpha1.DNSConfig{Policy: configv1alpha1.DNSConfig_POLICY_NONE, Ndots: 16}}, "ndots 16"},
		{"dns empty search", configv1alpha1.TypeWorkload, &configv1alpha1.Workload{Name: "shop/a",
			Dns: &configv1alpha1.DNSConfig{Policy: configv1alpha1.DNSConfig_POLICY_NONE, Searches: []string{"."}}}, "empty search"},
		{"workload waypoint without address", configv1alpha1.TypeWorkload, &configv1alpha1.Workload{Name: "shop/a", Waypoint: badWP}, "waypoint"},
		{"service bad vip", configv1alpha1.TypeService, &configv1alpha1.Service{Name: "shop/s", Vips: []string{"10.0.0.300"}}, "vip"},
		{"service port 0", configv1alpha1.TypeService, &configv1alpha1.Service{Name: "shop/s", Ports: []*configv1alpha1.ServicePort{{Port: 0}}}, "out of range"},
		{"service dup port", configv1alpha1.TypeService, &configv1alpha1.Service{Name: "shop/s", Ports: []*configv1alpha1.ServicePort{{Port: 80}, {Port: 80}}}, "twice"},
		{"endpoint bad address", configv1alpha1.TypeService, &configv1alpha1.Service{Name: "shop/s", Endpoints: []*configv1alpha1.Endpoint{{Address: "x"}}}, "endpoint"},
		{"authorization no action", configv1alpha1.TypeAuthorization, &configv1alpha1.Authorization{Name: "shop/p", Scope: configv1alpha1.Authorization_SCOPE_NAMESPACE}, "action"},
		{"authorization no scope", configv1alpha1.TypeAuthorization, &configv1alpha1.Authorization{Name: "shop/p", Action: configv1alpha1.Authorization_ACTION_ALLOW}, "scope"},
		{"authorization L7 at L4", configv1alpha1.TypeAuthorization, &configv1alpha1.Authorization{Name: "shop/p",
			Scope: configv1alpha1.Authorization_SCOPE_NAMESPACE, Action: configv1alpha1.Authorization_ACTION_ALLOW,
			Rules: []*configv1alpha1.AuthorizationRule{{To: []*configv1alpha1.AuthorizationRule_Operation{{Methods: []string{"GET"}}}}}}, "HTTP"},
		{"authorization port out of range", configv1alpha1.TypeAuthorization, &configv1alpha1.Authorization{Name: "shop/p",
			Scope: configv1alpha1.Authorization_SCOPE_NAMESPACE, Action: configv1alpha1.Authorization_ACTION_DENY,
			Rules: []*configv1alpha1.AuthorizationRule{{To: []*configv1alpha1.AuthorizationRule_Operation{{Ports: []uint32{70000}}}}}}, "port"},
		{"workload port mTLS mode unset", configv1alpha1.TypeWorkload, &configv1alpha1.Workload{Name: "shop/w", Namespace: "shop", Identity: "spiffe://cluster.local/ns/shop/sa/w",
			PortMtlsModes: map[uint32]configv1alpha1.MTLSMode{9090: configv1alpha1.MTLSMode_MTLS_MODE_UNSPECIFIED}}, "port_mtls_modes"},
		{"workload port mTLS port 0", configv1alpha1.TypeWorkload, &configv1alpha1.Workload{Name: "shop/w", Namespace: "shop", Identity: "spiffe://cluster.local/ns/shop/sa/w",
			PortMtlsModes: map[uint32]configv1alpha1.MTLSMode{0: configv1alpha1.MTLSMode_MTLS_MODE_STRICT}}, "port_mtls_modes"},
		{"authorization bad IP block", configv1alpha1.TypeAuthorization, &configv1alpha1.Authorization{Name: "shop/p",
			Scope: configv1alpha1.Authorization_SCOPE_NAMESPACE, Action: configv1alpha1.Authorization_ACTION_DENY,
			Rules: []*configv1alpha1.AuthorizationRule{{From: []*configv1alpha1.AuthorizationRule_Source{{NotIpBlocks: []string{"10.0.0.0/8", "10.0.0.0/40"}}}}}}, "IP block"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStore(nil)
			// A good set first; the bad one must leave it in place.
			if err := s.HandleWorkloads(anys(t, goodWorkload("shop/good", "10.0.0.1"))); err != nil {
				t.Fatal(err)
			}
			before := s.Snapshot()
			h := map[string]func(map[string]*anypb.Any) error{
				configv1alpha1.TypeWorkload: s.HandleWorkloads, configv1alpha1.TypeService: s.HandleServices,
				configv1alpha1.TypeAuthorization: s.HandleAuthorizations,
			}[tc.typ]
			err := h(anys(t, tc.m))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
			}
			if s.Snapshot() != before {
				t.Error("a rejected set changed the snapshot")
			}
		})
	}
	t.Run("name mismatch", func(t *testing.T) {
		s := NewStore(nil)
		rs := anys(t, goodWorkload("shop/a", "10.0.0.1"))
		rs["shop/b"] = rs["shop/a"]
		if err := s.HandleWorkloads(rs); err == nil {
			t.Error("a resource under another name was accepted")
		}
	})
	t.Run("wrong type", func(t *testing.T) {
		s := NewStore(nil)
		if err := s.HandleWorkloads(anys(t, &configv1alpha1.Service{Name: "shop/a"})); err == nil {
			t.Error("a Service was accepted as a Workload")
		}
	})
}

// TestConcurrentReaders checks (under -race) that readers never see a torn
// snapshot while writers swap them.
func TestConcurrentReaders(t *testing.T) {
	s := NewStore(nil)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				snap := s.Snapshot()
				for _, w := range snap.Workloads {
					for _, a := range w.Addresses {
						if snap.WorkloadByIP(a) == nil {
							t.Error("index out of step with the workloads")
							return
						}
					}
				}
			}
		}()
	}
	for i := range 200 {
		ip := netip.AddrFrom4([4]byte{10, 0, byte(i), 1}).String()
		if err := s.HandleWorkloads(anys(t, goodWorkload("shop/w", ip))); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}

// TestNextWakesEveryWaiter checks Next: the channel closes at the next
// commit (for every caller holding it) and not before, and a workload
// without addresses (a scheduled pod without an IP yet) is accepted.
func TestNextWakesEveryWaiter(t *testing.T) {
	s := NewStore(nil)
	snap1, next1 := s.Next()
	_, next2 := s.Next()
	select {
	case <-next1:
		t.Fatal("closed before any commit")
	default:
	}
	w := goodWorkload("shop/starting", "10.0.0.1")
	w.Addresses = nil
	if err := s.HandleWorkloads(anys(t, w)); err != nil {
		t.Fatalf("a workload without addresses: %v", err)
	}
	for i, ch := range []<-chan struct{}{next1, next2} {
		select {
		case <-ch:
		default:
			t.Errorf("waiter %d not woken by the commit", i)
		}
	}
	snap2, next3 := s.Next()
	if snap2 == snap1 || snap2.Workload("shop/starting") == nil {
		t.Errorf("Next after the commit returned %v", snap2)
	}
	select {
	case <-next3:
		t.Error("the new channel is already closed")
	default:
	}
}
