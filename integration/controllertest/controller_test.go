//go:build envtest

package controllertest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapiv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/deploy"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/integration/kubetest"
)

// TestController runs one apiserver and one leader replica for every
// subtest; LeaderElection adds a second replica and stops the first, so it
// runs last.
func TestController(t *testing.T) {
	env := kubetest.Start(t)
	c := env.Client
	ctx := t.Context()
	must(t, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: systemNS}}))
	installRBAC(t, env)
	// The GatewayClass ambit-waypoint is the controller's to create.
	a := startController(t, env, "a")
	eventually(t, "replica a to lead", func() error {
		if !a.leader() {
			return errors.New("not elected")
		}
		return nil
	})

	t.Run("Ambitctl", func(t *testing.T) { testAmbitctl(t, env) })
	t.Run("Waypoint", func(t *testing.T) { testWaypoint(t, env) })
	t.Run("RouteStatus", func(t *testing.T) { testRouteStatus(t, env) })
	t.Run("PolicyStatus", func(t *testing.T) { testPolicyStatus(t, env) })
	t.Run("XDS", func(t *testing.T) { testXDS(t, env, a) })
	t.Run("GatewayCleanup", func(t *testing.T) { testGatewayCleanup(t, env) })
	t.Run("LeaderElection", func(t *testing.T) { testLeaderElection(t, env, a) })
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func waypointGateway(ns, name string) *gwapiv1.Gateway {
	return &gwapiv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: gwapiv1.GatewaySpec{
			GatewayClassName: translate.WaypointClassName,
			Listeners: []gwapiv1.Listener{{
				Name: "mesh", Port: translate.WaypointListenerPort, Protocol: translate.WaypointListenerProtocol,
			}},
		},
	}
}

// children returns a Gateway's ServiceAccount, Deployment and Service, or
// an error naming the first one missing (its root ConfigMap too).
func children(t testing.TB, c client.Client, ns, name string) (*corev1.ServiceAccount, *appsv1.Deployment, *corev1.Service, error) {
	key := types.NamespacedName{Namespace: ns, Name: name}
	sa, dep, svc := &corev1.ServiceAccount{}, &appsv1.Deployment{}, &corev1.Service{}
	for _, o := range []client.Object{sa, dep, svc} {
		if err := c.Get(t.Context(), key, o); err != nil {
			return nil, nil, nil, fmt.Errorf("%T: %w", o, err)
		}
	}
	if _, err := rootConfigMap(t, c, ns, name); err != nil {
		return nil, nil, nil, err
	}
	return sa, dep, svc, nil
}

// rootConfigMap returns a Gateway's root ConfigMap.
func rootConfigMap(t testing.TB, c client.Client, ns, name string) (*corev1.ConfigMap, error) {
	cm := &corev1.ConfigMap{}
	if err := c.Get(t.Context(), types.NamespacedName{Namespace: ns, Name: deploy.RootConfigMapName(name)}, cm); err != nil {
		return nil, fmt.Errorf("root ConfigMap: %w", err)
	}
	return cm, nil
}

func condition(conds []metav1.Condition, typ string) (metav1.Condition, error) {
	c := meta.FindStatusCondition(conds, typ)
	if c == nil {
		return metav1.Condition{}, fmt.Errorf("no %s condition in %+v", typ, conds)
	}
	return *c, nil
}

func wantCondition(conds []metav1.Condition, typ string, status metav1.ConditionStatus, reason string) error {
	c, err := condition(conds, typ)
	if err != nil {
		return err
	}
	if c.Status != status || (reason != "" && c.Reason != reason) {
		return fmt.Errorf("%s is %s/%s (%s), want %s/%s", typ, c.Status, c.Reason, c.Message, status, reason)
	}
	return nil
}

// (a) A waypoint Gateway gets its ServiceAccount, Deployment and Service,
// controlled by it, and GatewayClass and Gateway status.
func testWaypoint(t *testing.T, env *kubetest.Env) {
	c, ctx := env.Client, t.Context()
	ns := env.Namespace(t, "wp", nil)
	gw := waypointGateway(ns, "waypoint")
	must(t, c.Create(ctx, gw))

	var sa *corev1.ServiceAccount
	var dep *appsv1.Deployment
	var svc *corev1.Service
	eventually(t, "the waypoint's children", func() (err error) {
		sa, dep, svc, err = children(t, c, ns, "waypoint")
		return err
	})
	root, err := rootConfigMap(t, c, ns, "waypoint")
	must(t, err)
	for _, o := range []client.Object{sa, root, dep, svc} {
		ref := metav1.GetControllerOf(o)
		if ref == nil || ref.UID != gw.UID || ref.Kind != "Gateway" || ref.APIVersion != "gateway.networking.k8s.io/v1" ||
			!ptr.Deref(ref.BlockOwnerDeletion, false) {
			t.Errorf("%T owner reference %+v, want a controlling, blocking reference to Gateway %s", o, ref, gw.UID)
		}
		if o.GetLabels()[deploy.LabelGatewayName] != "waypoint" {
			t.Errorf("%T labels %v", o, o.GetLabels())
		}
	}
	if img := dep.Spec.Template.Spec.Containers[0].Image; img != waypointImage {
		t.Errorf("waypoint image %q, want %q", img, waypointImage)
	}
	// The waypoint gets the mesh root in its namespace, mounted where
	// AMBIT_CA_ROOT_FILE points.
	if root.Data[deploy.CARootKey] != testRootPEM {
		t.Errorf("root ConfigMap data %v, want the mesh root", root.Data)
	}
	podSpec := dep.Spec.Template.Spec
	var rootVolume bool
	for _, v := range podSpec.Volumes {
		rootVolume = rootVolume || (v.Name == "ca-root" && v.ConfigMap != nil && v.ConfigMap.Name == root.Name)
	}
	var rootEnv, rootMount bool
	for _, e := range podSpec.Containers[0].Env {
		rootEnv = rootEnv || (e.Name == deploy.EnvCARootFile && e.Value == "/etc/ambit/ca/root-cert.pem")
	}
	for _, m := range podSpec.Containers[0].VolumeMounts {
		rootMount = rootMount || (m.Name == "ca-root" && m.MountPath == "/etc/ambit/ca")
	}
	if !rootVolume || !rootEnv || !rootMount {
		t.Errorf("root volume %v, %s %v, mount at /etc/ambit/ca %v: want all", rootVolume, deploy.EnvCARootFile, rootEnv, rootMount)
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.Ports[0].Port != 15008 || ptr.Deref(svc.Spec.Ports[0].AppProtocol, "") != deploy.AppProtocolHBONE {
		t.Errorf("waypoint Service %+v", svc.Spec)
	}

	eventually(t, "GatewayClass created by the controller and Accepted", func() error {
		gc := &gwapiv1.GatewayClass{}
		if err := c.Get(ctx, types.NamespacedName{Name: translate.WaypointClassName}, gc); err != nil {
			return err
		}
		if gc.Spec.ControllerName != translate.ControllerName || gc.Labels[deploy.LabelPartOf] != deploy.PartOf {
			return fmt.Errorf("GatewayClass controllerName %q labels %v", gc.Spec.ControllerName, gc.Labels)
		}
		return wantCondition(gc.Status.Conditions, "Accepted", metav1.ConditionTrue, "Accepted")
	})
	// Programmed once the waypoint Service has a cluster IP (envtest has no
	// kubelet: the Deployment never becomes ready, so readiness is not
	// part of Programmed).
	eventually(t, "Gateway Accepted and Programmed with the Service address", func() error {
		must(t, c.Get(ctx, client.ObjectKeyFromObject(gw), gw))
		if err := wantCondition(gw.Status.Conditions, "Accepted", metav1.ConditionTrue, "Accepted"); err != nil {
			return err
		}
		if err := wantCondition(gw.Status.Conditions, "Programmed", metav1.ConditionTrue, "Programmed"); err != nil {
			return err
		}
		if len(gw.Status.Addresses) == 0 || gw.Status.Addresses[0].Value != svc.Spec.ClusterIP {
			return fmt.Errorf("addresses %+v, want %s", gw.Status.Addresses, svc.Spec.ClusterIP)
		}
		return nil
	})
	accepted, _ := condition(gw.Status.Conditions, "Accepted")
	if accepted.ObservedGeneration != gw.Generation || accepted.LastTransitionTime.IsZero() {
		t.Errorf("Accepted condition %+v: want observedGeneration %d and a transition time", accepted, gw.Generation)
	}

	// A settled world causes no writes: poke the reconciler with an
	// unrelated Namespace and check nothing was rewritten.
	time.Sleep(500 * time.Millisecond)
	_, dep, svc, err = children(t, c, ns, "waypoint")
	must(t, err)
	must(t, c.Get(ctx, client.ObjectKeyFromObject(gw), gw))
	before := []string{dep.ResourceVersion, svc.ResourceVersion, gw.ResourceVersion}
	env.Namespace(t, "poke", nil)
	time.Sleep(time.Second)
	_, dep, svc, err = children(t, c, ns, "waypoint")
	must(t, err)
	must(t, c.Get(ctx, client.ObjectKeyFromObject(gw), gw))
	if after := []string{dep.ResourceVersion, svc.ResourceVersion, gw.ResourceVersion}; fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("resource versions moved without a change: %v -> %v", before, after)
	}
	if lt, _ := condition(gw.Status.Conditions, "Accepted"); !lt.LastTransitionTime.Equal(&accepted.LastTransitionTime) {
		t.Errorf("Accepted lastTransitionTime moved: %v -> %v", accepted.LastTransitionTime, lt.LastTransitionTime)
	}

	// A deleted or edited child is put back.
	must(t, c.Delete(ctx, root))
	eventually(t, "the deleted root ConfigMap to come back", func() error {
		cm, err := rootConfigMap(t, c, ns, "waypoint")
		if err != nil {
			return err
		}
		if cm.UID == root.UID || cm.Data[deploy.CARootKey] != testRootPEM {
			return errors.New("still the old ConfigMap, or no root in it")
		}
		return nil
	})
	must(t, c.Delete(ctx, dep))
	eventually(t, "the deleted Deployment to come back", func() error {
		d := &appsv1.Deployment{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(dep), d); err != nil {
			return err
		}
		if d.UID == dep.UID {
			return errors.New("still the old Deployment")
		}
		return nil
	})
	eventually(t, "editing the Deployment's image", func() error {
		d := &appsv1.Deployment{}
		must(t, c.Get(ctx, client.ObjectKeyFromObject(dep), d))
		d.Spec.Template.Spec.Containers[0].Image = "example.invalid/tampered:1"
		return c.Update(ctx, d)
	})
	eventually(t, "the edited Deployment to be restored", func() error {
		d := &appsv1.Deployment{}
		must(t, c.Get(ctx, client.ObjectKeyFromObject(dep), d))
		if img := d.Spec.Template.Spec.Containers[0].Image; img != waypointImage {
			return fmt.Errorf("image %q", img)
		}
		return nil
	})

	// An object of a child's name that the Gateway does not control is
	// never taken over; the Gateway gets a Warning Event.
	must(t, c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "taken"}}))
	taken := waypointGateway(ns, "taken")
	must(t, c.Create(ctx, taken))
	eventually(t, "the other children of a Gateway whose ServiceAccount name is taken", func() error {
		_, _, _, err := children(t, c, ns, "taken")
		return err
	})
	sa2 := &corev1.ServiceAccount{}
	must(t, c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "taken"}, sa2))
	if len(sa2.OwnerReferences) != 0 || sa2.Labels[deploy.LabelManagedBy] != "" {
		t.Errorf("a foreign ServiceAccount was taken over: %+v", sa2.ObjectMeta)
	}
	// The Warning Event is written with the controller's RBAC.
	eventually(t, "a WaypointDeployFailed Event on the Gateway", func() error {
		var evs eventsv1.EventList
		if err := c.List(ctx, &evs, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Regarding.Name == "taken" && e.Regarding.Kind == "Gateway" && e.Reason == "WaypointDeployFailed" && e.Type == corev1.EventTypeWarning {
				return nil
			}
		}
		return fmt.Errorf("none among %d events", len(evs.Items))
	})
}

func service(ns, name string, port int32) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: port, Protocol: corev1.ProtocolTCP}},
		},
	}
}

func serviceParent(name string) gwapiv1.ParentReference {
	return gwapiv1.ParentReference{Group: ptr.To(gwapiv1.Group("")), Kind: ptr.To(gwapiv1.Kind("Service")), Name: gwapiv1.ObjectName(name)}
}

func backend(ns, name string, port int32) gwapiv1.HTTPBackendRef {
	ref := gwapiv1.HTTPBackendRef{BackendRef: gwapiv1.BackendRef{BackendObjectReference: gwapiv1.BackendObjectReference{
		Name: gwapiv1.ObjectName(name), Port: ptr.To(gwapiv1.PortNumber(port)),
	}}}
	if ns != "" {
		ref.Namespace = ptr.To(gwapiv1.Namespace(ns))
	}
	return ref
}

func route(ns, name, parent string, backends ...gwapiv1.HTTPBackendRef) *gwapiv1.HTTPRoute {
	return &gwapiv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: gwapiv1.HTTPRouteSpec{
			CommonRouteSpec: gwapiv1.CommonRouteSpec{ParentRefs: []gwapiv1.ParentReference{serviceParent(parent)}},
			Rules:           []gwapiv1.HTTPRouteRule{{BackendRefs: backends}},
		},
	}
}

// ambitParent returns the route's status entry of Ambit's for a parent
// Service.
func ambitParent(r *gwapiv1.HTTPRoute, parent string) (gwapiv1.RouteParentStatus, error) {
	for _, p := range r.Status.Parents {
		if p.ControllerName == translate.ControllerName && string(p.ParentRef.Name) == parent {
			return p, nil
		}
	}
	return gwapiv1.RouteParentStatus{}, fmt.Errorf("no Ambit parent status for %s in %+v", parent, r.Status.Parents)
}

// (b) HTTPRoute status per Service parentRef: ResolvedRefs reasons, the
// ReferenceGrant turning RefNotPermitted into ResolvedRefs, and other
// controllers' entries left alone.
func testRouteStatus(t *testing.T, env *kubetest.Env) {
	c, ctx := env.Client, t.Context()
	shop := env.Namespace(t, "shop", nil)
	db := env.Namespace(t, "db", nil)
	for _, s := range []*corev1.Service{service(shop, "reviews", 9080), service(shop, "reviews-v1", 9080), service(db, "ratings", 8080)} {
		must(t, c.Create(ctx, s))
	}

	good := route(shop, "good", "reviews", backend("", "reviews-v1", 9080))
	missing := route(shop, "missing", "reviews", backend("", "nope", 9080))
	cross := route(shop, "cross", "reviews", backend(db, "ratings", 8080))
	for _, r := range []*gwapiv1.HTTPRoute{good, missing, cross} {
		must(t, c.Create(ctx, r))
	}
	check := func(r *gwapiv1.HTTPRoute, status metav1.ConditionStatus, reason string) func() error {
		return func() error {
			if err := c.Get(ctx, client.ObjectKeyFromObject(r), r); err != nil {
				return err
			}
			p, err := ambitParent(r, "reviews")
			if err != nil {
				return err
			}
			if err := wantCondition(p.Conditions, "Accepted", metav1.ConditionTrue, "Accepted"); err != nil {
				return err
			}
			return wantCondition(p.Conditions, "ResolvedRefs", status, reason)
		}
	}
	eventually(t, "ResolvedRefs True for an existing backend", check(good, metav1.ConditionTrue, "ResolvedRefs"))
	eventually(t, "ResolvedRefs False/BackendNotFound", check(missing, metav1.ConditionFalse, "BackendNotFound"))
	eventually(t, "ResolvedRefs False/RefNotPermitted", check(cross, metav1.ConditionFalse, "RefNotPermitted"))

	// Another controller's entry survives Ambit's writes.
	other := gwapiv1.RouteParentStatus{
		ParentRef: gwapiv1.ParentReference{Name: "edge"}, ControllerName: "example.com/other",
		Conditions: []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", Message: "theirs", LastTransitionTime: metav1.Now()}},
	}
	eventually(t, "adding another controller's parent status", func() error {
		must(t, c.Get(ctx, client.ObjectKeyFromObject(cross), cross))
		cross.Status.Parents = append(cross.Status.Parents, other)
		return c.Status().Update(ctx, cross)
	})

	grant := &gwapiv1beta1.ReferenceGrant{
		ObjectMeta: metav1.ObjectMeta{Namespace: db, Name: "shop-routes"},
		Spec: gwapiv1beta1.ReferenceGrantSpec{
			From: []gwapiv1beta1.ReferenceGrantFrom{{Group: gwapiv1.GroupName, Kind: "HTTPRoute", Namespace: gwapiv1.Namespace(shop)}},
			To:   []gwapiv1beta1.ReferenceGrantTo{{Group: "", Kind: "Service"}},
		},
	}
	must(t, c.Create(ctx, grant))
	eventually(t, "ResolvedRefs True once the ReferenceGrant exists", check(cross, metav1.ConditionTrue, "ResolvedRefs"))
	found := false
	for _, p := range cross.Status.Parents {
		if p.ControllerName == "example.com/other" && p.Conditions[0].Message == "theirs" {
			found = true
		}
	}
	if !found {
		t.Errorf("another controller's parent status was removed: %+v", cross.Status.Parents)
	}
}

// (c) A ztunnel's xDS client receives Workloads and Services, and
// enrolment follows the Namespace label.
func testXDS(t *testing.T, env *kubetest.Env, a *instance) {
	c, ctx := env.Client, t.Context()
	ns := env.Namespace(t, "mesh", map[string]string{translate.LabelDataplaneMode: translate.DataplaneModeAmbient})
	must(t, c.Create(ctx, service(ns, "web", 80)))
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-0", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "app", Image: "example.invalid/web:1"}}},
	}
	must(t, c.Create(ctx, pod))
	// No kubelet: give the pod an IP and readiness ourselves.
	pod.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: "10.244.0.10", PodIPs: []corev1.PodIP{{IP: "10.244.0.10"}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	must(t, c.Status().Update(ctx, pod))

	xc := newXDSClient(t, a.xdsAddr, configv1alpha1.ZtunnelNodeID("node-a"))
	eventually(t, "the pod's Workload, enrolled", func() error {
		w, err := xc.workload(ns, "web-0")
		if err != nil {
			return err
		}
		if !w.GetEnrolled() || w.GetNode() != "node-a" || len(w.GetAddresses()) != 1 || w.GetAddresses()[0] != "10.244.0.10" {
			return fmt.Errorf("workload %v", w)
		}
		return nil
	})
	eventually(t, "the Service", func() error {
		s, err := xc.service(ns, "web")
		if err != nil {
			return err
		}
		if len(s.GetVips()) == 0 {
			return fmt.Errorf("service without VIPs: %v", s)
		}
		return nil
	})

	setLabel := func(value string) {
		t.Helper()
		eventually(t, "relabelling the namespace", func() error {
			n := &corev1.Namespace{}
			must(t, c.Get(ctx, types.NamespacedName{Name: ns}, n))
			if value == "" {
				delete(n.Labels, translate.LabelDataplaneMode)
			} else {
				n.Labels[translate.LabelDataplaneMode] = value
			}
			return c.Update(ctx, n)
		})
	}
	enrolled := func(want bool) func() error {
		return func() error {
			w, err := xc.workload(ns, "web-0")
			if err != nil {
				return err
			}
			if w.GetEnrolled() != want {
				return fmt.Errorf("enrolled = %v", w.GetEnrolled())
			}
			return nil
		}
	}
	setLabel("")
	eventually(t, "unenrolment to reach the ztunnel", enrolled(false))
	setLabel(translate.DataplaneModeAmbient)
	eventually(t, "re-enrolment to reach the ztunnel", enrolled(true))

	// Deletions propagate: the Pod's Workload and the Service disappear.
	must(t, c.Delete(ctx, pod, client.GracePeriodSeconds(0)))
	must(t, c.Delete(ctx, service(ns, "web", 80)))
	eventually(t, "the deleted pod's Workload to go", func() error {
		if w, err := xc.workload(ns, "web-0"); err == nil {
			return fmt.Errorf("still there: %v", w)
		}
		return nil
	})
	eventually(t, "the deleted Service to go", func() error {
		if s, err := xc.service(ns, "web"); err == nil {
			return fmt.Errorf("still there: %v", s)
		}
		return nil
	})
}

// (e) Deleting a Gateway, or moving it to another class, removes its
// children: envtest has no garbage collector, so this is the controller's
// own cleanup.
func testGatewayCleanup(t *testing.T, env *kubetest.Env) {
	c, ctx := env.Client, t.Context()
	ns := env.Namespace(t, "cleanup", nil)
	gone, moved := waypointGateway(ns, "gone"), waypointGateway(ns, "moved")
	must(t, c.Create(ctx, gone))
	must(t, c.Create(ctx, moved))
	for _, name := range []string{"gone", "moved"} {
		eventually(t, "children of "+name, func() error {
			_, _, _, err := children(t, c, ns, name)
			return err
		})
	}
	must(t, c.Delete(ctx, gone))
	moved.Spec.GatewayClassName = "someone-else"
	eventually(t, "moving a Gateway to another class", func() error {
		g := &gwapiv1.Gateway{}
		must(t, c.Get(ctx, client.ObjectKeyFromObject(moved), g))
		g.Spec.GatewayClassName = "someone-else"
		return c.Update(ctx, g)
	})
	for _, name := range []string{"gone", "moved"} {
		eventually(t, "children of "+name+" to be deleted", func() error {
			key := types.NamespacedName{Namespace: ns, Name: name}
			for _, o := range []client.Object{&corev1.ServiceAccount{}, &appsv1.Deployment{}, &corev1.Service{}} {
				if err := c.Get(ctx, key, o); !apierrors.IsNotFound(err) {
					return fmt.Errorf("%T still there (%v)", o, err)
				}
			}
			if _, err := rootConfigMap(t, c, ns, name); !apierrors.IsNotFound(errors.Unwrap(err)) {
				return fmt.Errorf("root ConfigMap still there (%v)", err)
			}
			return nil
		})
	}
}

// (d) Two replicas: only the leader writes; the follower serves xDS; when
// the leader stops, the follower takes over the Lease and the writes.
func testLeaderElection(t *testing.T, env *kubetest.Env, a *instance) {
	c, ctx := env.Client, t.Context()
	b := startController(t, env, "b")

	lease := &coordinationv1.Lease{}
	holder := func() string {
		if err := c.Get(ctx, types.NamespacedName{Namespace: systemNS, Name: "ambit-controller"}, lease); err != nil {
			return ""
		}
		return ptr.Deref(lease.Spec.HolderIdentity, "")
	}
	first := holder()
	if first == "" {
		t.Fatalf("no Lease holder in %s/ambit-controller", systemNS)
	}

	// The follower translates and serves xDS.
	ns := env.Namespace(t, "follow", map[string]string{translate.LabelDataplaneMode: translate.DataplaneModeAmbient})
	must(t, c.Create(ctx, service(ns, "api", 8080)))
	xb := newXDSClient(t, b.xdsAddr, configv1alpha1.ZtunnelNodeID("node-a"))
	eventually(t, "the follower to serve the new Service", func() error {
		_, err := xb.service(ns, "api")
		return err
	})

	// The leader writes the new waypoint's children and status; the
	// follower writes nothing.
	gw := waypointGateway(ns, "wp")
	must(t, c.Create(ctx, gw))
	eventually(t, "the leader to program the waypoint", func() error {
		must(t, c.Get(ctx, client.ObjectKeyFromObject(gw), gw))
		return wantCondition(gw.Status.Conditions, "Programmed", metav1.ConditionTrue, "")
	})
	if b.leader() || !a.leader() {
		t.Fatalf("leaders: a %v, b %v; want a only", a.leader(), b.leader())
	}
	if n := b.writes.Load(); n != 0 {
		t.Errorf("the follower made %d writes", n)
	}
	if a.writes.Load() == 0 {
		t.Error("the leader made no writes")
	}

	// The leader steps down (releasing the Lease); the follower takes over.
	a.stop()
	eventually(t, "the follower to take the Lease", func() error {
		if h := holder(); h == first || h == "" {
			return fmt.Errorf("holder %q", h)
		}
		if !b.leader() {
			return errors.New("b not elected")
		}
		return nil
	})
	gw2 := waypointGateway(ns, "wp2")
	must(t, c.Create(ctx, gw2))
	eventually(t, "the new leader to write", func() error {
		_, _, _, err := children(t, c, ns, "wp2")
		if err != nil {
			return err
		}
		must(t, c.Get(ctx, client.ObjectKeyFromObject(gw2), gw2))
		return wantCondition(gw2.Status.Conditions, "Accepted", metav1.ConditionTrue, "Accepted")
	})
}
