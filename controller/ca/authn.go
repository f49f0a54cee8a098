package ca

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Keys of a TokenReview's user extra that the apiserver sets for tokens
// bound to a pod.
const (
	ExtraNodeName = "authentication.kubernetes.io/node-name"
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
)

// serviceAccountPrefix starts the username of every service account.
const serviceAccountPrefix = "system:serviceaccount:"

// Caller is an authenticated caller of the CA.
type Caller struct {
	// Username is the Kubernetes user name, e.g. system:serviceaccount:NS:SA.
	Username string
	// Namespace and ServiceAccount are set when the caller is a service
	// account, and empty otherwise.
	Namespace, ServiceAccount string
	// NodeName, PodName and PodUID are set when the token is bound to a pod
	// (NodeName only when the apiserver records the pod's node in the token).
	NodeName, PodName, PodUID string
}

// Authenticator turns a bearer token into a Caller. Its errors are gRPC
// statuses: Unauthenticated for a token that is not valid for the CA,
// Unavailable when the check itself could not be made.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Caller, error)
}

// BearerToken returns the token of the "authorization: Bearer <token>"
// metadata of an incoming gRPC call, or an Unauthenticated status.
func BearerToken(md metadata.MD) (string, error) {
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return "", status.Error(codes.Unauthenticated, `missing "authorization: Bearer <service-account token>" metadata`)
	}
	if len(vals) > 1 {
		return "", status.Error(codes.Unauthenticated, "more than one authorization metadata value")
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", status.Error(codes.Unauthenticated, `authorization metadata is not "Bearer <token>"`)
	}
	return token, nil
}

// CallerFromReview checks the status of a TokenReview made for audience: the
// token must be authenticated and valid for that audience. It returns the
// caller, or an Unauthenticated status that says why not.
func CallerFromReview(st authnv1.TokenReviewStatus, audience string) (Caller, error) {
	if !st.Authenticated {
		msg := "token not authenticated"
		if st.Error != "" {
			msg += ": " + st.Error
		}
		return Caller{}, status.Error(codes.Unauthenticated, msg)
	}
	if !contains(st.Audiences, audience) {
		return Caller{}, status.Errorf(codes.Unauthenticated, "token is not valid for audience %q (valid for %q)", audience, st.Audiences)
	}
	c := Caller{Username: st.User.Username}
	if rest, ok := strings.CutPrefix(c.Username, serviceAccountPrefix); ok {
		ns, sa, ok := strings.Cut(rest, ":")
		if ok && ns != "" && sa != "" && !strings.Contains(sa, ":") {
			c.Namespace, c.ServiceAccount = ns, sa
		}
	}
	one := func(key string) string {
		if v := st.User.Extra[key]; len(v) == 1 {
			return v[0]
		}
		return ""
	}
	c.NodeName, c.PodName, c.PodUID = one(ExtraNodeName), one(ExtraPodName), one(ExtraPodUID)
	return c, nil
}

// TokenReviewer authenticates tokens with the apiserver's TokenReview API.
type TokenReviewer struct {
	Kube kubernetes.Interface
	// Audience the token must be valid for; empty means Audience.
	Audience string
}

// Authenticate implements Authenticator.
func (r TokenReviewer) Authenticate(ctx context.Context, token string) (Caller, error) {
	aud := r.Audience
	if aud == "" {
		aud = Audience
	}
	tr, err := r.Kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{aud}},
	}, metav1.CreateOptions{})
	if err != nil {
		if ctx.Err() != nil {
			return Caller{}, status.FromContextError(ctx.Err()).Err()
		}
		return Caller{}, status.Error(codes.Unavailable, fmt.Sprintf("token review: %v", err))
	}
	return CallerFromReview(tr.Status, aud)
}
