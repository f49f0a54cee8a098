package ca

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	cav1alpha1 "github.com/ambit-mesh/ambit/apis/ca/v1alpha1"
)

func TestValidity(t *testing.T) {
	cfg := Config{MaxCertLifetime: 48 * time.Hour}.Defaulted()
	for in, want := range map[time.Duration]time.Duration{
		0: 24 * time.Hour, time.Hour: time.Hour, time.Minute: time.Minute,
		48 * time.Hour: 48 * time.Hour, 1000 * time.Hour: 48 * time.Hour,
	} {
		if got, err := Validity(durationpb.New(in), cfg); err != nil || got != want {
			t.Errorf("Validity(%v) = %v, %v; want %v", in, got, err, want)
		}
	}
	if got, err := Validity(nil, cfg); err != nil || got != 24*time.Hour {
		t.Errorf("Validity(nil) = %v, %v", got, err)
	}
	small := Config{MaxCertLifetime: time.Hour}.Defaulted()
	if got, _ := Validity(nil, small); got != time.Hour {
		t.Errorf("default above max: %v, want the max", got)
	}
	for _, bad := range []*durationpb.Duration{
		durationpb.New(-time.Hour), durationpb.New(59 * time.Second), {Seconds: 1, Nanos: -1}, {Seconds: 1 << 62},
	} {
		if _, err := Validity(bad, cfg); status.Code(err) != codes.InvalidArgument {
			t.Errorf("Validity(%v): %v, want InvalidArgument", bad, err)
		}
	}
}

func TestParseRequest(t *testing.T) {
	cfg := Config{}.Defaulted()
	const web = "spiffe://cluster.local/ns/shop/sa/web"
	good := csrPEM(t, p256(t), []string{web}, nil)
	csr, id, v, err := ParseRequest(&cav1alpha1.CreateCertificateRequest{Csr: good, Validity: durationpb.New(time.Hour)}, cfg)
	if err != nil || id.String() != web || v != time.Hour || csr == nil {
		t.Fatalf("good request: %v %v %v", id, v, err)
	}

	bad := map[string]struct {
		req  *cav1alpha1.CreateCertificateRequest
		want string
	}{
		"empty":         {&cav1alpha1.CreateCertificateRequest{}, "empty"},
		"not PEM":       {&cav1alpha1.CreateCertificateRequest{Csr: "hello"}, "not PEM"},
		"wrong block":   {&cav1alpha1.CreateCertificateRequest{Csr: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}, "want CERTIFICATE REQUEST"},
		"garbage DER":   {&cav1alpha1.CreateCertificateRequest{Csr: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}, "invalid certificate signing request"},
		"bad signature": {&cav1alpha1.CreateCertificateRequest{Csr: badSignatureCSR(t, web)}, "signature"},
		"extra DNS SAN": {&cav1alpha1.CreateCertificateRequest{Csr: csrPEM(t, p256(t), []string{web}, []string{"web.shop.svc"})}, "DNS"},
		"two URIs":      {&cav1alpha1.CreateCertificateRequest{Csr: csrPEM(t, p256(t), []string{web, "spiffe://cluster.local/ns/shop/sa/db"}, nil)}, "2 URI SANs"},
		"no SAN":        {&cav1alpha1.CreateCertificateRequest{Csr: csrPEM(t, p256(t), nil, nil)}, "0 URI SANs"},
		"not SPIFFE":    {&cav1alpha1.CreateCertificateRequest{Csr: csrPEM(t, p256(t), []string{"https://example.org/x"}, nil)}, "SPIFFE"},
		"foreign td":    {&cav1alpha1.CreateCertificateRequest{Csr: csrPEM(t, p256(t), []string{"spiffe://evil.org/ns/shop/sa/web"}, nil)}, `trust domain "evil.org"`},
		"RSA key":       {&cav1alpha1.CreateCertificateRequest{Csr: csrPEM(t, rsaKey(t), []string{web}, nil)}, "want ECDSA P-256"},
		"bad validity":  {&cav1alpha1.CreateCertificateRequest{Csr: good, Validity: durationpb.New(-time.Second)}, "negative"},
		"huge":          {&cav1alpha1.CreateCertificateRequest{Csr: strings.Repeat("A", maxCSRBytes+1)}, "more than"},
	}
	for name, tc := range bad {
		_, _, _, err := ParseRequest(tc.req, cfg)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want InvalidArgument mentioning %q", name, err, tc.want)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add(csrPEM(f, p256(f), []string{"spiffe://cluster.local/ns/a/sa/b"}, nil), int64(3600))
	f.Add(badSignatureCSR(f, "spiffe://cluster.local/ns/a/sa/b"), int64(0))
	f.Add("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n", int64(-5))
	cfg := Config{}.Defaulted()
	f.Fuzz(func(t *testing.T, csr string, seconds int64) {
		_, id, v, err := ParseRequest(&cav1alpha1.CreateCertificateRequest{Csr: csr, Validity: &durationpb.Duration{Seconds: seconds}}, cfg)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
			return
		}
		if id.TrustDomain != cfg.TrustDomain || v < MinCertLifetime || v > cfg.MaxCertLifetime {
			t.Fatalf("accepted %v for %v", id, v)
		}
	})
}
