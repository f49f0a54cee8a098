//go:build conformance

package conformance

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/wait"
	clientset "k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapiv1alpha2 "sigs.k8s.io/gateway-api/apis/v1alpha2"
	gwapiv1alpha3 "sigs.k8s.io/gateway-api/apis/v1alpha3"
	gwapiv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	xv1alpha1 "sigs.k8s.io/gateway-api/apisx/v1alpha1"
	"sigs.k8s.io/gateway-api/conformance"
	confv1 "sigs.k8s.io/gateway-api/conformance/apis/v1"
	"sigs.k8s.io/gateway-api/conformance/utils/config"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/features"

	"github.com/ambit-mesh/ambit/integration/internal/tier"
)

// TestMeshConformance runs the suite's mesh profiles against the cluster.
func TestMeshConformance(t *testing.T) {
	env := map[string]string{}
	for _, name := range []string{"AMBIT_CONFORMANCE_KUBECONFIG", "AMBIT_CONFORMANCE_VERSION"} {
		env[name] = os.Getenv(name)
		var err error
		if env[name] == "" {
			err = fmt.Errorf("$%s is not set: run the suite through hack/conformance.sh (make conformance)", name)
		}
		tier.Require(t, name, err)
	}
	log.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(true)))

	restConfig, err := clientcmd.BuildConfigFromFlags("", env["AMBIT_CONFORMANCE_KUBECONFIG"])
	if err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme,
		gwapiv1.Install, gwapiv1beta1.Install, gwapiv1alpha2.Install, gwapiv1alpha3.Install, xv1alpha1.Install,
	} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	clientOptions := client.Options{Scheme: scheme}
	c, err := client.New(restConfig, clientOptions)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := clientset.NewForConfig(restConfig)
	if err != nil {
		t.Fatal(err)
	}

	claimed, err := parseFeatures(os.Getenv("AMBIT_CONFORMANCE_FEATURES"))
	if err != nil {
		t.Fatalf("$AMBIT_CONFORMANCE_FEATURES: %v", err)
	}
	profiles, err := parseProfiles(os.Getenv("AMBIT_CONFORMANCE_PROFILES"))
	if err != nil {
		t.Fatalf("$AMBIT_CONFORMANCE_PROFILES: %v", err)
	}
	report := os.Getenv("AMBIT_CONFORMANCE_REPORT")
	if report != "" {
		if report, err = filepath.Abs(report); err != nil {
			t.Fatal(err)
		}
	}

	prepareMesh(t, c)

	timeouts := config.DefaultTimeoutConfig()
	opts := suite.ConformanceOptions{
		ConfigurableOptions: suite.ConfigurableOptions{
			GatewayClassName:     WaypointClass,
			NamespaceLabels:      NamespaceLabels(),
			ReportOutputPath:     report,
			CleanupBaseResources: true,
			CleanupTestResources: true,
			SupportedFeatures:    claimed,
			TimeoutConfig:        timeouts,
			SkipTests:            splitList(os.Getenv("AMBIT_CONFORMANCE_SKIP_TESTS")),
			RunTest:              os.Getenv("AMBIT_CONFORMANCE_RUN_TEST"),
			Mode:                 "default",
			ConformanceProfiles:  profiles,
			Implementation: confv1.Implementation{
				Organization: "ambit-mesh",
				Project:      "ambit",
				URL:          "https://github.com/ambit-mesh/ambit",
				Version:      env["AMBIT_CONFORMANCE_VERSION"],
				Contact:      []string{"https://github.com/ambit-mesh/ambit/issues"},
			},
		},
		Client:        c,
		ClientOptions: clientOptions,
		Clientset:     cs,
		RestConfig:    restConfig,
		ManifestFS:    []fs.FS{&conformance.Manifests},
	}
	conformance.RunConformanceWithOptions(t, opts)
}

// WaypointClass is the GatewayClass of Ambit's waypoints.
const WaypointClass = "ambit-waypoint"

// WaypointName is the waypoint Gateway created in each mesh namespace.
const WaypointName = "waypoint"

// MeshNamespaces are the namespaces of the suite's mesh manifests.
var MeshNamespaces = []string{suite.MeshNamespace, suite.MeshConsumerNamespace}

// NamespaceLabels enrol the suite's namespaces in the mesh and send their
// Services' traffic through the namespace's waypoint.
func NamespaceLabels() map[string]string {
	return map[string]string{
		"ambit.dev/dataplane-mode": "ambient",
		"ambit.dev/use-waypoint":   WaypointName,
	}
}

// ClaimedFeatures are the features Ambit claims: the profiles' core
// features (Mesh, HTTPRoute, GRPCRoute), the mesh Extended features, and the
// HTTPRoute Extended features that mesh tests also need.
var ClaimedFeatures = []features.FeatureName{
	features.SupportMesh,
	features.SupportHTTPRoute,
	features.SupportGRPCRoute,
	features.SupportHTTPRouteResponseHeaderModification,
	features.SupportHTTPRouteParentRefPort,
	features.SupportHTTPRoute303RedirectStatusCode,
	features.SupportHTTPRoute307RedirectStatusCode,
	features.SupportHTTPRoute308RedirectStatusCode,
	features.SupportMeshClusterIPMatching,
	features.SupportMeshConsumerRoute,
	features.SupportMeshHTTPRouteRewritePath,
	features.SupportMeshHTTPRouteSchemeRedirect,
	features.SupportMeshHTTPRouteRedirectPort,
	features.SupportMeshHTTPRouteRedirectPath,
	features.SupportMeshHTTPRouteBackendRequestHeaderModification,
	features.SupportMeshHTTPRouteQueryParamMatching,
	features.SupportMeshHTTPRouteNamedRouteRule,
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseFeatures reads a comma-separated feature list; empty gives
// ClaimedFeatures. Unknown names are an error.
func parseFeatures(s string) ([]features.FeatureName, error) {
	names := splitList(s)
	if len(names) == 0 {
		return ClaimedFeatures, nil
	}
	known := sets.New[features.FeatureName]()
	for _, f := range features.AllFeatures.UnsortedList() {
		known.Insert(f.Name)
	}
	var out []features.FeatureName
	for _, n := range names {
		if !known.Has(features.FeatureName(n)) {
			return nil, fmt.Errorf("unknown feature %q", n)
		}
		out = append(out, features.FeatureName(n))
	}
	return out, nil
}

// parseProfiles reads a comma-separated profile list; empty gives MESH-HTTP
// and MESH-GRPC.
func parseProfiles(s string) ([]suite.ConformanceProfileName, error) {
	names := splitList(s)
	if len(names) == 0 {
		return []suite.ConformanceProfileName{suite.MeshHTTPConformanceProfileName, suite.MeshGRPCConformanceProfileName}, nil
	}
	var out []suite.ConformanceProfileName
	for _, n := range names {
		switch p := suite.ConformanceProfileName(n); p {
		case suite.MeshHTTPConformanceProfileName, suite.MeshGRPCConformanceProfileName:
			out = append(out, p)
		default:
			return nil, fmt.Errorf("profile %q: only %s and %s can run here (no ingress Gateway class yet)", n,
				suite.MeshHTTPConformanceProfileName, suite.MeshGRPCConformanceProfileName)
		}
	}
	return out, nil
}

// prepareMesh removes what a crashed run left in the mesh namespaces, then
// creates them with Ambit's labels and a ready waypoint in each.
func prepareMesh(t *testing.T, c client.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	for _, ns := range MeshNamespaces {
		err := c.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			t.Fatalf("delete leftover namespace %s: %v", ns, err)
		}
		t.Logf("removing namespace %s left by an earlier run", ns)
		poll(t, ctx, "namespace "+ns+" gone", func(ctx context.Context) (bool, error) {
			err := c.Get(ctx, types.NamespacedName{Name: ns}, &corev1.Namespace{})
			return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
		})
	}
	for _, ns := range MeshNamespaces {
		obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: NamespaceLabels()}}
		if err := c.Create(ctx, obj); err != nil {
			t.Fatalf("create namespace %s: %v", ns, err)
		}
		gw := &gwapiv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: WaypointName},
			Spec: gwapiv1.GatewaySpec{
				GatewayClassName: WaypointClass,
				Listeners:        []gwapiv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
			},
		}
		if err := c.Create(ctx, gw); err != nil {
			t.Fatalf("create waypoint %s/%s: %v", ns, WaypointName, err)
		}
	}
	for _, ns := range MeshNamespaces {
		key := types.NamespacedName{Namespace: ns, Name: WaypointName}
		poll(t, ctx, "waypoint "+key.String()+" Programmed", func(ctx context.Context) (bool, error) {
			var gw gwapiv1.Gateway
			if err := c.Get(ctx, key, &gw); err != nil {
				return false, err
			}
			return meta.IsStatusConditionTrue(gw.Status.Conditions, string(gwapiv1.GatewayConditionProgrammed)), nil
		})
		poll(t, ctx, "waypoint Deployment "+key.String()+" available", func(ctx context.Context) (bool, error) {
			var d appsv1.Deployment
			if err := c.Get(ctx, key, &d); err != nil {
				return false, client.IgnoreNotFound(err)
			}
			return d.Status.ObservedGeneration == d.Generation && d.Status.AvailableReplicas > 0 &&
				d.Status.UpdatedReplicas == d.Status.Replicas, nil
		})
		t.Logf("waypoint %s ready", key)
	}
}

// poll waits until cond is true, failing the test with what it waited for.
func poll(t *testing.T, ctx context.Context, what string, cond func(context.Context) (bool, error)) {
	t.Helper()
	start := time.Now()
	var last error
	err := wait.PollUntilContextCancel(ctx, 2*time.Second, true, func(ctx context.Context) (bool, error) {
		ok, err := cond(ctx)
		if err != nil {
			last = err
			return false, nil
		}
		return ok, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s (%v): %v (last error: %v)", what, time.Since(start).Round(time.Second), err, last)
	}
}
