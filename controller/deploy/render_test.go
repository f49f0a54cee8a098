package deploy

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

func waypoint() *gwapiv1.Gateway {
	return &gwapiv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "wp", Namespace: "shop", UID: types.UID("uid-1")},
		Spec: gwapiv1.GatewaySpec{
			GatewayClassName: translate.WaypointClassName,
			Listeners:        []gwapiv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
		},
	}
}

// testRootPEM is a mesh root for the tests, generated once.
var testRootPEM = func() string {
	a, err := identity.NewRootAuthority("cluster.local", time.Hour)
	if err != nil {
		panic(err)
	}
	return string(identity.EncodeCertsPEM(a.Cert))
}()

func TestRender(t *testing.T) {
	gw := waypoint()
	res := Render(gw, Options{Image: "example.invalid/waypoint:1", XDSAddress: "ctl:15010", RootCertsPEM: testRootPEM})

	if len(res.Objects()) != 4 {
		t.Fatalf("%d children, want 4", len(res.Objects()))
	}
	for _, obj := range res.Objects() {
		want := "wp"
		if _, ok := obj.(*corev1.ConfigMap); ok {
			want = "wp-ambit-ca-root"
		}
		if obj.GetName() != want || obj.GetNamespace() != "shop" {
			t.Errorf("%T named %s/%s, want shop/%s", obj, obj.GetNamespace(), obj.GetName(), want)
		}
		refs := obj.GetOwnerReferences()
		if len(refs) != 1 || refs[0].UID != gw.UID || refs[0].Kind != "Gateway" ||
			refs[0].APIVersion != "gateway.networking.k8s.io/v1" || !*refs[0].Controller || !*refs[0].BlockOwnerDeletion {
			t.Errorf("%T owner references %+v", obj, refs)
		}
		if l := obj.GetLabels(); l[LabelGatewayName] != "wp" || l[LabelManagedBy] != ManagedBy || l[LabelPartOf] != "ambit" {
			t.Errorf("%T labels %v", obj, l)
		}
	}

	dep := res.Deployment
	pod := dep.Spec.Template
	if !reflect.DeepEqual(dep.Spec.Selector.MatchLabels, map[string]string{LabelGatewayName: "wp"}) ||
		pod.Labels[LabelGatewayName] != "wp" || pod.Labels[translate.LabelDataplaneMode] != translate.DataplaneModeNone {
		t.Errorf("selector %v, pod labels %v", dep.Spec.Selector.MatchLabels, pod.Labels)
	}
	if pod.Spec.ServiceAccountName != "wp" {
		t.Errorf("service account %q", pod.Spec.ServiceAccountName)
	}
	c := pod.Spec.Containers[0]
	if c.Image != "example.invalid/waypoint:1" {
		t.Errorf("image %q", c.Image)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	for k, v := range map[string]string{
		EnvGatewayNamespace: "shop", EnvGatewayName: "wp", EnvXDSAddress: "ctl:15010", EnvCAAddress: DefaultCAAddress,
		EnvCARootFile: "/etc/ambit/ca/root-cert.pem", EnvTokenFile: TokenPath + "/token", EnvTrustDomain: "cluster.local",
	} {
		if env[k] != v {
			t.Errorf("env %s = %q, want %q", k, env[k], v)
		}
	}
	ports := map[int32]string{}
	for _, p := range c.Ports {
		ports[p.ContainerPort] = p.Name
	}
	if !reflect.DeepEqual(ports, map[int32]string{15008: "hbone", 15020: "metrics", 15021: "ready"}) {
		t.Errorf("container ports %v", ports)
	}
	if p := c.ReadinessProbe.HTTPGet; p.Path != "/healthz/ready" || p.Port.IntValue() != 15021 {
		t.Errorf("readiness probe %+v", p)
	}
	if c.LivenessProbe == nil {
		t.Error("no liveness probe")
	}
	for name, want := range map[string]resource.Quantity{
		"requests.cpu": resource.MustParse("100m"), "requests.memory": resource.MustParse("128Mi"),
		"limits.cpu": resource.MustParse("1"), "limits.memory": resource.MustParse("512Mi"),
	} {
		kind, res, _ := strings.Cut(name, ".")
		list := c.Resources.Requests
		if kind == "limits" {
			list = c.Resources.Limits
		}
		if got := list[corev1.ResourceName(res)]; got.Cmp(want) != 0 {
			t.Errorf("%s = %v, want %v", name, got.String(), want.String())
		}
	}
	sc := c.SecurityContext
	if !*sc.RunAsNonRoot || !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation || *sc.RunAsUser == 0 {
		t.Errorf("security context %+v", sc)
	}

	// The mesh root: a ConfigMap with the PEM, mounted where
	// AMBIT_CA_ROOT_FILE points.
	if cm := res.RootConfigMap; cm.Data["root-cert.pem"] != testRootPEM || len(cm.Data) != 1 {
		t.Errorf("root ConfigMap data %v", cm.Data)
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	if mounts["ca-root"] != "/etc/ambit/ca" {
		t.Errorf("volume mounts %v: want ca-root at /etc/ambit/ca", mounts)
	}
	var rootVol *corev1.Volume
	for i, v := range pod.Spec.Volumes {
		if v.Name == "ca-root" {
			rootVol = &pod.Spec.Volumes[i]
		}
	}
	if rootVol == nil || rootVol.ConfigMap == nil || rootVol.ConfigMap.Name != "wp-ambit-ca-root" {
		t.Errorf("ca-root volume %+v, want ConfigMap wp-ambit-ca-root", rootVol)
	}

	svc := res.Service
	if svc.Spec.Type != corev1.ServiceTypeClusterIP || svc.Spec.Selector[LabelGatewayName] != "wp" || len(svc.Spec.Ports) != 2 {
		t.Fatalf("service spec %+v", svc.Spec)
	}
	if p := svc.Spec.Ports[0]; p.Name != "mesh" || p.Port != 15008 || *p.AppProtocol != AppProtocolHBONE {
		t.Errorf("mesh port %+v", p)
	}
	if p := svc.Spec.Ports[1]; p.Name != "metrics" || p.Port != 15020 {
		t.Errorf("metrics port %+v", p)
	}
	if *res.ServiceAccount.AutomountServiceAccountToken {
		t.Error("service account automounts its token")
	}
}

func TestRenderDefaultsAndInfrastructure(t *testing.T) {
	gw := waypoint()
	gw.Spec.Infrastructure = &gwapiv1.GatewayInfrastructure{
		Labels:      map[gwapiv1.LabelKey]gwapiv1.LabelValue{"team": "shop", LabelManagedBy: "someone-else"},
		Annotations: map[gwapiv1.AnnotationKey]gwapiv1.AnnotationValue{"note": "hi"},
	}
	res := Render(gw, Options{})
	if img := res.Deployment.Spec.Template.Spec.Containers[0].Image; img != DefaultImage() || !strings.HasPrefix(img, "ambit/waypoint:") {
		t.Errorf("default image %q", img)
	}
	for _, obj := range res.Objects() {
		if l := obj.GetLabels(); l["team"] != "shop" || l[LabelManagedBy] != ManagedBy {
			t.Errorf("%T labels %v: want infrastructure labels, Ambit's winning", obj, l)
		}
		if obj.GetAnnotations()["note"] != "hi" {
			t.Errorf("%T annotations %v", obj, obj.GetAnnotations())
		}
	}
	if a := res.Deployment.Spec.Template.Annotations; a["note"] != "hi" || a["prometheus.io/port"] != "15020" {
		t.Errorf("pod annotations %v", a)
	}
	// Pure: the same input renders the same output.
	if !reflect.DeepEqual(Render(gw, Options{}), res) {
		t.Error("Render is not deterministic")
	}
}

func TestIsWaypoint(t *testing.T) {
	gw := waypoint()
	if !IsWaypoint(gw) {
		t.Error("waypoint not recognised")
	}
	gw.Spec.GatewayClassName = "other"
	if IsWaypoint(gw) {
		t.Error("other class recognised")
	}
	gw = waypoint()
	gw.DeletionTimestamp = &metav1.Time{}
	if IsWaypoint(gw) {
		t.Error("deleted gateway recognised")
	}
}

func TestToApplyConfig(t *testing.T) {
	res := Render(waypoint(), Options{})
	u, hash, err := toApplyConfig(res.Deployment)
	if err != nil {
		t.Fatal(err)
	}
	if u.GetAPIVersion() != "apps/v1" || u.GetKind() != "Deployment" || u.GetName() != "wp" {
		t.Errorf("apply config %s %s %s", u.GetAPIVersion(), u.GetKind(), u.GetName())
	}
	if _, ok := u.Object["status"]; ok {
		t.Error("status kept")
	}
	if _, ok := u.Object["metadata"].(map[string]any)["creationTimestamp"]; ok {
		t.Error("creationTimestamp kept")
	}
	_, hash2, _ := toApplyConfig(Render(waypoint(), Options{}).Deployment)
	_, hash3, _ := toApplyConfig(Render(waypoint(), Options{Image: "x/y:2"}).Deployment)
	if hash != hash2 || hash == hash3 {
		t.Errorf("hashes %s %s %s: want the first two equal and the third different", hash, hash2, hash3)
	}
}

func TestOptionsValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		pem  string
		want string
	}{
		"empty":   {"", "no mesh root certificate"},
		"garbage": {"not a certificate", "mesh root certificates"},
		"root":    {testRootPEM, ""},
	} {
		t.Run(name, func(t *testing.T) {
			err := Options{RootCertsPEM: tc.pem}.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestGatewayClass(t *testing.T) {
	gc := GatewayClass()
	if gc.Name != "ambit-waypoint" || gc.Spec.ControllerName != "ambit.dev/waypoint-controller" {
		t.Errorf("GatewayClass %s controllerName %s", gc.Name, gc.Spec.ControllerName)
	}
	if gc.Name != translate.WaypointClassName || string(gc.Spec.ControllerName) != translate.ControllerName {
		t.Error("GatewayClass does not match what translation accepts")
	}
	if l := gc.Labels; l[LabelPartOf] != "ambit" || l[LabelName] != "ambit-waypoint" || l[LabelManagedBy] != ManagedBy {
		t.Errorf("labels %v", l)
	}
}
