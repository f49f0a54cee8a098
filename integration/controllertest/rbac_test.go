//go:build envtest

package controllertest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ambit-mesh/ambit/integration/internal/tier"
	"github.com/ambit-mesh/ambit/integration/kubetest"
)

// controllerUser is the service account the controller runs as; replicas
// impersonate it, so the tests prove manifests/rbac sufficient.
const controllerUser = "system:serviceaccount:" + systemNS + ":ambit-controller"

// installRBAC creates every object of manifests/rbac/controller.yaml.
func installRBAC(t *testing.T, env *kubetest.Env) {
	t.Helper()
	root, err := tier.RepoRoot()
	must(t, err)
	data, err := os.ReadFile(filepath.Join(root, "manifests", "rbac", "controller.yaml"))
	must(t, err)
	decode := serializer.NewCodecFactory(env.Scheme).UniversalDeserializer().Decode
	for _, doc := range strings.Split(string(data), "\n---") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		obj, _, err := decode([]byte(doc), nil, nil)
		must(t, err)
		must(t, env.Client.Create(t.Context(), obj.(client.Object)))
	}
}
