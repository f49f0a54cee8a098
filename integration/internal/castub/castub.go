package castub

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/ambit-mesh/ambit/controller/ca"
)

// TokenAuth stands for TokenReview: each token is a ztunnel's, bound to a
// ztunnel pod on the node it maps to.
type TokenAuth map[string]string // token -> node

// Authenticate implements the CA's authenticator.
func (a TokenAuth) Authenticate(_ context.Context, token string) (ca.Caller, error) {
	node, ok := a[token]
	if !ok {
		return ca.Caller{}, status.Error(codes.Unauthenticated, "unknown token")
	}
	return ca.Caller{
		Username: "system:serviceaccount:ambit-system:ztunnel", Namespace: "ambit-system", ServiceAccount: "ztunnel",
		NodeName: node, PodName: "ztunnel-" + node, PodUID: "uid-ztunnel-" + node,
	}, nil
}

// Pods answers the CA's pod look-ups from a fixed list.
type Pods []corev1.Pod

// Get returns the named pod or a NotFound error.
func (l Pods) Get(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	for i := range l {
		if l[i].Namespace == namespace && l[i].Name == name {
			return &l[i], nil
		}
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, name)
}

// OnNode returns the pods of namespace on node.
func (l Pods) OnNode(_ context.Context, namespace, node string) ([]corev1.Pod, error) {
	var out []corev1.Pod
	for _, p := range l {
		if p.Namespace == namespace && p.Spec.NodeName == node {
			out = append(out, p)
		}
	}
	return out, nil
}
