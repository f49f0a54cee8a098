package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"sigs.k8s.io/gateway-api/conformance"

	"github.com/ambit-mesh/ambit/integration/images"
)

// staticBinary compiles a tiny static Linux program.
func staticBinary(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	src := "package main\n\nfunc main() { println(\"echo\") }\n"
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module echo\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", "prog", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOWORK=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building a static test binary: %v\n%s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(dir, "prog"))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

const pemCert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
const pemKey = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"

// inputs writes server, client (each the static program plus its own name),
// a certificate and a key.
func inputs(t *testing.T) EchoInputs {
	t.Helper()
	prog := staticBinary(t)
	dir := t.TempDir()
	for _, b := range []string{"server", "client"} {
		if err := os.WriteFile(filepath.Join(dir, b), append(append([]byte{}, prog...), b...), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	in := EchoInputs{BinDir: dir, CertFile: filepath.Join(dir, "c.pem"), KeyFile: filepath.Join(dir, "k.pem"),
		Created: time.Unix(1700000000, 0).UTC(), Revision: "istio.io/istio@v0.0.0-test"}
	for p, s := range map[string]string{in.CertFile: pemCert, in.KeyFile: pemKey} {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return in
}

func TestSuiteManifestsNameEchoAdvanced(t *testing.T) {
	refs, err := ManifestImages(conformance.Manifests, "mesh/manifests.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) != 1 || imageName(refs[0]) != "echo-advanced" || !strings.Contains(refs[0], ":v") {
		t.Fatalf("mesh manifests name %q, want one tagged echo-advanced reference", refs)
	}
}

func TestManifestImagesErrors(t *testing.T) {
	fsys := fstest.MapFS{
		"none.yaml":    {Data: []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")},
		"noimage.yaml": {Data: []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: n}\nspec:\n  template:\n    spec:\n      containers: [{name: c}]\n")},
		"bad.yaml":     {Data: []byte("kind: [\n")},
		"two.yaml": {Data: []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\nspec: {template: {spec: {containers: [{name: c, image: \"r.io/x/b:v2\"}, {name: d, image: \"r.io/x/a:v1\"}]}}}\n" +
			"---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: b}\nspec: {template: {spec: {containers: [{name: c, image: \"r.io/x/a:v1\"}]}}}\n")},
	}
	for file, want := range map[string]string{
		"none.yaml":    "no Deployment names an image",
		"noimage.yaml": "container c has no image",
		"bad.yaml":     "bad.yaml",
		"missing.yaml": "missing.yaml",
	} {
		if _, err := ManifestImages(fsys, file); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error containing %q", file, err, want)
		}
	}
	refs, err := ManifestImages(fsys, "two.yaml")
	if err != nil || strings.Join(refs, " ") != "r.io/x/a:v1 r.io/x/b:v2" {
		t.Fatalf("two.yaml: %q, %v; want the two references sorted, once each", refs, err)
	}
}

// layerFiles lists path -> content of every regular file in the image's layers.
func layerFiles(t *testing.T, b *images.Built) map[string]string {
	t.Helper()
	layers, err := b.Image.Layers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(rc)
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(zr)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeReg {
				var buf bytes.Buffer
				if _, err := io.Copy(&buf, tr); err != nil {
					t.Fatal(err)
				}
				out[h.Name] = buf.String()
				if h.Name == "cert.key" && h.Mode&0o004 == 0 {
					t.Errorf("cert.key mode %o: the non-root server cannot read it", h.Mode)
				}
			}
		}
		rc.Close()
	}
	return out
}

func TestBuildEchoAdvanced(t *testing.T) {
	in := inputs(t)
	const ref = "registry.k8s.io/gateway-api/echo-advanced:v1.5.1"
	b, err := BuildEchoAdvanced(ref, in)
	if err != nil {
		t.Fatal(err)
	}
	if b.Ref != ref || b.Spec.Name != "echo-advanced" {
		t.Fatalf("built %s (%s), want %s", b.Ref, b.Spec.Name, ref)
	}
	again, err := BuildEchoAdvanced(ref, in)
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != b.Digest {
		t.Fatalf("same inputs, digests %s and %s", b.Digest, again.Digest)
	}
	d, _ := b.Image.Digest()
	if d != b.Digest {
		t.Fatalf("Built.Digest %s is not the image's %s", b.Digest, d)
	}
	cf, err := b.Image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cf.Config.Entrypoint, " "); got != "/usr/local/bin/server" {
		t.Errorf("entrypoint %q", got)
	}
	if !strings.Contains(strings.Join(cf.Config.Env, " "), "/usr/local/bin") {
		t.Errorf("PATH %q does not find the client for kubectl exec", cf.Config.Env)
	}
	if cf.Config.Labels["org.opencontainers.image.revision"] != in.Revision || cf.Config.Labels["org.opencontainers.image.source"] != EchoSource {
		t.Errorf("labels %v", cf.Config.Labels)
	}
	layers, _ := b.Image.Layers()
	if len(cf.History) != len(layers) || len(cf.RootFS.DiffIDs) != len(layers) {
		t.Errorf("%d layers, %d history entries, %d diff IDs", len(layers), len(cf.History), len(cf.RootFS.DiffIDs))
	}
	files := layerFiles(t, b)
	if files["cert.crt"] != pemCert || files["cert.key"] != pemKey {
		t.Errorf("certificate files: %q %q", files["cert.crt"], files["cert.key"])
	}
	for _, bin := range []string{"server", "client"} {
		if !strings.HasSuffix(files["usr/local/bin/"+bin], bin) {
			t.Errorf("/usr/local/bin/%s missing or not the given binary", bin)
		}
	}

	// The archive names the image as the suite's manifests do.
	path := filepath.Join(t.TempDir(), "echo-advanced.tar")
	if _, err := images.WriteArchive(path, b); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := images.ExtractArchive(path, dir); err != nil {
		t.Fatal(err)
	}
	got, err := images.ReadLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != ref || got[0].RefName != "v1.5.1" {
		t.Fatalf("archive holds %+v, want one image named %s", got, ref)
	}
	if d, _ := got[0].Image.Digest(); d != b.Digest {
		t.Fatalf("archive digest %s, built %s", d, b.Digest)
	}
}

func TestBuildEchoAdvancedErrors(t *testing.T) {
	in := inputs(t)
	const ref = "registry.k8s.io/gateway-api/echo-advanced:v1.5.1"
	notPEM := in
	notPEM.KeyFile = filepath.Join(in.BinDir, "server")
	noClient := in
	noClient.BinDir = t.TempDir()
	if err := os.Link(filepath.Join(in.BinDir, "server"), filepath.Join(noClient.BinDir, "server")); err != nil {
		t.Fatal(err)
	}
	noCert := in
	noCert.CertFile = filepath.Join(in.BinDir, "nope.pem")
	for name, c := range map[string]struct {
		ref  string
		in   EchoInputs
		want string
	}{
		"key not PEM":    {ref, notPEM, "is not PEM"},
		"client missing": {ref, noClient, "client is missing"},
		"cert missing":   {ref, noCert, "nope.pem"},
		"bad reference":  {"Registry/UPPER:v1", in, "image reference"},
		"no tag":         {"registry.k8s.io/gateway-api/echo-advanced", in, "image reference"},
	} {
		if _, err := BuildEchoAdvanced(c.ref, c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", name, err, c.want)
		}
	}
}

func TestRun(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"-list"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "/echo-advanced:") {
		t.Fatalf("-list: exit %d, out %q, err %q", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := run(nil, &out, &errb); code != 1 || !strings.Contains(errb.String(), "missing -echo-bin-dir, -echo-cert, -echo-key") {
		t.Fatalf("no flags: exit %d, err %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"extra"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "unexpected arguments") {
		t.Fatalf("extra argument: exit %d, err %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"-echo-bin-dir", "x", "-echo-cert", "c", "-echo-key", "k", "-created", "yesterday"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "-created") {
		t.Fatalf("bad -created: exit %d, err %q", code, errb.String())
	}

	in := inputs(t)
	outDir := t.TempDir()
	out.Reset()
	errb.Reset()
	code := run([]string{"-echo-bin-dir", in.BinDir, "-echo-cert", in.CertFile, "-echo-key", in.KeyFile, "-out-dir", outDir, "-created", "1700000000"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	fields := strings.Split(strings.TrimSpace(out.String()), "\t")
	if len(fields) != 5 || fields[0] != "echo-advanced" || fields[4] != filepath.Join(outDir, "echo-advanced.tar") {
		t.Fatalf("output %q", out.String())
	}
	if _, err := os.Stat(fields[4]); err != nil {
		t.Fatal(err)
	}
}
