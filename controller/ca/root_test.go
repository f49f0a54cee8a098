package ca

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

func TestParseCASecret(t *testing.T) {
	now := time.Now()
	good, err := newCASecretData("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ParseCASecret(good, "cluster.local", now)
	if err != nil {
		t.Fatalf("generated secret: %v", err)
	}
	if !a.Cert.IsCA || a.TrustDomain != "cluster.local" {
		t.Errorf("authority %+v", a)
	}

	other, _ := newCASecretData("cluster.local", time.Hour)
	key := p256(t)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(key)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), BasicConstraintsValid: true}
	leafDER, _ := x509.CreateCertificate(rand.Reader, leafTmpl, leafTmpl, key.Public(), key)
	pemCert := func(der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}) }
	caTmpl := func(nb, na time.Time, ku x509.KeyUsage) []byte {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "ca"},
			NotBefore: nb, NotAfter: na, IsCA: true, BasicConstraintsValid: true, KeyUsage: ku}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		if err != nil {
			t.Fatal(err)
		}
		return pemCert(der)
	}
	keyPEM, _ := identity.EncodeKeyPEM(key)

	// An operator's PKCS#8 key with its own CA certificate is fine.
	if _, err := ParseCASecret(map[string][]byte{
		SecretCertKey: caTmpl(now.Add(-time.Hour), now.Add(time.Hour), x509.KeyUsageCertSign),
		SecretKeyKey:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
	}, "cluster.local", now); err != nil {
		t.Errorf("operator PKCS#8 secret: %v", err)
	}

	bad := map[string]struct {
		data map[string][]byte
		want string
	}{
		"empty":          {map[string][]byte{}, "both required"},
		"no key":         {map[string][]byte{SecretCertKey: good[SecretCertKey]}, "both required"},
		"garbage cert":   {map[string][]byte{SecretCertKey: []byte("not pem"), SecretKeyKey: good[SecretKeyKey]}, SecretCertKey},
		"garbage key":    {map[string][]byte{SecretCertKey: good[SecretCertKey], SecretKeyKey: []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")}, SecretKeyKey},
		"mismatched key": {map[string][]byte{SecretCertKey: good[SecretCertKey], SecretKeyKey: other[SecretKeyKey]}, "not the private key"},
		"two certs":      {map[string][]byte{SecretCertKey: append(append([]byte{}, good[SecretCertKey]...), other[SecretCertKey]...), SecretKeyKey: good[SecretKeyKey]}, "exactly one"},
		"not a CA":       {map[string][]byte{SecretCertKey: pemCert(leafDER), SecretKeyKey: keyPEM}, "not a CA"},
		"no certSign":    {map[string][]byte{SecretCertKey: caTmpl(now.Add(-time.Hour), now.Add(time.Hour), x509.KeyUsageDigitalSignature), SecretKeyKey: keyPEM}, "certificate signing"},
		"expired":        {map[string][]byte{SecretCertKey: caTmpl(now.Add(-2*time.Hour), now.Add(-time.Hour), x509.KeyUsageCertSign), SecretKeyKey: keyPEM}, "not now"},
		"not yet valid":  {map[string][]byte{SecretCertKey: caTmpl(now.Add(time.Hour), now.Add(2*time.Hour), x509.KeyUsageCertSign), SecretKeyKey: keyPEM}, "not now"},
	}
	for name, tc := range bad {
		_, err := ParseCASecret(tc.data, "cluster.local", now)
		if !errors.Is(err, ErrBadCASecret) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrBadCASecret mentioning %q", name, err, tc.want)
		}
	}
}

func TestConfigDefaultsAndValidate(t *testing.T) {
	c := Config{}.Defaulted()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	want := []string{"ambit-controller.ambit-system.svc", "ambit-controller.ambit-system.svc.cluster.local"}
	if got := c.ServingDNSNames(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("serving names %v, want %v", got, want)
	}
	c.ExtraDNSNames = []string{"ca.example.org", want[0], "127.0.0.1"}
	if got := c.ServingDNSNames(); len(got) != 4 {
		t.Errorf("serving names with extras %v", got)
	}
	for _, bad := range []Config{
		{TrustDomain: "Bad Domain"},
		{ZtunnelServiceAccount: "ztunnel"},
		{ZtunnelServiceAccount: "a/b/c"},
		{MaxCertLifetime: time.Second},
	} {
		if err := bad.Defaulted().Validate(); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
}
