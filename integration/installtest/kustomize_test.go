//go:build envtest

package installtest

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// images are the container images of the base, by workload.
var images = map[string]string{
	"Deployment ambit-system/ambit-controller": "docker.io/ambit/controller:latest",
	"DaemonSet ambit-system/ztunnel":           "docker.io/ambit/ztunnel:latest",
}

// TestKustomize renders manifests/ with the real kubectl: the output is the
// same every time, every object carries Ambit's labels, and images are
// docker.io/ambit/<name>:latest pulled IfNotPresent.
func TestKustomize(t *testing.T) {
	k := newKubectl(t)
	first, err := k.run(t.Context(), "kustomize", "manifests")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		again, err := k.run(t.Context(), "kustomize", "manifests")
		if err != nil {
			t.Fatal(err)
		}
		if again != first {
			t.Fatal("kubectl kustomize manifests/ renders differently from one run to the next")
		}
	}
	objs := decode(t, first)
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
		id := objectID(o.GetKind(), o.GetNamespace(), o.GetName())
		if l := o.GetLabels(); l[partOf] != "ambit" || l[labelName] == "" {
			t.Errorf("%s labels %v, want %s=ambit and %s", id, l, partOf, labelName)
		}
		if ns := o.GetNamespace(); ns != "" && ns != systemNS {
			t.Errorf("%s is outside %s", id, systemNS)
		}
		tmpl, ok, _ := unstructured.NestedMap(o.Object, "spec", "template")
		if !ok {
			continue
		}
		tl, _, _ := unstructured.NestedStringMap(tmpl, "metadata", "labels")
		if tl[partOf] != "ambit" || tl[labelName] == "" {
			t.Errorf("%s pod labels %v", id, tl)
		}
		ctrs, _, _ := unstructured.NestedSlice(tmpl, "spec", "containers")
		for _, c := range ctrs {
			c := c.(map[string]any)
			if c["image"] != images[id] || c["imagePullPolicy"] != "IfNotPresent" {
				t.Errorf("%s container %v: image %v pull policy %v, want %s IfNotPresent", id, c["name"], c["image"], c["imagePullPolicy"], images[id])
			}
		}
	}
	for kind, n := range map[string]int{
		"Namespace": 1, "Deployment": 1, "DaemonSet": 1, "Service": 1, "PodDisruptionBudget": 1,
		"ServiceAccount": 2, "ClusterRole": 2, "ClusterRoleBinding": 2, "Role": 2, "RoleBinding": 2,
	} {
		if kinds[kind] != n {
			t.Errorf("%d %s objects, want %d", kinds[kind], kind, n)
		}
	}
	crds := map[string]bool{}
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" {
			crds[o.GetName()] = true
		}
	}
	for _, name := range []string{
		"authorizationpolicies.security.ambit.dev", "peerauthentications.security.ambit.dev",
		"backendpolicies.traffic.ambit.dev", "faultinjections.traffic.ambit.dev",
		"gatewayclasses.gateway.networking.k8s.io", "gateways.gateway.networking.k8s.io",
		"httproutes.gateway.networking.k8s.io", "grpcroutes.gateway.networking.k8s.io",
		"referencegrants.gateway.networking.k8s.io",
	} {
		if !crds[name] {
			t.Errorf("CRD %s not in the install", name)
		}
	}
}

// TestOverlay is what installers do: an overlay whose images: sets the tag
// (and, for a registry, the name) changes the images and nothing else.
func TestOverlay(t *testing.T) {
	k := newKubectl(t)
	base, err := k.run(t.Context(), "kustomize", "manifests")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, filepath.Join(k.dir, "manifests"))
	if err != nil {
		t.Fatal(err)
	}
	overlay := `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ` + rel + `
images:
- name: docker.io/ambit/controller
  newTag: v1.2.3-test
- name: docker.io/ambit/ztunnel
  newName: registry.example.invalid/mesh/ztunnel
  newTag: v1.2.3-test
`
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(overlay), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := k.run(t.Context(), "kustomize", dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"Deployment ambit-system/ambit-controller": "docker.io/ambit/controller:v1.2.3-test",
		"DaemonSet ambit-system/ztunnel":           "registry.example.invalid/mesh/ztunnel:v1.2.3-test",
	}
	got, baseObjs := decode(t, out), decode(t, base)
	if !slices.Equal(ids(got), ids(baseObjs)) {
		t.Fatalf("overlay renders %v, base %v", ids(got), ids(baseObjs))
	}
	byID := map[string]*unstructured.Unstructured{}
	for _, o := range baseObjs {
		byID[objectID(o.GetKind(), o.GetNamespace(), o.GetName())] = o
	}
	for _, o := range got {
		id := objectID(o.GetKind(), o.GetNamespace(), o.GetName())
		if img, ok := want[id]; ok {
			ctrs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
			if len(ctrs) != 1 || ctrs[0].(map[string]any)["image"] != img {
				t.Errorf("%s containers %v, want image %s", id, ctrs, img)
				continue
			}
			// Apart from the image, the object is the base's.
			ctrs[0].(map[string]any)["image"] = images[id]
			must(t, unstructured.SetNestedSlice(o.Object, ctrs, "spec", "template", "spec", "containers"))
		}
		if !equalObjects(o, byID[id]) {
			t.Errorf("%s differs from the base beyond its image", id)
		}
	}
}

func equalObjects(a, b *unstructured.Unstructured) bool {
	ja, err1 := a.MarshalJSON()
	jb, err2 := b.MarshalJSON()
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}
