package translate

import (
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapiv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	securityv1alpha1 "github.com/ambit-mesh/ambit/apis/security/v1alpha1"
	trafficv1alpha1 "github.com/ambit-mesh/ambit/apis/traffic/v1alpha1"
)

func TestParseDuration(t *testing.T) {
	good := map[string]time.Duration{
		"0s": 0, "1s": time.Second, "250ms": 250 * time.Millisecond, "1m30s": 90 * time.Second,
		"1h2m3s4ms": time.Hour + 2*time.Minute + 3*time.Second + 4*time.Millisecond, "99999ms": 99999 * time.Millisecond,
	}
	for in, want := range good {
		got, err := parseDuration(in)
		if err != nil || got != want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1", "1.5s", "-1s", "1us", "100000s", "1h1h1h1h1h", "1 s", "s"} {
		if _, err := parseDuration(in); !errors.Is(err, ErrInvalidDuration) {
			t.Errorf("parseDuration(%q) = %v; want ErrInvalidDuration", in, err)
		}
	}
}

func TestPrecedence(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// In the expected order.
	want := []Precedence{
		{PathKind: pathExact, PathLength: 2},
		{PathKind: pathRegex, PathLength: 10},
		{PathKind: pathPrefix, PathLength: 6},
		{PathKind: pathPrefix, PathLength: 2, Method: true},
		{PathKind: pathPrefix, PathLength: 2, Headers: 2},
		{PathKind: pathPrefix, PathLength: 2, Headers: 1, Query: 1},
		{PathKind: pathPrefix, PathLength: 2, Headers: 1},
		{PathKind: pathPrefix, PathLength: 2, Created: t0, Route: "z/z"},
		{PathKind: pathPrefix, PathLength: 2, Created: t0.Add(time.Hour), Route: "a/a"},
		{PathKind: pathPrefix, PathLength: 2, Created: t0.Add(time.Hour), Route: "a/b"},
		{PathKind: pathPrefix, PathLength: 2, Created: t0.Add(time.Hour), Route: "a/b", Rule: 1},
		{PathKind: pathPrefix, PathLength: 2, Created: t0.Add(time.Hour), Route: "a/b", Rule: 1, Match: 1},
	}
	grpc := []Precedence{{ServiceLen: 10, MethodLen: 1}, {ServiceLen: 9, MethodLen: 5}, {ServiceLen: 9, MethodLen: 4, Headers: 0}, {ServiceLen: 0, Headers: 3}}
	for _, order := range [][]Precedence{want, grpc} {
		var rules []*RouteRule
		for i := len(order) - 1; i >= 0; i-- {
			rules = append(rules, &RouteRule{Precedence: order[i]})
		}
		sortRules(rules)
		for i, r := range rules {
			if r.Precedence != order[i] {
				t.Errorf("position %d: got %+v, want %+v", i, r.Precedence, order[i])
			}
		}
	}
}

func TestLoadInputErrors(t *testing.T) {
	for name, tc := range map[string]struct{ yaml, want string }{
		"unknown kind":  {"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n", "unsupported kind apps/v1 Deployment"},
		"unknown field": {"apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {bogus: 1}\n", "unknown field"},
		"no kind":       {"metadata: {name: x}\n", "without apiVersion and kind"},
		"bad yaml":      {"apiVersion: v1\nkind: Pod\nmetadata: [\n", "document 1"},
	} {
		_, err := LoadInput([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, tc.want)
		}
	}
	in, err := LoadInput([]byte("---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n" +
		"- {apiVersion: gateway.networking.k8s.io/v1beta1, kind: HTTPRoute, metadata: {name: r, namespace: a}}\n"))
	if err != nil || len(in.Namespaces) != 1 || len(in.HTTPRoutes) != 1 {
		t.Fatalf("List: %v, %+v", err, in)
	}
}

// TestRobustness feeds objects with missing fields and nil pointers;
// Translate must not panic and must still give a valid IR.
func TestRobustness(t *testing.T) {
	svcRef := gwapiv1.ParentReference{Group: ptr(gwapiv1.Group("")), Kind: ptr(gwapiv1.Kind("Service")), Name: "s"}
	in := Input{
		Namespaces: []corev1.Namespace{{}, {ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{LabelUseWaypoint: "g", LabelDataplaneMode: "ambient"}}}},
		Pods: []corev1.Pod{{}, {ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "n",
			OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet"}, {Kind: "ReplicaSet", Name: "-"}}},
			Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{}}, PodIP: "10.0.0.1"}}},
		Services: []corev1.Service{{}, {ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "n"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.1.1.1", Ports: []corev1.ServicePort{{}, {Port: 80, Name: "http"}}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "g", Namespace: "n"}, Spec: corev1.ServiceSpec{ClusterIPs: []string{"10.1.1.2"}}}},
		EndpointSlices: []discoveryv1.EndpointSlice{{}, {ObjectMeta: metav1.ObjectMeta{Name: "e", Namespace: "n", Labels: map[string]string{discoveryv1.LabelServiceName: "s"}},
			Ports:     []discoveryv1.EndpointPort{{}, {Name: ptr("http")}},
			Endpoints: []discoveryv1.Endpoint{{}, {Addresses: []string{""}, TargetRef: &corev1.ObjectReference{Kind: "Pod"}}, {Addresses: []string{"10.0.0.1"}}}}},
		GatewayClasses: []gwapiv1.GatewayClass{{}},
		Gateways: []gwapiv1.Gateway{{}, {ObjectMeta: metav1.ObjectMeta{Name: "g", Namespace: "n"}, Spec: gwapiv1.GatewaySpec{GatewayClassName: WaypointClassName}},
			{ObjectMeta: metav1.ObjectMeta{Name: "g", Namespace: "n"}, Spec: gwapiv1.GatewaySpec{GatewayClassName: WaypointClassName,
				Listeners: []gwapiv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}}}},
		HTTPRoutes: []gwapiv1.HTTPRoute{{}, {ObjectMeta: metav1.ObjectMeta{Name: "r", Namespace: "n"}, Spec: gwapiv1.HTTPRouteSpec{
			CommonRouteSpec: gwapiv1.CommonRouteSpec{ParentRefs: []gwapiv1.ParentReference{{}, svcRef}},
			Rules: []gwapiv1.HTTPRouteRule{{}, {
				Matches: []gwapiv1.HTTPRouteMatch{{}, {Path: &gwapiv1.HTTPPathMatch{Type: ptr(gwapiv1.PathMatchType("Weird"))}},
					{Path: &gwapiv1.HTTPPathMatch{Type: ptr(gwapiv1.PathMatchRegularExpression), Value: ptr("(")}}},
				Filters: []gwapiv1.HTTPRouteFilter{{}, {Type: "RequestRedirect"}, {Type: "RequestRedirect", RequestRedirect: &gwapiv1.HTTPRequestRedirectFilter{
					Path: &gwapiv1.HTTPPathModifier{Type: "ReplacePrefixMatch"}}}, {Type: "ExtensionRef"}, {Type: "RequestMirror"}},
				BackendRefs: []gwapiv1.HTTPBackendRef{{}, {BackendRef: gwapiv1.BackendRef{Weight: ptr(int32(-1))}}},
				Timeouts:    &gwapiv1.HTTPRouteTimeouts{Request: ptr(gwapiv1.Duration("x"))},
				Retry:       &gwapiv1.HTTPRouteRetry{Attempts: ptr(-1), Backoff: ptr(gwapiv1.Duration(""))}},
				{BackendRefs: []gwapiv1.HTTPBackendRef{{BackendRef: gwapiv1.BackendRef{BackendObjectReference: gwapiv1.BackendObjectReference{Name: "s", Port: ptr(int32(80))}, Weight: ptr(int32(0))}}}},
			}}}},
		GRPCRoutes: []gwapiv1.GRPCRoute{{}, {ObjectMeta: metav1.ObjectMeta{Name: "g", Namespace: "n"}, Spec: gwapiv1.GRPCRouteSpec{
			CommonRouteSpec: gwapiv1.CommonRouteSpec{ParentRefs: []gwapiv1.ParentReference{svcRef}},
			Rules: []gwapiv1.GRPCRouteRule{{}, {Matches: []gwapiv1.GRPCRouteMatch{{}, {Method: &gwapiv1.GRPCMethodMatch{}},
				{Method: &gwapiv1.GRPCMethodMatch{Type: ptr(gwapiv1.GRPCMethodMatchRegularExpression), Service: ptr("(")}}},
				Filters: []gwapiv1.GRPCRouteFilter{{}, {Type: "RequestHeaderModifier"}}}}}}},
		ReferenceGrants:       []gwapiv1beta1.ReferenceGrant{{}},
		AuthorizationPolicies: []securityv1alpha1.AuthorizationPolicy{{}, {Spec: securityv1alpha1.AuthorizationPolicySpec{Selector: &metav1.LabelSelector{}, Rules: []securityv1alpha1.Rule{{To: []securityv1alpha1.Operation{{Ports: []int32{0}}}}}}}},
		PeerAuthentications:   []securityv1alpha1.PeerAuthentication{{}, {Spec: securityv1alpha1.PeerAuthenticationSpec{MTLS: &securityv1alpha1.MutualTLS{}}}},
		BackendPolicies:       []trafficv1alpha1.BackendPolicy{{}, {Spec: trafficv1alpha1.BackendPolicySpec{TargetRefs: []trafficv1alpha1.ServiceReference{{}}, OutlierDetection: &trafficv1alpha1.OutlierDetection{MaxEjectionPercent: 200}}}},
		FaultInjections:       []trafficv1alpha1.FaultInjection{{}, {Spec: trafficv1alpha1.FaultInjectionSpec{Abort: &trafficv1alpha1.FaultAbort{}}}},
	}
	out := Translate(in, Options{})
	if _, err := MarshalOutput(out); err != nil {
		t.Fatal(err)
	}
	if err := buildMesh(in, Options{}).Validate(); err != nil {
		t.Fatal(err)
	}
	// Input, empty.
	if _, err := MarshalOutput(Translate(Input{}, Options{})); err != nil {
		t.Fatal(err)
	}
}

func FuzzLoadAndTranslate(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: n}\nstatus: {podIP: 10.0.0.1}\n"))
	f.Add([]byte("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {parentRefs: [{kind: Service, group: '', name: s}], rules: [{}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := LoadInput(data)
		if err != nil {
			return
		}
		_, _ = MarshalOutput(Translate(in, Options{}))
	})
}

func ptr[T any](v T) *T { return &v }

func TestPortProtocol(t *testing.T) {
	ap := func(s string) *string { return &s }
	cases := []struct {
		name            string
		port            corev1.ServicePort
		hasHTTP, hasGRP bool
		want            configv1alpha1.ServiceRoutes_Protocol
	}{
		{"nothing declared: sniff", corev1.ServicePort{Name: "web", Port: 8080}, false, false, configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED},
		{"unnamed: sniff", corev1.ServicePort{Port: 8080}, false, false, configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED},
		{"appProtocol tcp: no sniffing", corev1.ServicePort{Name: "http", AppProtocol: ap("tcp")}, true, false, configv1alpha1.ServiceRoutes_PROTOCOL_TCP},
		{"unknown appProtocol: TCP", corev1.ServicePort{AppProtocol: ap("mysql")}, false, false, configv1alpha1.ServiceRoutes_PROTOCOL_TCP},
		{"appProtocol h2c", corev1.ServicePort{AppProtocol: ap("kubernetes.io/h2c")}, false, false, configv1alpha1.ServiceRoutes_PROTOCOL_HTTP},
		{"name prefix http", corev1.ServicePort{Name: "http-api"}, false, false, configv1alpha1.ServiceRoutes_PROTOCOL_HTTP},
		{"name prefix grpc", corev1.ServicePort{Name: "grpc"}, false, false, configv1alpha1.ServiceRoutes_PROTOCOL_GRPC},
		{"HTTPRoute attached", corev1.ServicePort{Name: "web"}, true, false, configv1alpha1.ServiceRoutes_PROTOCOL_HTTP},
		{"GRPCRoute attached", corev1.ServicePort{Name: "web"}, false, true, configv1alpha1.ServiceRoutes_PROTOCOL_GRPC},
	}
	for _, c := range cases {
		if got := portProtocol(c.port, c.hasHTTP, c.hasGRP); got != c.want {
			t.Errorf("%s: portProtocol = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestConsumerRoutesValidate checks that a waypoint's consumer entries
// must name another namespace, once each, with rules.
func TestConsumerRoutesValidate(t *testing.T) {
	rule := &RouteRule{Route: "HTTPRoute/a/r/0", InvalidBackends: true,
		Match: Match{Path: &StringMatch{Type: configv1alpha1.StringMatch_TYPE_PREFIX, Value: "/"}}}
	svc := func(c ...ConsumerRoutes) *Waypoint {
		return &Waypoint{Key: types.NamespacedName{Namespace: "mesh", Name: "wp"}, Identity: "spiffe://example.org/ns/mesh/sa/wp",
			Services: []*ServiceRoutes{{Service: types.NamespacedName{Namespace: "mesh", Name: "echo"}, Port: 80,
				Protocol: configv1alpha1.ServiceRoutes_PROTOCOL_HTTP, Consumers: c}}}
	}
	if err := svc(ConsumerRoutes{Namespace: "a", Rules: []*RouteRule{rule}}, ConsumerRoutes{Namespace: "b", Rules: []*RouteRule{rule}}).Validate(); err != nil {
		t.Errorf("valid consumers: %v", err)
	}
	for name, c := range map[string][]ConsumerRoutes{
		"empty namespace": {{Rules: []*RouteRule{rule}}},
		"own namespace":   {{Namespace: "mesh", Rules: []*RouteRule{rule}}},
		"twice":           {{Namespace: "a", Rules: []*RouteRule{rule}}, {Namespace: "a", Rules: []*RouteRule{rule}}},
		"no rules":        {{Namespace: "a"}},
	} {
		if err := svc(c...).Validate(); err == nil || !strings.Contains(err.Error(), "consumer namespace") {
			t.Errorf("%s: got %v, want a consumer namespace error", name, err)
		}
	}
	w := svc(ConsumerRoutes{Namespace: "a", Rules: []*RouteRule{rule}})
	w.Services[0].Protocol = configv1alpha1.ServiceRoutes_PROTOCOL_UNSPECIFIED
	if err := w.Validate(); err == nil || !strings.Contains(err.Error(), "no protocol") {
		t.Errorf("consumer rules without protocol: got %v", err)
	}
}
