//go:build envtest

package examplestest

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	securityv1alpha1 "github.com/ambit-mesh/ambit/apis/security/v1alpha1"
	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/kubetest"
)

// decode splits a YAML stream into objects; every document must be a
// Kubernetes object.
func decode(t *testing.T, what string, data []byte) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	d := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var m map[string]any
		if err := d.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("%s: %v", what, err)
		}
		if m == nil {
			continue // an empty document
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetAPIVersion() == "" || u.GetKind() == "" || u.GetName() == "" {
			t.Fatalf("%s: a document without apiVersion, kind or name: %v", what, m)
		}
		out = append(out, u)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no objects", what)
	}
	return out
}

func kustomize(t *testing.T, kubectl, dir string) []byte {
	t.Helper()
	out, err := exec.Command(kubectl, "kustomize", dir).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, ee.Stderr)
		}
		t.Fatalf("kubectl kustomize %s: %v", dir, err)
	}
	return out
}

func TestExamplesApply(t *testing.T) {
	root, err := tier.RepoRoot()
	tier.Require(t, "the Ambit repository (go.work)", err)
	bins, err := kubetest.FindBinaries(root)
	tier.Require(t, "kubectl from `make tools`", err)
	examples := filepath.Join(root, "examples")

	// Every manifest of the sample app is listed in its kustomization.
	var kust struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
		Images     []struct {
			Name, NewTag string
		} `json:"images"`
	}
	data, err := os.ReadFile(filepath.Join(examples, "sample-app", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, &kust); err != nil {
		t.Fatalf("sample-app/kustomization.yaml: %v", err)
	}
	files, _ := filepath.Glob(filepath.Join(examples, "sample-app", "*.yaml"))
	var want []string
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" {
			want = append(want, b)
		}
	}
	got := append([]string(nil), kust.Resources...)
	sort.Strings(got)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("kustomization resources %v, files %v", got, want)
	}
	if len(kust.Images) != 1 || kust.Images[0].Name != "docker.io/ambit/demo" {
		t.Errorf("kustomization images %+v: want one entry for docker.io/ambit/demo", kust.Images)
	}

	app := decode(t, "kubectl kustomize examples/sample-app", kustomize(t, bins.Kubectl, filepath.Join(examples, "sample-app")))
	checkSampleApp(t, app, "latest")

	// Installers set the tag with an overlay's `images:`.
	overlay := t.TempDir()
	rel, err := filepath.Rel(overlay, filepath.Join(examples, "sample-app"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(
		"resources:\n- "+rel+"\nimages:\n- name: docker.io/ambit/demo\n  newTag: v1.2.3-4-gabcdef0-dirty\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	checkSampleApp(t, decode(t, "overlay", kustomize(t, bins.Kubectl, overlay)), "v1.2.3-4-gabcdef0-dirty")

	var extra []*unstructured.Unstructured
	for _, f := range []string{"waypoint.yaml", "catalog-90-10.yaml", "catalog-header-v2.yaml", "authz-metrics-get-only.yaml"} {
		data, err := os.ReadFile(filepath.Join(examples, f))
		if err != nil {
			t.Fatal(err)
		}
		extra = append(extra, decode(t, f, data)...)
	}
	all, _ := filepath.Glob(filepath.Join(examples, "*.yaml"))
	if len(all) != 4 {
		t.Errorf("examples/*.yaml: %d files, this test applies 4: add the new ones here", len(all))
	}

	env := kubetest.Start(t)
	c := env.Client
	ctx := t.Context()
	create := func(objs []*unstructured.Unstructured) {
		t.Helper()
		for _, o := range objs {
			if err := c.Create(ctx, o, client.FieldValidation("Strict")); err != nil {
				t.Errorf("create %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
			}
		}
	}
	create(app) // the Namespace comes first in the kustomize output
	// The two routes share a name (one replaces the other): create the
	// 90/10 one, then update to the header one, as `kubectl apply` would.
	var routes []*unstructured.Unstructured
	for _, o := range extra {
		if o.GetKind() == "HTTPRoute" {
			routes = append(routes, o)
			continue
		}
		create([]*unstructured.Unstructured{o})
	}
	if len(routes) != 2 {
		t.Fatalf("%d HTTPRoutes in the examples, want 2", len(routes))
	}
	create(routes[:1])
	var live gwapiv1.HTTPRoute
	if err := c.Get(ctx, client.ObjectKey{Namespace: "ambit-demo", Name: "catalog"}, &live); err != nil {
		t.Fatal(err)
	}
	if len(live.Spec.Rules) != 1 || len(live.Spec.Rules[0].BackendRefs) != 2 ||
		*live.Spec.Rules[0].BackendRefs[0].Weight != 90 || *live.Spec.Rules[0].BackendRefs[1].Weight != 10 ||
		live.Spec.ParentRefs[0].Kind == nil || *live.Spec.ParentRefs[0].Kind != "Service" {
		t.Errorf("catalog-90-10 stored as %+v", live.Spec)
	}
	header := routes[1].DeepCopy()
	header.SetResourceVersion(live.ResourceVersion)
	if err := c.Update(ctx, header, client.FieldValidation("Strict")); err != nil {
		t.Errorf("update to catalog-header-v2: %v", err)
	}

	var ns corev1.Namespace
	if err := c.Get(ctx, client.ObjectKey{Name: "ambit-demo"}, &ns); err != nil || ns.Labels["ambit.dev/dataplane-mode"] != "ambient" {
		t.Errorf("namespace ambit-demo: %v, labels %v", err, ns.Labels)
	}
	var gw gwapiv1.Gateway
	if err := c.Get(ctx, client.ObjectKey{Namespace: "ambit-demo", Name: "waypoint"}, &gw); err != nil ||
		gw.Spec.GatewayClassName != "ambit-waypoint" || len(gw.Spec.Listeners) != 1 ||
		gw.Spec.Listeners[0].Name != "mesh" || gw.Spec.Listeners[0].Port != 15008 || gw.Spec.Listeners[0].Protocol != "HBONE" {
		t.Errorf("waypoint Gateway: %v %+v", err, gw.Spec)
	}
	var ap securityv1alpha1.AuthorizationPolicy
	if err := c.Get(ctx, client.ObjectKey{Namespace: "ambit-demo", Name: "ratings-metrics-frontend-get-only"}, &ap); err != nil ||
		ap.Spec.Action != securityv1alpha1.ActionAllow || len(ap.Spec.TargetRefs) != 1 || ap.Spec.TargetRefs[0].Name != "ratings" ||
		ap.Spec.Rules[0].From[0].Principals[0] != "spiffe://cluster.local/ns/ambit-demo/sa/frontend" {
		t.Errorf("AuthorizationPolicy: %v %+v", err, ap.Spec)
	}

	// The check is real: the same server refuses broken variants.
	for _, tc := range []struct {
		what   string
		mutate func(u *unstructured.Unstructured)
		kind   string
	}{
		{"an unknown field", func(u *unstructured.Unstructured) {
			_ = unstructured.SetNestedField(u.Object, "x", "spec", "surprise")
		}, "AuthorizationPolicy"},
		{"a Pod target", func(u *unstructured.Unstructured) {
			_ = unstructured.SetNestedSlice(u.Object, []any{map[string]any{"group": "", "kind": "Pod", "name": "x"}}, "spec", "targetRefs")
		}, "AuthorizationPolicy"},
		{"a negative weight", func(u *unstructured.Unstructured) {
			_ = unstructured.SetNestedSlice(u.Object, []any{map[string]any{"backendRefs": []any{map[string]any{"name": "catalog-v1", "port": int64(80), "weight": int64(-1)}}}}, "spec", "rules")
		}, "HTTPRoute"},
	} {
		var base *unstructured.Unstructured
		for _, o := range extra {
			if o.GetKind() == tc.kind {
				base = o
			}
		}
		bad := base.DeepCopy()
		bad.SetName("broken")
		bad.SetResourceVersion("")
		tc.mutate(bad)
		if err := c.Create(ctx, bad, client.FieldValidation("Strict")); err == nil {
			t.Errorf("%s with %s was accepted", tc.kind, tc.what)
		}
	}
}

// checkSampleApp checks the rendered sample app: the Deployments and
// Services the README names, and every container on the demo image with tag.
func checkSampleApp(t *testing.T, objs []*unstructured.Unstructured, tag string) {
	t.Helper()
	if objs[0].GetKind() != "Namespace" {
		t.Errorf("first object is a %s, want the Namespace", objs[0].GetKind())
	}
	names := map[string]bool{}
	for _, o := range objs {
		names[o.GetKind()+"/"+o.GetName()] = true
		if o.GetKind() != "Namespace" && o.GetNamespace() != "ambit-demo" {
			t.Errorf("%s/%s is in namespace %q", o.GetKind(), o.GetName(), o.GetNamespace())
		}
		if o.GetKind() != "Deployment" {
			continue
		}
		containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, ci := range containers {
			cm := ci.(map[string]any)
			if cm["image"] != "docker.io/ambit/demo:"+tag || cm["imagePullPolicy"] != "IfNotPresent" {
				t.Errorf("%s: image %v pull policy %v, want docker.io/ambit/demo:%s IfNotPresent", o.GetName(), cm["image"], cm["imagePullPolicy"], tag)
			}
			if cm["readinessProbe"] == nil || cm["resources"] == nil {
				t.Errorf("%s: no readiness probe or resources", o.GetName())
			}
		}
	}
	for _, n := range []string{
		"Namespace/ambit-demo", "Deployment/frontend", "Deployment/catalog-v1", "Deployment/catalog-v2",
		"Deployment/ratings", "Deployment/loadgen", "Service/frontend", "Service/catalog",
		"Service/catalog-v1", "Service/catalog-v2", "Service/ratings",
	} {
		if !names[n] {
			t.Errorf("the sample app lacks %s", n)
		}
	}
}
