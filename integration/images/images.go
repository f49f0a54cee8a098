package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BinDir is where the binaries are installed inside every image.
const BinDir = "/usr/local/bin"

// Users the images run as.
const (
	// UserRoot is for ztunnel, which enters pod network namespaces and
	// programs nftables there.
	UserRoot = "0:0"
	// UserAmbit is the non-root user 1337 "ambit" of /etc/passwd.
	UserAmbit = "1337:1337"
	// UserPause is the pod sandbox's user, as Kubernetes' own pause image has it.
	UserPause = "65535:65535"
)

// DefaultRepo is the repository prefix of the image references.
const DefaultRepo = "docker.io/ambit"

// DefaultSource is the org.opencontainers.image.source label.
const DefaultSource = "https://github.com/ambit-mesh/ambit"

// Spec describes one image.
type Spec struct {
	// Name of the image: the last element of its reference and the archive's
	// base name.
	Name string
	// Binaries are file names in the build's binary folder, installed at
	// /usr/local/bin/<name>. The first is the entrypoint.
	Binaries []string
	// User is the OCI config's user ("uid:gid").
	User string
	// Description is the org.opencontainers.image.description label.
	Description string
}

// Entrypoint is the absolute path of the image's entrypoint.
func (s Spec) Entrypoint() string { return BinDir + "/" + s.Binaries[0] }

// Specs are Ambit's images.
func Specs() []Spec {
	return []Spec{
		{Name: "controller", Binaries: []string{"controller", "ambitctl"}, User: UserAmbit,
			Description: "Ambit control plane: config distribution, mesh CA, waypoint deployer; with the ambitctl CLI"},
		{Name: "ztunnel", Binaries: []string{"ztunnel", "ambit-cni"}, User: UserRoot,
			Description: "Ambit per-node L4 tunnel, with the CNI plugin it installs"},
		{Name: "waypoint", Binaries: []string{"waypoint"}, User: UserAmbit,
			Description: "Ambit L7 waypoint proxy"},
		{Name: "demo", Binaries: []string{"ambit-demo"}, User: UserAmbit,
			Description: "Ambit demo application: HTTP/h2c service and traffic generator"},
		{Name: "pause", Binaries: []string{"ambit-pause"}, User: UserPause,
			Description: "Pod sandbox: waits for SIGTERM or SIGINT and reaps orphans"},
	}
}

// Lookup returns the spec of the named image.
func Lookup(imageName string) (Spec, error) {
	var names []string
	for _, s := range Specs() {
		if s.Name == imageName {
			return s, nil
		}
		names = append(names, s.Name)
	}
	return Spec{}, fmt.Errorf("unknown image %q (known: %s)", imageName, strings.Join(names, ", "))
}

// Options are the inputs shared by all images of one build.
type Options struct {
	// BinDir is the folder holding the static binaries.
	BinDir string
	// Version is the tag of every reference and the
	// org.opencontainers.image.version label.
	Version string
	// Repo prefixes the image names (default DefaultRepo).
	Repo string
	// Created is the config's creation time and the time of every file in the
	// layers (default: the Unix epoch), fixed so that builds reproduce.
	Created time.Time
	// Source is the org.opencontainers.image.source label (default DefaultSource).
	Source string
	// Revision, when set, is the org.opencontainers.image.revision label.
	Revision string
}

var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// ValidateVersion checks that v can be an image tag.
func ValidateVersion(v string) error {
	if v == "" {
		return errors.New("version is empty (set VERSION, e.g. VERSION=$(git describe --tags --always --dirty))")
	}
	if !tagRE.MatchString(v) {
		return fmt.Errorf("version %q is not a valid image tag: use letters, digits, '_', '.' and '-', at most 128, not starting with '.' or '-'", v)
	}
	return nil
}

// Reference returns repo/name:version after checking it parses.
func Reference(repo, imageName, version string) (string, error) {
	if err := ValidateVersion(version); err != nil {
		return "", err
	}
	repo = strings.TrimSuffix(repo, "/")
	if repo == "" {
		return "", errors.New("repository prefix is empty")
	}
	ref := repo + "/" + imageName + ":" + version
	if _, err := name.NewTag(ref, name.StrictValidation); err != nil {
		return "", fmt.Errorf("image reference %q: %w", ref, err)
	}
	return ref, nil
}

// Built is one built image.
type Built struct {
	Spec Spec
	// Ref is the image's reference, repo/name:version.
	Ref string
	// Version is the tag part of Ref.
	Version string
	Image   v1.Image
	// Digest is the manifest digest.
	Digest v1.Hash
	// Platform is read from the binaries' ELF headers.
	Platform v1.Platform
}

// Build assembles the image of spec from the binaries in opts.BinDir.
func Build(spec Spec, opts Options) (*Built, error) {
	if len(spec.Binaries) == 0 {
		return nil, fmt.Errorf("image %s: no binaries", spec.Name)
	}
	if opts.Repo == "" {
		opts.Repo = DefaultRepo
	}
	if opts.Source == "" {
		opts.Source = DefaultSource
	}
	ref, err := Reference(opts.Repo, spec.Name, opts.Version)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", spec.Name, err)
	}
	created := opts.Created.UTC()
	if created.IsZero() {
		created = time.Unix(0, 0).UTC()
	}

	var files []file
	arch := ""
	for _, bin := range spec.Binaries {
		p := filepath.Join(opts.BinDir, bin)
		data, err := os.ReadFile(p)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("image %s: binary %s is missing (run make build)", spec.Name, p)
			}
			return nil, fmt.Errorf("image %s: %w", spec.Name, err)
		}
		a, err := staticArch(data)
		if err != nil {
			return nil, fmt.Errorf("image %s: %s: %w", spec.Name, p, err)
		}
		if arch != "" && a != arch {
			return nil, fmt.Errorf("image %s: %s is built for %s, the other binaries for %s", spec.Name, p, a, arch)
		}
		arch = a
		files = append(files, file{path: strings.TrimPrefix(BinDir, "/") + "/" + bin, mode: 0o755, data: data})
	}

	base, err := gzipLayer(baseFiles(), created)
	if err != nil {
		return nil, err
	}
	bins, err := gzipLayer(files, created)
	if err != nil {
		return nil, err
	}

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, base, bins)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	platform := v1.Platform{OS: "linux", Architecture: arch}
	cf.OS, cf.Architecture = platform.OS, platform.Architecture
	cf.Created = v1.Time{Time: created}
	cf.Author = ""
	cf.History = []v1.History{
		{Created: v1.Time{Time: created}, CreatedBy: "ambit-image: base (passwd, group, /tmp)", Comment: "base"},
		{Created: v1.Time{Time: created}, CreatedBy: "ambit-image: " + strings.Join(spec.Binaries, ", "), Comment: "binaries"},
	}
	labels := map[string]string{
		"org.opencontainers.image.title":   spec.Name,
		"org.opencontainers.image.version": opts.Version,
		"org.opencontainers.image.source":  opts.Source,
		"org.opencontainers.image.created": created.Format(time.RFC3339),
	}
	if spec.Description != "" {
		labels["org.opencontainers.image.description"] = spec.Description
	}
	if opts.Revision != "" {
		labels["org.opencontainers.image.revision"] = opts.Revision
	}
	cf.Config = v1.Config{
		Entrypoint: []string{spec.Entrypoint()},
		User:       spec.User,
		WorkingDir: "/",
		Env:        []string{"PATH=" + BinDir + ":/usr/bin:/bin"},
		Labels:     labels,
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	return &Built{Spec: spec, Ref: ref, Version: opts.Version, Image: img, Digest: d, Platform: platform}, nil
}

// BuildAll builds the named images (all of Specs when names is empty).
func BuildAll(names []string, opts Options) ([]*Built, error) {
	specs := Specs()
	if len(names) > 0 {
		specs = nil
		for _, n := range names {
			s, err := Lookup(n)
			if err != nil {
				return nil, err
			}
			specs = append(specs, s)
		}
	}
	var out []*Built
	for _, s := range specs {
		b, err := Build(s, opts)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// file is one entry of a layer; a path ending in "/" is a directory.
type file struct {
	path     string
	mode     int64
	uid, gid int
	data     []byte
}

// Passwd and Group are the images' /etc/passwd and /etc/group.
const (
	Passwd = "root:x:0:0:root:/root:/sbin/nologin\n" +
		"ambit:x:1337:1337:ambit:/home/ambit:/sbin/nologin\n"
	Group = "root:x:0:\nambit:x:1337:\n"
)

func baseFiles() []file {
	return []file{
		{path: "etc/", mode: 0o755},
		{path: "etc/group", mode: 0o644, data: []byte(Group)},
		{path: "etc/passwd", mode: 0o644, data: []byte(Passwd)},
		{path: "home/", mode: 0o755},
		{path: "home/ambit/", mode: 0o755, uid: 1337, gid: 1337},
		{path: "root/", mode: 0o700},
		{path: "tmp/", mode: 0o1777},
		{path: "usr/", mode: 0o755},
		{path: "usr/local/", mode: 0o755},
		{path: "usr/local/bin/", mode: 0o755},
	}
}

// gzipLayer writes files as a tar in path order, every header fixed but for
// the file's own path, mode, owner and content, and compresses it once.
func gzipLayer(files []file, mtime time.Time) (v1.Layer, error) {
	sort.Slice(files, func(i, j int) bool { return files[i].path < files[j].path })
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	for _, f := range files {
		h := &tar.Header{
			Name:    f.path,
			Mode:    f.mode,
			Uid:     f.uid,
			Gid:     f.gid,
			ModTime: mtime,
			Format:  tar.FormatPAX,
		}
		if strings.HasSuffix(f.path, "/") {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	compressed := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(compressed)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

var elfArch = map[elf.Machine]string{
	elf.EM_X86_64:  "amd64",
	elf.EM_AARCH64: "arm64",
	elf.EM_386:     "386",
	elf.EM_ARM:     "arm",
	elf.EM_PPC64:   "ppc64le",
	elf.EM_S390:    "s390x",
	elf.EM_RISCV:   "riscv64",
}

// staticArch checks that data is a statically linked Linux executable and
// returns its GOARCH.
func staticArch(data []byte) (string, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return "", fmt.Errorf("not an ELF executable (images hold Linux binaries): %w", err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return "", fmt.Errorf("ELF type %s is not an executable", f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", errors.New("dynamically linked (has an ELF interpreter); build with CGO_ENABLED=0")
		}
	}
	a, ok := elfArch[f.Machine]
	if !ok {
		return "", fmt.Errorf("unsupported ELF machine %s", f.Machine)
	}
	return a, nil
}
