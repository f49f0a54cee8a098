package translate

import (
	"fmt"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	securityv1alpha1 "github.com/ambit-mesh/ambit/apis/security/v1alpha1"
	trafficv1alpha1 "github.com/ambit-mesh/ambit/apis/traffic/v1alpha1"
)

// largeInput is a mesh of nsCount namespaces holding services Services with
// podsPer Pods each (one EndpointSlice per Service), a waypoint per
// namespace, an HTTPRoute on every tenth Service, an AuthorizationPolicy and
// a BackendPolicy on every twentieth, and a PeerAuthentication per
// namespace.
func largeInput(nsCount, services, podsPer int) Input {
	var in Input
	created := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	for n := range nsCount {
		ns := fmt.Sprintf("ns-%d", n)
		in.Namespaces = append(in.Namespaces, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{LabelDataplaneMode: DataplaneModeAmbient, LabelUseWaypoint: "waypoint"}}})
		in.Gateways = append(in.Gateways, gwapiv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Namespace: ns},
			Spec: gwapiv1.GatewaySpec{GatewayClassName: WaypointClassName,
				Listeners: []gwapiv1.Listener{{Name: "mesh", Port: WaypointListenerPort, Protocol: WaypointListenerProtocol}}}})
		in.Services = append(in.Services, corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Namespace: ns, Labels: map[string]string{LabelGatewayName: "waypoint"}},
			Spec:       corev1.ServiceSpec{ClusterIP: fmt.Sprintf("10.96.%d.1", 200+n), Ports: []corev1.ServicePort{{Name: "mesh", Port: 15008}}}})
		in.PeerAuthentications = append(in.PeerAuthentications, securityv1alpha1.PeerAuthentication{
			ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: ns},
			Spec:       securityv1alpha1.PeerAuthenticationSpec{MTLS: &securityv1alpha1.MutualTLS{Mode: securityv1alpha1.MTLSStrict}}})
	}
	for s := range services {
		ns := fmt.Sprintf("ns-%d", s%nsCount)
		name := fmt.Sprintf("svc-%d", s)
		in.Services = append(in.Services, corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: corev1.ServiceSpec{
				ClusterIP: fmt.Sprintf("10.97.%d.%d", s/250, s%250+1),
				Selector:  map[string]string{"app": name},
				Ports: []corev1.ServicePort{
					{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
					{Name: "grpc", Port: 9090, TargetPort: intstr.FromString("grpc")},
				},
			}})
		es := discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name + "-abc", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))},
				{Name: ptr("grpc"), Port: ptr(int32(9091))}},
		}
		for p := range podsPer {
			i := s*podsPer + p
			ip := fmt.Sprintf("10.%d.%d.%d", 100+i/65536, i/256%256, i%256)
			pod := fmt.Sprintf("%s-%d", name, p)
			in.Pods = append(in.Pods, corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: ns, UID: types.UID(fmt.Sprintf("uid-%d", i)),
					Labels: map[string]string{"app": name, "version": "v1", "pod-template-hash": "5d8f"},
					OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet",
						Name: name + "-5d8f", Controller: ptr(true)}}},
				Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%50), ServiceAccountName: name,
					Containers: []corev1.Container{{Name: "app", Image: "app"}}},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
					Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
			})
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod}})
		}
		in.EndpointSlices = append(in.EndpointSlices, es)
		if s%10 == 0 {
			port := gwapiv1.PortNumber(80)
			in.HTTPRoutes = append(in.HTTPRoutes, gwapiv1.HTTPRoute{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, CreationTimestamp: created},
				Spec: gwapiv1.HTTPRouteSpec{
					CommonRouteSpec: gwapiv1.CommonRouteSpec{ParentRefs: []gwapiv1.ParentReference{
						{Group: ptr(gwapiv1.Group("")), Kind: ptr(gwapiv1.Kind("Service")), Name: gwapiv1.ObjectName(name), Port: &port}}},
					Rules: []gwapiv1.HTTPRouteRule{
						{Matches: []gwapiv1.HTTPRouteMatch{{Path: &gwapiv1.HTTPPathMatch{Type: ptr(gwapiv1.PathMatchPathPrefix), Value: ptr("/v2")}}},
							BackendRefs: []gwapiv1.HTTPBackendRef{
								{BackendRef: gwapiv1.BackendRef{BackendObjectReference: gwapiv1.BackendObjectReference{Name: gwapiv1.ObjectName(name), Port: &port}, Weight: ptr(int32(90))}},
								{BackendRef: gwapiv1.BackendRef{BackendObjectReference: gwapiv1.BackendObjectReference{Name: gwapiv1.ObjectName(fmt.Sprintf("svc-%d", (s+nsCount)%services)), Port: &port}, Weight: ptr(int32(10))}},
							}},
						{BackendRefs: []gwapiv1.HTTPBackendRef{{BackendRef: gwapiv1.BackendRef{BackendObjectReference: gwapiv1.BackendObjectReference{Name: gwapiv1.ObjectName(name), Port: &port}}}}},
					},
				}})
		}
		if s%20 == 0 {
			in.AuthorizationPolicies = append(in.AuthorizationPolicies, securityv1alpha1.AuthorizationPolicy{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
				Spec: securityv1alpha1.AuthorizationPolicySpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
					Rules: []securityv1alpha1.Rule{{From: []securityv1alpha1.Source{{Namespaces: []string{ns}}}, To: []securityv1alpha1.Operation{{Ports: []int32{8080}}}}}}})
			in.BackendPolicies = append(in.BackendPolicies, trafficv1alpha1.BackendPolicy{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
				Spec: trafficv1alpha1.BackendPolicySpec{TargetRefs: []trafficv1alpha1.ServiceReference{{Kind: "Service", Name: name}},
					Limits: &trafficv1alpha1.ConnectionLimits{MaxConnections: 100}}})
		}
	}
	return in
}

// heapObjects reads the bytes of live and not yet swept heap objects.
func heapObjects() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// BenchmarkTranslateLarge translates 1,000 Services and 10,000 Pods (with
// their EndpointSlices) in 5 namespaces with waypoints, 100 HTTPRoutes, 50
// AuthorizationPolicies and 50 BackendPolicies.
//
// Memory: B/op (-benchmem) is everything allocated per translation.
// peak-MiB is the largest heap growth seen during a translation: after a
// GC, a goroutine samples runtime/metrics /memory/classes/heap/objects:bytes
// (live plus not yet swept objects) every 500µs while Translate runs, minus
// the value before the call. retained-MiB is the heap the Output keeps after
// a GC. The input itself (about what a controller's caches hold) is not
// counted in either; input-MiB is its size.
func BenchmarkTranslateLarge(b *testing.B) {
	runtime.GC()
	empty := heapObjects()
	in := largeInput(5, 1000, 10)
	runtime.GC()
	inputMiB := float64(heapObjects()-min(empty, heapObjects())) / (1 << 20)
	out := Translate(in, testOptions) // warm up, and check the size
	if len(out.Workloads) != 10000 || len(out.Services) != 1005 {
		b.Fatalf("translated %d workloads and %d services", len(out.Workloads), len(out.Services))
	}
	out = Output{}
	var peak uint64
	for b.Loop() {
		b.StopTimer()
		runtime.GC()
		base := heapObjects()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var high uint64
		wg.Go(func() {
			t := time.NewTicker(500 * time.Microsecond)
			defer t.Stop()
			for {
				if h := heapObjects(); h > high {
					high = h
				}
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		})
		b.StartTimer()
		out = Translate(in, testOptions)
		b.StopTimer()
		close(stop)
		wg.Wait()
		if h := heapObjects(); h > high {
			high = h
		}
		peak = max(peak, high-min(base, high))
		b.StartTimer()
	}
	b.StopTimer()
	runtime.GC()
	before := heapObjects()
	runtime.KeepAlive(out)
	out = Output{}
	runtime.GC()
	retained := before - min(heapObjects(), before)
	b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
	b.ReportMetric(float64(retained)/(1<<20), "retained-MiB")
	b.ReportMetric(inputMiB, "input-MiB")
	_ = out
}
