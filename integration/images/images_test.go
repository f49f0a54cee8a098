package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// staticBinary builds a tiny static Go program once per test binary.
var staticBinary = func() func(t *testing.T) []byte {
	var data []byte
	var err error
	done := false
	return func(t *testing.T) []byte {
		t.Helper()
		if !done {
			done = true
			data, err = buildStatic()
		}
		if err != nil {
			t.Fatalf("building a static test binary: %v", err)
		}
		return data
	}
}()

func buildStatic() ([]byte, error) {
	dir, err := os.MkdirTemp("", "ambit-images-test-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	src := "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello from an image\") }\n"
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module hello\n\ngo 1.26\n"), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", "hello", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, &exec.ExitError{Stderr: out}
	}
	return os.ReadFile(filepath.Join(dir, "hello"))
}

// binDir returns a folder with every binary of every spec; each binary's
// content is the static program followed by its own name, so that they differ.
func binDir(t *testing.T) string {
	t.Helper()
	data := staticBinary(t)
	dir := t.TempDir()
	for _, s := range Specs() {
		for _, b := range s.Binaries {
			if err := os.WriteFile(filepath.Join(dir, b), append(append([]byte{}, data...), b...), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func TestBuildIsReproducible(t *testing.T) {
	bins := binDir(t)
	opts := Options{BinDir: bins, Version: "v1.2.3-4-gabcdef0-dirty", Created: time.Unix(1780000000, 0)}
	first, err := BuildAll(nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	second, err := BuildAll(nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != len(Specs()) {
		t.Fatalf("built %d images, want %d", len(first), len(Specs()))
	}
	out := t.TempDir()
	digests := map[v1.Hash]string{}
	for i := range first {
		if first[i].Digest != second[i].Digest {
			t.Errorf("%s: digest %s then %s", first[i].Spec.Name, first[i].Digest, second[i].Digest)
		}
		if other, dup := digests[first[i].Digest]; dup {
			t.Errorf("%s and %s have the same digest", other, first[i].Spec.Name)
		}
		digests[first[i].Digest] = first[i].Spec.Name
		a, b := filepath.Join(out, "a-"+first[i].Spec.Name+".tar"), filepath.Join(out, "b-"+first[i].Spec.Name+".tar")
		if _, err := WriteArchive(a, first[i]); err != nil {
			t.Fatal(err)
		}
		if _, err := WriteArchive(b, second[i]); err != nil {
			t.Fatal(err)
		}
		da, _ := os.ReadFile(a)
		db, _ := os.ReadFile(b)
		if !bytes.Equal(da, db) {
			t.Errorf("%s: two archives of the same inputs differ", first[i].Spec.Name)
		}
	}

	// Every input that should matter changes the digest.
	changed := func(what string, o Options) {
		t.Helper()
		b, err := Build(first[0].Spec, o)
		if err != nil {
			t.Fatal(err)
		}
		if b.Digest == first[0].Digest {
			t.Errorf("changing %s kept the digest %s", what, b.Digest)
		}
	}
	o := opts
	o.Version = "v1.2.4"
	changed("the version", o)
	o = opts
	o.Created = opts.Created.Add(time.Second)
	changed("the creation time", o)
	o = opts
	o.BinDir = binDir(t)
	if err := os.WriteFile(filepath.Join(o.BinDir, "controller"), append(staticBinary(t), "changed"...), 0o755); err != nil {
		t.Fatal(err)
	}
	changed("the binary", o)
}

func TestArchiveContents(t *testing.T) {
	bins := binDir(t)
	created := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	built, err := BuildAll(nil, Options{BinDir: bins, Version: "v0.1.0", Created: created, Revision: "abc123"})
	if err != nil {
		t.Fatal(err)
	}
	var baseLayer v1.Hash
	for _, b := range built {
		t.Run(b.Spec.Name, func(t *testing.T) {
			archive := filepath.Join(t.TempDir(), b.Spec.Name+".tar")
			size, err := WriteArchive(archive, b)
			if err != nil {
				t.Fatal(err)
			}
			if st, err := os.Stat(archive); err != nil || st.Size() != size {
				t.Fatalf("archive size %d, stat %v %v", size, st, err)
			}
			dir := t.TempDir()
			if err := ExtractArchive(archive, dir); err != nil {
				t.Fatal(err)
			}
			got, err := ReadLayout(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Fatalf("%d images in the archive, want 1", len(got))
			}
			a := got[0]
			wantRef := "docker.io/ambit/" + b.Spec.Name + ":v0.1.0"
			if a.Name != wantRef || a.RefName != "v0.1.0" || b.Ref != wantRef {
				t.Errorf("annotations name=%q ref.name=%q (built ref %q), want %q and v0.1.0", a.Name, a.RefName, b.Ref, wantRef)
			}
			if err := validate.Image(a.Image); err != nil {
				t.Fatalf("the archived image does not validate: %v", err)
			}
			if d, _ := a.Image.Digest(); d != b.Digest {
				t.Errorf("archived digest %s, built %s", d, b.Digest)
			}
			cf, err := a.Image.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
				t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
			}
			if !cf.Created.Time.Equal(created) {
				t.Errorf("created %v, want %v", cf.Created.Time, created)
			}
			wantEntry := "/usr/local/bin/" + b.Spec.Binaries[0]
			if len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != wantEntry {
				t.Errorf("entrypoint %q, want %q", cf.Config.Entrypoint, wantEntry)
			}
			wantUser := map[string]string{"controller": "1337:1337", "waypoint": "1337:1337", "demo": "1337:1337", "ztunnel": "0:0", "pause": "65535:65535"}[b.Spec.Name]
			if cf.Config.User != wantUser {
				t.Errorf("user %q, want %q", cf.Config.User, wantUser)
			}
			for k, v := range map[string]string{
				"org.opencontainers.image.version":  "v0.1.0",
				"org.opencontainers.image.title":    b.Spec.Name,
				"org.opencontainers.image.source":   DefaultSource,
				"org.opencontainers.image.revision": "abc123",
			} {
				if cf.Config.Labels[k] != v {
					t.Errorf("label %s=%q, want %q", k, cf.Config.Labels[k], v)
				}
			}

			layers, err := a.Image.Layers()
			if err != nil || len(layers) != 2 {
				t.Fatalf("layers %d (%v), want 2", len(layers), err)
			}
			d, _ := layers[0].Digest()
			if baseLayer == (v1.Hash{}) {
				baseLayer = d
			} else if d != baseLayer {
				t.Errorf("base layer %s differs from the other images' %s", d, baseLayer)
			}
			files := map[string]*tar.Header{}
			content := map[string][]byte{}
			for _, l := range layers {
				mt, _ := l.MediaType()
				if mt != "application/vnd.oci.image.layer.v1.tar+gzip" {
					t.Errorf("layer media type %s", mt)
				}
				rc, err := l.Uncompressed()
				if err != nil {
					t.Fatal(err)
				}
				tr := tar.NewReader(rc)
				for {
					h, err := tr.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					data, _ := io.ReadAll(tr)
					files[h.Name], content[h.Name] = h, data
					if !h.ModTime.Equal(created) {
						t.Errorf("%s: mtime %v, want %v", h.Name, h.ModTime, created)
					}
				}
				rc.Close()
			}
			if h := files["tmp/"]; h == nil || h.Mode != 0o1777 || h.Typeflag != tar.TypeDir {
				t.Errorf("/tmp: %+v, want a folder of mode 1777", h)
			}
			if !strings.Contains(string(content["etc/passwd"]), "ambit:x:1337:1337:") || !strings.HasPrefix(string(content["etc/passwd"]), "root:x:0:0:") {
				t.Errorf("/etc/passwd: %q", content["etc/passwd"])
			}
			if !strings.Contains(string(content["etc/group"]), "ambit:x:1337:") {
				t.Errorf("/etc/group: %q", content["etc/group"])
			}
			for _, bin := range b.Spec.Binaries {
				h := files["usr/local/bin/"+bin]
				if h == nil || h.Mode != 0o755 || h.Uid != 0 {
					t.Errorf("/usr/local/bin/%s: %+v, want mode 0755 owned by root", bin, h)
					continue
				}
				want, _ := os.ReadFile(filepath.Join(bins, bin))
				if !bytes.Equal(content["usr/local/bin/"+bin], want) {
					t.Errorf("/usr/local/bin/%s differs from the binary", bin)
				}
			}
		})
	}
}

func TestBuildErrors(t *testing.T) {
	bins := binDir(t)
	spec, _ := Lookup("waypoint")
	check := func(what string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one mentioning %q", what, err, want)
		}
	}
	_, err := Build(spec, Options{BinDir: t.TempDir(), Version: "v1"})
	check("missing binary", err, "missing (run make build)")
	_, err = Build(spec, Options{BinDir: bins, Version: ""})
	check("empty version", err, "version is empty")
	_, err = Build(spec, Options{BinDir: bins, Version: "v1/evil"})
	check("bad version", err, "not a valid image tag")
	_, err = Build(spec, Options{BinDir: bins, Version: "-v1"})
	check("bad version", err, "not a valid image tag")
	_, err = Build(spec, Options{BinDir: bins, Version: "v1", Repo: "UPPER/case"})
	check("bad repo", err, "image reference")
	_, err = Lookup("sidecar")
	check("unknown image", err, `unknown image "sidecar"`)
	_, err = BuildAll([]string{"demo", "nope"}, Options{BinDir: bins, Version: "v1"})
	check("unknown image", err, `unknown image "nope"`)

	text := t.TempDir()
	if err := os.WriteFile(filepath.Join(text, "waypoint"), []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = Build(spec, Options{BinDir: text, Version: "v1"})
	check("a script", err, "not an ELF executable")

	if dyn, err := exec.LookPath("ls"); err == nil {
		data, _ := os.ReadFile(dyn)
		if _, err := staticArch(data); err == nil {
			t.Logf("%s is static here; skipping the dynamic-binary case", dyn)
		} else {
			d := t.TempDir()
			if err := os.WriteFile(filepath.Join(d, "waypoint"), data, 0o755); err != nil {
				t.Fatal(err)
			}
			_, err = Build(spec, Options{BinDir: d, Version: "v1"})
			check("a dynamic binary", err, "dynamically linked")
		}
	}

	_, err = PushRef("registry", &Built{Spec: spec, Version: "v1"})
	check("push target without a path", err, "want registry/prefix")
}

func TestExtractRefusesEscapes(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: "../evil", Mode: 0o644, Size: 1, Typeflag: tar.TypeReg})
	_, _ = tw.Write([]byte("x"))
	_ = tw.Close()
	p := filepath.Join(t.TempDir(), "evil.tar")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ExtractArchive(p, t.TempDir()); err == nil || !strings.Contains(err.Error(), "leaves the archive") {
		t.Fatalf("error %v, want a refusal", err)
	}
}

func TestPushToRegistry(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}}
	srv.Start()
	defer srv.Close()
	host := ln.Addr().String()

	built, err := BuildAll([]string{"demo", "pause"}, Options{BinDir: binDir(t), Version: "v9.9.9"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, b := range built {
		ref, err := PushRef(host+"/team/ambit", b)
		if err != nil {
			t.Fatal(err)
		}
		if want := host + "/team/ambit/" + b.Spec.Name + ":v9.9.9"; ref != want {
			t.Fatalf("push ref %q, want %q", ref, want)
		}
		d, err := Push(ctx, b, ref, PushOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if d != b.Digest {
			t.Errorf("pushed digest %s, built %s", d, b.Digest)
		}
		// Pull it back, independently of Push's own check.
		tag, _ := name.NewTag(ref)
		img, err := remote.Image(tag, remote.WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Image(img); err != nil {
			t.Fatalf("pulled image does not validate: %v", err)
		}
		if pd, _ := img.Digest(); pd != b.Digest {
			t.Errorf("pulled digest %s, built %s", pd, b.Digest)
		}
		l, _ := img.Layers()
		rc, _ := l[1].Compressed()
		zr, err := gzip.NewReader(rc)
		if err != nil {
			t.Fatal(err)
		}
		h, err := tar.NewReader(zr).Next()
		rc.Close()
		if err != nil || h.Name != "usr/local/bin/"+b.Spec.Binaries[0] {
			t.Errorf("pulled binary layer starts with %v (%v)", h, err)
		}
	}

	// A registry that is not there gives an error, not a hang or a pass.
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	ref, _ := PushRef(deadAddr+"/ambit", built[0])
	if _, err := Push(ctx, built[0], ref, PushOptions{}); err == nil {
		t.Fatal("push to a closed port succeeded")
	}
}
