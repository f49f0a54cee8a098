//go:build envtest

package installtest

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// TestArgsAcceptedByBinaries builds the controller and ztunnel and runs each
// with the args of its manifest (with $(VAR) expanded as the kubelet does)
// plus -version: a flag the binary does not know fails the run.
func TestArgsAcceptedByBinaries(t *testing.T) {
	k := newKubectl(t)
	rendered, err := k.run(t.Context(), "kustomize", "manifests")
	if err != nil {
		t.Fatal(err)
	}
	pods := map[string]corev1.PodSpec{}
	for _, o := range decode(t, rendered) {
		switch o.GetKind() {
		case "Deployment":
			var d appsv1.Deployment
			must(t, runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &d))
			pods[d.Name] = d.Spec.Template.Spec
		case "DaemonSet":
			var d appsv1.DaemonSet
			must(t, runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &d))
			pods[d.Name] = d.Spec.Template.Spec
		}
	}
	for workload, pkg := range map[string]string{
		"ambit-controller": "./controller/cmd/controller",
		"ztunnel":          "./ztunnel/cmd/ztunnel",
	} {
		t.Run(workload, func(t *testing.T) {
			spec, ok := pods[workload]
			if !ok || len(spec.Containers) != 1 {
				t.Fatalf("no single-container workload %s in the install", workload)
			}
			ctr := spec.Containers[0]
			if len(ctr.Command) != 0 {
				t.Errorf("command %q: the image's entrypoint must run", ctr.Command)
			}
			bin := filepath.Join(t.TempDir(), workload)
			build := exec.CommandContext(t.Context(), "go", "build", "-o", bin, pkg)
			build.Dir = k.dir
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("go build %s: %v\n%s", pkg, err, out)
			}
			// The container's own env; a $(VAR) it does not set would reach
			// the binary unexpanded.
			vars := map[string]string{}
			for _, e := range ctr.Env {
				vars[e.Name] = "value-of-" + strings.ToLower(e.Name)
			}
			if _, ok := vars["POD_NAMESPACE"]; ok {
				vars["POD_NAMESPACE"] = systemNS
			}
			var args []string
			for _, a := range ctr.Args {
				for name, v := range vars {
					a = strings.ReplaceAll(a, "$("+name+")", v)
				}
				if strings.Contains(a, "$(") {
					t.Errorf("arg %q names a variable the container does not set", a)
				}
				args = append(args, a)
			}
			out, err := exec.CommandContext(t.Context(), bin, append(args, "-version")...).CombinedOutput()
			if err != nil {
				t.Fatalf("%s %q -version: %v\n%s", workload, args, err, out)
			}
		})
	}
}
