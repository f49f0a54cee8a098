package ambitctl

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"slices"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/gateway-api/pkg/consts"

	"github.com/ambit-mesh/ambit/controller/ca"
	"github.com/ambit-mesh/ambit/controller/translate"
)

// Names of the installed objects (manifests/).
const (
	ControllerDeployment = "ambit-controller"
	ZtunnelDaemonSet     = "ztunnel"
	// ZtunnelPodLabel selects ztunnel's pods (the DaemonSet's selector).
	ZtunnelPodLabel = "app.kubernetes.io/name=ztunnel"
)

// GatewayAPICRDs and AmbitCRDs are the CustomResourceDefinitions Ambit
// needs.
var (
	GatewayAPICRDs = []string{
		"gatewayclasses.gateway.networking.k8s.io",
		"gateways.gateway.networking.k8s.io",
		"grpcroutes.gateway.networking.k8s.io",
		"httproutes.gateway.networking.k8s.io",
		"referencegrants.gateway.networking.k8s.io",
	}
	AmbitCRDs = []string{
		"authorizationpolicies.security.ambit.dev",
		"peerauthentications.security.ambit.dev",
		"backendpolicies.traffic.ambit.dev",
		"faultinjections.traffic.ambit.dev",
	}
)

// Check results.
const (
	checkOK   = "ok"
	checkWarn = "warn"
	checkFail = "FAIL"
)

type checkResult struct {
	status string
	what   string
	hint   string // for warn and FAIL: what to look at or do
}

func checkFlags(fs *flag.FlagSet) func(context.Context, *cli, []string) error {
	pods := fs.Bool("pods", false, "also ask each node's ztunnel (through a port-forward) whether it captures every running pod of the enrolled namespaces")
	return func(ctx context.Context, c *cli, args []string) error {
		if len(args) > 0 {
			return usageErrorf("check takes no arguments")
		}
		results := runChecks(ctx, c)
		if *pods && !anyFailed(results) {
			results = append(results, checkCapture(ctx, c)...)
		}
		failed, warned := 0, 0
		for _, r := range results {
			fmt.Fprintf(c.stdout, "%-6s %s\n", "["+r.status+"]", r.what)
			if r.hint != "" {
				fmt.Fprintf(c.stdout, "       %s\n", r.hint)
			}
			switch r.status {
			case checkFail:
				failed++
			case checkWarn:
				warned++
			}
		}
		if failed > 0 {
			if *pods {
				fmt.Fprintln(c.stdout, "(-pods: the pods were not checked; fix the failures above first)")
			}
			return fmt.Errorf("%d of %d checks failed, %d warnings", failed, len(results), warned)
		}
		fmt.Fprintf(c.stdout, "Ambit is installed and healthy (%d checks, %d warnings).\n", len(results), warned)
		return nil
	}
}

// runChecks checks the installation, in the order a user would fix it.
func runChecks(ctx context.Context, c *cli) []checkResult {
	v, err := c.kube.Discovery().ServerVersion()
	if err != nil {
		return []checkResult{{status: checkFail, what: fmt.Sprintf("Kubernetes API at %s: %v", c.restConfig.Host, err),
			hint: "check -kubeconfig/-context, and that the cluster is up"}}
	}
	results := []checkResult{{status: checkOK, what: fmt.Sprintf("Kubernetes API at %s answers (%s)", c.restConfig.Host, v.GitVersion)}}
	results = append(results, checkCRDs(ctx, c, "Gateway API", GatewayAPICRDs)...)
	results = append(results, checkCRDs(ctx, c, "Ambit", AmbitCRDs)...)
	sys := c.systemNamespace
	var ns corev1.Namespace
	if err := c.client.Get(ctx, types.NamespacedName{Name: sys}, &ns); err != nil {
		return append(results, checkResult{status: checkFail, what: fmt.Sprintf("namespace %s: %s", sys, reason(err)),
			hint: "install Ambit: kubectl apply --server-side -k manifests/ (docs/reference/install.md)"})
	}
	results = append(results, checkResult{status: checkOK, what: "namespace " + sys + " exists"})
	results = append(results, checkController(ctx, c), checkCARoot(ctx, c), checkZtunnel(ctx, c), checkGatewayClass(ctx, c))
	gws, err := waypointGateways(ctx, c, "")
	if err != nil {
		return append(results, checkResult{status: checkFail, what: "waypoints: " + err.Error()})
	}
	results = append(results, checkWaypoints(gws)...)
	results = append(results, checkEnrolment(ctx, c, gws)...)
	return results
}

// reason is err without the API group noise of a NotFound.
func reason(err error) string {
	if apierrors.IsNotFound(err) {
		return "not found"
	}
	return err.Error()
}

func checkCRDs(ctx context.Context, c *cli, group string, names []string) []checkResult {
	var missing, notEstablished, bundles []string
	for _, name := range names {
		var crd apiextensionsv1.CustomResourceDefinition
		if err := c.client.Get(ctx, types.NamespacedName{Name: name}, &crd); err != nil {
			if !apierrors.IsNotFound(err) {
				return []checkResult{{status: checkFail, what: fmt.Sprintf("%s CRDs: %v", group, err)}}
			}
			missing = append(missing, name)
			continue
		}
		if !crdEstablished(&crd) {
			notEstablished = append(notEstablished, name)
		}
		if b := crd.Annotations[consts.BundleVersionAnnotation]; b != "" && !slices.Contains(bundles, b) {
			bundles = append(bundles, b)
		}
	}
	switch {
	case len(missing) > 0:
		return []checkResult{{status: checkFail, what: fmt.Sprintf("%s CRDs missing: %s", group, strings.Join(missing, ", ")),
			hint: "install them with Ambit: kubectl apply --server-side -k manifests/ (Gateway API " + consts.BundleVersion + ", experimental channel)"}}
	case len(notEstablished) > 0:
		return []checkResult{{status: checkFail, what: fmt.Sprintf("%s CRDs not established: %s", group, strings.Join(notEstablished, ", ")),
			hint: "kubectl describe crd " + notEstablished[0]}}
	}
	r := checkResult{status: checkOK, what: fmt.Sprintf("%s CRDs established (%d)", group, len(names))}
	if len(bundles) > 0 {
		sort.Strings(bundles)
		r.what += ", bundle version " + strings.Join(bundles, ", ")
		if len(bundles) > 1 || minorOf(bundles[0]) != minorOf(consts.BundleVersion) {
			r.status = checkWarn
			r.hint = "Ambit is built and tested with Gateway API " + consts.BundleVersion + " (manifests/gateway-api); other versions may lack fields it reads"
		}
	}
	return []checkResult{r}
}

// minorOf is "v1.6" of "v1.6.3".
func minorOf(v string) string {
	if i := strings.LastIndexByte(v, '.'); i > 0 && strings.Count(v, ".") == 2 {
		return v[:i]
	}
	return v
}

func crdEstablished(crd *apiextensionsv1.CustomResourceDefinition) bool {
	for _, cond := range crd.Status.Conditions {
		if cond.Type == apiextensionsv1.Established {
			return cond.Status == apiextensionsv1.ConditionTrue
		}
	}
	return false
}

func checkController(ctx context.Context, c *cli) checkResult {
	name := c.systemNamespace + "/" + ControllerDeployment
	var d appsv1.Deployment
	if err := c.client.Get(ctx, types.NamespacedName{Namespace: c.systemNamespace, Name: ControllerDeployment}, &d); err != nil {
		return checkResult{status: checkFail, what: fmt.Sprintf("controller Deployment %s: %s", name, reason(err)),
			hint: "install Ambit: kubectl apply --server-side -k manifests/"}
	}
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	hint := fmt.Sprintf("kubectl -n %s describe deployment %s; kubectl -n %s logs deployment/%s", c.systemNamespace, ControllerDeployment, c.systemNamespace, ControllerDeployment)
	switch avail := d.Status.AvailableReplicas; {
	case avail == 0:
		what := fmt.Sprintf("controller Deployment %s: no replica available (of %d)", name, want)
		if msg := deploymentMessage(&d); msg != "" {
			what += ": " + msg
		}
		return checkResult{status: checkFail, what: what, hint: hint}
	case avail < want:
		return checkResult{status: checkWarn, what: fmt.Sprintf("controller Deployment %s: %d of %d replicas available", name, avail, want), hint: hint}
	default:
		return checkResult{status: checkOK, what: fmt.Sprintf("controller Deployment %s: %d of %d replicas available", name, avail, want)}
	}
}

// deploymentMessage is the message of a false Available or Progressing
// condition.
func deploymentMessage(d *appsv1.Deployment) string {
	for _, t := range []appsv1.DeploymentConditionType{appsv1.DeploymentAvailable, appsv1.DeploymentProgressing} {
		for _, cond := range d.Status.Conditions {
			if cond.Type == t && cond.Status != corev1.ConditionTrue && cond.Message != "" {
				return cond.Message
			}
		}
	}
	return ""
}

func checkCARoot(ctx context.Context, c *cli) checkResult {
	name := c.systemNamespace + "/" + ca.DefaultConfigMapName
	var cm corev1.ConfigMap
	if err := c.client.Get(ctx, types.NamespacedName{Namespace: c.systemNamespace, Name: ca.DefaultConfigMapName}, &cm); err != nil {
		return checkResult{status: checkFail, what: fmt.Sprintf("mesh CA root ConfigMap %s: %s", name, reason(err)),
			hint: "the controller publishes it at its first start; ztunnel pods wait for it (ContainerCreating)"}
	}
	if strings.TrimSpace(cm.Data[ca.ConfigMapRootKey]) == "" {
		return checkResult{status: checkFail, what: fmt.Sprintf("mesh CA root ConfigMap %s has no %s", name, ca.ConfigMapRootKey),
			hint: "the controller rewrites it; kubectl -n " + c.systemNamespace + " logs deployment/" + ControllerDeployment}
	}
	return checkResult{status: checkOK, what: "mesh CA root published in ConfigMap " + name}
}

func checkZtunnel(ctx context.Context, c *cli) checkResult {
	name := c.systemNamespace + "/" + ZtunnelDaemonSet
	var ds appsv1.DaemonSet
	if err := c.client.Get(ctx, types.NamespacedName{Namespace: c.systemNamespace, Name: ZtunnelDaemonSet}, &ds); err != nil {
		return checkResult{status: checkFail, what: fmt.Sprintf("ztunnel DaemonSet %s: %s", name, reason(err)),
			hint: "install Ambit: kubectl apply --server-side -k manifests/"}
	}
	desired, ready := ds.Status.DesiredNumberScheduled, ds.Status.NumberReady
	if desired == 0 {
		return checkResult{status: checkFail, what: fmt.Sprintf("ztunnel DaemonSet %s runs on no node", name),
			hint: "kubectl -n " + c.systemNamespace + " describe daemonset " + ZtunnelDaemonSet}
	}
	if ready < desired {
		what := fmt.Sprintf("ztunnel DaemonSet %s: %d of %d nodes ready", name, ready, desired)
		if nodes := unreadyZtunnelNodes(ctx, c); len(nodes) > 0 {
			what += "; not ready on " + strings.Join(nodes, ", ")
		}
		return checkResult{status: checkFail, what: what,
			hint: "pods on those nodes are not captured; kubectl -n " + c.systemNamespace + " get pods -l " + ZtunnelPodLabel + " -o wide"}
	}
	return checkResult{status: checkOK, what: fmt.Sprintf("ztunnel DaemonSet %s: ready on %d of %d nodes", name, ready, desired)}
}

// unreadyZtunnelNodes names the nodes whose ztunnel pod is not Ready.
func unreadyZtunnelNodes(ctx context.Context, c *cli) []string {
	pods, err := ztunnelPods(ctx, c)
	if err != nil {
		return nil
	}
	var nodes []string
	for _, p := range pods {
		if !podReady(&p) {
			node := p.Spec.NodeName
			if node == "" {
				node = "(unscheduled " + p.Name + ")"
			}
			nodes = append(nodes, node)
		}
	}
	sort.Strings(nodes)
	return nodes
}

func ztunnelPods(ctx context.Context, c *cli) ([]corev1.Pod, error) {
	sel, err := metav1.ParseToLabelSelector(ZtunnelPodLabel)
	if err != nil {
		return nil, err
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return nil, err
	}
	var pods corev1.PodList
	if err := c.client.List(ctx, &pods, client.InNamespace(c.systemNamespace), client.MatchingLabelsSelector{Selector: s}); err != nil {
		return nil, err
	}
	return pods.Items, nil
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

func checkGatewayClass(ctx context.Context, c *cli) checkResult {
	var gc gwapiv1.GatewayClass
	if err := c.client.Get(ctx, types.NamespacedName{Name: translate.WaypointClassName}, &gc); err != nil {
		return checkResult{status: checkFail, what: fmt.Sprintf("GatewayClass %s: %s", translate.WaypointClassName, reason(err)),
			hint: "the controller's leader creates it; kubectl -n " + c.systemNamespace + " logs deployment/" + ControllerDeployment}
	}
	if string(gc.Spec.ControllerName) != translate.ControllerName {
		return checkResult{status: checkFail, what: fmt.Sprintf("GatewayClass %s names controller %q, not Ambit's %q", gc.Name, gc.Spec.ControllerName, translate.ControllerName),
			hint: "Ambit leaves an existing class as it is: delete it and the controller recreates it"}
	}
	cond := meta.FindStatusCondition(gc.Status.Conditions, string(gwapiv1.GatewayClassConditionStatusAccepted))
	if cond == nil || cond.Status != metav1.ConditionTrue || cond.ObservedGeneration != gc.Generation {
		return checkResult{status: checkFail, what: fmt.Sprintf("GatewayClass %s not accepted: %s", gc.Name, conditionText(cond)),
			hint: "the controller sets it; kubectl -n " + c.systemNamespace + " logs deployment/" + ControllerDeployment}
	}
	return checkResult{status: checkOK, what: "GatewayClass " + gc.Name + " accepted"}
}

func conditionText(cond *metav1.Condition) string {
	if cond == nil {
		return "no condition yet"
	}
	s := fmt.Sprintf("%s=%s", cond.Type, cond.Status)
	if cond.Reason != "" {
		s += " (" + cond.Reason + ")"
	}
	if cond.Message != "" {
		s += ": " + cond.Message
	}
	return s
}

// waypointGateways lists the Gateways of class ambit-waypoint in ns ("" for
// every namespace), sorted.
func waypointGateways(ctx context.Context, c *cli, ns string) ([]gwapiv1.Gateway, error) {
	var list gwapiv1.GatewayList
	var opts []client.ListOption
	if ns != "" {
		opts = append(opts, client.InNamespace(ns))
	}
	if err := c.client.List(ctx, &list, opts...); err != nil {
		return nil, err
	}
	var out []gwapiv1.Gateway
	for _, gw := range list.Items {
		if gw.Spec.GatewayClassName == translate.WaypointClassName {
			out = append(out, gw)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name
	})
	return out, nil
}

// programmed is a waypoint Gateway's Programmed condition, if current.
func programmed(gw *gwapiv1.Gateway) (bool, string) {
	cond := meta.FindStatusCondition(gw.Status.Conditions, string(gwapiv1.GatewayConditionProgrammed))
	if cond != nil && cond.ObservedGeneration != gw.Generation {
		return false, "status is for an older generation (the controller has not seen the change yet)"
	}
	if cond == nil || cond.Status != metav1.ConditionTrue {
		return false, conditionText(cond)
	}
	return true, ""
}

func checkWaypoints(gws []gwapiv1.Gateway) []checkResult {
	var results []checkResult
	ok := 0
	for _, gw := range gws {
		if p, why := programmed(&gw); !p {
			results = append(results, checkResult{status: checkFail, what: fmt.Sprintf("waypoint %s/%s not programmed: %s", gw.Namespace, gw.Name, why),
				hint: fmt.Sprintf("kubectl -n %s describe gateway %s; kubectl -n %s get deployment %s", gw.Namespace, gw.Name, gw.Namespace, gw.Name)})
			continue
		}
		ok++
	}
	if ok > 0 || len(gws) == 0 {
		results = append([]checkResult{{status: checkOK, what: fmt.Sprintf("%d of %d waypoints programmed", ok, len(gws))}}, results...)
	}
	return results
}

// checkEnrolment reports the namespaces in the mesh and warns about
// ambit.dev/use-waypoint labels that name no waypoint.
func checkEnrolment(ctx context.Context, c *cli, gws []gwapiv1.Gateway) []checkResult {
	var nss corev1.NamespaceList
	if err := c.client.List(ctx, &nss); err != nil {
		return []checkResult{{status: checkFail, what: "namespaces: " + err.Error()}}
	}
	have := map[string]bool{}
	for _, gw := range gws {
		have[gw.Namespace+"/"+gw.Name] = true
	}
	var enrolled []string
	var results []checkResult
	for _, ns := range nss.Items {
		if ns.Labels[translate.LabelDataplaneMode] == translate.DataplaneModeAmbient {
			enrolled = append(enrolled, ns.Name)
		}
		if wp := ns.Labels[translate.LabelUseWaypoint]; wp != "" && !have[ns.Name+"/"+wp] {
			results = append(results, checkResult{status: checkWarn,
				what: fmt.Sprintf("namespace %s: %s=%s names no waypoint in it", ns.Name, translate.LabelUseWaypoint, wp),
				hint: fmt.Sprintf("ambitctl waypoint apply -n %s --name %s, or kubectl label namespace %s %s-", ns.Name, wp, ns.Name, translate.LabelUseWaypoint)})
		}
	}
	var svcs corev1.ServiceList
	if err := c.client.List(ctx, &svcs, client.HasLabels{translate.LabelUseWaypoint}); err != nil {
		return append(results, checkResult{status: checkFail, what: "services: " + err.Error()})
	}
	for _, s := range svcs.Items {
		if wp := s.Labels[translate.LabelUseWaypoint]; wp != "" && !have[s.Namespace+"/"+wp] {
			results = append(results, checkResult{status: checkWarn,
				what: fmt.Sprintf("service %s/%s: %s=%s names no waypoint in its namespace", s.Namespace, s.Name, translate.LabelUseWaypoint, wp),
				hint: fmt.Sprintf("ambitctl waypoint apply -n %s --name %s, or kubectl -n %s label service %s %s-", s.Namespace, wp, s.Namespace, s.Name, translate.LabelUseWaypoint)})
		}
	}
	sort.Strings(enrolled)
	summary := checkResult{status: checkOK, what: fmt.Sprintf("%d namespaces in the mesh (%s=%s)", len(enrolled), translate.LabelDataplaneMode, translate.DataplaneModeAmbient)}
	if len(enrolled) > 0 {
		summary.what += ": " + strings.Join(enrolled, ", ")
	}
	return append([]checkResult{summary}, results...)
}

func anyFailed(results []checkResult) bool {
	for _, r := range results {
		if r.status == checkFail {
			return true
		}
	}
	return false
}

// expectCaptured reports whether a pod should be in the mesh, by the rule
// the controller applies (its namespace enrolled, the pod not opted out,
// not on the host's network), and is running on a node.
func expectCaptured(p *corev1.Pod, enrolled map[string]bool) bool {
	return enrolled[p.Namespace] && p.Labels[translate.LabelDataplaneMode] != translate.DataplaneModeNone &&
		!p.Spec.HostNetwork && p.Spec.NodeName != "" && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil
}

// checkCapture asks the ztunnel of every node that runs pods of enrolled
// namespaces which of them it captures.
func checkCapture(ctx context.Context, c *cli) []checkResult {
	var nss corev1.NamespaceList
	if err := c.client.List(ctx, &nss, client.MatchingLabels{translate.LabelDataplaneMode: translate.DataplaneModeAmbient}); err != nil {
		return []checkResult{{status: checkFail, what: "namespaces: " + err.Error()}}
	}
	enrolled := map[string]bool{}
	for _, ns := range nss.Items {
		enrolled[ns.Name] = true
	}
	byNode := map[string][]corev1.Pod{}
	for ns := range enrolled {
		var pods corev1.PodList
		if err := c.client.List(ctx, &pods, client.InNamespace(ns)); err != nil {
			return []checkResult{{status: checkFail, what: fmt.Sprintf("pods of %s: %v", ns, err)}}
		}
		for _, p := range pods.Items {
			if expectCaptured(&p, enrolled) {
				byNode[p.Spec.NodeName] = append(byNode[p.Spec.NodeName], p)
			}
		}
	}
	zts, err := ztunnelPods(ctx, c)
	if err != nil {
		return []checkResult{{status: checkFail, what: "ztunnel pods: " + err.Error()}}
	}
	ztOn := map[string]*corev1.Pod{}
	for i := range zts {
		if zts[i].Status.Phase == corev1.PodRunning && zts[i].DeletionTimestamp == nil {
			ztOn[zts[i].Spec.NodeName] = &zts[i]
		}
	}
	nodes := make([]string, 0, len(byNode))
	for n := range byNode {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	var results []checkResult
	captured, total := 0, 0
	for _, node := range nodes {
		pods := byNode[node]
		total += len(pods)
		zt := ztOn[node]
		if zt == nil {
			results = append(results, checkResult{status: checkFail,
				what: fmt.Sprintf("node %s: %d pods of enrolled namespaces, no running ztunnel", node, len(pods)),
				hint: "their traffic is not in the mesh; kubectl -n " + c.systemNamespace + " get pods -l " + ZtunnelPodLabel + " -o wide"})
			continue
		}
		raw, err := fetchAdmin(ctx, c, zt, ZtunnelAdminPort, "/config_dump")
		var dump ZtunnelDump
		if err == nil {
			err = json.Unmarshal(raw, &dump)
		}
		if err != nil {
			results = append(results, checkResult{status: checkWarn,
				what: fmt.Sprintf("node %s: cannot ask ztunnel %s: %v", node, zt.Name, err),
				hint: "port-forward needs the pods/portforward permission in " + c.systemNamespace})
			continue
		}
		ok, rs := captureResults(node, zt, pods, &dump)
		captured += ok
		results = append(results, ztunnelStateResults(node, zt, &dump)...)
		results = append(results, rs...)
	}
	summary := checkResult{status: checkOK, what: fmt.Sprintf("%d of %d running pods of enrolled namespaces captured by their node's ztunnel (%d nodes)", captured, total, len(nodes))}
	if captured < total {
		summary.status = checkWarn
	}
	return append([]checkResult{summary}, results...)
}

// captureResults compares the pods Kubernetes runs on node, which should be
// in the mesh, with what that node's ztunnel zt reports; it returns how many
// are captured and a result for each that is not.
func captureResults(node string, zt *corev1.Pod, pods []corev1.Pod, dump *ZtunnelDump) (int, []checkResult) {
	byUID := map[string]*ZtunnelPod{}
	for i := range dump.Pods {
		byUID[dump.Pods[i].Pod.UID] = &dump.Pods[i]
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Namespace+"/"+pods[i].Name < pods[j].Namespace+"/"+pods[j].Name })
	captured := 0
	var results []checkResult
	for _, p := range pods {
		name := fmt.Sprintf("pod %s/%s (node %s)", p.Namespace, p.Name, node)
		zp := byUID[string(p.UID)]
		switch {
		case zp == nil:
			results = append(results, checkResult{status: checkWarn, what: name + ": never reported to ztunnel, not captured",
				hint: "it started before ztunnel chained its CNI plugin and discovery did not find it: restart it (kubectl delete pod)"})
		case zp.State == "captured":
			captured++
		case zp.State == "failed":
			results = append(results, checkResult{status: checkFail, what: name + ": capture failed: " + zp.Error,
				hint: fmt.Sprintf("ztunnel retries every 5 s; its log says more: kubectl -n %s logs %s", zt.Namespace, zt.Name)})
		default:
			results = append(results, checkResult{status: checkWarn, what: name + ": " + zp.State + " in ztunnel's configuration, not captured",
				hint: "the controller has not sent it as enrolled yet; if this lasts, check the controller's log"})
		}
	}
	return captured, results
}

// ztunnelStateResults warns about a node's ztunnel that is not ready or
// not connected to the controller (it then runs on its last configuration:
// new pods, services and policies do not reach it).
func ztunnelStateResults(node string, zt *corev1.Pod, dump *ZtunnelDump) []checkResult {
	var rs []checkResult
	logs := fmt.Sprintf("kubectl -n %s logs %s", zt.Namespace, zt.Name)
	if dump.Ready != "ready" {
		rs = append(rs, checkResult{status: checkWarn, what: fmt.Sprintf("node %s: ztunnel not ready: %s", node, dump.Ready), hint: logs})
	}
	if !dump.XDS.Connected {
		what := fmt.Sprintf("node %s: ztunnel not connected to the controller, running on its last configuration", node)
		if dump.XDS.LastError != "" {
			what += ": " + dump.XDS.LastError
		}
		rs = append(rs, checkResult{status: checkWarn, what: what,
			hint: "changes (new pods, services, policies) do not reach this node until it reconnects; " + logs})
	}
	if dump.XDS.Nacks > 0 {
		rs = append(rs, checkResult{status: checkWarn, what: fmt.Sprintf("node %s: ztunnel rejected %d configuration updates", node, dump.XDS.Nacks),
			hint: "it keeps the last configuration it accepted; its log says why: " + logs})
	}
	return rs
}
