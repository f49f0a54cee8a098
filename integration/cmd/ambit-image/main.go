// Command ambit-image builds Ambit's container images from the static
// binaries `make build` leaves in bin/, without Docker: one OCI image-layout
// tar archive per image (bin/images/<name>.tar, importable with
// `ctr -n k8s.io images import`), and optionally pushes them to a registry.
// hack/images.sh (`make images`) runs it; docs/reference/images.md describes
// the images.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/integration/images"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: ambit-image [flags] [image...]

Builds the OCI image archives <out-dir>/<image>.tar of Ambit's images from the
static binaries in -bin-dir, each tagged <repo>/<image>:<version>, and with
-push also pushes them to <push>/<image>:<version>. Without image names it
builds all of: %s.

Prints one line per image: name, reference, manifest digest, archive size.

flags:
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ambit-image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var names []string
	for _, s := range images.Specs() {
		names = append(names, s.Name)
	}
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), usage, strings.Join(names, ", "))
		fs.PrintDefaults()
	}
	binDir := fs.String("bin-dir", "bin", "folder of the static binaries (make build)")
	outDir := fs.String("out-dir", "bin/images", "folder the archives are written to")
	version := fs.String("version", os.Getenv("VERSION"), "image tag and version label (default $VERSION)")
	repo := fs.String("repo", images.DefaultRepo, "repository prefix of the image references")
	push := fs.String("push", os.Getenv("PUSH"), "also push to <registry>/<prefix>/<image>:<version> (default $PUSH)")
	insecure := fs.Bool("insecure", false, "push over plain HTTP (loopback registries use it anyway)")
	created := fs.String("created", os.Getenv("SOURCE_DATE_EPOCH"), "creation time of the images and their files: Unix seconds or RFC 3339 (default $SOURCE_DATE_EPOCH, else the Unix epoch)")
	revision := fs.String("revision", "", "org.opencontainers.image.revision label (a commit)")
	source := fs.String("source", images.DefaultSource, "org.opencontainers.image.source label")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "ambit-image: %v\n", err)
		return 1
	}
	for _, a := range fs.Args() {
		if strings.HasPrefix(a, "-") {
			return fail(fmt.Errorf("%q: flags go before image names", a))
		}
	}
	if err := images.ValidateVersion(*version); err != nil {
		return fail(err)
	}
	t, err := parseTime(*created)
	if err != nil {
		return fail(err)
	}
	if st, err := os.Stat(*binDir); err != nil || !st.IsDir() {
		return fail(fmt.Errorf("binary folder %s does not exist (run make build)", *binDir))
	}
	opts := images.Options{BinDir: *binDir, Version: *version, Repo: *repo, Created: t, Revision: *revision, Source: *source}
	built, err := images.BuildAll(fs.Args(), opts)
	if err != nil {
		return fail(err)
	}
	for _, b := range built {
		if *push != "" {
			if _, err := images.PushRef(*push, b); err != nil {
				return fail(err)
			}
		}
	}
	for _, b := range built {
		archive := filepath.Join(*outDir, b.Spec.Name+".tar")
		size, err := images.WriteArchive(archive, b)
		if err != nil {
			return fail(fmt.Errorf("image %s: %w", b.Spec.Name, err))
		}
		fmt.Fprintf(stdout, "%-10s %-45s %s %7.1f MiB  %s\n", b.Spec.Name, b.Ref, b.Digest, float64(size)/(1<<20), archive)
	}
	for _, b := range built {
		if *push == "" {
			break
		}
		if ctx.Err() != nil {
			return fail(ctx.Err())
		}
		ref, _ := images.PushRef(*push, b)
		pctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		d, err := images.Push(pctx, b, ref, images.PushOptions{Insecure: *insecure})
		cancel()
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "%-10s pushed %s@%s\n", b.Spec.Name, ref, d)
	}
	return 0
}

// parseTime reads Unix seconds or RFC 3339; empty is the Unix epoch.
func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 {
			return time.Time{}, fmt.Errorf("creation time %q is before the Unix epoch", s)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("creation time %q: want Unix seconds or RFC 3339 (2026-01-02T15:04:05Z)", s)
	}
	return t.UTC(), nil
}
