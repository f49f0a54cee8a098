package identity

import (
	"errors"
	"testing"
)

func TestParseSPIFFEID(t *testing.T) {
	good := map[string]SPIFFEID{
		"spiffe://cluster.local/ns/default/sa/web":        {"cluster.local", "default", "web"},
		"spiffe://td-1_x/ns/a/sa/b.c":                     {"td-1_x", "a", "b.c"},
		"spiffe://example.org/ns/ambit-system/sa/ztunnel": {"example.org", "ambit-system", "ztunnel"},
	}
	for in, want := range good {
		got, err := ParseSPIFFEID(in)
		if err != nil {
			t.Errorf("ParseSPIFFEID(%q): %v", in, err)
			continue
		}
		if got != want {
			t.Errorf("ParseSPIFFEID(%q) = %+v, want %+v", in, got, want)
		}
		if got.String() != in || got.URL().String() != in {
			t.Errorf("round trip of %q: String %q URL %q", in, got.String(), got.URL())
		}
	}
	bad := []string{
		"", "spiffe://", "spiffe://cluster.local", "spiffe://cluster.local/",
		"http://cluster.local/ns/a/sa/b", "spiffe://Cluster.local/ns/a/sa/b",
		"spiffe://cluster.local:80/ns/a/sa/b", "spiffe://u@cluster.local/ns/a/sa/b",
		"spiffe://cluster.local/ns/a/sa/b/extra", "spiffe://cluster.local/sa/b/ns/a",
		"spiffe://cluster.local/ns//sa/b", "spiffe://cluster.local/ns/a/sa/",
		"spiffe://cluster.local/ns/A/sa/b", "spiffe://cluster.local/ns/a/sa/b?x=1",
		"spiffe://cluster.local/ns/a/sa/b#f", "spiffe://cluster.local/ns/a%2Fb/sa/c",
		"spiffe://cluster.local/ns/-a/sa/b", "spiffe://cluster.local/ns/a/sa/b..c",
	}
	for _, in := range bad {
		if id, err := ParseSPIFFEID(in); !errors.Is(err, ErrInvalidSPIFFEID) {
			t.Errorf("ParseSPIFFEID(%q) = %+v, %v; want ErrInvalidSPIFFEID", in, id, err)
		}
	}
}

func FuzzParseSPIFFEID(f *testing.F) {
	f.Add("spiffe://cluster.local/ns/default/sa/web")
	f.Add("spiffe://a/ns/b/sa/c.d")
	f.Add("spiffe://x/ns/y/sa/z/w")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseSPIFFEID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidSPIFFEID) {
				t.Fatalf("error %v does not wrap ErrInvalidSPIFFEID", err)
			}
			return
		}
		// A parsed ID formats back to the same string and re-parses equal.
		if id.String() != s {
			t.Fatalf("String() = %q, input %q", id.String(), s)
		}
		again, err := ParseSPIFFEID(id.URL().String())
		if err != nil || again != id {
			t.Fatalf("URL round trip of %q: %+v, %v", s, again, err)
		}
	})
}
