package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/ambit-mesh/ambit/integration/images"
)

// BuildTinyApp builds the cluster's own small image (TestImage: the static
// tinyapp binary, which pauses, serves HTTP or fetches a URL) from the
// checkout at repoRoot into dir/tinyapp.tar and returns the archive's path.
// It rebuilds only when the binary changed.
func BuildTinyApp(repoRoot, dir string) (string, error) {
	binDir := filepath.Join(dir, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(binDir, "tinyapp")
	tmp := bin + ".new"
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", tmp, "./cluster/internal/tinyapp")
	cmd.Dir = filepath.Join(repoRoot, "integration")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building tinyapp: %v: %s", err, out)
	}
	// keep the old binary (and its time) when nothing changed, so that the
	// archive is not rebuilt
	if same, err := sameContent(tmp, bin); err != nil {
		return "", err
	} else if same {
		if err := os.Remove(tmp); err != nil {
			return "", err
		}
	} else if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	return buildImage(images.Spec{Name: "cluster-tinyapp", Binaries: []string{"tinyapp"}, User: images.UserRoot,
		Description: "the one-machine cluster's pause and test image"}, binDir, "dev", filepath.Join(dir, "tinyapp.tar"))
}

// buildImage writes the image of spec (binaries from binDir) to archive
// unless the archive is newer than every binary.
func buildImage(spec images.Spec, binDir, version, archive string) (string, error) {
	if st, err := os.Stat(archive); err == nil {
		fresh := true
		for _, b := range spec.Binaries {
			bst, err := os.Stat(filepath.Join(binDir, b))
			if err != nil || bst.ModTime().After(st.ModTime()) {
				fresh = false
			}
		}
		if fresh {
			return archive, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	built, err := images.Build(spec, images.Options{BinDir: binDir, Version: version})
	if err != nil {
		return "", err
	}
	if _, err := images.WriteArchive(archive, built); err != nil {
		return "", err
	}
	return archive, nil
}

func sameContent(a, b string) (bool, error) {
	x, err := os.ReadFile(a)
	if err != nil {
		return false, err
	}
	y, err := os.ReadFile(b)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return bytes.Equal(x, y), nil
}
