package proxy

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

func TestAddForwardedHeaders(t *testing.T) {
	client := identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	wp := identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "waypoint"}
	for _, tc := range []struct {
		name            string
		in              http.Header
		src             Source
		xff, proto, cc  string
		xffAbsent, ccAb bool
	}{
		{name: "plain", in: http.Header{}, src: Source{Identity: client, VerifiedBy: wp, Address: netip.MustParseAddr("10.0.0.5")},
			xff: "10.0.0.5", proto: "http", cc: "By=spiffe://cluster.local/ns/shop/sa/waypoint;URI=spiffe://cluster.local/ns/shop/sa/web"},
		{name: "mapped IPv4, two prior lines, https kept, forged cert dropped",
			in:  http.Header{"X-Forwarded-For": {"203.0.113.1", "198.51.100.2"}, "X-Forwarded-Proto": {"https"}, "X-Forwarded-Client-Cert": {"URI=spiffe://evil"}},
			src: Source{Identity: client, Address: netip.MustParseAddr("::ffff:10.0.0.5")},
			xff: "203.0.113.1, 198.51.100.2, 10.0.0.5", proto: "https", cc: "URI=spiffe://cluster.local/ns/shop/sa/web"},
		{name: "with the certificate", in: http.Header{}, src: Source{Identity: client, VerifiedBy: wp, CertHash: "ab01", CertSubject: `O=Sh"op\\`},
			proto: "http", xffAbsent: true, cc: `By=spiffe://cluster.local/ns/shop/sa/waypoint;Hash=ab01;Subject="O=Sh\"op\\\\";URI=spiffe://cluster.local/ns/shop/sa/web`},
		{name: "nothing known: no address, no identity", in: http.Header{"X-Forwarded-Client-Cert": {"URI=spiffe://evil"}},
			proto: "http", xffAbsent: true, ccAb: true},
	} {
		addForwardedHeaders(tc.in, tc.src)
		if got := tc.in.Values("X-Forwarded-For"); tc.xffAbsent != (len(got) == 0) || (!tc.xffAbsent && (len(got) != 1 || got[0] != tc.xff)) {
			t.Errorf("%s: X-Forwarded-For %q, want %q", tc.name, got, tc.xff)
		}
		if got := tc.in.Get("X-Forwarded-Proto"); got != tc.proto {
			t.Errorf("%s: X-Forwarded-Proto %q, want %q", tc.name, got, tc.proto)
		}
		if got := tc.in.Values("X-Forwarded-Client-Cert"); tc.ccAb != (len(got) == 0) || (!tc.ccAb && (len(got) != 1 || got[0] != tc.cc)) {
			t.Errorf("%s: X-Forwarded-Client-Cert %q, want %q", tc.name, got, tc.cc)
		}
	}
}

// BenchmarkAddForwardedHeaders is the per-request cost of telling the
// endpoint who the client is.
func BenchmarkAddForwardedHeaders(b *testing.B) {
	src := Source{Identity: identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"},
		VerifiedBy: identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "waypoint"},
		Address:    netip.MustParseAddr("10.0.0.5"), CertHash: strings.Repeat("ab", 32)}
	b.ReportAllocs()
	for b.Loop() {
		h := make(http.Header, 8)
		addForwardedHeaders(h, src)
	}
}
