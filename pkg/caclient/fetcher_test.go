package caclient

import (
	"path/filepath"
	"testing"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

func TestNewFetcher(t *testing.T) {
	f, release, err := NewFetcher(FetcherConfig{LocalTrustDomain: "cluster.local"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.(identity.AuthorityFetcher); !ok {
		t.Errorf("local trust domain gave %T, want an in-process CA", f)
	}
	if err := release(); err != nil {
		t.Error(err)
	}
	if _, _, err := NewFetcher(FetcherConfig{Address: "127.0.0.1:1", RootsFile: filepath.Join(t.TempDir(), "missing.pem")}); err == nil {
		t.Error("a missing roots file was accepted")
	}
}
