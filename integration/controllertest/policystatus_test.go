//go:build envtest

package controllertest

import (
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/integration/kubetest"
)

// testPolicyStatus: the controller, as its service account, writes the
// Accepted condition of each kind of Ambit policy (the RBAC of
// manifests/rbac must allow each status subresource), True for a valid
// policy and False for one it cannot use (L7 fields in a policy without a
// waypoint target).
func testPolicyStatus(t *testing.T, env *kubetest.Env) {
	c, ctx := env.Client, t.Context()
	ns := env.Namespace(t, "pol", nil)
	docs := fmt.Sprintf(`apiVersion: security.ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: %[1]s}
spec:
  action: ALLOW
  rules: [{to: [{ports: [8080]}]}]
---
apiVersion: security.ambit.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: strict, namespace: %[1]s}
spec:
  mtls: {mode: STRICT}
---
apiVersion: traffic.ambit.dev/v1alpha1
kind: BackendPolicy
metadata: {name: eject, namespace: %[1]s}
spec:
  targetRefs: [{kind: Service, name: reviews}]
  outlierDetection: {consecutive5xx: 3}
---
apiVersion: security.ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: invalid, namespace: %[1]s}
spec:
  rules: [{to: [{methods: [GET]}]}]
---
apiVersion: traffic.ambit.dev/v1alpha1
kind: FaultInjection
metadata: {name: abort, namespace: %[1]s}
spec:
  abort: {httpStatus: 503, percent: 10}
`, ns)
	want := map[string]string{"allow-get": "True", "strict": "True", "eject": "True", "invalid": "False", "abort": "True"}
	var objs []*unstructured.Unstructured
	for _, doc := range strings.Split(docs, "\n---\n") {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatal(err)
		}
		if err := c.Create(ctx, u); err != nil {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
		objs = append(objs, u)
	}
	for _, o := range objs {
		eventually(t, fmt.Sprintf("%s %s Accepted=%s", o.GetKind(), o.GetName(), want[o.GetName()]), func() error {
			got := &unstructured.Unstructured{}
			got.SetGroupVersionKind(o.GroupVersionKind())
			if err := c.Get(ctx, client.ObjectKeyFromObject(o), got); err != nil {
				return err
			}
			conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
			for _, x := range conds {
				m, _ := x.(map[string]any)
				if m["type"] == "Accepted" {
					if m["status"] != want[o.GetName()] {
						return fmt.Errorf("Accepted=%v (%v: %v)", m["status"], m["reason"], m["message"])
					}
					return nil
				}
			}
			return fmt.Errorf("no Accepted condition: %v", got.Object["status"])
		})
	}
}
