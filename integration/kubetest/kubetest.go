package kubetest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapiv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"

	securityv1alpha1 "github.com/ambit-mesh/ambit/apis/security/v1alpha1"
	trafficv1alpha1 "github.com/ambit-mesh/ambit/apis/traffic/v1alpha1"
	"github.com/ambit-mesh/ambit/integration/internal/tier"
)

// Env is a running kube-apiserver with etcd and every CRD Ambit uses.
type Env struct {
	// Config reaches the apiserver as an administrator.
	Config *rest.Config
	// Client is a controller-runtime client with Scheme.
	Client client.Client
	// Scheme knows the core, Gateway API and Ambit types.
	Scheme *runtime.Scheme
	// CRDs are the CustomResourceDefinitions that were installed.
	CRDs []*apiextensionsv1.CustomResourceDefinition
	// CertDir is the apiserver's certificate folder. It holds sa-signer.key,
	// the PEM key the apiserver signs service-account tokens with (and
	// sa-signer.crt, its certificate), for tests that must forge a token.
	CertDir string
	// ServiceAccountIssuer is the issuer ("iss") of the service-account
	// tokens the apiserver signs.
	ServiceAccountIssuer string
}

// NewScheme returns a scheme with the core Kubernetes, Gateway API and Ambit types.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme,
		gwapiv1.Install, gwapiv1beta1.Install, securityv1alpha1.AddToScheme,
		trafficv1alpha1.AddToScheme,
	} {
		if err := add(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Binaries are the paths of the control-plane binaries envtest runs.
type Binaries struct {
	APIServer, Etcd, Kubectl string
}

// FindBinaries locates the binaries `make tools` built. The variables
// TEST_ASSET_KUBE_APISERVER, TEST_ASSET_ETCD and TEST_ASSET_KUBECTL (as the
// Makefile sets them) win; otherwise hack/tools.sh names the folders.
func FindBinaries(root string) (Binaries, error) {
	dir := func(group string) (string, error) {
		out, err := exec.Command(filepath.Join(root, "hack", "tools.sh"), "dir", group).Output()
		return strings.TrimSpace(string(out)), err
	}
	kube, err := dir("kube")
	if err != nil {
		return Binaries{}, fmt.Errorf("hack/tools.sh dir kube: %w", err)
	}
	etcd, err := dir("etcd")
	if err != nil {
		return Binaries{}, fmt.Errorf("hack/tools.sh dir etcd: %w", err)
	}
	pick := func(env, def string) string {
		if v := os.Getenv(env); v != "" {
			return v
		}
		return def
	}
	b := Binaries{
		APIServer: pick("TEST_ASSET_KUBE_APISERVER", filepath.Join(kube, "kube-apiserver")),
		Kubectl:   pick("TEST_ASSET_KUBECTL", filepath.Join(kube, "kubectl")),
		Etcd:      pick("TEST_ASSET_ETCD", filepath.Join(etcd, "etcd")),
	}
	for _, p := range []string{b.APIServer, b.Etcd, b.Kubectl} {
		if _, err := os.Stat(p); err != nil {
			return Binaries{}, fmt.Errorf("%w (run `make tools`)", err)
		}
	}
	return b, nil
}

// CRDDirs are the folders under the repository root whose CRDs are installed.
var CRDDirs = []string{"manifests/crds", "manifests/gateway-api"}

// Options change what Start installs.
type Options struct {
	// NoCRDs starts the apiserver without any CRD (for tests that install
	// them the way a user does).
	NoCRDs bool
}

// Start runs a fresh apiserver and etcd for the test and stops them at cleanup.
// A missing binary skips the test, or fails it under CI.
func Start(t testing.TB) *Env {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with Options.
func StartWith(t testing.TB, opts Options) *Env {
	t.Helper()
	root, err := tier.RepoRoot()
	tier.Require(t, "repository root", err)
	bins, err := FindBinaries(root)
	tier.Require(t, "kube-apiserver, etcd and kubectl from `make tools`", err)

	scheme, err := NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{
		Scheme:                scheme,
		ErrorIfCRDPathMissing: true,
		ControlPlane: envtest.ControlPlane{
			Etcd: &envtest.Etcd{Path: bins.Etcd},
			APIServer: &envtest.APIServer{
				Path: bins.APIServer,
			},
			KubectlPath: bins.Kubectl,
		},
	}
	for _, d := range CRDDirs {
		if opts.NoCRDs {
			break
		}
		env.CRDDirectoryPaths = append(env.CRDDirectoryPaths, filepath.Join(root, d))
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start kube-apiserver and etcd: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop kube-apiserver and etcd: %v", err)
		}
	})
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	apiserver := env.ControlPlane.APIServer
	return &Env{
		Config: cfg, Client: c, Scheme: scheme, CRDs: env.CRDs,
		CertDir:              apiserver.CertDir,
		ServiceAccountIssuer: apiserver.SecureServing.URL("https", "/").String(),
	}
}

// Namespace creates a namespace with the given labels and returns its name.
func (e *Env) Namespace(t testing.TB, prefix string, labels map[string]string) string {
	t.Helper()
	ns := &corev1.Namespace{}
	ns.GenerateName = prefix + "-"
	ns.Labels = labels
	if err := e.Client.Create(t.Context(), ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return ns.Name
}

// Kubeconfig writes a kubeconfig for cfg (an administrator's, as Env.Config)
// to a temporary file, for tools that read one, and returns its path. Its
// context "envtest" is the current one, without a namespace.
func Kubeconfig(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken,
	}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}
