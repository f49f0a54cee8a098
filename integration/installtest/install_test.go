//go:build envtest

package installtest

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controller/ca"
	"github.com/ambit-mesh/ambit/controller/deploy"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/integration/kubetest"
	"github.com/ambit-mesh/ambit/pkg/caclient"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/daemon"
)

// TestInstall applies manifests/ to an apiserver that has no CRDs, checks
// what was installed, and deletes it again.
func TestInstall(t *testing.T) {
	k := newKubectl(t)
	env := kubetest.StartWith(t, kubetest.Options{NoCRDs: true})
	kc := k.forCluster(t, env.Config)
	ctx := t.Context()

	rendered, err := k.run(ctx, "kustomize", "manifests")
	if err != nil {
		t.Fatal(err)
	}
	want := decode(t, rendered)

	// One command installs everything, CRDs included.
	out, err := kc.run(ctx, "apply", "--server-side", "--field-manager=ambit-install", "-k", "manifests")
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	t.Logf("kubectl apply:\n%s", out)

	c := env.Client
	kube, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	installed := listAmbit(t, env.Config)
	if got, w := installed, ids(want); !slices.Equal(got, w) {
		t.Fatalf("objects labelled %s=ambit after install:\n  %v\nwant what kustomize renders:\n  %v", partOf, got, w)
	}

	t.Run("Controller", func(t *testing.T) { checkController(t, c) })
	t.Run("Ztunnel", func(t *testing.T) { checkZtunnel(t, c) })
	t.Run("EveryContainer", func(t *testing.T) { checkContainers(t, c) })
	t.Run("RBAC", func(t *testing.T) { checkRBAC(t, kube) })
	t.Run("ControllerCreatesCARoot", func(t *testing.T) { checkCARoot(t, env) })
	var waypointChildren []string
	t.Run("ControllerDeploysAWaypoint", func(t *testing.T) { waypointChildren = checkWaypoint(t, env) })

	t.Run("ReapplyChangesNothing", func(t *testing.T) {
		var before []string
		for _, o := range []client.Object{&appsv1.Deployment{}, &appsv1.DaemonSet{}} {
			name := "ambit-controller"
			if _, ok := o.(*appsv1.DaemonSet); ok {
				name = "ztunnel"
			}
			if err := c.Get(ctx, types.NamespacedName{Namespace: systemNS, Name: name}, o); err != nil {
				t.Fatal(err)
			}
			before = append(before, o.GetResourceVersion())
		}
		if _, err := kc.run(ctx, "apply", "--server-side", "--field-manager=ambit-install", "-k", "manifests"); err != nil {
			t.Fatalf("second install: %v", err)
		}
		dep, ds := &appsv1.Deployment{}, &appsv1.DaemonSet{}
		must(t, c.Get(ctx, types.NamespacedName{Namespace: systemNS, Name: "ambit-controller"}, dep))
		must(t, c.Get(ctx, types.NamespacedName{Namespace: systemNS, Name: "ztunnel"}, ds))
		if after := []string{dep.ResourceVersion, ds.ResourceVersion}; !slices.Equal(before, after) {
			t.Errorf("a second apply rewrote the workloads: resourceVersions %v -> %v", before, after)
		}
	})

	// Uninstall. envtest runs no namespace controller: the Namespace stays
	// Terminating, and what the controller created in it (the CA Secret and
	// root ConfigMap) is what a cluster's namespace controller removes with
	// it. Everything else must be gone. --wait=false: kubectl would wait for
	// the Namespace forever.
	out, err = kc.run(ctx, "delete", "--wait=false", "-k", "manifests")
	if err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	t.Logf("kubectl delete:\n%s", out)
	// Waypoint children live in the users' namespaces; they are owned by
	// their Gateway, which went with the Gateway API CRDs, so a cluster's
	// garbage collector (which envtest lacks) removes them.
	leftOver := append([]string{
		objectID("ConfigMap", systemNS, ca.DefaultConfigMapName),
		objectID("Namespace", "", systemNS),
		objectID("Secret", systemNS, ca.DefaultSecretName),
	}, waypointChildren...)
	slices.Sort(leftOver)
	eventually(t, "every Ambit object but the Namespace's content and waypoint children to be deleted", func() error {
		if left := listAmbit(t, env.Config); !slices.Equal(left, leftOver) {
			return fmt.Errorf("left: %v, want only %v", left, leftOver)
		}
		return nil
	})
	ns := &corev1.Namespace{}
	must(t, c.Get(ctx, types.NamespacedName{Name: systemNS}, ns))
	if ns.DeletionTimestamp == nil {
		t.Errorf("namespace %s is not being deleted", systemNS)
	}
	// No CRD of Ambit or the Gateway API is left.
	crds, err := kube.Discovery().ServerGroups()
	must(t, err)
	for _, g := range crds.Groups {
		if strings.HasSuffix(g.Name, "ambit.dev") || strings.Contains(g.Name, "gateway.networking") {
			t.Errorf("API group %s still served after uninstall", g.Name)
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// listAmbit lists every object labelled app.kubernetes.io/part-of=ambit, of
// every listable resource the apiserver serves, in every namespace and
// cluster-scoped.
func listAmbit(t testing.TB, cfg *rest.Config) []string {
	t.Helper()
	cfg = rest.CopyConfig(cfg)
	cfg.WarningHandler = rest.NoWarnings{} // deprecated kinds are listed too
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	must(t, err)
	dyn, err := dynamic.NewForConfig(cfg)
	must(t, err)
	lists, err := disc.ServerPreferredResources()
	if err != nil && !discovery.IsGroupDiscoveryFailedError(err) {
		t.Fatalf("discovery: %v", err)
	}
	var found []string
	seen := map[string]bool{}
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		must(t, err)
		for _, r := range l.APIResources {
			if strings.Contains(r.Name, "/") || !slices.Contains(r.Verbs, "list") {
				continue
			}
			res, err := dyn.Resource(gv.WithResource(r.Name)).List(t.Context(), metav1.ListOptions{LabelSelector: partOf + "=ambit"})
			if apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err) {
				continue // a CRD going away
			}
			if err != nil {
				t.Fatalf("list %s: %v", gv.WithResource(r.Name), err)
			}
			for _, o := range res.Items {
				id := objectID(r.Kind, o.GetNamespace(), o.GetName())
				if !seen[id] {
					seen[id] = true
					found = append(found, id)
				}
			}
		}
	}
	slices.Sort(found)
	return found
}

func checkController(t *testing.T, c client.Client) {
	ctx := t.Context()
	dep := &appsv1.Deployment{}
	must(t, c.Get(ctx, types.NamespacedName{Namespace: systemNS, Name: "ambit-controller"}, dep))
	if r := dep.Spec.Replicas; r == nil || *r != 2 {
		t.Errorf("replicas %v, want 2", r)
	}
	pod := dep.Spec.Template.Spec
	if pod.ServiceAccountName != "ambit-controller" {
		t.Errorf("service account %q", pod.ServiceAccountName)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	ctr := pod.Containers[0]
	if ctr.Image != "docker.io/ambit/controller:latest" || ctr.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %q pull policy %q", ctr.Image, ctr.ImagePullPolicy)
	}
	args := strings.Join(ctr.Args, " ")
	for _, a := range []string{"-leader-elect=true", "-system-namespace=" + systemNS} {
		if !slices.Contains(ctr.Args, a) {
			t.Errorf("args %q lack %s", args, a)
		}
	}
	var names []string
	for _, a := range ctr.Args {
		if v, ok := strings.CutPrefix(a, "-ca-server-names="); ok {
			names = strings.Split(v, ",")
		}
		if strings.HasPrefix(a, "-waypoint-image") {
			t.Errorf("args set %s: the waypoint image must default to the controller's own version", a)
		}
	}
	if !slices.Contains(names, caclient.DefaultServerName) {
		t.Errorf("CA server names %v lack %s, the name data planes check", names, caclient.DefaultServerName)
	}
	if p := ctr.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.IntValue() != 15021 {
		t.Errorf("readiness probe %+v, want GET :15021/readyz", p)
	}
	if p := ctr.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.IntValue() != 15021 {
		t.Errorf("liveness probe %+v, want GET :15021/healthz", p)
	}
	// Hardened: non-root, read-only root, no capabilities, RuntimeDefault seccomp.
	psc, sc := pod.SecurityContext, ctr.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod security context %+v", psc)
	}
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("container security context %+v", sc)
	}
	// Soft anti-affinity over nodes.
	aff := pod.Affinity
	if aff == nil || aff.PodAntiAffinity == nil || len(aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 0 ||
		len(aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 ||
		aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.TopologyKey != "kubernetes.io/hostname" {
		t.Errorf("affinity %+v, want one preferred pod anti-affinity term over kubernetes.io/hostname", aff)
	} else if sel := aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.LabelSelector; !selects(t, sel, dep.Spec.Template.Labels) {
		t.Errorf("anti-affinity selector %+v does not select the controller pods", sel)
	}

	svc := &corev1.Service{}
	must(t, c.Get(ctx, types.NamespacedName{Namespace: systemNS, Name: "ambit-controller"}, svc))
	ports := map[int32]string{}
	for _, p := range svc.Spec.Ports {
		ports[p.Port] = p.Name
		if p.TargetPort.IntValue() != int(p.Port) {
			t.Errorf("service port %s targets %s", p.Name, p.TargetPort.String())
		}
	}
	if want := map[int32]string{15010: "grpc-xds", 15012: "grpc-ca", 15020: "http-metrics"}; fmt.Sprint(ports) != fmt.Sprint(want) {
		t.Errorf("service ports %v, want %v", ports, want)
	}
	if !selects(t, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, dep.Spec.Template.Labels) {
		t.Errorf("service selector %v does not select the controller pods %v", svc.Spec.Selector, dep.Spec.Template.Labels)
	}

	pdb := &policyv1.PodDisruptionBudget{}
	must(t, c.Get(ctx, types.NamespacedName{Namespace: systemNS, Name: "ambit-controller"}, pdb))
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 || pdb.Spec.MaxUnavailable != nil {
		t.Errorf("PDB minAvailable %v maxUnavailable %v, want minAvailable 1", pdb.Spec.MinAvailable, pdb.Spec.MaxUnavailable)
	}
	if !selects(t, pdb.Spec.Selector, dep.Spec.Template.Labels) {
		t.Errorf("PDB selector %+v does not select the controller pods", pdb.Spec.Selector)
	}
}

func selects(t testing.TB, sel *metav1.LabelSelector, set map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("selector %+v: %v", sel, err)
		return false
	}
	return !s.Empty() && s.Matches(labels.Set(set))
}

// checkZtunnel checks the ztunnel pod contract of docs/reference/install.md.
func checkZtunnel(t *testing.T, c client.Client) {
	ds := &appsv1.DaemonSet{}
	must(t, c.Get(t.Context(), types.NamespacedName{Namespace: systemNS, Name: "ztunnel"}, ds))
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxUnavailable == nil || us.RollingUpdate.MaxUnavailable.IntValue() != 1 {
		t.Errorf("update strategy %+v, want RollingUpdate maxUnavailable 1", us)
	}
	pod := ds.Spec.Template.Spec
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		t.Errorf("hostNetwork %v hostPID %v hostIPC %v, want all false", pod.HostNetwork, pod.HostPID, pod.HostIPC)
	}
	if pod.ServiceAccountName != "ztunnel" || (pod.AutomountServiceAccountToken != nil && !*pod.AutomountServiceAccountToken) {
		t.Errorf("service account %q automount %v: want ztunnel with its token mounted", pod.ServiceAccountName, pod.AutomountServiceAccountToken)
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priority class %q", pod.PriorityClassName)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || float64(*g) <= daemon.DefaultShutdownDrain.Seconds() {
		t.Errorf("terminationGracePeriodSeconds %v, want more than ztunnel's drain %v", g, daemon.DefaultShutdownDrain)
	}
	tolerateAll := slices.ContainsFunc(pod.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Key == "" && tl.Operator == corev1.TolerationOpExists && tl.Effect == ""
	})
	if !tolerateAll {
		t.Errorf("tolerations %+v, want one that tolerates every taint", pod.Tolerations)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	ctr := pod.Containers[0]
	if ctr.Image != "docker.io/ambit/ztunnel:latest" || ctr.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %q pull policy %q", ctr.Image, ctr.ImagePullPolicy)
	}
	if sc := ctr.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged || sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("security context %+v, want privileged, as root", sc)
	}
	wantArgs := []string{
		"-cni-bin-dir=/host/opt/cni/bin", "-cni-conf-dir=/host/etc/cni/net.d",
		"-ca-root-file=/etc/ambit/ca/root-cert.pem", "-daemonset=$(POD_NAMESPACE)/ztunnel", "-host-proc=/host/proc",
	}
	if !slices.Equal(ctr.Args, wantArgs) {
		t.Errorf("args %q, want %q", ctr.Args, wantArgs)
	}
	env := map[string]string{}
	for _, e := range ctr.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	for name, path := range map[string]string{"NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"} {
		if env[name] != path {
			t.Errorf("env %s from %q, want %q", name, env[name], path)
		}
	}
	ports := map[int32]bool{}
	for _, p := range ctr.Ports {
		ports[p.ContainerPort] = true
	}
	if !ports[15020] || !ports[15021] || ports[15000] {
		t.Errorf("container ports %v, want 15020 and 15021 (15000 stays on localhost)", ports)
	}
	if p := ctr.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz/ready" || p.HTTPGet.Port.IntValue() != 15021 {
		t.Errorf("readiness probe %+v, want GET :15021/healthz/ready", p)
	}

	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range ctr.VolumeMounts {
		mounts[m.MountPath] = m
	}
	hostPaths := []struct{ host, mount string }{
		{"/var/run/ambit", "/var/run/ambit"},
		{"/var/run/netns", "/var/run/netns"},
		{"/opt/cni/bin", "/host/opt/cni/bin"},
		{"/etc/cni/net.d", "/host/etc/cni/net.d"},
		{"/proc", "/host/proc"},
	}
	for _, hp := range hostPaths {
		m, ok := mounts[hp.mount]
		if !ok {
			t.Errorf("nothing mounted at %s", hp.mount)
			continue
		}
		v := volumes[m.Name]
		if v.HostPath == nil || v.HostPath.Path != hp.host {
			t.Errorf("%s: volume %+v, want hostPath %s", hp.mount, v.VolumeSource, hp.host)
			continue
		}
		if hp.host == "/var/run/ambit" && (v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectoryOrCreate) {
			t.Errorf("hostPath /var/run/ambit type %v, want DirectoryOrCreate", v.HostPath.Type)
		}
		if hp.host == "/proc" && !m.ReadOnly {
			t.Errorf("the host's /proc is mounted writable")
		}
		wantProp := corev1.MountPropagationNone
		if hp.host == "/var/run/netns" {
			wantProp = corev1.MountPropagationHostToContainer
		}
		if got := ptrDeref(m.MountPropagation, corev1.MountPropagationNone); got != wantProp {
			t.Errorf("%s mount propagation %s, want %s", hp.mount, got, wantProp)
		}
	}
	if m, ok := mounts["/etc/ambit/ca"]; !ok || volumes[m.Name].ConfigMap == nil || volumes[m.Name].ConfigMap.Name != ca.DefaultConfigMapName {
		t.Errorf("/etc/ambit/ca: want ConfigMap %s mounted", ca.DefaultConfigMapName)
	}
	// The projected CA token lands at caclient.DefaultTokenFile.
	var tokenOK bool
	for path, m := range mounts {
		v := volumes[m.Name]
		if v.Projected == nil {
			continue
		}
		for _, s := range v.Projected.Sources {
			if s.ServiceAccountToken != nil && path+"/"+s.ServiceAccountToken.Path == caclient.DefaultTokenFile {
				tokenOK = s.ServiceAccountToken.Audience == ca.Audience
			}
		}
	}
	if !tokenOK {
		t.Errorf("no projected token of audience %s at %s", ca.Audience, caclient.DefaultTokenFile)
	}
}

func ptrDeref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// checkContainers checks every workload Ambit installs: each container has
// requests and limits of CPU and memory, readiness and liveness probes, and
// pods are annotated for Prometheus on a port they expose.
func checkContainers(t *testing.T, c client.Client) {
	ctx := t.Context()
	var templates []corev1.PodTemplateSpec
	var deps appsv1.DeploymentList
	must(t, c.List(ctx, &deps, client.MatchingLabels{partOf: "ambit"}))
	for _, d := range deps.Items {
		templates = append(templates, d.Spec.Template)
	}
	var dss appsv1.DaemonSetList
	must(t, c.List(ctx, &dss, client.MatchingLabels{partOf: "ambit"}))
	for _, d := range dss.Items {
		templates = append(templates, d.Spec.Template)
	}
	if len(templates) != 2 {
		t.Fatalf("%d workloads labelled %s=ambit, want the controller and ztunnel", len(templates), partOf)
	}
	for _, tmpl := range templates {
		name := tmpl.Labels[labelName]
		if name == "" || tmpl.Labels[partOf] != "ambit" {
			t.Errorf("pod labels %v, want %s and %s=ambit", tmpl.Labels, labelName, partOf)
		}
		a := tmpl.Annotations
		ports := map[string]bool{}
		for _, ctr := range append(slices.Clone(tmpl.Spec.InitContainers), tmpl.Spec.Containers...) {
			for _, p := range ctr.Ports {
				ports[fmt.Sprint(p.ContainerPort)] = true
			}
			for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				req, lim := ctr.Resources.Requests[res], ctr.Resources.Limits[res]
				if req.IsZero() || lim.IsZero() || req.Cmp(lim) > 0 {
					t.Errorf("%s/%s %s: request %s limit %s, want both, request <= limit", name, ctr.Name, res, req.String(), lim.String())
				}
			}
			if ctr.ReadinessProbe == nil || ctr.LivenessProbe == nil {
				t.Errorf("%s/%s: readiness %v liveness %v, want both probes", name, ctr.Name, ctr.ReadinessProbe != nil, ctr.LivenessProbe != nil)
			}
		}
		if a["prometheus.io/scrape"] != "true" || a["prometheus.io/path"] != "/metrics" || !ports[a["prometheus.io/port"]] {
			t.Errorf("%s: annotations %v, want Prometheus scraping on an exposed port", name, a)
		}
	}
}

// checkRBAC asks the apiserver's authorizer what the two service accounts
// may do.
func checkRBAC(t *testing.T, kube kubernetes.Interface) {
	type check struct {
		sa                                           string
		verb, group, resource, namespace, name, what string
		allowed                                      bool
	}
	ztunnel, controller := "ztunnel", "ambit-controller"
	checks := []check{
		{ztunnel, "get", "apps", "daemonsets", systemNS, "ztunnel", "its own DaemonSet", true},
		{ztunnel, "get", "apps", "daemonsets", systemNS, "other", "another DaemonSet", false},
		{ztunnel, "list", "apps", "daemonsets", systemNS, "", "DaemonSets", false},
		{ztunnel, "update", "apps", "daemonsets", systemNS, "ztunnel", "its DaemonSet", false},
		{ztunnel, "get", "", "pods", "default", "", "pods", false},
		{ztunnel, "get", "", "namespaces", "", systemNS, "its namespace", true},
		{ztunnel, "get", "", "namespaces", "", "default", "another namespace", false},
		{ztunnel, "list", "", "namespaces", "", "", "namespaces", false},
		{ztunnel, "get", "", "secrets", systemNS, "ambit-ca", "the CA Secret", false},
		{controller, "get", "", "secrets", systemNS, "ambit-ca", "the CA Secret", true},
		{controller, "get", "", "secrets", "default", "x", "Secrets elsewhere", false},
		{controller, "list", "", "secrets", systemNS, "", "Secrets", false},
		{controller, "delete", "", "secrets", systemNS, "ambit-ca", "the CA Secret", false},
		{controller, "update", "", "configmaps", systemNS, ca.DefaultConfigMapName, "the root ConfigMap", true},
		{controller, "update", "", "configmaps", "default", "x", "ConfigMaps elsewhere (it applies them)", false},
		{controller, "patch", "", "configmaps", "shop", "wp-ambit-ca-root", "a waypoint's root ConfigMap", true},
		{controller, "create", "authentication.k8s.io", "tokenreviews", "", "", "TokenReviews", true},
		{controller, "patch", "apps", "deployments", "shop", "wp", "waypoint Deployments", true},
		{controller, "update", "gateway.networking.k8s.io", "gateways", "shop", "wp", "Gateways (only their status)", false},
		{controller, "update", "gateway.networking.k8s.io", "gateways/status", "shop", "wp", "Gateway status", true},
		{controller, "update", "gateway.networking.k8s.io", "httproutes/status", "shop", "r", "HTTPRoute status", true},
		{controller, "update", "security.ambit.dev", "authorizationpolicies/status", "shop", "p", "AuthorizationPolicy status", true},
		{controller, "update", "security.ambit.dev", "peerauthentications/status", "shop", "p", "PeerAuthentication status", true},
		{controller, "update", "traffic.ambit.dev", "backendpolicies/status", "shop", "p", "BackendPolicy status", true},
		{controller, "update", "traffic.ambit.dev", "faultinjections/status", "shop", "p", "FaultInjection status", true},
		{controller, "update", "security.ambit.dev", "authorizationpolicies", "shop", "p", "AuthorizationPolicies (only their status)", false},
		{controller, "update", "coordination.k8s.io", "leases", systemNS, "ambit-controller", "its Lease", true},
		{controller, "update", "coordination.k8s.io", "leases", "kube-system", "x", "other Leases", false},
		{controller, "create", "", "pods", "shop", "", "Pods", false},
		{controller, "create", "", "events", systemNS, "", "core Events in ambit-system", true},
		{controller, "create", "", "events", "shop", "", "core Events elsewhere", false},
		{controller, "create", "events.k8s.io", "events", "shop", "", "Events on Gateways", true},
		{controller, "create", "gateway.networking.k8s.io", "gatewayclasses", "", "", "GatewayClasses", true},
		{controller, "delete", "gateway.networking.k8s.io", "gatewayclasses", "", "ambit-waypoint", "GatewayClasses", false},
		{controller, "delete", "", "namespaces", "", "shop", "Namespaces", false},
	}
	for _, ch := range checks {
		resource, sub, _ := strings.Cut(ch.resource, "/") // "gateways/status": a subresource
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   "system:serviceaccount:" + systemNS + ":" + ch.sa,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + systemNS, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: ch.verb, Group: ch.group, Resource: resource, Subresource: sub, Namespace: ch.namespace, Name: ch.name,
			},
		}}
		res, err := kube.AuthorizationV1().SubjectAccessReviews().Create(t.Context(), sar, metav1.CreateOptions{})
		must(t, err)
		if res.Status.Allowed != ch.allowed {
			t.Errorf("%s may %s %s: %v, want %v (%s)", ch.sa, ch.verb, ch.what, res.Status.Allowed, ch.allowed, res.Status.Reason)
		}
	}
}

// checkCARoot runs the controller's CA start-up as its service account: it
// generates the CA Secret and publishes the root ConfigMap in ambit-system,
// and updates that ConfigMap when the root changes.
func checkCARoot(t *testing.T, env *kubetest.Env) {
	ctx := t.Context()
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + systemNS + ":ambit-controller"}
	kube, err := kubernetes.NewForConfig(cfg)
	must(t, err)
	log := slog.New(slog.DiscardHandler)
	server, err := ca.New(ctx, kube, ca.Config{}, log)
	if err != nil {
		t.Fatalf("CA start-up as the controller: %v", err)
	}
	other, err := identity.NewRootAuthority("cluster.local", time.Hour)
	must(t, err)
	roots := append([]*x509.Certificate{other.Cert}, server.Roots()...)
	if err := ca.PublishRoot(ctx, kube, ca.Config{}, roots, log); err != nil {
		t.Fatalf("update the root ConfigMap as the controller: %v", err)
	}
	cm := &corev1.ConfigMap{}
	must(t, env.Client.Get(ctx, types.NamespacedName{Namespace: systemNS, Name: ca.DefaultConfigMapName}, cm))
	if got, err := identity.ParseCertsPEM([]byte(cm.Data[ca.ConfigMapRootKey])); err != nil || len(got) != 2 {
		t.Errorf("root ConfigMap holds %d roots (%v), want 2", len(got), err)
	}
	sec := &corev1.Secret{}
	must(t, env.Client.Get(ctx, types.NamespacedName{Namespace: systemNS, Name: ca.DefaultSecretName}, sec))
	for _, o := range []client.Object{cm, sec} {
		if o.GetLabels()[partOf] != "ambit" {
			t.Errorf("%T %s labels %v, want %s=ambit", o, o.GetName(), o.GetLabels(), partOf)
		}
	}
}

// checkWaypoint runs the controller's waypoint deployer as its service
// account against the installed RBAC: it creates the GatewayClass and a
// waypoint's children. It returns the children's IDs.
func checkWaypoint(t *testing.T, env *kubetest.Env) []string {
	ctx := t.Context()
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + systemNS + ":ambit-controller"}
	cl, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	must(t, err)
	root, err := identity.NewRootAuthority("cluster.local", time.Hour)
	must(t, err)
	ns := env.Namespace(t, "shop", nil)
	gw := &gwapiv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "wp"},
		Spec: gwapiv1.GatewaySpec{
			GatewayClassName: translate.WaypointClassName,
			Listeners: []gwapiv1.Listener{{
				Name: "mesh", Port: translate.WaypointListenerPort, Protocol: translate.WaypointListenerProtocol,
			}},
		},
	}
	must(t, env.Client.Create(ctx, gw))
	d := &deploy.Deployer{Client: cl, Logger: slog.New(slog.DiscardHandler), Options: deploy.Options{RootCertsPEM: string(identity.EncodeCertsPEM(root.Cert))}}
	if err := d.Sync(ctx, []gwapiv1.Gateway{*gw}); err != nil {
		t.Fatalf("deploy a waypoint as the controller: %v", err)
	}
	gc := &gwapiv1.GatewayClass{}
	must(t, env.Client.Get(ctx, types.NamespacedName{Name: translate.WaypointClassName}, gc))
	if gc.Spec.ControllerName != translate.ControllerName || gc.Labels[partOf] != "ambit" {
		t.Errorf("GatewayClass controllerName %q labels %v", gc.Spec.ControllerName, gc.Labels)
	}
	res := deploy.Render(gw, d.Options)
	var children []string
	for _, o := range res.Objects() {
		obj := o.(client.Object)
		live := obj.DeepCopyObject().(client.Object)
		must(t, env.Client.Get(ctx, client.ObjectKeyFromObject(obj), live))
		ref := metav1.GetControllerOf(live)
		if ref == nil || ref.UID != gw.UID || live.GetLabels()[partOf] != "ambit" {
			t.Errorf("%T %s: controller %+v labels %v, want the Gateway and %s=ambit", live, live.GetName(), ref, live.GetLabels(), partOf)
		}
		children = append(children, objectID(obj.GetObjectKind().GroupVersionKind().Kind, obj.GetNamespace(), obj.GetName()))
	}
	return children
}
