// Command ambit-conformance-images builds the container images that the
// Gateway API conformance suite's manifests name, without Docker and without
// pulling anything: one OCI image-layout tar archive per image, tagged with
// exactly the reference the suite's manifests use, so that kubelet finds it
// in containerd (`ctr -n k8s.io images import`) and never pulls.
//
// The references are read from the manifests embedded in the pinned
// conformance module (sigs.k8s.io/gateway-api/conformance), not written down
// here, so a new suite version that changes a tag fails loudly instead of
// leaving a pull behind.
//
// Images:
//
//   - echo-advanced (mesh/manifests.yaml, the MESH profiles): the echo server
//     and client of Istio's test framework (the binaries "server", the
//     entrypoint, and "client", which the suite runs with `kubectl exec` to
//     send requests from inside the mesh), plus the TLS certificate and key
//     the manifests' --crt=/cert.crt --key=/cert.key name. hack/conformance.sh
//     builds the binaries from their published sources (module
//     integration/conformance/echoapp).
//
// docs/conformance/README.md describes how the suite is run.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	appsv1 "k8s.io/api/apps/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/gateway-api/conformance"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/integration/images"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: ambit-conformance-images [flags]

Builds <out-dir>/echo-advanced.tar, the echo application of the Gateway API
conformance suite's mesh tests, tagged with the reference the suite's
mesh/manifests.yaml names, from the static binaries "server" and "client" in
-echo-bin-dir and the certificate and key files given.

Prints one line per image: name, reference, manifest digest, archive size,
archive path.

flags:
`

func run(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("ambit-conformance-images", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {
		fmt.Fprint(fl.Output(), usage)
		fl.PrintDefaults()
	}
	binDir := fl.String("echo-bin-dir", "", "folder holding the static echo binaries server and client (required)")
	cert := fl.String("echo-cert", "", "PEM certificate installed at /cert.crt (required)")
	key := fl.String("echo-key", "", "PEM private key installed at /cert.key (required)")
	outDir := fl.String("out-dir", "bin/conformance-images", "folder the archives are written to")
	created := fl.String("created", os.Getenv("SOURCE_DATE_EPOCH"), "creation time of the images and their files: Unix seconds or RFC 3339 (default $SOURCE_DATE_EPOCH, else the Unix epoch)")
	revision := fl.String("revision", "", "org.opencontainers.image.revision label (the echo sources' revision)")
	listOnly := fl.Bool("list", false, "only print the image references the suite's manifests name, one a line")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "ambit-conformance-images: %v\n", err)
		return 1
	}
	if fl.NArg() > 0 {
		return fail(fmt.Errorf("unexpected arguments %q", fl.Args()))
	}
	refs, err := ManifestImages(conformance.Manifests, "mesh/manifests.yaml")
	if err != nil {
		return fail(err)
	}
	if *listOnly {
		for _, r := range refs {
			fmt.Fprintln(stdout, r)
		}
		return 0
	}
	var missing []string
	for f, v := range map[string]string{"-echo-bin-dir": *binDir, "-echo-cert": *cert, "-echo-key": *key} {
		if v == "" {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fail(fmt.Errorf("missing %s (see -help)", strings.Join(missing, ", ")))
	}
	t, err := parseTime(*created)
	if err != nil {
		return fail(fmt.Errorf("-created: %w", err))
	}
	for _, ref := range refs {
		if imageName(ref) != "echo-advanced" {
			return fail(fmt.Errorf("the suite's mesh manifests name image %s, which this builder does not know how to build", ref))
		}
		b, err := BuildEchoAdvanced(ref, EchoInputs{BinDir: *binDir, CertFile: *cert, KeyFile: *key, Created: t, Revision: *revision})
		if err != nil {
			return fail(err)
		}
		path := filepath.Join(*outDir, b.Spec.Name+".tar")
		size, err := images.WriteArchive(path, b)
		if err != nil {
			return fail(fmt.Errorf("%s: %w", path, err))
		}
		fmt.Fprintf(stdout, "%s\t%s\t%s\t%d\t%s\n", b.Spec.Name, b.Ref, b.Digest, size, path)
	}
	return 0
}

// ManifestImages returns the image references (sorted, without duplicates)
// of the containers of the Deployments in the multi-document YAML file path
// of fsys.
func ManifestImages(fsys fs.FS, path string) ([]string, error) {
	data, err := fs.ReadFile(fsys, path)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	rd := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := rd.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if meta.Kind != "Deployment" {
			continue
		}
		var d appsv1.Deployment
		if err := yaml.Unmarshal(doc, &d); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		for _, c := range append(d.Spec.Template.Spec.InitContainers, d.Spec.Template.Spec.Containers...) {
			if c.Image == "" {
				return nil, fmt.Errorf("%s: Deployment %s/%s: container %s has no image", path, d.Namespace, d.Name, c.Name)
			}
			seen[c.Image] = true
		}
	}
	if len(seen) == 0 {
		return nil, fmt.Errorf("%s: no Deployment names an image", path)
	}
	out := make([]string, 0, len(seen))
	for r := range seen {
		out = append(out, r)
	}
	sort.Strings(out)
	return out, nil
}

// imageName is the last path element of a reference's repository.
func imageName(ref string) string {
	t, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return ""
	}
	repo := t.RepositoryStr()
	return repo[strings.LastIndex(repo, "/")+1:]
}

// EchoInputs are the files of the echo-advanced image.
type EchoInputs struct {
	// BinDir holds the static binaries "server" and "client".
	BinDir string
	// CertFile and KeyFile become /cert.crt and /cert.key.
	CertFile, KeyFile string
	// Created is the image's creation time and its files' time.
	Created time.Time
	// Revision is the org.opencontainers.image.revision label.
	Revision string
}

// EchoSource is the org.opencontainers.image.source label of echo-advanced.
const EchoSource = "https://github.com/istio/istio/tree/master/pkg/test/echo"

// BuildEchoAdvanced builds the image ref (registry/path/echo-advanced:tag):
// Ambit's base layer, the binaries server (the entrypoint) and client in
// /usr/local/bin, and a layer with /cert.crt and /cert.key.
func BuildEchoAdvanced(ref string, in EchoInputs) (*images.Built, error) {
	t, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	repo := t.Context().Name() // registry/path/name
	slash := strings.LastIndex(repo, "/")
	spec := images.Spec{
		Name:        repo[slash+1:],
		Binaries:    []string{"server", "client"},
		User:        images.UserAmbit,
		Description: "Echo server and client of the Gateway API conformance suite's mesh tests (Istio's echo application)",
	}
	b, err := images.Build(spec, images.Options{
		BinDir:   in.BinDir,
		Version:  t.TagStr(),
		Repo:     repo[:slash],
		Created:  in.Created,
		Source:   EchoSource,
		Revision: in.Revision,
	})
	if err != nil {
		return nil, err
	}
	if b.Ref != ref {
		return nil, fmt.Errorf("built %s, want %s", b.Ref, ref)
	}
	var files []layerFile
	for _, f := range []struct{ src, dst string }{{in.CertFile, "cert.crt"}, {in.KeyFile, "cert.key"}} {
		data, err := os.ReadFile(f.src)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", spec.Name, err)
		}
		if !bytes.Contains(data, []byte("-----BEGIN ")) {
			return nil, fmt.Errorf("image %s: %s is not PEM", spec.Name, f.src)
		}
		// World-readable: the server runs as a non-root user.
		files = append(files, layerFile{path: f.dst, mode: 0o644, data: data})
	}
	cf, err := b.Image.ConfigFile()
	if err != nil {
		return nil, err
	}
	when := cf.Created.Time
	layer, err := tarLayer(files, when)
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(b.Image, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   v1.Time{Time: when},
			CreatedBy: "ambit-conformance-images: /cert.crt, /cert.key",
			Comment:   "certificates",
		},
	})
	if err != nil {
		return nil, err
	}
	b.Image = img
	if b.Digest, err = img.Digest(); err != nil {
		return nil, err
	}
	return b, nil
}

type layerFile struct {
	path string
	mode int64
	data []byte
}

// tarLayer is a gzipped tar of files owned by root, in path order, every
// header fixed so that the same files give the same digest.
func tarLayer(files []layerFile, mtime time.Time) (v1.Layer, error) {
	sort.Slice(files, func(i, j int) bool { return files[i].path < files[j].path })
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	for _, f := range files {
		h := &tar.Header{Name: f.path, Mode: f.mode, Size: int64(len(f.data)), ModTime: mtime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
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
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// parseTime reads Unix seconds or RFC 3339; empty is the Unix epoch.
func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(n, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither Unix seconds nor RFC 3339", s)
	}
	return t.UTC(), nil
}
