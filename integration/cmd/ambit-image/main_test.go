package main

import (
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

func ambitImage(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// staticBins writes a static program under the names of the demo and pause
// images' binaries.
func staticBins(t *testing.T) string {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module x\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bins := t.TempDir()
	cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(bins, "ambit-demo"), ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(bins, "ambit-demo"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bins, "ambit-pause"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bins
}

func TestUsageAndErrors(t *testing.T) {
	code, _, errOut := ambitImage(t, "-help")
	if code != 0 || !strings.Contains(errOut, "usage: ambit-image") || !strings.Contains(errOut, "-push") {
		t.Errorf("-help: exit %d, output %q", code, errOut)
	}
	bins := staticBins(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-version", "", "-bin-dir", bins}, "version is empty"},
		{[]string{"-version", "v1 2", "-bin-dir", bins}, "not a valid image tag"},
		{[]string{"-version", "v1", "-bin-dir", filepath.Join(bins, "nope")}, "does not exist (run make build)"},
		{[]string{"-version", "v1", "-bin-dir", bins, "waypoint"}, "binary " + filepath.Join(bins, "waypoint") + " is missing"},
		{[]string{"-version", "v1", "-bin-dir", bins, "proxy"}, `unknown image "proxy"`},
		{[]string{"-version", "v1", "-bin-dir", bins, "-created", "yesterday", "demo"}, "want Unix seconds or RFC 3339"},
		{[]string{"-version", "v1", "-bin-dir", bins, "-push", "justahost", "demo"}, "want registry/prefix"},
		{[]string{"-version", "v1", "-bin-dir", bins, "demo", "-push", "x/y"}, "flags go before image names"},
	} {
		code, out, errOut := ambitImage(t, append([]string{"-out-dir", t.TempDir()}, tc.args...)...)
		if code != 1 || !strings.Contains(errOut, tc.want) || out != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 1 and %q", tc.args, code, out, errOut, tc.want)
		}
	}
	if code, _, _ := ambitImage(t, "-no-such-flag"); code != 2 {
		t.Errorf("unknown flag: exit %d, want 2", code)
	}
}

func TestBuildAndPush(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}}
	srv.Start()
	defer srv.Close()

	bins, out := staticBins(t), t.TempDir()
	code, stdout, errOut := ambitImage(t, "-version", "v0.0.1", "-bin-dir", bins, "-out-dir", out,
		"-created", "2026-11-26T00:00:00Z", "-push", ln.Addr().String()+"/ambit", "demo", "pause")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 4 {
		t.Fatalf("output %q: want 2 image lines and 2 push lines", stdout)
	}
	for i, n := range []string{"demo", "pause"} {
		f := strings.Fields(lines[i])
		if len(f) != 6 || f[0] != n || f[1] != "docker.io/ambit/"+n+":v0.0.1" || !strings.HasPrefix(f[2], "sha256:") || f[5] != filepath.Join(out, n+".tar") {
			t.Errorf("line %q: want name, ref, digest, size, archive", lines[i])
		}
		if _, err := os.Stat(filepath.Join(out, n+".tar")); err != nil {
			t.Error(err)
		}
		want := n + " pushed " + ln.Addr().String() + "/ambit/" + n + ":v0.0.1@" + f[2]
		if strings.Join(strings.Fields(lines[2+i]), " ") != want {
			t.Errorf("push line %q, want %q", lines[2+i], want)
		}
	}
}
