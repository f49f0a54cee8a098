package ca

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// Pods is what authorization needs to know about pods.
type Pods interface {
	// Get returns a pod; a missing pod is an error for which
	// apierrors.IsNotFound holds.
	Get(ctx context.Context, namespace, name string) (*corev1.Pod, error)
	// OnNode lists the pods of a namespace scheduled to a node.
	OnNode(ctx context.Context, namespace, node string) ([]corev1.Pod, error)
}

// KubePods reads pods from the apiserver.
type KubePods struct{ Kube kubernetes.Interface }

// Get implements Pods.
func (k KubePods) Get(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return k.Kube.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}

// OnNode implements Pods with a field selector on spec.nodeName.
func (k KubePods) OnNode(ctx context.Context, namespace, node string) ([]corev1.Pod, error) {
	l, err := k.Kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// Authorizer decides which identities a caller may obtain:
//   - a service account system:serviceaccount:NS:SA may obtain
//     spiffe://<td>/ns/NS/sa/SA, its own identity;
//   - the ztunnel service account may also obtain the identity of any pod
//     that runs on its own node (a pod whose spec.nodeName is that node and
//     that has not terminated);
//   - nothing else.
type Authorizer struct {
	// ZtunnelNamespace and ZtunnelName name ztunnel's service account.
	ZtunnelNamespace, ZtunnelName string
	Pods                          Pods
}

// SelfID returns the identity a service-account caller may always obtain.
func SelfID(c Caller, trustDomain string) (identity.SPIFFEID, bool) {
	if c.Namespace == "" || c.ServiceAccount == "" {
		return identity.SPIFFEID{}, false
	}
	return identity.SPIFFEID{TrustDomain: trustDomain, Namespace: c.Namespace, ServiceAccount: c.ServiceAccount}, true
}

// PodHasIdentity reports whether a running (or pending) pod among pods runs
// as id: same namespace and service account (empty means "default", as the
// ServiceAccount admission plugin would set it).
func PodHasIdentity(pods []corev1.Pod, id identity.SPIFFEID) bool {
	for i := range pods {
		p := &pods[i]
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || p.DeletionTimestamp != nil {
			continue
		}
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		if p.Namespace == id.Namespace && sa == id.ServiceAccount {
			return true
		}
	}
	return false
}

// IsZtunnel reports whether c is the ztunnel service account.
func (a *Authorizer) IsZtunnel(c Caller) bool {
	return c.Namespace == a.ZtunnelNamespace && c.ServiceAccount == a.ZtunnelName && c.Namespace != ""
}

// Authorize returns nil when c may obtain id, a PermissionDenied status that
// says what c may obtain when it may not, and Unavailable when the pods could
// not be read.
func (a *Authorizer) Authorize(ctx context.Context, c Caller, id identity.SPIFFEID) error {
	self, isSA := SelfID(c, id.TrustDomain)
	if !isSA {
		return status.Errorf(codes.PermissionDenied,
			"caller %q is not a service account; only service accounts may obtain certificates (asked for %s)", c.Username, id)
	}
	if id == self {
		return nil
	}
	if !a.IsZtunnel(c) {
		return status.Errorf(codes.PermissionDenied, "caller %s may obtain only its own identity %s, not %s", c.Username, self, id)
	}
	node, err := a.ztunnelNode(ctx, c)
	if err != nil {
		return err
	}
	pods, err := a.Pods.OnNode(ctx, id.Namespace, node)
	if err != nil {
		return status.Errorf(codes.Unavailable, "list pods on node %s: %v", node, err)
	}
	if !PodHasIdentity(pods, id) {
		return status.Errorf(codes.PermissionDenied,
			"ztunnel %s on node %q may obtain only identities of pods on that node; no running pod there in namespace %q uses service account %q (asked for %s)",
			c.Username, node, id.Namespace, id.ServiceAccount, id)
	}
	return nil
}

// ztunnelNode returns the node of the pod a ztunnel token is bound to: the
// node-name claim, or else the bound pod's spec.nodeName.
func (a *Authorizer) ztunnelNode(ctx context.Context, c Caller) (string, error) {
	if c.NodeName != "" {
		return c.NodeName, nil
	}
	if c.PodName == "" {
		return "", status.Errorf(codes.PermissionDenied,
			"ztunnel %s may obtain other identities only with a token bound to its pod (no node or pod in the token)", c.Username)
	}
	pod, err := a.Pods.Get(ctx, c.Namespace, c.PodName)
	if apierrors.IsNotFound(err) {
		return "", status.Errorf(codes.PermissionDenied, "ztunnel pod %s/%s of the token does not exist", c.Namespace, c.PodName)
	}
	if err != nil {
		return "", status.Errorf(codes.Unavailable, "get ztunnel pod %s/%s: %v", c.Namespace, c.PodName, err)
	}
	if c.PodUID != "" && string(pod.UID) != c.PodUID {
		return "", status.Errorf(codes.PermissionDenied, "ztunnel pod %s/%s was replaced since the token was issued", c.Namespace, c.PodName)
	}
	if pod.Spec.NodeName == "" {
		return "", status.Errorf(codes.PermissionDenied, "ztunnel pod %s/%s is not scheduled to a node", c.Namespace, c.PodName)
	}
	return pod.Spec.NodeName, nil
}

// describe is used in logs: who asked, in a few words.
func (c Caller) describe() string {
	if c.NodeName != "" {
		return fmt.Sprintf("%s (node %s)", c.Username, c.NodeName)
	}
	return c.Username
}
