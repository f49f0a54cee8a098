package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	testID    = SPIFFEID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"}
	testOther = SPIFFEID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "db"}
)

func newTestAuthority(t testing.TB) *Authority {
	t.Helper()
	a, err := NewRootAuthority("cluster.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// rawCSR builds a DER CSR from tmpl without CreateCSR's checks.
func rawCSR(t testing.TB, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(nil, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func validCSR(t testing.TB, id SPIFFEID) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := CreateCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

func TestParseCSRAccepts(t *testing.T) {
	key, der := validCSR(t, testID)
	pemCSR := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	for name, in := range map[string][]byte{"DER": der, "PEM": pemCSR} {
		csr, id, err := ParseCSR(in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if id != testID {
			t.Errorf("%s: id %v, want %v", name, id, testID)
		}
		if !key.PublicKey.Equal(csr.PublicKey) {
			t.Errorf("%s: public key differs from the signer's", name)
		}
	}
}

func TestCreateCSRRejectsInvalidID(t *testing.T) {
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreateCSR(key, SPIFFEID{TrustDomain: "cluster.local", Namespace: "A", ServiceAccount: "b"}); !errors.Is(err, ErrInvalidSPIFFEID) {
		t.Fatalf("CreateCSR with a bad ID: %v, want ErrInvalidSPIFFEID", err)
	}
}

func TestParseCSRRejects(t *testing.T) {
	u := testID.URL()
	_, good := validCSR(t, testID)
	tampered := bytes.Clone(good)
	tampered[len(tampered)-1] ^= 0x01 // last byte of the ECDSA signature
	mail, _ := url.Parse("mailto:a@b.c")
	cases := map[string][]byte{
		"bad signature":   tampered,
		"DNS SAN":         rawCSR(t, &x509.CertificateRequest{URIs: []*url.URL{u}, DNSNames: []string{"web.default.svc"}}),
		"IP SAN":          rawCSR(t, &x509.CertificateRequest{URIs: []*url.URL{u}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}),
		"email SAN":       rawCSR(t, &x509.CertificateRequest{URIs: []*url.URL{u}, EmailAddresses: []string{"a@b.c"}}),
		"two URI SANs":    rawCSR(t, &x509.CertificateRequest{URIs: []*url.URL{u, testOther.URL()}}),
		"no SAN":          rawCSR(t, &x509.CertificateRequest{}),
		"non-SPIFFE URI":  rawCSR(t, &x509.CertificateRequest{URIs: []*url.URL{{Scheme: "https", Host: "example.com", Path: "/ns/a/sa/b"}}}),
		"mailto URI":      rawCSR(t, &x509.CertificateRequest{URIs: []*url.URL{mail}}),
		"bad SPIFFE path": rawCSR(t, &x509.CertificateRequest{URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/a"}}}),
		"garbage":         []byte("this is not a certificate request"),
		"empty":           nil,
		"truncated DER":   good[:len(good)/2],
		"trailing DER":    append(bytes.Clone(good), 0),
		"wrong PEM type":  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: good}),
		"PEM garbage":     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("junk")}),
	}
	for name, in := range cases {
		csr, id, err := ParseCSR(in)
		if !errors.Is(err, ErrInvalidCSR) {
			t.Errorf("%s: ParseCSR = %v, %v, %v; want ErrInvalidCSR", name, csr != nil, id, err)
		}
	}
}

func TestSign(t *testing.T) {
	a := newTestAuthority(t)
	now := time.Now().Truncate(time.Second)
	a.Now = func() time.Time { return now }
	key, der := validCSR(t, testID)
	csr, id, err := ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	const validity = 10 * time.Minute
	chain, err := a.Sign(csr, id, validity)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[1] != a.Cert {
		t.Fatalf("chain has %d certificates; want leaf and CA", len(chain))
	}
	leaf := chain[0]
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() || !pub.Equal(&key.PublicKey) {
		t.Errorf("leaf key %T is not the CSR's P-256 key", leaf.PublicKey)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != testID.String() {
		t.Errorf("leaf URIs %v, want exactly %s", leaf.URIs, testID)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("leaf has extra SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if got, err := IDFromCert(leaf); err != nil || got != testID {
		t.Errorf("IDFromCert = %v, %v", got, err)
	}
	wantEKU := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	if !slices.Equal(leaf.ExtKeyUsage, wantEKU) {
		t.Errorf("ExtKeyUsage %v, want %v", leaf.ExtKeyUsage, wantEKU)
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
	if !leaf.NotAfter.Equal(now.Add(validity)) {
		t.Errorf("NotAfter %v, want %v", leaf.NotAfter, now.Add(validity))
	}
	if leaf.NotBefore.After(now) {
		t.Errorf("NotBefore %v after issue time %v", leaf.NotBefore, now)
	}
	for _, usage := range wantEKU {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: a.Pool(), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("verify for %v: %v", usage, err)
		}
	}
	// A second certificate has another serial.
	chain2, err := a.Sign(csr, id, validity)
	if err != nil {
		t.Fatal(err)
	}
	if chain2[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("two certificates share a serial number")
	}
}

func TestSignCapsAtCAExpiry(t *testing.T) {
	a := newTestAuthority(t) // expires in an hour
	_, der := validCSR(t, testID)
	csr, id, err := ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := a.Sign(csr, id, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !chain[0].NotAfter.Equal(a.Cert.NotAfter) {
		t.Errorf("NotAfter %v, want the CA's %v", chain[0].NotAfter, a.Cert.NotAfter)
	}
}

func TestSignRefuses(t *testing.T) {
	a := newTestAuthority(t)
	foreign := SPIFFEID{TrustDomain: "example.org", Namespace: "default", ServiceAccount: "web"}
	_, der := validCSR(t, foreign)
	csr, id, err := ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Sign(csr, id, time.Minute); !errors.Is(err, ErrInvalidCSR) {
		t.Errorf("foreign trust domain: %v, want ErrInvalidCSR", err)
	}
	_, der = validCSR(t, testID)
	csr, id, _ = ParseCSR(der)
	for _, v := range []time.Duration{0, -time.Second} {
		if _, err := a.Sign(csr, id, v); err == nil {
			t.Errorf("validity %v accepted", v)
		}
	}
	// A CA past its NotAfter issues nothing (it would be born expired).
	a.Now = func() time.Time { return a.Cert.NotAfter.Add(time.Second) }
	if _, err := a.Sign(csr, id, time.Minute); err == nil {
		t.Error("expired CA signed a certificate")
	}
}

func TestNewRootAuthorityRejectsBadTrustDomain(t *testing.T) {
	if _, err := NewRootAuthority("Bad_TD!", time.Hour); !errors.Is(err, ErrInvalidSPIFFEID) {
		t.Errorf("NewRootAuthority: %v, want ErrInvalidSPIFFEID", err)
	}
}

func TestIssue(t *testing.T) {
	a := newTestAuthority(t)
	c, err := a.Issue(testID, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Certificate) != 2 || c.Leaf == nil || c.PrivateKey == nil {
		t.Fatalf("Issue: %d certs, leaf %v", len(c.Certificate), c.Leaf != nil)
	}
	if id, err := IDFromCert(c.Leaf); err != nil || id != testID {
		t.Errorf("IDFromCert = %v, %v", id, err)
	}
}

func TestIDFromCertRejects(t *testing.T) {
	a := newTestAuthority(t)
	// The CA certificate's only URI is spiffe://cluster.local: not a workload ID.
	if _, err := IDFromCert(a.Cert); !errors.Is(err, ErrInvalidCertificate) {
		t.Errorf("IDFromCert(CA) = %v, want ErrInvalidCertificate", err)
	}
	if _, err := IDFromCert(&x509.Certificate{}); !errors.Is(err, ErrInvalidCertificate) {
		t.Errorf("IDFromCert(no URI) = %v, want ErrInvalidCertificate", err)
	}
}

func TestAuthorityFetcher(t *testing.T) {
	a := newTestAuthority(t)
	f := AuthorityFetcher{Authority: a}
	_, der := validCSR(t, testID)
	chain, roots, err := f.Fetch(t.Context(), testID, der, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || len(roots) != 1 || !roots[0].Equal(a.Cert) {
		t.Fatalf("chain %d roots %d", len(chain), len(roots))
	}
	if _, _, err := f.Fetch(t.Context(), testOther, der, time.Minute); !errors.Is(err, ErrInvalidCSR) {
		t.Errorf("CSR for another ID: %v, want ErrInvalidCSR", err)
	}
	if _, _, err := f.Fetch(t.Context(), testID, []byte("junk"), time.Minute); !errors.Is(err, ErrInvalidCSR) {
		t.Errorf("junk CSR: %v, want ErrInvalidCSR", err)
	}
}

func TestCertsPEM(t *testing.T) {
	a := newTestAuthority(t)
	c, err := a.Issue(testID, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	data := EncodeCertsPEM(c.Leaf, a.Cert)
	got, err := ParseCertsPEM(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[0].Equal(c.Leaf) || !got[1].Equal(a.Cert) {
		t.Fatalf("round trip gave %d certificates", len(got))
	}
	// Surrounding white space is fine.
	if _, err := ParseCertsPEM(append(append([]byte("\n  \n"), data...), "\n\n"...)); err != nil {
		t.Errorf("white space: %v", err)
	}
	one := EncodeCertsPEM(a.Cert)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1}})
	bad := map[string][]byte{
		"empty":            nil,
		"white space":      []byte(" \n\t"),
		"trailing garbage": append(bytes.Clone(data), "garbage"...),
		"leading garbage":  append([]byte("garbage\n"), data...),
		"garbage between":  slices.Concat(one, []byte("garbage\n"), one),
		"wrong type":       slices.Concat(one, keyPEM),
		"bad DER":          pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")}),
		"no PEM":           []byte("garbage"),
		"unterminated":     []byte("-----BEGIN CERTIFICATE-----\nMIIB\n"),
	}
	for name, in := range bad {
		if certs, err := ParseCertsPEM(in); err == nil {
			t.Errorf("%s: ParseCertsPEM accepted %d certificates", name, len(certs))
		}
	}
}

func TestKeyPEM(t *testing.T) {
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	data, err := EncodeKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "EC PRIVATE KEY") {
		t.Errorf("PEM type: %s", data)
	}
	got, err := ParseKeyPEM(data)
	if err != nil {
		t.Fatal(err)
	}
	if !key.Equal(got) {
		t.Error("EC key round trip differs")
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	got, err = ParseKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))
	if err != nil {
		t.Fatal(err)
	}
	if !key.Equal(got) {
		t.Error("PKCS#8 key round trip differs")
	}
	for name, in := range map[string][]byte{
		"empty":      nil,
		"wrong type": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: pkcs8}),
		"bad EC":     pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte("x")}),
		"bad PKCS8":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("x")}),
	} {
		if _, err := ParseKeyPEM(in); err == nil {
			t.Errorf("%s: ParseKeyPEM accepted it", name)
		}
	}
}

func FuzzParseCSR(f *testing.F) {
	_, der := validCSR(f, testID)
	f.Add(der)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	f.Add(rawCSR(f, &x509.CertificateRequest{URIs: []*url.URL{testID.URL(), testOther.URL()}}))
	f.Add(rawCSR(f, &x509.CertificateRequest{URIs: []*url.URL{testID.URL()}, DNSNames: []string{"a"}}))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{0x30, 0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, id, err := ParseCSR(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidCSR) {
				t.Fatalf("error %v does not wrap ErrInvalidCSR", err)
			}
			return
		}
		if csr == nil {
			t.Fatal("nil CSR without an error")
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("accepted invalid ID %+v: %v", id, err)
		}
		if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() {
			t.Fatalf("URIs %v, ID %s", csr.URIs, id)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a CSR with a bad signature: %v", err)
		}
	})
}
