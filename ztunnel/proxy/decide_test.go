package proxy

import (
	"net/http"
	"net/netip"
	"testing"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/config"
)

func sid(sa string) string { return "spiffe://cluster.local/ns/shop/sa/" + sa }

func mustWorkload(t *testing.T, w *configv1alpha1.Workload) *config.Workload {
	t.Helper()
	pw, err := config.ParseWorkload(w)
	if err != nil {
		t.Fatal(err)
	}
	return pw
}

func mustService(t *testing.T, s *configv1alpha1.Service) *config.Service {
	t.Helper()
	ps, err := config.ParseService(s)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func testSnapshot(t *testing.T) *config.Snapshot {
	wp := &configv1alpha1.WaypointRef{Gateway: "shop/wp", Address: "10.96.0.100", Identity: sid("wp")}
	ws := []*config.Workload{
		mustWorkload(t, &configv1alpha1.Workload{Name: "shop/web-1", Addresses: []string{"10.0.0.1"}, Identity: sid("web"), Enrolled: true}),
		mustWorkload(t, &configv1alpha1.Workload{Name: "shop/web-2", Addresses: []string{"10.0.0.2"}, Identity: sid("web"), Enrolled: true}),
		mustWorkload(t, &configv1alpha1.Workload{Name: "shop/legacy-1", Addresses: []string{"10.0.0.3"}, Identity: sid("legacy")}),
		mustWorkload(t, &configv1alpha1.Workload{Name: "shop/behind-1", Addresses: []string{"10.0.0.4"}, Identity: sid("behind"), Enrolled: true, Waypoint: wp}),
		mustWorkload(t, &configv1alpha1.Workload{Name: "shop/behind-2", Addresses: []string{"10.0.0.5"}, Identity: sid("behind"), Enrolled: true,
			Waypoint: &configv1alpha1.WaypointRef{Gateway: "shop/wp", Address: "10.96.0.200", Identity: sid("wp")}}),
	}
	ss := []*config.Service{
		mustService(t, &configv1alpha1.Service{Name: "shop/web", Vips: []string{"10.96.0.1"},
			Ports: []*configv1alpha1.ServicePort{{Port: 80, TargetPort: 8080}},
			Endpoints: []*configv1alpha1.Endpoint{
				{Workload: "shop/web-1", Address: "10.0.0.1", Ready: false},
				{Workload: "shop/web-2", Address: "10.0.0.2", Ready: true},
			}}),
		mustService(t, &configv1alpha1.Service{Name: "shop/legacy", Vips: []string{"10.96.0.2"},
			Ports:     []*configv1alpha1.ServicePort{{Port: 80, TargetPort: 9090}},
			Endpoints: []*configv1alpha1.Endpoint{{Workload: "shop/legacy-1", Address: "10.0.0.3", Ready: true}}}),
		mustService(t, &configv1alpha1.Service{Name: "shop/routed", Vips: []string{"10.96.0.3"}, Waypoint: wp,
			Ports:     []*configv1alpha1.ServicePort{{Port: 80}},
			Endpoints: []*configv1alpha1.Endpoint{{Workload: "shop/web-1", Address: "10.0.0.1", Ready: true}}}),
		mustService(t, &configv1alpha1.Service{Name: "shop/down", Vips: []string{"10.96.0.4"},
			Ports:     []*configv1alpha1.ServicePort{{Port: 80}},
			Endpoints: []*configv1alpha1.Endpoint{{Workload: "shop/web-1", Address: "10.0.0.1", Ready: false}}}),
		mustService(t, &configv1alpha1.Service{Name: "shop/wp", Vips: []string{"10.96.0.200"}, Ports: []*configv1alpha1.ServicePort{{Port: 15008}},
			Endpoints: []*configv1alpha1.Endpoint{{Workload: "shop/wp-1", Address: "10.0.0.200", Ready: true}}}),
		mustService(t, &configv1alpha1.Service{Name: "shop/behind", Vips: []string{"10.96.0.5"},
			Ports:     []*configv1alpha1.ServicePort{{Port: 80, TargetPort: 8000}},
			Endpoints: []*configv1alpha1.Endpoint{{Workload: "shop/behind-1", Address: "10.0.0.4", Ready: true}}}),
	}
	return config.Build(ws, ss, nil)
}

func TestDecide(t *testing.T) {
	snap := testSnapshot(t)
	ap := netip.MustParseAddrPort
	tests := []struct {
		name      string
		dst       string
		kind      Kind
		address   string
		authority string
		identity  string
		service   string
		workload  string
	}{
		{"service to enrolled endpoint, unready skipped", "10.96.0.1:80", HBONE, "10.0.0.2:15008", "10.0.0.2:8080", sid("web"), "shop/web", "shop/web-2"},
		{"service to unenrolled endpoint", "10.96.0.2:80", Plain, "10.0.0.3:9090", "", "", "shop/legacy", "shop/legacy-1"},
		{"service with waypoint", "10.96.0.3:80", Waypoint, "10.96.0.100:15008", "10.96.0.3:80", sid("wp"), "shop/routed", ""},
		{"service without ready endpoint", "10.96.0.4:80", NoEndpoint, "10.96.0.4:80", "", "", "shop/down", ""},
		{"service endpoint behind a workload waypoint", "10.96.0.5:80", Waypoint, "10.96.0.100:15008", "10.0.0.4:8000", sid("wp"), "shop/behind", "shop/behind-1"},
		{"VIP on unknown port passes through", "10.96.0.1:81", Passthrough, "10.96.0.1:81", "", "", "", ""},
		{"enrolled pod", "10.0.0.1:8080", HBONE, "10.0.0.1:15008", "10.0.0.1:8080", sid("web"), "", "shop/web-1"},
		{"unenrolled pod", "10.0.0.3:22", Plain, "10.0.0.3:22", "", "", "", "shop/legacy-1"},
		{"pod behind waypoint", "10.0.0.4:8000", Waypoint, "10.96.0.100:15008", "10.0.0.4:8000", sid("wp"), "", "shop/behind-1"},
		{"waypoint service resolved to its endpoint", "10.0.0.5:80", Waypoint, "10.0.0.200:15008", "10.0.0.5:80", sid("wp"), "", "shop/behind-2"},
		{"outside the mesh", "192.0.2.1:443", Passthrough, "192.0.2.1:443", "", "", "", ""},
		{"IPv4-mapped destination", "[::ffff:10.0.0.1]:8080", HBONE, "10.0.0.1:15008", "10.0.0.1:8080", sid("web"), "", "shop/web-1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Decide(snap, ap(tc.dst), func(n int) int { return 0 })
			if r.Kind != tc.kind || r.Address.String() != tc.address {
				t.Fatalf("Decide(%s) = %v to %v, want %v to %v", tc.dst, r.Kind, r.Address, tc.kind, tc.address)
			}
			if tc.authority != "" && r.Authority.String() != tc.authority {
				t.Errorf("authority %v, want %v", r.Authority, tc.authority)
			}
			if tc.identity != "" && r.Identity.String() != tc.identity {
				t.Errorf("identity %v, want %v", r.Identity, tc.identity)
			}
			if tc.identity == "" && r.Identity != (identity.SPIFFEID{}) {
				t.Errorf("unexpected identity %v", r.Identity)
			}
			if got := nameOf(r.Service); got != tc.service {
				t.Errorf("service %q, want %q", got, tc.service)
			}
			if got := wname(r.Workload); got != tc.workload {
				t.Errorf("workload %q, want %q", got, tc.workload)
			}
		})
	}
}

func nameOf(s *config.Service) string {
	if s == nil {
		return ""
	}
	return s.Name
}

func wname(w *config.Workload) string {
	if w == nil {
		return ""
	}
	return w.Name
}

func TestEndpointSelection(t *testing.T) {
	svc := mustService(t, &configv1alpha1.Service{Name: "shop/s", Vips: []string{"10.96.1.1"},
		Ports: []*configv1alpha1.ServicePort{{Port: 80}},
		Endpoints: []*configv1alpha1.Endpoint{
			{Address: "10.0.1.1", Ready: true}, {Address: "10.0.1.2", Ready: false},
			{Address: "10.0.1.3", Ready: true}, {Address: "10.0.1.4", Ready: false},
		}})
	ready := ReadyEndpoints(svc)
	if len(ready) != 2 || ready[0].Address.String() != "10.0.1.1" || ready[1].Address.String() != "10.0.1.3" {
		t.Fatalf("ReadyEndpoints = %+v", ready)
	}
	snap := config.Build(nil, []*config.Service{svc}, nil)
	o := &Outbound{}
	seen := map[string]int{}
	for range 10 {
		r := Decide(snap, netip.MustParseAddrPort("10.96.1.1:80"), o.pick)
		seen[r.Address.Addr().String()]++
	}
	if seen["10.0.1.1"] != 5 || seen["10.0.1.3"] != 5 || len(seen) != 2 {
		t.Errorf("round robin spread %v", seen)
	}
	// A picker out of range falls back to the first.
	if r := Decide(snap, netip.MustParseAddrPort("10.96.1.1:80"), func(int) int { return 7 }); r.Address.Addr().String() != "10.0.1.1" {
		t.Errorf("bad picker gave %v", r.Address)
	}
}

// TestEndpointFamily checks that a dual-stack Service's VIP of each family
// goes to endpoints of that family, and to the others only when it has
// none of its own.
func TestEndpointFamily(t *testing.T) {
	svc := mustService(t, &configv1alpha1.Service{Name: "shop/s", Vips: []string{"10.96.1.1", "fd00::1:1"},
		Ports: []*configv1alpha1.ServicePort{{Port: 80}},
		Endpoints: []*configv1alpha1.Endpoint{
			{Address: "10.0.1.1", Ready: true}, {Address: "fd00::1", Ready: true},
			{Address: "10.0.1.2", Ready: true}, {Address: "fd00::2", Ready: true}, {Address: "fd00::3", Ready: false},
		}})
	only4 := mustService(t, &configv1alpha1.Service{Name: "shop/v4", Vips: []string{"10.96.1.2", "fd00::1:2"},
		Ports:     []*configv1alpha1.ServicePort{{Port: 80}},
		Endpoints: []*configv1alpha1.Endpoint{{Address: "10.0.1.1", Ready: true}}})
	snap := config.Build(nil, []*config.Service{svc, only4}, nil)
	o := &Outbound{}
	for dst, want := range map[string][]string{
		"10.96.1.1:80":          {"10.0.1.1", "10.0.1.2"},
		"[fd00::1:1]:80":        {"fd00::1", "fd00::2"},
		"[::ffff:10.96.1.1]:80": {"10.0.1.1", "10.0.1.2"},
		"[fd00::1:2]:80":        {"10.0.1.1"}, // no IPv6 endpoint: the IPv4 one
	} {
		seen := map[string]int{}
		for range 6 {
			r := Decide(snap, netip.MustParseAddrPort(dst), o.pick)
			seen[r.Address.Addr().String()]++
		}
		for _, w := range want {
			if seen[w] == 0 {
				t.Errorf("%s: never went to %s (%v)", dst, w, seen)
			}
			delete(seen, w)
		}
		if len(seen) != 0 {
			t.Errorf("%s: went to %v, want only %v", dst, seen, want)
		}
	}
}

func TestInboundCheck(t *testing.T) {
	wp := &configv1alpha1.WaypointRef{Gateway: "shop/wp", Address: "10.96.0.100", Identity: sid("wp")}
	plainOK := mustWorkload(t, &configv1alpha1.Workload{Name: "shop/a", Identity: sid("a"), Enrolled: true})
	strict := mustWorkload(t, &configv1alpha1.Workload{Name: "shop/s", Identity: sid("s"), Enrolled: true, MtlsMode: configv1alpha1.MTLSMode_MTLS_MODE_STRICT})
	behind := mustWorkload(t, &configv1alpha1.Workload{Name: "shop/b", Identity: sid("b"), Enrolled: true, Waypoint: wp})
	strictBut9090 := mustWorkload(t, &configv1alpha1.Workload{Name: "shop/m", Identity: sid("m"), Enrolled: true,
		MtlsMode: configv1alpha1.MTLSMode_MTLS_MODE_STRICT, PortMtlsModes: map[uint32]configv1alpha1.MTLSMode{9090: configv1alpha1.MTLSMode_MTLS_MODE_PERMISSIVE}})
	permissiveBut5432 := mustWorkload(t, &configv1alpha1.Workload{Name: "shop/p", Identity: sid("p"), Enrolled: true,
		MtlsMode: configv1alpha1.MTLSMode_MTLS_MODE_PERMISSIVE, PortMtlsModes: map[uint32]configv1alpha1.MTLSMode{5432: configv1alpha1.MTLSMode_MTLS_MODE_STRICT}})
	web, _ := identity.ParseSPIFFEID(sid("web"))
	wpID, _ := identity.ParseSPIFFEID(sid("wp"))
	snap := config.Build([]*config.Workload{plainOK, strict, behind, strictBut9090, permissiveBut5432}, nil, nil)
	for _, tc := range []struct {
		name   string
		w      *config.Workload
		peer   identity.SPIFFEID
		port   uint16
		code   int
		reason string
	}{
		{"permissive plaintext", plainOK, identity.SPIFFEID{}, 80, 0, ""},
		{"strict plaintext", strict, identity.SPIFFEID{}, 80, 403, DenyStrict},
		{"strict mTLS", strict, web, 80, 0, ""},
		{"strict, plaintext to a PERMISSIVE port", strictBut9090, identity.SPIFFEID{}, 9090, 0, ""},
		{"strict, plaintext to another port", strictBut9090, identity.SPIFFEID{}, 80, 403, DenyStrict},
		{"permissive, plaintext to a STRICT port", permissiveBut5432, identity.SPIFFEID{}, 5432, 403, DenyStrict},
		{"permissive, mTLS to a STRICT port", permissiveBut5432, web, 5432, 0, ""},
		{"permissive, plaintext to another port", permissiveBut5432, identity.SPIFFEID{}, 80, 0, ""},
		{"behind waypoint, direct", behind, web, 80, 403, DenyWaypoint},
		{"behind waypoint, from it", behind, wpID, 80, 0, ""},
		{"unknown workload", nil, web, 80, 0, ""},
		{"unknown workload, plaintext", nil, identity.SPIFFEID{}, 80, 403, DenyStrict},
	} {
		code, reason, _ := InboundCheck(snap, tc.w, tc.peer, netip.MustParseAddr("10.0.0.9"), tc.port, "ambit-system")
		if code != tc.code || reason != tc.reason {
			t.Errorf("%s: InboundCheck = %d %q, want %d %q", tc.name, code, reason, tc.code, tc.reason)
		}
	}
}

// TestInboundService checks the destination service the destination's
// ztunnel reports: the one the client named if it sends to the address and
// port, else the first by name that does, else unknown.
func TestInboundService(t *testing.T) {
	ep := func(port uint16) []*configv1alpha1.Endpoint {
		return []*configv1alpha1.Endpoint{{Workload: "shop/db-1", Address: "10.0.0.9", Ready: true, TargetPorts: map[uint32]uint32{80: uint32(port)}}}
	}
	snap := config.Build(nil, []*config.Service{
		mustService(t, &configv1alpha1.Service{Name: "shop/db", Hostname: "db.shop.svc.cluster.local", Vips: []string{"10.96.0.9"},
			Ports: []*configv1alpha1.ServicePort{{Port: 80, TargetPort: 5432}}, Endpoints: ep(5432)}),
		mustService(t, &configv1alpha1.Service{Name: "shop/alias", Hostname: "alias.shop.svc.cluster.local", Vips: []string{"10.96.0.10"},
			Ports: []*configv1alpha1.ServicePort{{Port: 80, TargetPort: 5432}}, Endpoints: ep(5432)}),
		mustService(t, &configv1alpha1.Service{Name: "shop/admin", Hostname: "admin.shop.svc.cluster.local", Vips: []string{"10.96.0.11"},
			Ports: []*configv1alpha1.ServicePort{{Port: 80, TargetPort: 9000}}, Endpoints: ep(9000)}),
	}, nil)
	ap := netip.MustParseAddrPort
	for _, tc := range []struct{ dst, claimed, want string }{
		{"10.0.0.9:5432", "", "alias.shop.svc.cluster.local"}, // two send there: the first by name
		{"10.0.0.9:5432", "db.shop.svc.cluster.local", "db.shop.svc.cluster.local"},
		{"10.0.0.9:5432", "DB.shop.svc.cluster.local", "db.shop.svc.cluster.local"},
		{"10.0.0.9:5432", "admin.shop.svc.cluster.local", "alias.shop.svc.cluster.local"}, // a claim for a service that does not send there
		{"10.0.0.9:9000", "", "admin.shop.svc.cluster.local"},
		{"[::ffff:10.0.0.9]:9000", "", "admin.shop.svc.cluster.local"},
		{"10.0.0.9:22", "db.shop.svc.cluster.local", "unknown"},
		{"10.0.0.8:5432", "", "unknown"},
	} {
		if got := inboundService(snap, ap(tc.dst), tc.claimed); got != tc.want {
			t.Errorf("inboundService(%s, %q) = %q, want %q", tc.dst, tc.claimed, got, tc.want)
		}
	}
}

func TestTunnelHeaders(t *testing.T) {
	w := mustWorkload(t, &configv1alpha1.Workload{Name: "shop/web-1", Identity: sid("web"),
		WorkloadName: "web", CanonicalName: "web-app", CanonicalRevision: "v2"})
	h := tunnelHeader(w, netip.MustParseAddr("10.0.0.1"), nil)
	if got := h.Get("Forwarded"); got != "for=10.0.0.1" {
		t.Errorf("forwarded %q", got)
	}
	b := BaggageValues(h)
	want := map[string]string{BaggageNamespace: "shop", BaggagePod: "web-1", BaggageWorkload: "web", BaggageService: "web-app", BaggageServiceRevision: "v2"}
	for k, v := range want {
		if b[k] != v {
			t.Errorf("baggage %s = %q, want %q (header %q)", k, b[k], v, h.Get("Baggage"))
		}
	}
	h6 := tunnelHeader(nil, netip.MustParseAddr("fd00::1"), nil)
	if got := h6.Get("Forwarded"); got != `for="[fd00::1]"` {
		t.Errorf("forwarded v6 %q", got)
	}
	svc := mustService(t, &configv1alpha1.Service{Name: "shop/db", Hostname: "db.shop.svc.cluster.local", Vips: []string{"10.96.0.9"}})
	hs := tunnelHeader(w, netip.MustParseAddr("10.0.0.1"), svc)
	if got := hs.Get("Forwarded"); got != "for=10.0.0.1;host=db.shop.svc.cluster.local" {
		t.Errorf("forwarded to a service %q", got)
	}
	if got := ForwardedHost(hs); got != "db.shop.svc.cluster.local" {
		t.Errorf("ForwardedHost = %q", got)
	}
	if a, ok := ForwardedFor(hs); !ok || a.String() != "10.0.0.1" {
		t.Errorf("ForwardedFor with host= = %v %v", a, ok)
	}
	for _, tc := range []struct {
		v    string
		want string
	}{
		{`for=10.0.0.1`, "10.0.0.1"}, {`for="[fd00::1]";proto=https`, "fd00::1"}, {`proto=http;For=10.1.1.1, for=10.2.2.2`, "10.1.1.1"},
		{`for=unknown`, ""}, {``, ""},
	} {
		a, ok := ForwardedFor(http.Header{"Forwarded": {tc.v}})
		if (tc.want == "" && ok) || (tc.want != "" && a.String() != tc.want) {
			t.Errorf("ForwardedFor(%q) = %v %v, want %q", tc.v, a, ok, tc.want)
		}
	}
}

// TestAppSource: the application sees the tunnel's source, or the client
// the tunnel's Forwarded for= names when the peer is a waypoint serving
// the pod (its own, or its Service's on that port); another peer's claim
// is ignored.
func TestAppSource(t *testing.T) {
	wpPod := &configv1alpha1.WaypointRef{Gateway: "shop/pod-wp", Address: "10.0.5.1", Identity: sid("pod-wp")}
	wpSvc := &configv1alpha1.WaypointRef{Gateway: "shop/svc-wp", Address: "10.0.5.2", Identity: sid("svc-wp")}
	db := mustWorkload(t, &configv1alpha1.Workload{Name: "shop/db-1", Identity: sid("db"), Addresses: []string{"10.0.0.9"}, Waypoint: wpPod})
	plain := mustWorkload(t, &configv1alpha1.Workload{Name: "shop/cache-1", Identity: sid("cache"), Addresses: []string{"10.0.0.8"}})
	snap := config.Build([]*config.Workload{db, plain}, []*config.Service{
		mustService(t, &configv1alpha1.Service{Name: "shop/db", Hostname: "db.shop.svc.cluster.local", Vips: []string{"10.96.0.9"},
			Ports: []*configv1alpha1.ServicePort{{Port: 5432, TargetPort: 5432}}, Waypoint: wpSvc,
			Endpoints: []*configv1alpha1.Endpoint{{Workload: "shop/db-1", Address: "10.0.0.9", Ready: true}}}),
	}, nil)
	ap, ip := netip.MustParseAddrPort, netip.MustParseAddr
	id := func(sa string) identity.SPIFFEID {
		v, err := identity.ParseSPIFFEID(sid(sa))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	remote := ip("10.0.5.7")
	fwd := func(v string) http.Header { return http.Header{"Forwarded": {v}} }
	for _, tc := range []struct {
		name string
		dst  *config.Workload
		peer identity.SPIFFEID
		auth string
		h    http.Header
		want string
	}{
		{"the pod's waypoint", db, id("pod-wp"), "10.0.0.9:5432", fwd("for=10.0.1.4"), "10.0.1.4"},
		{"the service's waypoint", db, id("svc-wp"), "10.0.0.9:5432", fwd(`for="[fd00::4]"`), "fd00::4"},
		{"the service's waypoint, a port the service does not send to", plain, id("svc-wp"), "10.0.0.8:22", fwd("for=10.0.1.4"), "10.0.5.7"},
		{"a client's own claim", db, id("web"), "10.0.0.9:5432", fwd("for=10.0.1.4"), "10.0.5.7"},
		{"a waypoint without for=", db, id("pod-wp"), "10.0.0.9:5432", nil, "10.0.5.7"},
		{"a waypoint's for= that is no address", db, id("pod-wp"), "10.0.0.9:5432", fwd("for=unknown"), "10.0.5.7"},
		{"an unknown pod", nil, id("pod-wp"), "10.0.0.7:5432", fwd("for=10.0.1.4"), "10.0.5.7"},
	} {
		if got := appSource(snap, tc.dst, tc.peer, ap(tc.auth), tc.h, remote); got != ip(tc.want) {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

// TestSourceOf: the destination's metrics name the client pod its
// forwarded address names when that pod has the peer's identity, else the
// workload the tunnel comes from when it has the peer's identity (a
// waypoint, with or without its client's for=), else the baggage.
func TestSourceOf(t *testing.T) {
	web := mustWorkload(t, &configv1alpha1.Workload{Name: "shop/web-1", Identity: sid("web"), Addresses: []string{"10.0.0.5"}, WorkloadName: "web"})
	wp := mustWorkload(t, &configv1alpha1.Workload{Name: "shop/waypoint-1", Identity: sid("waypoint"), Addresses: []string{"10.0.5.1"}, WorkloadName: "waypoint"})
	snap := config.Build([]*config.Workload{web, wp}, nil, nil)
	ip := netip.MustParseAddr
	id := func(sa string) identity.SPIFFEID {
		v, err := identity.ParseSPIFFEID(sid(sa))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tc := range []struct {
		name         string
		h            http.Header
		remote       string
		peer         identity.SPIFFEID
		workload, ns string
	}{
		{"a client pod", http.Header{"Forwarded": {"for=10.0.0.5"}}, "10.0.0.5", id("web"), "web", "shop"},
		{"a waypoint's HTTP tunnel", nil, "10.0.5.1", id("waypoint"), "waypoint", "shop"},
		{"a waypoint passing web's TCP through", http.Header{"Forwarded": {"for=10.0.0.5"}}, "10.0.5.1", id("waypoint"), "waypoint", "shop"},
		{"an unknown peer with baggage", http.Header{"Forwarded": {"for=10.0.0.5"}, "Baggage": {"k8s.workload.name=batch"}}, "10.9.9.9",
			identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "jobs", ServiceAccount: "batch"}, "batch", "jobs"},
	} {
		got := sourceOf(snap, tc.h, ip(tc.remote), tc.peer)
		if got.Workload != tc.workload || got.Namespace != tc.ns || got.Principal != tc.peer.String() {
			t.Errorf("%s: %+v, want workload %s, namespace %s, principal %s", tc.name, got, tc.workload, tc.ns, tc.peer)
		}
	}
}
