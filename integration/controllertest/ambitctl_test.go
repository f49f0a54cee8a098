//go:build envtest

package controllertest

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controller/ambitctl"
	"github.com/ambit-mesh/ambit/controller/ca"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/integration/kubetest"
)

// testAmbitctl runs ambitctl's cluster commands against the apiserver with
// the controller replica running: check on a partial and then a complete
// installation, and the waypoint commands, which the controller answers
// (it deploys the waypoint and reports it Programmed). envtest runs no
// kubelet or controller-manager, so the test writes the status of the
// controller's Deployment, ztunnel's DaemonSet and its pods, as they would.
func testAmbitctl(t *testing.T, env *kubetest.Env) {
	c := env.Client
	ctx := t.Context()
	kc := kubetest.Kubeconfig(t, env.Config)
	ctl := func(args ...string) (int, string, string) {
		t.Helper()
		var out, errOut bytes.Buffer
		code := ambitctl.Run(ctx, append(args, "-kubeconfig", kc), &out, &errOut)
		t.Logf("ambitctl %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
		return code, out.String(), errOut.String()
	}
	// line finds the output line of a check result.
	line := func(out, status, what string) error {
		for l := range strings.Lines(out) {
			if strings.HasPrefix(l, "["+status+"]") && strings.Contains(l, what) {
				return nil
			}
		}
		return fmt.Errorf("no [%s] line with %q", status, what)
	}
	wantLines := func(out string, lines ...[2]string) {
		t.Helper()
		for _, l := range lines {
			if err := line(out, l[0], l[1]); err != nil {
				t.Error(err)
			}
		}
	}
	shop := env.Namespace(t, "shop", map[string]string{translate.LabelDataplaneMode: translate.DataplaneModeAmbient})

	eventually(t, "GatewayClass accepted", func() error {
		gc := &gwapiv1.GatewayClass{}
		if err := c.Get(ctx, types.NamespacedName{Name: translate.WaypointClassName}, gc); err != nil {
			return err
		}
		return wantCondition(gc.Status.Conditions, "Accepted", metav1.ConditionTrue, "Accepted")
	})
	// Nothing of the workloads installed yet.
	code, out, errOut := ctl("check")
	if code != ambitctl.ExitFailed || !strings.Contains(errOut, "checks failed") {
		t.Errorf("check without the workloads: exit %d, stderr %q", code, errOut)
	}
	wantLines(out,
		[2]string{"ok", "Kubernetes API at " + env.Config.Host + " answers (v1."},
		[2]string{"ok", "Gateway API CRDs established (5), bundle version v1.6.3"},
		[2]string{"ok", "Ambit CRDs established (4)"},
		[2]string{"ok", "namespace ambit-system exists"},
		[2]string{"FAIL", "controller Deployment ambit-system/ambit-controller: not found"},
		[2]string{"FAIL", "mesh CA root ConfigMap ambit-system/ambit-ca-root: not found"},
		[2]string{"FAIL", "ztunnel DaemonSet ambit-system/ztunnel: not found"},
		[2]string{"ok", "GatewayClass ambit-waypoint accepted"},
		[2]string{"ok", "namespaces in the mesh (ambit.dev/dataplane-mode=ambient): " + shop},
	)

	// waypoint apply -wait: created, programmed by the controller, its pod
	// available (written here, as the Deployment controller would once the
	// kubelet reports the pod ready), and only then the namespace labelled.
	podUp := make(chan error, 1)
	go func() {
		podUp <- func() error {
			dep := &appsv1.Deployment{}
			deadline := time.Now().Add(timeout)
			for {
				err := c.Get(ctx, types.NamespacedName{Namespace: shop, Name: "waypoint"}, dep)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("waypoint Deployment: %v", err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(time.Second) // ambitctl waits meanwhile
			ns := &corev1.Namespace{}
			if err := c.Get(ctx, types.NamespacedName{Name: shop}, ns); err != nil {
				return err
			}
			if l, ok := ns.Labels[translate.LabelUseWaypoint]; ok {
				return fmt.Errorf("namespace labelled %s=%s before the waypoint had a pod", translate.LabelUseWaypoint, l)
			}
			dep.Status = appsv1.DeploymentStatus{ObservedGeneration: dep.Generation, Replicas: 1, ReadyReplicas: 1, AvailableReplicas: 1, UpdatedReplicas: 1}
			return c.Status().Update(ctx, dep)
		}()
	}()
	code, out, _ = ctl("waypoint", "apply", "-n", shop, "--enroll-namespace", "-for", "all", "-wait", "-timeout", "60s")
	if err := <-podUp; err != nil {
		t.Error(err)
	}
	if want := "waypoint " + shop + "/waypoint created\n" +
		"waypoint " + shop + "/waypoint programmed\n" +
		"waypoint " + shop + "/waypoint ready: 1 of 1 pods available\n" +
		"namespace " + shop + " labelled ambit.dev/use-waypoint=waypoint\n"; out != want {
		t.Errorf("waypoint apply: stdout %q, want %q", out, want)
	}
	if code != ambitctl.ExitOK {
		t.Fatalf("waypoint apply: exit %d", code)
	}
	// waypoint-config needs a pod (envtest runs none).
	if code, _, errOut := ctl("waypoint-config", "-n", shop); code != ambitctl.ExitFailed || !strings.Contains(errOut, "waypoint "+shop+"/waypoint has no pod (label gateway.networking.k8s.io/gateway-name=waypoint)") {
		t.Errorf("waypoint-config without pods: exit %d, stderr %q", code, errOut)
	}
	// A waypoint whose pods never come: -wait gives up, says why, and
	// leaves the namespace's label alone.
	code, out, errOut = ctl("waypoint", "apply", "-n", shop, "-name", "slow", "-enroll-namespace", "-wait", "-timeout", "3s")
	if code != ambitctl.ExitFailed || !strings.Contains(out, "waypoint "+shop+"/slow created") ||
		!strings.Contains(errOut, "waypoint "+shop+"/slow not ready after 3s: ") || strings.Contains(out, "labelled") {
		t.Errorf("apply -wait of a waypoint without pods: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, out, _ := ctl("waypoint", "delete", "-n", shop, "slow"); code != ambitctl.ExitOK || !strings.Contains(out, "waypoint "+shop+"/slow deleted") || strings.Contains(out, "still names it") {
		t.Errorf("delete slow: exit %d, stdout %q", code, out)
	}
	gw := &gwapiv1.Gateway{}
	must(t, c.Get(ctx, types.NamespacedName{Namespace: shop, Name: "waypoint"}, gw))
	if l := gw.Spec.Listeners; gw.Spec.GatewayClassName != translate.WaypointClassName || len(l) != 1 ||
		l[0].Name != "mesh" || l[0].Port != translate.WaypointListenerPort || l[0].Protocol != translate.WaypointListenerProtocol ||
		gw.Labels[translate.LabelWaypointFor] != translate.WaypointForAll {
		t.Errorf("waypoint Gateway: labels %v, spec %+v", gw.Labels, gw.Spec)
	}
	ns := &corev1.Namespace{}
	must(t, c.Get(ctx, types.NamespacedName{Name: shop}, ns))
	if ns.Labels[translate.LabelUseWaypoint] != "waypoint" || ns.Labels[translate.LabelDataplaneMode] != translate.DataplaneModeAmbient {
		t.Errorf("namespace labels %v", ns.Labels)
	}
	if code, out, _ := ctl("waypoint", "apply", "-n", shop, "-for", "all"); code != 0 || !strings.Contains(out, "unchanged") {
		t.Errorf("the same apply again: exit %d, stdout %q; want unchanged", code, out)
	}
	if code, out, _ := ctl("waypoint", "apply", "-n", shop, "-for", "service"); code != 0 || !strings.Contains(out, "updated") {
		t.Errorf("apply -for service: exit %d, stdout %q; want updated", code, out)
	}
	must(t, c.Get(ctx, types.NamespacedName{Namespace: shop, Name: "waypoint"}, gw))
	if gw.Labels[translate.LabelWaypointFor] != translate.WaypointForService {
		t.Errorf("waypoint-for %q after -for service", gw.Labels[translate.LabelWaypointFor])
	}
	// Not ours: left alone by apply and delete.
	edge := &gwapiv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: shop, Name: "edge"},
		Spec: gwapiv1.GatewaySpec{GatewayClassName: "someone-else",
			Listeners: []gwapiv1.Listener{{Name: "http", Port: 80, Protocol: gwapiv1.HTTPProtocolType}}},
	}
	must(t, c.Create(ctx, edge))
	if code, _, errOut := ctl("waypoint", "apply", "-n", shop, "-name", "edge"); code != ambitctl.ExitFailed || !strings.Contains(errOut, `exists with class "someone-else": it is not a waypoint`) {
		t.Errorf("apply over another class's Gateway: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := ctl("waypoint", "delete", "-n", shop, "edge"); code != ambitctl.ExitFailed || !strings.Contains(errOut, "not a waypoint, left alone") {
		t.Errorf("delete another class's Gateway: exit %d, stderr %q", code, errOut)
	}
	must(t, c.Get(ctx, client.ObjectKeyFromObject(edge), edge))
	if edge.Spec.Listeners[0].Port != 80 || edge.DeletionTimestamp != nil {
		t.Errorf("the other Gateway was changed: %+v", edge)
	}
	if code, _, errOut := ctl("waypoint", "apply", "-n", "no-such-namespace"); code != ambitctl.ExitFailed || !strings.Contains(errOut, "namespace no-such-namespace: not found") {
		t.Errorf("apply in a missing namespace: exit %d, stderr %q", code, errOut)
	}

	// waypoint list, in the namespace and everywhere.
	eventually(t, "waypoint programmed after the update", func() error {
		_, out, _ := ctl("waypoint", "list", "-n", shop)
		for _, want := range []string{"NAMESPACE", shop, "waypoint", "service", "True", "namespace " + shop} {
			if !strings.Contains(out, want) {
				return fmt.Errorf("list lacks %q: %q", want, out)
			}
		}
		if strings.Contains(out, "edge") {
			return fmt.Errorf("list shows the other class's Gateway: %q", out)
		}
		return nil
	})
	if _, out, _ := ctl("waypoint", "list", "-A"); !strings.Contains(out, shop) {
		t.Errorf("list -A lacks %s: %q", shop, out)
	}
	empty := env.Namespace(t, "empty", nil)
	if code, out, _ := ctl("waypoint", "list", "-n", empty); code != 0 || !strings.Contains(out, "no waypoints in namespace "+empty) {
		t.Errorf("list in a namespace without waypoints: exit %d, %q", code, out)
	}

	// A Service naming a waypoint that does not exist: a warning.
	must(t, c.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: shop, Name: "api", Labels: map[string]string{translate.LabelUseWaypoint: "ghost"}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}))

	// The installation, as the kubelet and controller-manager would report
	// it: the controller not yet available, ztunnel ready on one node of two.
	sys := "ambit-system"
	labels := map[string]string{"app.kubernetes.io/name": ambitctl.ControllerDeployment}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: sys, Name: ambitctl.ControllerDeployment},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "controller", Image: "example.invalid/controller"}}},
			},
		},
	}
	must(t, c.Create(ctx, dep))
	dep.Status = appsv1.DeploymentStatus{Replicas: 2, Conditions: []appsv1.DeploymentCondition{{
		Type: appsv1.DeploymentAvailable, Status: corev1.ConditionFalse, Reason: "MinimumReplicasUnavailable",
		Message: "Deployment does not have minimum availability.",
	}}}
	must(t, c.Status().Update(ctx, dep))
	ztLabels := map[string]string{"app.kubernetes.io/name": "ztunnel"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: sys, Name: ambitctl.ZtunnelDaemonSet},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: ztLabels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: ztLabels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "ztunnel", Image: "example.invalid/ztunnel"}}},
			},
		},
	}
	must(t, c.Create(ctx, ds))
	ds.Status = appsv1.DaemonSetStatus{DesiredNumberScheduled: 2, CurrentNumberScheduled: 2, NumberReady: 1}
	must(t, c.Status().Update(ctx, ds))
	ztPods := map[string]*corev1.Pod{}
	for node, ready := range map[string]corev1.ConditionStatus{"node-a": corev1.ConditionTrue, "node-b": corev1.ConditionFalse} {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: sys, Name: "ztunnel-" + node, Labels: ztLabels},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "ztunnel", Image: "example.invalid/ztunnel"}}},
		}
		must(t, c.Create(ctx, p))
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: ready}}}
		must(t, c.Status().Update(ctx, p))
		ztPods[node] = p
	}
	code, out, _ = ctl("check")
	if code != ambitctl.ExitFailed {
		t.Errorf("check with the controller unavailable: exit %d", code)
	}
	wantLines(out,
		[2]string{"FAIL", "controller Deployment ambit-system/ambit-controller: no replica available (of 2): Deployment does not have minimum availability."},
		[2]string{"FAIL", "ztunnel DaemonSet ambit-system/ztunnel: 1 of 2 nodes ready; not ready on node-b"},
		[2]string{"ok", "waypoints programmed"},
		[2]string{"warn", "service " + shop + "/api: ambit.dev/use-waypoint=ghost names no waypoint in its namespace"},
	)

	// Everything up: check passes (with the one warning).
	dep.Status = appsv1.DeploymentStatus{Replicas: 2, ReadyReplicas: 2, AvailableReplicas: 2, UpdatedReplicas: 2}
	must(t, c.Status().Update(ctx, dep))
	ds.Status = appsv1.DaemonSetStatus{DesiredNumberScheduled: 2, CurrentNumberScheduled: 2, NumberReady: 2}
	must(t, c.Status().Update(ctx, ds))
	p := ztPods["node-b"]
	p.Status.Conditions[0].Status = corev1.ConditionTrue
	must(t, c.Status().Update(ctx, p))
	must(t, c.Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: sys, Name: ca.DefaultConfigMapName},
		Data:       map[string]string{ca.ConfigMapRootKey: testRootPEM},
	}))
	code, out, _ = ctl("check")
	if code != ambitctl.ExitOK || !strings.Contains(out, "Ambit is installed and healthy") {
		t.Errorf("check on the whole installation: exit %d", code)
	}
	wantLines(out,
		[2]string{"ok", "controller Deployment ambit-system/ambit-controller: 2 of 2 replicas available"},
		[2]string{"ok", "mesh CA root published in ConfigMap ambit-system/ambit-ca-root"},
		[2]string{"ok", "ztunnel DaemonSet ambit-system/ztunnel: ready on 2 of 2 nodes"},
		[2]string{"warn", "service " + shop + "/api"},
	)
	// version: the images the cluster runs, by its pods.
	code, out, _ = ctl("version")
	if code != ambitctl.ExitOK || !strings.Contains(out, "controller: none running\n") ||
		!strings.Contains(out, "ztunnel:   example.invalid/ztunnel (2 pods)\n") || !strings.Contains(out, "waypoints: none running\n") {
		t.Errorf("version: exit %d, stdout %q", code, out)
	}
	// ztunnel-config finds the pods; with two nodes it needs -node.
	if code, _, errOut := ctl("ztunnel-config"); code != ambitctl.ExitUsage || !strings.Contains(errOut, "ztunnel runs on 2 nodes (node-a, node-b): choose one with -node") {
		t.Errorf("ztunnel-config with two nodes: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := ctl("ztunnel-config", "-node", "node-c"); code != ambitctl.ExitFailed || !strings.Contains(errOut, `no running ztunnel on node "node-c"; ztunnel runs on: node-a, node-b`) {
		t.Errorf("ztunnel-config -node node-c: exit %d, stderr %q", code, errOut)
	}

	// waypoint delete: gone, with a note on the labels that still name it.
	code, out, _ = ctl("waypoint", "delete", "-n", shop)
	if code != ambitctl.ExitOK || !strings.Contains(out, "waypoint "+shop+"/waypoint deleted") || !strings.Contains(out, "namespace "+shop+" still names it") {
		t.Errorf("waypoint delete: exit %d, stdout %q", code, out)
	}
	eventually(t, "the waypoint Gateway gone", func() error {
		err := c.Get(ctx, types.NamespacedName{Namespace: shop, Name: "waypoint"}, &gwapiv1.Gateway{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("get: %v", err)
	})
	if code, _, errOut := ctl("waypoint", "delete", "waypoint", "-n", shop); code != ambitctl.ExitFailed || !strings.Contains(errOut, "waypoint "+shop+"/waypoint: not found") {
		t.Errorf("delete again: exit %d, stderr %q", code, errOut)
	}
	code, out, _ = ctl("check")
	if code != ambitctl.ExitOK {
		t.Errorf("check after the delete (warnings only): exit %d", code)
	}
	wantLines(out, [2]string{"warn", "namespace " + shop + ": ambit.dev/use-waypoint=waypoint names no waypoint in it"})
	for _, o := range []client.Object{edge, dep, ds, ztPods["node-a"], ztPods["node-b"],
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: sys, Name: ca.DefaultConfigMapName}}} {
		must(t, c.Delete(ctx, o))
	}
}
