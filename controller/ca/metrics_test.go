package ca

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"

	cav1alpha1 "github.com/ambit-mesh/ambit/apis/ca/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/metrics"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// TestMetrics checks that CreateCertificate counts requests by gRPC code and
// times signing.
func TestMetrics(t *testing.T) {
	root, err := identity.NewRootAuthority("cluster.local", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	authn := authnFunc(func(_ context.Context, token string) (Caller, error) {
		if token == "web" {
			return Caller{Username: "system:serviceaccount:shop:web", Namespace: "shop", ServiceAccount: "web"}, nil
		}
		return Caller{}, status.Error(codes.Unauthenticated, "no")
	})
	pods := &podStore{pods: []corev1.Pod{pod("shop", "web-1", "web", "node-a", corev1.PodRunning)}}
	s, err := NewWithAuthority(root, authn, pods, Config{}, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	req := &cav1alpha1.CreateCertificateRequest{
		Csr:      csrPEM(t, p256(t), []string{"spiffe://cluster.local/ns/shop/sa/web"}, nil),
		Validity: durationpb.New(time.Hour),
	}
	call := func(token string) error {
		ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs("authorization", "Bearer "+token))
		_, err := s.CreateCertificate(ctx, req)
		return err
	}
	ok0 := testutil.ToFloat64(metrics.CARequests.WithLabelValues("OK"))
	unauth0 := testutil.ToFloat64(metrics.CARequests.WithLabelValues("Unauthenticated"))
	signs0 := histogramCount(t, "ambit_controller_ca_sign_duration_seconds")
	reqs0 := histogramCount(t, "ambit_controller_ca_request_duration_seconds")
	if err := call("web"); err != nil {
		t.Fatal(err)
	}
	if err := call("web"); err != nil {
		t.Fatal(err)
	}
	if err := call("stranger"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("stranger: %v", err)
	}
	if d := testutil.ToFloat64(metrics.CARequests.WithLabelValues("OK")) - ok0; d != 2 {
		t.Errorf("OK requests +%v, want +2", d)
	}
	if d := testutil.ToFloat64(metrics.CARequests.WithLabelValues("Unauthenticated")) - unauth0; d != 1 {
		t.Errorf("Unauthenticated requests +%v, want +1", d)
	}
	if d := histogramCount(t, "ambit_controller_ca_sign_duration_seconds") - signs0; d != 2 {
		t.Errorf("signings timed +%d, want +2 (refused requests are not signed)", d)
	}
	if d := histogramCount(t, "ambit_controller_ca_request_duration_seconds") - reqs0; d != 3 {
		t.Errorf("requests timed +%d, want +3", d)
	}
}

// histogramCount scrapes the controller's registry for a histogram's sample
// count.
func histogramCount(t *testing.T, name string) uint64 {
	t.Helper()
	mfs, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
