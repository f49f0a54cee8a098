package ca

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
)

func TestBearerToken(t *testing.T) {
	good := map[string]string{"Bearer abc.def": "abc.def", "bearer  x ": "x", " Bearer tok": "tok"}
	for in, want := range good {
		got, err := BearerToken(metadata.Pairs("authorization", in))
		if err != nil || got != want {
			t.Errorf("BearerToken(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, md := range []metadata.MD{
		nil, metadata.Pairs("x", "y"), metadata.Pairs("authorization", "Basic abc"),
		metadata.Pairs("authorization", "Bearer"), metadata.Pairs("authorization", "Bearer   "),
		metadata.Pairs("authorization", "Bearer a", "authorization", "Bearer b"),
	} {
		if _, err := BearerToken(md); status.Code(err) != codes.Unauthenticated {
			t.Errorf("BearerToken(%v): %v, want Unauthenticated", md, err)
		}
	}
}

func TestCallerFromReview(t *testing.T) {
	ok := authnv1.TokenReviewStatus{
		Authenticated: true,
		Audiences:     []string{"ambit-ca"},
		User: authnv1.UserInfo{
			Username: "system:serviceaccount:ambit-system:ztunnel",
			Extra: map[string]authnv1.ExtraValue{
				ExtraNodeName: {"node-a"}, ExtraPodName: {"ztunnel-x"}, ExtraPodUID: {"u1"},
			},
		},
	}
	c, err := CallerFromReview(ok, "ambit-ca")
	if err != nil {
		t.Fatal(err)
	}
	want := Caller{Username: ok.User.Username, Namespace: "ambit-system", ServiceAccount: "ztunnel", NodeName: "node-a", PodName: "ztunnel-x", PodUID: "u1"}
	if c != want {
		t.Errorf("caller %+v, want %+v", c, want)
	}

	user := ok
	user.User = authnv1.UserInfo{Username: "alice"}
	if c, err := CallerFromReview(user, "ambit-ca"); err != nil || c.Namespace != "" || c.ServiceAccount != "" {
		t.Errorf("plain user: %+v, %v", c, err)
	}
	odd := ok
	odd.User = authnv1.UserInfo{Username: "system:serviceaccount:a:b:c"}
	if c, _ := CallerFromReview(odd, "ambit-ca"); c.ServiceAccount != "" {
		t.Errorf("malformed SA user name parsed as %+v", c)
	}

	for name, tc := range map[string]struct {
		st   authnv1.TokenReviewStatus
		want string
	}{
		"not authenticated": {authnv1.TokenReviewStatus{Error: "token has expired"}, "token has expired"},
		"wrong audience":    {authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"other"}, User: ok.User}, `audience "ambit-ca"`},
		"no audience":       {authnv1.TokenReviewStatus{Authenticated: true, User: ok.User}, `audience "ambit-ca"`},
	} {
		_, err := CallerFromReview(tc.st, "ambit-ca")
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want Unauthenticated mentioning %q", name, err, tc.want)
		}
	}
}
