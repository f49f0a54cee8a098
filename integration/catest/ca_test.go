//go:build envtest

package catest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/ambit-mesh/ambit/controller/ca"
	"github.com/ambit-mesh/ambit/integration/kubetest"
	"github.com/ambit-mesh/ambit/pkg/caclient"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

const (
	systemNS   = "ambit-system"
	serverName = "ambit-controller.ambit-system.svc"
	maxLife    = 3 * time.Hour
)

// fixture is one apiserver with two nodes, a workload namespace and a CA.
type fixture struct {
	env   *kubetest.Env
	kube  kubernetes.Interface
	shop  string // workload namespace
	pods  map[string]*corev1.Pod
	addr  string
	roots *x509.CertPool
	root  *x509.Certificate
	cfg   ca.Config
	ca    *ca.Server
}

// testLog sends the CA's warnings and errors to the test log.
func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// must(f())(t) returns f's value, or fails t with f's error.
func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func createNamespace(t testing.TB, kube kubernetes.Interface, name string) {
	t.Helper()
	must(kube.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}))(t)
}

func createSA(t testing.TB, kube kubernetes.Interface, ns, name string) {
	t.Helper()
	must(kube.CoreV1().ServiceAccounts(ns).Create(t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}))(t)
}

func createPod(t testing.TB, kube kubernetes.Interface, ns, name, sa, node string) *corev1.Pod {
	t.Helper()
	return must(kube.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			NodeName:           node,
			Containers:         []corev1.Container{{Name: "app", Image: "example.invalid/app:1"}},
		},
	}, metav1.CreateOptions{}))(t)
}

// token returns a real TokenRequest token of ns/sa for audience, bound to pod.
func token(t testing.TB, kube kubernetes.Interface, ns, sa, audience string, pod *corev1.Pod) string {
	t.Helper()
	req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{audience}, ExpirationSeconds: ptr.To(int64(600)),
	}}
	if pod != nil {
		req.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tr := must(kube.CoreV1().ServiceAccounts(ns).CreateToken(t.Context(), sa, req, metav1.CreateOptions{}))(t)
	return tr.Status.Token
}

func setup(t *testing.T) *fixture {
	env := kubetest.Start(t)
	kube := must(kubernetes.NewForConfig(env.Config))(t)
	ctx := t.Context()
	f := &fixture{env: env, kube: kube, pods: map[string]*corev1.Pod{}}

	for _, n := range []string{"node-a", "node-b"} {
		must(kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}))(t)
	}
	createNamespace(t, kube, systemNS)
	createSA(t, kube, systemNS, "ztunnel")
	f.pods["ztunnel-a"] = createPod(t, kube, systemNS, "ztunnel-a", "ztunnel", "node-a")
	f.pods["ztunnel-b"] = createPod(t, kube, systemNS, "ztunnel-b", "ztunnel", "node-b")
	f.shop = env.Namespace(t, "shop", nil)
	for _, sa := range []string{"web", "db", "batch"} {
		createSA(t, kube, f.shop, sa)
	}
	f.pods["web-a"] = createPod(t, kube, f.shop, "web-a", "web", "node-a")
	f.pods["db-b"] = createPod(t, kube, f.shop, "db-b", "db", "node-b")

	// The real CA, as the controller runs it, on a loopback port.
	f.cfg = ca.Config{SystemNamespace: systemNS, MaxCertLifetime: maxLife}
	srvCtx, cancel := context.WithCancel(context.Background())
	server := must(ca.New(ctx, kube, f.cfg, testLog(t).With("component", "ca")))(t)
	f.ca = server
	lis := must(net.Listen("tcp", "127.0.0.1:0"))(t)
	served := make(chan error, 1)
	go func() { served <- server.Serve(srvCtx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("CA serve: %v", err)
		}
	})
	f.addr = lis.Addr().String()

	// Data planes bootstrap trust from the published ConfigMap.
	cm := must(kube.CoreV1().ConfigMaps(systemNS).Get(ctx, ca.DefaultConfigMapName, metav1.GetOptions{}))(t)
	f.roots = must(caclient.RootsFromPEM([]byte(cm.Data[ca.ConfigMapRootKey])))(t)
	f.root = must(identity.ParseCertsPEM([]byte(cm.Data[ca.ConfigMapRootKey])))(t)[0]
	return f
}

// client returns a CA client that sends tok.
func (f *fixture) client(t testing.TB, tok string) *caclient.Client {
	t.Helper()
	c := must(caclient.New(caclient.Config{
		Address: f.addr, ServerName: serverName, Roots: f.roots,
		Token: func(context.Context) (string, error) { return tok, nil },
	}))(t)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func newCSR(t testing.TB, id string, dns ...string) (*ecdsa.PrivateKey, identity.SPIFFEID, []byte) {
	t.Helper()
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))(t)
	sid := must(identity.ParseSPIFFEID(id))(t)
	der := must(x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{sid.URL()}, DNSNames: dns}, key))(t)
	return key, sid, der
}

func (f *fixture) id(ns, sa string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa }

func wantCode(t testing.TB, err error, code codes.Code, mention string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), mention) {
		t.Fatalf("error %v, want %v mentioning %q", err, code, mention)
	}
	t.Logf("%v: %s", code, status.Convert(err).Message())
}

func TestCA(t *testing.T) {
	f := setup(t)
	kube := f.kube

	t.Run("WorkloadGetsOwnIdentity", func(t *testing.T) {
		tok := token(t, kube, f.shop, "web", ca.Audience, f.pods["web-a"])
		// The client reads the token file at every call.
		tokFile := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c := must(caclient.New(caclient.Config{Address: f.addr, ServerName: serverName, Roots: f.roots, TokenFile: tokFile}))(t)
		defer c.Close()

		for _, tc := range []struct{ ask, want time.Duration }{
			{2 * time.Hour, 2 * time.Hour},
			{100 * time.Hour, maxLife}, // capped at the maximum
			{0, identity.DefaultCertLifetime},
		} {
			if tc.ask == 0 && identity.DefaultCertLifetime > maxLife {
				tc.want = maxLife
			}
			key, id, der := newCSR(t, f.id(f.shop, "web"))
			before := time.Now()
			chain, roots, err := c.Fetch(t.Context(), id, der, tc.ask)
			if err != nil {
				t.Fatalf("fetch for %v: %v", tc.ask, err)
			}
			leaf := chain[0]
			pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
			if !ok || pub.Curve != elliptic.P256() || !pub.Equal(key.Public()) {
				t.Errorf("leaf key %T is not the CSR's P-256 key", leaf.PublicKey)
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Errorf("leaf SANs: URIs %v DNS %v IP %v", leaf.URIs, leaf.DNSNames, leaf.IPAddresses)
			}
			if len(chain) != 2 || !chain[1].Equal(f.root) || len(roots) != 1 || !roots[0].Equal(f.root) {
				t.Errorf("chain of %d, roots of %d: not the published root", len(chain), len(roots))
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: f.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
				t.Errorf("leaf does not verify against the published root: %v", err)
			}
			if d := leaf.NotAfter.Sub(before.Add(tc.want)); d < -5*time.Second || d > 5*time.Second {
				t.Errorf("asked %v: NotAfter %v is %v off now+%v", tc.ask, leaf.NotAfter, d, tc.want)
			}
		}

		// A rotated (here: broken) token file is seen at the next call.
		if err := os.WriteFile(tokFile, []byte("not-a-token"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, id, der := newCSR(t, f.id(f.shop, "web"))
		_, _, err := c.Fetch(t.Context(), id, der, time.Hour)
		wantCode(t, err, codes.Unauthenticated, "not authenticated")
	})

	t.Run("WorkloadAsksForAnotherServiceAccount", func(t *testing.T) {
		c := f.client(t, token(t, kube, f.shop, "web", ca.Audience, f.pods["web-a"]))
		_, id, der := newCSR(t, f.id(f.shop, "db"))
		_, _, err := c.Fetch(t.Context(), id, der, time.Hour)
		wantCode(t, err, codes.PermissionDenied, "may obtain only its own identity "+f.id(f.shop, "web")+", not "+f.id(f.shop, "db"))
	})

	t.Run("ZtunnelOnlyForPodsOnItsNode", func(t *testing.T) {
		tok := token(t, kube, systemNS, "ztunnel", ca.Audience, f.pods["ztunnel-a"])
		// The apiserver records the bound pod's node in the token.
		tr := must(kube.AuthenticationV1().TokenReviews().Create(t.Context(), &authnv1.TokenReview{
			Spec: authnv1.TokenReviewSpec{Token: tok, Audiences: []string{ca.Audience}},
		}, metav1.CreateOptions{}))(t)
		t.Logf("ztunnel token review: user %q extra %v", tr.Status.User.Username, tr.Status.User.Extra)
		if got := tr.Status.User.Extra[ca.ExtraNodeName]; len(got) != 1 || got[0] != "node-a" {
			t.Errorf("token extra %s = %v, want [node-a]", ca.ExtraNodeName, got)
		}

		c := f.client(t, tok)
		_, id, der := newCSR(t, f.id(f.shop, "web"))
		chain, _, err := c.Fetch(t.Context(), id, der, time.Hour)
		if err != nil {
			t.Fatalf("ztunnel on node-a asking for web (on node-a): %v", err)
		}
		if chain[0].URIs[0].String() != id.String() {
			t.Errorf("leaf for %v", chain[0].URIs)
		}
		_, id, der = newCSR(t, f.id(f.shop, "db"))
		_, _, err = c.Fetch(t.Context(), id, der, time.Hour)
		wantCode(t, err, codes.PermissionDenied, `on node "node-a"`)

		// A pod on node-a that has terminated no longer grants its identity.
		done := createPod(t, kube, f.shop, "batch-a", "batch", "node-a")
		done.Status.Phase = corev1.PodSucceeded
		must(kube.CoreV1().Pods(f.shop).UpdateStatus(t.Context(), done, metav1.UpdateOptions{}))(t)
		_, batch, batchDER := newCSR(t, f.id(f.shop, "batch"))
		_, _, err = c.Fetch(t.Context(), batch, batchDER, time.Hour)
		wantCode(t, err, codes.PermissionDenied, "no running pod")

		// The other node's ztunnel is the mirror image.
		c = f.client(t, token(t, kube, systemNS, "ztunnel", ca.Audience, f.pods["ztunnel-b"]))
		if _, _, err := c.Fetch(t.Context(), id, der, time.Hour); err != nil {
			t.Errorf("ztunnel on node-b asking for db (on node-b): %v", err)
		}

		// A ztunnel token not bound to a pod has no node: only its own identity.
		c = f.client(t, token(t, kube, systemNS, "ztunnel", ca.Audience, nil))
		_, id, der = newCSR(t, f.id(f.shop, "web"))
		_, _, err = c.Fetch(t.Context(), id, der, time.Hour)
		wantCode(t, err, codes.PermissionDenied, "bound to its pod")
	})

	t.Run("TokenForAnotherAudience", func(t *testing.T) {
		c := f.client(t, token(t, kube, f.shop, "web", "some-other-service", f.pods["web-a"]))
		_, id, der := newCSR(t, f.id(f.shop, "web"))
		_, _, err := c.Fetch(t.Context(), id, der, time.Hour)
		wantCode(t, err, codes.Unauthenticated, "")
	})

	t.Run("GarbageToken", func(t *testing.T) {
		c := f.client(t, "garbage.garbage.garbage")
		_, id, der := newCSR(t, f.id(f.shop, "web"))
		_, _, err := c.Fetch(t.Context(), id, der, time.Hour)
		wantCode(t, err, codes.Unauthenticated, "not authenticated")
	})

	t.Run("ExpiredToken", func(t *testing.T) {
		// TokenRequest will not issue a token that is already expired, so
		// sign one as the apiserver does: with its service-account key.
		keyPEM := must(os.ReadFile(filepath.Join(f.env.CertDir, "sa-signer.key")))(t)
		key := must(identity.ParseKeyPEM(keyPEM))(t)
		sa := must(kube.CoreV1().ServiceAccounts(f.shop).Get(t.Context(), "web", metav1.GetOptions{}))(t)
		forge := func(exp time.Time) string {
			return must(signES256(key, map[string]any{
				"iss": f.env.ServiceAccountIssuer,
				"sub": "system:serviceaccount:" + f.shop + ":web",
				"aud": []string{ca.Audience},
				"iat": exp.Add(-time.Hour).Unix(), "nbf": exp.Add(-time.Hour).Unix(), "exp": exp.Unix(),
				"kubernetes.io": map[string]any{
					"namespace":      f.shop,
					"serviceaccount": map[string]string{"name": "web", "uid": string(sa.UID)},
				},
			}))(t)
		}
		_, id, der := newCSR(t, f.id(f.shop, "web"))
		// Control: the same token, not expired, is accepted, so the
		// refusal below is for the expiry alone.
		if _, _, err := f.client(t, forge(time.Now().Add(time.Hour))).Fetch(t.Context(), id, der, time.Hour); err != nil {
			t.Fatalf("forged unexpired token refused, so the expiry test would prove nothing: %v", err)
		}
		_, _, err := f.client(t, forge(time.Now().Add(-time.Hour))).Fetch(t.Context(), id, der, time.Hour)
		wantCode(t, err, codes.Unauthenticated, "expired")
	})

	t.Run("CSRWithBadSignature", func(t *testing.T) {
		c := f.client(t, token(t, kube, f.shop, "web", ca.Audience, f.pods["web-a"]))
		_, id, der := newCSR(t, f.id(f.shop, "web"))
		csr := must(x509.ParseCertificateRequest(der))(t)
		der[len(der)-len(csr.Signature)/2] ^= 0x01
		_, _, err := c.Fetch(t.Context(), id, der, time.Hour)
		wantCode(t, err, codes.InvalidArgument, "signature")
	})

	t.Run("CSRWithExtraDNSName", func(t *testing.T) {
		c := f.client(t, token(t, kube, f.shop, "web", ca.Audience, f.pods["web-a"]))
		_, id, der := newCSR(t, f.id(f.shop, "web"), "web."+f.shop+".svc")
		_, _, err := c.Fetch(t.Context(), id, der, time.Hour)
		wantCode(t, err, codes.InvalidArgument, "DNS")
	})

	t.Run("GeneratedSecretReusedOnRestart", func(t *testing.T) {
		ctx := t.Context()
		sec := must(kube.CoreV1().Secrets(systemNS).Get(ctx, ca.DefaultSecretName, metav1.GetOptions{}))(t)
		if sec.Annotations[ca.GeneratedAnnotation] != "true" {
			t.Errorf("generated secret annotations %v", sec.Annotations)
		}
		if got := must(identity.ParseCertsPEM(sec.Data[ca.SecretCertKey]))(t); !got[0].Equal(f.root) {
			t.Error("secret's ca.crt is not the published root")
		}
		again := must(ca.New(ctx, kube, f.cfg, testLog(t)))(t)
		if !again.Authority().Cert.Equal(f.root) {
			t.Error("a restarted CA generated a new root")
		}
		after := must(kube.CoreV1().Secrets(systemNS).Get(ctx, ca.DefaultSecretName, metav1.GetOptions{}))(t)
		if after.ResourceVersion != sec.ResourceVersion {
			t.Error("restart modified the secret")
		}
	})

	t.Run("OperatorSuppliedSecret", func(t *testing.T) {
		ctx := t.Context()
		ns := f.env.Namespace(t, "byo", nil)
		op := must(identity.NewRootAuthority("cluster.local", 48*time.Hour))(t)
		keyPEM := must(identity.EncodeKeyPEM(op.Key.(*ecdsa.PrivateKey)))(t)
		sec := must(kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: ca.DefaultSecretName},
			Data: map[string][]byte{
				ca.SecretCertKey: identity.EncodeCertsPEM(op.Cert), ca.SecretKeyKey: keyPEM,
				"operator-note": []byte("kept as is"),
			},
		}, metav1.CreateOptions{}))(t)
		cfg := f.cfg
		cfg.SystemNamespace = ns
		for i := range 2 { // start, then restart
			s := must(ca.New(ctx, kube, cfg, testLog(t)))(t)
			if !s.Authority().Cert.Equal(op.Cert) {
				t.Fatalf("start %d: CA does not use the operator's root", i)
			}
		}
		after := must(kube.CoreV1().Secrets(ns).Get(ctx, ca.DefaultSecretName, metav1.GetOptions{}))(t)
		if after.ResourceVersion != sec.ResourceVersion || len(after.Annotations) != 0 || len(after.Data) != 3 {
			t.Errorf("operator secret modified: rv %s -> %s, annotations %v, %d keys", sec.ResourceVersion, after.ResourceVersion, after.Annotations, len(after.Data))
		}
		cm := must(kube.CoreV1().ConfigMaps(ns).Get(ctx, ca.DefaultConfigMapName, metav1.GetOptions{}))(t)
		if cm.Data[ca.ConfigMapRootKey] != string(identity.EncodeCertsPEM(op.Cert)) {
			t.Error("root ConfigMap does not hold the operator's root")
		}
	})

	t.Run("MalformedSecretRefused", func(t *testing.T) {
		ctx := t.Context()
		other := must(identity.NewRootAuthority("cluster.local", time.Hour))(t)
		mine := must(identity.NewRootAuthority("cluster.local", time.Hour))(t)
		otherKey := must(identity.EncodeKeyPEM(other.Key.(*ecdsa.PrivateKey)))(t)
		for name, data := range map[string]map[string][]byte{
			"bad PEM":      {ca.SecretCertKey: []byte("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"), ca.SecretKeyKey: otherKey},
			"key mismatch": {ca.SecretCertKey: identity.EncodeCertsPEM(mine.Cert), ca.SecretKeyKey: otherKey},
		} {
			ns := f.env.Namespace(t, "bad", nil)
			must(kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: ca.DefaultSecretName}, Data: data,
			}, metav1.CreateOptions{}))(t)
			cfg := f.cfg
			cfg.SystemNamespace = ns
			_, err := ca.New(ctx, kube, cfg, testLog(t))
			if !errors.Is(err, ca.ErrBadCASecret) {
				t.Errorf("%s: New = %v, want ErrBadCASecret", name, err)
			} else {
				t.Logf("%s: %v", name, err)
			}
		}
	})

	t.Run("ConcurrentStartsEndWithOneRoot", func(t *testing.T) {
		ns := f.env.Namespace(t, "race", nil)
		cfg := f.cfg
		cfg.SystemNamespace = ns
		const n = 4
		certs := make([]*x509.Certificate, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				s, err := ca.New(t.Context(), kube, cfg, testLog(t))
				if err == nil {
					certs[i] = s.Authority().Cert
				}
				errs[i] = err
			})
		}
		close(start)
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("instance %d: %v", i, errs[i])
			}
			if !certs[i].Equal(certs[0]) {
				t.Errorf("instance %d ended with another root", i)
			}
		}
		sec := must(kube.CoreV1().Secrets(ns).Get(t.Context(), ca.DefaultSecretName, metav1.GetOptions{}))(t)
		if got := must(identity.ParseCertsPEM(sec.Data[ca.SecretCertKey]))(t); !got[0].Equal(certs[0]) {
			t.Error("the secret holds another root than the instances use")
		}
		cm := must(kube.CoreV1().ConfigMaps(ns).Get(t.Context(), ca.DefaultConfigMapName, metav1.GetOptions{}))(t)
		if cm.Data[ca.ConfigMapRootKey] != string(identity.EncodeCertsPEM(certs[0])) {
			t.Error("the published root is not the winner's")
		}
	})
}
