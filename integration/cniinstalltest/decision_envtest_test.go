//go:build envtest

package cniinstalltest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ambit-mesh/ambit/integration/kubetest"
	"github.com/ambit-mesh/ambit/ztunnel/daemon"
)

func daemonSet(ns string) *appsv1.DaemonSet {
	labels := map[string]string{"app": "ztunnel"}
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ztunnel"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "ztunnel", Image: "docker.io/ambit/ztunnel:test"}}},
			},
		},
	}
}

// checker reaches the envtest apiserver the way ztunnel does, with a
// bearer token (from a file) or, when tokenFile is empty, as the
// administrator of the test environment.
func checker(t *testing.T, cfg *rest.Config, ns, tokenFile string) *daemon.DaemonSetCheck {
	t.Helper()
	c := rest.CopyConfig(cfg)
	if tokenFile != "" {
		c = &rest.Config{Host: cfg.Host, TLSClientConfig: rest.TLSClientConfig{CAData: cfg.CAData}}
	}
	hc, err := rest.HTTPClientFor(c)
	if err != nil {
		t.Fatal(err)
	}
	host := cfg.Host
	if !strings.Contains(host, "://") {
		host = "https://" + host
	}
	return &daemon.DaemonSetCheck{Namespace: ns, Name: "ztunnel", Server: host, TokenFile: tokenFile, Client: hc,
		RetryDelay: 100 * time.Millisecond}
}

func expect(t *testing.T, c *daemon.DaemonSetCheck, wantUninstall bool, wantReason string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	u, why := c.Uninstalling(ctx)
	t.Logf("decision: uninstall=%v: %s", u, why)
	if u != wantUninstall || !strings.Contains(why, wantReason) {
		t.Fatalf("uninstall = %v (%q), want %v with %q", u, why, wantUninstall, wantReason)
	}
}

func TestUninstallDecision(t *testing.T) {
	env := kubetest.Start(t)
	ctx := t.Context()
	cl := env.Client

	t.Run("daemonset lifecycle", func(t *testing.T) {
		ns := env.Namespace(t, "ambit-system", nil)
		c := checker(t, env.Config, ns, "")
		expect(t, c, true, "no longer exists") // not created yet

		ds := daemonSet(ns)
		ds.Finalizers = []string{"ambit.dev/test-hold"}
		if err := cl.Create(ctx, ds); err != nil {
			t.Fatal(err)
		}
		expect(t, c, false, "exists")

		// Deleted while a finalizer holds it: deletionTimestamp is set.
		if err := cl.Delete(ctx, ds); err != nil {
			t.Fatal(err)
		}
		expect(t, c, true, "being deleted")

		if err := cl.Get(ctx, client.ObjectKeyFromObject(ds), ds); err != nil {
			t.Fatal(err)
		}
		ds.Finalizers = nil
		if err := cl.Update(ctx, ds); err != nil {
			t.Fatal(err)
		}
		expect(t, c, true, "no longer exists")
	})

	t.Run("namespace terminating", func(t *testing.T) {
		// Nothing empties a namespace in envtest (no namespace controller),
		// so a deleted one stays Terminating with its DaemonSet inside.
		ns := env.Namespace(t, "ambit-system", nil)
		c := checker(t, env.Config, ns, "")
		if err := cl.Create(ctx, daemonSet(ns)); err != nil {
			t.Fatal(err)
		}
		expect(t, c, false, "exists")
		nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
		if err := cl.Delete(ctx, nsObj); err != nil {
			t.Fatal(err)
		}
		expect(t, c, true, "namespace "+ns+" of DaemonSet")
	})

	t.Run("service account and RBAC", func(t *testing.T) {
		ns := env.Namespace(t, "ambit-system", nil)
		if err := cl.Create(ctx, daemonSet(ns)); err != nil {
			t.Fatal(err)
		}
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ztunnel"}}
		if err := cl.Create(ctx, sa); err != nil {
			t.Fatal(err)
		}
		cs, err := kubernetes.NewForConfig(env.Config)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "ztunnel", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		tokenFile := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
			t.Fatal(err)
		}
		c := checker(t, env.Config, ns, tokenFile)

		// No permission yet: the API refuses, as after RBAC was removed.
		expect(t, c, true, "HTTP 403")

		// The least privilege ztunnel needs: get its own DaemonSet.
		role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ztunnel"},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"},
				ResourceNames: []string{"ztunnel"}, Verbs: []string{"get"}}}}
		rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ztunnel"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "ztunnel"},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: "ztunnel"}}}
		for _, o := range []client.Object{role, rb} {
			if err := cl.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			u, why := c.Uninstalling(ctx)
			if !u {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("with RBAC granted: still uninstall (%s)", why)
			}
			time.Sleep(100 * time.Millisecond)
		}
		expect(t, c, false, "exists")

		// Uninstall removes the binding before the pods are gone.
		if err := cl.Delete(ctx, rb); err != nil {
			t.Fatal(err)
		}
		deadline = time.Now().Add(10 * time.Second)
		for {
			u, why := c.Uninstalling(ctx)
			if u {
				if !strings.Contains(why, "HTTP 403") {
					t.Fatalf("reason %q", why)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("with the binding deleted: still keep (%s)", why)
			}
			time.Sleep(100 * time.Millisecond)
		}

		// The service account itself deleted: its token no longer authenticates.
		if err := cl.Delete(ctx, sa); err != nil {
			t.Fatal(err)
		}
		// (the apiserver may cache a token's validation for a few seconds)
		deadline = time.Now().Add(30 * time.Second)
		for {
			u, why := c.Uninstalling(ctx)
			if u && strings.Contains(why, "HTTP 401") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("with the service account deleted: %v (%s), want a 401", u, why)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})

	t.Run("apiserver unreachable", func(t *testing.T) {
		c := &daemon.DaemonSetCheck{Namespace: "ambit-system", Name: "ztunnel", Server: "https://127.0.0.1:1",
			RetryDelay: 10 * time.Millisecond}
		expect(t, c, true, "cannot read")
	})
}
