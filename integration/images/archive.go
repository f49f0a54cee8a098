package images

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Index annotations that name the image when an archive is imported.
const (
	// AnnotationContainerdName is the full reference containerd
	// (`ctr images import`) gives the image, the one kubelet looks up.
	AnnotationContainerdName = "io.containerd.image.name"
	// AnnotationRefName is the OCI tag annotation (the version).
	AnnotationRefName = "org.opencontainers.image.ref.name"
)

// WriteArchive writes b as an OCI image-layout tar archive at path (written
// to a temporary file and renamed, so a reader never sees half an archive)
// and returns the archive's size. The archive holds oci-layout, index.json
// (one manifest annotated with AnnotationContainerdName = b.Ref and
// AnnotationRefName = b.Version) and blobs/sha256/*. Entry order, modes,
// owners and times are fixed, so the same image gives the same bytes.
func WriteArchive(path string, b *Built) (size int64, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return 0, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err = writeArchive(tmp, b); err != nil {
		return 0, err
	}
	if err = tmp.Close(); err != nil {
		return 0, err
	}
	st, err := os.Stat(tmp.Name())
	if err != nil {
		return 0, err
	}
	if err = os.Chmod(tmp.Name(), 0o644); err != nil {
		return 0, err
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func writeArchive(w io.Writer, b *Built) error {
	img := b.Image
	rawManifest, err := img.RawManifest()
	if err != nil {
		return err
	}
	mt, err := img.MediaType()
	if err != nil {
		return err
	}
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return err
	}
	platform := b.Platform
	index := v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: mt,
			Size:      int64(len(rawManifest)),
			Digest:    b.Digest,
			Platform:  &platform,
			Annotations: map[string]string{
				AnnotationContainerdName: b.Ref,
				AnnotationRefName:        b.Version,
			},
		}},
	}
	rawIndex, err := json.Marshal(index)
	if err != nil {
		return err
	}

	mtime := time.Unix(0, 0).UTC()
	tw := tar.NewWriter(w)
	put := func(name string, size int64, r io.Reader) error {
		h := &tar.Header{Name: name, Mode: 0o644, Size: size, ModTime: mtime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if r == nil {
			h.Mode, h.Typeflag, h.Size = 0o755, tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if r == nil {
			return nil
		}
		n, err := io.Copy(tw, r)
		if err == nil && n != size {
			err = fmt.Errorf("%s: wrote %d bytes, expected %d", name, n, size)
		}
		return err
	}
	putBytes := func(name string, data []byte) error {
		return put(name, int64(len(data)), strings.NewReader(string(data)))
	}
	if err := putBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := putBytes("index.json", rawIndex); err != nil {
		return err
	}
	if err := put("blobs/", 0, nil); err != nil {
		return err
	}
	if err := put("blobs/sha256/", 0, nil); err != nil {
		return err
	}
	blob := func(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }
	if err := putBytes(blob(b.Digest), rawManifest); err != nil {
		return err
	}
	if err := putBytes(blob(cfgName), rawConfig); err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	seen := map[v1.Hash]bool{}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		if seen[d] {
			continue
		}
		seen[d] = true
		size, err := l.Size()
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		err = put(blob(d), size, rc)
		_ = rc.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

// ExtractArchive unpacks an image archive into dir (which must exist),
// refusing entries that are not plain files or folders or that leave dir.
func ExtractArchive(archive, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", archive, err)
		}
		clean := filepath.Clean(h.Name)
		if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
			return fmt.Errorf("%s: entry %q leaves the archive", archive, h.Name)
		}
		target := filepath.Join(dir, clean)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: entry %q has unexpected type %q", archive, h.Name, h.Typeflag)
		}
	}
}

// Archived is one image found in an extracted archive.
type Archived struct {
	// Name is the AnnotationContainerdName annotation.
	Name string
	// RefName is the AnnotationRefName annotation.
	RefName string
	Image   v1.Image
}

// ReadLayout opens the images of an extracted archive (an OCI image layout).
func ReadLayout(dir string) ([]Archived, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, err
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var out []Archived
	for _, d := range im.Manifests {
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, err
		}
		out = append(out, Archived{Name: d.Annotations[AnnotationContainerdName], RefName: d.Annotations[AnnotationRefName], Image: img})
	}
	return out, nil
}

// PushOptions say where and how to push.
type PushOptions struct {
	// Insecure allows plain HTTP to the registry (loopback and private
	// addresses get plain HTTP anyway).
	Insecure bool
	// Transport, when set, carries the requests (tests).
	Transport remote.Option
}

// PushRef returns the reference an image is pushed to: prefix/name:version,
// prefix being "registry/path".
func PushRef(prefix string, b *Built) (string, error) {
	if !strings.Contains(strings.Trim(prefix, "/"), "/") && !strings.ContainsAny(prefix, ".:") {
		return "", fmt.Errorf("push target %q: want registry/prefix, e.g. registry.example.com/ambit or 127.0.0.1:5000/ambit", prefix)
	}
	return Reference(prefix, b.Spec.Name, b.Version)
}

// Push uploads b to ref (see PushRef), using the Docker credentials of the
// environment (~/.docker/config.json) when there are any, and returns the
// digest the registry holds.
func Push(ctx context.Context, b *Built, ref string, opts PushOptions) (v1.Hash, error) {
	var nopts []name.Option
	if opts.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	tag, err := name.NewTag(ref, nopts...)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}
	if opts.Transport != nil {
		ropts = append(ropts, opts.Transport)
	}
	if err := remote.Write(tag, b.Image, ropts...); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	desc, err := remote.Head(tag, ropts...)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: reading it back: %w", ref, err)
	}
	if desc.Digest != b.Digest {
		return v1.Hash{}, fmt.Errorf("push %s: registry holds %s, built %s", ref, desc.Digest, b.Digest)
	}
	return desc.Digest, nil
}
