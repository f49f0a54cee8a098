package deploy

import (
	"errors"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/version"
)

// Labels and values set on every waypoint child.
const (
	// LabelGatewayName names the Gateway a waypoint child belongs to (the
	// Gateway API's standard label); it is also the pods' selector.
	LabelGatewayName = "gateway.networking.k8s.io/gateway-name"
	// LabelManagedBy marks objects the controller created.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedBy is LabelManagedBy's value, and the server-side apply field
	// manager.
	ManagedBy = "ambit-controller"
	// LabelName is the app.kubernetes.io/name label; waypoints carry
	// "ambit-waypoint".
	LabelName = "app.kubernetes.io/name"
	// LabelPartOf is the app.kubernetes.io/part-of label; every object of an
	// Ambit install carries PartOf.
	LabelPartOf = "app.kubernetes.io/part-of"
	// PartOf is LabelPartOf's value.
	PartOf = "ambit"
)

// Waypoint ports.
const (
	PortHBONE   = 15008
	PortMetrics = 15020
	PortReady   = 15021
	// AppProtocolHBONE is the Service appProtocol of the HBONE port. Kubernetes
	// wants an IANA service name or a domain-prefixed name; HBONE is not in
	// the IANA registry, so Ambit uses its own prefix.
	AppProtocolHBONE = "ambit.dev/hbone"
	// TokenAudience is the audience of the projected service-account token
	// the waypoint presents to the mesh CA (controller/ca.Audience).
	TokenAudience = "ambit-ca"
	// TokenPath is where that token is mounted.
	TokenPath = "/var/run/secrets/ambit/tokens/ambit-ca"
	// StateDir is the writable folder for the xDS client's last good state.
	StateDir = "/var/lib/ambit"
	// CARootDir is where the ConfigMap with the mesh root is mounted.
	CARootDir = "/etc/ambit/ca"
	// CARootKey is the key of the root ConfigMap that holds the PEM roots,
	// and so the file name under CARootDir.
	CARootKey = "root-cert.pem"
	// CARootFile is the waypoint's root certificate file.
	CARootFile = CARootDir + "/" + CARootKey
	// CARootSuffix is appended to the Gateway's name to name the root
	// ConfigMap.
	CARootSuffix = "-ambit-ca-root"
)

// Environment variables of the waypoint container.
const (
	EnvGatewayNamespace = "AMBIT_GATEWAY_NAMESPACE"
	EnvGatewayName      = "AMBIT_GATEWAY_NAME"
	EnvXDSAddress       = "AMBIT_XDS_ADDRESS"
	EnvCAAddress        = "AMBIT_CA_ADDRESS"
	EnvTrustDomain      = "AMBIT_TRUST_DOMAIN"
	EnvTokenFile        = "AMBIT_TOKEN_FILE"
	EnvStateDir         = "AMBIT_STATE_DIR"
	EnvCARootFile       = "AMBIT_CA_ROOT_FILE"
)

// Defaults of Options.
const (
	DefaultXDSAddress  = "ambit-controller.ambit-system.svc:15010"
	DefaultCAAddress   = "ambit-controller.ambit-system.svc:15012"
	DefaultTrustDomain = "cluster.local"
	// RunAsUser is the waypoint's non-root user and group ID.
	RunAsUser = 1337
)

// DefaultImage is the waypoint image of this build.
func DefaultImage() string { return "ambit/waypoint:" + version.Version }

// Options are the settings every rendered waypoint shares. Zero fields mean
// their defaults (Defaulted).
type Options struct {
	// Image of the waypoint container; "" means DefaultImage().
	Image string
	// ImagePullPolicy; "" means IfNotPresent.
	ImagePullPolicy corev1.PullPolicy
	// XDSAddress is the host:port the waypoint reaches the controller's xDS
	// server at; "" means DefaultXDSAddress.
	XDSAddress string
	// CAAddress is the host:port of the mesh CA; "" means DefaultCAAddress.
	CAAddress string
	// TrustDomain of SPIFFE identities; "" means DefaultTrustDomain.
	TrustDomain string
	// RootCertsPEM are the mesh root certificates (PEM) waypoints trust: the
	// CA's trust bundle. Render writes them to the root ConfigMap; the
	// Deployer refuses to deploy without them (Validate).
	RootCertsPEM string
}

// Validate reports Options a waypoint cannot run with: no parseable root
// certificate.
func (o Options) Validate() error {
	if strings.TrimSpace(o.RootCertsPEM) == "" {
		return errors.New("no mesh root certificate configured for waypoints")
	}
	if _, err := identity.ParseCertsPEM([]byte(o.RootCertsPEM)); err != nil {
		return fmt.Errorf("mesh root certificates for waypoints: %w", err)
	}
	return nil
}

// Defaulted returns o with every zero field set to its default.
func (o Options) Defaulted() Options {
	if o.Image == "" {
		o.Image = DefaultImage()
	}
	if o.ImagePullPolicy == "" {
		o.ImagePullPolicy = corev1.PullIfNotPresent
	}
	if o.XDSAddress == "" {
		o.XDSAddress = DefaultXDSAddress
	}
	if o.CAAddress == "" {
		o.CAAddress = DefaultCAAddress
	}
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	return o
}

// Resources are a waypoint's children.
type Resources struct {
	ServiceAccount *corev1.ServiceAccount
	// RootConfigMap holds the mesh root certificates (key CARootKey), mounted
	// at CARootDir; it is named RootConfigMapName(gateway name).
	RootConfigMap *corev1.ConfigMap
	Deployment    *appsv1.Deployment
	Service       *corev1.Service
}

// Objects returns the children in the order they are applied.
func (r Resources) Objects() []metav1.Object {
	return []metav1.Object{r.ServiceAccount, r.RootConfigMap, r.Deployment, r.Service}
}

// RootConfigMapName is the name of the root ConfigMap of the waypoint
// Gateway named gateway.
func RootConfigMapName(gateway string) string { return gateway + CARootSuffix }

// GatewayClass returns the GatewayClass of waypoints the Deployer creates
// when it is missing: ambit-waypoint, controllerName ambit.dev/waypoint-controller.
func GatewayClass() *gwapiv1.GatewayClass {
	return &gwapiv1.GatewayClass{
		TypeMeta: metav1.TypeMeta{APIVersion: gwapiv1.GroupVersion.String(), Kind: "GatewayClass"},
		ObjectMeta: metav1.ObjectMeta{
			Name: translate.WaypointClassName,
			Labels: map[string]string{
				LabelName: translate.WaypointClassName, LabelPartOf: PartOf, LabelManagedBy: ManagedBy,
			},
		},
		Spec: gwapiv1.GatewayClassSpec{
			ControllerName: translate.ControllerName,
			Description:    ptr.To("Ambit waypoint: the L7 proxy of the ambient mesh"),
		},
	}
}

// IsWaypoint reports whether gw is a waypoint the controller deploys: of
// class ambit-waypoint and not being deleted.
func IsWaypoint(gw *gwapiv1.Gateway) bool {
	return gw.Spec.GatewayClassName == translate.WaypointClassName && gw.DeletionTimestamp == nil
}

// Render returns the children of waypoint Gateway gw. It is a pure function of
// its arguments; opts is defaulted first.
func Render(gw *gwapiv1.Gateway, opts Options) Resources {
	opts = opts.Defaulted()
	// Gateway.spec.infrastructure labels and annotations go on every child
	// (and the pods); Ambit's own labels win.
	labels := map[string]string{}
	var annotations map[string]string
	if infra := gw.Spec.Infrastructure; infra != nil {
		for k, v := range infra.Labels {
			labels[string(k)] = string(v)
		}
		for k, v := range infra.Annotations {
			if annotations == nil {
				annotations = map[string]string{}
			}
			annotations[string(k)] = string(v)
		}
	}
	labels[LabelGatewayName] = gw.Name
	labels[LabelManagedBy] = ManagedBy
	labels[LabelName] = translate.WaypointClassName
	labels[LabelPartOf] = PartOf
	meta := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{
			Name:        gw.Name,
			Namespace:   gw.Namespace,
			Labels:      copyMap(labels),
			Annotations: copyMap(annotations),
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion:         gwapiv1.GroupVersion.String(),
				Kind:               "Gateway",
				Name:               gw.Name,
				UID:                gw.UID,
				Controller:         ptr.To(true),
				BlockOwnerDeletion: ptr.To(true),
			}},
		}
	}
	selector := map[string]string{LabelGatewayName: gw.Name}

	sa := &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: meta(),
		// The waypoint needs no Kubernetes API access; it presents a
		// projected token of audience ambit-ca to the CA instead.
		AutomountServiceAccountToken: ptr.To(false),
	}

	rootMeta := meta()
	rootMeta.Name = RootConfigMapName(gw.Name)
	root := &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: rootMeta,
		Data:       map[string]string{CARootKey: opts.RootCertsPEM},
	}

	podLabels := copyMap(labels)
	// Ztunnel does not capture a waypoint's own traffic: the waypoint speaks
	// HBONE itself.
	podLabels[translate.LabelDataplaneMode] = translate.DataplaneModeNone

	fieldEnv := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path}}}
	}
	probe := func(path string, initial, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromInt32(PortReady), Scheme: corev1.URISchemeHTTP,
			}},
			InitialDelaySeconds: initial,
			PeriodSeconds:       period,
			TimeoutSeconds:      1,
			SuccessThreshold:    1,
			FailureThreshold:    failures,
		}
	}
	container := corev1.Container{
		Name:            "waypoint",
		Image:           opts.Image,
		ImagePullPolicy: opts.ImagePullPolicy,
		Env: []corev1.EnvVar{
			{Name: EnvGatewayNamespace, Value: gw.Namespace},
			{Name: EnvGatewayName, Value: gw.Name},
			{Name: EnvXDSAddress, Value: opts.XDSAddress},
			{Name: EnvCAAddress, Value: opts.CAAddress},
			{Name: EnvTrustDomain, Value: opts.TrustDomain},
			{Name: EnvTokenFile, Value: TokenPath + "/token"},
			{Name: EnvStateDir, Value: StateDir},
			{Name: EnvCARootFile, Value: CARootFile},
			fieldEnv("POD_NAME", "metadata.name"),
			fieldEnv("POD_NAMESPACE", "metadata.namespace"),
			fieldEnv("NODE_NAME", "spec.nodeName"),
			fieldEnv("INSTANCE_IP", "status.podIP"),
			fieldEnv("SERVICE_ACCOUNT", "spec.serviceAccountName"),
		},
		Ports: []corev1.ContainerPort{
			{Name: "hbone", ContainerPort: PortHBONE, Protocol: corev1.ProtocolTCP},
			{Name: "metrics", ContainerPort: PortMetrics, Protocol: corev1.ProtocolTCP},
			{Name: "ready", ContainerPort: PortReady, Protocol: corev1.ProtocolTCP},
		},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("100m"),
				corev1.ResourceMemory: resource.MustParse("128Mi"),
			},
			Limits: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("1"),
				corev1.ResourceMemory: resource.MustParse("512Mi"),
			},
		},
		ReadinessProbe: probe("/healthz/ready", 1, 2, 4),
		LivenessProbe:  probe("/healthz/live", 10, 10, 3),
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr.To(true),
			RunAsUser:                ptr.To(int64(RunAsUser)),
			RunAsGroup:               ptr.To(int64(RunAsUser)),
			ReadOnlyRootFilesystem:   ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			Privileged:               ptr.To(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "ambit-token", MountPath: TokenPath, ReadOnly: true},
			{Name: "ca-root", MountPath: CARootDir, ReadOnly: true},
			{Name: "state", MountPath: StateDir},
			{Name: "tmp", MountPath: "/tmp"},
		},
	}
	podAnnotations := copyMap(annotations)
	if podAnnotations == nil {
		podAnnotations = map[string]string{}
	}
	podAnnotations["prometheus.io/scrape"] = "true"
	podAnnotations["prometheus.io/port"] = fmt.Sprint(PortMetrics)
	podAnnotations["prometheus.io/path"] = "/metrics"
	dep := &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: meta(),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: copyMap(selector)},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      podLabels,
					Annotations: podAnnotations,
				},
				Spec: corev1.PodSpec{
					ServiceAccountName:            gw.Name,
					AutomountServiceAccountToken:  ptr.To(false),
					TerminationGracePeriodSeconds: ptr.To(int64(30)),
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:   ptr.To(true),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					Containers: []corev1.Container{container},
					Volumes: []corev1.Volume{
						{Name: "ambit-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
							Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
								Audience: TokenAudience, ExpirationSeconds: ptr.To(int64(3600)), Path: "token",
							}}},
						}}},
						{Name: "ca-root", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
							LocalObjectReference: corev1.LocalObjectReference{Name: root.Name},
						}}},
						{Name: "state", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
						{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
					},
				},
			},
		},
	}
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: meta(),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: copyMap(selector),
			Ports: []corev1.ServicePort{
				{Name: "mesh", Port: PortHBONE, TargetPort: intstr.FromInt32(PortHBONE), Protocol: corev1.ProtocolTCP, AppProtocol: ptr.To(AppProtocolHBONE)},
				{Name: "metrics", Port: PortMetrics, TargetPort: intstr.FromInt32(PortMetrics), Protocol: corev1.ProtocolTCP, AppProtocol: ptr.To("http")},
			},
		},
	}
	return Resources{ServiceAccount: sa, RootConfigMap: root, Deployment: dep, Service: svc}
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
