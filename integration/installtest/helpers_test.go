//go:build envtest

package installtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"

	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/kubetest"
)

const (
	systemNS   = "ambit-system"
	partOf     = "app.kubernetes.io/part-of"
	labelName  = "app.kubernetes.io/name"
	timeout    = 60 * time.Second
	kubectlMax = 3 * time.Minute
)

// kubectl runs the real kubectl (from `make tools`).
type kubectl struct {
	path       string
	kubeconfig string // "" for commands that need no cluster
	dir        string // working directory: the repository root
}

// newKubectl finds kubectl and the repository root; a missing kubectl skips
// the test, or fails it under CI.
func newKubectl(t testing.TB) *kubectl {
	t.Helper()
	root, err := tier.RepoRoot()
	tier.Require(t, "repository root", err)
	bins, err := kubetest.FindBinaries(root)
	tier.Require(t, "kubectl from `make tools`", err)
	return &kubectl{path: bins.Kubectl, dir: root}
}

// forCluster returns a kubectl that talks to the apiserver of cfg, through a
// kubeconfig written to a temporary folder.
func (k *kubectl) forCluster(t testing.TB, cfg *rest.Config) *kubectl {
	t.Helper()
	c := *k
	c.kubeconfig = kubetest.Kubeconfig(t, cfg)
	return &c
}

// run runs kubectl with args and returns its standard output; the error
// carries standard error.
func (k *kubectl) run(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, kubectlMax)
	defer cancel()
	if k.kubeconfig != "" {
		args = append([]string{"--kubeconfig", k.kubeconfig}, args...)
	}
	cmd := exec.CommandContext(ctx, k.path, args...)
	cmd.Dir = k.dir
	// Nothing from the caller's environment may point kubectl elsewhere.
	cmd.Env = []string{"HOME=" + os.TempDir(), "PATH=" + os.Getenv("PATH")}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// decode splits a multi-document YAML stream into objects.
func decode(t testing.TB, data string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	d := yaml.NewYAMLOrJSONDecoder(strings.NewReader(data), 4096)
	for {
		u := &unstructured.Unstructured{}
		err := d.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("decode rendered YAML: %v", err)
		}
		if len(u.Object) == 0 {
			continue
		}
		out = append(out, u)
	}
}

// objectID names an object by kind, namespace and name.
func objectID(kind, namespace, name string) string {
	if namespace == "" {
		return kind + " " + name
	}
	return kind + " " + namespace + "/" + name
}

func ids(objs []*unstructured.Unstructured) []string {
	var out []string
	for _, o := range objs {
		out = append(out, objectID(o.GetKind(), o.GetNamespace(), o.GetName()))
	}
	sort.Strings(out)
	return out
}

func eventually(t testing.TB, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
