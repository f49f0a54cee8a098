package daemon

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestNameserversFromSpec(t *testing.T) {
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(rc, []byte("# comment\nsearch ambit-system.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\nnameserver fd00::a\noptions ndots:5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		spec, file string
		want       []netip.AddrPort
	}{
		{"auto", rc, []netip.AddrPort{ap("10.96.0.10:53"), ap("[fd00::a]:53")}},
		{"auto", filepath.Join(dir, "missing"), nil},
		{"none", rc, nil},
		{"", rc, nil},
		{"10.0.0.1, 10.0.0.2:5353,[fd00::1]:53,fd00::2", rc,
			[]netip.AddrPort{ap("10.0.0.1:53"), ap("10.0.0.2:5353"), ap("[fd00::1]:53"), ap("[fd00::2]:53")}},
	} {
		got, err := NameserversFromSpec(tc.spec, tc.file)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%q: %v, %v; want %v", tc.spec, got, err, tc.want)
		}
	}
	for _, bad := range []string{"dns.example", "10.0.0.1:0", "10.0.0.1:x", "10.0.0.1,", "fe80::1%eth0"} {
		if got, err := NameserversFromSpec(bad, rc); err == nil {
			t.Errorf("%q accepted: %v", bad, got)
		}
	}
}
