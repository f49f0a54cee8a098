//go:build envtest

package kubetest

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	securityv1alpha1 "github.com/ambit-mesh/ambit/apis/security/v1alpha1"
	trafficv1alpha1 "github.com/ambit-mesh/ambit/apis/traffic/v1alpha1"
)

// TestEnvtest starts one apiserver and runs its subtests against it.
func TestEnvtest(t *testing.T) {
	env := Start(t)

	t.Run("CRDsInstalled", func(t *testing.T) {
		want := []string{
			"httproutes.gateway.networking.k8s.io", "grpcroutes.gateway.networking.k8s.io",
			"gateways.gateway.networking.k8s.io", "gatewayclasses.gateway.networking.k8s.io",
			"referencegrants.gateway.networking.k8s.io",
			"authorizationpolicies.security.ambit.dev", "peerauthentications.security.ambit.dev",
			"backendpolicies.traffic.ambit.dev", "faultinjections.traffic.ambit.dev",
		}
		have := map[string]bool{}
		for _, crd := range env.CRDs {
			have[crd.Name] = true
		}
		for _, name := range want {
			if !have[name] {
				t.Errorf("CRD %s not installed (have %d CRDs)", name, len(have))
			}
		}
		// The experimental channel is what was installed.
		for _, c := range env.CRDs {
			if c.Name == "httproutes.gateway.networking.k8s.io" &&
				c.Annotations["gateway.networking.k8s.io/channel"] != "experimental" {
				t.Errorf("HTTPRoute CRD channel = %q, want experimental", c.Annotations["gateway.networking.k8s.io/channel"])
			}
		}
	})

	t.Run("AmbientNamespaceServiceHTTPRoute", func(t *testing.T) {
		ctx := t.Context()
		c := env.Client
		ns := env.Namespace(t, "shop", map[string]string{"ambit.dev/dataplane-mode": "ambient"})

		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "reviews", Namespace: ns},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"app": "reviews"},
				Ports:    []corev1.ServicePort{{Name: "http", Port: 9080, AppProtocol: ptr.To("http")}},
			},
		}
		if err := c.Create(ctx, svc); err != nil {
			t.Fatalf("create service: %v", err)
		}
		route := &gwapiv1.HTTPRoute{
			ObjectMeta: metav1.ObjectMeta{Name: "reviews-split", Namespace: ns},
			Spec: gwapiv1.HTTPRouteSpec{
				CommonRouteSpec: gwapiv1.CommonRouteSpec{ParentRefs: []gwapiv1.ParentReference{{
					Group: ptr.To(gwapiv1.Group("")), Kind: ptr.To(gwapiv1.Kind("Service")),
					Name: "reviews", Port: ptr.To(gwapiv1.PortNumber(9080)),
				}}},
				Rules: []gwapiv1.HTTPRouteRule{{
					BackendRefs: []gwapiv1.HTTPBackendRef{
						{BackendRef: gwapiv1.BackendRef{BackendObjectReference: gwapiv1.BackendObjectReference{Name: "reviews-v1", Port: ptr.To(gwapiv1.PortNumber(9080))}, Weight: ptr.To(int32(90))}},
						{BackendRef: gwapiv1.BackendRef{BackendObjectReference: gwapiv1.BackendObjectReference{Name: "reviews-v2", Port: ptr.To(gwapiv1.PortNumber(9080))}, Weight: ptr.To(int32(10))}},
					},
				}},
			},
		}
		if err := c.Create(ctx, route); err != nil {
			t.Fatalf("create httproute: %v", err)
		}

		var gotNS corev1.Namespace
		if err := c.Get(ctx, types.NamespacedName{Name: ns}, &gotNS); err != nil {
			t.Fatal(err)
		}
		if gotNS.Labels["ambit.dev/dataplane-mode"] != "ambient" {
			t.Errorf("namespace labels = %v", gotNS.Labels)
		}
		var gotSvc corev1.Service
		if err := c.Get(ctx, client.ObjectKeyFromObject(svc), &gotSvc); err != nil {
			t.Fatal(err)
		}
		if gotSvc.Spec.ClusterIP == "" || gotSvc.Spec.Ports[0].Port != 9080 {
			t.Errorf("service read back as %+v", gotSvc.Spec)
		}
		var gotRoute gwapiv1.HTTPRoute
		if err := c.Get(ctx, client.ObjectKeyFromObject(route), &gotRoute); err != nil {
			t.Fatal(err)
		}
		pr := gotRoute.Spec.ParentRefs[0]
		if pr.Kind == nil || *pr.Kind != "Service" || pr.Name != "reviews" {
			t.Errorf("parentRef read back as %+v", pr)
		}
		if n := len(gotRoute.Spec.Rules[0].BackendRefs); n != 2 || *gotRoute.Spec.Rules[0].BackendRefs[1].Weight != 10 {
			t.Errorf("backendRefs read back as %+v", gotRoute.Spec.Rules[0].BackendRefs)
		}
		// The CRD's defaulting ran on the server: a rule with no match gets "/" PathPrefix.
		m := gotRoute.Spec.Rules[0].Matches
		if len(m) != 1 || m[0].Path == nil || *m[0].Path.Value != "/" {
			t.Errorf("default match not applied by the apiserver: %+v", m)
		}
	})

	t.Run("GatewayAPIValidationRejectsBadRoute", func(t *testing.T) {
		ns := env.Namespace(t, "bad", nil)
		route := &gwapiv1.HTTPRoute{
			ObjectMeta: metav1.ObjectMeta{Name: "bad", Namespace: ns},
			Spec: gwapiv1.HTTPRouteSpec{Rules: []gwapiv1.HTTPRouteRule{{
				Matches: []gwapiv1.HTTPRouteMatch{{Path: &gwapiv1.HTTPPathMatch{
					Type: ptr.To(gwapiv1.PathMatchPathPrefix), Value: ptr.To("no-leading-slash"),
				}}},
			}}},
		}
		err := env.Client.Create(t.Context(), route)
		if !apierrors.IsInvalid(err) {
			t.Fatalf("create route with path %q: err = %v, want Invalid", "no-leading-slash", err)
		}
	})

	t.Run("AmbitCRDValidation", func(t *testing.T) {
		ctx := t.Context()
		ns := env.Namespace(t, "policy", map[string]string{"ambit.dev/dataplane-mode": "ambient"})
		good := &securityv1alpha1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "allow-frontend", Namespace: ns},
			Spec: securityv1alpha1.AuthorizationPolicySpec{
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "reviews"}},
				Rules: []securityv1alpha1.Rule{{From: []securityv1alpha1.Source{{
					Principals: []string{"spiffe://cluster.local/ns/" + ns + "/sa/frontend"},
				}}}},
			},
		}
		if err := env.Client.Create(ctx, good); err != nil {
			t.Fatalf("create valid AuthorizationPolicy: %v", err)
		}
		var got securityv1alpha1.AuthorizationPolicy
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(good), &got); err != nil {
			t.Fatal(err)
		}
		if got.Spec.Action != securityv1alpha1.ActionAllow {
			t.Errorf("action defaulted to %q, want ALLOW", got.Spec.Action)
		}

		both := good.DeepCopy()
		both.ObjectMeta = metav1.ObjectMeta{Name: "both", Namespace: ns}
		both.Spec.TargetRefs = []securityv1alpha1.PolicyTargetReference{{Kind: "Service", Name: "reviews"}}
		err := env.Client.Create(ctx, both)
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "not both") {
			t.Errorf("policy with targetRefs and selector: err = %v, want Invalid naming the rule", err)
		}

		badKind := good.DeepCopy()
		badKind.ObjectMeta = metav1.ObjectMeta{Name: "bad-kind", Namespace: ns}
		badKind.Spec.Selector = nil
		badKind.Spec.TargetRefs = []securityv1alpha1.PolicyTargetReference{{Kind: "Pod", Name: "x"}}
		if err := env.Client.Create(ctx, badKind); !apierrors.IsInvalid(err) {
			t.Errorf("policy targeting a Pod: err = %v, want Invalid", err)
		}

		for i, ref := range []securityv1alpha1.PolicyTargetReference{
			{Kind: "Service", Name: "reviews"},
			{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "waypoint"},
		} {
			p := good.DeepCopy()
			p.ObjectMeta = metav1.ObjectMeta{Name: fmt.Sprintf("target-%d", i), Namespace: ns}
			p.Spec.Selector = nil
			p.Spec.TargetRefs = []securityv1alpha1.PolicyTargetReference{ref}
			if err := env.Client.Create(ctx, p); err != nil {
				t.Errorf("policy targeting %s %s: %v", ref.Kind, ref.Name, err)
			}
		}

		blocks := good.DeepCopy()
		blocks.ObjectMeta = metav1.ObjectMeta{Name: "ip-blocks", Namespace: ns}
		blocks.Spec.Rules = []securityv1alpha1.Rule{{From: []securityv1alpha1.Source{{
			IPBlocks: []securityv1alpha1.IPBlock{"10.0.0.0/8", "192.0.2.1", "2001:db8::/32"}, NotIPBlocks: []securityv1alpha1.IPBlock{"10.1.2.3"},
		}}}}
		if err := env.Client.Create(ctx, blocks); err != nil {
			t.Errorf("policy with ipBlocks and notIpBlocks: %v", err)
		}
		for field, src := range map[string]securityv1alpha1.Source{
			"ipBlocks":    {IPBlocks: []securityv1alpha1.IPBlock{"10.0.0.0/8", "ten/8"}},
			"notIpBlocks": {NotIPBlocks: []securityv1alpha1.IPBlock{"10.0.0.0/33"}},
		} {
			bad := good.DeepCopy()
			bad.ObjectMeta = metav1.ObjectMeta{Name: "bad-" + strings.ToLower(field), Namespace: ns}
			bad.Spec.Rules = []securityv1alpha1.Rule{{From: []securityv1alpha1.Source{src}}}
			err := env.Client.Create(ctx, bad)
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), field) || !strings.Contains(err.Error(), "must be an IP address or a CIDR block") {
				t.Errorf("policy with a bad %s entry: err = %v, want Invalid naming the field", field, err)
			}
		}

		badMode := &securityv1alpha1.PeerAuthentication{
			ObjectMeta: metav1.ObjectMeta{Name: "bad-mode", Namespace: ns},
			Spec:       securityv1alpha1.PeerAuthenticationSpec{MTLS: &securityv1alpha1.MutualTLS{Mode: "SOMETIMES"}},
		}
		if err := env.Client.Create(ctx, badMode); !apierrors.IsInvalid(err) {
			t.Errorf("PeerAuthentication mode SOMETIMES: err = %v, want Invalid", err)
		}
		metricsPort := &securityv1alpha1.PeerAuthentication{
			ObjectMeta: metav1.ObjectMeta{Name: "metrics-port", Namespace: ns},
			Spec: securityv1alpha1.PeerAuthenticationSpec{
				Selector:      &metav1.LabelSelector{MatchLabels: map[string]string{"app": "reviews"}},
				MTLS:          &securityv1alpha1.MutualTLS{Mode: securityv1alpha1.MTLSStrict},
				PortLevelMTLS: map[string]securityv1alpha1.MutualTLS{"9090": {Mode: securityv1alpha1.MTLSPermissive}},
			},
		}
		if err := env.Client.Create(ctx, metricsPort); err != nil {
			t.Errorf("PeerAuthentication with portLevelMtls: %v", err)
		}
		for name, c := range map[string]struct {
			spec securityv1alpha1.PeerAuthenticationSpec
			msg  string
		}{
			"ports-no-selector": {securityv1alpha1.PeerAuthenticationSpec{
				PortLevelMTLS: map[string]securityv1alpha1.MutualTLS{"9090": {Mode: securityv1alpha1.MTLSPermissive}}}, "portLevelMtls needs a selector"},
			"ports-empty-selector": {securityv1alpha1.PeerAuthenticationSpec{Selector: &metav1.LabelSelector{},
				PortLevelMTLS: map[string]securityv1alpha1.MutualTLS{"9090": {Mode: securityv1alpha1.MTLSPermissive}}}, "portLevelMtls needs a selector"},
			"named-port": {securityv1alpha1.PeerAuthenticationSpec{Selector: metricsPort.Spec.Selector,
				PortLevelMTLS: map[string]securityv1alpha1.MutualTLS{"metrics": {Mode: securityv1alpha1.MTLSPermissive}}}, "keys must be port numbers"},
			"port-70000": {securityv1alpha1.PeerAuthenticationSpec{Selector: metricsPort.Spec.Selector,
				PortLevelMTLS: map[string]securityv1alpha1.MutualTLS{"70000": {Mode: securityv1alpha1.MTLSPermissive}}}, "keys must be port numbers"},
		} {
			bad := &securityv1alpha1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: c.spec}
			if err := env.Client.Create(ctx, bad); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("PeerAuthentication %s: err = %v, want Invalid saying %q", name, err, c.msg)
			}
		}
	})

	t.Run("TrafficCRDValidation", func(t *testing.T) {
		ctx := t.Context()
		ns := env.Namespace(t, "traffic", nil)
		bp := &trafficv1alpha1.BackendPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "reviews", Namespace: ns},
			Spec: trafficv1alpha1.BackendPolicySpec{
				TargetRefs:       []trafficv1alpha1.ServiceReference{{Kind: "Service", Name: "reviews"}},
				OutlierDetection: &trafficv1alpha1.OutlierDetection{},
			},
		}
		if err := env.Client.Create(ctx, bp); err != nil {
			t.Fatalf("create BackendPolicy: %v", err)
		}
		od := bp.Spec.OutlierDetection
		if od.Consecutive5xxErrors != 5 || od.Interval != "10s" || od.BaseEjectionTime != "30s" || od.MaxEjectionPercent != 10 {
			t.Errorf("outlier detection defaults not applied: %+v", *od)
		}
		badTarget := bp.DeepCopy()
		badTarget.ObjectMeta = metav1.ObjectMeta{Name: "pod-target", Namespace: ns}
		badTarget.Spec.TargetRefs[0].Kind = "Pod"
		if err := env.Client.Create(ctx, badTarget); !apierrors.IsInvalid(err) {
			t.Errorf("BackendPolicy targeting a Pod: err = %v, want Invalid", err)
		}
		badDuration := bp.DeepCopy()
		badDuration.ObjectMeta = metav1.ObjectMeta{Name: "bad-duration", Namespace: ns}
		badDuration.Spec.OutlierDetection.Interval = "ten seconds"
		if err := env.Client.Create(ctx, badDuration); !apierrors.IsInvalid(err) {
			t.Errorf("BackendPolicy with interval %q: err = %v, want Invalid", "ten seconds", err)
		}

		fi := &trafficv1alpha1.FaultInjection{
			ObjectMeta: metav1.ObjectMeta{Name: "abort-10", Namespace: ns},
			Spec: trafficv1alpha1.FaultInjectionSpec{
				Abort: &trafficv1alpha1.FaultAbort{HTTPStatus: ptr.To(int32(503)), Percent: 10},
			},
		}
		if err := env.Client.Create(ctx, fi); err != nil {
			t.Fatalf("create FaultInjection: %v", err)
		}
		for name, spec := range map[string]trafficv1alpha1.FaultInjectionSpec{
			"empty":        {},
			"two-statuses": {Abort: &trafficv1alpha1.FaultAbort{HTTPStatus: ptr.To(int32(503)), GRPCStatus: ptr.To(int32(14)), Percent: 1}},
			"no-status":    {Abort: &trafficv1alpha1.FaultAbort{Percent: 1}},
			"percent-101":  {Delay: &trafficv1alpha1.FaultDelay{FixedDelay: "1s", Percent: 101}},
		} {
			bad := &trafficv1alpha1.FaultInjection{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: spec}
			if err := env.Client.Create(ctx, bad); !apierrors.IsInvalid(err) {
				t.Errorf("FaultInjection %s: err = %v, want Invalid", name, err)
			}
		}
	})
}
